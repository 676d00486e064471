"""Tests of the evaluation runner and the results schema (toy task, no models).

The toy task squares integers; its source lives in ``TOY_SCRIPT`` below, is written to a temp file and is both
imported in-process and run as a script (for the kill-and-resume and ``accelerate launch`` tests).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hookkit.evals.files import canonical_json, sha256_of, sha256_text, to_jsonable, write_json_atomic
from hookkit.evals.results import (
    REQUIRED_KEYS,
    RESULTS_SCHEMA_VERSION,
    build_results,
    stable_record,
    validate_results,
    validate_results_file,
)
from hookkit.evals.runner import SampleError, SampleLog, evaluate, read_jsonl, run_samples

REPO_ROOT = Path(__file__).resolve().parents[1]
TASK = "toy_squares"

TOY_SCRIPT = textwrap.dedent(
    '''
    """Toy hookkit task: square integers (importable, and runnable as an eval script)."""
    import argparse
    import os
    import signal

    from hookkit.evals.runner import EvalTask, SampleError, evaluate
    from hookkit.evals.files import data_file_entry
    from hookkit.evals.results import mean_stderr


    class SquaresTask(EvalTask):
        name = "toy_squares"
        version = "1"

        def __init__(self, n=24, bad=(), unnamed_bad=(), die_after=None, calls_file=None, data_file=None):
            self.n = n
            self.bad = set(bad)
            self.unnamed_bad = set(unnamed_bad)
            self.die_after = die_after
            self.calls_file = calls_file
            self.data_file = data_file
            self.n_predicted = 0

        def samples(self):
            return [{"sample_id": f"sq-{i:03d}", "x": i} for i in range(self.n)]

        def predict(self, batch):
            if self.die_after is not None and self.n_predicted + len(batch) > self.die_after:
                os.kill(os.getpid(), signal.SIGKILL)  # a real kill: no cleanup, no flush
            for s in batch:
                if s["x"] in self.bad:
                    raise SampleError(s["sample_id"], f"cannot square {s['x']}")
                if s["x"] in self.unnamed_bad and len(batch) > 1:
                    raise SampleError(None, "batch failed")
                if s["x"] in self.unnamed_bad:
                    raise SampleError(s["sample_id"], "unnamed-bad sample")
            self.n_predicted += len(batch)
            if self.calls_file:
                with open(self.calls_file, "a") as f:
                    f.write("".join(s["sample_id"] + "\\n" for s in batch))
            # every third target is wrong so accuracy is not trivially 1
            return [
                {"sample_id": s["sample_id"], "x": s["x"], "pred": s["x"] ** 2,
                 "target": s["x"] ** 2 + (1 if s["x"] % 3 == 0 else 0), "_prefill_s": 0.001}
                for s in batch
            ]

        def aggregate(self, records):
            acc, se = mean_stderr([float(r["pred"] == r["target"]) for r in records])
            return {"acc": acc, "acc_stderr": se, "sum_pred": sum(r["pred"] for r in records),
                    "confusion": {"right": sum(r["pred"] == r["target"] for r in records)}}

        def config(self):
            return {"prompt_template": "What is {x} squared?", "parser": "int_v1",
                    "generation_kwargs": {"do_sample": False, "max_new_tokens": 4}}

        def data_files(self):
            return [data_file_entry(self.data_file, "numbers", version="v1")] if self.data_file else []

        def higher_is_better(self):
            return {"acc": True}


    MODEL_INFO = {"model": "toy/square-1", "dtype": "float32", "device": "cpu"}


    if __name__ == "__main__":
        p = argparse.ArgumentParser()
        p.add_argument("out")
        p.add_argument("--n", type=int, default=24)
        p.add_argument("--batch-size", type=int, default=1)
        p.add_argument("--die-after", type=int, default=None)
        p.add_argument("--die-rank", type=int, default=None)
        p.add_argument("--calls-dir", default=None)
        p.add_argument("--data-file", default=None)
        p.add_argument("--resume", action="store_true")
        a = p.parse_args()
        rank = int(os.environ.get("RANK", "0"))
        die = a.die_after if a.die_rank in (None, rank) else None
        calls = os.path.join(a.calls_dir, f"calls.rank{rank}.txt") if a.calls_dir else None
        task = SquaresTask(n=a.n, die_after=die, calls_file=calls, data_file=a.data_file)
        evaluate(task, output_dir=a.out, model_info=MODEL_INFO, seed=7, resume=a.resume,
                 batch_size=a.batch_size, progress=False, cli_args={"tasks": "toy_squares"})
    '''
)


# ----------------------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The toy task module (written from ``TOY_SCRIPT``); ``toy.script`` is its path."""
    path = tmp_path_factory.mktemp("toy") / "toy_squares_eval.py"
    path.write_text(TOY_SCRIPT)
    spec = importlib.util.spec_from_file_location("toy_squares_eval", path)
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    module.script = path
    return module


@pytest.fixture()
def data_file(tmp_path: Path) -> Path:
    path = tmp_path / "numbers.txt"
    path.write_text("0..23\n")
    return path


def _run(toy: Any, out: Path, data_file: Path | None = None, **kwargs: Any) -> dict[str, Any]:
    task_kw = {k: kwargs.pop(k) for k in ("n", "bad", "unnamed_bad") if k in kwargs}
    task = toy.SquaresTask(data_file=str(data_file) if data_file else None, **task_kw)
    kwargs.setdefault("seed", 7)
    kwargs.setdefault("progress", False)
    kwargs.setdefault("cli_args", {"tasks": TASK})
    return evaluate(task, output_dir=out, model_info=toy.MODEL_INFO, **kwargs)


def _comparable(results: dict[str, Any]) -> dict[str, Any]:
    """Results without the fields that legitimately vary between runs (time, memory, process count, env)."""
    keep = ("results", "configs", "versions", "n-samples", "task_hashes", "intervention", "intervention_hash")
    out = {k: results[k] for k in keep}
    out.update({k: results[k] for k in ("data_files", "seeds", "errors", "samples_file", "higher_is_better")})
    out["config"] = {k: v for k, v in results["config"].items() if k != "num_processes"}
    return out


def _samples(out: Path) -> list[dict[str, Any]]:
    """Stable fields of every line of the merged samples file, in file order."""
    lines = (out / f"samples_{TASK}.jsonl").read_text().splitlines()
    return [stable_record(json.loads(line)) for line in lines]


def _subprocess_env(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",  # CPU gloo group even on GPU hosts
        HF_HOME=str(tmp_path / "hf_home"),  # no user accelerate config
        PYTHONUNBUFFERED="1",
    )
    return env


def _no_tmp_files(directory: Path) -> bool:
    return not [p for p in directory.iterdir() if p.name.startswith(".") or p.name.endswith(".tmp")]


# ----------------------------------------------------------------------------------------------------------------
# schema
# ----------------------------------------------------------------------------------------------------------------


def test_canonical_json_is_order_and_type_stable() -> None:
    a = {"b": [1, 2.5, (3, 4)], "a": {"y": Path("x/y"), "x": np.float32(0.5)}, "c": {3, 1, 2}}
    b = {"c": {2, 3, 1}, "a": {"x": 0.5, "y": "x/y"}, "b": [1, 2.5, [3, 4]]}
    assert canonical_json(a) == canonical_json(b) == '{"a":{"x":0.5,"y":"x/y"},"b":[1,2.5,[3,4]],"c":[1,2,3]}'
    assert sha256_of(a) == sha256_of(b)
    assert to_jsonable({"n": math.nan, "i": -math.inf, "k": np.int64(3)}) == {"n": "NaN", "i": "-Infinity", "k": 3}
    with pytest.raises(TypeError, match="bytes"):
        canonical_json({"x": b"raw"})


def test_results_validate_and_hashes_stable(toy: Any, tmp_path: Path, data_file: Path) -> None:
    recipe = {"method": "toy_shift", "params": {"alpha": 0.5}, "layers": [3, 4]}
    r1 = _run(toy, tmp_path / "a", data_file, intervention=recipe, batch_size=3)
    r2 = _run(toy, tmp_path / "b", data_file, intervention=dict(reversed(list(recipe.items()))), batch_size=5)

    for out, res in ((tmp_path / "a", r1), (tmp_path / "b", r2)):
        assert validate_results(res) is res
        on_disk = validate_results_file(out / f"results_{TASK}.json")
        assert on_disk == json.loads(json.dumps(res))
        assert set(REQUIRED_KEYS) <= set(on_disk)
        assert _no_tmp_files(out)
        names = sorted(p.name for p in out.iterdir())
        assert names == [f"results_{TASK}.json", f"run_{TASK}.manifest.json", f"samples_{TASK}.jsonl"]

    assert r1["schema_version"] == RESULTS_SCHEMA_VERSION
    res = r1["results"][TASK]
    assert res["acc,none"] == pytest.approx(16 / 24) and res["n_errors"] == 0
    assert isinstance(res["acc_stderr,none"], float)
    assert res["sum_pred_stderr,none"] == "N/A"  # lm-eval convention when a task gives no stderr
    assert res["confusion,none"] == {"right": 16}
    cfg = r1["configs"][TASK]
    assert cfg["prompt_template_sha256"] == sha256_text("What is {x} squared?")
    assert cfg["parser"] == "int_v1" and cfg["generation_kwargs"]["do_sample"] is False
    assert r1["n-samples"][TASK] == {"original": 24, "effective": 24}
    assert r1["config"]["model"] == "toy/square-1" and r1["config"]["seed"] == 7
    assert r1["config"]["resolved_cli_args"] == {"tasks": TASK}
    assert r1["intervention"] == recipe and r1["intervention_hash"] == sha256_of(recipe)
    assert r1["data_files"][0]["role"] == "numbers" and r1["data_files"][0]["version"] == "v1"
    assert r1["samples_file"] == f"samples_{TASK}.jsonl"
    assert r1["timings"]["per_sample_mean_s"] > 0 and r1["timings"]["prefill_s_mean"] == pytest.approx(0.001)
    assert r1["timings"]["n_samples_run"] == 24
    assert r1["peak_memory"]["cpu_max_rss_bytes"] > 10 * 2**20
    assert "torch" in r1["env"] and r1["pretty_env_info"].startswith("python:")

    # batch size and dict order change nothing stable
    assert r1["task_hashes"] == r2["task_hashes"]
    assert r1["intervention_hash"] == r2["intervention_hash"]
    assert _samples(tmp_path / "a") == _samples(tmp_path / "b")
    assert [r["sample_id"] for r in _samples(tmp_path / "a")] == [f"sq-{i:03d}" for i in range(24)]

    # a limit changes n-samples.effective and the hash
    r3 = _run(toy, tmp_path / "c", limit=10)
    assert r3["n-samples"][TASK] == {"original": 24, "effective": 10}
    assert r3["task_hashes"] != r1["task_hashes"]


def test_validate_results_names_the_bad_key(toy: Any, tmp_path: Path) -> None:
    good = _run(toy, tmp_path / "out")

    def broken(mutate: Any) -> dict[str, Any]:
        d = json.loads(json.dumps(good))
        mutate(d)
        return d

    cases = [
        (lambda d: d.pop("task_hashes"), "'task_hashes' is missing"),
        (lambda d: d["n-samples"][TASK].update(effective="24"), "'n-samples.toy_squares.effective' must be int"),
        (lambda d: d["results"][TASK].update({"acc": 1.0}), "'results.toy_squares.acc' is not a 'metric,filter'"),
        (lambda d: d.update(intervention_hash="0" * 64), "'intervention_hash' must be null exactly"),
        (lambda d: d["task_hashes"].update({TASK: "xyz"}), "'task_hashes.toy_squares' must be a lowercase hex"),
        (lambda d: d["config"].update(num_processes=True), "'config.num_processes' must be int, got bool"),
        (lambda d: d["data_files"].append({"path": "p", "role": "r"}), "'data_files[0].sha256' is missing"),
        (lambda d: d["errors"][TASK].update(count=2), "'errors.toy_squares.count'"),
    ]
    for mutate, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            validate_results(broken(mutate))
    bad_file = tmp_path / "bad.json"
    bad_file.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        validate_results_file(bad_file)


def test_build_results_standalone() -> None:
    records = [{"sample_id": "a", "pred": 1, "_time_s": 0.5}, {"sample_id": "b", "error": "boom"}]
    res = build_results(
        task="t", metrics={"f1": 0.5}, n_original=3, n_effective=2, records=records, git_hash=None, date=0.0
    )
    validate_results(res)
    assert res["errors"]["t"] == {"count": 1, "sample_ids": ["b"]} and res["results"]["t"]["n_errors"] == 1
    assert res["date_iso"] == "1970-01-01T00:00:00+00:00"
    assert res["intervention"] is None and res["intervention_hash"] is None
    # volatile "_" keys do not enter the task hash
    same = build_results(
        task="t",
        metrics={"f1": 0.5},
        n_original=3,
        n_effective=2,
        records=[{"sample_id": "b", "error": "boom"}, {"sample_id": "a", "pred": 1, "_time_s": 9.0}],
    )
    assert same["task_hashes"] == res["task_hashes"]


def test_write_json_atomic(tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    write_json_atomic(path, {"a": 1, "nan": float("nan")})
    assert json.loads(path.read_text()) == {"a": 1, "nan": "NaN"}
    with pytest.raises(TypeError):
        write_json_atomic(path, {"a": object()})
    assert json.loads(path.read_text()) == {"a": 1, "nan": "NaN"}  # old content intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # no temp file left


# ----------------------------------------------------------------------------------------------------------------
# SampleLog and run_samples
# ----------------------------------------------------------------------------------------------------------------


def test_sample_log_repairs_torn_line_and_dedups(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "log.jsonl"
    with SampleLog(path) as log:
        log.append({"sample_id": "a", "y": 1})
        log.extend([{"sample_id": "b", "y": 2}, {"sample_id": "a", "y": 99}, {"sample_id": "c", "y": "\u2028"}])
    with open(path, "ab") as f:
        f.write(b'{"sample_id":"d","y":')  # a write cut short by a kill
    caplog.set_level(logging.WARNING, logger="hookkit.evals.runner")
    with SampleLog(path) as log:
        assert "torn last line" in caplog.text
        assert path.read_bytes().endswith(b"\n")
        assert log.completed_ids() == {"a", "b", "c"}
        assert [(r["sample_id"], r["y"]) for r in log.records()] == [("a", 1), ("b", 2), ("c", "\u2028")]
        assert "duplicate records for sample 'a'" in caplog.text
        log.append({"sample_id": "d", "y": 4})
    records, _, torn = read_jsonl(path)
    assert not torn and [r["sample_id"] for r in records] == ["a", "b", "a", "c", "d"]
    path.write_text('{"sample_id":"a"}\n{broken\n{"sample_id":"b"}\n')
    with pytest.raises(ValueError, match=r"log.jsonl:2: corrupt JSON line"):
        SampleLog(path)


def test_run_samples_resume_order_and_limit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    samples = [{"sample_id": f"s{i}", "x": i} for i in range(10)]
    calls: list[str] = []

    def predict(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        calls.extend(s["sample_id"] for s in batch)
        return [{"sample_id": s["sample_id"], "y": s["x"] * 2} for s in reversed(batch)]  # any order is fine

    log_path = tmp_path / "s.jsonl"
    first = run_samples(samples, predict, log=log_path, batch_size=3, limit=4, progress=False)
    assert [r["sample_id"] for r in first] == ["s0", "s1", "s2", "s3"]
    capsys.readouterr()
    out = run_samples(samples, predict, log=log_path, batch_size=3, skip_ids={"s9"}, desc="toy")
    bar = capsys.readouterr().err
    assert "toy:  50%" in bar and "10/10" in bar  # tqdm starts at the 4 + 1 samples already done
    assert calls == [f"s{i}" for i in range(9)]  # s0-s3 not redone, s9 skipped
    assert [r["sample_id"] for r in out] == [f"s{i}" for i in range(9)]
    assert all(r["y"] == 2 * int(r["sample_id"][1:]) and r["_time_s"] >= 0 for r in out)
    with pytest.raises(FileExistsError, match="resume=True"):
        run_samples(samples, predict, log=log_path, resume=False, progress=False)
    with pytest.raises(ValueError, match="duplicate sample_id 's1'"):
        run_samples([*samples, {"sample_id": "s1"}], predict, log=tmp_path / "x.jsonl", progress=False)
    with pytest.raises(ValueError, match="must return a list of 2 records"):
        run_samples(samples, lambda b: b[:1], log=tmp_path / "y.jsonl", batch_size=2, progress=False)


# ----------------------------------------------------------------------------------------------------------------
# errors, overwrite protection
# ----------------------------------------------------------------------------------------------------------------


def test_per_sample_error_isolation(toy: Any, tmp_path: Path) -> None:
    res = _run(toy, tmp_path / "named", bad=[5, 17], batch_size=4)
    lines = _samples(tmp_path / "named")
    errors = {r["sample_id"]: r for r in lines if "error" in r}
    assert set(errors) == {"sq-005", "sq-017"}
    assert errors["sq-005"]["error"] == "cannot square 5" and errors["sq-005"]["error_type"] == "SampleError"
    assert all(r["pred"] == r["x"] ** 2 for r in lines if "error" not in r) and len(lines) == 24
    assert res["results"][TASK]["n_errors"] == 2
    assert res["errors"][TASK] == {"count": 2, "sample_ids": ["sq-005", "sq-017"]}
    assert res["results"][TASK]["sum_pred,none"] == sum(i * i for i in range(24) if i not in (5, 17))
    assert res["n-samples"][TASK]["effective"] == 24

    # an error that does not name its sample: the batch is re-run one by one, only the bad one fails
    res2 = _run(toy, tmp_path / "unnamed", unnamed_bad=[6], batch_size=4)
    assert res2["errors"][TASK]["sample_ids"] == ["sq-006"]
    assert res2["results"][TASK]["sum_pred,none"] == sum(i * i for i in range(24) if i != 6)

    # any other exception is a bug: it propagates, finished batches stay on disk for a resume
    task = toy.SquaresTask(n=8)
    original = task.predict

    def crashing(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
        if batch[0]["x"] >= 4:
            raise RuntimeError("model crashed")
        return original(batch)

    with pytest.raises(RuntimeError, match="model crashed"):
        evaluate(task, output_dir=tmp_path / "crash", model_info=toy.MODEL_INFO, predict_fn=crashing, progress=False)
    assert len(read_jsonl(tmp_path / "crash" / f"samples_{TASK}.rank0.jsonl")[0]) == 4

    # retry_errors re-runs errored samples on resume, and the success supersedes the error record
    fixed = _run(toy, tmp_path / "named", resume=True, retry_errors=True, batch_size=4)
    assert fixed["results"][TASK]["n_errors"] == 0 and fixed["timings"]["n_samples_run"] == 2
    assert len(_samples(tmp_path / "named")) == 24


def test_refuses_to_overwrite_without_resume(toy: Any, tmp_path: Path) -> None:
    out = tmp_path / "out"
    _run(toy, out, n=6)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match=r"resume=True \(--resume\).*new output directory"):
        _run(toy, out, n=6)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # resuming a finished run recomputes the same results without re-running anything
    again = _run(toy, out, n=6, resume=True)
    assert again["timings"]["n_samples_run"] == 0 and again["timings"]["n_samples_resumed"] == 6
    # resuming with another configuration would mix results: refused
    with pytest.raises(ValueError, match="different intervention_hash"):
        _run(toy, out, n=6, resume=True, intervention={"method": "x"})
    with pytest.raises(ValueError, match="different seed"):
        _run(toy, out, n=6, resume=True, seed=8)


def test_resume_with_other_limit_loses_nothing(toy: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    out = tmp_path / "out"
    full = _run(toy, out, n=10)
    caplog.set_level(logging.WARNING, logger="hookkit.evals.runner")
    small = _run(toy, out, n=10, limit=4, resume=True)
    assert "not among this run's 4 samples" in caplog.text
    assert small["n-samples"][TASK] == {"original": 10, "effective": 4} and small["timings"]["n_samples_run"] == 0
    assert len(_samples(out)) == 4 and len(read_jsonl(out / f"samples_{TASK}.rank0.jsonl")[0]) == 6
    again = _run(toy, out, n=10, resume=True)  # the 6 records set aside are used again, nothing re-run
    assert again["timings"]["n_samples_run"] == 0 and _comparable(again) == _comparable(full)
    assert not list(out.glob("*.rank*.jsonl"))


def test_resume_extends_a_run_along_extendable_config_keys(toy: Any, tmp_path: Path) -> None:
    """A key in ``extendable_config_keys`` may change on resume (only the new samples run); others may not."""

    class Sized(toy.SquaresTask):
        extendable_config_keys = ("n",)

        def __init__(self, n: int, parser: str = "int_v1") -> None:
            super().__init__(n=n)
            self.parser = parser

        def config(self) -> dict[str, Any]:
            return {**super().config(), "n": self.n, "parser": self.parser}

    def run(task: Any, **kw: Any) -> dict[str, Any]:
        return evaluate(task, output_dir=out, model_info=toy.MODEL_INFO, seed=7, progress=False, **kw)

    out = tmp_path / "out"
    run(Sized(4))
    grown = run(Sized(10), resume=True)
    assert grown["timings"]["n_samples_run"] == 6 and grown["timings"]["n_samples_resumed"] == 4
    assert [r["sample_id"] for r in _samples(out)] == [f"sq-{i:03d}" for i in range(10)]
    manifest = json.loads((out / f"run_{TASK}.manifest.json").read_text())
    assert manifest["fields"]["task_config"]["n"] == 10  # the manifest follows the extended run
    assert _comparable(grown)["results"] == _comparable(_run(toy, tmp_path / "clean", n=10))["results"]
    with pytest.raises(ValueError, match="different task_config"):
        run(Sized(10, parser="int_v2"), resume=True)


# ----------------------------------------------------------------------------------------------------------------
# kill and resume
# ----------------------------------------------------------------------------------------------------------------


def test_kill_and_resume_matches_clean_run(
    toy: Any, tmp_path: Path, data_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "killed"
    cmd = [sys.executable, str(toy.script), str(out), "--batch-size", "3", "--die-after", "10"]
    cmd += ["--data-file", str(data_file)]
    proc = subprocess.run(cmd, env=_subprocess_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr  # SIGKILL
    shard = out / f"samples_{TASK}.rank0.jsonl"
    assert not (out / f"results_{TASK}.json").exists()
    assert len(read_jsonl(shard)[0]) == 9  # three batches of 3 made it to disk, the fourth was in flight
    with open(shard, "ab") as f:
        f.write(b'{"sample_id":"sq-009","x":9,"pr')  # and simulate a write torn by the kill

    with pytest.raises(FileExistsError):
        _run(toy, out, data_file)
    caplog.set_level(logging.WARNING, logger="hookkit.evals.runner")
    resumed = _run(toy, out, data_file, resume=True, batch_size=3)
    assert "torn last line" in caplog.text
    assert resumed["timings"]["n_samples_run"] == 15 and resumed["timings"]["n_samples_resumed"] == 9

    clean = _run(toy, tmp_path / "clean", data_file, batch_size=3)
    assert _comparable(resumed) == _comparable(clean)
    assert _samples(out) == _samples(tmp_path / "clean")
    ids = [r["sample_id"] for r in _samples(out)]
    assert len(ids) == len(set(ids)) == 24
    assert not shard.exists() and _no_tmp_files(out)


# ----------------------------------------------------------------------------------------------------------------
# data parallel: accelerate launch, 2 CPU processes
# ----------------------------------------------------------------------------------------------------------------


def _launch(toy: Any, tmp_path: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    # `accelerate launch --cpu` starts ONE process unless MPI is configured; the torchrun path (`--multi_gpu`)
    # starts N, and on a machine without CUDA the runner's PartialState(cpu=True) joins them in a gloo group.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]
    cmd += [str(toy.script), str(out), *extra]
    return subprocess.run(cmd, env=_subprocess_env(tmp_path), capture_output=True, text=True, timeout=300)


def test_data_parallel_two_processes_match_single_process(toy: Any, tmp_path: Path, data_file: Path) -> None:
    out, calls = tmp_path / "dp", tmp_path / "calls"
    calls.mkdir()
    proc = _launch(toy, tmp_path, out, "--batch-size", "2", "--calls-dir", str(calls), "--data-file", str(data_file))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    parallel = validate_results_file(out / f"results_{TASK}.json")
    assert parallel["config"]["num_processes"] == 2
    assert len(parallel["peak_memory"]["per_rank"]) == 2
    single = _run(toy, tmp_path / "single", data_file, batch_size=2)
    assert single["config"]["num_processes"] == 1
    assert _comparable(parallel) == _comparable(single)
    assert _samples(out) == _samples(tmp_path / "single")

    per_rank = {p.name: p.read_text().split() for p in sorted(calls.iterdir())}
    assert sorted(per_rank) == ["calls.rank0.txt", "calls.rank1.txt"]
    assert per_rank["calls.rank0.txt"] == [f"sq-{i:03d}" for i in range(0, 24, 2)]  # index % 2 == rank
    assert per_rank["calls.rank1.txt"] == [f"sq-{i:03d}" for i in range(1, 24, 2)]
    assert sorted(p.name for p in out.iterdir()) == [
        f"results_{TASK}.json",
        f"run_{TASK}.manifest.json",
        f"samples_{TASK}.jsonl",
    ]


def test_data_parallel_kill_then_resume_with_other_world_size(toy: Any, tmp_path: Path) -> None:
    out = tmp_path / "dp"
    proc = _launch(toy, tmp_path, out, "--die-after", "5", "--die-rank", "1")
    assert proc.returncode != 0
    assert not (out / f"results_{TASK}.json").exists()
    rank1 = read_jsonl(out / f"samples_{TASK}.rank1.jsonl")[0]
    assert len(rank1) == 5
    # resume the 2-process run in a single process: the rank-1 log of the dead run is picked up, not redone
    resumed = _run(toy, out, resume=True)
    timings = resumed["timings"]
    assert timings["n_samples_resumed"] >= 5 and timings["n_samples_run"] + timings["n_samples_resumed"] == 24
    clean = _run(toy, tmp_path / "clean")
    assert _comparable(resumed) == _comparable(clean)
    assert _samples(out) == _samples(tmp_path / "clean")
    assert not list(out.glob("*.rank*.jsonl"))


def test_sample_error_carries_id() -> None:
    err = SampleError("sq-001", "too long")
    assert err.sample_id == "sq-001" and err.message == "too long" and "sq-001" in str(err)
