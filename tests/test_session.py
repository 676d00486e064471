"""Session safety, composition and per-sample state."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from conftest import load_tiny
from helpers import build_batch, generate, max_logit_diff

import hookkit
from hookkit import compat
from hookkit.core.intervention import HookContext, Intervention
from hookkit.core.recipe import Recipe
from hookkit.core.sites import Site
from hookkit.errors import AttachError, ConfigError, UnsupportedModelError
from hookkit.methods.noop import Noop

pytestmark = pytest.mark.seam  # the seam-sensitive set CI also runs on the newest transformers


def snapshot(model: torch.nn.Module) -> dict[str, Any]:
    """Everything attach could have changed: weights, hooks, hookkit attributes, attention implementations."""
    cfg = model.config
    subs = {key: compat.attn_implementation(sub) for key, sub in compat.sub_configs(cfg).items()}
    return {
        "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
        "hooks": {name: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for name, m in model.named_modules()},
        "attrs": {name: sorted(k for k in vars(m) if "hookkit" in k) for name, m in model.named_modules()},
        "attn": (compat.attn_implementation(cfg), subs),
        "generate_attr": "generate" in vars(model),
    }


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["state"].keys() == after["state"].keys()
    for k in before["state"]:
        assert torch.equal(before["state"][k], after["state"][k]), k
    assert before["hooks"] == after["hooks"]
    assert before["attrs"] == after["attrs"]
    assert before["attn"] == after["attn"]
    assert before["generate_attr"] == after["generate_attr"]


@dataclass(eq=False)
class Explode(Intervention):
    """Raises ``error`` at decode step ``at_step`` from the score-bias site (mid-generate)."""

    name = "test_explode"
    at_step: int = 2
    error: type[BaseException] = RuntimeError

    def bind(self, model):
        return {Site.SCORE_BIAS: frozenset(range(model.num_layers)), Site.HEAD_OUTPUT: frozenset({0})}

    def score_bias(self, call, state):
        if call.forward.step == self.at_step:
            raise self.error("boom")
        return None

    def head_output(self, ctx, state, heads):
        return heads * 2.0


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-gemma3", "tiny-llama"])
@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_or_interrupted_generate_leaves_model_bit_identical(name: str, error: type[BaseException]) -> None:
    model, processor, info = load_tiny(name)
    batch = build_batch(info, processor, 2)
    reference = generate(model, info, batch)
    before = snapshot(model)
    with pytest.raises(error), hookkit.attach(model, Explode(at_step=2, error=error)):
        generate(model, info, batch)
    assert_same(before, snapshot(model))
    again = generate(model, info, batch)
    assert torch.equal(reference.sequences, again.sequences) and max_logit_diff(reference, again) == 0.0


def test_detach_restores_everything_and_double_detach_is_an_error() -> None:
    model, processor, info = load_tiny("tiny-llava")
    before = snapshot(model)
    session = hookkit.attach(model, Noop())
    assert snapshot(model)["attn"] != before["attn"]  # the text tower really was switched
    session.detach()
    assert_same(before, snapshot(model))
    with pytest.raises(AttachError, match="already detached"):
        session.detach()


def test_double_attach_is_an_error_and_leaves_the_first_session_working() -> None:
    model, processor, info = load_tiny("tiny-llama")
    with hookkit.attach(model, Noop(sites=["head_output"])) as first:
        before = snapshot(model)
        with pytest.raises(AttachError, match="already has an attached hookkit session"):
            hookkit.attach(model, Noop(sites=["score_bias"]))
        assert_same(before, snapshot(model))
        assert first.attached


def test_failed_attach_changes_nothing() -> None:
    model, processor, info = load_tiny("tiny-llava")
    before = snapshot(model)
    with pytest.raises(ConfigError, match=r"noop\.layers.*out of range.*allowed: 0\.\.3"):
        hookkit.attach(model, Noop(layers=[0, 7]))
    assert_same(before, snapshot(model))


def test_attach_failing_half_way_is_rolled_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hooks already installed when a later step fails are removed again."""
    from hookkit.core import session as session_mod

    model, processor, info = load_tiny("tiny-llava")
    before = snapshot(model)

    def fail(self, *args, **kwargs):
        raise RuntimeError("simulated failure while switching attention")

    monkeypatch.setattr(session_mod.Session, "_set_text_attn", fail)
    with pytest.raises(RuntimeError, match="simulated"):
        hookkit.attach(model, Noop())
    monkeypatch.undo()
    assert_same(before, snapshot(model))


def test_unsupported_attention_backend_is_refused_cleanly(monkeypatch: pytest.MonkeyPatch) -> None:
    model, processor, info = load_tiny("tiny-llama")
    before = snapshot(model)
    real = compat.attn_implementation
    monkeypatch.setattr(compat, "attn_implementation",
                        lambda cfg: "flex_attention" if cfg is info.text_config else real(cfg))
    with pytest.raises(UnsupportedModelError, match="sdpa or eager.*flex_attention"):
        hookkit.attach(model, Noop(sites=["head_output", "score_bias"]))
    monkeypatch.undo()
    assert_same(before, snapshot(model))


def test_unsupported_model_names_what_is_missing() -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64))
    with pytest.raises(UnsupportedModelError, match="no attention modules with q_proj, k_proj, v_proj, o_proj"):
        hookkit.attach(model, Noop())


def test_unknown_alias_lists_the_allowed_names() -> None:
    with pytest.raises(ConfigError, match=r"unknown model 'lava'.*allowed:.*'llava'.*'tiny-llava'"):
        hookkit.load("lava")


def test_unknown_method_and_parameter() -> None:
    with pytest.raises(ConfigError, match=r"method: unknown method 'vhrr' \(allowed: .*'noop'"):
        Recipe.single("vhrr").build_interventions()
    with pytest.raises(ConfigError, match=r"noop\.alpha: unknown parameter \(allowed: 'sites'"):
        Recipe.single("noop", {"alpha": 2}).build_interventions()


@dataclass(eq=False)
class AffineHeads(Intervention):
    """heads * mul + add on one layer."""

    name = "test_affine"
    layer: int = 1
    mul: float = 1.0
    add: float = 0.0

    def bind(self, model):
        return {Site.HEAD_OUTPUT: frozenset({self.layer})}

    def head_output(self, ctx: HookContext, state: Any, heads: torch.Tensor) -> torch.Tensor:
        return heads * self.mul + self.add


def test_two_methods_on_the_same_site_and_layer_conflict_unless_stacking_is_allowed() -> None:
    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 1)
    a, b = AffineHeads(mul=2.0), AffineHeads(add=0.5)
    with pytest.raises(ConfigError, match=r"allow_stacking.*both write site 'head_output' on layer 1"):
        hookkit.attach(model, [a, b])
    with torch.no_grad():
        with hookkit.attach(model, [a, b], allow_stacking=["head_output"]):
            ab = model(**batch).logits
        with hookkit.attach(model, [b, a], allow_stacking=True):
            ba = model(**batch).logits
        with hookkit.attach(model, AffineHeads(mul=2.0, add=0.5)):  # (x*2)+0.5: the declared order a, b
            expected_ab = model(**batch).logits
        with hookkit.attach(model, AffineHeads(mul=2.0, add=1.0)):  # (x+0.5)*2: the order b, a
            expected_ba = model(**batch).logits
    assert torch.allclose(ab, expected_ab, atol=1e-6) and torch.allclose(ba, expected_ba, atol=1e-6)
    assert (ab - ba).abs().max() > 1e-4


def test_different_layers_compose_without_stacking() -> None:
    model, processor, info = load_tiny("tiny-llama")
    with hookkit.attach(model, [AffineHeads(layer=0, mul=2.0), AffineHeads(layer=1, mul=3.0)]) as session:
        hooks = session.describe()["hooks"]["head_output"]
    assert hooks == {"0": ["test_affine"], "1": ["test_affine"]}


@dataclass(eq=False)
class CountSamples(Intervention):
    name = "test_count_samples"
    created: list[int] = field(default_factory=list)
    steps_seen: list[list[int]] = field(default_factory=list)

    def bind(self, model):
        return {Site.LAYER_INPUT: frozenset({0})}

    def new_state(self, sample):
        self.created.append(sample.batch_size)
        state = {"steps": []}
        self.steps_seen.append(state["steps"])
        return state

    def layer_input(self, ctx, state, hidden):
        state["steps"].append(ctx.forward.step)
        return None


def test_state_is_recreated_for_every_new_input() -> None:
    model, processor, info = load_tiny("tiny-llava")
    probe = CountSamples()
    with hookkit.attach(model, probe):
        generate(model, info, build_batch(info, processor, 2), new_tokens=3)
        generate(model, info, build_batch(info, processor, 1), new_tokens=2)
    assert probe.created == [2, 1]
    assert probe.steps_seen == [[0, 1, 2], [0, 1]]


def test_describe_lists_layers_heads_regions_and_hooks() -> None:
    model, processor, info = load_tiny("tiny-qwen2-vl")
    with hookkit.attach(model, Noop(sites=["score_bias", "head_output"], layers=[1])) as session:
        d = session.describe()
    assert (d["num_layers"], d["num_heads"], d["num_kv_heads"], d["head_dim"]) == (4, 4, 2, 16)
    assert d["regions"] == ["padding", "text_before_image", "image", "text_after_image", "generated"]
    assert d["hooks"] == {"head_output": {"1": ["noop"]}, "score_bias": {"1": ["noop"]}}
    assert d["image_token_ids"] == [500] and d["vision_modules"] == ["model.visual"]


def test_vlm_without_image_runs_and_regions_are_text_only() -> None:
    model, processor, info = load_tiny("tiny-llava")
    batch = build_batch(info, processor, 2, with_image=False)
    assert not (batch["input_ids"] == 500).any()
    with hookkit.attach(model, Noop(sites=["head_output"])) as session:
        model(**batch)
        regions = session.tracker.regions
    assert set(regions.unique().tolist()) <= {0, 1}
