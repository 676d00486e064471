"""Site semantics: each site does what its name says, checked against an independent construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from conftest import ALL_TINY, load_tiny
from helpers import build_batch, generate, masked_max_diff, prefill_logits

import hookkit
from hookkit import compat
from hookkit.core.intervention import AttnCall, HookContext, Intervention
from hookkit.core.regions import Region
from hookkit.core.sites import Site

pytestmark = pytest.mark.seam  # the seam-sensitive set CI also runs on the newest transformers


@dataclass(eq=False)
class ScaleHeads(Intervention):
    name = "test_scale_heads"
    layer: int = 1
    scales: dict[int, float] = field(default_factory=dict)  # head -> factor

    def bind(self, model):
        return {Site.HEAD_OUTPUT: frozenset({self.layer})}

    def head_output(self, ctx: HookContext, state: Any, heads: torch.Tensor) -> torch.Tensor:
        factor = torch.ones(heads.shape[-2], dtype=heads.dtype)
        for h, s in self.scales.items():
            factor[h] = s
        return heads * factor[:, None]


@pytest.mark.parametrize("name", ALL_TINY)
def test_scale_zero_on_all_heads_removes_the_layer_attention(name: str) -> None:
    model, processor, info = load_tiny(name)
    batch = build_batch(info, processor, 2)
    layer = 1
    # Independent construction: zero the self-attention module's output with a plain forward hook.
    handle = info.attentions[layer].register_forward_hook(lambda m, a, out: (torch.zeros_like(out[0]), *out[1:]))
    try:
        removed = generate(model, info, batch)
        removed_prefill = prefill_logits(model, batch)
    finally:
        handle.remove()
    stock_prefill = prefill_logits(model, batch)
    with hookkit.attach(model, ScaleHeads(layer=layer, scales={h: 0.0 for h in range(info.num_heads)})):
        hooked = generate(model, info, batch)
        hooked_prefill = prefill_logits(model, batch)
    assert torch.equal(removed.sequences, hooked.sequences)
    assert all(torch.equal(a, b) for a, b in zip(removed.logits, hooked.logits))
    assert masked_max_diff(removed_prefill, hooked_prefill, batch["attention_mask"]) == 0.0
    # ...and removing the layer's attention does change the model (the check above is not vacuous).
    assert masked_max_diff(stock_prefill, hooked_prefill, batch["attention_mask"]) > 1e-3


def test_partial_head_scaling_equals_o_proj_weight_edit() -> None:
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    scales = {1: 0.3, 2: 0.0}
    with hookkit.attach(model, ScaleHeads(layer=1, scales=scales)):
        hooked = prefill_logits(model, batch)
    o_proj = info.o_proj(1)
    original = o_proj.weight.detach().clone()
    try:
        with torch.no_grad():
            for h, s in scales.items():
                o_proj.weight[:, h * info.head_dim:(h + 1) * info.head_dim] *= s
        edited = prefill_logits(model, batch)
    finally:
        with torch.no_grad():
            o_proj.weight.copy_(original)
    assert masked_max_diff(hooked, edited, batch["attention_mask"]) <= 2e-6


@dataclass(eq=False)
class HideKeys(Intervention):
    """Hide a fixed set of key slots from every query of every layer, through the score-bias site."""

    name = "test_hide_keys"
    slots: list[int] = field(default_factory=list)

    def bind(self, model):
        return {Site.SCORE_BIAS: frozenset(range(model.num_layers))}

    def score_bias(self, call: AttnCall, state: Any) -> torch.Tensor:
        hidden = torch.isin(call.k_slots, torch.tensor(self.slots))
        bias = torch.zeros(1, 1, 1, call.k_len, dtype=call.query.dtype)
        return bias.masked_fill(hidden, torch.finfo(call.query.dtype).min)


def _cached_logits(model: Any, batch: dict[str, torch.Tensor], position_ids: torch.Tensor, steps: int) -> list:
    """Prefill + greedy cached decode with explicit position ids (so a 2-D mask edit cannot move positions)."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    out = model(input_ids=ids, attention_mask=mask, position_ids=position_ids, **compat.with_cache(model, cache))
    logits = [out.logits[:, -1]]
    pos = position_ids[:, -1:]
    for _ in range(steps):
        nxt = logits[-1].argmax(-1, keepdim=True)
        mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
        pos = pos + 1
        out = model(input_ids=nxt, attention_mask=mask, position_ids=pos, **compat.with_cache(model, cache))
        logits.append(out.logits[:, -1])
    return logits


@pytest.mark.parametrize("name,slots", [("tiny-llama", [2, 5, 6]), ("tiny-mistral", [1, 3, 8]),
                                        ("tiny-qwen2", [4, 7])])
def test_hiding_keys_by_bias_equals_masking_them(name: str, slots: list[int]) -> None:
    """Decode runs 6 steps so that the Mistral window (8) is crossed: hidden slots leave the window."""
    model, processor, info = load_tiny(name)
    batch = dict(build_batch(info, processor, 1))
    position_ids = torch.arange(batch["input_ids"].shape[1])[None]
    masked = dict(batch)
    masked["attention_mask"] = batch["attention_mask"].clone()
    masked["attention_mask"][:, slots] = 0
    reference = _cached_logits(model, masked, position_ids, steps=6)
    stock = _cached_logits(model, batch, position_ids, steps=6)
    with hookkit.attach(model, HideKeys(slots=slots)):
        hooked = _cached_logits(model, batch, position_ids, steps=6)
    assert max((a - b).abs().max().item() for a, b in zip(reference, hooked)) <= 2e-6
    assert max((a - b).abs().max().item() for a, b in zip(stock, hooked)) > 1e-4


@dataclass(eq=False)
class HideImage(Intervention):
    name = "test_hide_image"

    def bind(self, model):
        return {Site.SCORE_BIAS: frozenset(range(model.num_layers))}

    def score_bias(self, call: AttnCall, state: Any) -> torch.Tensor:
        hidden = call.key_mask(Region.IMAGE)[:, None, None, :]  # [B, 1, 1, K]
        return torch.zeros(hidden.shape, dtype=call.query.dtype).masked_fill(hidden, torch.finfo(call.query.dtype).min)


def test_hiding_image_keys_by_region_equals_masking_them() -> None:
    model, processor, info = load_tiny("tiny-llava")
    batch = dict(build_batch(info, processor, 2))
    image = batch["input_ids"] == info.image_token_ids[0]
    position_ids = (batch["attention_mask"].cumsum(-1) - 1).clamp_min(0)
    masked = dict(batch)
    masked["attention_mask"] = batch["attention_mask"].masked_fill(image, 0)
    with torch.no_grad():
        reference = model(**masked, position_ids=position_ids).logits
        with hookkit.attach(model, HideImage()):
            hooked = model(**batch, position_ids=position_ids).logits
        stock = model(**batch, position_ids=position_ids).logits
    text_rows = batch["attention_mask"].bool() & ~image
    assert (reference - hooked)[text_rows].abs().max().item() <= 2e-6
    assert (stock - hooked)[text_rows].abs().max().item() > 1e-4


@dataclass(eq=False)
class RecordRegions(Intervention):
    """Checks, inside every attention call, that key/query regions agree with the token stream."""

    name = "test_record_regions"
    checks: list[tuple[int, int, int, bool]] = field(default_factory=list)  # (step, layer, K, ok)

    def bind(self, model):
        self.image_ids = torch.tensor(model.image_token_ids or [-1])
        return {Site.SCORE_BIAS: frozenset(range(model.num_layers))}

    def score_bias(self, call: AttnCall, state: Any) -> None:
        tracker = call.forward.tracker
        ids = tracker.input_ids[:, call.k_slots]
        expected_image = torch.isin(ids, self.image_ids) & (call.k_slots < tracker.prompt_length)
        expected_pad = state["pad"][:, call.k_slots]
        ok = torch.equal(call.key_mask("image"), expected_image & ~expected_pad)
        ok &= torch.equal(call.key_mask("padding"), expected_pad)
        ok &= torch.equal(call.key_mask("generated"), (call.k_slots >= tracker.prompt_length).expand_as(ids)
                          & ~expected_pad)
        ok &= bool((call.key_regions[:, -call.q_len:] == call.query_regions).all())
        self.checks.append((call.forward.step, call.layer, call.k_len, bool(ok)))
        return None

    def new_state(self, sample):
        pad = sample.regions == Region.PADDING
        return {"pad": torch.cat([pad, torch.zeros(pad.shape[0], 64, dtype=torch.bool)], dim=1)}


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-gemma3", "tiny-instructblip",
                                  "tiny-smolvlm", "tiny-mistral"])
def test_region_masks_follow_image_tokens_under_padding_cache_and_sliding_windows(name: str) -> None:
    model, processor, info = load_tiny(name)
    batch = build_batch(info, processor, 2)
    probe = RecordRegions()
    with hookkit.attach(model, probe):
        generate(model, info, batch, new_tokens=10)
    assert probe.checks and all(ok for *_, ok in probe.checks)
    steps = {step for step, *_ in probe.checks}
    assert steps == set(range(10))
    if info.layer_types()[0] == "sliding_attention" or "sliding_attention" in info.layer_types():
        window = info.text_config.sliding_window
        total = batch["input_ids"].shape[1] + 9
        sliding_k = [k for step, layer, k, _ in probe.checks
                     if step == 9 and info.layer_types()[layer] == "sliding_attention"]
        assert sliding_k and all(k < total for k in sliding_k), "sliding layers must see fewer keys"
        assert all(k <= window for k in sliding_k)


@dataclass(eq=False)
class ScaleLinear(Intervention):
    name = "test_scale_linear"
    target: str = "mlp.down_proj"
    factor: float = 0.0

    def bind(self, model):
        return {Site.LINEAR: frozenset({1})}

    def linear_targets(self):
        return [self.target]

    def linear_output(self, ctx, state, target, inputs, output):
        assert target == self.target and inputs.shape[:-1] == output.shape[:-1]
        return output * self.factor


def test_linear_site_edits_the_named_submodule() -> None:
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    mlp = info.decoder_layers[1].mlp
    handle = mlp.register_forward_hook(lambda m, a, out: torch.zeros_like(out))
    try:
        removed = prefill_logits(model, batch)
    finally:
        handle.remove()
    with hookkit.attach(model, ScaleLinear()):
        hooked = prefill_logits(model, batch)
    assert masked_max_diff(removed, hooked, batch["attention_mask"]) == 0.0
    with pytest.raises(hookkit.ConfigError, match=r"target_modules: layer 1 has no sub-module 'mlp\.nope'"):
        hookkit.attach(model, ScaleLinear(target="mlp.nope"))


def test_each_edit_takes_the_cheapest_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Untouched layers: stock sdpa. Bias only: sdpa with a float mask, nothing materialised. Probability edits:
    fp32 probabilities of the requested layer and query rows only."""
    from hookkit.core import attention as attention_mod
    from hookkit.methods.noop import Noop

    model, processor, info = load_tiny("tiny-llava")
    batch = build_batch(info, processor, 2)
    materialised: list[tuple[int, int]] = []  # (layer, query rows)
    sdpa_calls: dict[int, bool] = {}  # layer -> position_bias given? (untouched layers may or may not be spied)
    real_probs, real_sdpa = attention_mod.attention_probs, attention_mod.sdpa_attention

    def spy_probs(module, query, *args, **kwargs):
        materialised.append((module.layer_idx, query.shape[2]))
        return real_probs(module, query, *args, **kwargs)

    def spy_sdpa(module, *args, **kwargs):
        sdpa_calls[module.layer_idx] = kwargs.get("position_bias") is not None
        return real_sdpa(module, *args, **kwargs)

    monkeypatch.setattr(attention_mod, "attention_probs", spy_probs)
    monkeypatch.setattr(attention_mod, "sdpa_attention", spy_sdpa)
    with hookkit.attach(model, Noop(sites=["score_bias"], layers=[2])):
        prefill_logits(model, batch)
    # only layer 2 takes hookkit's path: sdpa with a float mask, nothing materialised
    assert materialised == [] and sdpa_calls.pop(2) is True and not any(sdpa_calls.values())

    sdpa_calls.clear()
    with hookkit.attach(model, Noop(sites=["probs"], layers=[1], prob_rows_region="text_after_image")):
        prefill_logits(model, batch)
    rows_needed = int(build_rows_after_image(batch, info).any(0).sum())
    assert materialised == [(1, rows_needed)] and rows_needed < batch["input_ids"].shape[1]
    assert sdpa_calls.pop(1) is False and not any(sdpa_calls.values())  # the other rows: stock sdpa, no bias


def build_rows_after_image(batch, info) -> torch.Tensor:
    """[B, S] text slots after each row's first image token (an independent region computation)."""
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    image = ids == info.image_token_ids[0]
    after_first_image = image.long().cumsum(1) > 0
    return after_first_image & ~image & mask
