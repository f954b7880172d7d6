"""Atomic writes: a reader (or a resumed run) never sees a half-written file."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch


def _replace_atomically(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # created like open() creates a file (mode 0o666, less the umask), not 0o600 as by mkstemp, so that
    # colleagues can read results; O_EXCL and O_NOFOLLOW never reuse or follow an existing name
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{os.urandom(4).hex()}"
        try:
            fd = os.open(tmp, flags, 0o666)
            break
        except FileExistsError:
            continue
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``."""
    _replace_atomically(Path(path), lambda handle: torch.save(obj, handle))


def load_torch(path: str | Path) -> Any:
    """Load a file written by :func:`save_torch` (tensors and plain containers only)."""
    return torch.load(Path(path), map_location="cpu", weights_only=True)


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    _replace_atomically(Path(path), lambda handle: handle.write(text.encode("utf-8")))


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, indented for people."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
