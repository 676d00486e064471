"""Needle in a haystack as an :class:`~hookkit.evals.runner.EvalTask`: a length × depth grid, two scorers, heatmap.

Protocol: eval-protocols.md §6.2 (the offline HF variant): needle ``"\nThe best thing to do in San Francisco is
eat a sandwich and sit in Dolores Park on a sunny day.\n"``, question ``"What is the best thing to do in San
Francisco?"``, the ``<|im_start|> This is a very long story book: <book> {context} </book>. ...`` prompt, greedy
decoding with ``max_new_tokens=50``, the response decoded without special tokens and stripped, scored by
ROUGE-1 F × 10 (``rouge-score``, stemmer on). hookkit adds an exact-substring scorer (the needle's key phrase,
case- and whitespace-insensitive). The haystack is the shipped public-domain KJV text (provenance in
``hookkit/evals/data/PROVENANCE.md``; no network), Python's documentation topics (``pydoc``) or the shipped
free-software licence texts (``licenses``), and the needle
one of several phrasings (``NIAH_NEEDLES``), and every prompt is built to an exact token count
(:func:`hookkit.evals.niah.build_niah_prompt`).

One sample per (length, depth) cell, so ``--resume`` resumes per cell. :func:`write_heatmaps` draws the §6.1
heatmaps (ROUGE and substring) from the per-sample records (needs matplotlib, the ``plots`` extra).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hookkit.errors import check_int
from hookkit.evals.corpus import HAYSTACKS, corpus_sha256
from hookkit.evals.decoding import eos_ids, greedy_generate
from hookkit.evals.niah.build import (
    PROMPT_TEMPLATE,
    NiahPrompt,
    build_niah_prompt,
    get_needle,
    haystack_start,
    plot_niah_heatmap,
    rotate_haystack,
    rouge1_x10,
    substring_score,
)
from hookkit.evals.results import cell_summary, mean_stderr
from hookkit.evals.runner import EvalTask, Record, Sample, SampleError

logger = logging.getLogger(__name__)


NIAH_MAX_NEW_TOKENS = 50  # §6.2: generate(input_ids, max_new_tokens=50)


class NiahTask(EvalTask):
    """Needle in a haystack over a length × depth grid (eval-protocols.md §6.2).

    Args:
        tokenizer: the model's tokenizer (prompts are sized with it; the whole prompt has exactly ``length`` tokens).
        lengths: context lengths in tokens (the grid's "Token Limit").
        depths: needle depths in percent (0-100).
        haystack: haystack text, or the name of a built-in one (:data:`hookkit.evals.corpus.HAYSTACKS`: ``kjv``,
            the default, ``pydoc`` or ``licenses``).
        haystack_name: how a haystack given as text is named in ``data_files``.
        needle: a needle phrasing (:data:`hookkit.evals.niah.NIAH_NEEDLES`; default ``sandwich``, §6.2).
        max_new_tokens: greedy budget (§6.2: 50).
        trials: trials per (length, depth) cell (default 1, as in §6.1/§6.2).
        vary_start: start each trial's haystack at its own seeded line (:func:`haystack_start`, seed
            ``"{trial_seed}:{length}:{depth}:{trial}"``) instead of at the beginning (§6.1, the default). Every
            method sees the same prompts either way.
        trial_seed: the seed prefix for ``vary_start``.
        min_new_tokens: EOS cannot end the answer before this many tokens (default 0: the protocol). Outside §6.2:
            with 1, an answer the model would have ended at once (an empty response) shows whether the needle
            reached the answering tokens, i.e. "found but stopped" apart from "not found". Recorded in ``config``.
    """

    name = "niah"
    version = "1"
    # A sample's prompt depends only on its own (length, depth, trial): its haystack start is seeded by exactly
    # those, so more lengths, depths or trials on resume only add samples and never change an existing one.
    extendable_config_keys = ("lengths", "depth_percents", "trials_per_cell")

    def __init__(self, tokenizer: Any, lengths: Sequence[int], depths: Sequence[float], *,
                 haystack: str | None = None, haystack_name: str | None = None, needle: str = "sandwich",
                 max_new_tokens: int = NIAH_MAX_NEW_TOKENS, trials: int = 1, vary_start: bool = False,
                 trial_seed: int = 0, min_new_tokens: int = 0) -> None:
        if not lengths or not depths:
            raise ValueError("lengths and depths must not be empty")
        if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
            raise ValueError(f"trials must be a positive integer, got {trials!r}")
        if trials > 1 and not vary_start:
            raise ValueError("trials > 1 repeats the same prompt unless vary_start=True; set vary_start=True")
        check_int("min_new_tokens", min_new_tokens, low=0, high=max_new_tokens)
        for d in depths:
            if not 0 <= d <= 100:
                raise ValueError(f"depth percents must lie in [0, 100], got {d}")
        self.tokenizer = tokenizer
        self.lengths = [int(n) for n in lengths]
        self.depths = [float(d) for d in depths]
        haystack = "kjv" if haystack is None else haystack
        self.builtin = haystack if haystack in HAYSTACKS else None
        if self.builtin is not None:
            self.haystack = HAYSTACKS[self.builtin].load()
            self.haystack_name = HAYSTACKS[self.builtin].path
        else:
            self.haystack, self.haystack_name = haystack, haystack_name or "haystack"
        self.needle_name = needle
        self.needle = get_needle(needle)
        self.max_new_tokens = int(max_new_tokens)
        self.min_new_tokens = min_new_tokens
        self.trials, self.vary_start, self.trial_seed = trials, bool(vary_start), int(trial_seed)
        self.model: Any = None

    def samples(self) -> list[Sample]:
        """``trials`` samples per cell, lengths outer and depths inner (the §6.1 loop order)."""
        if not self.vary_start:
            return [{"sample_id": f"len{n}-depth{d:g}", "context_length": n, "depth_percent": d, "haystack_start": 0}
                    for n in self.lengths for d in self.depths]
        return [{"sample_id": f"len{n}-depth{d:g}-trial{k}", "context_length": n, "depth_percent": d,
                 "haystack_start": haystack_start(self.haystack, f"{self.trial_seed}:{n}:{d:g}:{k}")}
                for n in self.lengths for d in self.depths for k in range(self.trials)]

    def predict(self, batch: list[Sample]) -> list[Record]:
        if self.model is None:
            raise RuntimeError("NiahTask.model is not set")
        return [self.predict_one(s) for s in batch]

    def build_prompt(self, sample: Mapping[str, Any]) -> NiahPrompt:
        """The prompt of one sample (its haystack rotated to the sample's ``haystack_start``), of exactly the
        sample's length where one exists.

        From some haystack starts no cut gives the exact count: the token before the template can merge with it
        (e.g. a cut between two newlines), so the count jumps by 2 at the one cut that would hit. The sample then
        uses the longest prompt below the target (one token short, recorded as ``exact_length: false``) instead of
        losing the grid cell; the model sees the same haystack either way."""
        start = int(sample.get("haystack_start", 0))
        try:
            prompt = build_niah_prompt(self.tokenizer, int(sample["context_length"]), float(sample["depth_percent"]),
                                       haystack=rotate_haystack(self.haystack, start) if start else self.haystack,
                                       needle=self.needle.needle, question=self.needle.question, strict=False)
        except ValueError as exc:
            raise SampleError(sample["sample_id"], f"cannot build the prompt: {exc}") from exc
        if not prompt.exact:
            logger.warning("sample %r: no prompt of exactly %d tokens from this haystack start; using %d tokens",
                           sample["sample_id"], prompt.target_tokens, prompt.n_tokens)
        return prompt

    def predict_one(self, sample: Sample) -> Record:
        prompt = self.build_prompt(sample)
        ids = self.model_input_ids(prompt)
        timing = greedy_generate(self.model, ids, self.max_new_tokens, eos_ids(self.tokenizer, self.model),
                                 min_new_tokens=self.min_new_tokens)
        response = self.tokenizer.decode(timing.new_ids, skip_special_tokens=True).strip()
        rec = prompt.to_record()
        return {
            "sample_id": sample["sample_id"],
            "context_length": int(sample["context_length"]),
            "depth_percent": float(sample["depth_percent"]),
            "haystack_start": int(sample.get("haystack_start", 0)),
            "n_tokens": prompt.n_tokens,
            "model_tokens": len(ids),
            "exact_length": prompt.exact,
            "actual_depth_percent": prompt.actual_depth_percent,
            "needle_token_span": rec["needle_token_span"],
            "prompt_sha256": rec["prompt_sha256"],
            "response": response,
            "score": rouge1_x10(response, self.needle.needle),
            "substring": substring_score(response, self.needle.answer),
            **timing.record_fields(),
        }

    def model_input_ids(self, prompt: NiahPrompt) -> Sequence[int]:
        """The ids the model is given for ``prompt`` (its ``input_ids``). Subclasses can transform them, e.g. a
        truncation baseline that drops the middle of the context."""
        return prompt.input_ids

    def aggregate(self, records: list[Record]) -> dict[str, Any]:
        metrics: dict[str, Any] = {}
        score, err = mean_stderr([float(r["score"]) for r in records])
        metrics["rouge1_x10"], metrics["rouge1_x10_stderr"] = score, (math.nan if err is None else err)
        metrics["substring_accuracy"] = mean_stderr([float(bool(r["substring"])) for r in records])[0]
        per_length: dict[str, Any] = {}
        for n in sorted({int(r["context_length"]) for r in records}):
            recs = [r for r in records if int(r["context_length"]) == n]
            summ = cell_summary(recs, "substring")
            summ["substring_accuracy"] = summ.pop("accuracy")
            summ.pop("accuracy_stderr")
            summ["rouge1_x10"] = mean_stderr([float(r["score"]) for r in recs])[0]
            per_length[str(n)] = summ
            metrics[f"len{n}/rouge1_x10"] = summ["rouge1_x10"]
            metrics[f"len{n}/substring_accuracy"] = summ["substring_accuracy"]
            for key in ("prefill_s_median", "decode_tok_s_median", "peak_rss_bytes_max"):
                metrics[f"len{n}/{key}"] = math.nan if summ[key] is None else float(summ[key])
        metrics["per_length"] = per_length
        metrics["grid"] = [{"context_length": r["context_length"], "depth_percent": r["depth_percent"],
                            "score": r["score"], "substring": bool(r["substring"])} for r in records]
        return metrics

    def config(self) -> dict[str, Any]:
        decoding: dict[str, Any] = {"greedy": True, "max_new_tokens": self.max_new_tokens, "skip_special_tokens": True}
        if self.min_new_tokens:  # only when set, so that protocol runs keep their task hash
            decoding["min_new_tokens"] = self.min_new_tokens
            decoding["note"] = "outside eval-protocols.md §6.2: EOS masked for the first min_new_tokens tokens"
        return {
            "protocol": "eval-protocols.md §6.2 (offline HF variant); exact token budgets",
            "haystack": self.builtin or self.haystack_name,
            "prompt_template": PROMPT_TEMPLATE,
            "needle_preset": self.needle_name,
            "needle": self.needle.needle,
            "question": self.needle.question,
            "substring_answer": self.needle.answer,
            "lengths": self.lengths,
            "depth_percents": self.depths,
            "trials_per_cell": self.trials,
            "haystack_start": (f"seeded line per trial (seed '{self.trial_seed}:length:depth:trial')"
                               if self.vary_start else "beginning of the haystack (§6.1)"),
            "length_counts": "whole prompt (template + context + question), tokenised as the model sees it",
            "decoding": decoding,
            "scorers": ["rouge1_x10 (rouge-score rouge1 F, use_stemmer=True, x10)", "substring (key phrase)"],
        }

    def data_files(self) -> list[dict[str, Any]]:
        entry: dict[str, Any] = {"path": self.haystack_name, "sha256": corpus_sha256(self.haystack),
                                 "role": "haystack"}
        if self.builtin is not None:
            builtin = HAYSTACKS[self.builtin]
            entry["version"] = builtin.version()
            if builtin.expected_sha256 is not None:
                entry["expected_sha256"] = builtin.expected_sha256
        return [entry]

    def higher_is_better(self) -> dict[str, bool]:
        return {"rouge1_x10": True, "substring_accuracy": True}


def write_heatmaps(records: Sequence[Mapping[str, Any]], output_dir: str | Path, *,
                   title: str | None = None) -> list[Path]:
    """``niah_heatmap_rouge.png`` (0-10) and ``niah_heatmap_substring.png`` (0-1), each with its JSON pivot.

    Returns the written PNG paths; an empty list (with a warning) when matplotlib is not installed.
    """
    cells = [r for r in records if not r.get("error")]
    if not cells:
        return []
    out = Path(output_dir)
    try:
        png_r, _ = plot_niah_heatmap(cells, out / "niah_heatmap_rouge.png", value_key="score", title=title)
        sub = [{**c, "substring": float(bool(c["substring"]))} for c in cells]
        png_s, _ = plot_niah_heatmap(sub, out / "niah_heatmap_substring.png", value_key="substring", title=title,
                                     vmax=1.0)
    except ImportError as exc:
        logger.warning("no NIAH heatmap: %s", exc)
        return []
    return [png_r, png_s]
