"""Candidate LongHeads score (bench only): chunk scores from the query minus the prompt's mean query.

The defaults retrieve the answer's scored chunks by the position-free product ``q·k`` (its max over the chunk, or
an upper bound of it). On natural text the eleventh pass found that score does not tell the needle's chunk from
the text around it: some chunk beats the local window in 60–97 % of heads, the needle's in 1–61 %. Part of ``q·k``
is the same for every query of a head: ``q = q̄ + (q − q̄)``, and ``q̄·k`` is how much *any* token of the prompt
attends to key k (the keys every query likes: sinks, punctuation, frequent words). Here the scored slots are chosen
by ``(q − q̄)·k`` instead, q̄ the mean raw query of the row's prompt so far, per layer and query head: what this query
wants *more than the prompt's average query does*, a pointwise-mutual-information form of the same score (the
query-side normalisation the issue lists as "score normalisation"). The per-chunk key max/min bound stays an upper
bound of the centred max-key score, so decoding keeps its cost; q̄ costs one ``[H, D]`` sum per layer and row.

Used by ``bench/longcontext.py niah|passkey --methods longheads-centered``.

``python bench/longheads_centered.py PROMPT...`` (``main`` below) records, per prompt, in how many (layer, head)
selections of the answer the needle's chunk is kept by the centred score and by the defaults' score, computed on
the same queries in the same run (the run itself follows ``--drive``), and the answer.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script: ``bench`` importable

from hookkit.methods.longheads import LongHeads  # noqa: E402

SCORED = ("max_key", "max_key_bound")


@dataclass(eq=False)
class CenteredLongHeads(LongHeads):
    """LongHeads whose exact tail and decoding score chunks with the query minus the prompt's mean query."""

    center_queries: bool = field(default=True, metadata={
        "help": "score chunks by (q - mean prompt query)·k instead of q·k (False: the defaults)"})

    def _append(self, call, state, row, b, q_raw, k_raw) -> None:  # type: ignore[override]
        if q_raw.shape[0]:
            # Running sum of the row's raw queries per head, in fp32 (statistics in fp32): [H, D].
            total = q_raw.float().sum(dim=0)
            row.q_sum = total if getattr(row, "q_sum", None) is None else row.q_sum + total
            row.q_count = getattr(row, "q_count", 0) + q_raw.shape[0]
        super()._append(call, state, row, b, q_raw, k_raw)

    def _centred(self, row: Any, q_raw: torch.Tensor) -> torch.Tensor:
        """``q − q̄`` for queries ``[H, Qb, D]``, q̄ the mean raw query of the row so far (fp32)."""
        mean = row.q_sum / row.q_count
        return q_raw.float() - mean[:, None, :]

    def _select(self, state, row, q_raw, c, score, key_b, n_pad):  # type: ignore[override]
        if self.center_queries and score in SCORED:
            q_raw = self._centred(row, q_raw)
        return super()._select(state, row, q_raw, c, score, key_b, n_pad)


# ---------------------------------------------------------------------------------------------- hit counts
class HitRecorder(CenteredLongHeads):
    """Per scored selection call, the query heads whose selection for the call's last query keeps the needle's
    chunk, under the centred score and under the defaults' score (both on this call's queries)."""

    needle_chunks: tuple[int, int] = (0, 0)  # first and last chunk of the needle's tokens
    calls: list  # per call: (heads keeping the needle centred, ... with the defaults' score, heads)

    def _select(self, state, row, q_raw, c, score, key_b, n_pad):  # type: ignore[override]
        if score not in SCORED:
            return super()._select(state, row, q_raw, c, score, key_b, n_pad)
        last = q_raw[:, -1:]
        first, end = self.needle_chunks
        kept = []
        for centred in (True, False):
            q = self._centred(row, last) if centred else last
            top = LongHeads._select(self, state, row, q, c, score, key_b, n_pad)  # [G, 1, K-3]
            kept.append(int(((top >= first) & (top <= end)).any(-1).sum()))
        self.calls.append((kept[0], kept[1], int(q_raw.shape[0])))
        return super()._select(state, row, q_raw, c, score, key_b, n_pad)


def main() -> None:
    """Needle-chunk retention of the answer's selections, centred vs the defaults' score, on the same run."""
    import argparse
    import json

    import hookkit
    from bench.longcontext import LONGHEADS_PARAMS
    from hookkit.evals.decoding import greedy_generate

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("prompts", nargs="+", metavar="passkey/LENGTH/TRIAL | HAYSTACK/NEEDLE/LENGTH/TRIAL",
                   help="NIAH trials as in `bench/longcontext.py niah --vary-start --depths 0,25,50,75,100 "
                        "--trials 2` (trial k of that grid); passkey trials as in `passkey --trials 10`")
    p.add_argument("--drive", choices=("centered", "defaults"), default="centered",
                   help="whose selections the run itself uses (both are counted on its queries)")
    p.add_argument("--new-tokens", type=int, default=16)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "longheads_centered_hits.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    model, tok = hookkit.load("smollm2", dtype="bfloat16")
    out_path = Path(args.out)
    done = json.loads(out_path.read_text()) if out_path.exists() else {"rows": []}
    rows = [r for r in done["rows"] if not (r["prompt"] in args.prompts and r["drive"] == args.drive)]
    for spec in args.prompts:
        parts = spec.split("/")
        if parts[0] == "passkey":
            from hookkit.evals.passkey.task import PasskeyTask

            length, k = int(parts[1]), int(parts[2])
            task: Any = PasskeyTask(tok, [length], k + 1, trial_seed=0)
            prompt = task.build_prompt(task.samples()[k])
            answer = str(prompt.passkey)
        else:
            from hookkit.evals.niah.task import NiahTask

            length, k = int(parts[2]), int(parts[3])
            task = NiahTask(tok, [length], [0, 25, 50, 75, 100], haystack=parts[0], needle=parts[1], trials=2,
                            vary_start=True)
            prompt = task.build_prompt(task.samples()[k])
            answer = task.needle.answer
        first, end = prompt.needle_token_span[0] // 256, (prompt.needle_token_span[1] - 1) // 256
        recorder = HitRecorder(**LONGHEADS_PARAMS["longheads-bound-fit"], center_queries=args.drive == "centered")
        recorder.needle_chunks, recorder.calls = (first, end), []
        with hookkit.attach(model, recorder):
            out = greedy_generate(model, prompt.input_ids, args.new_tokens)
        text = tok.decode(out.new_ids)
        centred, plain = sum(c[0] for c in recorder.calls), sum(c[1] for c in recorder.calls)
        row = {"prompt": spec, "drive": args.drive, "needle_chunks": [first, end], "answer": text,
               "correct": answer in text, "selections": sum(c[2] for c in recorder.calls),
               "needle_kept_centered": centred, "needle_kept_defaults": plain}
        rows.append(row)
        print(json.dumps(row), flush=True)
        out_path.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "model": "smollm2 bf16",
                                        "params": LONGHEADS_PARAMS["longheads-bound-fit"], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
