"""CHAIR's fast word extraction (``--scorer fast``): a regex tokenizer and inflect singularisation."""

from __future__ import annotations

import functools
import re
from importlib import metadata
from typing import Any

from hookkit.evals.chair.vocab import CaptionObjects, ChairVocab, default_vocab, merge_double_words

#: Name of the singularisation variant, recorded with every result (§2.2 step 2: "record which").
SINGULARIZER = "inflect"


_TOKEN_RE = re.compile(
    r"n't\b"  # negation clitic: "don't" -> "do", "n't" (as NLTK's Treebank rules)
    r"|'(?:s|re|ve|ll|d|m)\b"  # clitics: "dog's" -> "dog", "'s"
    r"|\d+(?:[.,]\d+)+"  # numbers with separators: 3.5, 1,000
    r"|[^\W_]+?(?=n't\b)"  # the stem before "n't"
    r"|[^\W_]+(?:-[^\W_]+)*"  # words and numbers; hyphenated compounds stay one token ("t-shirt", "hot-dog")
    r"|\.\.\."  # ellipsis
    r"|\S"  # any other non-space character is a token of its own (punctuation)
)


def tokenize(text: str) -> list[str]:
    """Deterministic regex word tokenizer (``hookkit-regex-v1``), a stand-in for NLTK ``word_tokenize``.

    Words are maximal runs of letters/digits (Unicode-aware, underscore excluded); hyphenated compounds stay whole
    (as NLTK keeps them); ``n't`` and the clitics ``'s 're 've 'll 'd 'm`` are split off; numbers keep their
    ``.``/``,`` separators; ``...`` is one token and every other punctuation character is its own token.
    Punctuation tokens matter because the reference counts them in Len.  Known differences from NLTK (none of
    them can create or hide a COCO word): quotes stay ``"`` instead of ``` `` ``/``''``, abbreviations such as
    ``e.g.`` are split at every period, and ``o'clock`` is split.  The text is not lowercased here
    (:func:`caption_to_objects` does that).
    """
    return _TOKEN_RE.findall(text)


_ASCII_WORD = re.compile(r"[a-z]+")


#: Words that ``inflect`` treats as plurals but that must stay as they are: function words (``is`` -> ``i``,
#: ``this`` -> ``thi``, ``as`` -> ``a``, ``ours`` -> ``mine``) and singular nouns ending in ``s``
#: (``tennis`` -> ``tenni`` would break the ``tennis racket`` merge).
_NO_SINGULAR: frozenset[str] = frozenset(
    {
        "is",
        "was",
        "has",
        "does",
        "this",
        "his",
        "its",
        "hers",
        "ours",
        "yours",
        "theirs",
        "as",
        "yes",
        "thus",
        "whereas",
        "always",
        "perhaps",
        "sometimes",
        "besides",
        "afterwards",
        "towards",
        "backwards",
        "sideways",
        "upstairs",
        "downstairs",
        "indoors",
        "outdoors",
        "tennis",
        "lens",
        "iris",
        "gas",
        "canvas",
        "atlas",
        "bias",
        "physics",
        "gymnastics",
    }
)


@functools.cache
def _inflect_engine() -> Any:
    import inflect

    return inflect.engine()


@functools.lru_cache(maxsize=200_000)
def singularize(word: str) -> str:
    """Singular form of a lowercase token via ``inflect.engine().singular_noun`` with guards (§2.2 step 2).

    Returned unchanged: tokens that are not plain ASCII lowercase words (punctuation, numbers, hyphenated
    compounds, clitics), words in :data:`_NO_SINGULAR`, words ending in ``us`` (``bus``, ``cactus``,
    ``various``: inflect strips their ``s``) or ``ss``, and words inflect reports as not plural (``False``) or
    maps to an empty string (``"s"``).  :func:`caption_to_objects` additionally keeps words that are themselves in
    the synonym vocabulary (``people``, ``children``, ``skis``, ``scissors``, ``oxen``).
    """
    if not _ASCII_WORD.fullmatch(word) or word in _NO_SINGULAR or word.endswith(("us", "ss")):
        return word
    singular = _inflect_engine().singular_noun(word)
    return singular if singular else word


def caption_to_objects(caption: str, vocab: ChairVocab | None = None) -> CaptionObjects:
    """COCO objects mentioned in a caption (§2.2 steps 1-4); ``vocab`` defaults to the bundled table."""
    vocab = vocab if vocab is not None else default_vocab()
    tokens = tokenize(caption.lower())
    singular = [token if token in vocab.objects else singularize(token) for token in tokens]
    merged, starts = merge_double_words(singular)

    kept = list(zip(merged, starts))
    # "toilet seat is not chair": sentences like "the seat of the toilet" must not fire for chair.
    if "toilet" in merged and "seat" in merged:
        kept = [(word, start) for word, start in kept if word != "seat"]
    # (The reference filters ``idxs`` against the list *before* this removal, which shifts its indices after a
    # dropped "seat"; words and node words are unaffected.  Here positions stay aligned.)
    mentions = [(word, start) for word, start in kept if word in vocab.objects]
    return CaptionObjects(
        words=[word for word, _ in mentions],
        node_words=[vocab.inverse[word] for word, _ in mentions],
        idxs=[start for _, start in mentions],
        raw_words=merged,
    )


def inflect_version() -> str | None:
    try:
        return metadata.version("inflect")
    except metadata.PackageNotFoundError:
        return None
