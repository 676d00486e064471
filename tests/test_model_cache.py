"""The cache of built checkpoint folders: a folder appears whole or not at all."""

from __future__ import annotations

from pathlib import Path

import pytest

from hookkit.models.cache import building_folder


def test_a_finished_build_replaces_the_target(tmp_path: Path) -> None:
    target = tmp_path / "cache" / "model"
    with building_folder(target) as tmp:
        assert tmp.parent == target.parent and not target.exists()
        (tmp / "config.json").write_text("{}")
    assert (target / "config.json").read_text() == "{}"
    with building_folder(target) as tmp:  # a rebuild replaces the old folder as a whole
        (tmp / "other.json").write_text("[]")
    assert sorted(p.name for p in target.iterdir()) == ["other.json"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["model"]  # no temporary folder left


def test_a_failed_build_leaves_nothing(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with pytest.raises(RuntimeError, match="boom"), building_folder(target) as tmp:
        (tmp / "half.bin").write_bytes(b"x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
