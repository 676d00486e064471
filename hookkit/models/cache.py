"""hookkit's cache of built checkpoint folders (tiny models, SmolLM2, scenes-llava, the converted tower).

Every folder is built in a temporary sibling and renamed into place, so concurrent test workers and interrupted
builds never leave a half-written checkpoint behind.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def cache_root() -> Path:
    """``$HOOKKIT_CACHE``, default ``~/.cache/hookkit``."""
    return Path(os.environ.get("HOOKKIT_CACHE", Path.home() / ".cache" / "hookkit"))


@contextmanager
def building_folder(target: Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; when the block ends it replaces ``target`` by a rename.

    On an error the temporary folder is removed and the error propagates. If another process published ``target``
    first (the rename fails with ``FileExistsError``), its folder is complete and wins.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except FileExistsError:
        shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
