"""Token regions: which cache slot holds an image token, prompt text, a generated token or padding.

Interventions address tokens by *region*, never by hard-coded offsets (ClearSight's ``SYS_LEN=35``) or by
``position_ids`` (they restart at 0 after left padding and are 3-D under Qwen-VL's M-RoPE). The tracker records
the token stream of every row as the model sees it: at prefill the (left-padded) prompt, then one slot per cached
decode step. Slot ``j`` of row ``b`` is the ``j``-th token written to the KV cache for that row, which is exactly
how the attention function indexes keys (transformers-v5.md §3.2): for dynamic caches the keys of a forward are
the *last* K slots, so sliding-window layers, which keep fewer keys, are covered by the same rule.

Region codes (``Region``):

* ``PADDING`` — ``attention_mask == 0`` (left padding; InstructBLIP also pads between its query tokens and text);
* ``IMAGE`` — an image placeholder token of the model (``<image>``, ``<|image_pad|>``, ``<image_soft_token>``);
* ``TEXT_BEFORE_IMAGE`` — prompt text before the row's first image token (the whole prompt of an image-less row);
* ``TEXT_AFTER_IMAGE`` — prompt text after the row's first image token (the question, the assistant prefix);
* ``GENERATED`` — tokens produced by decoding (even if a random model emits an image token id: pitfall 12).
"""

from __future__ import annotations

from enum import IntEnum

import torch


class Region(IntEnum):
    PADDING = 0
    TEXT_BEFORE_IMAGE = 1
    IMAGE = 2
    TEXT_AFTER_IMAGE = 3
    GENERATED = 4


REGION_NAMES: dict[str, Region] = {
    "padding": Region.PADDING,
    "text_before_image": Region.TEXT_BEFORE_IMAGE,
    "image": Region.IMAGE,
    "text_after_image": Region.TEXT_AFTER_IMAGE,
    "generated": Region.GENERATED,
}


def region_from_name(name: str | Region) -> Region:
    if isinstance(name, Region):
        return name
    try:
        return REGION_NAMES[name]
    except KeyError:
        raise ValueError(f"unknown region {name!r}; allowed: {sorted(REGION_NAMES)}") from None


def prompt_regions(input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                   image_token_ids: tuple[int, ...]) -> torch.Tensor:
    """Region code of every prompt slot, ``[B, S]`` int8."""
    batch, length = input_ids.shape
    device = input_ids.device
    pad = torch.zeros_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask[:, -length:] == 0
    image = torch.zeros_like(pad)
    for tok in image_token_ids:
        image |= input_ids == tok
    image &= ~pad
    slots = torch.arange(length, device=device).expand(batch, length)
    # First image slot per row; rows without an image get `length` so that everything is "before".
    first_image = torch.where(image, slots, torch.full_like(slots, length)).min(dim=1, keepdim=True).values
    regions = torch.full((batch, length), int(Region.TEXT_BEFORE_IMAGE), dtype=torch.int8, device=device)
    regions[slots > first_image] = int(Region.TEXT_AFTER_IMAGE)
    regions[image] = int(Region.IMAGE)
    regions[pad] = int(Region.PADDING)
    return regions


class TokenTracker:
    """Token stream and region code of every cache slot, per batch row, for the current sample.

    ``start`` is called at prefill (past length 0) and ``extend`` at every cached step. Slicing by the past
    length, not appending blindly, keeps the tracker right when a cache is cropped and part of the prompt is
    replayed. ``extend`` only queues the step; ``input_ids``/``regions`` are materialised when a method asks for
    them, so methods that never look at regions (VHR while decoding) pay nothing per step.
    """

    def __init__(self, image_token_ids: tuple[int, ...]):
        self.image_token_ids = tuple(image_token_ids)
        self._ids: torch.Tensor | None = None  # [B, capacity]
        self._regions: torch.Tensor | None = None  # [B, capacity] int8
        self._written = 0  # slots materialised in _ids/_regions
        self._queued: list[tuple[int, torch.Tensor, torch.Tensor | None]] = []  # (past, ids, mask) not yet written
        self.total = 0
        self.prompt_regions: torch.Tensor | None = None  # [B, S] Region codes of the prompt
        self.prompt_length = 0

    @property
    def input_ids(self) -> torch.Tensor | None:
        """Token id of every slot so far, ``[B, T]``."""
        self._flush()
        return None if self._ids is None else self._ids[:, :self.total]

    @property
    def regions(self) -> torch.Tensor | None:
        """Region code of every slot so far, ``[B, T]`` int8."""
        self._flush()
        return None if self._regions is None else self._regions[:, :self.total]

    @property
    def batch_size(self) -> int:
        return 0 if self._ids is None else self._ids.shape[0]

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        regions = prompt_regions(input_ids.detach(), attention_mask, self.image_token_ids)
        self._ids, self._regions = input_ids.detach().clone(), regions.clone()
        self.total = self.prompt_length = self._written = input_ids.shape[1]
        self._queued = []
        self.prompt_regions = regions

    def extend(self, past_length: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Record a cached forward whose new tokens occupy slots ``past_length ... past_length + n - 1``."""
        if self._ids is None:
            raise RuntimeError("a cached forward arrived before any prefill: hookkit cannot tell which tokens "
                               "the cache holds (attach the session before the first forward)")
        if input_ids.shape[0] != self._ids.shape[0]:
            raise RuntimeError(f"batch size changed from {self._ids.shape[0]} to {input_ids.shape[0]} in a "
                               "cached forward; beam search and cache reordering are not supported")
        if past_length > self.total:
            raise RuntimeError(f"the cache holds {past_length} slots but hookkit has seen only {self.total}")
        new = input_ids.shape[1]
        mask = None if attention_mask is None else attention_mask[:, -new:]
        self._queued.append((past_length, input_ids.detach(), mask))
        self.total = past_length + new

    def _flush(self) -> None:
        if not self._queued:
            return
        assert self._ids is not None and self._regions is not None and self.prompt_regions is not None
        end = max(past + ids.shape[1] for past, ids, _ in self._queued)
        if end > self._ids.shape[1]:  # grow by doubling
            capacity = max(end, 2 * self._ids.shape[1], 64)
            ids = self._ids.new_zeros(self._ids.shape[0], capacity)
            regions = self._regions.new_zeros(self._regions.shape[0], capacity)
            ids[:, :self._written], regions[:, :self._written] = (self._ids[:, :self._written],
                                                                  self._regions[:, :self._written])
            self._ids, self._regions = ids, regions
        for past, new_ids, mask in self._queued:
            stop = past + new_ids.shape[1]
            self._ids[:, past:stop] = new_ids.to(self._ids.device)
            region = self._regions[:, past:stop]
            region.fill_(int(Region.GENERATED))
            if past < self.prompt_length:
                # Prompt slots replayed into a cropped cache keep their prompt regions.
                replay = min(self.prompt_length - past, stop - past)
                region[:, :replay] = self.prompt_regions[:, past:past + replay]
            if mask is not None:
                region.masked_fill_(mask.to(region.device) == 0, int(Region.PADDING))
        self._written = self.total
        self._queued = []

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the batch (after the cache itself was reduced to those rows)."""
        self._flush()
        assert self._ids is not None and self._regions is not None and self.prompt_regions is not None
        self._ids, self._regions = self._ids[rows], self._regions[rows]
        self.prompt_regions = self.prompt_regions[rows]

    def mask(self, region: Region | str, slots: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Boolean ``[B, n]`` mask of the ``slots`` (default: all) that belong to ``region``."""
        regions = self.regions
        if regions is None:
            raise RuntimeError("no input has been seen yet")
        code = int(region_from_name(region))
        return (regions if slots is None else regions[:, slots]) == code
