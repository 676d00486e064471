"""POPE answer parsers (eval-protocols.md §1.4): every parser maps an answer to ``"yes" | "no" | "unknown"``."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

from hookkit.evals.pope.data import Prediction


def parse_pope_official(answer: str, label: str | None = None) -> Prediction:
    """[``pope_official``] AoiDragon/POPE ``evaluate.py`` = LLaVA ``eval_pope.py``.

    Keep the text before the first ``.``, drop commas, split on single spaces; ``"no"`` if a token is exactly
    ``No``, ``not`` or ``no``, else ``"yes"`` (so empty or garbage answers, ``NO`` and ``isn't`` count as yes).
    Never returns ``"unknown"``.  ``label`` is ignored.
    """
    text = answer
    if text.find(".") != -1:
        text = text.split(".")[0]
    words = text.replace(",", "").split(" ")
    return "no" if ("No" in words or "not" in words or "no" in words) else "yes"


_OPERA_NEG_WORDS = ("No", "not", "no", "NO")


def parse_opera(answer: str, label: str | None = None) -> Prediction:
    """[``opera``] OPERA ``pope_eval.py`` ``recorder``.

    Remove every ``.`` and ``,``, split on single spaces; ``"no"`` if a token is ``No``, ``not``, ``no`` or
    ``NO`` or ends in ``n't``, else ``"yes"`` (case-sensitive: ``Not`` alone is yes).  Never ``"unknown"``.
    """
    words = answer.replace(".", "").replace(",", "").split(" ")
    if any(word in _OPERA_NEG_WORDS for word in words) or any(word.endswith("n't") for word in words):
        return "no"
    return "yes"


def parse_vcd_substring(answer: str, label: str | None = None) -> Prediction:
    """[``vcd_substring``] VCD ``experiments/eval/eval_pope.py`` (label-dependent, asymmetric).

    VCD does not parse the answer on its own: it lowercases and strips it, then for a ``yes`` question counts it
    correct iff the substring ``"yes"`` occurs, and for a ``no`` question counts it correct iff the substring
    ``"no"`` occurs (so ``not``, ``none``, ``know`` count as no).  This function returns the prediction that
    VCD's counting implies: for ``label="yes"`` -> ``"yes"`` if ``"yes"`` occurs else ``"no"``; for
    ``label="no"`` -> ``"no"`` if ``"no"`` occurs else ``"yes"``.  The same answer can therefore map to
    different predictions for different labels (``""`` is ``"no"`` under a yes-label and ``"yes"`` under a
    no-label).  ``label`` is required (``ValueError`` otherwise).  Never ``"unknown"``.
    """
    if label is None:
        raise ValueError("parser 'vcd_substring' needs the ground-truth label (label='yes' or 'no')")
    gt = label.lower().strip()
    text = answer.lower().strip()
    if gt == "yes":
        return "yes" if "yes" in text else "no"
    if gt == "no":
        return "no" if "no" in text else "yes"
    raise ValueError(f"label must be 'yes' or 'no', got {label!r}")


def parse_exact(answer: str, label: str | None = None) -> Prediction:
    """[``exact``] lmms-eval ``tasks/pope/utils.py``: ``answer.lower().strip()`` must equal ``yes`` or ``no``.

    Anything else (``"Yes."``, ``"No, there is not"``) is ``"unknown"``.  (lmms-eval's ``pope_yes_ratio`` is
    computed from ground truth; that bug is not replicated, see :func:`pope_metrics`.)
    """
    text = answer.lower().strip()
    if text == "yes":
        return "yes"
    if text == "no":
        return "no"
    return "unknown"


_VLMEVAL_PUNCT = tuple(';/[]"{}()=+\\_-><@`,?!')  # upstream list, same order


_VLMEVAL_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")


_VLMEVAL_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")


def _vlmeval_process_punctuation(in_text: str) -> str:
    """VLMEvalKit ``smp.misc.process_punctuation``, reproduced with its quirks.

    Upstream calls ``periodStrip.sub('', outText, re.UNICODE)``: the third positional argument is ``count``, so at
    most ``int(re.UNICODE) == 32`` periods are removed; and ``(?!<=\\d)`` is a negative *lookahead*, so every
    period not followed by a digit is removed.  Both are kept for byte-exact agreement.
    """
    out_text = in_text
    for p in _VLMEVAL_PUNCT:
        if (p + " " in in_text or " " + p in in_text) or (re.search(_VLMEVAL_COMMA_STRIP, in_text) is not None):
            out_text = out_text.replace(p, "")
        else:
            out_text = out_text.replace(p, " ")
    return _VLMEVAL_PERIOD_STRIP.sub("", out_text, count=int(re.UNICODE))


def parse_vlmevalkit(answer: str, label: str | None = None) -> Prediction:
    """[``vlmevalkit``] VLMEvalKit ``dataset/utils/yorn.py`` ``YOrN_Extraction`` (no LLM judge).

    Lowercase, normalise punctuation (:func:`_vlmeval_process_punctuation`), split on whitespace; ``"yes"`` iff
    ``yes`` is a word and ``no`` is not, ``"no"`` iff ``no`` is a word and ``yes`` is not, else ``"unknown"``.
    VLMEvalKit then optionally asks an LLM judge and otherwise scores Unknown as No; :func:`pope_metrics` does
    the latter by default.
    """
    words = _vlmeval_process_punctuation(answer.lower()).split()
    has_yes, has_no = "yes" in words, "no" in words
    if has_yes and not has_no:
        return "yes"
    if has_no and not has_yes:
        return "no"
    return "unknown"


@dataclass(frozen=True)
class PopeParser:
    """A registered answer parser.  ``fn(answer, label)`` returns ``"yes" | "no" | "unknown"``.

    ``needs_label`` is true for parsers whose output depends on the ground-truth label (``vcd_substring``);
    call them through :func:`parse_pope_answer` with ``label=`` set.
    """

    id: str
    fn: Callable[[str, str | None], Prediction]
    needs_label: bool
    can_be_unknown: bool
    source: str


#: Answer parser registry (§1.4).  Always record the parser id with the results.
POPE_PARSERS: dict[str, PopeParser] = {
    "pope_official": PopeParser(
        "pope_official", parse_pope_official, False, False, "AoiDragon/POPE evaluate.py, LLaVA eval_pope.py"
    ),
    "opera": PopeParser("opera", parse_opera, False, False, "OPERA pope_eval.py"),
    "vcd_substring": PopeParser("vcd_substring", parse_vcd_substring, True, False, "VCD eval_pope.py"),
    "exact": PopeParser("exact", parse_exact, False, True, "lmms-eval tasks/pope/utils.py"),
    "vlmevalkit": PopeParser("vlmevalkit", parse_vlmevalkit, False, True, "VLMEvalKit dataset/utils/yorn.py"),
}


#: The official parser is the default (Key facts: "default to the official one").
DEFAULT_POPE_PARSER = "pope_official"


def get_pope_parser(parser_id: str) -> PopeParser:
    """Look up a parser; unknown ids raise ``KeyError`` listing the allowed ones."""
    try:
        return POPE_PARSERS[parser_id]
    except KeyError:
        allowed = ", ".join(sorted(POPE_PARSERS))
        raise KeyError(f"unknown POPE answer parser {parser_id!r}; allowed: {allowed}") from None


def parse_pope_answer(answer: str, parser: str = DEFAULT_POPE_PARSER, *, label: str | None = None) -> Prediction:
    """Map a model answer to ``"yes" | "no" | "unknown"`` with a registered parser.

    ``label`` (the question's ground truth) is required for parsers with ``needs_label`` and ignored otherwise.
    """
    spec = get_pope_parser(parser)
    if spec.needs_label and label is None:
        raise ValueError(f"parser {parser!r} needs the ground-truth label (pass label='yes' or 'no')")
    return spec.fn(answer, label)
