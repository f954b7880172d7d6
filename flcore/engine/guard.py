"""Guarding a run folder: one writer at a time, signals that end a run cleanly, full disks named.

- :class:`RunLock` holds an exclusive ``flock`` on ``<run>/.lock`` for as long as the process
  writes the folder; a second ``flcore run --resume`` on it is refused with the holder's pid. The
  kernel releases the lock when the process dies, so a killed run never leaves a stale lock.
- :func:`terminate_as_interrupt` makes SIGTERM (what cluster schedulers send) behave like Ctrl-C.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from typing import Iterator

from flcore.errors import FlcoreError, UserError


class RunInterrupted(FlcoreError):
    """Ctrl-C or SIGTERM during a run; the message says how to resume."""

    exit_code = 130


class RunFolderBusy(UserError):
    """Another process is writing this run folder."""


class RunLock:
    """An exclusive lock on a run folder, held until :meth:`release` or the process ends."""

    def __init__(self, run_path: Path) -> None:
        import fcntl

        self.path = Path(run_path) / ".lock"
        self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(self._fd, 200).decode("utf-8", "replace").strip() or "unknown"
            os.close(self._fd)
            raise RunFolderBusy(f"'{run_path}' is being written by another flcore process ({holder}); wait for it "
                                "to end, or stop it first: two writers would overwrite each other's checkpoints.") from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, f"pid {os.getpid()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}".encode())

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Inside, SIGTERM raises KeyboardInterrupt in the main thread, as Ctrl-C does."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)

