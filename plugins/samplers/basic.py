"""Uniform, all, size-weighted and round-robin sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from flcore.agents import AgentPopulation
from flcore.params import ComponentParams
from flcore.sampling import Sampler


class CountParams(ComponentParams):
    fraction: float = Field(0.1, gt=0, le=1, description="Fraction of agents per round (at least one).")
    count: int | None = Field(None, gt=0, description="Agents per round; overrides fraction.")

    def how_many(self, total: int) -> int:
        wanted = self.count if self.count is not None else max(1, int(round(self.fraction * total)))
        return min(wanted, total)


class UniformSampler(Sampler):
    """``k`` distinct agents, each equally likely."""

    Params = CountParams

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator) -> np.ndarray:
        total = len(population)
        return np.sort(rng.choice(total, size=self.params.how_many(total), replace=False))


class AllSampler(Sampler):
    """Every agent."""

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator) -> np.ndarray:
        return np.arange(len(population))


class WeightedSampler(Sampler):
    """``k`` distinct agents drawn with probability proportional to their sample counts."""

    Params = CountParams

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator) -> np.ndarray:
        sizes = population.num_samples.astype(np.float64)
        k = min(self.params.how_many(len(population)), int((sizes > 0).sum()))
        return np.sort(rng.choice(len(population), size=k, replace=False, p=sizes / sizes.sum()))


class RoundRobinSampler(Sampler):
    """Agents in id order, ``k`` at a time, wrapping around; the position is checkpointed."""

    Params = CountParams

    def __init__(self, params: CountParams) -> None:
        super().__init__(params)
        self.position = 0

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator) -> np.ndarray:
        total = len(population)
        k = self.params.how_many(total)
        chosen = (self.position + np.arange(k)) % total
        self.position = int((self.position + k) % total)
        return chosen

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])
