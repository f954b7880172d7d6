"""Files a user hands flcore, and files flcore writes: nothing runs, escapes or locks colleagues out."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from flcore.engine.checkpoint import save_torch, write_json, write_text


@pytest.fixture
def umask():
    """Set the process umask for one test and restore it afterwards."""
    previous = os.umask(0o022)  # reading the umask means setting it
    os.umask(previous)
    yield os.umask
    os.umask(previous)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask):
    umask(mask)
    write_text(tmp_path / "a.txt", "text")
    write_json(tmp_path / "b.json", {"a": 1})
    save_torch({"w": torch.ones(2)}, tmp_path / "c.pt")
    for name in ("a.txt", "b.json", "c.pt"):
        assert _mode(tmp_path / name) == 0o666 & ~mask, name
    # a replaced file gets the mode a new one would, and no temporary file is left behind
    write_text(tmp_path / "a.txt", "again")
    assert _mode(tmp_path / "a.txt") == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.json", "c.pt"]


def test_a_run_folder_is_readable_by_colleagues_under_umask_022(tmp_path, umask, tiny_config):
    from flcore.testing import run_tiny_experiment

    umask(0o022)
    tiny_config["federation"]["rounds"] = 1
    result = run_tiny_experiment(tmp_path, tiny_config)
    files = [p for p in result.run_dir.rglob("*") if p.is_file()]
    assert {"config.yaml", "metrics.csv", "checkpoint.pt", "model.pt", "summary.json"} <= {p.name for p in files}
    assert {p.relative_to(result.run_dir).as_posix(): oct(_mode(p)) for p in files if _mode(p) != 0o644} == {}
