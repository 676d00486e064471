"""Input helpers with errors that name the offending file."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from hookkit.errors import InputError


def file_sha256(path: str | os.PathLike[str], chunk_size: int = 1 << 20) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def load_image(path: str | Path, *, field: str = "image") -> Image.Image:
    """Open an image as RGB; a missing, unreadable or corrupt file raises ``InputError`` naming ``field`` (a CLI
    option, or the data-file line a sample came from) and the file."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{field}: file {str(path)!r} does not exist (not found)")
    if not path.is_file():
        raise InputError(f"{field}: {str(path)!r} is not a file")
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so truncated files fail here and not inside the processor
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise InputError(f"{field}: cannot read image {str(path)!r} ({exc.__class__.__name__}: {exc})") from exc


def load_json(path: str | Path, *, field: str) -> Any:
    """Parse a JSON file; a missing file or invalid JSON raises ``InputError`` naming ``field`` and the line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{field}: file {path} not found")
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as exc:
        raise InputError(f"{field}: {path}:{exc.lineno}: invalid JSON ({exc.msg})") from exc
