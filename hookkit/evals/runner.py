"""Model-agnostic evaluation runner: per-sample JSONL logs, crash-safe resume, error isolation, data parallelism.

Every hookkit task (POPE, CHAIR, passkey, NIAH, long-context perplexity) runs through :func:`evaluate`, which
writes one results file in the schema of :mod:`hookkit.evals.results`.

Output layout for a task ``<task>`` in ``output_dir``::

    results_<task>.json            results (schema.build_results), written atomically by the main process
    samples_<task>.jsonl           per-sample records in sample order, written atomically after a run
    samples_<task>.rank<k>.jsonl   append-only working log of process k (removed once merged)
    run_<task>.manifest.json       fingerprint of the run config, checked on resume

Design
------
*Resume.*  Each process appends its records to its own ``samples_<task>.rank<k>.jsonl`` with one ``os.write``
per batch followed by ``fsync``, so a kill loses at most the batch in flight.  A kill in the middle of a write
leaves a torn last line; :class:`SampleLog` drops it on open (with a warning).  On resume every process reads
*all* existing logs (the merged file and every rank log, including rank logs of an earlier run with more
processes) and skips the sample ids found there, so resuming works with the same, a larger or a smaller number
of processes.  At the end the main process merges all logs (de-duplicated by ``sample_id``, first record wins)
into ``samples_<task>.jsonl`` in the original sample order, writes the results, then deletes the rank logs.  A
crash at any point of that sequence loses nothing: a record lives in a rank log until the merged file holding it
is on disk.  Resuming with a different task config, model, intervention, data files or seed is refused (the
manifest fingerprint differs), as is starting over on top of an earlier run without ``resume=True``.  The one
exception is a task config key listed in the task's ``extendable_config_keys``: keys that only add or drop
samples and never change an existing one (passkey's ``trials``: trial *i* is drawn from its own seed), so a run
of 3 trials resumed with 10 runs the 7 new ones; the manifest then records the new config.

*Sharding.*  With ``N`` processes (``accelerate launch``), process ``k`` owns the samples whose index (in the
task's sample order, after ``limit``) satisfies ``index % N == k``.  The rule depends only on the sample list, so
it is deterministic and needs no communication; interleaving also balances tasks whose samples grow in length.
``task.samples()`` must yield the same list in every process (checked through a hash of the ids).

*Error isolation.*  A ``predict_fn`` signals a problem with one sample by raising :class:`SampleError`.  A batch
of one gets an error record ``{"sample_id", "error", "error_type"}``.  In a larger batch, if the error names a
sample of the batch, that sample gets the error record and the rest of the batch is run again as one batch
(repeating the rule); if it names no sample of the batch, every sample of the batch is run again on its own.
Any other exception is a bug: it propagates (records already written stay on disk for a resume).  Error records
are counted in the results (``results[task]["n_errors"]`` and ``errors[task]``) and are not passed to
``aggregate``.  Errored samples count as done on resume unless ``retry_errors=True``; a later successful record
for the same id then supersedes the error record.

*Seeds.*  :func:`set_seed` seeds python, numpy and torch at the start.  With ``reseed_per_batch`` (default) the
runner also reseeds before every batch from ``(seed, first sample_id of the batch)``, so stochastic predictions
do not depend on which process ran a sample or whether the run was resumed (exactly so with ``batch_size=1``).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object, parse_flag_from_env
from accelerate.utils import set_seed as _accelerate_set_seed
from tqdm.auto import tqdm

from hookkit.errors import InputError
from hookkit.evals.files import sha256_of, to_jsonable, write_bytes_atomic, write_json_atomic
from hookkit.evals.memory import peak_memory_stats
from hookkit.evals.results import (
    build_results,
    collect_env_info,
    summarize_timings,
    task_hash,
    validate_results,
)
from hookkit.evals.sample_log import Record, SampleLog, dedup_records, encode_record, is_error_record, read_jsonl

logger = logging.getLogger(__name__)

Sample = dict[str, Any]
PredictFn = Callable[[list[Sample]], list[Record]]

__all__ = [
    "EvalTask",
    "NothingScoredError",
    "OutputPaths",
    "SampleError",
    "SampleLog",
    "derive_seed",
    "evaluate",
    "get_state",
    "read_jsonl",
    "run_samples",
    "set_seed",
]

_TASK_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
#: model_info keys that may change between a run and its resume (placement, not the model itself).
_RESUMABLE_MODEL_KEYS = frozenset({"device", "device_map", "max_memory", "offload_folder"})


class NothingScoredError(InputError):
    """An evaluation that scored no sample: it fails instead of reporting zeros."""


class SampleError(Exception):
    """Raised by a ``predict_fn`` when one sample cannot be evaluated (bad input, too long, OOM, ...).

    Args:
        sample_id: The offending sample, or None when the predictor cannot tell which one of a batch failed.
        message: Human-readable reason, stored in the sample's error record.
    """

    def __init__(self, sample_id: str | None, message: str) -> None:
        super().__init__(message if sample_id is None else f"sample {sample_id!r}: {message}")
        self.sample_id = sample_id
        self.message = message


# --------------------------------------------------------------------------------------------------------------
# Seeds and distributed state
# --------------------------------------------------------------------------------------------------------------


def set_seed(seed: int) -> dict[str, Any]:
    """Seed python ``random``, numpy and torch (all devices) with ``seed``; return the seeds for the results."""
    _accelerate_set_seed(seed)
    return {"python": seed, "numpy": seed, "torch": seed}


def derive_seed(seed: int, sample_id: str) -> int:
    """A 32-bit seed from a base seed and a sample id (stable across processes and Python versions)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:4], "big")


def get_state() -> PartialState:
    """The process's ``accelerate.PartialState`` (a single process when not launched by ``accelerate launch``).

    On machines without CUDA (or with ``ACCELERATE_USE_CPU``), the state is created with ``cpu=True`` so that
    processes started by ``accelerate launch`` / ``torchrun`` form a gloo group instead of each believing it is
    alone.

    Raises:
        RuntimeError: if the launcher started several processes but the state (e.g. created earlier by other
            code with the wrong device flag) sees only one; every process would then evaluate everything.
    """
    cpu = parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched > 1 and state.num_processes != launched:
        raise RuntimeError(
            f"launched with WORLD_SIZE={launched} but accelerate sees {state.num_processes} process(es); "
            "create the PartialState/Accelerator with cpu=True on CPU-only machines"
        )
    _register_process_group_cleanup()
    return state


_cleanup_registered = False


def _destroy_process_group() -> None:
    """atexit hook: tear the process group down before the interpreter exits.

    Without it, gloo processes that exit with a live group sometimes abort ("terminate called without an active
    exception") while their peer is still shutting down, which turns a successful run into a launcher failure.
    Destroying is local (no collective), so it cannot hang when another process died.
    """
    try:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    except Exception:  # noqa: BLE001 - best effort at interpreter exit
        logger.debug("destroy_process_group at exit failed", exc_info=True)


def _register_process_group_cleanup() -> None:
    global _cleanup_registered
    if not _cleanup_registered and torch.distributed.is_available() and torch.distributed.is_initialized():
        atexit.register(_destroy_process_group)
        _cleanup_registered = True


# --------------------------------------------------------------------------------------------------------------
# The generic sample loop
# --------------------------------------------------------------------------------------------------------------


def _apply_limit(samples: Sequence[Sample], limit: int | float | None) -> list[Sample]:
    """lm-eval ``--limit``: an int keeps the first ``limit`` samples, a float in (0, 1) that fraction."""
    if limit is None:
        return list(samples)
    if isinstance(limit, float) and 0.0 < limit < 1.0:
        return list(samples[: math.ceil(len(samples) * limit)])
    if limit < 0 or (isinstance(limit, float) and not limit.is_integer()):
        raise ValueError(f"limit must be a non-negative int or a fraction in (0, 1), got {limit!r}")
    return list(samples[: int(limit)])


def _check_ids(samples: Sequence[Sample]) -> list[str]:
    ids: list[str] = []
    seen: set[str] = set()
    for i, sample in enumerate(samples):
        sid = sample.get("sample_id") if isinstance(sample, Mapping) else None
        if not isinstance(sid, str) or not sid:
            raise ValueError(f"sample #{i} has no non-empty string 'sample_id'")
        if sid in seen:
            raise ValueError(f"duplicate sample_id {sid!r} in the task's samples")
        seen.add(sid)
        ids.append(sid)
    return ids


def _error_record(sample: Sample, exc: BaseException) -> Record:
    message = exc.message if isinstance(exc, SampleError) else str(exc)
    return {"sample_id": sample["sample_id"], "error": message or type(exc).__name__, "error_type": type(exc).__name__}


def _check_output(batch: Sequence[Sample], output: Any) -> list[Record]:
    """Validate ``predict_fn`` output and return it in batch order (copies)."""
    ids = [s["sample_id"] for s in batch]
    if not isinstance(output, (list, tuple)) or len(output) != len(batch):
        got = len(output) if isinstance(output, (list, tuple)) else type(output).__name__
        raise ValueError(f"predict_fn must return a list of {len(batch)} records, got {got}")
    by_id: dict[str, Record] = {}
    for record in output:
        if not isinstance(record, Mapping) or not isinstance(record.get("sample_id"), str):
            raise ValueError(f"predict_fn returned a record without a string 'sample_id': {record!r:.120}")
        by_id[record["sample_id"]] = dict(record)
    if set(by_id) != set(ids):
        raise ValueError(f"predict_fn returned records for {sorted(by_id)} but the batch was {ids}")
    return [by_id[sid] for sid in ids]


def _predict_isolated(
    batch: list[Sample],
    predict_fn: PredictFn,
    error_types: tuple[type[BaseException], ...],
    seed: int | None,
) -> list[Record]:
    """Run one batch; turn ``error_types`` raised for a sample into that sample's error record (see module docs)."""
    if seed is not None:
        _accelerate_set_seed(derive_seed(seed, batch[0]["sample_id"]))
    try:
        return _check_output(batch, predict_fn(batch))
    except error_types as exc:
        ids = [s["sample_id"] for s in batch]
        named = getattr(exc, "sample_id", None)
        if len(batch) == 1:
            logger.warning("sample %r failed: %s", ids[0], exc)
            return [_error_record(batch[0], exc)]
        if named in ids:
            logger.warning(
                "sample %r failed: %s; re-running the other %d samples of its batch", named, exc, len(ids) - 1
            )
            bad = ids.index(named)
            rest = batch[:bad] + batch[bad + 1 :]
            out = _predict_isolated(rest, predict_fn, error_types, seed)
            out.insert(bad, _error_record(batch[bad], exc))
            return out
        logger.warning("a batch of %d failed (%s) without naming its sample; re-running one by one", len(ids), exc)
        return [rec for s in batch for rec in _predict_isolated([s], predict_fn, error_types, seed)]


def run_samples(
    samples: Iterable[Sample],
    predict_fn: PredictFn,
    *,
    log: SampleLog | str | os.PathLike[str],
    batch_size: int = 1,
    resume: bool = True,
    desc: str = "samples",
    limit: int | float | None = None,
    progress: bool = True,
    skip_ids: Collection[str] = (),
    retry_errors: bool = False,
    error_types: tuple[type[BaseException], ...] = (SampleError,),
    seed: int | None = None,
) -> list[Record]:
    """Run ``predict_fn`` over ``samples`` in batches, appending records to ``log``; resumable.

    Args:
        samples: Dicts with a unique string ``sample_id`` (plus whatever ``predict_fn`` needs).
        predict_fn: ``batch -> records``; one record dict per sample, each keeping its ``sample_id`` (any order).
            Keys starting with ``_`` are volatile (timings, debug); the runner adds ``_time_s`` (batch wall time
            divided by the batch size) unless present.
        log: A :class:`SampleLog` or the path of one.
        batch_size: Samples per ``predict_fn`` call.
        resume: Skip samples already in ``log``.  With False, a non-empty log is an error (never appended to).
        desc: tqdm description.
        limit: Keep only the first ``limit`` samples (int) or that fraction (float in (0, 1)).
        progress: Show a tqdm bar (``total`` = all samples here, ``initial`` = those already done).
        skip_ids: Further ids to treat as done (e.g. completed by other processes or earlier shard layouts).
        retry_errors: Re-run samples whose only record is an error record.
        error_types: Exceptions isolated per sample (see module docs); anything else propagates.
        seed: If given, reseed before every batch with :func:`derive_seed` of the batch's first sample id.

    Returns:
        The records in ``log`` for ``samples`` (earlier runs' and this run's), in the order of ``samples``;
        samples skipped through ``skip_ids`` are not included.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = _apply_limit(list(samples), limit)
    _check_ids(items)
    sample_log = log if isinstance(log, SampleLog) else SampleLog(log)
    if sample_log.completed_ids() and not resume:
        raise FileExistsError(
            f"{sample_log.path} already holds {len(sample_log)} records; resume=True (--resume) continues it, "
            "or use a new output directory"
        )
    done = set(sample_log.completed_ids(include_errors=not retry_errors)) | set(skip_ids)
    pending = [s for s in items if s["sample_id"] not in done]
    if len(pending) < len(items):
        logger.info("%s: resuming, %d of %d samples already done", desc, len(items) - len(pending), len(items))

    with tqdm(
        total=len(items),
        initial=len(items) - len(pending),
        desc=desc,
        unit="sample",
        disable=not progress,
        dynamic_ncols=True,
    ) as bar:
        for start in range(0, len(pending), batch_size):
            batch = pending[start : start + batch_size]
            t0 = time.perf_counter()
            records = _predict_isolated(batch, predict_fn, error_types, seed)
            per_sample = (time.perf_counter() - t0) / len(batch)
            for record in records:
                record.setdefault("_time_s", per_sample)
            sample_log.extend(records)
            bar.update(len(batch))

    by_id = {r["sample_id"]: r for r in sample_log.records()}
    return [by_id[s["sample_id"]] for s in items if s["sample_id"] in by_id]


# --------------------------------------------------------------------------------------------------------------
# Tasks and the evaluate() glue
# --------------------------------------------------------------------------------------------------------------


class EvalTask:
    """Base class of an evaluation task (lm-evaluation-harness spirit: data + a small scorer).

    Subclasses set :attr:`name` (file-name safe) and :attr:`version` and implement :meth:`samples` and
    :meth:`aggregate`; :meth:`predict` may be implemented by the task or passed to :func:`evaluate` as
    ``predict_fn`` (the usual case: the model and intervention live with the caller).
    """

    name: str = ""
    version: str | int | float = "0"
    #: task config keys whose change only adds or removes samples, never alters one: resume accepts a new value.
    extendable_config_keys: tuple[str, ...] = ()

    def samples(self) -> Iterable[Sample]:
        """All samples, each a dict with a unique string ``sample_id``, in a deterministic order.

        Keep samples light (paths, not decoded images): every process materializes the full list.
        """
        raise NotImplementedError

    def predict(self, batch: list[Sample]) -> list[Record]:
        """Default predictor; raise :class:`SampleError` for a sample that cannot be evaluated."""
        raise NotImplementedError(f"task {self.name!r} has no built-in predict; pass predict_fn= to evaluate()")

    def aggregate(self, records: list[Record]) -> dict[str, Any]:
        """Metrics from the successful records: ``{"f1": ..., "f1_stderr": ..., "confusion": {...}}``."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """Task config for ``configs[task]``: prompt template, parser id, decoding config, ..."""
        return {}

    def data_files(self) -> list[dict[str, Any]]:
        """Data files read, as :func:`hookkit.evals.files.data_file_entry` dicts."""
        return []

    def higher_is_better(self) -> dict[str, bool]:
        """``{"metric": True/False}`` for the metrics :meth:`aggregate` returns."""
        return {}


@dataclass(frozen=True)
class OutputPaths:
    """File layout of one task inside an output directory."""

    output_dir: Path
    task: str

    @property
    def results(self) -> Path:
        return self.output_dir / f"results_{self.task}.json"

    @property
    def samples(self) -> Path:
        return self.output_dir / f"samples_{self.task}.jsonl"

    @property
    def manifest(self) -> Path:
        return self.output_dir / f"run_{self.task}.manifest.json"

    def shard(self, rank: int) -> Path:
        return self.output_dir / f"samples_{self.task}.rank{rank}.jsonl"

    def shards(self) -> list[Path]:
        """Existing rank logs, by rank."""
        pattern = re.compile(rf"^samples_{re.escape(self.task)}\.rank(\d+)\.jsonl$")
        found = []
        if self.output_dir.is_dir():
            for p in self.output_dir.iterdir():
                m = pattern.match(p.name)
                if m:
                    found.append((int(m.group(1)), p))
        return [p for _, p in sorted(found)]

    def existing(self) -> list[Path]:
        """Files of an earlier run of this task that are present."""
        return [p for p in (self.results, self.samples, self.manifest, *self.shards()) if p.exists()]


def _read_logs(paths: Sequence[Path]) -> list[Record]:
    """Records of several logs (read-only, torn last lines ignored), concatenated in the given order."""
    out: list[Record] = []
    for path in paths:
        if path.exists():
            records, _, torn = read_jsonl(path)
            if torn:
                logger.debug("%s: ignoring a partial last line", path)
            out.extend(records)
    return out


def _fingerprint_fields(
    task: Any,
    task_config: Mapping[str, Any],
    data_files: Sequence[Mapping[str, Any]],
    model_info: Mapping[str, Any],
    intervention: Mapping[str, Any] | None,
    seed: int | None,
) -> dict[str, Any]:
    """What must not change between a run and its resume (file locations and devices may)."""
    return to_jsonable(
        {
            "task": task.name,
            "version": getattr(task, "version", "0"),
            "task_config": task_config,
            "data_files": [{"role": d.get("role"), "sha256": d.get("sha256")} for d in data_files],
            "model": {k: v for k, v in model_info.items() if k not in _RESUMABLE_MODEL_KEYS},
            "intervention_hash": None if intervention is None else sha256_of(intervention),
            "seed": seed,
        }
    )


def _check_manifest(path: Path, fields: dict[str, Any], extendable: Sequence[str] = ()) -> bool:
    """Refuse to resume a different run; True when only ``extendable`` task config keys changed."""
    if not path.exists():
        return False
    try:
        previous = json.loads(path.read_text(encoding="utf-8")).get("fields", {})
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read run manifest {path}: {exc}") from exc

    def fixed(f: Mapping[str, Any]) -> dict[str, Any]:
        config = f.get("task_config")
        if isinstance(config, Mapping):
            f = {**f, "task_config": {k: v for k, v in config.items() if k not in extendable}}
        return dict(f)

    old, new = fixed(previous), fixed(fields)
    changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if changed:
        raise ValueError(
            f"cannot resume in {path.parent}: the earlier run used a different {', '.join(changed)} "
            f"(see {path.name}); use a new output directory"
        )
    return previous != fields


def evaluate(
    task: EvalTask,
    *,
    output_dir: str | os.PathLike[str],
    model_info: Mapping[str, Any],
    intervention: Mapping[str, Any] | None = None,
    limit: int | float | None = None,
    seed: int | None = 1234,
    resume: bool = False,
    batch_size: int = 1,
    predict_fn: PredictFn | None = None,
    progress: bool = True,
    cli_args: Mapping[str, Any] | None = None,
    retry_errors: bool = False,
    reseed_per_batch: bool = True,
    keep_shard_logs: bool = False,
    state: PartialState | None = None,
) -> dict[str, Any]:
    """Run ``task`` (data-parallel when launched with ``accelerate launch``) and write its results.

    Writes ``<output_dir>/results_<task>.json`` and ``samples_<task>.jsonl`` (see the module docs for the
    layout, resume, sharding and error handling).  Call it from every process; only the main process merges and
    writes results, and every process returns the same results dict.

    Args:
        task: An :class:`EvalTask` (or any object with the same attributes).
        output_dir: Output directory (created).
        model_info: Model name/path, dtype, device, ... (``config.model_args``; name via ``"model"``,
            ``"name"`` or ``"path"``).
        intervention: Intervention recipe, None for the stock model.
        limit: First ``limit`` samples (int) or that fraction (float in (0, 1)).
        seed: Global seed (python / numpy / torch); None leaves the RNGs alone.
        resume: Continue an earlier run in ``output_dir``.  Without it, any file of an earlier run of this task
            is an error (nothing is overwritten or appended to).
        batch_size: Samples per ``predict_fn`` call.
        predict_fn: ``batch -> records``; defaults to ``task.predict``.
        progress: Show a tqdm bar (main process only).
        cli_args: Resolved CLI arguments, stored as ``config.resolved_cli_args``.
        retry_errors: On resume, re-run samples that previously ended with an error record.
        reseed_per_batch: Reseed before each batch from ``(seed, first sample_id)``.
        keep_shard_logs: Keep the per-process logs after merging.
        state: An ``accelerate.PartialState`` (default :func:`get_state`).

    Returns:
        The validated results dict (also written to disk).

    Raises:
        FileExistsError: earlier outputs exist and ``resume`` is False.
        ValueError: resuming a run with a different configuration, invalid samples or predictor output.
    """
    t_start = time.perf_counter()
    state = state or get_state()
    rank, world = state.process_index, state.num_processes
    name = getattr(task, "name", "")
    if not isinstance(name, str) or not _TASK_NAME_RE.match(name):
        raise ValueError(f"task name {name!r} must match {_TASK_NAME_RE.pattern} (it is used in file names)")
    paths = OutputPaths(Path(output_dir), name)
    predict = predict_fn or task.predict
    model_info = dict(model_info)

    # 1. Samples: identical list in every process.
    all_samples = list(task.samples())
    samples = _apply_limit(all_samples, limit)
    if not samples:
        # Nothing would be scored: fail before any file is written, rather than report zeros.
        why = f"--limit {limit} selects none of the {len(all_samples)} samples" if all_samples else \
            "the task has no samples (empty data file, or no valid line in it)"
        raise NothingScoredError(f"{name}: nothing to evaluate: {why}")
    ids = _check_ids(samples)
    ids_digest = sha256_of(ids)

    # 2. Earlier outputs: refuse to clobber them, or check that resuming them is legitimate.
    existing = paths.existing()
    if existing and not resume:
        listing = ", ".join(p.name for p in existing)
        raise FileExistsError(
            f"{paths.output_dir} already holds output of task {name!r} ({listing}); pass resume=True (--resume) "
            "to continue that run, or choose a new output directory"
        )
    task_config = dict(task.config())
    data_files = [dict(d) for d in task.data_files()]  # hashes the files: do it once
    fields = _fingerprint_fields(task, task_config, data_files, model_info, intervention, seed)
    extended = False
    if resume:
        extended = _check_manifest(paths.manifest, fields, getattr(task, "extendable_config_keys", ()))

    # Collective: every process has finished looking at the directory before anyone writes to it,
    # and all processes must agree on the sample list.
    digests = gather_object([ids_digest])
    if len(set(digests)) != 1:
        raise RuntimeError(f"task.samples() differs between processes (id hashes {digests}); it must be deterministic")
    fresh = not paths.manifest.exists()
    if state.is_main_process and (extended or fresh):
        write_json_atomic(paths.manifest, {"task": name, "fingerprint": sha256_of(fields), "fields": fields})

    seeds: dict[str, Any] = {}
    if seed is not None:
        seeds = set_seed(seed)
        if reseed_per_batch:
            seeds["per_batch"] = "sha256(f'{seed}:{first sample_id of batch}')[:4 bytes]"

    # 3. This process's shard; skip what any log (merged file, any rank) already holds.
    shard = [s for i, s in enumerate(samples) if i % world == rank]
    own_path = paths.shard(rank)
    others = [paths.samples, *(p for p in paths.shards() if p != own_path)]
    skip = {r["sample_id"] for r in _read_logs(others) if not (retry_errors and is_error_record(r))}
    desc = name if world == 1 else f"{name} [rank {rank}/{world}]"
    try:
        with SampleLog(own_path) as log:
            run_samples(
                shard,
                predict,
                log=log,
                batch_size=batch_size,
                resume=True,
                desc=desc,
                progress=progress and state.is_main_process,
                skip_ids=skip,
                retry_errors=retry_errors,
                seed=seed if (seed is not None and reseed_per_batch) else None,
            )
            n_new = log.n_appended
    except BaseException:
        # A run that dies before logging anything (a crash on its first batch, Ctrl-C during model warm-up) leaves
        # no half-made run folder behind: the same command can simply be run again.
        if fresh and world == 1 and not any(p.exists() and p.stat().st_size for p in (own_path, *others)):
            own_path.unlink(missing_ok=True)
            paths.manifest.unlink(missing_ok=True)
        raise
    rank_stats = {
        "rank": rank,
        "n_new": n_new,
        "wall_s": time.perf_counter() - t_start,
        "peak_memory": peak_memory_stats(),
    }
    all_stats = gather_object([rank_stats])  # collective: every shard log is complete and fsynced

    # 4. Main process: merge, aggregate, write.
    results: dict[str, Any] | None = None
    if state.is_main_process:
        results = _finalize(
            task,
            paths,
            samples=samples,
            ids=ids,
            task_config=task_config,
            data_files=data_files,
            n_original=len(all_samples),
            all_stats=all_stats,
            t_start=t_start,
            model_info=model_info,
            intervention=intervention,
            limit=limit,
            seed=seed,
            seeds=seeds,
            batch_size=batch_size,
            world=world,
            cli_args=cli_args,
            device=str(state.device),
            keep_shard_logs=keep_shard_logs,
        )
    return broadcast_object_list([results])[0]


def _finalize(
    task: EvalTask,
    paths: OutputPaths,
    *,
    samples: list[Sample],
    ids: list[str],
    task_config: dict[str, Any],
    data_files: list[dict[str, Any]],
    n_original: int,
    all_stats: list[dict[str, Any]],
    t_start: float,
    model_info: dict[str, Any],
    intervention: Mapping[str, Any] | None,
    limit: int | float | None,
    seed: int | None,
    seeds: dict[str, Any],
    batch_size: int,
    world: int,
    cli_args: Mapping[str, Any] | None,
    device: str,
    keep_shard_logs: bool,
) -> dict[str, Any]:
    """Merge all logs into the samples file, aggregate, write and return the results (main process only)."""
    shard_paths = paths.shards()
    merged = dedup_records(
        _read_logs([paths.samples, *shard_paths]), f"{paths.output_dir}/samples_{paths.task}*", quiet_identical=True
    )
    by_id = {r["sample_id"]: r for r in merged}
    missing = [sid for sid in ids if sid not in by_id]
    if missing:
        raise RuntimeError(f"{len(missing)} samples have no record after the run (first: {missing[:5]})")
    wanted = set(ids)
    extras = [r for r in merged if r["sample_id"] not in wanted]
    records = [by_id[sid] for sid in ids]

    if extras:
        # Records of samples outside this run (e.g. a smaller --limit than before): never lose them.
        # Those only present in the merged file move to the rank-0 log, which is then kept.
        in_shards = {r["sample_id"] for r in _read_logs(shard_paths)}
        moved = [r for r in extras if r["sample_id"] not in in_shards]
        if moved:
            with SampleLog(paths.shard(0)) as log0:
                log0.extend(moved)
        logger.warning(
            "%d records in %s are not among this run's %d samples (different limit or data?); "
            "they are not counted and are kept in the rank logs",
            len(extras),
            paths.output_dir,
            len(ids),
        )
    write_bytes_atomic(paths.samples, b"".join(encode_record(r) for r in records))

    ok = [r for r in records if not is_error_record(r)]
    error_ids = [r["sample_id"] for r in records if is_error_record(r)]
    if error_ids:
        logger.warning("%s: %d of %d samples ended with an error record", paths.task, len(error_ids), len(records))
    # No scored sample: metrics are null (not the zeros an aggregate over nothing would give), and the run fails
    # below, after the results file is written, so the error records can be inspected and retried.
    if ok:
        metrics = task.aggregate(ok)
    else:
        hib = task.higher_is_better() if hasattr(task, "higher_is_better") else {}
        metrics = {key: None for key in hib}

    timings = summarize_timings(records, time.perf_counter() - t_start)
    n_new = sum(int(s["n_new"]) for s in all_stats)
    timings["n_samples_run"] = n_new
    timings["n_samples_resumed"] = len(records) - min(n_new, len(records))
    timings["per_rank_wall_s"] = [s["wall_s"] for s in all_stats]
    cpu = [
        s["peak_memory"]["cpu_max_rss_bytes"] for s in all_stats if s["peak_memory"]["cpu_max_rss_bytes"] is not None
    ]
    cuda = [s["peak_memory"]["cuda_max_allocated_bytes"] for s in all_stats]
    peak_memory = {
        "cpu_max_rss_bytes": max(cpu) if cpu else None,
        "cuda_max_allocated_bytes": max(c for c in cuda if c is not None) if any(c is not None for c in cuda) else None,
        "per_rank": [dict(s["peak_memory"], rank=s["rank"]) for s in all_stats],
    }

    results = build_results(
        task=paths.task,
        metrics=metrics,
        n_original=n_original,
        n_effective=len(samples),
        task_hash_value=task_hash(records),
        error_ids=error_ids,
        task_config=task_config,
        task_version=getattr(task, "version", "0"),
        higher_is_better=task.higher_is_better() if hasattr(task, "higher_is_better") else None,
        model_info=model_info,
        batch_size=batch_size,
        limit=limit,
        seed=seed,
        num_processes=world,
        cli_args=cli_args,
        intervention=intervention,
        data_files=data_files,
        seeds=seeds,
        timings=timings,
        peak_memory=peak_memory,
        samples_file=paths.samples.name,
        env=collect_env_info(model_info.get("device") or device),
    )
    validate_results(results)
    write_json_atomic(paths.results, results)

    if not keep_shard_logs and not extras:
        for p in shard_paths:
            p.unlink(missing_ok=True)
    if not ok:
        first = records[0] if records else {}
        raise NothingScoredError(
            f"{paths.task}: none of the {len(records)} samples could be scored (every one ended with an error; "
            f"first: {first.get('error_type', '?')}: {first.get('error', '')}); metrics are null in "
            f"{paths.results}. Fix the cause and rerun with --resume --retry-errors")
    return results
