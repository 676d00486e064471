"""Diagnostic LongHeads variant (bench only): the answer's scored slots go to a far chunk only where it beats the
local window.

With the defaults the exact tail and every decoding step keep chunk 0, the current and previous chunks, the
``tail_recent`` chunks before those (the local window) and K−3−tail_recent *scored* slots filled with the best-scored
older chunks, whatever their scores. On natural text those slots cost trials at 12k: with every slot recent
(``longheads-recent``) pydoc scores 6/10 against 3/10 (docs/benchmarks.md, sixth pass), yet they are what retrieves a
passkey beyond the local window. Here a far chunk enters a scored slot only where, for that query head, its score
exceeds the best score of the local window by ``slot_margin``; the slots no far chunk wins go to the next most recent
chunks (the local window grows), so on a prompt with no clear match the answer reads a sink + sliding window, and a
needle that clearly out-scores the recent text still comes in. Used by ``bench/longcontext.py niah|passkey --methods
longheads-gated[16|48]`` (margins 0, 16, 48 in raw q·k units; 8 = one nat of logit at head dim 64). Not adopted:
docs/benchmarks.md, seventh pass.

``python bench/longheads_gated.py PROMPT...`` (``main`` below) records, per head, how far the needle's chunk and the
best other far chunk out-score the local window, the numbers a margin is chosen from.
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

# Below every real score (raw q·k products, |s| << 1e6) yet exact in fp32 when a chunk index (< 1e4) is added to it
_RECENCY_BAND = -1.0e6


@dataclass(eq=False)
class GatedLongHeads(LongHeads):
    """LongHeads whose scored slots take a far chunk only where it out-scores the local window by ``slot_margin``."""

    slot_margin: float = field(default=0.0, metadata={
        "help": "a far chunk needs score > max(local window scores) + slot_margin to take a scored slot"})

    def _keep_local_window(self, state: Any, scores: torch.Tensor, c: int) -> torch.Tensor:
        lo = max(0, c - 2 - state.cfg.tail_recent)  # scores[..., j] is chunk j+1; the window is lo..c-3
        if lo == 0:
            return super()._keep_local_window(state, scores, c)
        far = scores[..., :lo]
        window_best = scores[..., lo:].amax(dim=-1, keepdim=True)
        wins = far > window_best + self.slot_margin
        # A far chunk that does not win ranks below every winner, newest first: the slots left over extend the window
        recency = _RECENCY_BAND + torch.arange(lo, device=scores.device, dtype=scores.dtype)
        scores[..., :lo] = torch.where(wins, far, recency.expand_as(far))
        return super()._keep_local_window(state, scores, c)


# ---------------------------------------------------------------------------------------------- margins
class MarginRecorder(GatedLongHeads):
    """Records, per call, each head's needle excess and best other far excess over the local window (last query)."""

    needle_chunks: tuple[int, int] = (0, 0)  # first and last chunk of the needle's tokens
    calls: list  # per call: (queries, needle excess [heads], best other far excess [heads])

    def _keep_local_window(self, state: Any, scores: torch.Tensor, c: int) -> torch.Tensor:
        first, last = self.needle_chunks
        lo = max(0, c - 2 - state.cfg.tail_recent)
        s = scores[:, -1].float()  # [heads, c-2], the call's last query
        far = s[:, :lo] - s[:, lo:].amax(-1, keepdim=True)
        other = far.clone()
        other[:, first - 1:last] = float("-inf")
        self.calls.append((scores.shape[1], far[:, first - 1:last].amax(-1), other.amax(-1)))
        return super()._keep_local_window(state, scores, c)


def main() -> None:
    """How far the needle's chunk, and the best other far chunk, out-score the local window at the first decoding step.

    Per (layer, query head), at the first decoding step (the first answer token's query, which computes the second): the
    needle's bound score minus the best bound score of the local window, and the same for the best far chunk that is
    not the needle's. A gate at margin m lets the needle in where the first exceeds m, and noise where the second does.
    """
    import argparse
    import json

    import numpy as np

    import hookkit
    from bench.longcontext import LONGHEADS_PARAMS
    from hookkit.evals.decoding import greedy_generate

    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("prompts", nargs="+", metavar="passkey/LENGTH/TRIAL | HAYSTACK/NEEDLE/LENGTH/TRIAL",
                   help="NIAH trials as in `bench/longcontext.py niah --vary-start --depths 0,25,50,75,100 "
                        "--trials 2` (trial k of that grid); passkey trials as in `passkey --trials 10`")
    p.add_argument("--margins", default="0,4,8,16,32")
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "longheads_slot_margins.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    model, tok = hookkit.load("smollm2", dtype="bfloat16")
    layers = model.config.num_hidden_layers
    margins = [float(m) for m in args.margins.split(",")]
    rows = []
    for spec in args.prompts:
        parts = spec.split("/")
        if parts[0] == "passkey":
            from hookkit.evals.passkey.task import PasskeyTask

            length, k = int(parts[1]), int(parts[2])
            task: Any = PasskeyTask(tok, [length], k + 1, trial_seed=0)
        else:
            from hookkit.evals.niah.task import NiahTask

            length, k = int(parts[2]), int(parts[3])
            task = NiahTask(tok, [length], [0, 25, 50, 75, 100], haystack=parts[0], needle=parts[1], trials=2,
                            vary_start=True)
        prompt = task.build_prompt(task.samples()[k])
        first, last = prompt.needle_token_span[0] // 256, (prompt.needle_token_span[1] - 1) // 256
        # slot_margin=-inf: every selection is the defaults'; only the scores are read
        recorder = MarginRecorder(**LONGHEADS_PARAMS["longheads-bound-fit"], slot_margin=float("-inf"))
        recorder.needle_chunks, recorder.calls = (first, last), []
        with hookkit.attach(model, recorder):
            out = greedy_generate(model, prompt.input_ids, 2)
        # Two new tokens: one decoding forward, whose selection is the last call of every layer
        step = recorder.calls[-layers:]
        needle = torch.stack([c[1] for c in step]).numpy()
        other = torch.stack([c[2] for c in step]).numpy()
        row = {"prompt": spec, "needle_chunk": first, "defaults_answer": tok.decode(out.new_ids),
               "heads": int(needle.size),
               "needle_excess_quantiles": {q: round(float(np.percentile(needle, q)), 2) for q in (10, 50, 90, 100)},
               "other_excess_quantiles": {q: round(float(np.percentile(other, q)), 2) for q in (10, 50, 90, 100)},
               "heads_needle_passes": {m: int((needle > m).sum()) for m in margins},
               "heads_other_passes": {m: int((other > m).sum()) for m in margins}}
        rows.append(row)
        print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "model": "smollm2 bf16",
                                          "params": LONGHEADS_PARAMS["longheads-bound-fit"], "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
