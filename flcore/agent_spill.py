"""Per-agent state larger than memory: sparse values kept in a bounded cache, the rest on disk.

Personal models (Ditto), control variates (SCAFFOLD) or FedDyn's gradients are one tensor per agent
that has trained. With 100,000 agents that is 100,000 models, of which a round touches a few: the
population keeps the most recently used values in memory up to a byte budget
(``federation.agent_state_memory_mb``) and writes the others, least recently used first, to one
file each under the run folder (``.agent-state-rank-<k>/``, one per process). Reading a spilled value loads it back (and may
spill another). Nothing changes numerically: a value comes back bit for bit.

The spill folder is a cache, not the run's record: the checkpoint journal (see
:mod:`flcore.engine.state_store`) holds the durable copy, the folder is emptied when a run starts
or resumes and removed when it ends. Files are written atomically and read with
``torch.load(weights_only=True)``, and only files this process wrote are ever read.
"""

from __future__ import annotations

import shutil
from collections import OrderedDict
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

#: bytes counted for a value that holds no tensor (a number, a small dict)
SMALL_VALUE_BYTES = 64


def value_bytes(value: Any) -> int:
    """The memory a per-agent value holds: its tensors' bytes (nested in dicts, lists, tuples)."""
    import torch

    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, dict):
        return sum(value_bytes(v) for v in value.values()) or SMALL_VALUE_BYTES
    if isinstance(value, (list, tuple)):
        return sum(value_bytes(v) for v in value) or SMALL_VALUE_BYTES
    return SMALL_VALUE_BYTES


class SpillCache:
    """The least-recently-used values of every sparse field within ``budget_bytes``; the rest as
    files in ``directory`` (``<field index>/<agent>.pt``)."""

    def __init__(self, directory: str | Path, budget_bytes: int) -> None:
        self.directory = Path(directory)
        self.budget = int(budget_bytes)
        self.cached: OrderedDict[tuple[int, int], Any] = OrderedDict()
        self.sizes: dict[tuple[int, int], int] = {}
        self.cached_bytes = 0
        self.on_disk: dict[int, set[int]] = {}
        self.clean: set[tuple[int, int]] = set()  # cached values whose file is still current
        self.spilled_writes = 0  # values written to disk, over the cache's life
        self.loads = 0  # values read back from disk
        self.peak_bytes = 0  # the most bytes the cache held at once
        self.reset()

    def reset(self) -> None:
        """Forget every value and empty the folder (a run starting or resuming)."""
        shutil.rmtree(self.directory, ignore_errors=True)
        self.cached.clear()
        self.sizes.clear()
        self.cached_bytes = 0
        self.on_disk.clear()
        self.clean.clear()

    def close(self) -> None:
        """Remove the folder; the values are gone (the checkpoint journal holds them)."""
        self.reset()

    def stats(self) -> dict[str, int]:
        """What the run's summary reports: the budget, the peak bytes held, writes and loads."""
        return {"budget_bytes": self.budget, "peak_bytes_in_memory": self.peak_bytes,
                "values_spilled": self.spilled_writes, "values_loaded": self.loads}

    # --------------------------------------------------------------------------------- access
    def contains(self, field: int, agent: int) -> bool:
        return (field, agent) in self.cached or agent in self.on_disk.get(field, ())

    def get(self, field: int, agent: int, default: Any) -> Any:
        key = (field, agent)
        if key in self.cached:
            self.cached.move_to_end(key)
            return self.cached[key]
        if agent not in self.on_disk.get(field, ()):
            return default
        value = self._read(field, agent)
        self.loads += 1
        self._keep(key, value)
        self.clean.add(key)
        return value

    def peek(self, field: int, agent: int) -> Any:
        """A value without making it recently used (a checkpoint streaming every value)."""
        key = (field, agent)
        return self.cached[key] if key in self.cached else self._read(field, agent)

    def set(self, field: int, agent: int, value: Any) -> None:
        key = (field, agent)
        self._drop_cached(key)
        self.on_disk.get(field, set()).discard(agent)
        self.clean.discard(key)
        self._keep(key, value)

    def agents(self, field: int) -> list[int]:
        """Every agent holding a value of ``field``, in ascending order."""
        held = {a for f, a in self.cached if f == field} | self.on_disk.get(field, set())
        return sorted(held)

    # ------------------------------------------------------------------------------ internals
    def _keep(self, key: tuple[int, int], value: Any) -> None:
        size = value_bytes(value)
        self.cached[key] = value
        self.sizes[key] = size
        self.cached_bytes += size
        while self.cached_bytes > self.budget and len(self.cached) > 1:
            old_key, old_value = next(iter(self.cached.items()))
            if old_key not in self.clean:
                self._write(*old_key, old_value)
            self.clean.discard(old_key)
            self._drop_cached(old_key)
            self.on_disk.setdefault(old_key[0], set()).add(old_key[1])
        self.peak_bytes = max(self.peak_bytes, self.cached_bytes)

    def _drop_cached(self, key: tuple[int, int]) -> None:
        if key in self.cached:
            del self.cached[key]
            self.cached_bytes -= self.sizes.pop(key)

    def _path(self, field: int, agent: int) -> Path:
        return self.directory / str(field) / f"{agent}.pt"

    def _write(self, field: int, agent: int, value: Any) -> None:
        import torch

        path = self._path(field, agent)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(value, path)  # no fsync: a cache the next start empties, not a record
        self.spilled_writes += 1

    def _read(self, field: int, agent: int) -> Any:
        import torch

        return torch.load(self._path(field, agent), weights_only=True, map_location="cpu")


class SpilledField(MutableMapping):
    """One sparse field's ``{agent: value}`` mapping, backed by a shared :class:`SpillCache`."""

    def __init__(self, cache: SpillCache, index: int, values: dict[int, Any] | None = None) -> None:
        self.cache, self.index = cache, index
        for agent, value in (values or {}).items():
            self[agent] = value

    def __getitem__(self, agent: int) -> Any:
        missing = object()
        value = self.cache.get(self.index, int(agent), missing)
        if value is missing:
            raise KeyError(agent)
        return value

    def get(self, agent: int, default: Any = None) -> Any:
        return self.cache.get(self.index, int(agent), default)

    def peek(self, agent: int) -> Any:
        return self.cache.peek(self.index, int(agent))

    def __setitem__(self, agent: int, value: Any) -> None:
        self.cache.set(self.index, int(agent), value)

    def __delitem__(self, agent: int) -> None:
        raise TypeError("per-agent state is overwritten, never deleted")

    def __contains__(self, agent: object) -> bool:
        try:
            return self.cache.contains(self.index, int(agent))  # type: ignore[call-overload]
        except (TypeError, ValueError):
            return False

    def __iter__(self) -> Iterator[int]:
        return iter(self.cache.agents(self.index))

    def __len__(self) -> int:
        return len(self.cache.agents(self.index))
