"""Tests for hookkit.evals.chair (eval-protocols.md §2). Offline: small COCO-style fixtures, no NLTK."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

import pytest

from hookkit.evals import chair
from hookkit.evals.chair import (
    DEFAULT_SYNONYMS_PATH,
    DOUBLE_WORDS,
    ChairScorer,
    ChairVocab,
    caption_to_objects,
    default_vocab,
    load_captions,
    sample_image_ids,
    singularize,
    tokenize,
)

COCO_80 = [
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
]  # fmt: skip


# ------------------------------------------------------------------------------------------------------------
# Vocabulary and provenance (§2.1)
# ------------------------------------------------------------------------------------------------------------


def test_vocab_has_the_80_coco_categories_in_order() -> None:
    vocab = default_vocab()
    assert list(vocab.node_words) == COCO_80
    assert vocab.inverse["man"] == "person"
    assert vocab.inverse["desk"] == "dining table"
    assert vocab.inverse["puppy"] == "dog"
    assert vocab.inverse["bow"] == "tie"
    assert len(vocab.objects) == 403


def test_vocab_keeps_reference_whitespace_quirks() -> None:
    vocab = default_vocab()
    assert " motor bike" in vocab.objects and "motor bike" not in vocab.objects
    assert " cheesecake" in vocab.objects and "cheesecake" not in vocab.objects
    assert "iPhone" in vocab.objects
    assert "bison" in vocab.objects  # trailing space of the cow line is stripped
    repaired = ChairVocab.from_file(repair_whitespace=True)
    assert "motor bike" in repaired.objects and repaired.inverse["cheesecake"] == "cake"
    assert repaired.sha256 == vocab.sha256  # same file, different parse


def test_synonym_file_matches_provenance() -> None:
    data = DEFAULT_SYNONYMS_PATH.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    provenance = (DEFAULT_SYNONYMS_PATH.parent / "PROVENANCE.md").read_text(encoding="utf-8")
    assert "## CHAIR synonyms" in provenance
    assert digest in provenance
    assert default_vocab().sha256 == digest
    assert data.count(b"\n") == 80 and data.endswith(b"toothbrush\n")


def test_double_word_rules() -> None:
    assert DOUBLE_WORDS["hot dog"] == "hot dog"
    assert DOUBLE_WORDS["teddy bear"] == "teddy bear"
    assert DOUBLE_WORDS["motor bike"] == "motor bike"
    assert DOUBLE_WORDS["baby elephant"] == "elephant"
    assert DOUBLE_WORDS["adult cub"] == "cub"
    assert DOUBLE_WORDS["passenger jet"] == "jet"
    assert DOUBLE_WORDS["passenger train"] == "train"
    assert DOUBLE_WORDS["bow tie"] == "tie"  # overrides the identity entry
    assert DOUBLE_WORDS["toilet seat"] == "toilet"
    assert DOUBLE_WORDS["wine glas"] == "wine glass"
    assert DOUBLE_WORDS["train track"] == "train track"
    assert "baby person" not in DOUBLE_WORDS


# ------------------------------------------------------------------------------------------------------------
# Tokenizer and singulariser (§2.2 steps 1-2)
# ------------------------------------------------------------------------------------------------------------


def test_tokenize() -> None:
    assert tokenize("a dog's bowl, isn't it... 3.5 t-shirts!") == [
        "a", "dog", "'s", "bowl", ",", "is", "n't", "it", "...", "3.5", "t-shirts", "!",
    ]  # fmt: skip
    assert tokenize("The kids' bikes (two).") == ["The", "kids", "'", "bikes", "(", "two", ")", "."]
    assert tokenize("can't   won't") == ["ca", "n't", "wo", "n't"]
    assert tokenize("") == []


@pytest.mark.parametrize(
    ("word", "expected"),
    [
        ("dogs", "dog"),
        ("puppies", "puppy"),
        ("mice", "mouse"),
        ("knives", "knife"),
        ("women", "woman"),
        ("buses", "bus"),
        ("glasses", "glass"),
        ("benches", "bench"),
        ("taxis", "taxi"),
        # words inflect mangles ("bu", "tenni", "i", "thi", "cactu", "len", "") must come back unchanged
        ("bus", "bus"),
        ("tennis", "tennis"),
        ("is", "is"),
        ("this", "this"),
        ("cactus", "cactus"),
        ("lens", "lens"),
        ("s", "s"),
        ("glass", "glass"),
        # non-words are untouched
        ("'s", "'s"),
        ("3.5", "3.5"),
        ("t-shirts", "t-shirts"),
        ("dog", "dog"),
    ],
)
def test_singularize(word: str, expected: str) -> None:
    assert singularize(word) == expected


# ------------------------------------------------------------------------------------------------------------
# caption_to_objects (§2.2)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("caption", "words", "node_words"),
    [
        ("A man on a bench.", ["man", "bench"], ["person", "bench"]),
        ("Two women and three children.", ["woman", "children"], ["person", "person"]),
        ("People everywhere", ["people"], ["person"]),  # "people" is itself a synonym, kept as is
        ("Dogs and puppies", ["dog", "puppy"], ["dog", "dog"]),
        ("skis and scissors", ["skis", "scissors"], ["skis", "scissors"]),  # vocabulary words not singularised
        ("two buses and a bus", ["bus", "bus"], ["bus", "bus"]),
        ("Hot dogs and teddy bears.", ["hot dog", "teddy bear"], ["hot dog", "teddy bear"]),
        ("wine glasses", ["wine glass"], ["wine glass"]),
        ("tennis rackets", ["tennis racket"], ["tennis racket"]),
        ("a baby elephant", ["elephant"], ["elephant"]),  # "baby" does not fire for person
        ("an adult giraffe", ["giraffe"], ["giraffe"]),
        ("a passenger train", ["train"], ["train"]),  # "passenger" does not fire for person
        ("a man in a bow tie", ["man", "tie"], ["person", "tie"]),
        ("a toilet seat", ["toilet"], ["toilet"]),
        ("The seat of the toilet is up.", ["toilet"], ["toilet"]),  # toilet + seat: seat dropped
        ("a chair with a seat cushion", ["chair", "seat"], ["chair", "chair"]),  # no toilet: seat is a chair
        ("the dining table", ["table"], ["dining table"]),
        ("train tracks", [], []),  # "train track" is merged and is not an object
        ("a motorbike", ["motorbike"], ["motorcycle"]),
        ("a motor bike", [], []),  # reference quirk: merged "motor bike" is not in the vocabulary
        ("a slice of cheesecake", [], []),  # reference quirk: only " cheesecake" is listed
        ("the kids' bikes", ["kid", "bike"], ["person", "bicycle"]),
        ("a dog's bowl", ["dog", "bowl"], ["dog", "bowl"]),
        ("A cloudy sky over the ocean.", [], []),
    ],
)
def test_caption_to_objects(caption: str, words: list[str], node_words: list[str]) -> None:
    result = caption_to_objects(caption)
    assert result.words == words
    assert result.node_words == node_words


def test_caption_to_objects_positions_and_raw_words() -> None:
    result = caption_to_objects("A teddy bear sits on a chair next to a baby elephant.")
    assert result.raw_words == ["a", "teddy bear", "sit", "on", "a", "chair", "next", "to", "a", "elephant", "."]
    assert result.idxs == [1, 6, 10]  # token positions of "teddy", "chair", "baby"
    seat = caption_to_objects("The seat of the toilet is up.")
    assert seat.raw_words == ["the", "seat", "of", "the", "toilet", "is", "up", "."]  # Len counts "seat"
    assert seat.idxs == [4]


def test_repaired_vocab_detects_motor_bike() -> None:
    vocab = ChairVocab.from_file(repair_whitespace=True)
    assert caption_to_objects("a motor bike", vocab).node_words == ["motorcycle"]
    assert caption_to_objects("a slice of cheesecake", vocab).node_words == ["cake"]


# ------------------------------------------------------------------------------------------------------------
# ChairScorer (§2.1, §2.3)
# ------------------------------------------------------------------------------------------------------------

CATS = {1: "person", 3: "car", 18: "dog", 22: "elephant", 58: "hot dog", 62: "chair", 70: "toilet", 88: "teddy bear"}


def _instances(objects: dict[int, list[str]]) -> dict:
    name_to_id = {name: cid for cid, name in CATS.items()}
    anns = [
        {"id": 100 * image_id + k, "image_id": image_id, "category_id": name_to_id[name]}
        for image_id, names in objects.items()
        for k, name in enumerate(names)
    ]
    return {
        "images": [{"id": i} for i in objects],
        "annotations": anns,
        "categories": [{"id": cid, "name": name} for cid, name in CATS.items()],
    }


def _captions(captions: dict[int, list[str]]) -> dict:
    return {
        "images": [{"id": i} for i in captions],
        "annotations": [
            {"id": 1000 * image_id + k, "image_id": image_id, "caption": text}
            for image_id, texts in captions.items()
            for k, text in enumerate(texts)
        ],
    }


# image 5 is listed but has neither instance annotations nor reference captions: its GT is the empty set
INSTANCES = _instances(
    {1: ["person", "dog", "chair", "person"], 2: ["toilet"], 3: ["teddy bear", "chair"], 4: [], 5: []}
)
REF_CAPTIONS = _captions(
    {
        1: ["A man walking his dog down the street."],
        2: ["A small bathroom with a white toilet."],
        3: ["Two teddy bears sitting on a chair."],
        4: ["A hot dog on a plate."],  # image 4 has no instance annotation: GT comes from its caption only
    }
)
GENERATED = [
    {"image_id": 1, "caption": "Two people and their dogs are eating hot dogs near a car."},
    {"image_id": 2, "caption": "The seat of the toilet is up."},
    {"image_id": 3, "caption": "A teddy bear sits on a chair next to a baby elephant."},
    {"image_id": 4, "caption": "A hot dog with mustard."},
]


def test_ground_truth_is_instances_union_captions() -> None:
    scorer = ChairScorer(INSTANCES, REF_CAPTIONS)
    assert scorer.gt_table() == {
        1: ["chair", "dog", "person"],
        2: ["toilet"],
        3: ["chair", "teddy bear"],
        4: ["hot dog"],
        5: [],
    }
    # a caption can add an object that has no instance annotation
    extra = ChairScorer(INSTANCES, _captions({1: ["A man and his cat."]}))
    assert extra.gt_objects[1] == {"person", "dog", "chair", "cat"}


def test_score_hand_computed() -> None:
    # caption 1 (GT person, dog, chair): mentions people->person, dog, hot dog, car -> hallucinated: hot dog, car
    #   merged tokens: two people and their dog are eating "hot dog" near a car .  -> 12
    # caption 2 (GT toilet): "seat" dropped because "toilet" occurs -> toilet; 0 hallucinated; 8 tokens
    # caption 3 (GT teddy bear, chair): teddy bear, chair, elephant ("baby elephant") -> elephant; 11 tokens
    # caption 4 (GT hot dog from the reference caption): hot dog; 0 hallucinated; 5 tokens
    # CHAIR_s = 100 * 2/4 = 50;  CHAIR_i = 100 * (2+0+1+0)/(4+1+3+1) = 100 * 3/9
    # recall = 100 * (2+1+2+1)/(3+1+2+1) = 100 * 6/7;  avg_len = (12+8+11+5)/4 = 9.0
    result = ChairScorer(INSTANCES, REF_CAPTIONS).score(GENERATED)
    assert result.metrics["CHAIR_s"] == pytest.approx(50.0)
    assert result.metrics["CHAIR_i"] == pytest.approx(100 * 3 / 9)
    assert result.metrics["recall"] == pytest.approx(100 * 6 / 7)
    assert result.metrics["avg_len"] == pytest.approx(9.0)
    assert result.counts == {
        "captions": 4,
        "hallucinated_captions": 2,
        "mentions": 9,
        "hallucinated_mentions": 3,
        "recalled_objects": 6,
        "gt_objects": 7,
        "tokens": 36,
    }
    first = result.samples[0]
    assert first["mentioned_words"] == ["people", "dog", "hot dog", "car"]
    assert first["mentioned_node_words"] == ["person", "dog", "hot dog", "car"]
    assert first["hallucinated_words"] == [["hot dog", "hot dog"], ["car", "car"]]
    assert first["hallucination_idxs"] == [7, 11]
    assert first["gt_objects"] == ["chair", "dog", "person"]
    assert first["metrics"] == {"hallucinated": True, "CHAIR_i": 50.0, "recall": pytest.approx(200 / 3), "len": 12}
    assert result.samples[1]["hallucinated_words"] == []
    assert result.samples[2]["hallucinated_words"] == [["elephant", "elephant"]]
    assert result.config["singularizer"] == "inflect"
    assert result.config["tokenizer"] == chair.TOKENIZER
    assert result.config["synonyms"]["sha256"] == default_vocab().sha256
    json.dumps(result.to_dict())  # the whole result is JSON-serialisable


def test_chair_i_counts_multiplicity_and_synonyms_hallucinate_once_per_mention() -> None:
    scorer = ChairScorer(INSTANCES, REF_CAPTIONS)
    # GT of image 1: person, dog, chair.  Mentions: dog, puppy(dog), cat, kitten(cat) -> 2 of 4 hallucinated
    result = scorer.score([{"image_id": 1, "caption": "A dog, a puppy, a cat and a kitten."}])
    assert result.counts["mentions"] == 4
    assert result.counts["hallucinated_mentions"] == 2
    assert result.metrics["CHAIR_i"] == pytest.approx(50.0)
    assert result.metrics["CHAIR_s"] == pytest.approx(100.0)
    assert result.metrics["recall"] == pytest.approx(100 * 1 / 3)  # only "dog" of {person, dog, chair}


def test_score_zero_division_and_missing_ids() -> None:
    scorer = ChairScorer(INSTANCES, REF_CAPTIONS)
    empty = scorer.score([])
    assert empty.metrics == {"CHAIR_s": 0.0, "CHAIR_i": 0.0, "recall": 0.0, "avg_len": 0.0}
    no_objects = scorer.score([{"image_id": 2, "caption": "A clean room."}])
    assert no_objects.metrics["CHAIR_i"] == 0.0 and no_objects.metrics["CHAIR_s"] == 0.0
    with pytest.raises(ValueError, match="no ground truth for image id"):
        scorer.score([{"image_id": 99, "caption": "A dog."}])
    listed = scorer.score([{"image_id": 5, "caption": "A dog."}])  # known image with empty GT: no error
    assert listed.metrics["CHAIR_s"] == 100.0 and listed.samples[0]["hallucinated_words"] == [["dog", "dog"]]
    lenient = scorer.score([{"image_id": 99, "caption": "A dog."}], missing="empty")
    assert lenient.metrics["CHAIR_s"] == 100.0 and lenient.samples[0]["gt_objects"] == []
    with pytest.raises(ValueError, match="captions\\[0\\]"):
        scorer.score([{"image": 1, "caption": "x"}])


def test_unknown_category_is_an_error() -> None:
    bad = _instances({1: ["person"]})
    bad["categories"].append({"id": 500, "name": "unicorn"})
    bad["annotations"].append({"id": 9, "image_id": 1, "category_id": 500})
    with pytest.raises(ValueError, match="unicorn"):
        ChairScorer(bad, _captions({}))


def test_scorer_from_paths_merged_sources_and_cache(tmp_path: Path) -> None:
    # split the fixture into "train" and "val" files, as COCO ships them, and merge them
    train_inst = _instances({1: ["person", "dog", "chair"], 2: ["toilet"]})
    val_inst = _instances({3: ["teddy bear", "chair"], 4: [], 5: []})
    paths = []
    for name, data in [("train_inst.json", train_inst), ("val_inst.json", val_inst), ("caps.json", REF_CAPTIONS)]:
        (tmp_path / name).write_text(json.dumps(data))
        paths.append(tmp_path / name)
    scorer = ChairScorer([paths[0], paths[1]], str(paths[2]))
    reference = ChairScorer(INSTANCES, REF_CAPTIONS)
    assert scorer.gt_table() == reference.gt_table()
    cached = ChairScorer.from_gt_objects(json.loads(json.dumps(reference.gt_table())))
    assert cached.score(GENERATED).metrics == reference.score(GENERATED).metrics


def test_load_captions(tmp_path: Path) -> None:
    jsonl = tmp_path / "caps.jsonl"
    jsonl.write_text('{"image_id": 1, "caption": "A dog."}\n\n{"image_id": 2, "caption": "A cat."}\n')
    assert load_captions(jsonl) == [{"image_id": 1, "caption": "A dog."}, {"image_id": 2, "caption": "A cat."}]
    as_json = tmp_path / "caps.json"
    as_json.write_text(json.dumps([{"id": 3, "text": "A cow."}]))
    assert load_captions(as_json, image_id_key="id", caption_key="text") == [{"image_id": 3, "caption": "A cow."}]
    with pytest.raises(ValueError, match="record 0"):
        load_captions(as_json)


# ------------------------------------------------------------------------------------------------------------
# Image sampling (§2.4)
# ------------------------------------------------------------------------------------------------------------


def test_sample_image_ids_matches_global_random_and_ignores_order() -> None:
    ids = [391895, 522418, 184613, 318219, 554625, 397133, 37777, 252219, 87038, 174482]
    state = random.getstate()
    try:
        random.seed(7)
        expected = random.sample(sorted(ids), 4)
    finally:
        random.setstate(state)
    before = random.getstate()
    assert sample_image_ids(ids, 4, seed=7) == expected
    assert sample_image_ids(reversed(ids), 4, seed=7) == expected  # file order does not matter
    assert random.getstate() == before  # global RNG untouched
    assert sample_image_ids(ids, 4, seed=8) != expected
    assert sorted(sample_image_ids(ids, 10, seed=0)) == sorted(ids)


def test_sample_image_ids_errors() -> None:
    with pytest.raises(ValueError, match="duplicates"):
        sample_image_ids([1, 2, 2], 2, seed=0)
    with pytest.raises(ValueError, match="n=4"):
        sample_image_ids([1, 2, 3], 4, seed=0)
