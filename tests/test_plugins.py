"""Outside packages extend hookkit through entry points: a method, a model family and an eval task.

``tests/plugins`` holds a package and its ``.dist-info`` (entry points included), exactly as ``pip install`` would
leave them in site-packages; putting the folder on ``sys.path`` makes ``importlib.metadata`` find them, and the
registries read them the first time they are asked for a name they do not hold.
"""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_tiny
from helpers import build_batch, generate, masked_max_diff, max_logit_diff, prefill_logits

import hookkit
from hookkit.cli.main import main
from hookkit.errors import ConfigError, UnsupportedModelError
from hookkit.methods.noop import Noop
from hookkit.registry import FAMILIES, METHODS, TASKS

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch):
    """The demo plug-in installed for one test; every registry forgets it afterwards."""
    monkeypatch.syspath_prepend(str(PLUGINS))
    importlib.invalidate_caches()
    for registry in (METHODS, FAMILIES, TASKS):
        monkeypatch.setattr(registry, "_entries", dict(registry._entries))
        monkeypatch.setattr(registry, "_plugins_loaded", False)
    yield
    sys.modules.pop("hookkit_plugin_demo", None)


def _tiny_gpt_neox():
    import transformers as T

    torch.manual_seed(0)
    sys.path.insert(0, str(PLUGINS))
    try:
        from hookkit_plugin_demo import _gpt_neox_config
    finally:
        sys.path.remove(str(PLUGINS))
    return T.GPTNeoXForCausalLM(_gpt_neox_config()).eval()


def test_without_the_plugin_the_names_are_unknown() -> None:
    assert "scale_heads" not in METHODS.names() and "next-token" not in TASKS.names()
    with pytest.raises(ConfigError, match=r"method: unknown method 'scale_heads'"):
        METHODS.get("scale_heads")
    with pytest.raises(UnsupportedModelError, match="no attention modules"):
        hookkit.get_model_info(_tiny_gpt_neox())


def test_an_outside_method_is_listed_built_and_exact_when_neutral(plugins, capsys) -> None:
    with pytest.warns(RuntimeWarning, match="'noop' is a built-in method"):  # a plug-in cannot replace a built-in
        names = METHODS.names()
    assert "scale_heads" in names and METHODS.get("noop") is Noop
    assert main(["list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in listed["methods"]["scale_heads"]["parameters"]] == ["factor", "heads"]

    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    stock = generate(model, info, batch)
    with hookkit.attach(model, hookkit.core.recipe.Recipe.single("scale_heads", {"factor": 1.0})):
        neutral = generate(model, info, batch)
    with hookkit.attach(model, hookkit.core.recipe.Recipe.single("scale_heads", {"factor": 0.25})):
        scaled = generate(model, info, batch)
    assert torch.equal(stock.sequences, neutral.sequences) and max_logit_diff(stock, neutral) <= 1e-5
    assert max_logit_diff(stock, scaled) > 1e-3


def test_an_outside_family_makes_a_new_architecture_attachable_and_exact(plugins) -> None:
    """GPT-NeoX: `layer.attention`, a per-head interleaved `query_key_value`, and `dense` (none of them generic)."""
    model, processor = hookkit.load("tiny-gpt-neox")  # the family's tiny twin comes with it
    info = hookkit.get_model_info(model)
    assert (info.family, info.projection_targets()) == ("gpt_neox", ["attention.query_key_value"])
    assert info.o_proj(0) is model.gpt_neox.layers[0].attention.dense
    batch = build_batch(info, processor, 2)
    stock, stock_prefill = generate(model, info, batch), prefill_logits(model, batch)
    with hookkit.attach(model, Noop()) as session:
        assert session.describe()["attention_implementation"]["text"] == "hookkit_sdpa"
        hooked, hooked_prefill = generate(model, info, batch), prefill_logits(model, batch)
    assert torch.equal(stock.sequences, hooked.sequences)
    assert max_logit_diff(stock, hooked) <= 1e-5
    assert masked_max_diff(stock_prefill, hooked_prefill, batch["attention_mask"]) <= 1e-5
    # The family's own split of the fused projection gives the module's queries and keys.
    captured = {}
    layer = model.gpt_neox.layers[0].attention
    handle = layer.query_key_value.register_forward_hook(lambda m, a, out: captured.update(qkv=out))
    with torch.no_grad():
        model(**batch)
    handle.remove()
    q, k = info.split_query_key({"attention.query_key_value": captured["qkv"]})
    heads = captured["qkv"].view(*captured["qkv"].shape[:-1], info.num_heads, 3 * info.head_dim)
    expected_q, expected_k, _ = heads.chunk(3, dim=-1)  # modeling_gpt_neox's own split
    assert torch.equal(q, expected_q.flatten(-2)) and torch.equal(k, expected_k.flatten(-2))


def test_an_outside_task_runs_on_the_shared_runner(plugins, tmp_path: Path, capsys) -> None:
    assert "next-token" in TASKS.names()
    out = tmp_path / "run"
    assert main(["eval", "next-token", "--model", "tiny-llama", "--output-path", str(out), "--no-progress"]) == 0
    assert "next-token match rate 1.00" in capsys.readouterr().out
    results = json.loads((out / "results_next_token.json").read_text())
    assert results["results"]["next_token"]["match_rate,none"] == 1.0
    lines = (out / "samples_next_token.jsonl").read_text().splitlines()
    assert len(lines) == 4
    with pytest.raises(SystemExit):
        main(["eval", "next-token", "--help"])
    assert "greedy next token" in capsys.readouterr().out
