"""The run folder: resolved config, plugin provenance, metrics, checkpoint, summary.

Layout (documented in docs/outputs.md)::

    <out>/<name>-<timestamp>/
        config.yaml      the resolved config; `flcore run --resume` reads it back
        plugins.json     installed plugin distributions and versions, and the components used
        partition.json   samples and classes per agent
        records.json     what components record about themselves (an attack's malicious agents)
        metrics.csv      one row per round (or epoch), rewritten atomically
        sampling.csv     how often each agent was selected
        checkpoint.pt    the latest checkpoint (sealed: checked before a resume), replaced atomically
        agents/          per-agent state written since the start, one file per checkpoint
        model.pt         the final global model's state dict
        summary.json     final metrics, parameter counts, timings
        profile*.txt     the Lightning profiler's summary
        logs/            the Lightning loggers' folders
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import yaml

from flcore.engine.checkpoint import write_json, write_text


class RunDirectory:
    """Paths and atomic writers of one run's folder."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @classmethod
    def create(cls, out_root: str | Path, name: str) -> RunDirectory:
        """A new, unique folder ``<out_root>/<name>-<timestamp>``."""
        root = Path(out_root)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for suffix in [""] + [f"-{i}" for i in range(1, 1000)]:
            path = root / f"{name}-{stamp}{suffix}"
            try:
                path.mkdir(parents=True, exist_ok=False)
                return cls(path)
            except FileExistsError:
                continue
        raise RuntimeError(f"could not create a unique run folder under {root}")

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint.pt"

    @property
    def config_file(self) -> Path:
        return self.path / "config.yaml"

    @property
    def logs(self) -> Path:
        return self.path / "logs"

    def clear_outputs(self) -> None:
        """Remove what a run wrote after its config and provenance (a run killed before its first
        checkpoint, started again): metrics, logs, journal, temporary files."""
        import shutil

        for name in ("metrics.csv", "partition.json", "records.json", "sampling.csv", "summary.json", "model.pt"):
            (self.path / name).unlink(missing_ok=True)
        for folder in ("logs", "agents"):
            if (self.path / folder).is_dir() and not (self.path / folder).is_symlink():
                shutil.rmtree(self.path / folder)
        for stale in list(self.path.glob(".*.tmp")) + list(self.path.glob("profile*.txt")):
            stale.unlink(missing_ok=True)

    def write_config(self, config: Mapping[str, Any]) -> None:
        write_text(self.config_file, yaml.safe_dump(dict(config), sort_keys=False))

    def write_json(self, name: str, data: Any) -> None:
        write_json(self.path / name, data)

    def write_csv(self, name: str, rows: Iterable[Mapping[str, Any]], columns: Iterable[str] = ()) -> None:
        """Write rows as CSV atomically: the given ``columns`` first, always, then the other keys of
        the rows in first-seen order; a cell is empty where a row has no value."""
        rows = list(rows)
        columns = dict.fromkeys(columns)
        for row in rows:
            columns.update(dict.fromkeys(row))
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(columns), restval="")
        writer.writeheader()
        writer.writerows(rows)
        write_text(self.path / name, buffer.getvalue())


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of a CSV file written by :meth:`RunDirectory.write_csv`."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def partition_record(partition: Any, labels: np.ndarray, num_classes: int, limit: int = 1000) -> dict[str, Any]:
    """What partition.json holds: statistics, every agent's size, and labels per agent for the
    first ``limit`` agents (enough for the report's chart, small for 100,000 agents)."""
    record: dict[str, Any] = {"statistics": partition.statistics(labels, num_classes),
                              "sizes": partition.sizes.tolist()}
    if partition.num_agents <= limit and len(partition.indices):
        record["label_counts"] = partition.label_counts(labels, num_classes).tolist()
    return record
