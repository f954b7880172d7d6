"""What a run records as it goes: metrics.csv, the Lightning loggers and profiler, agents' local
metrics, and progress for the person watching.

metrics.csv has one documented header (docs/outputs.md): the engine's columns in a fixed order,
present in every run whatever was measured (a cell is empty when nothing was), then the metrics
components add (``<component>/<key>``) in the order they first appear.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Iterable

from flcore.engine.observers import build_loggers, build_profiler
from flcore.engine.rundir import RunDirectory

#: the engine's columns of metrics.csv, in order
ROUND_COLUMNS = ("round", "selected", "completed", "partial", "dropped", "deferred", "skipped", "lr", "train_loss",
                 "test_loss", "test_acc", "local_loss", "local_acc", "agents_seen", "seconds",
                 "memory/peak_rss_mib", "available", "virtual_seconds")


class Progress:
    """A bar on a terminal; elsewhere (a batch job, nohup) one line to stderr per round at most every
    ``interval`` seconds, the first and last rounds always; nothing when off."""

    def __init__(self, mode: str, total: int, initial: int, interval: float = 10.0) -> None:
        self.mode, self.total, self.interval = mode, total, interval
        self.last_line = -float("inf")
        self.bar = None
        if mode == "bar":
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=initial, desc="rounds", leave=False, dynamic_ncols=True)

    def update(self, row: dict[str, Any]) -> None:
        shown = {k: f"{row[k]:.4f}" for k in ("train_loss", "test_acc") if row.get(k) is not None}
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(shown)
        elif self.mode == "lines":
            now = time.monotonic()
            if row["round"] in (1, self.total) or now - self.last_line >= self.interval:
                self.last_line = now
                parts = [f"round {row['round']}/{self.total}", *(f"{k}={v}" for k, v in shown.items()),
                         f"({row.get('seconds') or 0:.2f} s)"]
                print(" ".join(parts), file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def progress_mode(setting: str, requested: bool | str | None) -> str:
    """``bar``, ``lines`` or ``off`` from the config's ``logging.progress`` and the caller's choice
    (``True`` a bar, ``False`` no bar, a mode by name; ``"off"`` from ``--quiet`` wins)."""
    if requested == "off" or setting == "off":
        return "off"
    if isinstance(requested, str):
        return requested
    if requested is not None:
        return "bar" if requested else "lines"
    if setting in ("on", "bar", "lines"):
        return "bar" if setting in ("on", "bar") else "lines"
    return "bar" if sys.stderr.isatty() else "lines"


class Recorder:
    """Loggers, agent logger, profiler and metrics.csv of one run; silent off rank 0."""

    def __init__(self, config: Any, run_dir: RunDirectory, is_main: bool, session: int = 1) -> None:
        self.run_dir = run_dir
        self.is_main = is_main
        self.local_epochs = config.training.epochs
        self.loggers = build_loggers(config.logging.loggers, run_dir.logs, config.name) if is_main else []
        self.agent_logger = None
        if config.logging.agent_metrics and is_main:
            from lightning.pytorch.loggers import CSVLogger

            self.agent_logger = CSVLogger(str(run_dir.logs), name="agents")
        self.profiler = build_profiler(config.logging.profiler if is_main else None, run_dir.path,
                                       "profile" if session == 1 else f"profile-session{session}")
        self.profile = self.profiler.profile
        self.agent_log_step = 0

    def hyperparams(self, params: dict[str, Any]) -> None:
        for logger in self.loggers:
            logger.log_hyperparams(params)

    def agent_epochs(self, records: Iterable[dict[str, float]]) -> None:
        """Each local epoch of an agent: to logs/agents, and per-agent curves to the other loggers."""
        if not self.is_main or not (self.agent_logger or self.loggers):
            return
        for record in records:
            self.agent_log_step += 1
            if self.agent_logger is not None:
                self.agent_logger.log_metrics(dict(record), step=self.agent_log_step)
            step = int(record["round"] * self.local_epochs + record["epoch"])
            scalars = {f"agent_{record['agent']}/train_loss": record["loss"],
                       f"agent_{record['agent']}/train_acc": record["acc"]}
            for logger in self.loggers:
                if type(logger).__name__ != "CSVLogger":
                    logger.log_metrics(scalars, step=step)

    def round(self, row: dict[str, Any], history: list[dict[str, Any]]) -> None:
        """One round's row: to the loggers, and metrics.csv rewritten atomically."""
        if not self.is_main:
            return
        for logger in self.loggers:
            logger.log_metrics({k: v for k, v in row.items() if k != "round" and v is not None}, step=row["round"])
        self.write_metrics(history)

    def write_metrics(self, history: list[dict[str, Any]]) -> None:
        if self.is_main:
            self.run_dir.write_csv("metrics.csv", history, columns=ROUND_COLUMNS)

    def finalize(self) -> str:
        """Close the loggers and return the profiler's summary (empty without a profiler)."""
        for logger in self.loggers + ([self.agent_logger] if self.agent_logger else []):
            logger.finalize("success")
        self.profiler.describe()
        return self.profiler.summary() if hasattr(self.profiler, "recorded_durations") else ""
