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
    replayed (VHR's lock-step prefill, assisted decoding).
    """

    def __init__(self, image_token_ids: tuple[int, ...]):
        self.image_token_ids = tuple(image_token_ids)
        self.input_ids: torch.Tensor | None = None  # [B, T] token id of every slot so far
        self.regions: torch.Tensor | None = None  # [B, T] int8 Region codes
        self.prompt_regions: torch.Tensor | None = None  # [B, S] Region codes of the prompt
        self.prompt_length = 0

    @property
    def total(self) -> int:
        return 0 if self.input_ids is None else self.input_ids.shape[1]

    @property
    def batch_size(self) -> int:
        return 0 if self.input_ids is None else self.input_ids.shape[0]

    def start(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        self.input_ids = input_ids.detach()
        self.regions = prompt_regions(self.input_ids, attention_mask, self.image_token_ids)
        self.prompt_regions = self.regions
        self.prompt_length = input_ids.shape[1]

    def extend(self, past_length: int, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> None:
        """Record a cached forward whose new tokens occupy slots ``past_length ... past_length + n - 1``."""
        if self.input_ids is None or self.regions is None or self.prompt_regions is None:
            raise RuntimeError("a cached forward arrived before any prefill: hookkit cannot tell which tokens "
                               "the cache holds (attach the session before the first forward)")
        if input_ids.shape[0] != self.input_ids.shape[0]:
            raise RuntimeError(f"batch size changed from {self.input_ids.shape[0]} to {input_ids.shape[0]} in a "
                               "cached forward; beam search and cache reordering are not supported")
        device = self.regions.device
        new = input_ids.shape[1]
        new_regions = torch.full((input_ids.shape[0], new), int(Region.GENERATED), dtype=torch.int8, device=device)
        if past_length < self.prompt_length:
            # Prompt slots replayed into a cropped cache keep their prompt regions.
            replay = min(self.prompt_length - past_length, new)
            new_regions[:, :replay] = self.prompt_regions[:, past_length:past_length + replay]
        if attention_mask is not None:
            new_regions[attention_mask[:, -new:].to(device) == 0] = int(Region.PADDING)
        self.input_ids = torch.cat([self.input_ids[:, :past_length], input_ids.detach().to(device)], dim=1)
        self.regions = torch.cat([self.regions[:, :past_length], new_regions], dim=1)

    def select_rows(self, rows: torch.Tensor) -> None:
        """Keep only ``rows`` of the batch (after the cache itself was reduced to those rows)."""
        assert self.input_ids is not None and self.regions is not None and self.prompt_regions is not None
        self.input_ids, self.regions = self.input_ids[rows], self.regions[rows]
        self.prompt_regions = self.prompt_regions[rows]

    def mask(self, region: Region | str, slots: torch.Tensor | slice | None = None) -> torch.Tensor:
        """Boolean ``[B, n]`` mask of the ``slots`` (default: all) that belong to ``region``."""
        if self.regions is None:
            raise RuntimeError("no input has been seen yet")
        code = int(region_from_name(region))
        regions = self.regions if slots is None else self.regions[:, slots]
        return regions == code
