"""Benchmark of issue 6 (long context) on SmolLM2-135M-Instruct: stock vs dynamic NTK vs LongHeads.

    python bench/longcontext.py passkey --methods longheads,ntk --lengths 16k,32k --trials 10
    python bench/longcontext.py passkey --methods stock,ntk,longheads --lengths 4k,8k --trials 10
    python bench/longcontext.py niah --methods stock,ntk,longheads --lengths 4k,8k --haystack pydoc --needle code
    python bench/longcontext.py niah --methods ntk,longheads-bound --lengths 16k --haystack kjv --needle city \
        --vary-start --depths 10,50,90 --trials 4                           # 12 trials, own haystack start each
    python bench/longcontext.py longppl --methods stock,ntk,longheads --max-tokens 32k --excerpts 4
    python bench/longcontext.py cost --lengths 8k,16k --repeats 3          # prefill, decode tok/s, peak memory
    python bench/longcontext.py pairs --length 16k                          # distinct pairs per block
    python bench/longcontext.py summary                                     # -> bench/results/longcontext.json
    python bench/longcontext.py niah-table                                  # markdown tables of niah_natural.json
    python bench/longcontext.py niah-heatmaps --haystack pydoc --needle code   # -> docs/figures/niah/*.png

Methods: ``stock`` (sdpa), ``ntk`` (transformers' dynamic NTK RoPE, factor 2: ``--rope-scaling dynamic:2``),
``longheads`` (hookkit defaults: 256-token chunks, 4096 tokens per head, selection from 4096 tokens on, per query
head; prompt tokens attend to chunk 0 and their last 15 chunks; the last 32 prompt tokens and decoding keep chunk
0, their last 10 chunks and the 5 best chunks by max-key score), ``longheads-scored-tail`` (the same, but all 13
free chunks of the tail by score), ``longheads-block`` (earlier defaults: block-shared summary selection for the
prompt, all tail chunks by score) and ``longheads-official`` (the official code's per-token summary scores
everywhere). Every number is measured by this script, nothing is hard-coded. The passkey and perplexity runs go through
the shared eval runner (``runs/longcontext/<phase>/<method>/...``, git-ignored, resumable: a killed run continues
where it stopped with ``--resume``, the default here); ``summary`` collects them, with every per-sample record,
into ``bench/results/longcontext.json``.

Timing protocol (``cost``): every measurement runs in a fresh process (so peak RSS is that run's own, not the
allocator's memory of an earlier run), methods alternate within each repetition, and the report gives medians
and the per-repetition paired ratios. The machine is shared (2 cores, no GPU): absolute seconds are indicative,
ratios are what to read.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUNS = ROOT / "runs" / "longcontext"
RESULT = ROOT / "bench" / "results" / "longcontext.json"
COST_FILE = ROOT / "bench" / "results" / "longcontext_cost.json"
PAIRS_FILE = ROOT / "bench" / "results" / "longcontext_pairs.json"
NIAH_FILE = ROOT / "bench" / "results" / "niah_natural.json"
METHODS = ("stock", "ntk", "longheads", "longheads-scored-tail", "longheads-block", "longheads-official",
           "longheads-bound", "longheads-bound-8k", "longheads-recent", "longheads-trained", "longheads-bound-trained",
           "longheads-b8k", "longheads-bound-b8k", "longheads-b8k-wm", "longheads-bound-b8k-wm", "longheads-fit",
           "longheads-bound-fit", "longheads-ntk16k", "stock-cut", "stock-cut-needle", "stock-cut8k",
           "stock-cut8k-needle", "longheads-anchored", "longheads-anchored-recent", "longheads-gated",
           "longheads-gated16", "longheads-gated48", "longheads-lexical", "longheads-lexical-slot1", "stock-cut-chunks",
           "longheads-lexical-wide", "longheads-anchored-lexical", "longheads-lexical-isolated", "stock-cut-chunks-ctx")
# LongHeads variants, spelled out in full so that a change of the library's defaults changes the recipe hash (and a
# resumed run refuses to mix the two): hookkit's defaults; the same with every tail chunk chosen by score (no local
# window for the answer); the earlier defaults (block-shared summary selection for the prompt); the official
# code's rules (per-token summary scores everywhere). Runs made before ``tail_recent`` existed recorded recipes
# without it (its value then was 0), and runs made before ``begin_selective`` was spelled out here recorded recipes
# without it (its value was, and is, atten_length = 4096). Every variant here selects on prompts that fit in the
# trained length too (``fit_margin=0``, the only behaviour before ``fit_margin`` existed); the ``-fit`` variants
# below run those prompts as the stock model (the library default since).
LONGHEADS_PARAMS = {
    "longheads": {"prefill_selection": "recent", "tail_selection": "max_key", "exact_tail": 32, "tail_recent": 8,
                  "begin_selective": 4096, "fit_margin": 0},
    "longheads-scored-tail": {"prefill_selection": "recent", "tail_selection": "max_key", "exact_tail": 32,
                              "tail_recent": 0, "begin_selective": 4096, "fit_margin": 0},
    "longheads-block": {"prefill_selection": "block", "tail_selection": "max_key", "exact_tail": 32,
                        "tail_recent": 0, "begin_selective": 4096, "fit_margin": 0},
    "longheads-official": {"prefill_selection": "token", "tail_selection": "summary", "tail_recent": 0,
                           "begin_selective": 4096, "fit_margin": 0},
    "longheads-bound": {"prefill_selection": "recent", "tail_selection": "max_key_bound", "exact_tail": 32,
                        "tail_recent": 8, "begin_selective": 4096, "fit_margin": 0},
    # The bound with 8192 tokens per head (SmolLM2's trained length) instead of min(4096, trained length).
    "longheads-bound-8k": {"prefill_selection": "recent", "tail_selection": "max_key_bound", "exact_tail": 32,
                           "tail_recent": 8, "atten_length": 8192, "fit_margin": 0},
    # Diagnosis: no scored chunk anywhere (chunk 0 + the last K-1 chunks for every token: a sink + sliding window).
    "longheads-recent": {"prefill_selection": "recent", "tail_selection": "max_key_bound", "exact_tail": 32,
                         "tail_recent": 13, "begin_selective": 4096, "fit_margin": 0},
}
# Candidate defaults measured on natural text (issue 16), each as an override of ``longheads`` (max-key scores) and
# of ``longheads-bound``: ``-trained``: atten_length = SmolLM2's trained length (8192, K = 32) with the tail_recent
# formula's value at K = 32 (round(0.6 * 29) = 17 local-window chunks, 12 scored); ``-b8k``: selection only from the
# trained length on (begin_selective = 8192), 4096 tokens per head beyond it; ``-b8k-wm``: the same with max-key
# scores averaged over the window's RoPE distances. All three rejected as defaults (docs/benchmarks.md).
for _base in ("longheads", "longheads-bound"):
    for _suffix, _change in (("trained", {"tail_recent": 17, "atten_length": 8192, "begin_selective": 8192}),
                             ("b8k", {"begin_selective": 8192}),
                             ("b8k-wm", {"begin_selective": 8192, "score_rope": "window_mean"})):
        LONGHEADS_PARAMS[f"{_base}-{_suffix}"] = {**LONGHEADS_PARAMS[_base], **_change}
    # The library default since: a prompt that fits in the trained length runs as the stock model, its answer too
    # until it passes the trained length by one chunk (256 tokens).
    LONGHEADS_PARAMS[f"{_base}-fit"] = {**LONGHEADS_PARAMS[_base], "fit_margin": 256}
# Candidate "LongHeads with NTK-scaled RoPE inside the window" (diagnostic): the model runs with static NTK-aware
# RoPE, base * NTK_ALPHA ** (D / (D - 2)) (bloc97's NTK-aware scaling, the static form of transformers' dynamic
# NTK), which reads NTK_ALPHA x the trained length; LongHeads then gives every head that many tokens (16384 on
# SmolLM2, K = 64 chunks) and selects only beyond it. Up to 16k this is the static NTK model itself; at 32k each
# head sees half the context instead of an eighth. The "trained length" LongHeads reads is the scaled model's
# (max_position_embeddings = NTK_ALPHA x 8192), so prompts up to 16k run as that model. Not a library option:
# inside the trained length it is NTK, not stock (docs/benchmarks.md, sixth pass).
NTK_ALPHA = 2
# Diagnostic (bench/longheads_anchored.py): the prompt's last K-1 chunks attend as one truncated prompt; with the
# defaults' answer rules, and with the answer's slots all recent (the view of ``stock-cut``).
# Diagnostic (bench/longheads_gated.py): the answer's scored slots take a far chunk only where it out-scores the
# local window. Each diagnostic: (module:class, params), attached as an instance.
DIAGNOSTICS = {
    "longheads-anchored": ("bench.longheads_anchored:AnchoredLongHeads",
                           dict(LONGHEADS_PARAMS["longheads-bound-fit"])),
    "longheads-anchored-recent": ("bench.longheads_anchored:AnchoredLongHeads",
                                  {**LONGHEADS_PARAMS["longheads-bound-fit"], "tail_recent": 13}),
    "longheads-gated": ("bench.longheads_gated:GatedLongHeads",
                        {**LONGHEADS_PARAMS["longheads-bound-fit"], "slot_margin": 0.0}),
    # margins on the raw q·k scale: 16 = 2 nats of logit (q·k/sqrt(64)), 48 = 6 nats; chosen on pydoc 12k and the
    # 16k passkey (bench/results/longheads_slot_margins.json)
    "longheads-gated16": ("bench.longheads_gated:GatedLongHeads",
                          {**LONGHEADS_PARAMS["longheads-bound-fit"], "slot_margin": 16.0}),
    "longheads-gated48": ("bench.longheads_gated:GatedLongHeads",
                          {**LONGHEADS_PARAMS["longheads-bound-fit"], "slot_margin": 48.0}),
}
# Diagnostic (bench/longheads_wide_tail.py): the lexical defaults with the last 2048 prompt tokens (the answer's
# 8-chunk local window) reading the lexical slots too, the ranking still scored against the last 32 tokens.
DIAGNOSTICS["longheads-lexical-wide"] = ("bench.longheads_wide_tail:WideTailLongHeads",
                                         {**LONGHEADS_PARAMS["longheads-bound-fit"], "tail_selection": "lexical",
                                          "exact_tail": 2048, "lexical_query": 32, "isolate_retrieved": False})
# Diagnostic: the lexical defaults with the prompt's last K-1 chunks read as one truncated prompt (bench/
# longheads_anchored.py), i.e. the recent tokens' hidden states as in the ``stock-cut-chunks`` oracle.
DIAGNOSTICS["longheads-anchored-lexical"] = ("bench.longheads_anchored:AnchoredLongHeads",
                                             {**LONGHEADS_PARAMS["longheads-bound-fit"], "tail_selection": "lexical",
                                              "isolate_retrieved": False})
# The answer's scored slots hold the prompt chunks sharing the question's rare token ids (``tail_selection=
# "lexical"``), every head alike; otherwise ``longheads-bound-fit``. The library default since the thirteenth pass
# of docs/benchmarks.md (``longheads-bound-fit`` was the default before), without ``isolate_retrieved`` (the default
# since the seventeenth pass: ``longheads-lexical-isolated`` below).
LONGHEADS_PARAMS["longheads-lexical"] = {**LONGHEADS_PARAMS["longheads-bound-fit"], "tail_selection": "lexical",
                                         "isolate_retrieved": False}
# Candidate (fifteenth pass): one lexical slot instead of five (tail_recent 12 of the 13 non-fixed chunks), the
# view of the ``stock-cut-needle`` oracle: the sink, the best-ranked chunk and the recent chunks.
LONGHEADS_PARAMS["longheads-lexical-slot1"] = {**LONGHEADS_PARAMS["longheads-lexical"], "tail_recent": 12}
# Sixteenth pass, second candidate: the lexical defaults with the best-ranked answer slot chunk (and the slot chunks
# adjacent to it) read after chunk 0 alone (``isolate_retrieved``), as the ``stock-cut-chunks`` oracle reads the
# needle's chunk. The first candidate, ``longheads-lexical-reread`` (every slot chunk read alone, one by one), was a
# bench subclass (bench/longheads_reread.py at commit 1371078) and failed its dev rule; its partial runs stay in
# NIAH_FILE.
LONGHEADS_PARAMS["longheads-lexical-isolated"] = {**LONGHEADS_PARAMS["longheads-lexical"], "isolate_retrieved": True}
LONGHEADS_PARAMS["longheads-ntk16k"] = {**LONGHEADS_PARAMS["longheads-bound-fit"], "atten_length": 16384,
                                       "begin_selective": 16384, "tail_recent": 37}
#: ``stock-cut``: stock attention on the prompt with its middle dropped, keeping the first CUT_HEAD and the last
#: CUT_KEEP - CUT_HEAD tokens (what LongHeads' ``longheads-recent`` lets the last token see, as one short prompt).
#: ``stock-cut-needle``: the same budget, but one 256-token span around the needle replaces as many tokens of the
#: recent part (an oracle of perfect chunk selection with full attention, inside the trained length).
CUT_HEAD, CUT_KEEP = 256, 4096
MODEL = "smollm2"


#: ``stock-cut8k`` / ``stock-cut8k-needle``: the same with an 8192-token budget (SmolLM2's trained length): the
#: view a head would have with ``atten_length`` = the trained length.
CUT_KEEP_TRAINED = 8192


def cut_prompt(ids: list[int], needle_span: tuple[int, int] | None = None, keep: int = CUT_KEEP) -> list[int]:
    """``stock-cut``: the first CUT_HEAD and the last ``keep`` - CUT_HEAD tokens of ``ids`` (unchanged when it is no
    longer than ``keep``). With ``needle_span`` (``stock-cut-needle``), CUT_HEAD tokens centred on the needle replace
    as many of the recent ones."""
    if len(ids) <= keep:
        return ids
    if needle_span is None:
        return ids[:CUT_HEAD] + ids[len(ids) - (keep - CUT_HEAD):]
    mid = needle_window_start(len(ids), needle_span, keep)
    return ids[:CUT_HEAD] + ids[mid:mid + CUT_HEAD] + ids[len(ids) - (keep - 2 * CUT_HEAD):]


def cut_prompt_chunks(ids: list[int], needle_span: tuple[int, int], keep: int = CUT_KEEP, before: int = 0) -> list[int]:
    """``stock-cut-chunks``: ``stock-cut-needle`` with LongHeads' chunking: the CUT_HEAD-aligned chunks the needle
    overlaps (one, or two when it straddles a boundary) replace as many recent tokens; ``stock-cut`` when the needle
    starts in the head or the recent part. ``before`` (``stock-cut-chunks-ctx``: 3) also keeps that many chunks right
    before the needle's, so that the needle is read after its own context. Unchanged when ``ids`` is no longer than
    ``keep``."""
    if len(ids) <= keep:
        return ids
    first, last = needle_span[0] // CUT_HEAD, (needle_span[1] - 1) // CUT_HEAD
    if first == 0 or needle_span[0] >= len(ids) - (keep - CUT_HEAD):  # already in the head or the recent part
        return cut_prompt(ids, None, keep)
    chunks = ids[max(1, first - before) * CUT_HEAD:(last + 1) * CUT_HEAD]
    return ids[:CUT_HEAD] + chunks + ids[len(ids) - (keep - CUT_HEAD - len(chunks)):]


def needle_window_start(n_tokens: int, needle_span: tuple[int, int], keep: int = CUT_KEEP) -> int:
    """First token of the CUT_HEAD-token window ``stock-cut-needle`` keeps around the needle (centred on it, after
    the head and before the recent tokens)."""
    lo, hi = needle_span
    return min(max(CUT_HEAD, lo - (CUT_HEAD - (hi - lo)) // 2), n_tokens - (keep - 2 * CUT_HEAD) - CUT_HEAD)


def int_list(text: str) -> list[int]:
    from hookkit.cli.common import int_list as parse

    return parse(text)


def setup(threads: int, dtype: str) -> str:
    import torch

    from hookkit.models.loading import resolve_dtype

    torch.set_num_threads(threads)
    return resolve_dtype(dtype)


def load(method: str, dtype: str) -> tuple[Any, Any, dict[str, Any]]:
    import hookkit
    from hookkit.cli.evaluation import rope_parameters

    rope = rope_parameters(MODEL, ("dynamic", 2.0)) if method == "ntk" else None
    overrides: dict[str, Any] = {"rope_parameters": rope} if rope else {}
    if method == "longheads-ntk16k":
        from transformers import AutoConfig

        from hookkit import compat
        from hookkit.models.loading import resolve

        cfg = compat.text_config(AutoConfig.from_pretrained(resolve(MODEL).source))
        dim = cfg.head_dim
        rope = {"rope_type": "default", "rope_theta": cfg.rope_parameters["rope_theta"] * NTK_ALPHA ** (dim / (dim - 2))}
        overrides = {"rope_parameters": rope, "max_position_embeddings": NTK_ALPHA * cfg.max_position_embeddings}
    model, tok = hookkit.load(MODEL, dtype=dtype, **overrides)
    import torch

    info = {"model": MODEL, "dtype": dtype, "device": "cpu", "rope_parameters": rope,
            "max_position_embeddings": overrides.get("max_position_embeddings"),
            "torch_threads": torch.get_num_threads(), "method": method}
    return model, tok, info


def recipe_for(method: str, params: dict[str, Any] | None = None) -> Any:
    from hookkit.core.recipe import Recipe

    if method in LONGHEADS_PARAMS:
        return Recipe.single("longheads", {**LONGHEADS_PARAMS[method], **(params or {})})
    return None


#: Parameters spelled out in LONGHEADS_PARAMS after runs had been made without them, with the value those runs had
#: by default (B = atten_length = 4096 on SmolLM2; no fit; no isolated chunks). Extending such a run keeps its
#: recorded recipe.
SPELLED_OUT_LATER = {"begin_selective": 4096, "fit_margin": 0, "isolate_retrieved": False}


def recorded_recipe(out: Path, recipe: Any) -> Any:
    """The recipe recorded by an earlier run in ``out`` when it differs from ``recipe`` only by SPELLED_OUT_LATER
    (the same computation), so that a resume extends that run instead of being refused; else ``recipe``."""
    from hookkit.core.recipe import Recipe

    if recipe is None:
        return None
    new = recipe.to_dict()
    later = {k: v for k, v in SPELLED_OUT_LATER.items() if k in new["methods"][0]["params"]}
    for results in sorted(out.glob("results_*.json")):
        old = (json.loads(results.read_text()).get("intervention") or {}).get("recipe")
        if not old or len(old["methods"]) != 1 or old == new:
            continue
        spec = old["methods"][0]
        filled = {**old, "methods": [{**spec, "params": {**later, **spec["params"]}}]}
        if filled == new:
            print(f"{out}: extending the run with its recorded recipe {spec['params']} (the same computation)",
                  flush=True)
            return Recipe.from_dict(old)
    return recipe


def attachment(method: str, recipe: Any) -> tuple[Any, dict[str, Any] | None]:
    """What to attach for ``method`` (its recipe, a bench-only diagnostic instance, or None for a stock model) and
    the ``intervention`` block the results record for it."""
    if method in DIAGNOSTICS:  # a bench-only LongHeads subclass, attached as an instance
        import importlib

        where, params = DIAGNOSTICS[method]
        module, name = where.split(":")
        instance = getattr(importlib.import_module(module), name)(**params)
        return instance, {"diagnostic": f"{module.replace('.', '/')}.py {name}", "params": params}
    if recipe is None:
        return None, None
    return recipe, {"recipe": recipe.to_dict(), "recipe_hash": recipe.hash()}


def run_task(task: Any, model: Any, info: dict[str, Any], method: str, out: Path,
             limit: int | None = None, retry_errors: bool = False) -> dict[str, Any]:
    import contextlib

    import hookkit
    from hookkit.evals.runner import evaluate

    attached, intervention = attachment(method, recorded_recipe(out, recipe_for(method)))
    task.model = model
    with hookkit.attach(model, attached) if attached is not None else contextlib.nullcontext():
        return evaluate(task, output_dir=out, model_info=info, intervention=intervention, seed=0, resume=True,
                        limit=limit, retry_errors=retry_errors, cli_args={"argv": sys.argv})


# ---------------------------------------------------------------------------------------------- phases
def phase_passkey(args: argparse.Namespace) -> None:
    from hookkit.evals.passkey.task import PasskeyTask

    dtype = setup(args.threads, args.dtype)
    for method in args.methods.split(","):
        model, tok, info = load(method, dtype)
        for length in args.lengths:
            task = PasskeyTask(tok, [length], args.trials, trial_seed=args.trial_seed)
            out = RUNS / "passkey" / method / (f"len{length}" if args.trial_seed == 0
                                                else f"len{length}-seed{args.trial_seed}")
            res = run_task(task, model, info, method, out, limit=args.limit, retry_errors=args.retry_errors)
            cell = res["results"]["passkey"]["cells,none"][f"len{length}"]
            print(f"passkey {method:>9} {length:>6}: {cell['accuracy']:.2f} over {cell['n']} trials, prefill "
                  f"{cell['prefill_s_median']:.1f} s (median)", flush=True)
        del model


def phase_niah(args: argparse.Namespace) -> None:
    """Needle in natural text: ``--haystack`` (kjv | pydoc | licenses) x ``--needle`` phrasing, ``--depths`` per length (one
    trial per depth), every method on the same prompts; all runs collected into ``NIAH_FILE``."""
    from hookkit.evals.niah.task import NiahTask

    class CutNiahTask(NiahTask):
        keep_needle = False
        keep = CUT_KEEP

        def model_input_ids(self, prompt: Any) -> Any:
            return cut_prompt(prompt.input_ids, prompt.needle_token_span if self.keep_needle else None, self.keep)

    class CutNeedleNiahTask(CutNiahTask):
        keep_needle = True

    class CutChunksNiahTask(NiahTask):
        before = 0

        def model_input_ids(self, prompt: Any) -> Any:
            return cut_prompt_chunks(prompt.input_ids, prompt.needle_token_span, before=self.before)

    class CutChunksCtxNiahTask(CutChunksNiahTask):
        before = 3

    class Cut8kNiahTask(CutNiahTask):
        keep = CUT_KEEP_TRAINED

    class Cut8kNeedleNiahTask(CutNeedleNiahTask):
        keep = CUT_KEEP_TRAINED

    dtype = setup(args.threads, args.dtype)
    for method in args.methods.split(","):
        model, tok, info = load(method, dtype)
        for length in args.lengths:
            task_class = {"stock-cut": CutNiahTask, "stock-cut-needle": CutNeedleNiahTask,
                          "stock-cut8k": Cut8kNiahTask, "stock-cut8k-needle": Cut8kNeedleNiahTask,
                          "stock-cut-chunks": CutChunksNiahTask,
                          "stock-cut-chunks-ctx": CutChunksCtxNiahTask}.get(method, NiahTask)
            task = task_class(tok, [length], args.depths, haystack=args.haystack, needle=args.needle,
                              trials=args.trials if args.vary_start else 1, vary_start=args.vary_start)
            suffix = "-varied" if args.vary_start else ""
            out = RUNS / "niah" / f"{args.haystack}-{args.needle}{suffix}" / method / f"len{length}"
            res = run_task(task, model, info, method, out, limit=args.limit, retry_errors=args.retry_errors)
            cell = res["results"]["niah"]["per_length,none"][str(length)]
            print(f"niah {args.haystack}/{args.needle} {method:>9} {length:>6}: substring "
                  f"{cell['substring_accuracy']:.2f} over {cell['n']} depths, ROUGE x10 {cell['rouge1_x10']:.2f}, "
                  f"prefill {cell['prefill_s_median']:.1f} s (median)", flush=True)
            _collect_niah()
        del model


def _collect_niah() -> None:
    """Every NIAH run under ``runs/longcontext/niah`` with its per-sample records, into ``NIAH_FILE``.

    ``runs/`` is git-ignored and local to one machine, while ``NIAH_FILE`` is the record: a run found on disk
    replaces the file's entry for the same (haystack, needle, start, method, length), and entries with no run on
    this machine are kept as they are (a fresh clone adding one run must not drop the others).
    """
    from hookkit.evals.runner import read_jsonl

    def key(run: dict[str, Any]) -> tuple[Any, ...]:
        return run["haystack"], run["needle"], run["haystack_start"], run["method"], run["length"]

    kept = {key(r): r for r in json.loads(NIAH_FILE.read_text())["runs"]} if NIAH_FILE.exists() else {}
    runs = []
    for samples in sorted((RUNS / "niah").glob("*/*/len*/samples_niah.jsonl")):
        folder = samples.parent
        results = json.loads((folder / "results_niah.json").read_text()) if (folder / "results_niah.json").exists() \
            else None
        records, _, _ = read_jsonl(samples)
        name = folder.parent.parent.name
        varied = name.endswith("-varied")
        haystack, needle = name.removesuffix("-varied").split("-", 1)
        runs.append({"haystack": haystack, "needle": needle, "method": folder.parent.name,
                     "haystack_start": "seeded per trial" if varied else "beginning (§6.1)",
                     "length": int(folder.name[3:]),
                     "recipe_hash": ((results or {}).get("intervention") or {}).get("recipe_hash"),
                     # the runner stores the timings with a leading underscore (excluded from result hashes)
                     "records": [{k: r.get(k, r.get(f"_{k}")) for k in (
                         "sample_id", "depth_percent", "actual_depth_percent", "haystack_start", "n_tokens",
                         "model_tokens", "exact_length", "response", "score", "substring", "prefill_s",
                         "decode_tok_s", "peak_rss_bytes")} for r in records],
                     "machine": machine()})
    kept.update((key(r), r) for r in runs)
    _write(NIAH_FILE, {"runs": [kept[k] for k in sorted(kept)], "machine": machine()})


def phase_niah_table(args: argparse.Namespace) -> None:
    """Print the NIAH runs of ``NIAH_FILE`` as a markdown table: correct / trials per method and length, one table
    per haystack, needle and start protocol, plus correct / trials per depth."""
    runs = json.loads(NIAH_FILE.read_text())["runs"]
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for run in runs:
        key = (run["haystack"], run["needle"], run.get("haystack_start") or "beginning (§6.1)")
        groups.setdefault(key, []).append(run)
    for (haystack, needle, start), group in sorted(groups.items()):
        lengths = sorted({r["length"] for r in group})
        print(f"\n{haystack} haystack, needle `{needle}`, haystack start: {start}\n")
        print("| method | " + " | ".join(f"{n // 1024}k" for n in lengths) + " |")
        print("|---|" + "---|" * len(lengths))
        for method in dict.fromkeys(r["method"] for r in group):
            cells = []
            for n in lengths:
                recs = [x for r in group if r["method"] == method and r["length"] == n for x in r["records"]]
                scored = [x for x in recs if x["substring"] is not None]  # error records (no prompt) not counted
                errors = f" ({len(recs) - len(scored)} not built)" if len(scored) < len(recs) else ""
                cells.append(f"{sum(bool(x['substring']) for x in scored)}/{len(scored)}{errors}" if recs else "–")
            print(f"| {method} | " + " | ".join(cells) + " |")
        for n in lengths:
            depths = sorted({x["depth_percent"] for r in group if r["length"] == n for x in r["records"]
                             if x["depth_percent"] is not None})
            print(f"\n{n // 1024}k by depth | " + " | ".join(f"{d:g} %" for d in depths) + " |")
            print("|---|" + "---|" * len(depths))
            for method in dict.fromkeys(r["method"] for r in group if r["length"] == n):
                recs = [x for r in group if r["method"] == method and r["length"] == n for x in r["records"]]
                row = [[x for x in recs if x["depth_percent"] == d and x["substring"] is not None] for d in depths]
                print(f"| {method} | " + " | ".join(f"{sum(bool(x['substring']) for x in c)}/{len(c)}" if c else "–"
                                                   for c in row) + " |")


HEATMAP_METHODS = "stock,ntk,longheads-lexical-isolated,longheads-official"


def phase_niah_heatmaps(args: argparse.Namespace) -> None:
    """The §6.1 heatmaps (substring accuracy per length and depth, mean over the seeded trials) of ``NIAH_FILE``'s
    runs, one PNG per method of ``--methods`` for ``--haystack`` / ``--needle``, into ``docs/figures/niah/``."""
    from hookkit.evals.niah import plot_niah_heatmap

    runs = [r for r in json.loads(NIAH_FILE.read_text())["runs"] if r["haystack"] == args.haystack
            and r["needle"] == args.needle and r.get("haystack_start") == "seeded per trial"]
    methods = (args.methods or HEATMAP_METHODS).split(",")
    out = ROOT / "docs" / "figures" / "niah"
    for method in methods:
        cells = [{"context_length": r["length"], "depth_percent": x["depth_percent"], "substring": float(x["substring"])}
                 for r in runs if r["method"] == method for x in r["records"] if x["substring"] is not None]
        if not cells:
            print(f"{method}: no seeded {args.haystack}/{args.needle} runs", file=sys.stderr)
            continue
        png, _ = plot_niah_heatmap(cells, out / f"{args.haystack}-{args.needle}-{method}.png", value_key="substring",
                                   vmax=1.0, title=f"{method}: {args.haystack}, needle '{args.needle}' "
                                                   f"({len(cells)} trials)")
        print(png.relative_to(ROOT))


def excerpt_starts(tokenizer: Any, excerpts: int, max_tokens: int) -> list[int]:
    """Start offsets of ``excerpts`` excerpts spread evenly over the whole KJV: ``k·⌊N/excerpts⌋``, k = 0…excerpts−1.

    Why several: a single excerpt's windows differ in content as well as in position (the KJV from Genesis 1 gets
    harder after ~10k tokens, where the genealogies of Genesis 10-11 start), so its per-window perplexity mixes the
    two. Pooling each window's NLL over excerpts from across the book averages the content out and leaves the
    effect of the position. The rule is fixed in advance (even spacing), not chosen by looking at results.
    """
    if excerpts == 1:
        return [0]
    from hookkit.evals.longppl import load_kjv_text

    n = len(tokenizer(load_kjv_text(), add_special_tokens=False)["input_ids"])
    step = n // excerpts
    if step < max_tokens:
        raise SystemExit(f"--excerpts {excerpts}: the KJV has {n} tokens, too few for excerpts of {max_tokens}")
    return [k * step for k in range(excerpts)]


def phase_longppl(args: argparse.Namespace) -> None:
    from hookkit.evals.longppl import LongPPLTask

    dtype = setup(args.threads, args.dtype)
    starts: list[int] | None = None  # the same for every method (one tokenizer): tokenise the whole KJV once
    for method in args.methods.split(","):
        model, tok, info = load(method, dtype)
        if starts is None:
            starts = excerpt_starts(tok, args.excerpts, args.max_tokens[0])
        task = LongPPLTask(tok, max_tokens=args.max_tokens[0], window=args.window, max_context=args.max_context,
                           starts=starts)
        folder = f"n{args.max_tokens[0]}" + (f"-ctx{args.max_context}" if args.max_context else "")
        res = run_task(task, model, info, method, RUNS / "longppl" / method / folder)
        ppl = [round(w["ppl"], 2) for w in res["results"]["longppl"]["windows,none"]]
        print(f"longppl {method}: {ppl}", flush=True)
        del model


def _measure(args: argparse.Namespace) -> None:
    """One prefill plus ``--decode-tokens`` greedy steps in this (fresh) process; prints a JSON line.

    Every method decodes the same number of tokens (no EOS stop), so decode tokens/s compare like for like.
    """
    import torch

    import hookkit
    from hookkit.evals.decoding import greedy_generate
    from hookkit.evals.memory import _rss_bytes, peak_memory_stats
    from hookkit.evals.passkey import build_passkey_prompt

    dtype = setup(args.threads, args.dtype)
    model, tok, _ = load(args.method, dtype)
    prompt = build_passkey_prompt(tok, args.length[0], 0.5, 12345)
    ids = torch.tensor([prompt.input_ids])
    recipe = recipe_for(args.method)
    session = hookkit.attach(model, recipe) if recipe is not None else None
    base = _rss_bytes()
    timing = greedy_generate(model, ids, max_new_tokens=args.decode_tokens + 1)
    if session is not None:
        session.detach()
    steps = len(timing.new_ids) - 1  # the first new token comes from the prefill
    print(json.dumps({"method": args.method, "length": args.length[0], "prefill_s": timing.prefill_s,
                      "decode_tokens": steps, "decode_s": timing.decode_s,
                      "decode_tok_s": steps / timing.decode_s if steps and timing.decode_s > 0 else None,
                      "peak_rss_bytes": timing.peak_rss_bytes, "baseline_rss_bytes": base,
                      "peak_increase_bytes": (timing.peak_rss_bytes or 0) - (base or 0),
                      # the kernel's high-water mark of this fresh process (model load included), unsampled
                      "max_rss_bytes": peak_memory_stats()["cpu_max_rss_bytes"],
                      "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}), flush=True)


def phase_cost(args: argparse.Namespace) -> None:
    """Prefill time and peak memory, stock sdpa vs LongHeads, fresh process per measurement, alternating."""
    rows: list[dict[str, Any]] = []
    cost_file = Path(args.cost_file) if args.cost_file else COST_FILE
    if cost_file.exists() and args.resume:
        rows = json.loads(cost_file.read_text()).get("runs", [])
    methods = args.methods.split(",")
    for rep in range(args.repeats):
        for length in args.lengths:
            order = methods if rep % 2 == 0 else methods[::-1]
            for method in order:
                done = [r for r in rows if r["method"] == method and r["length"] == length]
                if len(done) > rep:
                    continue
                cmd = [sys.executable, __file__, "_measure", "--method", method, "--length", str(length),
                       "--threads", str(args.threads), "--dtype", args.dtype,
                       "--decode-tokens", str(args.decode_tokens)]
                env = {**os.environ}
                if args.mmap_threshold:
                    # glibc raises its mmap threshold after large frees, so later big tensors come from the heap and
                    # their pages stay resident: RSS then depends on allocation history, not on what is alive. A
                    # fixed threshold returns every large tensor to the OS on free, for every method alike.
                    env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
                res = subprocess.run(cmd, capture_output=True, text=True, env=env, check=True)
                row = json.loads(res.stdout.strip().splitlines()[-1])
                row["repetition"] = rep
                rows.append(row)
                print(f"cost rep {rep} {method:>9} {length:>6}: prefill {row['prefill_s']:.1f} s, decode "
                      f"{row.get('decode_tok_s') or 0:.2f} tok/s, peak RSS {row['peak_rss_bytes'] / 1e9:.2f} GB "
                      f"(+{row['peak_increase_bytes'] / 1e9:.2f})", flush=True)
                _write(cost_file, {"runs": rows, "machine": machine(), "threads": args.threads, "dtype": args.dtype,
                                   "decode_tokens": args.decode_tokens, "mmap_threshold": args.mmap_threshold,
                                   "command": " ".join(sys.argv)})


def phase_pairs(args: argparse.Namespace) -> None:
    """Distinct (chunk, displacement) pairs and distinct chunks per 256-query block, passkey filler and KJV."""
    import torch

    import hookkit
    from hookkit.evals.corpus import load_kjv_text
    from hookkit.evals.passkey import build_passkey_prompt
    from hookkit.methods.longheads import LongHeads

    dtype = setup(args.threads, args.dtype)
    model, tok, _ = load("stock", dtype)
    n = args.length[0]
    texts = {"passkey": build_passkey_prompt(tok, n, 0.5, 12345).input_ids,
             "kjv": tok(load_kjv_text()[: 8 * n])["input_ids"][:n]}
    out = {}
    for name, ids in texts.items():
        iv = LongHeads(pair_stats=True, prefill_selection="token")  # how far per-query selections agree in a block
        with hookkit.attach(model, iv) as s, torch.no_grad():
            model(input_ids=torch.tensor([ids]), use_cache=False, logits_to_keep=1)
            st = dict(s.states[iv].stats)
            K = s.resolved(iv).K
        out[name] = {"tokens": len(ids), "blocks": st["blocks"], "queries": st["queries"],
                     "pairs_per_block_mean": st["pairs_sum"] / st["blocks"], "pairs_per_block_max": st["pairs_max"],
                     "chunks_per_block_mean": st["chunks_sum"] / st["blocks"], "chunks_per_block_max":
                     st["chunks_max"], "K": K}
        print(name, out[name], flush=True)
    _write(PAIRS_FILE, {"length": n, "per_text": out, "machine": machine()})


# ---------------------------------------------------------------------------------------------- summary
def machine() -> dict[str, Any]:
    import torch

    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    from hookkit.models.loading import cpu_has_fast_bf16

    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": torch.cuda.is_available(), "native_bf16": cpu_has_fast_bf16(),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": __import__("transformers").__version__}


def _write(path: Path, obj: Any) -> None:
    from hookkit.evals.files import write_json_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, obj)


def _median(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def phase_summary(args: argparse.Namespace) -> None:
    from hookkit.evals.runner import read_jsonl

    summary: dict[str, Any] = {"machine": machine(), "passkey": {}, "passkey_heldout": {}, "longppl": {},
                               "cost": None, "pairs": None, "commands": COMMANDS}
    # runs/ is local to one machine; RESULT is the record: runs found here replace their entries, the rest is kept
    # (a fresh clone that reruns one cell must not drop the others).
    if RESULT.exists():
        recorded = json.loads(RESULT.read_text())
        summary["passkey"] = recorded.get("passkey") or {}
        summary["passkey_heldout"] = recorded.get("passkey_heldout") or {}
        summary["longppl"] = recorded.get("longppl") or {}
        # the machine of the entries that name none (passkey entries collected since name their own)
        summary["machine"] = recorded.get("machine") or summary["machine"]
    for method in METHODS:
        for folder in sorted((RUNS / "passkey" / method).glob("len*")):
            length_text, _, seed_text = folder.name[3:].partition("-seed")
            samples = folder / "samples_passkey.jsonl"
            logs = [samples] if samples.exists() else sorted(folder.glob("samples_passkey.rank*.jsonl"))
            recs = [r for p in logs for r in read_jsonl(p)[0] if not r.get("error")]
            if not recs:
                continue
            # trial_seed 0 is the set the defaults were tuned on; other seeds are held-out sets, kept apart
            table = (summary["passkey"] if not seed_text
                     else summary["passkey_heldout"].setdefault(f"trial_seed={seed_text}", {}))
            table.setdefault(method, {})[length_text] = {
                "trials": len(recs), "correct": sum(bool(r["correct"]) for r in recs),
                "accuracy": sum(bool(r["correct"]) for r in recs) / len(recs),
                "prefill_s_median": _median([r["_prefill_s"] for r in recs]),
                "decode_tok_s_median": _median([r["_decode_tok_s"] for r in recs if r.get("_decode_tok_s")]),
                "peak_rss_bytes_max": max((r["_peak_rss_bytes"] or 0) for r in recs),
                "machine": machine(), "records": recs}  # passes run on different machines
        for folder in sorted((RUNS / "longppl" / method).glob("n*")):
            res_file = folder / "results_longppl.json"
            if res_file.exists():
                res = json.loads(res_file.read_text())["results"]["longppl"]
                recs = [r for r in read_jsonl(folder / "samples_longppl.jsonl")[0] if not r.get("error")]
                n, _, ctx = folder.name[1:].partition("-ctx")
                label = f"{method}-ctx{ctx}" if ctx else method  # ctx: the truncated-context reference
                summary["longppl"][label] = {
                    "max_tokens": int(n), "max_context": int(ctx) if ctx else None,
                    "starts": [r["start"] for r in recs],
                    "windows": res["windows,none"],  # each window's NLL pooled over every start
                    "window_ppl_by_start": {str(r["start"]): r["window_ppl"] for r in recs},
                    "forward_s": res["forward_s_median,none"], "peak_rss_bytes": res["peak_rss_bytes_max,none"]}
    if COST_FILE.exists():
        cost = json.loads(COST_FILE.read_text())
        table: dict[str, Any] = {}
        for length in sorted({r["length"] for r in cost["runs"]}):
            per = {m: [r for r in cost["runs"] if r["length"] == length and r["method"] == m] for m in METHODS}
            entry: dict[str, Any] = {}
            for m, rs in per.items():
                if rs:
                    entry[m] = {"prefill_s_median": _median([r["prefill_s"] for r in rs]),
                                "peak_rss_bytes_median": _median([r["peak_rss_bytes"] for r in rs]),
                                "peak_increase_bytes_median": _median([r["peak_increase_bytes"] for r in rs]),
                                "n": len(rs)}
            if "stock" in entry and "longheads" in entry:
                pairs = [(a["prefill_s"], b["prefill_s"]) for a in per["stock"] for b in per["longheads"]
                         if a["repetition"] == b["repetition"]]
                entry["prefill_ratio_of_medians"] = entry["longheads"]["prefill_s_median"] / entry["stock"][
                    "prefill_s_median"]
                entry["prefill_ratio_per_repetition"] = [b / a for a, b in pairs]
            table[str(length)] = entry
        summary["cost"] = {"per_length": table, "runs": cost["runs"], "threads": cost.get("threads"),
                           "dtype": cost.get("dtype")}
    if PAIRS_FILE.exists():
        summary["pairs"] = json.loads(PAIRS_FILE.read_text())
    _write(RESULT, summary)
    print(markdown(summary))


def _accuracy_table(per_method: dict[str, Any]) -> list[str]:
    """Correct / trials per method (rows with no run left out) and length."""
    lengths = sorted({int(n) for per in per_method.values() for n in per})
    lines = ["| method | " + " | ".join(f"{n // 1024}k" for n in lengths) + " |", "|---|" + "---|" * len(lengths)]
    for m in (m for m in METHODS if m in per_method):
        cells = [per_method[m].get(str(n)) for n in lengths]
        lines.append(f"| {m} | " + " | ".join("–" if c is None else f"{c['correct']}/{c['trials']}" for c in cells) + " |")
    return lines


def markdown(s: dict[str, Any]) -> str:
    lines = _accuracy_table(s["passkey"])
    for seed, per_method in sorted(s.get("passkey_heldout", {}).items()):
        lines += ["", f"Held-out passkey draws ({seed}; seed = trial_seed + trial + length):", ""]
        lines += _accuracy_table(per_method)
    lines.append("")
    lines.append("| method | length | prefill s (median) | decode tok/s (median) | peak RSS GB |")
    lines.append("|---|---|---|---|---|")
    for m in METHODS:
        for n in _lengths(s):
            c = s["passkey"].get(m, {}).get(str(n))
            if c:
                dec = "–" if c["decode_tok_s_median"] is None else f"{c['decode_tok_s_median']:.2f}"
                lines.append(f"| {m} | {n} | {c['prefill_s_median']:.1f} | {dec} | "
                             f"{c['peak_rss_bytes_max'] / 1e9:.2f} |")
    if s["longppl"]:
        # Genesis 1 on (the excerpt), then the pooled excerpts for the runs that have them all.
        genesis = {label: v["window_ppl_by_start"]["0"] for label, v in s["longppl"].items()
                   if "0" in v["window_ppl_by_start"]}
        lines += ["", "Perplexity per 2k window, KJV from Genesis 1 (start 0):", ""] + _ppl_table(genesis)
        widest = max(len(v["starts"]) for v in s["longppl"].values())
        pooled = {label: [w["ppl"] for w in v["windows"]] for label, v in s["longppl"].items()
                  if len(v["starts"]) == widest}
        if widest > 1:
            starts = next(v["starts"] for v in s["longppl"].values() if len(v["starts"]) == widest)
            lines += ["", f"Perplexity per 2k window, NLL pooled over {widest} excerpts (token starts {starts}):",
                      ""] + _ppl_table(pooled)
    return "\n".join(lines)


def _ppl_table(columns: dict[str, list[float | None]], window: int = 2048) -> list[str]:
    rows = ["| window | " + " | ".join(columns) + " |", "|---|" + "---|" * len(columns)]
    for k in range(max((len(c) for c in columns.values()), default=0)):
        cells = ["–" if k >= len(c) or c[k] is None else f"{c[k]:.2f}" for c in columns.values()]
        rows.append(f"| {k * window}–{(k + 1) * window} | " + " | ".join(cells) + " |")
    return rows


def _lengths(s: dict[str, Any]) -> list[int]:
    return sorted({int(n) for per in s["passkey"].values() for n in per})


COMMANDS = [  # what produced bench/results/longcontext.json (docs/benchmarks.md lists the same)
    "python bench/longcontext.py passkey --methods longheads --lengths 4k,8k,16k,32k --trials 10",
    "python bench/longcontext.py passkey --methods ntk --lengths 4k,8k,16k,32k --trials 10",
    "python bench/longcontext.py passkey --methods stock --lengths 4k,8k,16k --trials 10",
    "python bench/longcontext.py passkey --methods stock --lengths 32k --trials 1",
    "python bench/longcontext.py passkey --methods longheads-scored-tail --lengths 8k,16k --trials 10",
    "python bench/longcontext.py passkey --methods longheads-block,longheads-official --lengths 4k,8k --trials 3",
    "python bench/longcontext.py passkey --methods longheads-block --lengths 16k --trials 3",
    "python bench/longcontext.py passkey --methods longheads-block --lengths 32k --trials 2",
    "python bench/longcontext.py longppl --methods stock,longheads-block,longheads-scored-tail --max-tokens 32k",
    "python bench/longcontext.py longppl --methods longheads,ntk --max-tokens 32k --excerpts 4",
    "python bench/longcontext.py longppl --methods stock --max-tokens 32k --max-context 8192 --excerpts 4",
    "python bench/longcontext.py cost --methods stock,longheads,ntk --lengths 8k,16k --repeats 3",
    "python bench/longcontext.py passkey --methods longheads-bound-fit --lengths 16k,32k --trials 10 --trial-seed 1000",
    "python bench/longcontext.py passkey --methods ntk --lengths 16k --trials 10 --trial-seed 1000",
    "python bench/longcontext.py passkey --methods longheads --lengths 16k,32k --trials 10 --trial-seed 1000",
    "python bench/longcontext.py summary",
]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("phase", choices=("passkey", "niah", "niah-table", "niah-heatmaps", "longppl", "cost", "pairs",
                                     "summary", "_measure"))
    p.add_argument("--methods", default=None,
                   help=f"default stock,ntk,longheads (niah-heatmaps: {HEATMAP_METHODS})")
    p.add_argument("--method", default="stock")
    p.add_argument("--lengths", "--length", dest="lengths", type=int_list, default=[16384])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--trial-seed", type=int, default=0,
                   help="passkey: base seed of the trials (seed = trial_seed + trial + length); 0 is the set the "
                        "defaults were tuned on, any other value draws a held-out set (runs in len<N>-seed<S>)")
    p.add_argument("--haystack", default="pydoc", help="niah: kjv | pydoc | licenses (default pydoc)")
    p.add_argument("--needle", default="code", help="niah: a needle phrasing of hookkit.evals.niah.NIAH_NEEDLES")
    p.add_argument("--depths", type=lambda t: [float(x) for x in t.split(",")],
                   default=[0.0, 10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0],
                   help="niah: needle depths in percent, one trial each (default 0,10,...,100)")
    p.add_argument("--vary-start", action="store_true",
                   help="niah: --trials per depth, each from its own seeded haystack line (default: one trial per "
                        "depth from the haystack's beginning, §6.1)")
    p.add_argument("--limit", type=int, default=None, help="run only the first N trials now (resume adds the rest)")
    p.add_argument("--max-tokens", type=int_list, default=[32768])
    p.add_argument("--window", type=int, default=2048)
    p.add_argument("--excerpts", type=int, default=1,
                   help="longppl: pool the per-window NLL over this many KJV excerpts spread evenly over the book")
    p.add_argument("--max-context", type=int, default=None,
                   help="longppl: truncated-context reference, each window from at most N tokens ending with it")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=16, help="cost: greedy steps timed after the prefill")
    p.add_argument("--mmap-threshold", type=int, default=0,
                   help="cost: set glibc's MALLOC_MMAP_THRESHOLD_ (bytes) in the measuring processes (0: leave as is)")
    p.add_argument("--cost-file", default=None, help=f"cost: results file (default {COST_FILE.name})")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default 1: on this shared 2-core machine 2 threads were slower)")
    p.add_argument("--dtype", default="fast")
    p.add_argument("--no-resume", dest="resume", action="store_false")
    p.add_argument("--retry-errors", action="store_true",
                   help="passkey/niah: re-run samples whose only record is an error (e.g. a prompt the builder refused)")
    args = p.parse_args()
    if args.methods is None and args.phase != "niah-heatmaps":
        args.methods = "stock,ntk,longheads"
    unknown = [m for m in (args.methods or "").split(",") if m and m not in METHODS]
    if unknown and args.phase in ("passkey", "niah", "longppl", "cost"):  # else a typo would run the stock model
        p.error(f"--methods: unknown {', '.join(unknown)}; allowed: {', '.join(METHODS)}")
    if args.phase == "_measure":
        args.length = args.lengths
        _measure(args)
        return
    {"passkey": phase_passkey, "niah": phase_niah, "longppl": phase_longppl, "cost": phase_cost, "pairs": phase_pairs,
     "summary": phase_summary, "niah-table": phase_niah_table,
     "niah-heatmaps": phase_niah_heatmaps}[args.phase](args)


if __name__ == "__main__":
    main()
