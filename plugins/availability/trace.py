"""Availability from a trace of online intervals per agent, on the virtual clock.

The trace (docs/heterogeneity.md) has one line per interval: ``agent,start,end`` in virtual
seconds, online in ``[start, end)``, and optionally ``period``: that agent's trace repeats every
``period`` seconds (FedScale's ``finish_time``), its intervals inside ``[0, period]``. An agent's
intervals must not overlap. ``flcore convert-trace`` writes this layout from FedScale's
client-behaviour trace.

Finding who is online is vectorized over the population: each agent keeps a pointer to its first
interval that has not ended; as the clock advances only pointers past their interval's end move.
A round therefore costs a few passes over the agents, whatever the number of intervals; the
pointers are a cache of the clock and the trace, rebuilt from them after a resume.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from pydantic import Field

from flcore.agents import AgentPopulation
from flcore.availability import Availability
from flcore.errors import ConfigError
from flcore.params import ComponentParams
from flcore.protocol import RoundContext
from flcore.traces import Table, read_table


class TraceParams(ComponentParams):
    path: str = Field(description="The trace file: CSV (or Parquet with pyarrow) with columns agent, start, end and "
                      "optionally period.")
    missing: Literal["offline", "online"] = Field(
        "offline", description="Agents the trace does not name: never online, or always online.")


class TraceAvailability(Availability):
    """Agents online at the virtual clock's time according to their intervals."""

    Params = TraceParams

    def setup(self, population: AgentPopulation, rng: np.random.Generator) -> None:
        self.intervals = OnlineIntervals.from_table(read_table(self.params.path, ("agent", "start", "end"), ("period",)),
                                                    len(population))
        self.trace_sha256 = self.intervals.sha256

    def online(self, context: RoundContext) -> np.ndarray | None:
        online = self.intervals.online(float(context.clock))
        if self.params.missing == "online":
            online |= self.intervals.unnamed
        return np.flatnonzero(online)

    def state_dict(self) -> dict[str, Any]:
        return {"trace_sha256": self.trace_sha256}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("trace_sha256") != self.trace_sha256:
            raise ConfigError(f"trace '{self.params.path}' changed since the run started (its SHA-256 was "
                              f"{state.get('trace_sha256')}, it is {self.trace_sha256}): resume with the trace the "
                              "run began with, or start a new run.")


class OnlineIntervals:
    """Every agent's online intervals, sorted, and who is online at a time."""

    def __init__(self, agents: int, starts: np.ndarray, ends: np.ndarray, counts: np.ndarray,
                 periods: np.ndarray | None, sha256: str = "") -> None:
        self.agents = agents
        self.offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.starts = np.append(starts, np.inf)  # one past the end, so that a pointer there reads "not online"
        self.ends = np.append(ends, np.inf)
        self.periods = periods  # None: no agent's trace repeats
        if periods is not None:  # time / divisor counts an agent's cycles (0 when it does not repeat)
            finite = np.isfinite(periods)
            self._divisor, self._length = np.where(finite, periods, np.inf), np.where(finite, periods, 0.0)
            if len(periods) and finite.all() and (periods == periods[0]).all():  # one period: scalars suffice
                self._divisor = self._length = float(periods[0])
        self.unnamed = counts == 0
        self.sha256 = sha256
        self._pointer: np.ndarray | None = None
        self._cycle: np.ndarray | None = None
        self._time = -np.inf

    @classmethod
    def from_table(cls, table: Table, agents: int) -> OnlineIntervals:
        """Check a trace (agents that exist, intervals that are ordered, within their period and
        disjoint) and index it; errors name the file, the line and the column."""
        agent = table.integers("agent", 0, agents, f"an agent id of this run (federation.agents = {agents})")
        start = table.finite("start", "a virtual time in seconds", low=0.0)
        end = table.finite("end", "a virtual time in seconds")
        bad = np.flatnonzero(end <= start)
        if bad.size:
            raise table.fail(int(bad[0]), "end", f"an interval must end after it starts (start = {start[bad[0]]})")
        order = np.lexsort((start, agent))
        agent, start, end = agent[order], start[order], end[order]
        same = agent[1:] == agent[:-1]
        overlap = np.flatnonzero(same & (start[1:] < end[:-1]))
        if overlap.size:
            i = int(overlap[0])
            raise table.fail(int(order[i + 1]), "start", f"overlaps agent {agent[i]}'s interval "
                             f"[{start[i]:g}, {end[i]:g}) on line {table.line(int(order[i]))}")
        periods = None
        if "period" in table.columns:
            period = table.positive("period", "the length in seconds after which the agent's trace repeats")[order]
            changed = np.flatnonzero(same & (period[1:] != period[:-1]))
            if changed.size:
                raise table.fail(int(order[changed[0] + 1]), "period", f"agent {agent[changed[0]]} has period "
                                 f"{period[changed[0]]:g} on line {table.line(int(order[changed[0]]))}; expected one "
                                 "period per agent")
            beyond = np.flatnonzero(end > period)
            if beyond.size:
                raise table.fail(int(order[beyond[0]]), "end", f"an interval must lie within its period "
                                 f"({period[beyond[0]]:g} s)")
            periods = np.full(agents, np.inf)
            periods[agent] = period
        counts = np.bincount(agent, minlength=agents)
        return cls(agents, start, end, counts, periods, table.sha256)

    def online(self, time: float) -> np.ndarray:
        """A boolean mask over agents: who is inside an interval at virtual time ``time``."""
        local = self._local_time(time)
        pointer = self._pointer
        segment_end = self.offsets[1:]
        passed = np.flatnonzero(self.ends[pointer] <= local)
        while passed.size:  # only agents whose interval ended since the last call move on
            pointer[passed] = np.minimum(pointer[passed] + 1, segment_end[passed])
            at = local if np.ndim(local) == 0 else local[passed]
            passed = passed[(pointer[passed] < segment_end[passed]) & (self.ends[pointer[passed]] <= at)]
        self._time = time
        return (pointer < segment_end) & (self.starts[pointer] <= local)

    def _local_time(self, time: float) -> float | np.ndarray:
        """The time within each agent's period (or ``time`` itself); resets the pointers of agents
        whose trace started over, and all of them when time went back (a fresh start)."""
        fresh = self._pointer is None or time < self._time
        if fresh:
            self._pointer = self.offsets[:-1].copy()
        if self.periods is None:
            return time
        cycle = np.floor(time / self._divisor)
        if fresh:
            self._cycle = cycle
        elif np.ndim(cycle) == 0:
            if cycle != self._cycle:  # everyone's trace started over
                self._pointer = self.offsets[:-1].copy()
                self._cycle = cycle
        else:
            wrapped = np.flatnonzero(cycle != self._cycle)
            self._pointer[wrapped] = self.offsets[wrapped]
            self._cycle = cycle
        return time - cycle * self._length
