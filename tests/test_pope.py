"""Tests for hookkit.evals.pope (eval-protocols.md §1). Offline, no model, no images."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from hookkit.evals import pope
from hookkit.evals.files import file_sha256
from hookkit.evals.pope import (
    POPE_PARSERS,
    PopeDataError,
    PopeImage,
    PopeQuestion,
    build_pope_prompt,
    build_pope_split,
    build_pope_splits,
    classify_pope_version,
    coco_objects_per_image,
    describe_pope_file,
    get_pope_parser,
    get_prompt_preset,
    iter_pope_questions,
    load_pope_questions,
    make_pope_question_text,
    parse_pope_answer,
    pope_metrics,
    pope_summary,
    read_pope_questions,
    write_pope_jsonl,
)
from hookkit.evals.pope import parsers as pope_parsers

# ------------------------------------------------------------------------------------------------------------
# Answer parsers (§1.4)
# ------------------------------------------------------------------------------------------------------------

# answer -> expected output of (pope_official, opera, exact, vlmevalkit, vcd_substring[label=yes],
# vcd_substring[label=no]); every row is worked out by hand from the rules quoted in the parser docstrings.
PARSER_TABLE = [
    # "Yes." -> official keeps "Yes"; opera strips "."; exact sees "yes." (not exact); vlmeval strips the period.
    ("Yes.", "yes", "yes", "unknown", "yes", "yes", "yes"),
    ("No, there is not", "no", "no", "unknown", "no", "no", "no"),
    ("no", "no", "no", "no", "no", "no", "no"),
    # official only knows "No", "not", "no": upper-case NO counts as yes there.
    ("NO", "yes", "no", "no", "no", "no", "no"),
    # opera: "don't" ends in n't; vcd: "know" contains "no".
    ("I don't know", "yes", "no", "unknown", "unknown", "no", "no"),
    # empty: yes for the never-unknown parsers; vcd is asymmetric (no "yes" -> no; no "no" -> yes).
    ("", "yes", "yes", "unknown", "unknown", "no", "yes"),
    ("Yes, there is a dog.", "yes", "yes", "unknown", "yes", "yes", "yes"),
    # official does not look at n't; "there isn't" contains no "no" substring.
    ("There isn't", "yes", "no", "unknown", "unknown", "no", "yes"),
    ("not sure", "no", "no", "unknown", "unknown", "no", "no"),
    ("asdfgh", "yes", "yes", "unknown", "unknown", "no", "yes"),
    # case-sensitive: "Not" is not a negative word for official/opera.
    ("Not really.", "yes", "yes", "unknown", "unknown", "no", "no"),
    (" Yes ", "yes", "yes", "yes", "yes", "yes", "yes"),
    ("The answer is no.", "no", "no", "unknown", "no", "no", "no"),
    # both words present: vlmevalkit cannot decide; vcd calls either label correct.
    ("Yes and no", "no", "no", "unknown", "unknown", "yes", "no"),
    # vlmevalkit turns "/" into a space when it is not next to a space.
    ("yes/no", "yes", "yes", "unknown", "unknown", "yes", "no"),
    # official keeps only the first sentence.
    ("Yes. No.", "yes", "no", "unknown", "unknown", "yes", "no"),
]


@pytest.mark.parametrize(("answer", "official", "opera", "exact", "vlmeval", "vcd_yes", "vcd_no"), PARSER_TABLE)
def test_parsers_table(
    answer: str, official: str, opera: str, exact: str, vlmeval: str, vcd_yes: str, vcd_no: str
) -> None:
    assert parse_pope_answer(answer, "pope_official") == official
    assert parse_pope_answer(answer, "opera") == opera
    assert parse_pope_answer(answer, "exact") == exact
    assert parse_pope_answer(answer, "vlmevalkit") == vlmeval
    assert parse_pope_answer(answer, "vcd_substring", label="yes") == vcd_yes
    assert parse_pope_answer(answer, "vcd_substring", label="no") == vcd_no


def test_default_parser_is_official() -> None:
    assert pope.DEFAULT_POPE_PARSER == "pope_official"
    assert parse_pope_answer("NO") == "yes"  # the official quirk, so the default really is pope_official


def test_parser_registry_and_errors() -> None:
    assert set(POPE_PARSERS) == {"pope_official", "opera", "vcd_substring", "exact", "vlmevalkit"}
    assert [pid for pid, p in POPE_PARSERS.items() if p.needs_label] == ["vcd_substring"]
    with pytest.raises(KeyError) as info:
        get_pope_parser("llava")
    message = str(info.value)
    assert "'llava'" in message
    for pid in POPE_PARSERS:
        assert pid in message
    with pytest.raises(ValueError, match="label"):
        parse_pope_answer("yes", "vcd_substring")
    with pytest.raises(ValueError, match="label must be"):
        parse_pope_answer("yes", "vcd_substring", label="maybe")


def test_vlmevalkit_period_quirk() -> None:
    # Upstream passes re.UNICODE (32) as `count`: only the first 32 periods are stripped. 33 periods then "no":
    # the 33rd period survives and glues to "no" ("." + "no" -> ".no"), so "no" is not a word -> unknown.
    assert parse_pope_answer("." * 33 + "no", "vlmevalkit") == "unknown"
    assert parse_pope_answer("." * 32 + "no", "vlmevalkit") == "no"
    # a period followed by a digit is kept
    assert pope_parsers._vlmeval_process_punctuation("no 3.5") == "no 3.5"


# ------------------------------------------------------------------------------------------------------------
# Prompt presets (§1.3)
# ------------------------------------------------------------------------------------------------------------


def test_prompt_presets_are_byte_exact() -> None:
    q = "Is there a dog in the image?"
    assert build_pope_prompt(q, "llava15") == q + "\nAnswer the question using a single word or phrase."
    assert build_pope_prompt(q, "plain") == q
    assert build_pope_prompt(q, "vcd") == "Is there a dog in the image? Please answer this question with one word."
    assert build_pope_prompt(q) == build_pope_prompt(q, "llava15")


def test_unknown_prompt_preset_lists_allowed() -> None:
    with pytest.raises(KeyError) as info:
        get_prompt_preset("llava")
    assert "llava15" in str(info.value) and "plain" in str(info.value) and "vcd" in str(info.value)


# ------------------------------------------------------------------------------------------------------------
# Metrics (§1.5)
# ------------------------------------------------------------------------------------------------------------

LABELS = ["yes", "yes", "yes", "yes", "no", "no", "no", "no", "yes", "no"]
PREDS = ["yes", "yes", "no", "unknown", "no", "yes", "no", "unknown", "yes", "no"]


def test_metrics_hand_computed_unknown_as_no() -> None:
    # Pairs (label, pred) with unknown scored as "no":
    #  1 (y,y) TP  2 (y,y) TP  3 (y,n) FN  4 (y,unk) FN  5 (n,n) TN
    #  6 (n,y) FP  7 (n,n) TN  8 (n,unk) TN  9 (y,y) TP  10 (n,n) TN
    # TP=3 FP=1 TN=4 FN=2, n=10
    # accuracy = (3+4)/10 = 0.7; precision = 3/4 = 0.75; recall = 3/5 = 0.6
    # f1 = 2*0.75*0.6/(0.75+0.6) = 0.9/1.35 = 2/3
    # yes_ratio = predicted yes (items 1,2,6,9) / 10 = 0.4; unknown_rate = 2/10 = 0.2
    m = pope_metrics(PREDS, LABELS)
    assert m["confusion"] == {
        "TP": 3,
        "FP": 1,
        "TN": 4,
        "FN": 2,
        "unknown": 2,
        "unknown_label_yes": 1,
        "unknown_label_no": 1,
    }
    assert m["n"] == 10
    assert m["accuracy"] == pytest.approx(0.7)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.6)
    assert m["f1"] == pytest.approx(2 / 3)
    assert m["yes_ratio"] == pytest.approx(0.4)
    assert m["unknown_rate"] == pytest.approx(0.2)


def test_metrics_hand_computed_lmms_eval_policy() -> None:
    # Unknowns (items 4 and 8) leave the confusion matrix but count as wrong in accuracy:
    # TP=3 FP=1 TN=3 FN=1; accuracy = (3+3)/10 = 0.6; precision = 3/4; recall = 3/4; f1 = 0.75.
    # yes_ratio is still from predictions (0.4), not from ground truth (which would be 0.5).
    m = pope_metrics(PREDS, LABELS, unknown_policy="lmms_eval")
    c = m["confusion"]
    assert (c["TP"], c["FP"], c["TN"], c["FN"], c["unknown"]) == (3, 1, 3, 1, 2)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["precision"] == pytest.approx(0.75)
    assert m["recall"] == pytest.approx(0.75)
    assert m["f1"] == pytest.approx(0.75)
    assert m["yes_ratio"] == pytest.approx(0.4)


def test_metrics_zero_division() -> None:
    empty = pope_metrics([], [])
    assert empty["n"] == 0
    assert all(empty[k] == 0.0 for k in ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown_rate"))
    # never predicts yes: precision 0/0 -> 0.0, recall 0/2 -> 0.0, f1 0/0 -> 0.0, accuracy 1/3
    m = pope_metrics(["no", "no", "no"], ["yes", "yes", "no"])
    assert (m["precision"], m["recall"], m["f1"]) == (0.0, 0.0, 0.0)
    assert m["accuracy"] == pytest.approx(1 / 3)


def test_metrics_validation() -> None:
    with pytest.raises(ValueError, match="length"):
        pope_metrics(["yes"], ["yes", "no"])
    with pytest.raises(ValueError, match=r"preds\[0\]"):
        pope_metrics(["Yes"], ["yes"])
    with pytest.raises(ValueError, match=r"labels\[1\]"):
        pope_metrics(["yes", "no"], ["yes", "maybe"])


def test_summary_mean_over_splits() -> None:
    per_split = {
        "random": pope_metrics(["yes", "no"], ["yes", "no"]),  # f1 1.0, acc 1.0
        "popular": pope_metrics(["yes", "yes"], ["yes", "no"]),  # P 0.5 R 1 -> f1 2/3, acc 0.5
        "adversarial": pope_metrics(["no", "no"], ["yes", "no"]),  # f1 0.0, acc 0.5
    }
    summary = pope_summary(per_split)
    assert summary["splits"] == ["random", "popular", "adversarial"]
    assert summary["n"] == 6
    assert summary["mean"]["f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert summary["mean"]["accuracy"] == pytest.approx((1.0 + 0.5 + 0.5) / 3)
    assert summary["mean"]["yes_ratio"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert summary["per_split"]["popular"]["confusion"]["FP"] == 1
    assert pope_summary({})["mean"]["f1"] == 0.0


# ------------------------------------------------------------------------------------------------------------
# Question files (§1.1 step 6) and provenance (§1.2)
# ------------------------------------------------------------------------------------------------------------

GOOD = [
    {
        "question_id": 1,
        "image": "COCO_val2014_000000000001.jpg",
        "text": "Is there a dog in the image?",
        "label": "yes",
    },
    {"question_id": 2, "image": "COCO_val2014_000000000001.jpg", "text": "Is there a cat in the image?", "label": "no"},
]


def _write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def test_load_good_file_roundtrip(tmp_path: Path) -> None:
    path = _write_lines(tmp_path / "coco_pope_random.json", [json.dumps(r) for r in GOOD] + [""])
    questions = load_pope_questions(path)
    assert [q.question_id for q in questions] == [1, 2]
    assert questions[0] == PopeQuestion(1, GOOD[0]["image"], GOOD[0]["text"], "yes")
    assert questions[1].line_no == 2
    assert [q.to_record() for q in questions] == GOOD
    out = tmp_path / "out.jsonl"
    digest = write_pope_jsonl(questions, out)
    assert out.read_text() == "".join(json.dumps(r) + "\n" for r in GOOD)
    assert digest == file_sha256(out)


def test_loader_accepts_image_id_and_extra_keys(tmp_path: Path) -> None:
    record = {"question_id": 0, "image": "x.jpg", "image_id": 548882, "text": "Is there an oven?", "label": "no"}
    record["category"] = "adversarial"
    path = _write_lines(tmp_path / "q.jsonl", [json.dumps(record)])
    (q,) = load_pope_questions(path)
    assert q.image_id == 548882
    assert q.extra == {"category": "adversarial"}
    assert q.to_record() == record
    assert list(q.to_record()) == ["question_id", "image", "image_id", "text", "label", "category"]


BAD_LINES = [
    ("{not json", "invalid JSON"),
    ('["a", "list"]', "expected a JSON object"),
    ('{"question_id": 3, "image": "a.jpg", "text": "Is there a dog?"}', "missing required key(s) 'label'"),
    ('{"question_id": "3", "image": "a.jpg", "text": "t", "label": "yes"}', "'question_id' must be an integer"),
    ('{"question_id": true, "image": "a.jpg", "text": "t", "label": "yes"}', "'question_id' must be an integer"),
    ('{"question_id": 3, "image": "a.jpg", "text": "t", "label": "Yes"}', "'label' must be 'yes' or 'no'"),
    ('{"question_id": 3, "image": "", "text": "t", "label": "no"}', "'image' must be a non-empty string"),
    ('{"question_id": 3, "image": "a.jpg", "text": "t", "label": "no", "image_id": "7"}', "'image_id' must be"),
    ('{"question_id": 1, "image": "a.jpg", "text": "t", "label": "no"}', "duplicate question_id 1"),
]


@pytest.mark.parametrize(("bad", "reason"), BAD_LINES)
def test_malformed_line_error_names_file_and_line(tmp_path: Path, bad: str, reason: str) -> None:
    path = _write_lines(tmp_path / "pope.json", [json.dumps(GOOD[0]), bad, json.dumps(GOOD[1])])
    with pytest.raises(PopeDataError) as info:
        load_pope_questions(path)
    err = info.value
    assert err.line_no == 2
    assert err.path == str(path)
    assert str(err).startswith(f"{path}:2: ")
    assert reason in str(err)


def test_collect_mode_skips_bad_lines_and_keeps_others(tmp_path: Path) -> None:
    lines = [json.dumps(GOOD[0]), "{broken", "", json.dumps(GOOD[1]), '{"question_id": 9}']
    path = _write_lines(tmp_path / "pope.json", lines)
    items = list(iter_pope_questions(path, on_error="collect"))
    assert [type(i).__name__ for i in items] == ["PopeQuestion", "PopeDataError", "PopeQuestion", "PopeDataError"]
    result = read_pope_questions(path)
    assert not result.ok
    assert [q.question_id for q in result.questions] == [1, 2]
    assert [e.line_no for e in result.errors] == [2, 5]  # blank line 3 is skipped, not an error
    assert "missing required key(s)" in result.errors[1].reason
    with pytest.raises(ValueError, match="on_error"):
        list(iter_pope_questions(path, on_error="skip"))  # type: ignore[arg-type]


def test_invalid_utf8_line(tmp_path: Path) -> None:
    path = tmp_path / "pope.json"
    path.write_bytes(json.dumps(GOOD[0]).encode() + b"\n\xff\xfe\n")
    result = read_pope_questions(path)
    assert len(result.questions) == 1
    assert result.errors[0].line_no == 2 and "UTF-8" in result.errors[0].reason


def test_version_rule() -> None:
    assert classify_pope_version(2910, 144) == "aoidragon-2910-typo"
    assert classify_pope_version(3000, 0) == "aoidragon-3000-fixed"
    assert classify_pope_version(3000, 58) == "aoidragon-3000-typo"
    assert classify_pope_version(2910, 0) == "unknown"
    assert classify_pope_version(2999, 0) == "unknown"


def _synthetic_pope_file(path: Path, lines: int, typos: int, image_id: bool = False) -> Path:
    records = []
    for i in range(lines):
        where = "imange" if i < typos else "image"
        record = {"question_id": i, "image": f"COCO_val2014_{i:012d}.jpg"}
        if image_id:
            record["image_id"] = i
        record.update({"text": f"Is there a dog in the {where}?", "label": "yes" if i % 2 == 0 else "no"})
        records.append(record)
    write_pope_jsonl(records, path)
    return path


def test_describe_pope_file_old_random(tmp_path: Path) -> None:
    path = _synthetic_pope_file(tmp_path / "coco_pope_random.json", 2910, 144)
    info = describe_pope_file(path)
    assert info["sha256"] == file_sha256(path)
    assert (info["lines"], info["imange_typos"], info["split"]) == (2910, 144, "random")
    assert info["version"] == "aoidragon-2910-typo" and info["version_rule"] == "structural"
    assert info["known"] == ["aoidragon-random-2910-typo"]
    assert info["has_image_id"] is False


def test_describe_pope_file_fixed_and_hash_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _synthetic_pope_file(tmp_path / "coco_pope_adversarial.json", 3000, 0, image_id=True)
    info = describe_pope_file(path)
    assert info["version"] == "aoidragon-3000-fixed"
    assert info["known"] == ["aoidragon-head-fixed"]
    assert info["has_image_id"] is True
    monkeypatch.setitem(pope.KNOWN_POPE_SHA256, info["sha256"], "my-pinned-copy")
    again = describe_pope_file(path)
    assert (again["version"], again["version_rule"]) == ("my-pinned-copy", "sha256")


def test_describe_vcd_adversarial(tmp_path: Path) -> None:
    info = describe_pope_file(_synthetic_pope_file(tmp_path / "coco_pope_adversarial.json", 3000, 57))
    assert info["version"] == "aoidragon-3000-typo"
    assert info["known"] == ["vcd-adversarial-typo"]


# ------------------------------------------------------------------------------------------------------------
# Builder (§1.1)
# ------------------------------------------------------------------------------------------------------------

CATEGORIES = {
    1: "person",
    2: "car",
    3: "chair",
    4: "dog",
    5: "bottle",
    6: "umbrella",
    7: "apple",
    8: "oven",
    9: "elephant",
    10: "kite",
    11: "cup",
}
NAME_TO_ID = {name: cid for cid, name in CATEGORIES.items()}

# image id -> objects in annotation order (a repeated name = a second instance of that category)
IMAGES = {
    1: ["person", "car", "chair", "dog", "bottle", "person"],
    2: ["person", "car", "chair", "dog"],
    3: ["person", "car", "chair", "umbrella"],
    4: ["person", "car", "dog", "apple"],
    5: ["person", "car", "chair", "bottle"],
    6: ["person", "car", "chair", "umbrella"],
    7: ["person", "dog", "bottle", "oven"],
    8: ["elephant", "kite", "cup"],
    9: ["person", "dog", "dog"],  # only 2 distinct objects: never eligible
}


def _coco(images: dict[int, list[str]]) -> dict:
    anns = []
    # interleave images so that "first occurrence in the annotation list" is really tested
    longest = max(len(objs) for objs in images.values())
    for position in range(longest):
        for image_id in sorted(images, reverse=True):
            objs = images[image_id]
            if position < len(objs):
                anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": NAME_TO_ID[objs[position]]})
    return {
        "images": [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg"} for i in sorted(images)],
        "annotations": anns,
        "categories": [{"id": cid, "name": name} for cid, name in CATEGORIES.items()],
    }


def _images_in_order() -> list[PopeImage]:
    by_id = {img.image_id: img for img in coco_objects_per_image(_coco(IMAGES))}
    return [by_id[i] for i in range(1, 9)]


def _object(text: str) -> str:
    prefix_a, prefix_an, suffix = "Is there a ", "Is there an ", " in the image?"
    assert text.endswith(suffix), text
    body = text[: -len(suffix)]
    return body[len(prefix_an) :] if body.startswith(prefix_an) else body[len(prefix_a) :]


def _by_image(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in records:
        grouped.setdefault(record["image"], []).append(record)
    return grouped


def test_objects_per_image_order_and_dedup() -> None:
    images = coco_objects_per_image(_coco(IMAGES))
    assert [img.image_id for img in images] == list(range(1, 10))
    assert images[0].objects == ("person", "car", "chair", "dog", "bottle")  # duplicate person dropped
    assert images[8].objects == ("person", "dog")
    assert images[7].file_name == "COCO_val2014_000000000008.jpg"


def test_an_rule() -> None:
    assert make_pope_question_text("umbrella") == "Is there an umbrella in the image?"
    assert make_pope_question_text("elephant") == "Is there an elephant in the image?"
    assert make_pope_question_text("dog") == "Is there a dog in the image?"
    assert make_pope_question_text("skis") == "Is there a skis in the image?"  # plurals are not fixed
    # the original's template.replace("a", "an") is what produced the "imange" typo
    assert make_pope_question_text("oven", an_rule="legacy") == "Is there an oven in the imange?"
    assert make_pope_question_text("dog", an_rule="legacy") == "Is there a dog in the image?"


def test_popular_split_hand_computed() -> None:
    # Frequencies over images 1-8: person 7, car 6, chair 5, dog 4, bottle 3, umbrella 2, then 1 each for
    # apple, oven, elephant, kite, cup in first-seen order (image 4: apple, image 7: oven, image 8: ...).
    # Popular negatives = the 3 most frequent objects absent from the image.
    records = build_pope_split(_images_in_order(), "popular", rng=random.Random(0))
    expected_negatives = {
        1: ["umbrella", "apple", "oven"],
        2: ["bottle", "umbrella", "apple"],
        3: ["dog", "bottle", "apple"],
        4: ["chair", "bottle", "umbrella"],
        5: ["dog", "umbrella", "apple"],
        6: ["dog", "bottle", "apple"],
        7: ["car", "chair", "umbrella"],
        8: ["person", "car", "chair"],
    }
    grouped = _by_image(records)
    for image_id, negatives in expected_negatives.items():
        qs = grouped[f"COCO_val2014_{image_id:012d}.jpg"]
        assert [_object(q["text"]) for q in qs if q["label"] == "no"] == negatives, image_id
        assert [_object(q["text"]) for q in qs if q["label"] == "yes"] == IMAGES[image_id][:3]
    assert [r["question_id"] for r in records] == list(range(1, 49))
    assert records[-6]["text"] == "Is there an elephant in the image?"


def test_adversarial_split_hand_computed() -> None:
    # Co-occurrence rankings (ties in first-seen order), e.g.
    #   person: car 6, chair 5, dog 4, bottle 3, umbrella 2, apple 1, oven 1
    #   car:    person 6, chair 5, dog 3, bottle 2, umbrella 2, apple 1
    #   dog:    person 4, car 3, chair 2, bottle 2, apple 1, oven 1
    # Negative i = first object in the ranking of positive i that is absent and not yet asked; None marks the
    # random fallback (no candidate left), checked only for validity.
    records = build_pope_split(_images_in_order(), "adversarial", rng=random.Random(0))
    expected = {
        1: ["umbrella", "apple", None],
        2: ["bottle", "umbrella", None],
        3: ["dog", "bottle", None],
        4: ["chair", "bottle", "oven"],
        5: ["dog", "umbrella", None],
        6: ["dog", "bottle", None],
        7: ["car", "chair", None],
        8: [None, None, None],
    }
    grouped = _by_image(records)
    for image_id, negatives in expected.items():
        qs = grouped[f"COCO_val2014_{image_id:012d}.jpg"]
        got = [_object(q["text"]) for q in qs if q["label"] == "no"]
        for want, have in zip(negatives, got):
            if want is not None:
                assert have == want, (image_id, got)
            assert have not in IMAGES[image_id]
        assert len(set(got)) == 3


def _check_split_invariants(records: list[dict], images: dict[int, list[str]]) -> None:
    grouped = _by_image(records)
    for file_name, qs in grouped.items():
        image_id = int(file_name[-16:-4])
        assert [q["label"] for q in qs] == ["yes", "no"] * 3
        objects = [_object(q["text"]) for q in qs]
        assert len(set(objects)) == 6, objects  # no repeats within an image
        assert objects[0::2] == images[image_id][:3]  # positives = first listed objects, in order
        for negative in objects[1::2]:
            assert negative not in images[image_id]


def test_build_splits_invariants_and_determinism() -> None:
    coco = _coco(IMAGES)
    splits = build_pope_splits(coco, num_images=6, seed=123)
    assert list(splits) == ["random", "popular", "adversarial"]
    for records in splits.values():
        assert len(records) == 36
        assert sum(r["label"] == "yes" for r in records) == 18
        assert "COCO_val2014_000000000009.jpg" not in {r["image"] for r in records}  # < 3 objects
        assert list(records[0]) == ["question_id", "image", "text", "label"]
        _check_split_invariants(records, IMAGES)
    # same seed -> identical; every split uses the same sampled images in the same order
    assert build_pope_splits(coco, num_images=6, seed=123) == splits
    orders = {tuple(dict.fromkeys(r["image"] for r in recs)) for recs in splits.values()}
    assert len(orders) == 1
    # the image sample is random.Random(seed).sample(eligible images sorted by id, n)
    eligible = [img for img in coco_objects_per_image(coco) if len(img.objects) >= 3]
    expected_order = [img.file_name for img in random.Random(123).sample(eligible, 6)]
    assert list(next(iter(orders))) == expected_order
    # different seeds give different outputs
    assert any(build_pope_splits(coco, num_images=6, seed=s) != splits for s in range(1, 4))


def test_build_splits_upstream_layout_and_errors() -> None:
    coco = _coco(IMAGES)
    splits = build_pope_splits(coco, num_images=8, seed=0, first_question_id=0, include_image_id=True)
    first = splits["random"][0]
    assert list(first) == ["question_id", "image", "image_id", "text", "label"]
    assert first["question_id"] == 0
    assert first["image"] == f"COCO_val2014_{first['image_id']:012d}.jpg"
    with pytest.raises(pope.PopeBuildError, match="only 8 images"):
        build_pope_splits(coco, num_images=9, seed=0)
    # two images, three objects each, all shared: no negative can ever be found (original loops forever)
    tiny = {1: ["person", "car", "chair"], 2: ["car", "chair", "person"]}
    with pytest.raises(pope.PopeBuildError, match="no negative object left"):
        build_pope_splits(_coco(tiny), num_images=2, seed=0)


def test_write_pope_jsonl_is_official_format(tmp_path: Path) -> None:
    splits = build_pope_splits(_coco(IMAGES), num_images=8, seed=7)
    path = tmp_path / "coco_pope_popular.json"
    write_pope_jsonl(splits["popular"], path)
    lines = path.read_text().splitlines()
    assert len(lines) == 48
    assert lines[0].startswith('{"question_id": 1, "image": "COCO_val2014_')
    assert [q.to_record() for q in load_pope_questions(path)] == splits["popular"]
    assert describe_pope_file(path)["imange_typos"] == 0
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary file left behind


def test_legacy_an_rule_reproduces_imange_typo_count(tmp_path: Path) -> None:
    # With the original template.replace("a", "an"), every question about a vowel-initial object has the typo,
    # which is why the old files have 144 / 44 / 58 of them.
    splits = build_pope_splits(_coco(IMAGES), num_images=8, seed=3, an_rule="legacy")
    for split, records in splits.items():
        vowel_questions = sum(_object(r["text"].replace("imange", "image"))[0] in "aeiou" for r in records)
        assert vowel_questions > 0
        path = tmp_path / f"coco_pope_{split}.json"
        write_pope_jsonl(records, path)
        assert describe_pope_file(path)["imange_typos"] == vowel_questions
