"""Property-based tests: every registered method, every parameter, generated values; recipe files, generated damage.

For each method we start from a *neutral* configuration (it must reproduce the stock model) and replace one
parameter by a generated value: infinities, NaN, booleans, strings, wrong types, huge and empty lists, negative and
huge integers, or a plausible value. Exactly one of two outcomes is allowed, never a third (a raw exception, a NaN,
a silently changed model):

* a hookkit error (``ConfigError`` / ``UnsupportedModelError`` / ``InputError``) that names the field, or
* a run that completes with finite logits, and that still equals the stock model when the replaced parameter is
  one that keeps the configuration neutral.

Recipe files are generated too (truncated, wrong types, foreign fingerprints): loading and attaching them either
raises a hookkit error naming the field, or attaches.

The budget is bounded and seeded (``derandomize=True``): the same examples on every run, a few seconds per method.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import load_tiny
from helpers import build_batch, make_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hookkit
from hookkit.core.recipe import Recipe
from hookkit.errors import HookkitError
from hookkit.generation import generate
from hookkit.methods.registry import build_method, get_method, method_names

BUILTIN = ["noop", "vhr", "var", "longheads", "moh", "alora", "lora"]
# A neutral configuration per method, and the parameters whose value cannot break its neutrality.
NEUTRAL: dict[str, tuple[dict[str, Any], set[str]]] = {
    "noop": ({}, {"sites", "layers", "exercise", "prob_rows_region", "targets"}),
    "vhr": ({"alpha": 1.0}, {"layers", "selection", "outlier_rule", "outlier_std", "noise_tol"}),
    "var": ({"p_move": 0.0}, {"tau", "rho", "rho_code", "summ", "sink_dims", "first_layer", "skip_last_layer"}),
    # prompts here are far shorter than atten_length: LongHeads takes the stock path whatever else is set
    "longheads": ({}, {"gqa_selection", "include_self", "query_block", "layers", "prefill_selection", "exact_tail",
                       "tail_selection", "tail_recent", "score_rope", "fit_margin", "trace", "pair_stats"}),
    "moh": ({"shared": 2, "top_k": 2, "router_init_std": 0.0}, {"scalings", "balance_coef", "ste", "skip_heads",
                                                                 "layers", "lora_alpha", "lora_dropout", "seed"}),
    "alora": ({}, {"rank", "alpha", "num_heads", "variant", "dropout", "target_modules", "layers", "seed"}),
    "lora": ({}, {"rank", "alpha", "dropout", "target_modules", "layers", "seed"}),
}
MODEL = {"vhr": "tiny-llava", "var": "tiny-llava"}  # the rest on tiny-llama

WEIRD = st.one_of(
    st.sampled_from([math.inf, -math.inf, math.nan, True, False, None, "", "x", [], {}, [[1]], 10 ** 12, -1, 0,
                     0.5, 1, 2, 3, "default", "auto", "query_head", "token", "summary", "code", "paper"]),
    st.floats(allow_nan=True, allow_infinity=True, width=32),
    st.integers(min_value=-5, max_value=2 ** 40),
    st.text(max_size=4),
    st.lists(st.integers(min_value=-2, max_value=6), max_size=5),
    st.lists(st.integers(min_value=0, max_value=3), min_size=200, max_size=220),  # a huge list
    st.lists(st.sampled_from(["self_attn.q_proj", "self_attn.v_proj", "mlp.down_proj", "nope"]), max_size=3),
    st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), max_size=3),
)


def _inputs(name: str):
    model, processor, info = load_tiny(name)
    if info.is_vlm:
        batch = info.adapter.build_inputs(processor, ["Describe the image."], [make_image(0)])
    else:
        batch = build_batch(info, processor, 2)
    return model, processor, info, batch


def _stock_logits(name: str, _cache: dict = {}) -> torch.Tensor:  # noqa: B006 - a per-session memo
    if name not in _cache:
        model, _, _, batch = _inputs(name)
        with torch.no_grad():
            _cache[name] = model(**batch).logits
    return _cache[name]


def _diff(name: str, logits: torch.Tensor) -> float:
    """Largest difference from the stock model over the real (non-padding) positions."""
    _, _, _, batch = _inputs(name)
    keep = batch["attention_mask"].bool()
    return float((logits - _stock_logits(name))[keep].abs().max())


def _run(method: str, params: dict[str, Any]) -> torch.Tensor:
    name = MODEL.get(method, "tiny-llama")
    model, processor, info, batch = _inputs(name)
    iv = build_method(method, params)
    with hookkit.attach(model, iv), torch.no_grad():
        if iv.reference_branch() is not None:  # VHR: through hookkit.generation.generate (its no-image branch)
            out = generate(model, processor, ["Describe the image."], [make_image(0)],
                                              max_new_tokens=1, output_logits=True)
            return out.logits[0]
        return model(**batch).logits


def _check(method: str, param: str, value: Any) -> None:
    base, keeps_neutral = NEUTRAL[method]
    params = {**base, param: value}
    try:
        logits = _run(method, params)
    except HookkitError as exc:
        text = str(exc)
        assert f"{method}." in text or param in text or text.startswith(("recipe", "interventions")), \
            f"{method}.{param}={value!r}: the error does not name the field: {text}"
        return
    assert torch.isfinite(logits).all(), f"{method}.{param}={value!r} was accepted and gave non-finite logits"
    if param in keeps_neutral and NEUTRAL[method][0].get(param, object()) != value:
        if method == "vhr":
            return  # VHR's neutral run goes through generate: compared below on its own
        diff = _diff(MODEL.get(method, "tiny-llama"), logits)
        assert diff <= 1e-5, f"{method}.{param}={value!r} keeps the neutral setting but differs by {diff}"


def test_every_registered_method_is_covered() -> None:
    assert sorted(BUILTIN) == [n for n in method_names() if n in NEUTRAL] == sorted(NEUTRAL)


@pytest.mark.parametrize("method", BUILTIN)
def test_neutral_configuration_equals_stock(method: str) -> None:
    if method == "vhr":
        model, processor, info, _ = _inputs("tiny-llava")
        stock = generate(model, processor, ["Describe the image."], [make_image(0)],
                                            max_new_tokens=1, output_logits=True).logits[0]
        assert float((_run(method, NEUTRAL[method][0]) - stock).abs().max()) <= 1e-5
        return
    assert _diff(MODEL.get(method, "tiny-llama"), _run(method, NEUTRAL[method][0])) <= 1e-5


@pytest.mark.parametrize("method", BUILTIN)
@settings(max_examples=25, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_generated_parameters_are_refused_by_name_or_run_cleanly(method: str, data: st.DataObject) -> None:
    names = [p["name"] for p in get_method(method).parameters()]
    param = data.draw(st.sampled_from(names), label="parameter")
    value = data.draw(WEIRD, label="value")
    _check(method, param, value)


# ------------------------------------------------------------------------------------------------ recipe files
def _good_recipe(tmp: Path) -> dict[str, Any]:
    model, _, info = load_tiny("tiny-llava")
    return Recipe.single("vhr", {"alpha": 1.5}).to_dict() | {"model": info.fingerprint()}


RECIPE_DAMAGE = st.one_of(
    st.tuples(st.just("truncate"), st.integers(min_value=0, max_value=200)),
    st.tuples(st.just("set"), st.sampled_from(["hookkit_recipe", "methods", "allow_stacking", "model", "tensors"]),
              WEIRD),
    st.tuples(st.just("method"), st.sampled_from(["method", "params"]), WEIRD),
    st.tuples(st.just("param"), st.sampled_from(["alpha", "layers", "selection", "nope"]), WEIRD),
    st.tuples(st.just("fingerprint"), st.sampled_from(["family", "num_layers", "num_heads", "head_dim"]),
              st.one_of(st.integers(min_value=1, max_value=64), st.text(max_size=6))),
)


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
@given(damage=RECIPE_DAMAGE)
def test_generated_recipe_files_are_refused_by_name_or_attach(damage: tuple, tmp_path_factory) -> None:
    tmp = tmp_path_factory.mktemp("recipe")
    data = _good_recipe(tmp)
    kind = damage[0]
    if kind == "set":
        data[damage[1]] = damage[2]
    elif kind == "method":
        data["methods"][0][damage[1]] = damage[2]
    elif kind == "param":
        data["methods"][0]["params"][damage[1]] = damage[2]
    elif kind == "fingerprint":
        data["model"][damage[1]] = damage[2]
    text = json.dumps(data)
    if kind == "truncate":
        text = text[:damage[1]]
    path = tmp / "r.json"
    path.write_text(text)
    model, _, _ = load_tiny("tiny-llava")
    try:
        recipe = Recipe.load(path)
        hookkit.attach(model, recipe).detach()
    except HookkitError as exc:
        assert str(exc).split(":")[0].strip(), f"{damage}: an error with no field: {exc}"
        assert getattr(model, "_hookkit_session", None) is None
