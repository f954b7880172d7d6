"""Device speeds from a trace (docs/heterogeneity.md): one line per agent, or lines dealt out to the
agents in turn when the trace names none (as FedScale assigns its device profiles)."""

from __future__ import annotations

import numpy as np
from flcore_plugins.devices.profiles import SPEED_FIELDS, SpeedProfile
from pydantic import Field

from flcore.agents import AgentPopulation
from flcore.errors import ConfigError
from flcore.params import ComponentParams
from flcore.traces import read_table

_UNITS = {"compute_speed": "training samples per second", "download_bandwidth": "bytes per second",
          "upload_bandwidth": "bytes per second"}


class DeviceTraceParams(ComponentParams):
    path: str = Field(description="The trace: CSV (or Parquet with pyarrow) with columns compute_speed, "
                      "download_bandwidth, upload_bandwidth and optionally agent.")


class DeviceTrace(SpeedProfile):
    """Speeds read in ``setup``; with an ``agent`` column every agent must have exactly one line,
    without one agent ``a`` gets line ``a mod lines``."""

    Params = DeviceTraceParams

    def setup(self, population: AgentPopulation, rng: np.random.Generator) -> None:
        names = [f.name for f in SPEED_FIELDS]
        table = read_table(self.params.path, names, ("agent",))
        speeds = {name: table.positive(name, _UNITS[name]) for name in names}
        agents = len(population)
        if len(table) == 0:
            raise ConfigError(f"trace '{self.params.path}' holds no device: expected a line per agent, or at least "
                              "one line to deal out.")
        if "agent" in table.columns:
            named = table.integers("agent", 0, agents, f"an agent id of this run (federation.agents = {agents})")
            seen = np.zeros(agents, dtype=np.int64) - 1
            order = np.argsort(named, kind="stable")
            repeat = np.flatnonzero(named[order][1:] == named[order][:-1])
            if repeat.size:
                raise table.fail(int(order[repeat[0] + 1]), "agent", f"the agent already has a line "
                                 f"({table.line(int(order[repeat[0]]))}); expected one line per agent")
            seen[named] = np.arange(len(named))
            absent = np.flatnonzero(seen < 0)
            if absent.size:
                raise ConfigError(f"trace '{self.params.path}' has no line for agent {absent[0]} ({absent.size} of "
                                  f"{agents} agents are missing); expected one line per agent, or no agent column "
                                  "to deal the lines out in turn.")
            row_of = seen
        else:
            row_of = np.arange(agents) % len(table)
        everyone = np.arange(agents)
        for name in names:
            population.update(name, everyone, speeds[name][row_of])
