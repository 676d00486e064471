"""VHD / VHR: neutral exactness, head selection against direct tensor math, lock-step vs probe, bad input."""

from __future__ import annotations

import pytest
import torch
from conftest import VLM_TINY, load_tiny
from helpers import make_image, suppressed_tokens
from test_session import assert_same, snapshot

import hookkit
from hookkit.errors import ConfigError, InputError, UnsupportedModelError
from hookkit.generation import generate
from hookkit.methods.vhr import VHR, compute_vhd, select_heads

PROMPTS = ["Describe this image in detail.", "Is there a dog in the image?"]


def _gen(model, processor, info, prompts=PROMPTS, images=None, **kw):
    images = images or [make_image(i) for i in range(len(prompts))]
    return generate(model, processor, prompts, images, max_new_tokens=5, output_logits=True,
                    suppress_tokens=suppressed_tokens(info) or None, **kw)


def _max_diff(a, b) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits))


@pytest.mark.seam
@pytest.mark.parametrize("name", VLM_TINY)
@pytest.mark.parametrize("selection", ["lockstep", "probe"])
def test_alpha_one_reproduces_stock(name: str, selection: str) -> None:
    model, processor, info = load_tiny(name)
    stock = _gen(model, processor, info)
    vhr = VHR(alpha=1.0, selection=selection)
    with hookkit.attach(model, vhr) as session:
        hooked = _gen(model, processor, info)
        heads = session.states[vhr].heads
    assert heads, "selection must have run"
    assert torch.equal(stock.sequences, hooked.sequences)
    assert _max_diff(stock, hooked) <= 1e-5


def test_select_heads_outlier_and_median_rules() -> None:
    vhd = torch.tensor([1.0, 2.0, 3.0, 10.0])
    ta = torch.tensor([1.0, 1.0, 1.0, 10.0])
    # head 3 is an outlier in both VHD and TA -> zeroed -> [1, 2, 3, 0]; lower median 1 -> heads 1, 2
    assert select_heads(vhd, ta).tolist() == [False, True, True, False]
    # outlier in VHD only (TA normal): kept; lower median of [1, 2, 3, 10] is 2 -> heads 2, 3
    assert select_heads(vhd, torch.tensor([1.0, 1.0, 10.0, 1.0])).tolist() == [False, False, True, True]
    assert select_heads(vhd, ta, outlier_rule=False).tolist() == [False, False, True, True]
    # ties at the median are not selected ("fewer with ties")
    assert select_heads(torch.tensor([1.0, 1.0, 1.0, 5.0]), torch.ones(4), outlier_rule=False).tolist() == \
        [False, False, False, True]


def _reference_selection(vhd: torch.Tensor, ta: torch.Tensor, outlier: bool) -> torch.Tensor:
    """Eq. 6-7 written out per row with plain Python statistics (population sigma, lower median)."""
    rows = []
    for v, t in zip(vhd.tolist(), ta.tolist()):
        n = len(v)
        mv, mt = sum(v) / n, sum(t) / n
        sv = (sum((x - mv) ** 2 for x in v) / n) ** 0.5
        st = (sum((x - mt) ** 2 for x in t) / n) ** 0.5
        if outlier:
            v = [0.0 if (x > mv + sv and y > mt + st) else x for x, y in zip(v, t)]
        median = sorted(v)[(n - 1) // 2]
        rows.append([x > median for x in v])
    return torch.tensor(rows)


def _manual_vhr(model, info, batch, layers, alpha, outlier, scale: bool):
    """Independent lock-step (scale=True) or probe (scale=False) selection with plain o_proj pre-hooks."""
    n = batch["input_ids"].shape[0] // 2
    chosen, handles = {}, []
    for layer in layers:
        def hook(module, args, layer=layer):
            x = args[0]
            heads = x.view(*x.shape[:-1], info.num_heads, info.head_dim)
            last = heads[:, -1].float()
            vhd = (last[:n] - last[n:]).norm(dim=-1)
            ta = last[n:].pow(2).sum(-1)
            mask = _reference_selection(vhd, ta, outlier)
            chosen[layer] = (mask, vhd)
            if not scale:
                return None
            factor = torch.where(torch.cat([mask, mask]), alpha, 1.0)[:, None, :, None].to(x.dtype)
            return ((heads * factor).view(x.shape),)

        handles.append(info.o_proj(layer).register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(**batch)
    finally:
        for h in handles:
            h.remove()
    return chosen


@pytest.mark.parametrize("name", ["tiny-llava", "tiny-qwen2-vl", "tiny-instructblip"])
@pytest.mark.parametrize("selection", ["lockstep", "probe"])
@pytest.mark.parametrize("outlier", [True, False])
def test_selected_heads_equal_direct_tensor_math(name: str, selection: str, outlier: bool) -> None:
    model, processor, info = load_tiny(name)
    images = [make_image(0), make_image(1)]
    vhr = VHR(alpha=2.0, selection=selection, outlier_rule=outlier, layers=[0, 1, 2, 3])
    with hookkit.attach(model, vhr) as session:
        _gen(model, processor, info, images=images)
        state = session.states[vhr]
    paired = info.adapter.build_inputs(processor, PROMPTS + PROMPTS, images + [None, None])
    expected = _manual_vhr(model, info, paired, [0, 1, 2, 3], 2.0, outlier, scale=selection == "lockstep")
    for layer, (mask, vhd) in expected.items():
        assert torch.equal(state.heads[layer].cpu(), mask), f"layer {layer}"
        assert torch.allclose(state.vhd[layer].cpu(), vhd, atol=1e-5)
        assert state.heads[layer].shape == (2, info.num_heads)  # one head set per batch row


def test_lockstep_later_layers_see_reinforced_earlier_layers() -> None:
    model, processor, info = load_tiny("tiny-llava")
    vhds = {}
    for selection in ("lockstep", "probe"):
        vhr = VHR(alpha=2.0, selection=selection, layers=[0, 1, 2, 3])
        with hookkit.attach(model, vhr) as session:
            _gen(model, processor, info)
            vhds[selection] = session.states[vhr].vhd
    assert torch.allclose(vhds["lockstep"][0], vhds["probe"][0], atol=1e-5)  # nothing reinforced before layer 0
    assert max((vhds["lockstep"][k] - vhds["probe"][k]).abs().max().item() for k in (1, 2, 3)) > 1e-2


@pytest.mark.seam
def test_heads_are_frozen_after_the_first_step_and_rows_are_independent() -> None:
    """Lock-step VHR on a batch equals, per row, generation with that row's head set fixed from the start."""
    model, processor, info = load_tiny("tiny-llava")
    images = [make_image(0), make_image(1)]
    vhr = VHR(alpha=2.0)
    with hookkit.attach(model, vhr) as session:
        batched = _gen(model, processor, info, images=images)
        heads = session.states[vhr].heads
    assert any(not torch.equal(h[0], h[1]) for h in heads.values()), "rows should get their own head sets"
    for row in range(2):
        mask = torch.zeros(info.num_layers, info.num_heads, dtype=torch.bool)
        for layer, h in heads.items():
            mask[layer] = h[row]
        fixed = VHR(alpha=2.0, layers=sorted(heads))
        fixed.set_fixed_heads(mask)
        with hookkit.attach(model, fixed):
            single = _gen(model, processor, info, prompts=[PROMPTS[row]], images=[images[row]])
        new = single.sequences.shape[1] - single.prompt_length
        assert torch.equal(batched.sequences[row, -new:], single.sequences[0, -new:])
        assert max((a[row] - b[0]).abs().max().item() for a, b in zip(batched.logits, single.logits)) <= 1e-5


@pytest.mark.seam
def test_alpha_two_changes_the_output() -> None:
    model, processor, info = load_tiny("tiny-llava")
    stock = _gen(model, processor, info)
    with hookkit.attach(model, VHR(alpha=2.0)):
        hooked = _gen(model, processor, info)
    assert _max_diff(stock, hooked) > 1e-2


def test_default_layers_follow_the_paper_and_scale_with_depth() -> None:
    from hookkit.models.instructblip import InstructBlipAdapter
    from hookkit.models.llava import LlavaAdapter
    from hookkit.models.qwen_vl import Qwen2VLAdapter

    assert LlavaAdapter().vhr_layers(32) == [1, *range(18, 32)]
    assert InstructBlipAdapter().vhr_layers(32) == list(range(14, 32))
    assert Qwen2VLAdapter().vhr_layers(28) == [1, *range(16, 28)]
    assert LlavaAdapter().vhr_layers(4) == [1, 2, 3]


def test_bind_resolves_layers_without_touching_the_method() -> None:
    """The resolved layer set lives in the session's binding, so one VHR instance serves models of any depth."""
    vhr = VHR()
    for name in ("tiny-llava", "tiny-instructblip"):
        model, _, info = load_tiny(name)
        with hookkit.attach(model, vhr) as session:
            assert session.resolved(vhr) == info.adapter.vhr_layers(info.num_layers)
    assert vhr.layers is None and not [k for k in vars(vhr) if k.startswith("_") and k != "_fixed_mask"]


def test_plain_generate_without_the_reference_branch_explains_itself() -> None:
    model, processor, info = load_tiny("tiny-llava")
    batch = info.adapter.build_inputs(processor, PROMPTS[:1], [make_image(0)])
    with hookkit.attach(model, VHR()), pytest.raises(RuntimeError, match=r"hookkit\.generation\.generate"):
        model.generate(**batch, max_new_tokens=2)


def test_compute_vhd_matches_hand_computation_and_reports_t_vhd() -> None:
    model, processor, info = load_tiny("tiny-llava")
    image = make_image(3)
    result = compute_vhd(model, processor, image, PROMPTS[0], generated_ids=[30, 31, 32])
    assert result.vhd.shape == (info.num_layers, info.num_heads) and result.vhd.dtype == torch.float32
    paired = info.adapter.build_inputs(processor, [PROMPTS[0], PROMPTS[0]], [image, None])
    expected = _manual_vhr(model, info, paired, range(info.num_layers), 1.0, True, scale=False)
    for layer, (_, vhd) in expected.items():
        assert torch.allclose(result.vhd[layer], vhd[0], atol=1e-5)
    assert len(result.t_vhd) == 3
    assert result.t_vhd[0] == pytest.approx(float(result.vhd.topk(4, dim=-1).values.sum()), rel=1e-5)


@pytest.mark.parametrize("params,field", [({"alpha": 0.0}, "vhr.alpha"), ({"alpha": -1}, "vhr.alpha"),
                                          ({"layers": [0, 9]}, "vhr.layers"), ({"selection": "x"}, "vhr.selection")])
def test_bad_parameters_name_the_field_and_leave_the_model_untouched(params: dict, field: str) -> None:
    model, processor, info = load_tiny("tiny-llava")
    before = snapshot(model)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        hookkit.attach(model, VHR(**params))
    assert_same(before, snapshot(model))


def test_vlm_method_on_a_text_model_is_refused() -> None:
    model, processor, info = load_tiny("tiny-llama")
    before = snapshot(model)
    with pytest.raises(UnsupportedModelError, match="method 'vhr' needs a vision-language model"):
        hookkit.attach(model, VHR())
    assert_same(before, snapshot(model))


def test_prompt_without_an_image_is_refused() -> None:
    model, processor, info = load_tiny("tiny-llava")
    with hookkit.attach(model, VHR()), pytest.raises(InputError, match="every prompt needs an image"):
        generate(model, processor, PROMPTS, [make_image(0), None])
