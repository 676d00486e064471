"""VAR: neutral exactness, row sums, moved mass, row selection, per-sample sinks, batching, the dim finder.

Random tiny models have no natural attention sinks, so the tests plant them: a layer-1 input edit adds a massive
value on two hidden dims at chosen slots (BOS as a text sink, some image tokens as visual sinks); the residual
stream carries it to the inputs of layers >= 2, where VAR looks. With hidden size 64, |x_d| / RMS(x) is at most
sqrt(64 / 2) ~ 5.7 for two equal massive dims, so tests use tau = 4 (real models: tau = 20 on 4096 dims).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
import torch
from conftest import VLM_TINY, load_tiny
from helpers import make_image, suppressed_tokens
from test_session import assert_same, snapshot

import hookkit
from hookkit.core.intervention import Intervention
from hookkit.core.regions import Region
from hookkit.core.sites import Site
from hookkit.errors import ConfigError
from hookkit.generation import generate
from hookkit.methods.var import VAR, find_sink_dims

DIMS = [5, 17]
PROMPTS = ["Describe this image in detail.", "Is there a dog in the image?"]


@dataclass(eq=False)
class PlantSinks(Intervention):
    """Adds ``value`` on ``DIMS`` at the first real token and at image tokens number ``image_picks`` of each row."""

    name = "test_plant_sinks"
    image_picks: list[list[int]] = field(default_factory=lambda: [[1, 4], [2, 6]])
    value: float = 30.0

    def bind(self, model):
        return {Site.LAYER_INPUT: frozenset({1})}

    def new_state(self, sample):
        planted = torch.zeros(sample.regions.shape, dtype=torch.bool)
        for row in range(sample.batch_size):
            real = (sample.regions[row] != Region.PADDING).nonzero().flatten()
            image = (sample.regions[row] == Region.IMAGE).nonzero().flatten()
            planted[row, real[0]] = True
            picks = self.image_picks[row % len(self.image_picks)]
            planted[row, image[[p % len(image) for p in picks]]] = True
        return planted

    def layer_input(self, ctx, planted, hidden):
        if not ctx.is_prefill:
            return None
        hidden = hidden.clone()
        for d in DIMS:
            hidden[..., d] += planted.to(hidden.device) * self.value
        return hidden


@dataclass(eq=False)
class RecordingVAR(VAR):
    """VAR that keeps (probs before, probs after, row_mask, key masks) of every edit for the checks below."""

    edits: list[dict[str, Any]] = field(default_factory=list)

    def edit_probs(self, call, state, probs, rows, row_mask):
        out = super().edit_probs(call, state, probs, rows, row_mask)
        in_prompt = call.k_slots < state.prompt_length
        sinks = state.sinks[call.layer][:, call.k_slots.clamp(max=state.prompt_length - 1)] & in_prompt
        self.edits.append({"layer": call.layer, "before": probs.clone(), "after": out.clone(), "row_mask": row_mask,
                           "sinks": sinks, "image": call.key_mask(Region.IMAGE), "step": call.forward.step})
        return out


def _run(model, processor, info, interventions, prompts=PROMPTS, images=None, **kw):
    images = images or [make_image(i) for i in range(len(prompts))]
    with hookkit.attach(model, interventions) as session:
        out = generate(model, processor, prompts, images, max_new_tokens=4, output_logits=True,
                       suppress_tokens=suppressed_tokens(info) or None, **kw)
        states = dict(session.states)
    return out, states


def _var(**kw) -> dict[str, Any]:
    return {"tau": 4.0, "sink_dims": DIMS, "summ": 0.0, "rho": 0.0, **kw}


@pytest.mark.parametrize("name", VLM_TINY)
def test_p_move_zero_reproduces_stock_with_the_edit_path_running(name: str) -> None:
    model, processor, info = load_tiny(name)
    reference, _ = _run(model, processor, info, [PlantSinks()])
    var = RecordingVAR(**_var(p_move=0.0))
    hooked, states = _run(model, processor, info, [PlantSinks(), var])
    assert var.edits, "the redistribution path must have run"
    assert states[var].stats["rows_selected"] > 0
    assert torch.equal(reference.sequences, hooked.sequences)
    assert max((a - b).abs().max().item() for a, b in zip(reference.logits, hooked.logits)) <= 1e-5


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-gemma3"])
@pytest.mark.parametrize("p_move", [0.4, 0.6])
def test_rows_sum_to_one_and_the_moved_mass_is_p_move_times_the_sink_mass(name: str, p_move: float) -> None:
    model, processor, info = load_tiny(name)
    var = RecordingVAR(**_var(p_move=p_move, summ=0.05, rho=0.3))
    _run(model, processor, info, [PlantSinks(), var])
    assert {e["step"] for e in var.edits} >= {0, 1, 2}  # prefill and decode steps
    changed_somewhere = False
    for e in var.edits:
        before, after = e["before"], e["after"]
        sinks, image = e["sinks"][:, None, None], e["image"][:, None, None]
        nonsink_image = image & ~sinks
        assert torch.allclose(after.sum(-1), torch.ones_like(after.sum(-1)), atol=1e-5)
        vis = (before * image).sum(-1)
        share = (before * nonsink_image).sum(-1) / vis.clamp_min(1e-12)
        has_visual_sink = (e["sinks"] & e["image"]).any(-1)[:, None, None]
        expected_rows = e["row_mask"][:, None, :] & (vis >= 0.05) & (share >= 0.3) & has_visual_sink
        changed = (after - before).abs().amax(-1) > 0
        assert torch.equal(changed, expected_rows & ((before * sinks).sum(-1) > 0)), "only selected rows change"
        sink_mass = (before * sinks).sum(-1)
        moved_out = sink_mass - (after * sinks).sum(-1)
        moved_in = (after * nonsink_image).sum(-1) - (before * nonsink_image).sum(-1)
        assert torch.allclose(moved_out[expected_rows], p_move * sink_mass[expected_rows], atol=1e-6)
        assert torch.allclose(moved_in[expected_rows], p_move * sink_mass[expected_rows], atol=1e-6)
        # proportional split: each non-sink image column grows by the same factor 1 + p·S/N
        nonsink_mass = (before * nonsink_image).sum(-1, keepdim=True)
        grown = before * (1 + p_move * sink_mass.unsqueeze(-1) / nonsink_mass.clamp_min(1e-12))
        target = expected_rows.unsqueeze(-1) & nonsink_image
        assert torch.allclose(after[target], grown[target], atol=1e-6)
        changed_somewhere |= bool(changed.any())
    assert changed_somewhere


def test_only_text_after_the_image_and_decode_queries_are_materialised() -> None:
    model, processor, info = load_tiny("tiny-llava")
    var = RecordingVAR(**_var(p_move=0.5))
    _, states = _run(model, processor, info, [PlantSinks(), var])
    prefill = [e for e in var.edits if e["step"] == 0]
    decode = [e for e in var.edits if e["step"] > 0]
    assert prefill and decode
    assert all(e["before"].shape[2] == 1 for e in decode)  # one query row per decoding step
    text_after = states[var].image.shape  # prompt shape
    for e in prefill:  # never image or pre-image rows: fewer rows than the prompt
        assert e["before"].shape[2] < text_after[1]


def test_layers_zero_one_and_the_last_are_never_edited() -> None:
    model, processor, info = load_tiny("tiny-gemma3")  # 4 layers: only layer 2 is editable
    var = RecordingVAR(**_var(p_move=0.5))
    _run(model, processor, info, [PlantSinks(), var])
    assert {e["layer"] for e in var.edits} == {2}
    with hookkit.attach(model, VAR(**_var())) as session:
        assert set(session.describe()["hooks"]["probs"]) == {"2"}


def test_sinks_are_detected_for_every_sample() -> None:
    model, processor, info = load_tiny("tiny-llava")
    var = VAR(**_var(p_move=0.5))
    found = []
    for picks in ([[1, 4]], [[7, 9]]):
        plant = PlantSinks(image_picks=picks)
        _, states = _run(model, processor, info, [plant, var], prompts=PROMPTS[:1], images=[make_image(0)])
        regions_image = states[var].image[0].nonzero().flatten()
        sink_slots = states[var].sinks[2][0].nonzero().flatten().tolist()
        found.append(sink_slots)
        assert set(regions_image[picks[0]].tolist()) <= set(sink_slots)
    assert found[0] != found[1]


def test_batch_of_two_with_different_image_positions_equals_single_runs() -> None:
    model, processor, info = load_tiny("tiny-llava")
    images = [make_image(0), make_image(1)]
    prompts = ["Is there a dog in the image? Please answer yes or no.", "Describe it."]
    batched, _ = _run(model, processor, info, [PlantSinks(), VAR(**_var(p_move=0.6))], prompts=prompts,
                      images=images)
    batch = info.adapter.build_inputs(processor, prompts, images)
    image_starts = [int((row == info.image_token_ids[0]).nonzero()[0]) for row in batch["input_ids"]]
    assert image_starts[0] != image_starts[1]
    for row in range(2):
        plant = PlantSinks(image_picks=[PlantSinks().image_picks[row]])
        single, _ = _run(model, processor, info, [plant, VAR(**_var(p_move=0.6))], prompts=[prompts[row]],
                         images=[images[row]])
        new = single.sequences.shape[1] - single.prompt_length
        assert torch.equal(batched.sequences[row, -new:], single.sequences[0, -new:])
        assert max((a[row] - b[0]).abs().max().item() for a, b in zip(batched.logits, single.logits)) <= 1e-5


def test_redistribution_changes_the_output() -> None:
    model, processor, info = load_tiny("tiny-llava")
    reference, _ = _run(model, processor, info, [PlantSinks()])
    hooked, _ = _run(model, processor, info, [PlantSinks(), VAR(**_var(p_move=0.9))])
    assert max((a - b).abs().max().item() for a, b in zip(reference.logits, hooked.logits)) > 1e-3


def test_automatic_sink_dims_find_planted_massive_dims() -> None:
    model, processor, info = load_tiny("tiny-llava")
    with hookkit.attach(model, PlantSinks()):
        dims = find_sink_dims(model, processor, PROMPTS, [make_image(0), make_image(1)], tau=4.0)
    assert dims == DIMS
    # the same finder runs per sample inside VAR with sink_dims="auto"
    var = VAR(tau=4.0, sink_dims="auto", summ=0.0, rho=0.0)
    _, states = _run(model, processor, info, [PlantSinks(), var])
    assert states[var].dims[2].nonzero()[:, 1].unique().tolist() == DIMS
    assert states[var].sinks[2].sum() == 6  # BOS + 2 image tokens in each of the 2 rows


def test_conventions_code_and_paper_are_both_reachable() -> None:
    model, processor, info = load_tiny("tiny-llava")
    cases = [({}, 0.4, 0.5), ({"reading": "paper"}, 0.6, 0.5), ({"p_code": 0.6}, 0.4, 0.5),
             ({"p_move": 0.6}, 0.6, 0.5), ({"rho_code": 0.2}, 0.4, 0.8), ({"rho": 0.9}, 0.4, 0.9)]
    for params, p_move, rho in cases:
        var = VAR(sink_dims=DIMS, **params)
        assert var.effective == pytest.approx({"p_move": p_move, "rho": rho})
        with hookkit.attach(model, var) as session:
            settings = session.resolved(var)
            assert (settings.p_move, settings.rho) == pytest.approx((p_move, rho))


@pytest.mark.parametrize("params,field", [
    ({"tau": 0}, "var.tau"), ({"tau": -3}, "var.tau"), ({"rho": 1.5}, "var.rho"), ({"rho": -0.1}, "var.rho"),
    ({"p_move": 1.2}, "var.p_move"), ({"p_code": -0.5}, "var.p_code"), ({"summ": 2}, "var.summ"),
    ({"p_move": 0.5, "p_code": 0.5}, "var.p_move"), ({"sink_dims": "llama-9b"}, "var.sink_dims"),
    ({"sink_dims": [5, 4096]}, "var.sink_dims"), ({"first_layer": 9}, "var.first_layer"),
])
def test_bad_parameters_name_the_field_and_leave_the_model_untouched(params: dict, field: str) -> None:
    model, processor, info = load_tiny("tiny-llava")
    before = snapshot(model)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        hookkit.attach(model, VAR(**{"sink_dims": DIMS, **params}))
    assert_same(before, snapshot(model))


def test_two_var_instances_keep_separate_state() -> None:
    """No class-level state: two models with their own VAR sessions at the same time do not interfere."""
    model_a, processor, info = load_tiny("tiny-llava")
    model_b, _, _ = load_tiny("tiny-llava", "eager")
    var_a, var_b = VAR(**_var(p_move=0.5)), VAR(**_var(p_move=0.5))
    with hookkit.attach(model_a, [PlantSinks(image_picks=[[1, 4]]), var_a]) as sa, \
            hookkit.attach(model_b, [PlantSinks(image_picks=[[7, 9]]), var_b]) as sb:
        for model in (model_a, model_b):
            generate(model, processor, PROMPTS[:1], [make_image(0)], max_new_tokens=2)
        sinks_a, sinks_b = sa.states[var_a].sinks[2], sb.states[var_b].sinks[2]
    assert not torch.equal(sinks_a, sinks_b)
