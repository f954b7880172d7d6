"""Agents: light records (id, shard, per-agent state) held as columns, not as objects or models.

Only the agents being trained hold model state, and only while they train. Per-agent state is
declared by the run's components (:meth:`flcore.protocol.RoundComponent.state_fields`): a field
with a NumPy ``dtype`` is a column over all agents, one without is a sparse mapping from agent id to
any object (a tensor of control variates, say).

Every write goes through :meth:`AgentPopulation.set` or :meth:`AgentPopulation.update` (columns are
read-only views), so the population knows which agents changed since the last checkpoint: a
checkpoint stores those rows only, and its cost follows the agents a round touched, not the
population's size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np

from flcore.agent_spill import SpillCache, SpilledField, value_bytes
from flcore.partition import Partition


@dataclass(frozen=True)
class AgentField:
    """One per-agent field: a column when ``dtype`` is given, else a sparse per-agent mapping."""

    name: str
    default: Any = None
    dtype: str | None = None
    description: str = ""


class AgentPopulation:
    """Every registered agent: shards as a :class:`Partition`, per-agent state as fields."""

    def __init__(self, partition: Partition, fields: Iterable[AgentField] = ()) -> None:
        self.partition = partition
        self.num_samples = partition.sizes
        self._columns: dict[str, np.ndarray] = {}
        self._objects: dict[str, dict[int, Any]] = {}
        self._fields: dict[str, AgentField] = {}
        self._dirty: dict[str, list[np.ndarray]] = {}
        self._spill: SpillCache | None = None
        for f in fields:
            self.add_field(f)

    def __len__(self) -> int:
        return self.partition.num_agents

    # ------------------------------------------------------------------------------------ fields
    def add_field(self, field: AgentField) -> None:
        """Add a per-agent field; two components declaring one name with different meanings is an
        error, the same declaration twice is one field."""
        known = self._fields.get(field.name)
        if known is not None:
            if (known.dtype, _same(known.default, field.default)) != (field.dtype, True):
                raise ValueError(f"agent field '{field.name}' is declared twice, differently: {known} and {field}")
            return
        self._fields[field.name] = field
        if field.dtype is not None:
            column = np.full(len(self), field.default, dtype=field.dtype)
            column.flags.writeable = False
            self._columns[field.name] = column
        else:
            self._objects[field.name] = self._sparse_store()
        self._dirty[field.name] = []

    def _sparse_store(self, values: dict[int, Any] | None = None) -> dict[int, Any] | SpilledField:
        if self._spill is None:
            return dict(values or {})
        return SpilledField(self._spill, len(self._objects), values)

    # ---------------------------------------------------------------------------- memory policy
    def spill_to(self, directory: str, budget_bytes: int) -> None:
        """Keep sparse per-agent values within ``budget_bytes`` of memory, the least recently used
        ones as files in ``directory`` (emptied now): see :mod:`flcore.agent_spill`."""
        self._spill = SpillCache(directory, budget_bytes)
        held = self._objects
        self._objects = {}
        for name, values in held.items():
            self._objects[name] = self._sparse_store(dict(values.items()))

    def close_spill(self) -> None:
        """Remove the spill folder (the run has ended; its checkpoint journal holds the values)."""
        if self._spill is not None:
            self._spill.close()

    @property
    def spill(self) -> SpillCache | None:
        """The spill cache, when sparse state is bounded in memory."""
        return self._spill

    def field_names(self) -> list[str]:
        """Every declared field, in declaration order."""
        return list(self._fields)

    def fields(self) -> list[AgentField]:
        """Every declared field."""
        return list(self._fields.values())

    def has_field(self, name: str) -> bool:
        return name in self._fields

    def check_field(self, name: str) -> None:
        """Raise ``KeyError`` naming the known fields if ``name`` was not declared."""
        if name not in self._fields:
            raise KeyError(f"unknown agent field '{name}'; the run's components declare: "
                           f"{', '.join(self._fields) or 'none'}")

    # ------------------------------------------------------------------------------------ reads
    def shard(self, agent: int) -> np.ndarray:
        """The training-sample indices the agent holds."""
        return self.partition.shard(agent)

    def column(self, name: str) -> np.ndarray:
        """A column field over all agents, read-only (write with :meth:`set` or :meth:`update`)."""
        self.check_field(name)
        if name not in self._columns:
            raise KeyError(f"agent field '{name}' is sparse (no dtype); read it with get()")
        return self._columns[name]

    @property
    def columns(self) -> dict[str, np.ndarray]:
        """Every column field, read-only."""
        return dict(self._columns)

    def get(self, name: str, agent: int) -> Any:
        """One agent's value of a field."""
        self.check_field(name)
        if name in self._columns:
            return self._columns[name][agent]
        return self._objects[name].get(int(agent), self._fields[name].default)

    def sparse_items(self, name: str) -> dict[int, Any]:
        """The agents that hold a value of a sparse field, and their values (a copy)."""
        self.check_field(name)
        return dict(self._objects[name])

    # ------------------------------------------------------------------------------------ writes
    def set(self, name: str, agent: int, value: Any) -> None:
        """Set one agent's value of a field."""
        self.check_field(name)
        agent = int(agent)
        if name in self._columns:
            self._writable(name)[agent] = value
            self._columns[name].flags.writeable = False
        else:
            self._objects[name][agent] = value
        self._dirty[name].append(np.array([agent], dtype=np.int64))

    def update(self, name: str, agents: np.ndarray, values: Any) -> None:
        """Set a column field for several agents at once (``values`` broadcasts)."""
        self.check_field(name)
        if name not in self._columns:
            for agent, value in zip(np.asarray(agents).tolist(), values):
                self.set(name, agent, value)
            return
        agents = np.asarray(agents, dtype=np.int64)
        self._writable(name)[agents] = values
        self._columns[name].flags.writeable = False
        self._dirty[name].append(agents.copy())

    def _writable(self, name: str) -> np.ndarray:
        column = self._columns[name]
        column.flags.writeable = True
        return column

    # ------------------------------------------------------------------------------ checkpoints
    def changes(self) -> dict[str, dict[str, Any]]:
        """The rows written since :meth:`mark_saved`, per field: ``{"agents": ids, "values": ...}``
        (an array for a column, a list for a sparse field)."""
        return _merged(self.changes_parts(None))

    def changes_parts(self, max_bytes: int | None) -> Iterator[dict[str, dict[str, Any]]]:
        """:meth:`changes` in pieces of at most about ``max_bytes`` of sparse values each."""
        rows = {name: np.unique(np.concatenate(pieces)) for name, pieces in self._dirty.items() if pieces}
        return self._parts(rows, max_bytes)

    def changed_rows(self) -> int:
        """How many (field, agent) rows :meth:`changes` would return, without building them."""
        return sum(len(np.unique(np.concatenate(p))) for p in self._dirty.values() if p)

    def mark_saved(self) -> None:
        """Forget the changes: they are in a checkpoint now."""
        for pieces in self._dirty.values():
            pieces.clear()

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Every field in full (a checkpoint's base), in the shape of :meth:`changes`."""
        return _merged(self.snapshot_parts(None))

    def snapshot_parts(self, max_bytes: int | None) -> Iterator[dict[str, dict[str, Any]]]:
        """:meth:`snapshot` in pieces that each hold at most about ``max_bytes`` of sparse values
        (the columns come in the first), so that a checkpoint of spilled state never loads it all.
        Applied in order, the pieces restore the same population as one snapshot."""
        rows: dict[str, np.ndarray | None] = {
            name: None if name in self._columns else np.array(sorted(self._objects[name]), dtype=np.int64)
            for name in self._fields}
        return self._parts(rows, max_bytes)

    def _parts(self, rows: dict[str, np.ndarray | None], max_bytes: int | None
               ) -> Iterator[dict[str, dict[str, Any]]]:
        """The values of ``rows`` (field -> agents, None for a whole column): columns in the first
        piece, sparse values in pieces of at most about ``max_bytes``, read one at a time."""
        part: dict[str, dict[str, Any]] = {}
        for name, agents in rows.items():
            if name in self._columns:
                column = self._columns[name]
                part[name] = {"agents": agents, "values": (column if agents is None else column[agents]).copy()}
        held = 0
        for name, agents in rows.items():
            if name in self._columns:
                continue
            store, default = self._objects[name], self._fields[name].default
            ids: list[int] = []
            chunk: list[Any] = []
            for agent in np.asarray(agents).tolist():
                if agent not in store:
                    value = default
                elif isinstance(store, SpilledField):
                    value = store.peek(agent)
                else:
                    value = store[agent]
                ids.append(agent)
                chunk.append(value)
                held += value_bytes(value)
                if max_bytes is not None and held >= max_bytes:
                    part[name] = {"agents": np.array(ids, dtype=np.int64), "values": chunk}
                    yield part
                    part, ids, chunk, held = {}, [], [], 0
            if ids or name not in part:
                part[name] = {"agents": np.array(ids, dtype=np.int64), "values": chunk}
        yield part

    def apply(self, rows: dict[str, dict[str, Any]]) -> None:
        """Write rows from :meth:`snapshot` or :meth:`changes` back (restoring a checkpoint);
        fields this run does not declare are ignored. Applied rows are not marked as changes."""
        for name, row in rows.items():
            if name not in self._fields:
                continue
            agents, values = row["agents"], row["values"]
            if name in self._columns:
                column = self._writable(name)
                if agents is None:
                    if len(values) != len(column):
                        raise ValueError(f"agent field '{name}' holds {len(values)} agents, the run has {len(column)}")
                    column[:] = np.asarray(values)
                else:
                    column[np.asarray(agents)] = np.asarray(values)
                column.flags.writeable = False
            else:
                if agents is None:
                    raise ValueError(f"agent field '{name}' is sparse but was stored as a column")
                for agent, value in zip(np.asarray(agents).tolist(), values):
                    self._objects[name][int(agent)] = value


def _merged(parts: Iterable[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Pieces of :meth:`AgentPopulation._parts` joined into one row set per field."""
    out: dict[str, dict[str, Any]] = {}
    for part in parts:
        for name, row in part.items():
            if name in out:
                out[name]["agents"] = np.concatenate([out[name]["agents"], row["agents"]])
                out[name]["values"] = out[name]["values"] + row["values"]
            else:
                out[name] = row
    return out


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) or (a != a and b != b)  # NaN defaults compare equal here
    except Exception:  # tensors and other objects: same only when identical
        return a is b
