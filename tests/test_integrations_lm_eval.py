"""lm-evaluation-harness plug-in (``--model hookkit``): exactness against lm-eval's own ``hf`` model, padding, and
the ``hookkit harness lm-eval`` entry command end to end (tiny-llama, CPU, offline).

Needs ``lm_eval`` (``pip install 'hookkit[lm-eval]'``). Without it the module is skipped, unless
``HOOKKIT_REQUIRE_HARNESS=1`` (CI) turns the skip into a failure.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import require_optional

require_optional("lm_eval", "lm-eval", "HOOKKIT_REQUIRE_HARNESS")

import torch  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.models.huggingface import HFLM  # noqa: E402

from hookkit.cli.harness_cmd import main as harness_main  # noqa: E402
from hookkit.core.recipe import Recipe  # noqa: E402
from hookkit.errors import ConfigError  # noqa: E402
from hookkit.evals.corpus import kjv_chapters  # noqa: E402
from hookkit.integrations.lm_eval import HookkitLM  # noqa: E402
from hookkit.integrations.tasks import export_passkey  # noqa: E402
from hookkit.models.tiny import tiny_model_path  # noqa: E402

TASKS = "hookkit_mc,hookkit_kjv_ppl,hookkit_passkey"
#: LongHeads made active on tiny-llama's short prompts: 16-token chunks, 8 per head (K = 8), from position 128, also
#: on prompts that fit in its trained length (1024).
LONGHEADS = {"chunk_size": 16, "atten_length": 128, "fit_margin": 0}
LONGHEADS_ARGS = "method=longheads,param.chunk_size=16,param.atten_length=128,param.fit_margin=0"


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _run(out: Path, model: str, model_args: str, passkey_file: Path, *extra: str) -> SimpleNamespace:
    """``hookkit harness lm-eval -- ...`` on the three bundled tasks; results JSON and per-task samples."""
    metadata = json.dumps({"passkey_file": str(passkey_file), "kjv_chapters": 2})
    argv = ["lm-eval", "--", "--model", model, "--model_args", model_args, "--tasks", TASKS, "--batch_size", "4",
            "--metadata", metadata, "--output_path", str(out), "--log_samples", *extra]
    assert harness_main(argv) == 0
    results_file = sorted(out.rglob("results_*.json"))[-1]
    samples = {}
    for task in TASKS.split(","):
        (path,) = out.rglob(f"samples_{task}_*.jsonl")
        samples[task] = sorted((json.loads(line) for line in path.read_text().splitlines()),
                               key=lambda s: s["doc_id"])
    return SimpleNamespace(results=json.loads(results_file.read_text()), samples=samples)


@pytest.fixture(scope="module")
def passkey_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import hookkit

    _, tokenizer = hookkit.load("tiny-llama", dtype="float32")
    path = tmp_path_factory.mktemp("passkey") / "passkey_tiny.jsonl"
    return export_passkey(tokenizer, path, lengths=[96, 320], trials=2, seed=0, tokenizer_name="tiny-llama")


@pytest.fixture(scope="module")
def stock(tmp_path_factory: pytest.TempPathFactory, passkey_file: Path) -> SimpleNamespace:
    """lm-eval's own ``hf`` model on the tiny-llama checkpoint folder: the reference."""
    folder = tiny_model_path("tiny-llama")
    return _run(tmp_path_factory.mktemp("stock"), "hf", f"pretrained={folder},dtype=float32", passkey_file)


def _loglikelihoods(run: SimpleNamespace, task: str) -> list[float]:
    out = []
    for sample in run.samples[task]:
        for resp in sample["resps"]:
            value = resp[0]
            out.append(float(value[0] if isinstance(value, list) else value))
    return out


def _generations(run: SimpleNamespace) -> list[str]:
    return [s["filtered_resps"][0] for s in run.samples["hookkit_passkey"]]


def test_without_method_is_lm_evals_hf_model(tmp_path: Path, stock: SimpleNamespace, passkey_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``--model hookkit`` with no method: the same numbers as ``--model hf`` on every request type."""
    run = _run(tmp_path, "hookkit", "pretrained=tiny-llama,dtype=float32", passkey_file)
    table = capsys.readouterr().out
    assert "|hookkit_passkey|" in table and "|hookkit_mc" in table and "|hookkit_kjv_ppl|" in table
    for task in ("hookkit_mc", "hookkit_kjv_ppl"):
        assert _loglikelihoods(run, task) == _loglikelihoods(stock, task)
    assert _generations(run) == _generations(stock)
    assert run.results["results"] == stock.results["results"]
    assert run.results["config"]["hookkit"]["intervention"] is None


def test_noop_matches_stock_within_1e5(tmp_path: Path, stock: SimpleNamespace, passkey_file: Path) -> None:
    """A neutral intervention on every site (write paths forced) reproduces lm-eval's hf model to 1e-5 on
    loglikelihood (batched, padded) and rolling loglikelihood, and gives the same greedy generations."""
    run = _run(tmp_path, "hookkit", "pretrained=tiny-llama,dtype=float32,method=noop", passkey_file)
    for task in ("hookkit_mc", "hookkit_kjv_ppl"):
        ours, ref = _loglikelihoods(run, task), _loglikelihoods(stock, task)
        assert len(ours) == len(ref) > 0
        assert max(abs(a - b) for a, b in zip(ours, ref)) <= 1e-5 * max(1.0, max(abs(b) for b in ref))
    assert _generations(run) == _generations(stock)
    block = run.results["config"]["hookkit"]
    assert block["intervention"]["recipe_hash"] == Recipe.single("noop").hash()


def test_longheads_through_the_entry_command(tmp_path: Path, stock: SimpleNamespace, passkey_file: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    """``hookkit harness lm-eval -- --model hookkit --model_args pretrained=tiny-llama,method=longheads,...``: a
    results table, the recipe and its hash in the results, and the method really changes what the model does."""
    run = _run(tmp_path, "hookkit", f"pretrained=tiny-llama,dtype=float32,{LONGHEADS_ARGS}", passkey_file)
    out = capsys.readouterr().out
    assert "|hookkit_passkey|" in out and "|hookkit_kjv_ppl|" in out
    block = run.results["config"]["hookkit"]
    recipe = Recipe.single("longheads", LONGHEADS)
    assert block["intervention"]["recipe"] == recipe.to_dict()
    assert block["intervention"]["recipe_hash"] == recipe.hash()
    assert block["model"] == "tiny-llama" and block["model_fingerprint"]["family"] == "llama"
    # Rolling windows are far beyond 128 tokens: every document's loglikelihood moves.
    ours, ref = _loglikelihoods(run, "hookkit_kjv_ppl"), _loglikelihoods(stock, "hookkit_kjv_ppl")
    assert all(abs(a - b) > 1e-3 for a, b in zip(ours, ref))
    # Multiple-choice prompts stay below 128 tokens, where LongHeads is the stock attention.
    mc, mc_ref = _loglikelihoods(run, "hookkit_mc"), _loglikelihoods(stock, "hookkit_mc")
    assert max(abs(a - b) for a, b in zip(mc, mc_ref)) <= 1e-5 * max(1.0, max(abs(b) for b in mc_ref))


def _rolling_requests() -> list[Instance]:
    texts = ["\n".join(c.verses) for c in kjv_chapters()[:3]]  # about 920, 710 and 800 tiny-llama tokens
    return [Instance("loglikelihood_rolling", {}, (t,), i) for i, t in enumerate(texts)]


def _loglikelihood_requests() -> list[Instance]:
    long_context = " ".join("\n".join(c.verses) for c in kjv_chapters()[3:4])[:1500]
    pairs = [(long_context, " And the earth was without form"), (long_context[:900], " light"),
             (long_context[:1200], " and there was light"), ("The sky is", " blue")]
    return [Instance("loglikelihood", {}, pair, i) for i, pair in enumerate(pairs)]


def test_batched_loglikelihood_is_padding_exact_under_longheads() -> None:
    """lm-eval right-pads loglikelihood batches with token 0 and no mask; the plug-in re-lays them out left-padded
    (mask + real positions), so batch 4 gives batch 1's numbers. Without the re-layout LongHeads would treat the pad
    slots as prompt (its exact tail is counted from the end of the row) and the padded rows would change."""
    kwargs = {"pretrained": "tiny-llama", "dtype": "float32", "method": "longheads", "device": "cpu",
              **{f"param.{k}": v for k, v in LONGHEADS.items()}}
    single = HookkitLM(batch_size=1, **kwargs)
    batched = HookkitLM(batch_size=4, **kwargs)
    for requests, call in ((_rolling_requests(), "loglikelihood_rolling"), (_loglikelihood_requests(),
                                                                              "loglikelihood")):
        one = getattr(single, call)(requests, disable_tqdm=True)
        four = getattr(batched, call)(requests, disable_tqdm=True)
        one_v = [r[0] if isinstance(r, tuple) else r for r in one]
        four_v = [r[0] if isinstance(r, tuple) else r for r in four]
        assert max(abs(a - b) for a, b in zip(one_v, four_v)) <= 1e-4, (call, one_v, four_v)

        naive = HookkitLM(batch_size=4, **kwargs)
        naive._left_padded_call = lambda inps, lengths, lm=naive: HFLM._model_call(lm, inps)
        wrong = [r[0] if isinstance(r, tuple) else r for r in getattr(naive, call)(requests, disable_tqdm=True)]
        assert max(abs(a - b) for a, b in zip(one_v, wrong)) > 1e-2, "the padding test lost its teeth"
    assert single.scope.calls >= 2 and getattr(single.model, "_hookkit_session", None) is None


def test_row_lengths_come_from_the_requests_not_from_zeros() -> None:
    """A real token 0 at the end of a row is not mistaken for padding."""
    lm = HookkitLM(pretrained="tiny-llama", dtype="float32", method="noop", device="cpu")
    lm._row_inputs = {(5, 6, 0), (7, 8, 9, 10)}
    rows = torch.tensor([[5, 6, 0, 0], [7, 8, 9, 10]])
    assert lm._row_lengths(rows) == [3, 4]
    lm._row_inputs = None
    assert lm._row_lengths(rows) == [2, 4]  # fallback without the call's inputs: trailing zeros are padding


def test_reference_branch_methods_are_refused_before_loading() -> None:
    with pytest.raises(ConfigError, match="lmms-eval"):
        HookkitLM(pretrained="tiny-llava", method="vhr")


def test_unknown_method_parameter_fails_before_loading() -> None:
    with pytest.raises(ConfigError, match="longheads.chunk"):
        HookkitLM(pretrained="does-not-exist", method="longheads", **{"param.chunk": 16})


def test_model_args_typos_are_refused_not_ignored() -> None:
    """HFLM ignores unknown keywords when handed a loaded model; the plug-in refuses them before loading."""
    with pytest.raises(ConfigError, match="model_args.methd"):
        HookkitLM(pretrained="does-not-exist", methd="vhr")
    with pytest.raises(ConfigError, match="model_args.peft"):
        HookkitLM(pretrained="does-not-exist", peft="some/adapter")


def test_entry_point_resolves_to_the_plugin() -> None:
    """pyproject's ``[project.entry-points."lm_eval.models"] hookkit = ...``, loaded the way lm-eval's registry
    loads entry-point placeholders (0.4.13 itself only reads its static table; ``hookkit harness`` covers that)."""
    from importlib.metadata import EntryPoint

    from lm_eval.api.registry import Registry

    registry = Registry("models")
    registry.register("hookkit-ep", target=EntryPoint(name="hookkit", value="hookkit.integrations.lm_eval:HookkitLM",
                                                      group="lm_eval.models"))
    assert registry.get("hookkit-ep") is HookkitLM
