"""The public-domain corpus shipped with hookkit: the King James Bible (KJV).

The text comes from Debian's ``bible-kjv-text`` 4.38 package, decoded with the ``bible`` program of the
``bible-kjv`` package; ``hookkit/evals/data/PROVENANCE.md`` ("KJV corpus") records the package hashes, the exact
conversion commands and the SHA-256 of the shipped text. It is the haystack of the needle-in-a-haystack eval
(eval-protocols.md §6; the Paul Graham essays of the original protocol are not redistributable) and a
long-context perplexity text.

Format of the shipped text (UTF-8, ASCII only, ``\\n`` line ends, 66 books in canonical order Genesis →
Revelation, 1,189 chapters, 31,102 verses)::

    Genesis 1
    <blank line>
    In the beginning God created the heaven and the earth.
    And the earth was without form, and void; ...
    ...
    <blank line>
    Genesis 2
    <blank line>
    Thus the heavens and the earth were finished, and all the host of them.

Each chapter is a heading line ``"{book} {chapter}"`` (full book names as ``bible(1)`` prints them, e.g.
``"1 Samuel"``, ``"Song of Solomon"``, ``"Psalms"``), a blank line, then one verse per line **without** verse
numbers; chapters are separated by one blank line and the file ends with a single ``\\n``. Verse texts are
byte-for-byte what ``bible -f`` prints (including two double spaces and one trailing space in the source data).
The format is readable prose for a haystack or a perplexity text (no reference numbers inside the running text)
and still lossless: verse *n* of a chapter is the *n*-th line after its heading, so
``"Genesis 1:1 In the beginning ..."`` references can be rebuilt with :func:`kjv_chapters`.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from hookkit.errors import ConfigError, InputError

__all__ = [
    "KJV_RESOURCE",
    "KJV_SHA256",
    "KJV_NUM_BOOKS",
    "KJV_NUM_CHAPTERS",
    "KJV_NUM_VERSES",
    "KJVChapter",
    "load_kjv_text",
    "LICENSES_RESOURCE",
    "LICENSES_SHA256",
    "load_licenses_text",
    "load_pydoc_text",
    "Haystack",
    "HAYSTACKS",
    "corpus_sha256",
    "kjv_chapters",
    "split_train_heldout",
    "CORPORA",
    "load_corpus",
]

#: File name of the gzip-compressed text inside ``hookkit/evals/data``.
KJV_RESOURCE = "kjv.txt.gz"
#: SHA-256 of the *uncompressed* UTF-8 text (see PROVENANCE.md).
KJV_SHA256 = "dbd05e2e52ecd8fa20be8da9c0eac0dbe2fb8744939cb37cc454686e241bdb02"
KJV_NUM_BOOKS = 66
KJV_NUM_CHAPTERS = 1189
KJV_NUM_VERSES = 31102

# A chapter heading line: "Genesis 1", "1 Samuel 3", "Song of Solomon 8".
_HEADING = re.compile(r"^((?:[1-3] )?[A-Z][A-Za-z]*(?: [a-zA-Z]+)*) (\d+)$", re.MULTILINE)


@dataclass(frozen=True)
class KJVChapter:
    """One chapter of the shipped text: ``verses[i]`` is verse ``i + 1``."""

    book: str
    chapter: int
    verses: tuple[str, ...]

    def references(self) -> list[str]:
        """The verses as ``"Genesis 1:1 In the beginning ..."`` lines."""
        return [f"{self.book} {self.chapter}:{i} {v}" for i, v in enumerate(self.verses, start=1)]


@lru_cache(maxsize=1)
def load_kjv_text() -> str:
    """Return the shipped KJV text (about 4.15 MB of ASCII), read from package data; no network.

    The result is cached; strings are immutable so sharing it is safe.
    """
    return _read_gzip_resource(KJV_RESOURCE)


def _read_gzip_resource(name: str) -> str:
    """The UTF-8 text of the gzip-compressed package-data file ``hookkit/evals/data/<name>``."""
    ref = resources.files("hookkit.evals").joinpath("data", name)
    with ref.open("rb") as fh:
        return gzip.decompress(fh.read()).decode("utf-8")


@lru_cache(maxsize=1)
def load_pydoc_text() -> str:
    """Python's own reference documentation topics (``pydoc_data.topics``, shipped with CPython under the PSF
    licence), joined in sorted topic order with blank lines: ~465k characters of technical prose and grammar,
    a haystack unlike the KJV. No network. The text follows the running Python's version, so results record its
    SHA-256 (``data_files``) and the Python version (environment info)."""
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions split pydoc_data out
        raise ImportError("the pydoc haystack needs Python's pydoc_data package (part of CPython; some Linux "
                          "distributions ship it separately)") from exc
    return "\n\n".join(topics[k] for k in sorted(topics))


#: File name of the gzip-compressed licence texts inside ``hookkit/evals/data``.
LICENSES_RESOURCE = "licenses.txt.gz"
#: SHA-256 of the *uncompressed* UTF-8 text (see PROVENANCE.md, "Licence texts").
LICENSES_SHA256 = "0679b1c8d169f0ea6ba90385a1b7df9653864e3556238f4b2264b59c59cfcc59"


@lru_cache(maxsize=1)
def load_licenses_text() -> str:
    """The 14 free-software licence texts of Debian's ``base-files`` (``/usr/share/common-licenses``: Apache-2.0,
    Artistic, BSD, CC0-1.0, GFDL-1.2/1.3, GPL-1/2/3, LGPL-2/2.1/3, MPL-1.1/2.0), each verbatim but for its
    leading and trailing blank lines, joined in that order by one blank line, one final newline: ~237k characters
    (~52k SmolLM2 tokens) of legal prose, a third kind of haystack beside scripture and technical documentation. Shipped as package data (each licence permits verbatim copies);
    no network."""
    return _read_gzip_resource(LICENSES_RESOURCE)


@dataclass(frozen=True)
class Haystack:
    """A built-in NIAH haystack: how to load it, and what a result records about it (``data_files``)."""

    load: Callable[[], str]
    description: str
    path: str  # the file (or module) the text comes from, recorded as ``data_files``' path
    version: Callable[[], str]  # where the text comes from and its version (a function: pydoc's is the running Python's)
    expected_sha256: str | None = None  # SHA-256 of the text, when it is fixed (shipped files); None for pydoc


def _python_docs_version() -> str:
    import platform

    return f"pydoc_data.topics of Python {platform.python_version()} (PSF licence)"


#: built-in NIAH haystacks by name: three texts that differ in kind (scripture, technical documentation, legal prose).
HAYSTACKS: dict[str, Haystack] = {
    "kjv": Haystack(
        load_kjv_text, "the King James Bible (Debian bible-kjv-text 4.38, public domain; shipped)",
        f"hookkit/evals/data/{KJV_RESOURCE}",
        lambda: "Debian bible-kjv-text 4.38 (public domain); see hookkit/evals/data/PROVENANCE.md", KJV_SHA256),
    "pydoc": Haystack(
        load_pydoc_text, "Python's reference documentation topics (pydoc_data, PSF licence; in CPython)",
        "pydoc_data.topics", _python_docs_version),
    "licenses": Haystack(
        load_licenses_text, "14 free-software licence texts (Debian base-files 12.4+deb12u11; shipped)",
        f"hookkit/evals/data/{LICENSES_RESOURCE}",
        lambda: ("Debian base-files 12.4+deb12u11, /usr/share/common-licenses (verbatim copies); "
                 "see hookkit/evals/data/PROVENANCE.md"), LICENSES_SHA256),
}


def corpus_sha256(text: str | None = None) -> str:
    """SHA-256 (hex) of the UTF-8 bytes of ``text``; of the shipped KJV text when ``text`` is None.

    Compare with :data:`KJV_SHA256` to check the shipped file; record it in result JSON (``data_files``).
    """
    if text is None:
        text = load_kjv_text()
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def kjv_chapters(text: str | None = None) -> list[KJVChapter]:
    """Parse the shipped format back into chapters (1,189 for the full text).

    Raises ``ValueError`` if ``text`` is not in the documented format.
    """
    if text is None:
        text = load_kjv_text()
    if not text.endswith("\n"):
        raise ValueError("KJV text must end with a newline")
    chapters: list[KJVChapter] = []
    for block in _chapter_blocks(text):
        heading, sep, body = block.partition("\n\n")
        m = _HEADING.fullmatch(heading)
        if m is None or not sep or not body:
            raise ValueError(f"not a chapter block: {block[:80]!r}")
        chapters.append(KJVChapter(m.group(1), int(m.group(2)), tuple(body.split("\n"))))
    return chapters


def _chapter_blocks(text: str) -> list[str]:
    """Split the text into ``heading\\n\\nverses`` blocks (blocks are separated by one blank line)."""
    parts = text[:-1].split("\n\n")
    if len(parts) % 2:
        raise ValueError("KJV text has an odd number of paragraphs; expected heading/verses pairs")
    return [parts[i] + "\n\n" + parts[i + 1] for i in range(0, len(parts), 2)]


def split_train_heldout(text: str, heldout_fraction: float = 0.05) -> tuple[str, str]:
    """Deterministic train / held-out split at a fixed character position, moved to a boundary.

    The cut starts at ``ceil(len(text) * (1 - heldout_fraction))`` and moves **forward** to the first chapter
    heading (a ``"{book} {chapter}"`` line at the start of the text or after a blank line) at or after that
    position; if there is none, to the first paragraph break (``\\n\\n``), then the first line break, else the cut
    stays where it is. Held-out text is the **tail** of the text, so ``train + heldout == text`` exactly and
    the split does not depend on any RNG. For the shipped KJV and the default 5 %, the held-out part starts at
    ``"Colossians 2"`` (205,802 characters, 4.96 %, Colossians 2 → Revelation 22) and the training part
    (Genesis 1 → Colossians 1) ends with a blank line.

    Args:
        text: the corpus (e.g. :func:`load_kjv_text`).
        heldout_fraction: fraction of characters (before boundary adjustment) to hold out, in [0, 1].

    Returns:
        ``(train, heldout)``.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    if heldout_fraction == 0.0 or not text:
        return text, ""
    cut = math.ceil(len(text) * (1.0 - heldout_fraction))
    if cut <= 0:
        return "", text
    pos = _next_boundary(text, cut)
    return text[:pos], text[pos:]


def _next_boundary(text: str, cut: int) -> int:
    """Position of the first chapter heading / paragraph / line start at or after ``cut`` (see caller)."""
    for m in _HEADING.finditer(text, cut):
        start = m.start()
        if start == 0 or text.startswith("\n\n", start - 2):
            return start
    para = text.find("\n\n", max(cut - 2, 0))
    if para != -1:
        return para + 2
    line = text.find("\n", max(cut - 1, 0))
    if line != -1:
        return line + 1
    return cut


# ------------------------------------------------------------------------------------------------ training text
#: built-in data sources for ``hookkit tune`` (shipped with hookkit, public domain; see data/PROVENANCE.md)
CORPORA = {
    "kjv": "the King James Bible as plain prose (chapter headings, one verse per line)",
    "kjv-refs": "the King James Bible as reference lines: 'Genesis 1:1 In the beginning ...'",
}


def load_corpus(sources: list[str], heldout_fraction: float = 0.05) -> tuple[str, str]:
    """Train and held-out text from files and/or built-in corpora (``kjv``, ``kjv-refs``); no network.

    Files are read as UTF-8 and joined with blank lines; the held-out part is the tail of the whole
    (``split_train_heldout``). ``kjv-refs`` uses the same chapter cut as ``kjv`` (held-out from Colossians 2 on at 5 %).
    """
    if not sources:
        raise ConfigError("--data", "no data given", ["a text file", *CORPORA])
    if len(sources) == 1 and sources[0] in CORPORA:
        text = load_kjv_text()
        train, heldout = split_train_heldout(text, heldout_fraction)
        if sources[0] == "kjv":
            return train, heldout
        n_train = len(kjv_chapters(train)) if train else 0
        chapters = kjv_chapters(text)
        fmt = ["\n".join(c.references()) for c in chapters]
        return "\n".join(fmt[:n_train]) + "\n", "\n".join(fmt[n_train:]) + "\n"
    parts = []
    for src in sources:
        if src in CORPORA:
            raise ConfigError("--data", f"built-in corpus {src!r} cannot be mixed with files")
        path = Path(src)
        if not path.is_file():
            raise InputError(f"--data: {path} does not exist or is not a file (built-in corpora: "
                             f"{', '.join(CORPORA)})")
        try:
            parts.append(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise InputError(f"--data: {path} is not UTF-8 text: {exc}") from exc
    text = "\n\n".join(parts)
    train, heldout = split_train_heldout(text, heldout_fraction)
    if not heldout.strip():
        raise InputError("--data: the held-out part of the text is empty; give more text or a larger "
                         "--heldout-fraction")
    return train, heldout
