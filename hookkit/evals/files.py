"""Files of an evaluation: strict canonical JSON, SHA-256 pins of data files and image folders, atomic writes."""

from __future__ import annotations

import dataclasses
import enum
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any

from PIL import Image

from hookkit.io import file_sha256
from hookkit.io import load_image as _load_image


def to_jsonable(obj: Any) -> Any:
    """Convert ``obj`` into plain JSON types (dict / list / str / int / float / bool / None).

    Handles numpy and torch scalars and arrays (via ``tolist``), ``Path``, tuples, sets (sorted), dataclasses,
    enums and torch ``dtype`` / ``device``.  Non-finite floats become the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` so the output is strict JSON.  Mapping keys are converted with ``str``.

    Raises:
        TypeError: for objects with no obvious JSON form (e.g. bytes, arbitrary classes).
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        if math.isnan(obj):
            return "NaN"
        if math.isinf(obj):
            return "Infinity" if obj > 0 else "-Infinity"
        return float(obj)
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        items = [to_jsonable(v) for v in obj]
        return sorted(items, key=lambda v: json.dumps(v, sort_keys=True))
    if isinstance(obj, PurePath):
        return obj.as_posix()
    if isinstance(obj, enum.Enum):
        return to_jsonable(obj.value)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return to_jsonable(obj.tolist())
    if type(obj).__module__.split(".")[0] == "torch":  # torch.dtype, torch.device, torch.Size
        return str(obj)
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable: {obj!r:.80}")


def canonical_json(obj: Any) -> str:
    """Deterministic compact JSON: sorted keys, ``(",", ":")`` separators, UTF-8 text, :func:`to_jsonable` types."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def sha256_of(obj: Any) -> str:
    """Hex SHA-256 of :func:`canonical_json` of ``obj`` (stable across runs, processes and dict orders)."""
    return hashlib.sha256(canonical_json(obj).encode("utf-8")).hexdigest()


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a string's UTF-8 bytes (used for prompt / chat templates, as lm-eval does)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def data_file_entry(
    path: str | os.PathLike[str],
    role: str,
    *,
    version: str | None = None,
    root: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Describe one data file for ``results["data_files"]``: ``{"path", "sha256", "role", "version"?}``.

    Args:
        path: The file (hashed as bytes).
        role: What the file is for, e.g. ``"questions"``, ``"annotations"``, ``"synonyms"``.
        version: Optional dataset version tag (e.g. the POPE release).
        root: If given, ``path`` is recorded relative to it (keeps results portable between machines).
    """
    p = Path(path)
    shown = p.resolve().relative_to(Path(root).resolve()) if root is not None else p
    entry: dict[str, Any] = {"path": shown.as_posix(), "sha256": file_sha256(p), "role": role}
    if version is not None:
        entry["version"] = version
    return entry


def _fsync_dir(directory: Path) -> None:
    """Best-effort fsync of a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    Readers see either the old file or the complete new one; the temp file is removed on failure.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(target.parent)


def write_json_atomic(path: str | os.PathLike[str], obj: Any, *, indent: int | None = 2) -> None:
    """Write ``obj`` as (strict, UTF-8, indented) JSON to ``path`` atomically; see :func:`write_bytes_atomic`."""
    text = json.dumps(to_jsonable(obj), indent=indent, ensure_ascii=False, allow_nan=False)
    write_bytes_atomic(path, (text + "\n").encode("utf-8"))


def load_image(path: Path, *, where: str) -> Image.Image:
    """``hookkit.io.load_image`` with the sample's origin (question file and line) as the field name."""
    return _load_image(path, field=where)


def images_manifest(images_dir: Path, names: Iterable[str]) -> dict[str, Any]:
    """A ``data_files`` entry pinning the referenced images: SHA-256 over ``"<sha256 or MISSING>  <name>\\n"`` lines
    of the sorted distinct names (the ``sha256sum`` format), so any changed, added or removed image changes it."""
    digest = hashlib.sha256()
    present = missing = 0
    for name in sorted(set(names)):
        path = images_dir / name
        if path.is_file():
            file_digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    file_digest.update(chunk)
            line_hash = file_digest.hexdigest()
            present += 1
        else:
            line_hash = "MISSING"
            missing += 1
        digest.update(f"{line_hash}  {name}\n".encode())
    return {
        "path": images_dir.as_posix(),
        "sha256": digest.hexdigest(),
        "role": "images",
        "files": present,
        "missing": missing,
        "hash_rule": "sha256 of the sorted lines '<sha256 of file or MISSING>  <file name>\\n' of the referenced images",
    }
