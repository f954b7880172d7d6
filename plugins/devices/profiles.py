"""Device profiles: none (instant), and speeds drawn per agent from named distributions.

Speeds are in the units the time model needs: ``compute_speed`` in training samples per second (a
sample's forward and backward pass), ``download_bandwidth`` and ``upload_bandwidth`` in bytes per
second. An agent's round then takes ``download / download_bandwidth + samples / compute_speed +
upload / upload_bandwidth`` virtual seconds.
"""

from __future__ import annotations

from typing import Annotated, Literal, Sequence, Union

import numpy as np
from pydantic import Field, model_validator

from flcore.agents import AgentField, AgentPopulation
from flcore.devices import DeviceProfile, Work
from flcore.params import ComponentParams

#: the per-agent fields of a speed profile, in the order of their columns in a device trace
SPEED_FIELDS = (
    AgentField("compute_speed", 1.0, "float64", "Training samples the agent processes per virtual second."),
    AgentField("download_bandwidth", 1.0, "float64", "Bytes per second the agent downloads."),
    AgentField("upload_bandwidth", 1.0, "float64", "Bytes per second the agent uploads."),
)


class Instant(DeviceProfile):
    """Every agent downloads, trains and uploads in no time: the virtual clock stands still (the
    default, for experiments that do not model devices)."""

    def seconds(self, population: AgentPopulation, agents: np.ndarray, work: Work) -> np.ndarray:
        return np.zeros(len(agents))

    def samples_within(self, population, agents, seconds, download_bytes, upload_bytes, most=2**40) -> np.ndarray:
        return np.broadcast_to(np.asarray(most, dtype=np.int64), (len(agents),)).copy()


class SpeedProfile(DeviceProfile):
    """Base of profiles that keep the three speeds as agent fields; the time model is linear."""

    def state_fields(self) -> Sequence[AgentField]:
        return SPEED_FIELDS

    def speeds(self, population: AgentPopulation, agents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Compute speed, download and upload bandwidth of ``agents``."""
        return tuple(population.column(f.name)[agents] for f in SPEED_FIELDS)

    def seconds(self, population: AgentPopulation, agents: np.ndarray, work: Work) -> np.ndarray:
        compute, down, up = self.speeds(population, np.asarray(agents, dtype=np.int64))
        return (np.asarray(work.download_bytes, dtype=np.float64) / down
                + np.asarray(work.samples, dtype=np.float64) / compute
                + np.asarray(work.upload_bytes, dtype=np.float64) / up)

    def samples_within(self, population, agents, seconds, download_bytes, upload_bytes, most=2**40) -> np.ndarray:
        agents = np.asarray(agents, dtype=np.int64)
        compute, down, up = self.speeds(population, agents)
        left = seconds - np.asarray(download_bytes, dtype=np.float64) / down - np.asarray(upload_bytes, np.float64) / up
        samples = np.floor(np.clip(left * compute, 0, float(2**52))).astype(np.int64)
        samples = np.minimum(samples, most)
        # float rounding at the boundary: one sample more may still fit, or the last one may not
        more = np.minimum(samples + 1, most)
        samples = np.where(self.seconds(population, agents, Work(more, download_bytes, upload_bytes)) <= seconds,
                           more, samples)
        over = self.seconds(population, agents, Work(samples, download_bytes, upload_bytes)) > seconds
        samples = np.where(over, np.maximum(samples - 1, 0), samples)
        return np.where(left < 0, 0, samples)


class Lognormal(ComponentParams):
    distribution: Literal["lognormal"] = "lognormal"
    median: float = Field(gt=0, description="exp(mu): half the agents are slower, half faster.")
    sigma: float = Field(1.0, ge=0, description="Standard deviation of the log; 0 gives every agent the median.")

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.lognormal(np.log(self.median), self.sigma, size)


class Uniform(ComponentParams):
    distribution: Literal["uniform"] = "uniform"
    low: float = Field(gt=0)
    high: float = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.low > self.high:
            raise ValueError(f"low = {self.low} is above high = {self.high}; expected low <= high")
        return self

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return rng.uniform(self.low, self.high, size)


class Constant(ComponentParams):
    distribution: Literal["constant"] = "constant"
    value: float = Field(gt=0)

    def draw(self, rng: np.random.Generator, size: int) -> np.ndarray:
        return np.full(size, self.value)


Spread = Annotated[Union[Lognormal, Uniform, Constant], Field(discriminator="distribution")]


class DrawnParams(ComponentParams):
    compute_speed: Spread = Field(
        default_factory=lambda: Lognormal(median=50.0, sigma=0.7),
        description="Training samples per second: {distribution: lognormal, median, sigma}, {distribution: uniform, "
        "low, high} or {distribution: constant, value}.")
    download_bandwidth: Spread = Field(default_factory=lambda: Lognormal(median=2.5e6, sigma=0.8),
                                       description="Bytes per second downloaded (2.5e6: 20 Mbit/s).")
    upload_bandwidth: Spread = Field(default_factory=lambda: Lognormal(median=0.6e6, sigma=0.8),
                                     description="Bytes per second uploaded (0.6e6: about 5 Mbit/s).")


class Drawn(SpeedProfile):
    """Each agent's three speeds drawn once, in ``setup``, from this component's seeded stream."""

    Params = DrawnParams

    def setup(self, population: AgentPopulation, rng: np.random.Generator) -> None:
        everyone = np.arange(len(population))
        for agent_field in SPEED_FIELDS:
            population.update(agent_field.name, everyone, getattr(self.params, agent_field.name).draw(rng, len(everyone)))
