"""A run's checkpoints: small server state in one sealed file, per-agent state in a journal.

``checkpoint.pt`` holds the round to continue from, the global model, every component's server
state, the metrics so far, and a manifest: the config fingerprint, the agent count, the model's
parameter shapes, and the per-agent state files (with their SHA-256) to replay in order. Per-agent
state starts from the defaults the run's components declare; each checkpoint appends files in
``agents/`` with the rows written since the previous checkpoint, so a checkpoint costs what the
rounds since the last one touched, not the population's size. When the change files since the last
snapshot hold more rows than there are agents, the next checkpoint writes one full snapshot instead
and drops the older files. Every file holds at most about :data:`PART_BYTES` of sparse values, or a
quarter of the spill budget if that is less (more files when there is more), so that state spilled
to disk (:mod:`flcore.agent_spill`) is streamed through a checkpoint, never loaded whole.

Order of writes: the journal file, then ``checkpoint.pt`` (atomic rename), then the removal of files
it no longer lists. A kill at any moment leaves either the old or the new checkpoint intact; files
left over from a killed write are removed when the run is resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from flcore.agents import AgentPopulation
from flcore.engine.checkpoint import CorruptFile, load_sealed, save_sealed

CHECKPOINT_FORMAT = 2
JOURNAL = "agents"
#: sparse per-agent bytes per journal file: spilled state is streamed, never in memory whole
PART_BYTES = 256 * 2**20


def config_fingerprint(config: dict[str, Any], resumable: tuple[str, ...]) -> str:
    """SHA-256 of the config without the fields a resume may change (``federation.rounds``, ...)."""
    import copy

    trimmed = copy.deepcopy(config)
    for dotted in resumable:
        node = trimmed
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict):
            node.pop(leaf, None)
    return hashlib.sha256(json.dumps(trimmed, sort_keys=True, default=str).encode("utf-8")).hexdigest()


class CheckpointStore:
    """Writes and restores the checkpoints of one run folder."""

    def __init__(self, run_path: Path) -> None:
        self.path = Path(run_path)
        self.file = self.path / "checkpoint.pt"
        self.journal_dir = self.path / JOURNAL
        self.journal: list[dict[str, Any]] = []  # [{"name", "sha256", "rows"}] to replay, oldest first

    def exists(self) -> bool:
        return self.file.is_file()

    # --------------------------------------------------------------------------------- saving
    def save(self, state: dict[str, Any], manifest: dict[str, Any], population: AgentPopulation, round_tag: int) -> None:
        """Checkpoint ``state`` and the population's changes since the last checkpoint."""
        rows = population.changed_rows()
        journal_rows = sum(entry["rows"] for entry in self.journal)
        # a piece is in memory twice while it is sealed (values, bytes): keep it well within the budget
        part_bytes = PART_BYTES if population.spill is None else min(PART_BYTES, population.spill.budget // 4)
        if rows and journal_rows + rows > len(population):
            # a snapshot counts 0 rows: what is counted is the change files written since it, so that
            # after a compaction checkpoints go back to costing the rows a round touched
            journal = self._write_parts(population.snapshot_parts(part_bytes), f"snapshot-{round_tag:08d}", 0)
        elif rows:
            prefix = f"changes-{round_tag:08d}"
            journal = [entry for entry in self.journal if not entry["name"].startswith(prefix)]
            journal += self._write_parts(population.changes_parts(part_bytes), prefix, rows)
        else:
            journal = list(self.journal)
        save_sealed({"format": CHECKPOINT_FORMAT, "manifest": manifest, "journal": journal, "state": state}, self.file)
        population.mark_saved()
        self.journal = journal
        self._remove_unlisted()

    def _write_parts(self, parts: Any, prefix: str, rows: int) -> list[dict[str, Any]]:
        """Each piece as one sealed file ``<prefix>-<index>.pt``; the first entry carries ``rows``."""
        entries = []
        for index, part in enumerate(parts):
            name = f"{prefix}-{index:05d}.pt"
            digest = save_sealed(_to_torch(part), self.journal_dir / name)
            entries.append({"name": name, "sha256": digest, "rows": 0 if index else rows})
        return entries

    # -------------------------------------------------------------------------------- loading
    def load(self) -> dict[str, Any]:
        """The sealed checkpoint (its integrity checked); call :meth:`restore_population` next."""
        checkpoint = load_sealed(self.file)
        if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
            found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise CorruptFile(f"'{self.file}' has checkpoint format {found!r}; this flcore reads format "
                              f"{CHECKPOINT_FORMAT}.")
        self.journal = list(checkpoint["journal"])
        return checkpoint

    def restore_population(self, population: AgentPopulation) -> None:
        """Replay the journal into ``population`` (checking each file's digest), then remove files
        a killed write left behind."""
        for entry in self.journal:
            name = str(entry["name"])
            if "/" in name or name.startswith("."):
                raise CorruptFile(f"'{self.file}' lists a per-agent state file outside {JOURNAL}/: {name!r}")
            rows = _to_numpy(load_sealed(self.journal_dir / name, expected_sha256=str(entry["sha256"])))
            try:
                population.apply(rows)
            except (ValueError, KeyError, TypeError, IndexError) as exc:
                raise CorruptFile(f"'{self.journal_dir / name}' does not fit this run's agents: {exc}") from None
        population.mark_saved()
        self._remove_unlisted()
        for stale in self.path.glob(".checkpoint.pt.*.tmp"):
            stale.unlink(missing_ok=True)

    def _remove_unlisted(self) -> None:
        if not self.journal_dir.is_dir():
            return
        listed = {entry["name"] for entry in self.journal}
        for file in self.journal_dir.iterdir():
            if file.name not in listed and not file.is_dir():
                file.unlink(missing_ok=True)


def _to_torch(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """NumPy arrays as tensors: ``torch.load(weights_only=True)`` reads tensors, not NumPy pickles."""
    import numpy as np
    import torch

    def convert(value: Any) -> Any:
        return torch.from_numpy(np.ascontiguousarray(value)) if isinstance(value, np.ndarray) else value

    return {name: {"agents": convert(row["agents"]), "values": convert(row["values"])} for name, row in rows.items()}


def _to_numpy(rows: Any) -> dict[str, dict[str, Any]]:
    import torch

    if not isinstance(rows, dict):
        raise CorruptFile(f"a per-agent state file holds {type(rows).__name__}, not rows of fields")

    def convert(value: Any) -> Any:
        return value.numpy() if isinstance(value, torch.Tensor) else value

    return {name: {"agents": convert(row["agents"]), "values": convert(row["values"])} for name, row in rows.items()}


def read_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's checkpoint for inspection: its state, manifest and the per-agent columns
    (replayed from the journal) as ``{"columns": {...}, "sparse": {...}}``."""
    import numpy as np

    store = CheckpointStore(Path(run_dir))
    checkpoint = store.load()
    columns: dict[str, Any] = {}
    sparse: dict[str, dict[int, Any]] = {}
    agents = int(checkpoint["manifest"]["agents"])
    for field in checkpoint["manifest"]["fields"]:
        if field["dtype"] is not None:
            columns[field["name"]] = np.full(agents, field["default"], dtype=field["dtype"])
        else:
            sparse[field["name"]] = {}
    for entry in store.journal:
        rows = _to_numpy(load_sealed(store.journal_dir / entry["name"], expected_sha256=entry["sha256"]))
        for name, row in rows.items():
            if name in columns:
                if row["agents"] is None:
                    columns[name][:] = np.asarray(row["values"])
                else:
                    columns[name][np.asarray(row["agents"])] = np.asarray(row["values"])
            elif name in sparse:
                sparse[name].update(zip(np.asarray(row["agents"]).tolist(), row["values"]))
    return {**checkpoint, "columns": columns, "sparse": sparse}
