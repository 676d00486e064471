"""Empty NIAH answers: does the model end its turn at once although the needle reached it?

    python bench/niah_first_token.py --haystack licenses --needle city --length 32768 --depths 0,25,50,75,100 \\
        --trials 2 --methods longheads-bound-fit          # -> bench/results/niah_first_token.json
    python bench/niah_first_token.py --table              # its markdown table

Some NIAH answers are empty: the greedy first token is ``<|im_end|>`` (the end of the assistant's turn), so the
response is "". This script reruns ``bench/longcontext.py niah --vary-start`` prompts (the same seeded samples,
method configurations and dtype) and records, per sample, at the first answer step:

* the log-probability of the end-of-turn ids and of the best other token (their difference is the margin by which
  the model chose to stop), and the five most likely tokens;
* the free greedy answer, checked against the benchmark's recorded response: word for word (``reproduces_record``,
  only on the CPU that made the record: bf16 kernels differ between machines) and by outcome (``same_outcome``:
  empty or not, needle found or not);
* the greedy answer with the end-of-turn ids masked at the first step only (the rest of the decoding is free), and
  whether it contains the needle's key phrase (``hookkit eval niah``'s substring scorer).

A masked answer that contains the needle means the needle reached the answering tokens and the empty answer is the
model's choice to stop, not a retrieval miss. Masking is a diagnostic, not a method or an eval option: every
reported accuracy keeps the protocol's free greedy decoding. Resumable: samples already in ``--out`` are skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.longcontext import (  # noqa: E402
    DIAGNOSTICS,
    LONGHEADS_PARAMS,
    NIAH_FILE,
    _write,
    attachment,
    load,
    recipe_for,
    setup,
)

OUT = ROOT / "bench" / "results" / "niah_first_token.json"


def recorded_responses(haystack: str, needle: str, method: str, length: int) -> dict[str, str]:
    """sample_id -> the response ``bench/longcontext.py niah --vary-start`` recorded for this cell."""
    if not NIAH_FILE.exists():
        return {}
    runs = json.loads(NIAH_FILE.read_text())["runs"]
    return {r["sample_id"]: r["response"] for run in runs
            if (run["haystack"], run["needle"], run["method"], run["length"]) == (haystack, needle, method, length)
            and run["haystack_start"] == "seeded per trial" for r in run["records"]}


def first_step(model: Any, tok: Any, ids: list[int], stop_ids: list[int], max_new_tokens: int) -> dict[str, Any]:
    """One prefill, then greedy decoding with ``stop_ids`` masked at the first step only (see the module doc)."""
    import torch

    from hookkit import compat

    with torch.no_grad():
        t0 = time.perf_counter()
        out = model(input_ids=torch.tensor([ids]), use_cache=True, logits_to_keep=1)
        prefill_s = time.perf_counter() - t0
        logp = out.logits[0, -1].float().log_softmax(-1)
        stop = torch.tensor(stop_ids)
        stop_logp = float(logp[stop].logsumexp(0))
        masked = logp.clone()
        masked[stop] = float("-inf")
        best_other = int(masked.argmax())
        top = logp.topk(5)
        free_stops = int(logp.argmax()) in stop_ids
        new = [best_other]
        cache = compat.cache_from_output(out)
        del out
        while len(new) < max_new_tokens and new[-1] not in stop_ids:
            out = model(input_ids=torch.tensor([[new[-1]]]), **compat.with_cache(model, cache), use_cache=True)
            new.append(int(out.logits[0, -1].argmax()))
            cache = compat.cache_from_output(out)
    masked_answer = tok.decode(new, skip_special_tokens=True).strip()
    return {
        "stop_logprob": round(stop_logp, 4),
        "best_other_token": tok.decode([best_other]),
        "best_other_logprob": round(float(logp[best_other]), 4),
        "stop_margin": round(stop_logp - float(logp[best_other]), 4),
        "top5": [[tok.decode([int(i)]), round(float(v), 4)] for v, i in zip(top.values, top.indices)],
        "free_response": "" if free_stops else masked_answer,
        "masked_response": masked_answer,
        "prefill_s": round(prefill_s, 2),
    }


def table(doc: dict[str, Any]) -> str:
    """Markdown: per cell, the free answers (correct, empty) and, of the empty ones, how many the masked first step
    turns into the needle, with the median margin by which the end of turn won."""
    import statistics

    cells: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for s in doc["samples"]:
        cells.setdefault((s["haystack"], s["needle"], s["method"], s["length"]), []).append(s)
    lines = ["| haystack / needle | method | length | free: correct | free: empty | empty → needle when masked | "
             "masked: correct | stop margin of the empty (median, nats) | outcome = record |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (haystack, needle, method, length), rows in sorted(cells.items()):
        empty = [r for r in rows if r["free_response"] == ""]
        n = len(rows)
        margin = f"{statistics.median(r['stop_margin'] for r in empty):+.2f}" if empty else "–"
        same = [r["same_outcome"] for r in rows if r["same_outcome"] is not None]
        lines.append(f"| {haystack} / `{needle}` | {method} | {length} | {sum(r['free_substring'] for r in rows)}/{n} | "
                     f"{len(empty)}/{n} | {sum(r['masked_substring'] for r in empty)}/{len(empty)} | "
                     f"{sum(r['masked_substring'] for r in rows)}/{n} | {margin} | {sum(same)}/{len(same)} |")
    return "\n".join(lines)


def main() -> None:
    from hookkit.evals.niah.build import substring_score

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--haystack", default="licenses")
    p.add_argument("--needle", default="city")
    p.add_argument("--length", type=int, default=32768)
    p.add_argument("--depths", type=lambda s: [float(x) for x in s.split(",")], default=[0, 25, 50, 75, 100])
    p.add_argument("--trials", type=int, default=2, help="trials per depth (the --vary-start grid's first K)")
    p.add_argument("--only", type=lambda s: s.split(","), default=None, help="sample ids to run (default: all)")
    p.add_argument("--methods", default="longheads-bound-fit",
                   help="bench/longcontext.py methods: stock, ntk, or a LongHeads variant")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--table", action="store_true", help="print the markdown table of --out and stop")
    args = p.parse_args()
    if args.table:
        print(table(json.loads(Path(args.out).read_text())))
        return

    import hookkit
    from hookkit.evals.decoding import eos_ids
    from hookkit.evals.niah.task import NiahTask

    out = Path(args.out)
    doc = json.loads(out.read_text()) if out.exists() else {"doc": __doc__.split("\n\n")[1], "samples": []}
    done = {(s["method"], s["haystack"], s["needle"], s["length"], s["sample_id"]) for s in doc["samples"]}
    dtype = setup(args.threads, args.dtype)
    for method in args.methods.split(","):
        if method not in ("stock", "ntk") and method not in LONGHEADS_PARAMS and method not in DIAGNOSTICS:
            raise SystemExit(f"--methods: {method!r} is not one of stock, ntk or a LongHeads variant of "
                             "bench/longcontext.py (the stock-cut prompts are not supported here)")
        model, tok, _ = load(method, dtype)
        task = NiahTask(tok, [args.length], args.depths, haystack=args.haystack, needle=args.needle,
                        trials=args.trials, vary_start=True)
        stop_ids = eos_ids(tok, model)
        recorded = recorded_responses(args.haystack, args.needle, method, args.length)
        attached, intervention = attachment(method, recipe_for(method))
        for sample in task.samples():
            key = (method, args.haystack, args.needle, args.length, sample["sample_id"])
            if key in done or (args.only and sample["sample_id"] not in args.only):
                continue
            ids = list(task.model_input_ids(task.build_prompt(sample)))
            with hookkit.attach(model, attached) if attached is not None else contextlib.nullcontext():
                row = first_step(model, tok, ids, stop_ids, task.max_new_tokens)
            record = recorded.get(sample["sample_id"])
            free_found = substring_score(row["free_response"], task.needle.answer)
            row = {"method": method, "haystack": args.haystack, "needle": args.needle, "length": args.length,
                   "sample_id": sample["sample_id"], "n_tokens": len(ids), **row,
                   "free_substring": free_found,
                   "masked_substring": substring_score(row["masked_response"], task.needle.answer),
                   "recorded_response": record,
                   "reproduces_record": None if record is None else record == row["free_response"],
                   # word for word needs the record's CPU (bf16 kernels differ between machines); the outcome
                   # (empty or not, needle found or not) is what the diagnosis rests on
                   "same_outcome": None if record is None else (
                       (record == "", substring_score(record, task.needle.answer))
                       == (row["free_response"] == "", free_found)),
                   "intervention": intervention, "dtype": dtype, "threads": args.threads}
            doc["samples"].append(row)
            done.add(key)
            _write(out, doc)
            print(f"{method} {args.haystack}/{args.needle} {args.length} {sample['sample_id']}: stop margin "
                  f"{row['stop_margin']:+.2f}, free {row['free_response'][:40]!r} (record "
                  f"{'=' if row['reproduces_record'] else '!=' if record is not None else '?'}), masked "
                  f"{row['masked_response'][:60]!r} -> {row['masked_substring']}", flush=True)
        del model


if __name__ == "__main__":
    main()
