"""Agents: light records (id, shard, metadata) held as columns, not as objects or models.

Only the agents being trained hold model state, and only while they train. Metadata fields come from
plugins through the ``register_agent_metadata`` hook; a field with a NumPy ``dtype`` is a column over
all agents, one without is a sparse mapping from agent id to any object (a tensor of control
variates, say). Both persist across rounds and are checkpointed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Sequence

import numpy as np

from flcore.params import ComponentParams, NoParams
from flcore.partition import Partition

if TYPE_CHECKING:
    from flcore.aggregation import ClientUpdate


@dataclass(frozen=True)
class AgentField:
    """One metadata field: a column when ``dtype`` is given, else a sparse per-agent mapping."""

    name: str
    default: Any = None
    dtype: str | None = None
    description: str = ""


class AgentMetadata:
    """A metadata component: declares fields and updates them after each round."""

    Params: type[ComponentParams] = NoParams

    def __init__(self, params: ComponentParams) -> None:
        self.params = params

    def fields(self) -> Sequence[AgentField]:
        """The fields this component adds to every agent."""
        return ()

    def on_round_end(self, population: AgentPopulation, round_index: int, updates: Sequence[ClientUpdate]) -> None:
        """Update the fields from the round's accepted updates."""


class AgentPopulation:
    """Every registered agent: shards as a :class:`Partition`, metadata as columns."""

    def __init__(self, partition: Partition, fields: Iterable[AgentField] = ()) -> None:
        self.partition = partition
        self.num_samples = partition.sizes
        self.columns: dict[str, np.ndarray] = {}
        self.objects: dict[str, dict[int, Any]] = {}
        self._defaults: dict[str, Any] = {}
        for field in fields:
            self.add_field(field)

    def __len__(self) -> int:
        return self.partition.num_agents

    def add_field(self, field: AgentField) -> None:
        """Add a metadata field; two components declaring the same name is an error."""
        if field.name in self._defaults:
            raise ValueError(f"agent metadata field '{field.name}' is declared twice")
        self._defaults[field.name] = field.default
        if field.dtype is not None:
            self.columns[field.name] = np.full(len(self), field.default, dtype=field.dtype)
        else:
            self.objects[field.name] = {}

    def shard(self, agent: int) -> np.ndarray:
        """The training-sample indices the agent holds."""
        return self.partition.shard(agent)

    def get(self, name: str, agent: int) -> Any:
        """One agent's value of a metadata field."""
        if name in self.columns:
            return self.columns[name][agent]
        if name in self.objects:
            return self.objects[name].get(int(agent), self._defaults[name])
        raise KeyError(f"unknown agent metadata field '{name}'; known: {sorted(self._defaults)}")

    def set(self, name: str, agent: int, value: Any) -> None:
        """Set one agent's value of a metadata field."""
        if name in self.columns:
            self.columns[name][agent] = value
        elif name in self.objects:
            self.objects[name][int(agent)] = value
        else:
            raise KeyError(f"unknown agent metadata field '{name}'; known: {sorted(self._defaults)}")

    def state_dict(self) -> dict[str, Any]:
        return {"columns": {k: v.copy() for k, v in self.columns.items()}, "objects": self.objects}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name, column in state["columns"].items():
            if name in self.columns:
                self.columns[name] = np.asarray(column).copy()
        for name, values in state["objects"].items():
            if name in self.objects:
                self.objects[name] = dict(values)
