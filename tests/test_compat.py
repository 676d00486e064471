"""The compatibility seam: one module touches transformers internals, and it copes with every cache keyword.

The guard test reads every Python file of the package, the tests and the benchmarks: none but
``hookkit/compat.py`` may import a transformers submodule, spell a cache keyword, or reach for the private
attributes the seam wraps. The behavioural tests run the seam's readers against both spellings a release has used,
and ``hookkit doctor`` is shown to FAIL when the cache keyword is broken on purpose (the transformers 5.24 bug).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import load_tiny
from helpers import build_batch

import hookkit
from hookkit import compat
from hookkit.cli.doctor_cmd import past_length_recorder
from hookkit.cli.main import main

pytestmark = pytest.mark.seam  # the seam-sensitive set CI also runs on the newest transformers

ROOT = Path(__file__).resolve().parents[1]
SEAM = ROOT / "hookkit" / "compat.py"
# Built from pieces so that this file does not trip its own guard.
OLD_CACHE = "past_" + "key_values"
RECURRENT_CACHE = "cache_" + "params"
FORBIDDEN = [
    (re.compile(r"^\s*(from|import)\s+transformers\.\w", re.M), "imports a transformers submodule"),
    (re.compile(rf"\b({OLD_CACHE}|{RECURRENT_CACHE})\b"), "spells a cache keyword"),
    (re.compile(r"\((?:[^()]*,)?\s*cache\s*=(?!=)"), "passes the cache keyword"),
    # a model output's cache field (other objects may well have a `.cache` of their own)
    (re.compile(r"""\b(out|outs|output|outputs|first|gen|generated|result|res|step)\.cache\b(?!_)|"""
                r"""(get|getattr)\([^)]*["']cache["']"""), "reads the cache field"),
    (re.compile(r"\b(_attn_implementation\w*|_global_mapping|_from_config|get_text_config|batch_select_indices|"
                r"get_seq_length|rope_deltas)\b"), "touches a wrapped internal"),
]


def _python_files() -> list[Path]:
    files = [p for d in ("hookkit", "tests", "bench") for p in (ROOT / d).rglob("*.py")]
    return [p for p in files if p != SEAM and p != Path(__file__).resolve()]


def test_no_file_outside_the_seam_touches_transformers_internals() -> None:
    problems = []
    for path in _python_files():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, what in FORBIDDEN:
                if pattern.search(code):
                    problems.append(f"{path.relative_to(ROOT)}:{number}: {what}: {line.strip()}")
    assert not problems, "transformers internals outside hookkit/compat.py:\n" + "\n".join(problems)


def test_the_guard_catches_what_it_forbids() -> None:
    """Each pattern fires on a line that breaks it (so the guard above can fail)."""
    bad = [
        "from transformers.masking_utils import sdpa_mask",
        "import transformers.cache_utils",
        f"out = model(ids, {OLD_CACHE}=cache)",
        "out = model(ids, cache=cache)",
        "cache = out.cache",
        "cfg._attn_implementation",
    ]
    for line in bad:
        assert any(p.search(line) for p, _ in FORBIDDEN), line
    for fine in ("cache = compat.cache_from_output(out)", "a, cache = self.attend(x, past)", "@functools.cache",
                 "out = model(ids, **compat.with_cache(model, cache))", "self.cache[text] = ids"):
        assert not any(p.search(fine) for p, _ in FORBIDDEN), fine
    assert not any(p.search('root = Path.home() / ".cache" / "hookkit"') for p, _ in FORBIDDEN)


# ---------------------------------------------------------------------------------------------- cache keyword
class _Old(torch.nn.Module):
    def forward(self, input_ids: Any = None, **kwargs: Any) -> None: ...


_Old.forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
     inspect.Parameter(OLD_CACHE, inspect.Parameter.KEYWORD_ONLY, default=None)])


class _New(torch.nn.Module):
    def forward(self, input_ids: Any = None, cache: Any = None) -> None: ...


class _Wrapper(torch.nn.Module):  # forwards **kwargs to its language model, like InstructBLIP
    def __init__(self) -> None:
        super().__init__()
        self.language_model = _New()

    def forward(self, **kwargs: Any) -> None: ...


def test_cache_keyword_is_read_from_the_signature() -> None:
    assert compat.cache_kwarg(_Old()) == OLD_CACHE
    assert compat.cache_kwarg(_New()) == "cache"
    assert compat.cache_kwarg(_Wrapper()) == "cache"
    assert compat.with_cache(_Old(), "C") == {OLD_CACHE: "C"}


def test_cache_keyword_of_the_installed_release() -> None:
    model, _, info = load_tiny("tiny-llama")
    params = inspect.signature(type(info.text_model).forward).parameters
    expected = next(name for name in compat.CACHE_KWARGS if name in params)
    assert compat.cache_kwarg(info.text_model) == expected
    assert compat.cache_kwarg(model) == expected


@pytest.mark.parametrize("name", compat.CACHE_KWARGS)
def test_every_cache_spelling_is_read(name: str) -> None:
    marker = object()
    assert compat.cache_from_kwargs({name: marker}) is marker
    assert compat.cache_from_kwargs({name: None}) is None

    class Out:
        pass

    out = Out()
    setattr(out, name, marker)
    assert compat.cache_from_output(out) is marker


def _accepted_spellings() -> list[str]:
    """Cache keywords the installed Llama forward takes: its own, plus the old one where a deprecation shim
    renames it (from 5.24)."""
    from transformers import LlamaModel

    own = compat.cache_kwarg(LlamaModel)
    return [own] + ([OLD_CACHE] if own == "cache" else [])


@pytest.mark.parametrize("keyword", _accepted_spellings())
def test_session_counts_cached_steps_whatever_the_caller_calls_the_cache(keyword: str) -> None:
    """Decode steps must be seen as continuations (the transformers 5.24 bug made each one a new sample)."""
    from transformers import DynamicCache

    model, processor, info = load_tiny("tiny-llama")
    batch = build_batch(info, processor, 2)
    recorder = past_length_recorder()
    with hookkit.attach(model, recorder), torch.no_grad():
        cache = DynamicCache(config=model.config)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        out = model(input_ids=ids, attention_mask=mask, **{keyword: cache})
        for _ in range(2):
            nxt = out.logits[:, -1:].argmax(-1)
            mask = torch.cat([mask, torch.ones_like(nxt)], dim=1)
            out = model(input_ids=nxt, attention_mask=mask, **{keyword: compat.cache_from_output(out)})
    prompt = ids.shape[1]
    assert recorder.seen == [0, prompt, prompt + 1]


def test_models_load_without_hub_kernels() -> None:
    model, _, _ = load_tiny("tiny-llama")
    assert not compat.kernels_active(model)
    if compat.load_kwargs():
        assert compat.load_kwargs() == {"use_kernels": False}


# ---------------------------------------------------------------------------------------------- versions
def test_version_status() -> None:
    low, high = compat.TESTED_VERSIONS["transformers"]
    assert compat.version_status("transformers", low) == "tested"
    assert compat.version_status("transformers", high + "+local") == "tested"
    assert compat.version_status("transformers", "4.57.0") == "older"
    assert compat.version_status("transformers", "99.0.0.dev0") == "newer"
    assert compat.version_status("transformers", None) == "missing"


def test_attach_warns_once_on_a_newer_transformers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(compat, "transformers_version", lambda: "99.0.0")
    compat.warn_if_untested.cache_clear()
    model, _, _ = load_tiny("tiny-llama")
    from hookkit.methods.noop import Noop

    with pytest.warns(UserWarning, match="99.0.0 is installed; run `hookkit doctor`"):
        hookkit.attach(model, Noop(sites=["logits"])).detach()
    compat.warn_if_untested.cache_clear()


# ---------------------------------------------------------------------------------------------- doctor
def test_doctor_passes_here(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "transformers" in out and "PASS: 6/6 checks passed" in out
    assert "FAIL" not in out


def test_doctor_reports_fail_when_the_cache_keyword_is_broken(monkeypatch: pytest.MonkeyPatch,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """Reproduce the 5.24 failure mode: the session no longer finds the cache in the forward's keywords."""
    monkeypatch.setattr(compat, "CACHE_KWARGS", ("no_such_keyword",))
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert "FAIL  sdpa cache tracking" in out and "FAIL  eager cache tracking" in out
    assert "hookkit is NOT exact" in out


def test_doctor_reports_fail_when_parity_breaks(monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A neutral attachment that is not neutral (head outputs nudged) must show as a FAIL with its difference."""
    from hookkit.methods.noop import Noop

    monkeypatch.setattr(Noop, "head_output", lambda self, ctx, state, heads: heads * 1.01)
    assert main(["doctor"]) == 1
    out = capsys.readouterr().out
    assert re.search(r"FAIL  sdpa prefill +max\|Δ\| = [1-9]", out)
    assert re.search(r"FAIL  eager cached decode", out)
