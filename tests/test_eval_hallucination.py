"""End-to-end tests of the POPE and CHAIR eval tasks and the ``hookkit eval`` CLI (tiny-llava, CPU, offline).

The fixture is built here: a small COCO-style instances/captions pair over 6 generated images (plus one annotated
image without a file), POPE splits built from it with ``hookkit eval pope-build``.  Every number a test checks is
recomputed independently (from the per-sample log, the library scorers or a direct ``generate`` call).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from PIL import Image

import hookkit
from hookkit.cli.main import build_parser, main
from hookkit.core.recipe import Recipe
from hookkit.evals.chair import ChairScorer, sample_image_ids
from hookkit.evals.files import file_sha256, sha256_of
from hookkit.evals.pope import POPE_PROMPT_PRESETS, build_pope_splits, parse_pope_answer, pope_metrics
from hookkit.evals.pope.task import PopeTask, rescore_pope_records
from hookkit.evals.results import stable_record, validate_results_file
from hookkit.evals.runner import read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]
METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio", "unknown_rate")
SPLITS = ("random", "popular", "adversarial")

CATEGORIES = {1: "person", 2: "bicycle", 3: "car", 16: "bird", 17: "cat", 18: "dog", 28: "umbrella", 44: "bottle",
              47: "cup", 59: "pizza", 62: "chair", 67: "dining table"}
OBJECTS = {  # image id -> objects in annotation order
    139: ["person", "dog", "chair", "cup"],
    285: ["cat", "chair", "dining table"],
    632: ["car", "person", "bicycle", "umbrella"],
    724: ["bird", "person", "bottle"],
    776: ["dog", "cat", "umbrella", "pizza"],
    785: ["pizza", "cup", "dining table", "bottle", "person"],
    999: ["person", "car"],  # annotated, but no image file (2 objects: never drawn for POPE, which needs 3)
}
CAPTIONS = {
    139: ["A man sits on a chair with his dog.", "A person and a puppy next to a coffee cup."],
    285: ["A cat sleeping under the kitchen table.", "Two chairs and a cat."],
    632: ["A woman rides a bike past a parked car in the rain.", "People with umbrellas on a street."],
    724: ["A bird perched on a bottle held by a boy.", "A small bird next to a person."],
    776: ["A dog and a cat share a pizza under an umbrella.", "Pets eating pizza."],
    785: ["Pizza and drinks on a dining table.", "A table with a pizza, cups and bottles."],
    999: ["A man walking his dog by a car."],
}
FILE_IDS = sorted(i for i in OBJECTS if i != 999)


# ------------------------------------------------------------------------------------------------------------------
# fixture
# ------------------------------------------------------------------------------------------------------------------


def _coco_json(tmp: Path) -> tuple[Path, Path]:
    name_to_id = {v: k for k, v in CATEGORIES.items()}
    images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "width": 64, "height": 48} for i in OBJECTS]
    anns, caps = [], []
    for image_id, objects in OBJECTS.items():
        for obj in objects + objects[:1]:  # a repeated category must not repeat the object
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": name_to_id[obj],
                         "iscrowd": 0, "bbox": [1, 1, 10, 10], "area": 100})
        for text in CAPTIONS[image_id]:
            caps.append({"id": len(caps) + 1, "image_id": image_id, "caption": text})
    categories = [{"id": k, "name": v, "supercategory": "x"} for k, v in CATEGORIES.items()]
    instances, captions = tmp / "instances_val2014.json", tmp / "captions_val2014.json"
    instances.write_text(json.dumps({"images": images, "annotations": anns, "categories": categories}))
    captions.write_text(json.dumps({"images": images, "annotations": caps}))
    return instances, captions


def _make_images(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for image_id in FILE_IDS:
        rng = np.random.default_rng(image_id)
        pixels = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"COCO_val2014_{image_id:012d}.jpg", quality=90)


@pytest.fixture(scope="module")
def coco(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    root = tmp_path_factory.mktemp("coco")
    instances, captions = _coco_json(root)
    images = root / "val2014"
    _make_images(images)
    pope_dir = root / "pope"
    rc = main(["eval", "pope-build", "--annotations", str(instances), "--output-dir", str(pope_dir),
               "--num-images", "6", "--seed", "0"])
    assert rc == 0
    files = {split: pope_dir / f"coco_pope_{split}.json" for split in SPLITS}
    return SimpleNamespace(root=root, instances=instances, captions=captions, images=images, pope=files)


def _pope_args(coco: SimpleNamespace, out: Path, *extra: str, files: list[str] | None = None) -> list[str]:
    data = files if files is not None else [str(coco.pope[s]) for s in SPLITS]
    # 4 new tokens instead of the default 10 keeps the file fast on a shared CPU; the default is checked separately
    return ["eval", "pope", "--model", "tiny-llava", "--data", *data, "--images", str(coco.images),
            "--output-path", str(out), "--no-progress", "--max-new-tokens", "4", *extra]


def _samples(out: Path, task: str = "pope") -> list[dict[str, Any]]:
    return [json.loads(line) for line in (out / f"samples_{task}.jsonl").read_text().splitlines()]


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    """What must not change between two runs of the same evaluation (no times, memory, env, process count)."""
    keep = ("results", "configs", "versions", "n-samples", "task_hashes", "intervention", "intervention_hash",
            "data_files", "seeds", "errors", "samples_file", "higher_is_better")
    out = {k: results[k] for k in keep}
    out["config"] = {k: v for k, v in results["config"].items() if k not in ("num_processes", "resolved_cli_args")}
    return out


@pytest.fixture(scope="module")
def baseline(coco: SimpleNamespace, tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The stock tiny-llava over all three splits (108 questions), batch 4: the reference run of the module."""
    out = tmp_path_factory.mktemp("pope_baseline")
    assert main(_pope_args(coco, out, "--batch-size", "4")) == 0
    results = validate_results_file(out / "results_pope.json")
    return SimpleNamespace(out=out, results=results, samples=_samples(out))


def _subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="", HF_HOME=str(tmp_path / "hf_home"), PYTHONUNBUFFERED="1")
    return env


# ------------------------------------------------------------------------------------------------------------------
# POPE: builder CLI
# ------------------------------------------------------------------------------------------------------------------


def test_pope_build_cli_is_seeded_and_matches_library(coco: SimpleNamespace, tmp_path: Path) -> None:
    expected = build_pope_splits(json.loads(coco.instances.read_text()), 6, seed=0)
    for split in SPLITS:
        lines = coco.pope[split].read_text().splitlines()
        assert [json.loads(line) for line in lines] == expected[split]
        assert len(lines) == 36 and sum(json.loads(x)["label"] == "yes" for x in lines) == 18
    again = tmp_path / "again"
    assert main(["eval", "pope-build", "--annotations", str(coco.instances), "--output-dir", str(again),
                 "--num-images", "6", "--seed", "0"]) == 0
    assert all((again / p.name).read_bytes() == p.read_bytes() for p in coco.pope.values())
    # another seed gives other splits, and an existing file with other content is never overwritten
    assert main(["eval", "pope-build", "--annotations", str(coco.instances), "--output-dir", str(again),
                 "--num-images", "6", "--seed", "1"]) == 2
    assert all((again / p.name).read_bytes() == p.read_bytes() for p in coco.pope.values())
    other = build_pope_splits(json.loads(coco.instances.read_text()), 6, seed=1)
    assert other != expected


# ------------------------------------------------------------------------------------------------------------------
# POPE: end to end
# ------------------------------------------------------------------------------------------------------------------


def test_pope_baseline_results_json(coco: SimpleNamespace, baseline: SimpleNamespace) -> None:
    results, samples = baseline.results, baseline.samples
    entry = results["results"]["pope"]
    assert results["n-samples"]["pope"] == {"original": 108, "effective": 108}
    assert entry["n_errors"] == 0 and results["errors"]["pope"] == {"count": 0, "sample_ids": []}
    assert results["intervention"] is None and results["intervention_hash"] is None

    # per-split metrics recomputed from the per-sample log, their mean, and the pooled confusion matrix
    assert len(samples) == 108 and len({s["sample_id"] for s in samples}) == 108
    pooled = {k: 0 for k in ("TP", "FP", "TN", "FN", "unknown", "unknown_label_yes", "unknown_label_no", "n")}
    for split in SPLITS:
        recs = [s for s in samples if s["split"] == split]
        expected = pope_metrics([s["pred"] for s in recs], [s["label"] for s in recs])
        for key in METRICS:
            assert entry[f"{split}/{key},none"] == pytest.approx(expected[key])
        yes = sum(s["pred"] == "yes" for s in recs) / len(recs)
        assert entry[f"{split}/yes_ratio,none"] == pytest.approx(yes)  # from predictions, not labels
        confusion = entry[f"{split}/confusion,none"]
        assert confusion == {**expected["confusion"], "n": 36}
        assert confusion["TP"] + confusion["FP"] + confusion["TN"] + confusion["FN"] == 36
        for key in pooled:
            pooled[key] += confusion[key]
        acc = np.mean([s["correct"] for s in recs])
        assert entry[f"{split}/accuracy,none"] == pytest.approx(acc)
        assert entry[f"{split}/accuracy_stderr,none"] == pytest.approx(np.std([s["correct"] for s in recs], ddof=1)
                                                                      / np.sqrt(36))
    for key in METRICS:
        assert entry[f"{key},none"] == pytest.approx(np.mean([entry[f"{s}/{key},none"] for s in SPLITS]))
    assert entry["confusion,none"] == pooled

    cfg = results["configs"]["pope"]
    assert cfg["parser"] == "pope_official" and cfg["prompt_preset"] == "llava15"
    assert results["parser"] == {"pope": "pope_official"}  # the top-level parser key (eval-protocols.md §8)
    assert cfg["splits"] == list(SPLITS) and cfg["unknown_policy"] == "as_no"
    assert cfg["generation_kwargs"] == {"max_new_tokens": 4, "do_sample": False}
    assert cfg["prompt_template"] == "{question}\nAnswer the question using a single word or phrase."
    assert len(cfg["prompt_template_sha256"]) == 64 and len(cfg["chat_template_sha256"]) == 64
    assert results["higher_is_better"]["pope"]["f1"] is True and "yes_ratio" not in results["higher_is_better"]["pope"]

    # provenance: every question file pinned by sha256 with its detected version; images pinned too
    questions = [d for d in results["data_files"] if d["role"] == "questions"]
    assert [d["split"] for d in questions] == list(SPLITS)
    for d in questions:
        assert d["sha256"] == file_sha256(coco.pope[d["split"]])
        assert d["version"] == "unknown" and d["lines"] == 36 and d["malformed_lines"] == []
    images = [d for d in results["data_files"] if d["role"] == "images"]
    assert len(images) == 1 and images[0]["files"] == 6 and images[0]["missing"] == 0


def test_pope_samples_are_exact_generations(coco: SimpleNamespace, baseline: SimpleNamespace) -> None:
    samples = baseline.samples
    # round-robin over the splits: --limit keeps them balanced
    assert [s["split"] for s in samples[:6]] == list(SPLITS) * 2
    suffix = POPE_PROMPT_PRESETS["llava15"].suffix
    questions = {s: [json.loads(x) for x in coco.pope[s].read_text().splitlines()] for s in SPLITS}
    for s in samples:
        q = next(q for q in questions[s["split"]] if q["question_id"] == s["question_id"])
        assert (s["question"], s["label"], s["image"]) == (q["text"], q["label"], q["image"])
        assert s["prompt"] == q["text"] + suffix
        assert s["answer"] == s["answer_raw"].strip()
        assert s["pred"] == parse_pope_answer(s["answer"], "pope_official")
        assert s["_prefill_s"] > 0 and s["_batch_timings"]["batch_size"] in (1, 2, 3, 4)
    # the logged answers are what hookkit.generation.generate gives for the same question, alone (greedy)
    from hookkit.generation import generate

    model, processor = hookkit.load("tiny-llava", dtype="float32")
    for s in samples[:5]:
        image = Image.open(coco.images / s["image"]).convert("RGB")
        out = generate(model, processor, [s["prompt"]], [image], max_new_tokens=4)
        assert out.texts[0] == s["answer_raw"]


def test_pope_rescore_with_other_parser(baseline: SimpleNamespace) -> None:
    rescored = rescore_pope_records(baseline.samples, parser="exact")
    for split in SPLITS:
        recs = [s for s in baseline.samples if s["split"] == split]
        preds = [parse_pope_answer(s["answer"], "exact") for s in recs]
        expected = pope_metrics(preds, [s["label"] for s in recs])
        assert rescored[f"{split}/unknown_rate"] == pytest.approx(expected["unknown_rate"])
        assert rescored[f"{split}/f1"] == pytest.approx(expected["f1"])
    same = rescore_pope_records(baseline.samples, parser="pope_official")
    assert same["f1"] == pytest.approx(baseline.results["results"]["pope"]["f1,none"])


def test_pope_aggregate_hand_computed(coco: SimpleNamespace) -> None:
    task = PopeTask({"a": coco.pope["random"], "b": coco.pope["popular"]}, coco.images)

    def recs(split: str, labels: str, preds: list[str]) -> list[dict[str, Any]]:
        return [{"split": split, "label": {"y": "yes", "n": "no"}[lab], "pred": p} for lab, p in zip(labels, preds)]

    records = recs("a", "yynn", ["yes", "no", "yes", "no"]) + recs("b", "ynyn", ["yes", "no", "unknown", "no"])
    out = task.aggregate(records)
    # a: TP 1, FN 1, FP 1, TN 1.  b (unknown scored as no): TP 1, TN 2, FN 1 (the unknown), FP 0.
    assert out["a/confusion"] == {"TP": 1, "FP": 1, "TN": 1, "FN": 1, "unknown": 0, "unknown_label_yes": 0,
                                  "unknown_label_no": 0, "n": 4}
    assert out["b/confusion"] == {"TP": 1, "FP": 0, "TN": 2, "FN": 1, "unknown": 1, "unknown_label_yes": 1,
                                  "unknown_label_no": 0, "n": 4}
    assert (out["a/accuracy"], out["a/precision"], out["a/recall"], out["a/f1"]) == (0.5, 0.5, 0.5, 0.5)
    assert (out["b/accuracy"], out["b/precision"], out["b/recall"]) == (0.75, 1.0, 0.5)
    assert out["b/f1"] == pytest.approx(2 / 3) and out["b/yes_ratio"] == 0.25 and out["b/unknown_rate"] == 0.25
    assert out["f1"] == pytest.approx((0.5 + 2 / 3) / 2) and out["yes_ratio"] == pytest.approx((0.5 + 0.25) / 2)
    assert out["confusion"]["TN"] == 3 and out["confusion"]["n"] == 8
    # lmms-eval policy: the unknown leaves precision/recall counts and is wrong in accuracy
    lmms = PopeTask({"b": coco.pope["popular"]}, coco.images, unknown_policy="lmms_eval").aggregate(records[4:])
    assert (lmms["b/accuracy"], lmms["b/recall"], lmms["b/confusion"]["FN"]) == (0.75, 1.0, 0)


def _record_attached_methods(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    """Patch PopeTask.predict to log, per batch, the methods attached to the model while it generates."""
    from hookkit.core.session import SESSION_ATTR

    seen: list[list[str]] = []
    original = PopeTask.predict

    def predict(self: PopeTask, batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        session = getattr(self.model, SESSION_ATTR, None)
        seen.append([iv.name for iv in session.interventions] if session is not None else [])
        return original(self, batch)

    monkeypatch.setattr(PopeTask, "predict", predict)
    return seen


def test_pope_task_alias_and_noop_recipe_match_baseline(coco: SimpleNamespace, baseline: SimpleNamespace,
                                                        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    attached = _record_attached_methods(monkeypatch)
    recipe_path = Recipe.single("noop").save(tmp_path / "noop.json")
    out = tmp_path / "noop"
    args = _pope_args(coco, out, "--batch-size", "4", "--limit", "12", "--recipe", str(recipe_path))
    assert main(["eval", "--task", *args[1:]]) == 0  # `hookkit eval --task pope ...` spelling
    assert attached == [["noop"]] * 3  # 12 samples in batches of 4, each generated with the recipe attached
    results = validate_results_file(out / "results_pope.json")
    recipe = Recipe.load(recipe_path)
    assert results["intervention"]["recipe"] == recipe.to_dict()
    assert results["intervention"]["recipe_hash"] == recipe.hash()
    assert results["intervention"]["model_fingerprint"]["family"] == "llava"
    assert results["intervention_hash"] == sha256_of(results["intervention"])
    assert results["n-samples"]["pope"] == {"original": 108, "effective": 12}
    base = {s["sample_id"]: s["answer_raw"] for s in baseline.samples}
    noop = _samples(out)
    assert [s["sample_id"] for s in noop] == [s["sample_id"] for s in baseline.samples[:12]]
    assert all(s["answer_raw"] == base[s["sample_id"]] for s in noop)  # noop is neutral


def test_pope_vhr_recipe_end_to_end(coco: SimpleNamespace, baseline: SimpleNamespace, tmp_path: Path,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """VHR (the lead's method) through the same CLI; fails, rather than skips, while VHR is unavailable."""
    hookkit.methods.get_method("vhr")
    attached = _record_attached_methods(monkeypatch)
    out = tmp_path / "vhr"
    assert main(_pope_args(coco, out, "--batch-size", "4", "--limit", "12", "--method", "vhr")) == 0
    assert attached == [["vhr"]] * 3
    results = validate_results_file(out / "results_pope.json")
    assert results["intervention"]["recipe"]["methods"][0]["method"] == "vhr"
    assert results["intervention"]["recipe_hash"] == Recipe.single("vhr").hash()
    assert results["results"]["pope"]["n_errors"] == 0
    samples = _samples(out)
    assert [s["sample_id"] for s in samples] == [s["sample_id"] for s in baseline.samples[:12]]
    assert all(s["pred"] == parse_pope_answer(s["answer"], "pope_official") for s in samples)
    for key in METRICS:
        assert f"{key},none" in results["results"]["pope"]


# ------------------------------------------------------------------------------------------------------------------
# POPE: kill and resume
# ------------------------------------------------------------------------------------------------------------------

KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys

    import hookkit.evals.pope.task as pope_task
    from hookkit.cli.main import main

    die_after = int(os.environ["HK_DIE_AFTER_BATCHES"])
    original = pope_task.PopeTask.predict
    calls = [0]

    def predict(self, batch):
        if calls[0] >= die_after:
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no flush
        calls[0] += 1
        return original(self, batch)

    pope_task.PopeTask.predict = predict
    sys.exit(main(sys.argv[1:]))
    """
)


def test_pope_kill_and_resume_matches_clean_run(coco: SimpleNamespace, baseline: SimpleNamespace,
                                                tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    script = tmp_path / "kill_pope.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "killed"
    args = _pope_args(coco, out, "--batch-size", "4")
    env = _subprocess_env(tmp_path) | {"HK_DIE_AFTER_BATCHES": "3"}
    proc = subprocess.run([sys.executable, str(script), *args], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (out / "results_pope.json").exists()
    assert len(read_jsonl(out / "samples_pope.rank0.jsonl")[0]) == 12  # three batches of 4 reached the disk

    assert main(args) == 2  # without --resume nothing is overwritten or appended to
    assert "--resume" in capsys.readouterr().err
    assert main(args + ["--parser", "opera", "--resume"]) == 2  # a different run cannot resume this one
    assert "cannot resume" in capsys.readouterr().err

    assert main(args + ["--resume"]) == 0
    resumed = validate_results_file(out / "results_pope.json")
    assert resumed["timings"]["n_samples_resumed"] == 12 and resumed["timings"]["n_samples_run"] == 96
    assert _comparable(resumed) == _comparable(baseline.results)
    samples = _samples(out)
    assert [stable_record(s) for s in samples] == [stable_record(s) for s in baseline.samples]
    ids = [s["sample_id"] for s in samples]
    assert len(ids) == len(set(ids)) == 108
    assert not list(out.glob("*.rank*.jsonl"))


# ------------------------------------------------------------------------------------------------------------------
# POPE: error isolation
# ------------------------------------------------------------------------------------------------------------------


def test_pope_bad_lines_and_images_are_isolated(coco: SimpleNamespace, baseline: SimpleNamespace,
                                                 tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(coco.images, images)
    (images / "COCO_val2014_000000999998.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg" * 10)
    lines = coco.pope["random"].read_text().splitlines()
    q2, q5 = json.loads(lines[1]), json.loads(lines[4])
    q2["image"] = "COCO_val2014_000000999998.jpg"  # corrupt file
    q5["image"] = "COCO_val2014_000000999997.jpg"  # missing file
    lines[1], lines[4] = json.dumps(q2), json.dumps(q5)
    lines.insert(7, '{"question_id": 5000, "image": "COCO_val2014_000000000139.jpg", "te')  # line 8: torn JSON
    lines.insert(8, json.dumps({"question_id": 5001, "image": "x.jpg", "text": "Is there a cat?", "label": "maybe"}))
    bad_file = tmp_path / "random_bad.jsonl"
    bad_file.write_text("\n".join(lines) + "\n")

    out = tmp_path / "errors"
    args = ["eval", "pope", "--model", "tiny-llava", "--data", f"random={bad_file}", "--images", str(images),
            "--output-path", str(out), "--batch-size", "4", "--no-progress", "--max-new-tokens", "4"]
    assert main(args) == 0
    results = validate_results_file(out / "results_pope.json")
    entry = results["results"]["pope"]
    expected_errors = [f"random-{q2['question_id']}", f"random-{q5['question_id']}", "random-line8", "random-line9"]
    assert entry["n_errors"] == 4 and results["errors"]["pope"]["sample_ids"] == expected_errors
    assert results["n-samples"]["pope"]["effective"] == 38

    by_id = {s["sample_id"]: s for s in _samples(out)}
    err = {sid: by_id[sid]["error"] for sid in expected_errors}
    assert "random_bad.jsonl:2:" in err[expected_errors[0]] and "cannot read image" in err[expected_errors[0]]
    assert "COCO_val2014_000000999998.jpg" in err[expected_errors[0]]
    assert "random_bad.jsonl:5:" in err[expected_errors[1]] and "not found" in err[expected_errors[1]]
    assert "COCO_val2014_000000999997.jpg" in err[expected_errors[1]]
    assert "random_bad.jsonl:8:" in err["random-line8"] and "invalid JSON" in err["random-line8"]
    assert "random_bad.jsonl:9:" in err["random-line9"] and "'label'" in err["random-line9"]
    questions = [d for d in results["data_files"] if d["role"] == "questions"]
    assert questions[0]["malformed_lines"] == [8, 9] and questions[0]["sha256"] == file_sha256(bad_file)

    # every other question got exactly the answer of the clean run, and only they are scored
    good = [s for sid, s in by_id.items() if sid not in expected_errors]
    assert len(good) == 34
    clean = {s["sample_id"]: s for s in baseline.samples}
    assert all(s["answer_raw"] == clean[s["sample_id"]]["answer_raw"] for s in good)
    expected = pope_metrics([s["pred"] for s in good], [s["label"] for s in good])
    assert entry["random/f1,none"] == pytest.approx(expected["f1"])
    assert entry["random/confusion,none"]["n"] == 34


def test_pope_input_errors_name_the_problem(coco: SimpleNamespace, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import hookkit.cli.evaluation as cli

    def no_model(args: Any, state: Any) -> Any:
        raise AssertionError("bad input must be reported before the model is loaded")

    monkeypatch.setattr(cli, "load_for_eval", no_model)
    out = tmp_path / "x"
    assert main(_pope_args(coco, out, files=[str(tmp_path / "nope_random.json")])) == 2
    assert "nope_random.json" in capsys.readouterr().err
    assert main(_pope_args(coco, out, files=[str(coco.pope["random"]), f"random={coco.pope['popular']}"])) == 2
    assert "given twice" in capsys.readouterr().err
    assert main(_pope_args(coco, out, "--temperature", "0.7")) == 2
    assert "--do-sample" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(_pope_args(coco, out, "--parser", "nope"))
    assert "pope_official" in capsys.readouterr().err  # argparse lists the allowed parsers
    assert main(["eval"]) == 2
    assert not out.exists()
    with pytest.raises(hookkit.ConfigError, match="allowed"):
        PopeTask([coco.pope["random"]], coco.images, prompt_preset="nope")


def test_pope_build_then_run(coco: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "built"
    args = ["eval", "pope", "--model", "tiny-llava", "--build-from-annotations", str(coco.instances),
            "--build-num-images", "6", "--build-seed", "0", "--images", str(coco.images), "--output-path", str(out),
            "--limit", "6", "--no-progress", "--max-new-tokens", "4"]
    assert main(args) == 0
    for split in SPLITS:  # same seed, same files as pope-build
        assert (out / "pope_questions" / f"coco_pope_{split}.json").read_bytes() == coco.pope[split].read_bytes()
    results = validate_results_file(out / "results_pope.json")
    roles = [d["role"] for d in results["data_files"]]
    assert roles.count("questions") == 3 and "annotations" in roles
    assert results["configs"]["pope"]["built_from_annotations"]["seed"] == 0


# ------------------------------------------------------------------------------------------------------------------
# data parallel: accelerate launch, 2 CPU processes
# ------------------------------------------------------------------------------------------------------------------


def test_pope_data_parallel_two_processes(coco: SimpleNamespace, baseline: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "dp"
    args = _pope_args(coco, out, "--batch-size", "2", "--limit", "16")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "hookkit.cli.main", *args]
    proc = subprocess.run(cmd, env=_subprocess_env(tmp_path), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    parallel = validate_results_file(out / "results_pope.json")
    assert parallel["config"]["num_processes"] == 2 and len(parallel["peak_memory"]["per_rank"]) == 2
    assert proc.stdout.count("results:") == 1  # only the main process prints

    single_out = tmp_path / "single"
    assert main(_pope_args(coco, single_out, "--batch-size", "2", "--limit", "16")) == 0
    single = validate_results_file(single_out / "results_pope.json")
    assert _comparable(parallel) == _comparable(single)
    assert [stable_record(s) for s in _samples(out)] == [stable_record(s) for s in baseline.samples[:16]]


# ------------------------------------------------------------------------------------------------------------------
# CHAIR
# ------------------------------------------------------------------------------------------------------------------


def _chair_args(coco: SimpleNamespace, out: Path, *extra: str) -> list[str]:
    return ["eval", "chair", "--model", "tiny-llava", "--images", str(coco.images), "--instances",
            str(coco.instances), "--captions", str(coco.captions), "--output-path", str(out), "--no-progress",
            "--max-new-tokens", "48", "--batch-size", "2", *extra]


def test_chair_defaults_follow_the_protocol() -> None:
    args = build_parser().parse_args(["eval", "chair", "--model", "m", "--images", "i", "--instances", "a",
                                      "--captions", "c", "--output-path", "o"])
    assert args.max_new_tokens == 512 and args.num_images == 500 and args.prompt_preset == "chair"
    pope = build_parser().parse_args(["eval", "pope", "--model", "m", "--data", "f", "--images", "i",
                                      "--output-path", "o"])
    assert pope.max_new_tokens == 10 and pope.parser == "pope_official" and pope.prompt_preset == "llava15"
    assert not pope.do_sample and pope.batch_size == 1


def test_chair_end_to_end_seeded_sample(coco: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "chair"
    # PAI's wording and these images make the random tiny model name COCO objects (checked below)
    assert main(_chair_args(coco, out, "--num-images", "4", "--image-seed", "4", "--prompt-preset", "pai")) == 0
    results = validate_results_file(out / "results_chair.json")
    cfg = results["configs"]["chair"]
    expected_ids = sample_image_ids(FILE_IDS, 4, seed=4)
    assert cfg["image_ids"] == expected_ids  # the seeded id list is in the results, in evaluation order
    assert cfg["image_selection"]["seed"] == 4 and cfg["image_selection"]["population_size"] == 6
    assert cfg["prompt_template"] == "Please help me describe the image in detail." and cfg["prompt_preset"] == "pai"
    assert cfg["generation_kwargs"] == {"max_new_tokens": 48, "do_sample": False}
    assert cfg["scorer"]["singularizer"] == "inflect"

    samples = _samples(out, "chair")
    assert [s["image_id"] for s in samples] == expected_ids
    # independent scoring against the *full* annotation files (the task restricts them to the sampled ids)
    reference = ChairScorer(str(coco.instances), str(coco.captions))
    scored = reference.score([{"image_id": s["image_id"], "caption": s["caption"]} for s in samples])
    for s, ref in zip(samples, scored.samples):
        assert s["mentioned_words"] == ref["mentioned_words"]
        assert s["mentioned_node_words"] == ref["mentioned_node_words"]
        assert s["hallucinated_words"] == ref["hallucinated_words"]
        assert s["gt_objects"] == ref["gt_objects"]
        assert s["caption"] == s["caption_raw"].strip() and s["new_tokens"] >= 1
    # not vacuous: the tiny model names COCO objects for these images (exact values: test_chair_known_captions)
    assert sum(len(s["mentioned_words"]) for s in samples) > 0
    entry = results["results"]["chair"]
    for key in ("CHAIR_s", "CHAIR_i", "recall", "avg_len"):
        assert entry[f"{key},none"] == pytest.approx(scored.metrics[key])
    assert entry["counts,none"] == scored.counts
    roles = sorted(d["role"] for d in results["data_files"])
    assert roles == ["captions", "images", "instances", "synonyms"]
    assert results["higher_is_better"]["chair"] == {"CHAIR_s": False, "CHAIR_i": False, "recall": True}


def test_chair_explicit_ids_and_missing_image(coco: SimpleNamespace, tmp_path: Path) -> None:
    ids_file = tmp_path / "ids.txt"
    ids_file.write_text("# OPERA-style list\n785\n999, 139\n")
    out = tmp_path / "chair_ids"
    assert main(_chair_args(coco, out, "--image-ids", str(ids_file), "--max-new-tokens", "8")) == 0
    results = validate_results_file(out / "results_chair.json")
    assert results["configs"]["chair"]["image_ids"] == [785, 999, 139]
    assert results["configs"]["chair"]["image_selection"]["rule"] == "explicit list"
    assert results["errors"]["chair"]["sample_ids"] == ["chair-999"]
    by_id = {s["sample_id"]: s for s in _samples(out, "chair")}
    error = by_id["chair-999"]["error"]
    assert "image_id 999" in error and "COCO_val2014_000000000999.jpg" in error and "not found" in error
    assert [by_id["chair-785"]["image_id"], by_id["chair-139"]["image_id"]] == [785, 139]
    assert results["results"]["chair"]["counts,none"]["captions"] == 2
    assert any(d["role"] == "image_ids" for d in results["data_files"])

    unknown = tmp_path / "unknown.json"
    unknown.write_text("[785, 4242]")
    assert main(_chair_args(coco, tmp_path / "chair_bad", "--image-ids", str(unknown))) == 2  # no ground truth


def test_chair_known_captions(coco: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Per-sample log and metrics for captions whose objects are known (generation stubbed out)."""
    import torch

    import hookkit.generation
    from hookkit.evals.chair.task import ChairTask

    captions = ["A man with two dogs on a chair and a surfboard.", "A cat on a table by a toilet seat."]
    seen: list[tuple[str, tuple[int, int]]] = []

    def fake_generate(model: Any, processor: Any, prompts: list[str], images: list[Any], **kwargs: Any) -> Any:
        seen.extend((p, im.size) for p, im in zip(prompts, images))
        assert kwargs["max_new_tokens"] == 512 and kwargs["do_sample"] is False
        return hookkit.generation.GenerationResult(captions[: len(prompts)], torch.zeros(len(prompts), 1),
                                                   [[5]] * len(prompts), 0, {"prefill_s": 0.01, "decode_s": 0.02})

    monkeypatch.setattr(hookkit.generation, "generate", fake_generate)
    ids_file = tmp_path / "ids.json"
    ids_file.write_text("[139, 285]")
    task = ChairTask.from_files(images_dir=coco.images, instances=[coco.instances], captions=[coco.captions],
                               image_ids_file=ids_file, model=object(), processor=object())
    records = task.predict(task.samples())
    assert seen == [("Please describe this image in detail.", (64, 48))] * 2
    r139, r285 = records
    assert (r139["image_id"], r285["image_id"]) == (139, 285)
    assert r139["mentioned_words"] == ["man", "dog", "chair", "surfboard"]
    assert r139["mentioned_node_words"] == ["person", "dog", "chair", "surfboard"]
    assert r139["hallucinated_words"] == [["surfboard", "surfboard"]]
    assert r139["gt_objects"] == ["chair", "cup", "dog", "person"]
    assert r285["mentioned_node_words"] == ["cat", "dining table", "toilet"]
    assert r285["hallucinated_words"] == [["toilet", "toilet"]]
    assert r139["CHAIR_i"] == pytest.approx(25.0) and r285["recall"] == pytest.approx(100 * 2 / 3)
    out = task.aggregate(records)
    assert out["CHAIR_s"] == 100.0  # both captions hallucinate
    assert out["CHAIR_i"] == pytest.approx(100 * 2 / 7)  # 2 hallucinated of 7 mentions
    assert out["recall"] == pytest.approx(100 * 5 / 7)  # {person, dog, chair} of 4 + {cat, dining table} of 3
    assert out["counts"]["mentions"] == 7 and out["counts"]["hallucinated_captions"] == 2
