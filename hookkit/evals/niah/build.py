"""Needle in a haystack: prompts sized to an exact token budget, grids, scorers and the heatmap (no model calls).

Protocol: eval-protocols.md §6. The needle, question and prompt template are those of the offline HF variant
(§6.2, FranxYao/Long-Context-Data-Engineering ``eval/needle/needle_in_haystack.py``), byte for byte; the context
per cell follows the gkamradt logic of §6.1 (tokenise the haystack, trim, insert the needle tokens at a depth
moved back to a ``.`` token, decode), adapted to exact token budgets. The haystack is the shipped public-domain
KJV text (:mod:`hookkit.evals.corpus`) instead of the Paul Graham essays, read in a fixed order and repeated
if a context needs more tokens than the text has.

Tokenizers: as in :mod:`hookkit.evals.passkey`, a Hugging Face tokenizer or a raw ``tokenizers.Tokenizer``.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hookkit.evals.passkey.build import (
    ExactLengthError,
    TokenizerLike,
    decode_ids,
    encode_ids,
    solve_exact_length,
    token_span,
)

# --- §6.1 / §6.2 protocol texts (byte for byte) -----------------------------------------------------------------
NEEDLE = "\nThe best thing to do in San Francisco is eat a sandwich and sit in Dolores Park on a sunny day.\n"


QUESTION = "What is the best thing to do in San Francisco?"


#: §6.2 offline HF prompt; fill with :func:`format_niah_prompt` (``str.format`` with ``context`` and ``question``).
PROMPT_TEMPLATE = (
    "<|im_start|> This is a very long story book: <book> {context} </book>.\n"
    " Based on the content of the book, Question: {question}\nAnswer:"
)


#: Key phrase of the needle for :func:`substring_score` (hookkit's exact-match scorer, not in the originals).
NEEDLE_ANSWER = "eat a sandwich and sit in Dolores Park on a sunny day"


@dataclass(frozen=True)
class NiahNeedle:
    """A needle phrasing: the inserted text, the question, and the key phrase the substring scorer looks for."""

    needle: str
    question: str
    answer: str
    description: str


#: Needle phrasings. ``sandwich`` is the protocol's (§6.2, the default); the others vary what is retrieved (a code,
#: a name, a phrase) and how it is asked, and were never used to choose any method's defaults.
NIAH_NEEDLES = {
    "sandwich": NiahNeedle(NEEDLE, QUESTION, NEEDLE_ANSWER, "§6.2 / gkamradt (default)"),
    "code": NiahNeedle("\nThe secret code that opens the old archive is 7391-harbor.\n",
                       "What is the secret code that opens the old archive?", "7391-harbor",
                       "an alphanumeric code"),
    "city": NiahNeedle("\nThe hidden city that the travellers finally reached was called Valmora.\n",
                       "What was the hidden city that the travellers finally reached called?", "Valmora",
                       "a made-up proper name"),
    "ingredient": NiahNeedle("\nThe special ingredient in Grandma Elsie's winter soup is roasted fennel seed.\n",
                             "What is the special ingredient in Grandma Elsie's winter soup?", "roasted fennel seed",
                             "a short phrase"),
}


def get_needle(name: str) -> NiahNeedle:
    """The :data:`NIAH_NEEDLES` preset ``name`` (a clear error naming the allowed values otherwise)."""
    if name not in NIAH_NEEDLES:
        raise ValueError(f"unknown needle {name!r}; allowed: {', '.join(NIAH_NEEDLES)}")
    return NIAH_NEEDLES[name]


#: §6.1 gkamradt system message (OpenAI provider) and question suffixes (§6.1 and the §6.2 API path).
SYSTEM_MESSAGE = "You are a helpful AI bot that answers questions for a user. Keep your response short and direct"


QUESTION_SUFFIX = " Don't give information outside the document or repeat your findings"


QUESTION_SUFFIX_HF_API = (
    " Don't give information outside the document or repeat your findings. The document definitely contains "
    "the answer, and I'm 100% sure. So try your best to find it."
)


#: §6.1 ``final_context_length_buffer`` (tokens left for system message, question and answer). hookkit does not
#: subtract it: the whole prompt is sized exactly instead (see :func:`build_niah_prompt`).
FINAL_CONTEXT_LENGTH_BUFFER = 200


#: §6.1 heatmap colormap, low → high.
NIAH_COLORS: tuple[str, str, str] = ("#F0496E", "#EBB839", "#0CD79F")


def format_niah_prompt(context: str, question: str = QUESTION, template: str = PROMPT_TEMPLATE) -> str:
    """Fill the §6.2 template: ``<|im_start|> This is a very long story book: <book> {context} </book>.\\n ...``."""
    return template.format(context=context, question=question)


# --- context construction (§6.1 logic) --------------------------------------------------------------------------
def period_token_ids(tokenizer: TokenizerLike) -> frozenset[int]:
    """Ids of the sentence-break tokens: ids from tokenising ``"."`` and ``" ."`` that decode to ``"."``.

    Generalises §6.1 (``encode('.')``) and the hard-coded LLaMA pair ``[29889, 869]`` (``"."`` and ``"▁."``) of the
    §6.2 script. SmolLM2: ``{30, 1673}``.
    """
    ids: set[int] = set()
    for s in (".", " ."):
        for i in encode_ids(tokenizer, s, add_special_tokens=False):
            if decode_ids(tokenizer, [i]).strip() == ".":
                ids.add(i)
    return frozenset(ids)


def insert_needle_tokens(
    context_ids: Sequence[int], needle_ids: Sequence[int], depth_percent: float, period_ids: Iterable[int]
) -> tuple[list[int], int]:
    """§6.1 ``insert_needle`` on token lists; returns ``(new_ids, insertion_point)``.

    ``depth_percent == 100`` appends the needle. Otherwise the insertion point is
    ``int(len(context_ids) * depth_percent / 100)``, moved backwards until the preceding token is a period token
    (or to 0 if there is none), and the needle tokens are inserted there.
    """
    ctx = list(context_ids)
    if depth_percent == 100:
        return ctx + list(needle_ids), len(ctx)
    periods = set(period_ids)
    point = int(len(ctx) * (depth_percent / 100))
    while point > 0 and ctx[point - 1] not in periods:
        point -= 1
    return ctx[:point] + list(needle_ids) + ctx[point:], point


def _haystack_ids(tokenizer: TokenizerLike, haystack: str, n_tokens: int) -> list[int]:
    """The first ``n_tokens`` ids of the haystack (repeated end to end as needed), tokenised without specials.

    Only a character prefix with a margin of at least 64 tokens is tokenised, so the ids equal the first ids of
    tokenising the whole (repeated) haystack as §6.1 does, without tokenising megabytes per cell.
    """
    if not haystack:
        raise ValueError("haystack is empty")
    chars = 6 * (n_tokens + 64) + 1024
    while True:
        reps = chars // len(haystack) + 1
        text = (haystack * reps)[:chars]
        ids = encode_ids(tokenizer, text, add_special_tokens=False)
        if len(ids) >= n_tokens + 64:
            return ids[:n_tokens]
        chars *= 2


@dataclass(frozen=True)
class NiahPrompt:
    """A §6.2 prompt for one (length, depth) cell, built to an exact token count.

    Attributes:
        prompt: full prompt text (template with the context and question).
        input_ids: ``tokenizer(prompt, add_special_tokens=...)`` ids.
        n_tokens: ``len(input_ids)``, the whole prompt.
        target_tokens: requested length (the grid's context length, "Token Limit").
        count: what ``target_tokens`` was matched against: ``"prompt"`` (``n_tokens``) or ``"context"``
            (``context_tokens``).
        exact: whether the counted quantity equals ``target_tokens``.
        context: haystack with the needle, as decoded from tokens (the ``{context}`` of the template).
        context_tokens: tokens of ``context`` tokenised alone, without special tokens.
        haystack_tokens: haystack tokens kept before the needle was inserted.
        needle_tokens: tokens of the needle tokenised alone.
        depth_percent: requested depth (0-100).
        insertion_token: index into the haystack tokens where the needle went (after the back-off to ``.``).
        actual_depth_percent: ``100 * insertion_token / haystack_tokens``.
        needle_char_span: ``[start, end)`` of the needle text in ``prompt`` (``None`` if decoding altered it).
        needle_token_span: ``[start, end)`` token indices in ``input_ids`` covering the needle (or ``None``).
        add_special_tokens: how ``input_ids`` were produced.
    """

    prompt: str
    input_ids: tuple[int, ...]
    n_tokens: int
    target_tokens: int
    count: str
    exact: bool
    context: str
    context_tokens: int
    haystack_tokens: int
    needle_tokens: int
    depth_percent: float
    insertion_token: int
    actual_depth_percent: float
    needle_char_span: tuple[int, int] | None
    needle_token_span: tuple[int, int] | None
    add_special_tokens: bool

    def to_record(self) -> dict[str, Any]:
        """JSON-friendly metadata (no prompt/context text or ids; ``prompt_sha256`` identifies the prompt)."""
        rec = asdict(self)
        del rec["prompt"], rec["input_ids"], rec["context"]
        rec["prompt_sha256"] = hashlib.sha256(self.prompt.encode("utf-8")).hexdigest()
        for key in ("needle_char_span", "needle_token_span"):
            if rec[key] is not None:
                rec[key] = list(rec[key])
        return rec


def build_niah_prompt(
    tokenizer: TokenizerLike,
    context_tokens: int,
    depth_percent: float,
    *,
    haystack: str | None = None,
    needle: str = NEEDLE,
    question: str = QUESTION,
    template: str = PROMPT_TEMPLATE,
    count: Literal["prompt", "context"] = "prompt",
    add_special_tokens: bool = True,
    strict: bool = True,
) -> NiahPrompt:
    """Build the §6.2 prompt of one NIAH cell with an exact token count.

    Target semantics (default ``count="prompt"``): ``context_tokens`` is the grid's context length and the
    **whole prompt** (template + context with needle + question, tokenised as the model gets it, BOS included if
    the tokenizer adds one) has exactly that many tokens. This replaces §6.1's ``final_context_length_buffer``
    (context ≤ L − 200 tokens) with exact accounting of the template; the answer tokens are not counted. With
    ``count="context"`` the context alone (haystack + needle, tokenised without special tokens) has exactly
    ``context_tokens`` tokens, as in the gkamradt sense of "context length". Both numbers are recorded.

    Per candidate haystack size c (§6.1): take the first c haystack tokens, insert the needle tokens at
    ``int(c * depth / 100)`` moved back until the previous token is a ``.`` token (depth 100 appends), decode,
    fill the template and tokenise. c is searched (Newton steps, bracketing, bisection, then a scan of ±48)
    until the count equals the target; re-tokenising decoded text can merge or split tokens at the cut and the
    needle boundaries, which the search absorbs. If no c matches, ``strict=True`` raises
    :class:`ExactLengthError`, else the longest prompt below the target is returned with ``exact=False``.

    Args:
        tokenizer: HF tokenizer or ``tokenizers.Tokenizer``.
        context_tokens: target token count (see above).
        depth_percent: needle depth in [0, 100].
        haystack: haystack text; default the shipped KJV (:func:`hookkit.evals.corpus.load_kjv_text`).
        needle, question, template: protocol texts (§6.2 defaults).
        count: ``"prompt"`` or ``"context"``.
        add_special_tokens: tokenise the prompt as ``tokenizer(prompt)`` does by default.
        strict: raise instead of returning a non-exact prompt.

    Raises:
        ValueError: bad arguments or a target below the prompt with an empty haystack.
        ExactLengthError: ``strict`` and no exact size found.
    """
    if not 0 <= depth_percent <= 100:
        raise ValueError(f"depth_percent must be in [0, 100], got {depth_percent}")
    if count not in ("prompt", "context"):
        raise ValueError(f"count must be 'prompt' or 'context', got {count!r}")
    if haystack is None:
        from hookkit.evals.corpus import load_kjv_text

        haystack = load_kjv_text()

    needle_ids = encode_ids(tokenizer, needle, add_special_tokens=False)
    periods = period_token_ids(tokenizer)
    hay = _haystack_ids(tokenizer, haystack, max(context_tokens, 0) + 64)

    cache: dict[int, tuple[int, int, str, int]] = {}

    def evaluate(c: int) -> tuple[int, int, str, int]:
        """(counted tokens, prompt tokens, context text, insertion point) for c haystack tokens."""
        nonlocal hay
        if c not in cache:
            if c > len(hay):
                hay = _haystack_ids(tokenizer, haystack, c + 1024)
            new_ids, point = insert_needle_tokens(hay[:c], needle_ids, depth_percent, periods)
            context = decode_ids(tokenizer, new_ids)
            n_prompt = len(
                encode_ids(
                    tokenizer, format_niah_prompt(context, question, template), add_special_tokens=add_special_tokens
                )
            )
            n_ctx = len(encode_ids(tokenizer, context, add_special_tokens=False)) if count == "context" else -1
            cache[c] = (n_prompt if count == "prompt" else n_ctx, n_prompt, context, point)
        return cache[c]

    base = evaluate(0)[0]
    if context_tokens < base:
        raise ValueError(
            f"context_tokens={context_tokens} is below the {base} tokens of the NIAH {count} with an empty haystack"
        )
    c, exact = solve_exact_length(lambda x: evaluate(x)[0], context_tokens, context_tokens - base, slope=1.0, minimum=0)
    if not exact and strict:
        raise ExactLengthError(
            f"no NIAH {count} with exactly {context_tokens} tokens near {c} haystack tokens "
            f"(closest below: {evaluate(c)[0]}); retry with another length or strict=False"
        )
    counted, _, context, point = evaluate(c)
    prompt = format_niah_prompt(context, question, template)
    ids = encode_ids(tokenizer, prompt, add_special_tokens=add_special_tokens)
    ctx_tokens = len(encode_ids(tokenizer, context, add_special_tokens=False))
    start = prompt.find(needle)
    char_span = (start, start + len(needle)) if start >= 0 else None
    tok_span = token_span(tokenizer, prompt, *char_span, add_special_tokens=add_special_tokens) if char_span else None
    if c:
        actual = 100.0 * point / c
    else:
        actual = 100.0 if depth_percent == 100 else 0.0
    return NiahPrompt(
        prompt=prompt,
        input_ids=tuple(ids),
        n_tokens=len(ids),
        target_tokens=context_tokens,
        count=count,
        exact=counted == context_tokens,
        context=context,
        context_tokens=ctx_tokens,
        haystack_tokens=c,
        needle_tokens=len(needle_ids),
        depth_percent=float(depth_percent),
        insertion_token=point,
        actual_depth_percent=actual,
        needle_char_span=char_span,
        needle_token_span=tok_span,
        add_special_tokens=add_special_tokens,
    )


def haystack_start(haystack: str, seed: str | int) -> int:
    """A seeded character offset at which a trial's haystack begins: the start of a line, uniform over lines.

    §6.1 always reads the haystack from its beginning, so every trial of one length ends the context at the same
    haystack token: a model that continues the text it stopped in (rather than answering) then fails the whole
    row for one reason. Starting each trial at its own line decorrelates the trials. The same seed gives the same
    offset (``random.Random`` with a string seed is stable across runs and platforms).
    """
    import random

    starts = [0] + [m.end() for m in re.finditer(r"\n(?=\S)", haystack)]
    starts = [s for s in starts if s < len(haystack)]
    return starts[random.Random(str(seed)).randrange(len(starts))]


def rotate_haystack(haystack: str, start: int) -> str:
    """The haystack read from character ``start`` on and wrapped around to its beginning (it is repeated end to
    end anyway when a context needs more tokens than it has)."""
    if not 0 <= start < max(len(haystack), 1):
        raise ValueError(f"start must lie in [0, {len(haystack)}), got {start}")
    return haystack[start:] + haystack[:start]


# --- grids ------------------------------------------------------------------------------------------------------
def linspace_int(start: float, stop: float, num: int) -> list[int]:
    """``np.round(np.linspace(start, stop, num, endpoint=True)).astype(int)`` as a list (§6.1/§6.2 grids)."""
    return [int(v) for v in np.round(np.linspace(start, stop, num=num, endpoint=True)).astype(int)]


def logistic_depths(
    num: int, start: float = 0, stop: float = 100, *, L: float = 100, x0: float = 50, k: float = 0.1
) -> list[float]:
    """§6.1 "sigmoid" depth spacing: ``round(L / (1 + exp(-k (x - x0))), 3)`` over ``linspace(start, stop, num)``.

    Endpoints 0 and 100 are kept as they are. This is the increasing form of the §6.2 script; gkamradt's
    ``logistic`` uses ``sigmoid(-k (x - x0))``, which lists the same set of values in reverse order for the
    symmetric default range.
    """
    out: list[float] = []
    for x in np.linspace(start, stop, num):
        if x in (0, 100):
            out.append(float(x))
        else:
            out.append(float(np.round(L / (1 + np.exp(-k * (x - x0))), 3)))
    return out


def gkamradt_context_lengths(num: int = 35, start: int = 1000, stop: int = 16000) -> list[int]:
    """§6.1 default lengths: ``round(linspace(1000, 16000, 35))``."""
    return linspace_int(start, stop, num)


def gkamradt_depth_percents(num: int = 35, spacing: Literal["linear", "sigmoid"] = "linear") -> list[float]:
    """§6.1 default depths: ``round(linspace(0, 100, 35))`` or the sigmoid spacing."""
    if spacing == "linear":
        return [float(v) for v in linspace_int(0, 100, num)]
    if spacing == "sigmoid":
        return logistic_depths(num)
    raise ValueError(f"spacing must be 'linear' or 'sigmoid', got {spacing!r}")


def hf_context_lengths(num: int = 40, start: int = 1000, stop: int = 128000) -> list[int]:
    """§6.2 default lengths: ``round(linspace(1000, 128000, 40))``."""
    return linspace_int(start, stop, num)


def hf_depth_percents(num: int = 10) -> list[float]:
    """§6.2 default depths: 10 linear depths ``round(linspace(0, 100, 10))`` = 0, 11, 22, ..., 89, 100."""
    return [float(v) for v in linspace_int(0, 100, num)]


def niah_grid(lengths: Iterable[int], depths: Iterable[float]) -> list[tuple[int, float]]:
    """All ``(context_length, depth_percent)`` cells, lengths outer and depths inner (the §6.1 loop order)."""
    return [(int(length), float(depth)) for length, depth in itertools.product(list(lengths), list(depths))]


def niah_result_filename(model_version: str, context_length: int, depth_percent: float) -> str:
    """§6.2 per-cell result file name: ``<model_version with . → _>_len_<L>_depth_<int(depth*100)>_results.json``."""
    return f"{model_version.replace('.', '_')}_len_{int(context_length)}_depth_{int(depth_percent * 100)}_results.json"


# --- scorers ----------------------------------------------------------------------------------------------------
_ROUGE: dict[str, Any] = {}


def rouge1_x10(response: str, needle: str = NEEDLE) -> float:
    """§6.2 score: ROUGE-1 F-measure between needle (reference) and response, ``use_stemmer=True``, times 10.

    Needs the ``rouge-score`` package (``pip install 'hookkit[evals]'``). Example: the response
    ``"Eat a sandwich and sit in Dolores Park on a sunny day."`` shares all its 12 unigrams with the 21-unigram
    needle: P = 1, R = 12/21, F = 24/33, score 7.2727...
    """
    try:
        from rouge_score import rouge_scorer
    except ImportError as exc:
        raise ImportError(
            "rouge1_x10 needs the 'rouge-score' package; install it with: pip install 'hookkit[evals]'"
        ) from exc
    scorer = _ROUGE.get("rouge1")
    if scorer is None:
        scorer = _ROUGE["rouge1"] = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    return float(scorer.score(needle, response)["rouge1"].fmeasure * 10)


_WS = re.compile(r"\s+")


def _normalise(text: str) -> str:
    return _WS.sub(" ", text).strip().casefold()


def substring_score(response: str, needle_answer: str = NEEDLE_ANSWER) -> bool:
    """Exact-substring scorer: the key phrase occurs in the response, case-insensitively, whitespace normalised.

    Both strings are case-folded and every whitespace run becomes one space; punctuation is kept, so
    ``"Eat a sandwich and sit in Dolores Park on a sunny day."`` → True, ``"eat a sandwich, and sit ..."`` → False.
    """
    key = _normalise(needle_answer)
    if not key:
        raise ValueError("needle_answer is empty")
    return key in _normalise(response)


# --- heatmap ----------------------------------------------------------------------------------------------------
def _cell_tuple(cell: Mapping[str, Any] | Sequence[Any], value_key: str) -> tuple[int, float, float]:
    if isinstance(cell, Mapping):
        return int(cell["context_length"]), float(cell["depth_percent"]), float(cell[value_key])
    length, depth, value = cell
    return int(length), float(depth), float(value)


def niah_pivot(
    cells: Iterable[Mapping[str, Any] | Sequence[Any]], value_key: str = "score"
) -> tuple[list[int], list[float], list[list[float | None]]]:
    """Mean value per (depth, length): ``(lengths, depths, rows)`` with ``rows[i][j]`` for ``depths[i]``,
    ``lengths[j]`` (``None`` where a cell is missing), lengths and depths sorted ascending (§6.1 pivot table).

    A cell is a mapping with ``context_length``, ``depth_percent`` and ``value_key`` (the §6.1/§6.2 result
    JSON keys) or a ``(context_length, depth_percent, value)`` tuple.
    """
    sums: dict[tuple[float, int], list[float]] = {}
    for cell in cells:
        length, depth, value = _cell_tuple(cell, value_key)
        sums.setdefault((depth, length), []).append(value)
    lengths = sorted({k[1] for k in sums})
    depths = sorted({k[0] for k in sums})
    rows = [[(sum(sums[(d, n)]) / len(sums[(d, n)])) if (d, n) in sums else None for n in lengths] for d in depths]
    return lengths, depths, rows


def plot_niah_heatmap(
    cells: Iterable[Mapping[str, Any] | Sequence[Any]],
    path: str | Path,
    *,
    value_key: str = "score",
    title: str | None = None,
    vmin: float = 0.0,
    vmax: float = 10.0,
) -> tuple[Path, Path]:
    """Write the §6.1 heatmap as a PNG and the pivoted values as JSON next to it (same stem, ``.json``).

    Mean ``value_key`` per (depth, length), depth on the y axis ("Depth Percent", 0 at the top as in the
    seaborn original), length on the x axis ("Token Limit"), colormap ``#F0496E → #EBB839 → #0CD79F`` from
    ``vmin`` to ``vmax`` (0-10 for :func:`rouge1_x10`; use ``vmax=1`` for :func:`substring_score`); missing
    cells are left blank. Needs matplotlib (``pip install 'hookkit[plots]'``); uses the Agg canvas without
    pyplot, so no global backend state is touched.

    Returns:
        ``(png_path, json_path)``.
    """
    cell_list = list(cells)
    lengths, depths, rows = niah_pivot(cell_list, value_key)
    if not lengths:
        raise ValueError("no cells to plot")
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.colors import LinearSegmentedColormap
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError("plot_niah_heatmap needs matplotlib; install it with: pip install 'hookkit[plots]'") from exc

    png = Path(path)
    json_path = png.with_suffix(".json")
    png.parent.mkdir(parents=True, exist_ok=True)

    values = np.ma.masked_invalid(np.array([[math.nan if v is None else v for v in row] for row in rows]))
    cmap = LinearSegmentedColormap.from_list("niah", list(NIAH_COLORS))
    fig = Figure(figsize=(max(6.0, 0.5 * len(lengths) + 3), max(4.0, 0.3 * len(depths) + 2)))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(values, cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(lengths)), labels=[str(n) for n in lengths], rotation=45, ha="right")
    ax.set_yticks(range(len(depths)), labels=[f"{d:g}" for d in depths])
    ax.set_xlabel("Token Limit")
    ax.set_ylabel("Depth Percent")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, label="Score")
    fig.tight_layout()
    fig.savefig(png, dpi=100)

    payload = {
        "x_label": "Token Limit",
        "y_label": "Depth Percent",
        "value_key": value_key,
        "vmin": vmin,
        "vmax": vmax,
        "colormap": list(NIAH_COLORS),
        "context_lengths": lengths,
        "depth_percents": depths,
        "mean_scores": rows,
        "cells": [
            dict(zip(("context_length", "depth_percent", value_key), _cell_tuple(c, value_key))) for c in cell_list
        ],
    }
    json_path.write_text(json.dumps(payload, indent=1) + "\n", encoding="utf-8")
    return png, json_path
