"""``bench/niah_first_token.py``'s measurement: the end-of-turn ids masked at the first answer step only.

The benchmark's diagnosis (docs/benchmarks.md, twelfth pass: which empty NIAH answers are the model's choice to
stop and which are a retrieval miss) rests on this function, so it is checked on a tiny model against a plain,
cache-free greedy loop.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from conftest import load_tiny

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.niah_first_token import first_step  # noqa: E402


def plain_greedy(model, ids: list[int], first: int, stop: set[int], budget: int) -> list[int]:
    """Greedy answer that starts with ``first``, one full forward per step (no cache), stopping at ``stop``."""
    new = [first]
    with torch.no_grad():
        while len(new) < budget and new[-1] not in stop:
            new.append(int(model(input_ids=torch.tensor([ids + new])).logits[0, -1].argmax()))
    return new


def test_first_step_masks_the_stop_ids_at_the_first_step_only() -> None:
    model, tok, _ = load_tiny("tiny-llama")
    ids = tok("the grass is green the sky is blue the sun is yellow")["input_ids"]
    with torch.no_grad():
        logp = model(input_ids=torch.tensor([ids])).logits[0, -1].float().log_softmax(-1)
    greedy, runner_up = (int(i) for i in logp.topk(2).indices)

    # No stop id is the greedy choice: the free and the masked answers are both the plain greedy answer.
    unused = int(logp.argmin())
    row = first_step(model, tok, ids, [unused], 6)
    expected = tok.decode(plain_greedy(model, ids, greedy, {unused}, 6), skip_special_tokens=True).strip()
    assert row["free_response"] == row["masked_response"] == expected
    assert row["stop_margin"] < 0

    # The greedy first token declared a stop id: the free answer is empty; the masked answer starts with the
    # runner-up and may stop at that id later (masked at the first step only).
    row = first_step(model, tok, ids, [greedy], 6)
    assert row["free_response"] == ""
    answer = plain_greedy(model, ids, runner_up, {greedy}, 6)
    assert row["masked_response"] == tok.decode(answer, skip_special_tokens=True).strip()
    assert row["best_other_token"] == tok.decode([runner_up])
    assert abs(row["stop_margin"] - float(logp[greedy] - logp[runner_up])) < 1e-3
    assert row["top5"][0][0] == tok.decode([greedy])
