"""The one hookkit results schema, shared by every evaluation task.

A results file (``results_<task>.json``) reuses the top-level keys of lm-evaluation-harness
(``results``, ``configs``, ``versions``, ``n-samples``, ``config``, ``git_hash``, ``date``,
``pretty_env_info``, ``transformers_version``, ``task_hashes``, ``higher_is_better``) so tools written for
lm-eval can read it, and adds what an intervention study needs:

``schema_version``
    :data:`RESULTS_SCHEMA_VERSION`.
``intervention`` / ``intervention_hash``
    The intervention recipe (``null`` for the stock model) and :func:`sha256_of` of it.
``data_files``
    ``[{"path", "sha256", "role", "version"?}]`` for every data file the task read.
``seeds``
    The seeds that were set (python / numpy / torch and the per-batch reseeding rule).
``timings``
    Seconds: ``total_s`` (wall time of the invocation that wrote the file), ``per_sample_mean_s`` and, when the
    per-sample records carry them, ``prefill_s_mean`` / ``decode_s_mean``.
``peak_memory``
    Bytes: CPU max RSS (``resource.getrusage``) and CUDA ``max_memory_allocated`` (``null`` without CUDA).
``errors``
    Per task ``{"count", "sample_ids"}``: samples whose record carries an ``"error"`` (never silently dropped).
``samples_file``
    Path of the per-sample JSONL, relative to the results file.
``env``
    Library versions, platform and device (``pretty_env_info`` is the same as text).

Metric keys in ``results[task]`` follow lm-eval's ``"<metric>,<filter>"`` style (``"f1,none"``,
``"f1_stderr,none"``); the reserved keys ``"alias"`` and ``"n_errors"`` sit beside them.

Hashes use :func:`canonical_json` (sorted keys, no whitespace, non-finite floats as strings), so they do not
depend on dict insertion order or on the Python version.  Per-sample record keys that start with ``_`` (timings,
debug data) are *volatile*: they are excluded from ``task_hashes``.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from hookkit.evals.files import sha256_of, sha256_text, to_jsonable
from hookkit.evals.memory import peak_memory_stats

logger = logging.getLogger(__name__)


RESULTS_SCHEMA_VERSION = "1.0"
"""Version of the results layout written by :func:`build_results`; bump on incompatible changes."""


#: Keys of ``results[task]`` that are not ``"metric,filter"`` metric keys.
RESERVED_RESULT_KEYS = frozenset({"alias", "n_errors"})


#: Every top-level key a valid results dict carries.
REQUIRED_KEYS: tuple[str, ...] = (
    "schema_version",
    "results",
    "configs",
    "versions",
    "higher_is_better",
    "n-samples",
    "config",
    "git_hash",
    "date",
    "date_iso",
    "pretty_env_info",
    "env",
    "transformers_version",
    "hookkit_version",
    "task_hashes",
    "intervention",
    "intervention_hash",
    "data_files",
    "seeds",
    "timings",
    "peak_memory",
    "errors",
    "samples_file",
)


_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


_METRIC_KEY_RE = re.compile(r"^[^,]+,[^,]+$")


def intervention_record(recipe: Any, model: Any) -> dict[str, Any] | None:
    """``results["intervention"]``: the recipe, its own hash (tensor bytes included) and the model fingerprint
    (eval-protocols.md §8); None for the stock model. Every entry point (``hookkit eval``, the demos, the harness
    plug-ins) records it this way, so runs of one recipe can be matched by ``recipe_hash``."""
    if recipe is None:
        return None
    from hookkit.core.session import get_model_info

    return {"recipe": recipe.to_dict(), "recipe_hash": recipe.hash(),
            "model_fingerprint": get_model_info(model).fingerprint()}


def stable_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A per-sample record without its volatile keys (those starting with ``_``: timings, debug data)."""
    return {k: v for k, v in record.items() if not str(k).startswith("_")}


def task_hash(records: Iterable[Mapping[str, Any]]) -> str:
    """SHA-256 over the stable fields of per-sample records, ordered by ``sample_id`` (order independent)."""
    stable = sorted((stable_record(r) for r in records), key=lambda r: str(r.get("sample_id")))
    return sha256_of(stable)


def _dist_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def hookkit_version() -> str | None:
    """Installed hookkit version, else ``hookkit.__version__``, else the ``pyproject.toml`` version, else None."""
    version = _dist_version("hookkit")
    if version:
        return version
    try:
        import hookkit

        version = getattr(hookkit, "__version__", None)
    except ImportError:  # pragma: no cover - we are inside hookkit
        version = None
    if version:
        return str(version)
    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        match = re.search(r'^version\s*=\s*"([^"]+)"', pyproject.read_text(encoding="utf-8"), re.MULTILINE)
    except OSError:
        return None
    return match.group(1) if match else None


def get_git_hash(path: str | os.PathLike[str] | None = None) -> str | None:
    """Commit hash (``git rev-parse HEAD``) of the repository holding ``path`` (default: the hookkit source).

    A ``"-dirty"`` suffix marks uncommitted changes to tracked files.  Returns None outside a git checkout, when
    the repository has no commit yet or git is missing.
    """
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head or None


def collect_env_info(device: str | None = None) -> dict[str, Any]:
    """Cheap reproducibility info: Python, library versions, platform, CPU count, CUDA devices.

    (``torch.utils.collect_env`` is far more thorough but takes seconds and shells out; this is enough to say
    which stack produced a number.)
    """
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_count": os.cpu_count(),
        "hookkit": hookkit_version(),
        "torch": _dist_version("torch"),
        "transformers": _dist_version("transformers"),
        "accelerate": _dist_version("accelerate"),
        "numpy": _dist_version("numpy"),
        "tqdm": _dist_version("tqdm"),
        "device": device,
        "cuda_available": False,
        "cuda_version": None,
        "gpus": [],
    }
    torch = sys.modules.get("torch")
    if torch is not None:
        info["cuda_version"] = getattr(torch.version, "cuda", None)
        try:
            if torch.cuda.is_available():
                info["cuda_available"] = True
                info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        except Exception:  # noqa: BLE001 - env probing must never fail a run
            logger.debug("could not query CUDA devices", exc_info=True)
    return info


def pretty_env_info(info: Mapping[str, Any]) -> str:
    """Render :func:`collect_env_info` output as ``key: value`` lines (lm-eval's ``pretty_env_info`` slot)."""
    return "\n".join(f"{key}: {value}" for key, value in info.items())


def metric_key(name: str, filter_name: str = "none") -> str:
    """lm-eval style metric key: ``metric_key("f1") == "f1,none"`` (names already holding a comma pass through)."""
    return name if "," in name else f"{name},{filter_name}"


def mean_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and standard error of the mean (sample std / sqrt(n)); stderr is None for fewer than two values."""
    n = len(values)
    if n == 0:
        return float("nan"), None
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def format_metrics(metrics: Mapping[str, Any], filter_name: str = "none") -> dict[str, Any]:
    """Turn ``{"f1": 0.9, "f1_stderr": 0.01, "unknown_rate": 0.0}`` into lm-eval keys.

    Every numeric metric gets a ``"<metric>_stderr,<filter>"`` entry; when the task did not provide one it is
    ``"N/A"`` (lm-eval's convention).  Non-numeric values (confusion matrices, per-bucket dicts) are kept as is.
    """
    out: dict[str, Any] = {}
    names = {k.split(",")[0] for k in metrics}
    for key, value in metrics.items():
        out[metric_key(key, filter_name)] = value
        base = key.split(",")[0]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and not base.endswith("_stderr") and f"{base}_stderr" not in names:
            filt = key.split(",")[1] if "," in key else filter_name
            out[f"{base}_stderr,{filt}"] = "N/A"
    return out


def summarize_timings(records: Sequence[Mapping[str, Any]], total_s: float | None) -> dict[str, Any]:
    """``timings`` block from per-sample records' volatile ``_time_s`` / ``_prefill_s`` / ``_decode_s`` fields."""

    def _mean(key: str) -> float | None:
        vals = [float(r[key]) for r in records if isinstance(r.get(key), (int, float))]
        return math.fsum(vals) / len(vals) if vals else None

    timed = [float(r["_time_s"]) for r in records if isinstance(r.get("_time_s"), (int, float))]
    out: dict[str, Any] = {
        "total_s": total_s,
        "per_sample_mean_s": (math.fsum(timed) / len(timed)) if timed else None,
        "predict_s_sum": math.fsum(timed) if timed else None,
    }
    for key, name in (("_prefill_s", "prefill_s_mean"), ("_decode_s", "decode_s_mean")):
        value = _mean(key)
        if value is not None:
            out[name] = value
    return out


def build_results(
    *,
    task: str,
    metrics: Mapping[str, Any],
    n_original: int,
    n_effective: int,
    records: Sequence[Mapping[str, Any]] | None = None,
    task_hash_value: str | None = None,
    task_config: Mapping[str, Any] | None = None,
    task_version: str | int | float = "0",
    higher_is_better: Mapping[str, bool] | None = None,
    error_ids: Sequence[str] | None = None,
    model_info: Mapping[str, Any] | None = None,
    batch_size: int | str | None = None,
    limit: int | float | None = None,
    seed: int | None = None,
    num_processes: int = 1,
    cli_args: Mapping[str, Any] | None = None,
    intervention: Mapping[str, Any] | None = None,
    data_files: Sequence[Mapping[str, Any]] = (),
    seeds: Mapping[str, Any] | None = None,
    timings: Mapping[str, Any] | None = None,
    peak_memory: Mapping[str, Any] | None = None,
    samples_file: str | None = None,
    env: Mapping[str, Any] | None = None,
    git_hash: str | None = None,
    date: float | None = None,
    filter_name: str = "none",
) -> dict[str, Any]:
    """Assemble the results dict of one task run (see the module docstring for the layout).

    Args:
        task: Task name (the key under ``results``, ``configs``, ...).
        metrics: ``{"f1": 0.91, "f1_stderr": 0.01, ...}`` as returned by the task's ``aggregate`` (plain names
            are turned into ``"name,<filter_name>"``; see :func:`format_metrics`).
        n_original: Samples in the task before ``limit``.
        n_effective: Samples evaluated (after ``limit``), errors included.
        records: The per-sample records; used for ``task_hashes``, the error list (records with a truthy
            ``"error"``) and the timing summary.  Alternatively pass ``task_hash_value`` and ``error_ids``.
        task_config: Task config (prompt template, parser id, decoding config, ...).  If it holds a string
            ``"prompt_template"`` (or ``"chat_template"`` / ``"system_instruction"``) without a matching
            ``"<key>_sha256"``, the SHA-256 of the text is added.
        task_version: Task version (``versions[task]``).
        higher_is_better: ``{"f1": True, ...}``.
        error_ids: Sample ids whose record is an error (derived from ``records`` when None).
        model_info: Model name / path, dtype, device, ... (goes to ``config``; ``"model"`` or ``"name"`` or
            ``"path"`` names the model).
        batch_size, limit, seed, num_processes, cli_args: Run config (``config``; ``cli_args`` becomes
            ``config.resolved_cli_args``).
        intervention: The intervention recipe, or None for the stock model.
        data_files: Entries from :func:`data_file_entry`.
        seeds: Seeds that were set (default ``{"python": seed, "numpy": seed, "torch": seed}``).
        timings: Timing block (default: :func:`summarize_timings` of ``records`` with ``total_s=None``).
        peak_memory: Memory block (default: :func:`peak_memory_stats` of this process).
        samples_file: Path of the per-sample JSONL relative to the results file.
        env: Output of :func:`collect_env_info` (collected when None).
        git_hash: Commit of the hookkit checkout (looked up when None; stays None outside git).
        date: Unix time of the run (now when None).
        filter_name: lm-eval filter part of metric keys.
    """
    if records is None and task_hash_value is None:
        raise ValueError("build_results needs `records` or `task_hash_value` to fill task_hashes")
    model_info = dict(model_info or {})
    cfg = dict(task_config or {})
    for key in ("prompt_template", "chat_template", "system_instruction"):
        if isinstance(cfg.get(key), str) and f"{key}_sha256" not in cfg:
            cfg[f"{key}_sha256"] = sha256_text(cfg[key])
    cfg.setdefault("task", task)

    if error_ids is None:
        error_ids = [str(r.get("sample_id")) for r in (records or ()) if r.get("error")]
    n_errors = len(error_ids)

    result_entry: dict[str, Any] = {"alias": task}
    result_entry.update(format_metrics(metrics, filter_name))
    result_entry["n_errors"] = n_errors

    env = dict(env) if env is not None else collect_env_info(model_info.get("device"))
    when = time.time() if date is None else float(date)
    model_name = model_info.get("model") or model_info.get("name") or model_info.get("path")
    if seeds is None:
        seeds = {"python": seed, "numpy": seed, "torch": seed}

    results: dict[str, Any] = {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "results": {task: result_entry},
        "configs": {task: cfg},
        "versions": {task: task_version},
        "higher_is_better": {task: dict(higher_is_better or {})},
        "n-samples": {task: {"original": int(n_original), "effective": int(n_effective)}},
        "config": {
            "model": None if model_name is None else str(model_name),
            "model_args": model_info,
            "dtype": model_info.get("dtype"),
            "device": model_info.get("device"),
            "batch_size": batch_size,
            "limit": limit,
            "seed": seed,
            "num_processes": int(num_processes),
            "resolved_cli_args": dict(cli_args or {}),
        },
        "git_hash": git_hash if git_hash is not None else get_git_hash(),
        "date": when,
        "date_iso": _dt.datetime.fromtimestamp(when, tz=_dt.timezone.utc).isoformat(timespec="seconds"),
        "pretty_env_info": pretty_env_info(env),
        "env": env,
        "transformers_version": env.get("transformers"),
        "hookkit_version": env.get("hookkit"),
        "task_hashes": {task: task_hash_value if task_hash_value is not None else task_hash(records or [])},
        # Answer-parser id at the top level (eval-protocols.md §8), for tasks that parse answers (POPE).
        "parser": {task: cfg["parser"]} if cfg.get("parser") is not None else None,
        "intervention": None if intervention is None else dict(intervention),
        "intervention_hash": None if intervention is None else sha256_of(intervention),
        "data_files": [dict(d) for d in data_files],
        "seeds": dict(seeds),
        "timings": dict(timings) if timings is not None else summarize_timings(records or [], None),
        "peak_memory": dict(peak_memory) if peak_memory is not None else peak_memory_stats(),
        "errors": {task: {"count": n_errors, "sample_ids": list(error_ids)}},
        "samples_file": samples_file,
    }
    return to_jsonable(results)


def _fail(key: str, message: str) -> None:
    raise ValueError(f"invalid hookkit results: {key!r} {message}")


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def _expect(d: Mapping[str, Any], key: str, types: type | tuple[type, ...], where: str = "") -> Any:
    path = f"{where}.{key}" if where else key
    if key not in d:
        _fail(path, "is missing")
    value = d[key]
    allowed = types if isinstance(types, tuple) else (types,)
    is_bool = isinstance(value, bool)
    ok = isinstance(value, allowed) and not (is_bool and bool not in allowed)
    if not ok:
        names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
        _fail(path, f"must be {names}, got {_type_name(value)}")
    return value


def _is_json_value(value: Any) -> bool:
    if value is None or isinstance(value, (bool, str, int)):
        return True
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, list):
        return all(_is_json_value(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_json_value(v) for k, v in value.items())
    return False


def validate_results(d: Any) -> dict[str, Any]:
    """Check a results dict against the hookkit schema; return it unchanged.

    Raises:
        ValueError: naming the first offending key (e.g. ``'n-samples.pope.effective' must be int, got str``).
    """
    if not isinstance(d, dict):
        raise ValueError(f"invalid hookkit results: top level must be an object, got {_type_name(d)}")
    for key in REQUIRED_KEYS:
        if key not in d:
            _fail(key, "is missing")
    version = _expect(d, "schema_version", str)
    if version.split(".")[0] != RESULTS_SCHEMA_VERSION.split(".")[0]:
        _fail("schema_version", f"is {version!r}; this hookkit reads major version {RESULTS_SCHEMA_VERSION!r}")

    results = _expect(d, "results", dict)
    if not results:
        _fail("results", "must name at least one task")
    tasks = list(results)
    for block in ("configs", "versions", "higher_is_better", "n-samples", "task_hashes", "errors"):
        value = _expect(d, block, dict)
        for task in tasks:
            if task not in value:
                _fail(f"{block}.{task}", "is missing (every task in 'results' needs one)")

    for task, entry in results.items():
        where = f"results.{task}"
        if not isinstance(entry, dict):
            _fail(where, f"must be object, got {_type_name(entry)}")
        _expect(entry, "alias", str, where)
        _expect(entry, "n_errors", int, where)
        for key, value in entry.items():
            if key in RESERVED_RESULT_KEYS:
                continue
            if not _METRIC_KEY_RE.match(key):
                _fail(f"{where}.{key}", "is not a 'metric,filter' key")
            if not _is_json_value(value):
                _fail(f"{where}.{key}", f"must be a finite JSON value, got {value!r:.60}")

        _expect(d["configs"], task, dict, "configs")
        _expect(d["versions"], task, (str, int, float), "versions")
        _expect(d["higher_is_better"], task, dict, "higher_is_better")
        ns = _expect(d["n-samples"], task, dict, "n-samples")
        original = _expect(ns, "original", int, f"n-samples.{task}")
        effective = _expect(ns, "effective", int, f"n-samples.{task}")
        if not 0 <= effective <= original:
            _fail(f"n-samples.{task}", f"needs 0 <= effective <= original, got {effective} / {original}")
        th = _expect(d["task_hashes"], task, str, "task_hashes")
        if not _SHA256_RE.match(th):
            _fail(f"task_hashes.{task}", "must be a lowercase hex sha256")
        err = _expect(d["errors"], task, dict, "errors")
        count = _expect(err, "count", int, f"errors.{task}")
        ids = _expect(err, "sample_ids", list, f"errors.{task}")
        if count != len(ids) or count != entry["n_errors"]:
            _fail(f"errors.{task}.count", f"is {count} but lists {len(ids)} ids and results say {entry['n_errors']}")

    config = _expect(d, "config", dict)
    for key, types in (
        ("model", (str, type(None))),
        ("model_args", dict),
        ("batch_size", (int, str, type(None))),
        ("limit", (int, float, type(None))),
        ("seed", (int, type(None))),
        ("num_processes", int),
        ("resolved_cli_args", dict),
    ):
        _expect(config, key, types, "config")

    _expect(d, "git_hash", (str, type(None)))
    _expect(d, "date", (int, float))
    _expect(d, "date_iso", str)
    _expect(d, "pretty_env_info", str)
    _expect(d, "env", dict)
    _expect(d, "transformers_version", (str, type(None)))
    _expect(d, "hookkit_version", (str, type(None)))

    intervention = _expect(d, "intervention", (dict, type(None)))
    ihash = _expect(d, "intervention_hash", (str, type(None)))
    if (intervention is None) != (ihash is None):
        _fail("intervention_hash", "must be null exactly when 'intervention' is null")
    if ihash is not None:
        if not _SHA256_RE.match(ihash):
            _fail("intervention_hash", "must be a lowercase hex sha256")
        if ihash != sha256_of(intervention):
            _fail("intervention_hash", "does not match sha256_of(intervention)")

    files = _expect(d, "data_files", list)
    for i, entry in enumerate(files):
        where = f"data_files[{i}]"
        if not isinstance(entry, dict):
            _fail(where, f"must be object, got {_type_name(entry)}")
        _expect(entry, "path", str, where)
        digest = _expect(entry, "sha256", str, where)
        if not _SHA256_RE.match(digest):
            _fail(f"{where}.sha256", "must be a lowercase hex sha256")
        _expect(entry, "role", str, where)
        if "version" in entry:
            _expect(entry, "version", (str, int, float, type(None)), where)

    _expect(d, "seeds", dict)
    timings = _expect(d, "timings", dict)
    for key, value in timings.items():
        if value is not None and not isinstance(value, (int, float, list, dict)):
            _fail(f"timings.{key}", f"must be a number or null, got {_type_name(value)}")
    memory = _expect(d, "peak_memory", dict)
    for key in ("cpu_max_rss_bytes", "cuda_max_allocated_bytes"):
        _expect(memory, key, (int, type(None)), "peak_memory")
    _expect(d, "samples_file", (str, type(None)))
    return d


def validate_results_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a ``results_<task>.json`` file and :func:`validate_results` it (for ``hookkit validate``)."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid hookkit results: {path} is not valid JSON ({exc})") from exc
    return validate_results(data)


def finite_values(timings: Mapping[str, float]) -> dict[str, float]:
    return {k: float(v) for k, v in timings.items() if isinstance(v, (int, float)) and math.isfinite(v)}


# ---------------------------------------------------------------------------------------------- aggregation
def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def cell_summary(records: Sequence[Mapping[str, Any]], key: str = "correct") -> dict[str, Any]:
    """Accuracy (mean of ``key``), n, median prefill seconds, median decode tokens/s and max peak memory."""
    vals = [float(bool(r[key])) for r in records]
    acc, err = mean_stderr(vals)
    pre = [float(r["_prefill_s"]) for r in records if isinstance(r.get("_prefill_s"), (int, float))]
    dec = [float(r["_decode_tok_s"]) for r in records if isinstance(r.get("_decode_tok_s"), (int, float))]
    rss = [int(r["_peak_rss_bytes"]) for r in records if isinstance(r.get("_peak_rss_bytes"), int)]
    cuda = [int(r["_cuda_peak_bytes"]) for r in records if isinstance(r.get("_cuda_peak_bytes"), int)]
    return {"n": len(records), "accuracy": acc if vals else None, "accuracy_stderr": err,
            "prefill_s_median": _median(pre), "decode_tok_s_median": _median(dec),
            "peak_rss_bytes_max": max(rss) if rss else None, "cuda_peak_bytes_max": max(cuda) if cuda else None}


def as_number(value: Any) -> float:
    """Metrics must be numbers: None (a measurement that did not happen) becomes NaN."""
    return math.nan if value is None else float(value)
