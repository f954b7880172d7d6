"""Atomic and sealed writes: a reader (or a resumed run) never sees a half-written or altered file.

``write_*`` functions write to a temporary file in the same folder, fsync it and rename it over the
target. :func:`save_sealed` adds a header with the payload's SHA-256, so that :func:`load_sealed`
refuses a file with flipped bits or a truncated tail, naming it, before ``torch.load`` (always with
``weights_only=True``: tensors and plain containers, never code) reads a byte of it.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Any, Callable

from flcore.errors import FlcoreError, UserError

SEAL_MAGIC = b"FLCORE-SEALED 1\n"


class CorruptFile(UserError):
    """A run-folder file that is not what flcore wrote: truncated, altered, or of another format."""


class DiskFull(FlcoreError):
    """The device filled up while a file was written; the file's previous version is intact."""

    exit_code = 1

    def __init__(self, path: Path) -> None:
        super().__init__(f"no space left on the device while writing '{path}'; its previous version is intact")
        self.path = path


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) says the device is full; torch's zip writer reports a
    full device as ``unexpected pos ...``."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(exc, RuntimeError) and "unexpected pos" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _replace_atomically(path: Path, write: Callable[[Any], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    # created like open() creates a file (mode 0o666, less the umask), not 0o600 as by mkstemp, so that
    # colleagues can read results; O_EXCL and O_NOFOLLOW never reuse or follow an existing name; the
    # ".tmp" suffix lets a resumed run remove what a killed write left behind
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    while True:
        tmp = path.parent / f".{path.name}.{os.urandom(4).hex()}.tmp"
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
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if is_disk_full(exc):
            raise DiskFull(path) from exc
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes atomically."""
    _replace_atomically(Path(path), lambda handle: handle.write(data))


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, data: Any) -> None:
    """Write JSON atomically, indented for people."""
    write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def save_torch(obj: Any, path: str | Path) -> None:
    """``torch.save`` atomically (for files meant for other tools, such as ``model.pt``)."""
    import torch

    _replace_atomically(Path(path), lambda handle: torch.save(obj, handle))


def load_torch(path: str | Path) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors and plain containers only."""
    import torch

    return torch.load(Path(path), map_location="cpu", weights_only=True)


def seal(obj: Any) -> tuple[bytes, str]:
    """``obj`` serialized by ``torch.save`` behind a header holding its SHA-256; and that digest."""
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest()
    header = json.dumps({"sha256": digest, "bytes": len(payload)}).encode("ascii") + b"\n"
    return SEAL_MAGIC + header + payload, digest


def save_sealed(obj: Any, path: str | Path) -> str:
    """Write ``obj`` sealed and atomically; return the payload's SHA-256."""
    data, digest = seal(obj)
    write_bytes(path, data)
    return digest


def load_sealed(path: str | Path, expected_sha256: str | None = None) -> Any:
    """Read a file written by :func:`save_sealed` after checking its length and digest (and, if
    given, that the digest is the one a manifest recorded)."""
    import torch

    path = Path(path)
    if path.is_symlink() or not path.is_file():
        raise CorruptFile(f"'{path}' is missing or is not a regular file.")
    data = path.read_bytes()
    if not data.startswith(SEAL_MAGIC):
        raise CorruptFile(f"'{path}' is not a checkpoint written by this version of flcore (no seal header).")
    header_end = data.index(b"\n", len(SEAL_MAGIC)) if b"\n" in data[len(SEAL_MAGIC):] else -1
    try:
        header = json.loads(data[len(SEAL_MAGIC):header_end])
        size, digest = int(header["bytes"]), str(header["sha256"])
    except (ValueError, KeyError, TypeError):
        raise CorruptFile(f"'{path}' has an unreadable seal header.") from None
    payload = data[header_end + 1:]
    if len(payload) != size:
        raise CorruptFile(f"'{path}' is truncated or extended: {len(payload)} bytes where {size} were written.")
    actual = hashlib.sha256(payload).hexdigest()
    if actual != digest or (expected_sha256 is not None and actual != expected_sha256):
        raise CorruptFile(f"'{path}' is corrupt: its SHA-256 is {actual[:16]}..., expected "
                          f"{(expected_sha256 or digest)[:16]}...")
    try:
        return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as exc:  # a sealed payload that torch cannot read: refuse it, do not guess
        raise CorruptFile(f"'{path}' could not be read as a checkpoint: {type(exc).__name__}: {exc}") from None
