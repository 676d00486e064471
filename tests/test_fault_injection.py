"""Kill-and-resume for every eval task: a SIGKILL at a seeded random point, then ``--resume``, equals a clean run.

The killed run is a real subprocess running the real CLI. The kill lands at the k-th durable write of the
per-sample log (k drawn from a seeded RNG per task), either before the write (a crash between samples) or after a
random prefix of the bytes has reached the file (a torn record, as a power cut mid-write leaves). The resumed run
must then give exactly the records and results of an uninterrupted run: nothing lost, nothing duplicated.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from helpers import make_image

from hookkit.cli.main import main
from hookkit.evals.results import stable_record, validate_results_file
from hookkit.evals.runner import read_jsonl

REPO_ROOT = Path(__file__).resolve().parents[1]

KILLER = textwrap.dedent(
    """
    import os, random, signal, sys

    import hookkit.evals.sample_log as sample_log
    from hookkit.cli.main import main

    rng = random.Random(int(os.environ["HK_KILL_SEED"]))
    kill_at = int(os.environ["HK_KILL_AT"])  # the k-th durable write dies
    torn = os.environ["HK_KILL_MODE"] == "torn"
    original = sample_log.SampleLog.extend
    calls = [0]

    def extend(self, records):
        calls[0] += 1
        if calls[0] == kill_at and records:
            if torn:  # a random prefix of the encoded records reaches the file, then the process dies
                data = b"".join(sample_log.encode_record(r) for r in records)
                fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                os.write(fd, data[: rng.randrange(1, len(data))])
                os.fsync(fd)
            os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no flush
        return original(self, records)

    sample_log.SampleLog.extend = extend
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five COCO-named images with instances and captions, and a POPE file over them."""
    root = tmp_path_factory.mktemp("fault_data")
    images = root / "images"
    images.mkdir()
    objects = {11: ["dog", "chair"], 12: ["cat"], 13: ["person", "car"], 14: ["pizza", "cup"], 15: ["bird"]}
    names = sorted({o for objs in objects.values() for o in objs})
    categories = [{"id": i + 1, "name": n} for i, n in enumerate(names)]
    cat_id = {c["name"]: c["id"] for c in categories}
    anns, caps = [], []
    for image_id, objs in objects.items():
        make_image(image_id).save(images / f"COCO_val2014_{image_id:012d}.jpg")
        anns += [{"id": len(anns) + 1, "image_id": image_id, "category_id": cat_id[o], "bbox": [0, 0, 4, 4],
                  "area": 16, "iscrowd": 0} for o in objs]
        caps.append({"id": len(caps) + 1, "image_id": image_id, "caption": f"A picture of a {objs[0]}."})
    coco_images = [{"id": i, "file_name": f"COCO_val2014_{i:012d}.jpg", "width": 80, "height": 120} for i in objects]
    (root / "instances.json").write_text(json.dumps({"images": coco_images, "annotations": anns,
                                                     "categories": categories}))
    (root / "captions.json").write_text(json.dumps({"images": coco_images, "annotations": caps}))
    questions = [{"question_id": q + 1, "image": f"COCO_val2014_{i:012d}.jpg", "text": f"Is there a {o} in the "
                  f"image?", "label": label} for q, (i, o, label) in enumerate(
        [(i, objs[0], "yes") for i, objs in objects.items()] + [(i, "zebra", "no") for i in objects])]
    (root / "coco_pope_random.json").write_text("".join(json.dumps(q) + "\n" for q in questions))
    return root


def _argv(task: str, data: Path, out: Path) -> list[str]:
    common = ["--output-path", str(out), "--no-progress"]
    if task == "pope":
        return ["eval", "pope", "--model", "tiny-llava", "--data", str(data / "coco_pope_random.json"), "--images",
                str(data / "images"), "--max-new-tokens", "2", "--batch-size", "2", *common]
    if task == "chair":
        return ["eval", "chair", "--model", "tiny-llava", "--images", str(data / "images"), "--instances",
                str(data / "instances.json"), "--captions", str(data / "captions.json"), "--num-images", "5",
                "--max-new-tokens", "6", *common]
    if task == "passkey":
        return ["eval", "passkey", "--model", "tiny-llama", "--dtype", "float32", "--lengths", "100,140",
                "--trials", "2", "--max-new-tokens", "3", *common]
    if task == "niah":
        return ["eval", "niah", "--model", "tiny-llama", "--dtype", "float32", "--lengths", "100,150", "--depths",
                "0,50,100", "--max-new-tokens", "4", "--no-heatmap", *common]
    return ["eval", "longppl", "--model", "tiny-llama", "--dtype", "float32", "--max-tokens", "240", "--window",
            "80", "--starts", "0,40,80,120", *common]


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    """What must not change between two runs: the scored metrics (not timings or memory), configs, sample counts,
    the hash of the stable per-sample records, data files and errors."""
    keep = ("configs", "n-samples", "task_hashes", "data_files", "errors", "higher_is_better")
    out = {k: results[k] for k in keep}
    for task, entry in results["results"].items():
        scored = set(results["higher_is_better"][task])
        out[task] = {k: v for k, v in entry.items() if k.split(",")[0].split("/")[-1] in scored | {"n_errors"}}
        assert out[task], "no scored metric to compare"
    return out


TASKS = ["pope", "chair", "passkey", "niah", "longppl"]


def test_every_built_in_task_is_covered() -> None:
    from hookkit.registry import TASKS as REGISTERED

    assert sorted(TASKS) == sorted(n for n in REGISTERED.names() if n != "pope-build")


@pytest.mark.parametrize("task", TASKS)
def test_sigkill_then_resume_equals_an_uninterrupted_run(task: str, data: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    clean = tmp_path / "clean"
    assert main(_argv(task, data, clean)) == 0
    name = task
    clean_records = read_jsonl(clean / f"samples_{name}.jsonl")[0]
    writes = len(clean_records) if task != "pope" else (len(clean_records) + 1) // 2  # batch 2: one write each
    assert writes >= 3, "the fixture must give the kill some room"

    rng = random.Random(f"{task}-kill")  # seeded: the same kill point on every run
    kill_at, mode = rng.randrange(2, writes + 1), rng.choice(["between", "torn"])
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               OMP_NUM_THREADS="1", HK_KILL_SEED=str(kill_at), HK_KILL_AT=str(kill_at), HK_KILL_MODE=mode)
    killed = tmp_path / "killed"
    argv = _argv(task, data, killed)
    proc = subprocess.run([sys.executable, str(script), *argv], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    assert not (killed / f"results_{name}.json").exists()
    partial = killed / f"samples_{name}.rank0.jsonl"
    survived, _, torn = read_jsonl(partial)
    assert torn == (mode == "torn") and 0 < len(survived) < len(clean_records)

    assert main(argv) == 2  # without --resume nothing is overwritten
    assert "--resume" in capsys.readouterr().err
    assert main(argv + ["--resume"]) == 0
    resumed_records = read_jsonl(killed / f"samples_{name}.jsonl")[0]
    ids = [r["sample_id"] for r in resumed_records]
    assert len(ids) == len(set(ids)) == len(clean_records)
    assert [stable_record(r) for r in resumed_records] == [stable_record(r) for r in clean_records]
    resumed = validate_results_file(killed / f"results_{name}.json")
    assert _comparable(resumed) == _comparable(validate_results_file(clean / f"results_{name}.json"))
    assert resumed["timings"]["n_samples_resumed"] == len(survived)
