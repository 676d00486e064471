"""Exactness: attaching neutral interventions on every site reproduces the stock model.

For every supported architecture, at prefill and over 3 cached decode steps, at batch 1 and in a left-padded
batch of 2: bit-identical on the eager backend, <= 1e-5 (fp32) on sdpa, and identical greedy tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
import torch
from conftest import ALL_TINY, load_tiny
from helpers import build_batch, generate, masked_max_diff, max_logit_diff, prefill_logits

import hookkit
from hookkit import compat
from hookkit.methods.noop import Noop

pytestmark = pytest.mark.seam  # the seam-sensitive set CI also runs on the newest transformers

ALL_SITES = ["layer_input", "attn_input", "head_output", "score_bias", "probs", "linear", "logits"]


@dataclass(eq=False)
class CountingNoop(Noop):
    """Noop that records (site, step) of every callback, so a parity test cannot pass with hooks that never ran."""

    seen: set = field(default_factory=set)

    def layer_input(self, ctx, state, hidden):
        self.seen.add(("layer_input", ctx.forward.step))
        return super().layer_input(ctx, state, hidden)

    def attn_input(self, ctx, state, hidden):
        self.seen.add(("attn_input", ctx.forward.step))

    def head_output(self, ctx, state, heads):
        self.seen.add(("head_output", ctx.forward.step))
        return super().head_output(ctx, state, heads)

    def score_bias(self, call, state):
        self.seen.add(("score_bias", call.forward.step))
        return super().score_bias(call, state)

    def edit_probs(self, call, state, probs, rows, row_mask):
        self.seen.add(("probs", call.forward.step))
        return probs

    def logits(self, ctx, state, logits):
        self.seen.add(("logits", ctx.forward.step))

    def linear_output(self, ctx, state, target, inputs, output):
        self.seen.add(("linear", ctx.forward.step))
        return super().linear_output(ctx, state, target, inputs, output)

    def assert_ran(self, steps: int) -> None:
        missing = {(site, step) for site in ALL_SITES for step in range(steps)} - self.seen
        assert not missing, f"callbacks never ran for {sorted(missing)}"


@pytest.mark.parametrize("name", ALL_TINY)
@pytest.mark.parametrize("batch_size", [1, 2])
def test_neutral_every_site_sdpa(name: str, batch_size: int) -> None:
    model, processor, info = load_tiny(name, "sdpa")
    batch = build_batch(info, processor, batch_size)
    stock = generate(model, info, batch)
    stock_prefill = prefill_logits(model, batch)
    noop = CountingNoop(sites=ALL_SITES)
    with hookkit.attach(model, noop) as session:
        assert session.describe()["attention_implementation"]["text"] == "hookkit_sdpa"
        hooked = generate(model, info, batch)
        hooked_prefill = prefill_logits(model, batch)
    noop.assert_ran(steps=4)
    assert torch.equal(stock.sequences, hooked.sequences)
    assert len(hooked.logits) == 4  # prefill + 3 cached decode steps
    assert max_logit_diff(stock, hooked) <= 1e-5
    assert masked_max_diff(stock_prefill, hooked_prefill, batch["attention_mask"]) <= 1e-5


@pytest.mark.parametrize("name", ALL_TINY)
def test_neutral_every_site_eager_is_bit_identical(name: str) -> None:
    model, processor, info = load_tiny(name, "eager")
    batch = build_batch(info, processor, 2)
    stock = generate(model, info, batch)
    stock_prefill = prefill_logits(model, batch)
    noop = CountingNoop(sites=ALL_SITES)
    with hookkit.attach(model, noop) as session:
        assert session.describe()["attention_implementation"]["text"] == "hookkit_eager"
        hooked = generate(model, info, batch)
        hooked_prefill = prefill_logits(model, batch)
    noop.assert_ran(steps=4)
    assert torch.equal(stock.sequences, hooked.sequences)
    assert max_logit_diff(stock, hooked) == 0.0
    assert masked_max_diff(stock_prefill, hooked_prefill, batch["attention_mask"]) == 0.0


@pytest.mark.parametrize("name", ALL_TINY)
def test_partial_probability_rows_on_sdpa(name: str) -> None:
    """Materialising only some query rows (the text after the image) keeps sdpa for the rest, exactly."""
    model, processor, info = load_tiny(name, "sdpa")
    region = "text_after_image" if info.is_vlm else "text_before_image"
    batch = build_batch(info, processor, 2)
    stock = generate(model, info, batch)
    with hookkit.attach(model, Noop(sites=["probs"], prob_rows_region=region)):
        hooked = generate(model, info, batch)
    assert torch.equal(stock.sequences, hooked.sequences)
    assert max_logit_diff(stock, hooked) <= 1e-5


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-llava", "tiny-gemma3"])
def test_installed_but_inactive_is_exact(name: str) -> None:
    """Callbacks returning None cost a call and change nothing, bit for bit."""
    model, processor, info = load_tiny(name, "sdpa")
    batch = build_batch(info, processor, 2)
    stock = generate(model, info, batch)
    with hookkit.attach(model, Noop(sites=ALL_SITES, exercise=False)):
        hooked = generate(model, info, batch)
    assert torch.equal(stock.sequences, hooked.sequences)
    assert max_logit_diff(stock, hooked) == 0.0


def test_vision_tower_keeps_its_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only the text layers reach hookkit's attention function: once per text layer per forward."""
    model, processor, info = load_tiny("tiny-llava", "sdpa")
    seen: list[str] = []
    with hookkit.attach(model, Noop(sites=["score_bias"])) as session:
        registered = compat.attention_functions()["hookkit_sdpa"]

        def recording(module, *args, **kwargs):
            seen.append(type(module).__name__)
            return registered(module, *args, **kwargs)

        monkeypatch.setitem(compat.attention_functions(), "hookkit_sdpa", recording)
        model(**build_batch(info, processor, 1))
        assert session.describe()["vision_attention_implementation"] == "sdpa"
    assert seen == [type(info.attentions[0]).__name__] * info.num_layers
    assert compat.attn_implementation(model.config.vision_config) == "sdpa"
