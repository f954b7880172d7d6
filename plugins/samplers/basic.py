"""Uniform, all, size-weighted and round-robin sampling."""

from __future__ import annotations

from typing import Any

import numpy as np
from pydantic import Field

from flcore.agents import AgentPopulation
from flcore.params import ComponentParams
from flcore.sampling import Sampler, candidates


class CountParams(ComponentParams):
    fraction: float = Field(0.1, gt=0, le=1, description="Fraction of agents per round (at least one).")
    count: int | None = Field(None, gt=0, description="Agents per round; overrides fraction.")

    def how_many(self, total: int) -> int:
        wanted = self.count if self.count is not None else max(1, int(round(self.fraction * total)))
        return min(wanted, total)


class UniformSampler(Sampler):
    """``k`` distinct agents, each equally likely."""

    Params = CountParams
    uniform = True

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator,
               available: np.ndarray | None = None) -> np.ndarray:
        total = len(population)
        if available is None:  # an int population: numpy draws k ids without building all N
            return np.sort(rng.choice(total, size=self.params.how_many(total), replace=False))
        return np.sort(rng.choice(available, size=min(self.params.how_many(total), len(available)), replace=False))

    def cohort_size(self, agents: int) -> int | None:
        return self.params.how_many(agents)


class AllSampler(Sampler):
    """Every agent."""

    uniform = True

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator,
               available: np.ndarray | None = None) -> np.ndarray:
        return candidates(population, available)

    def cohort_size(self, agents: int) -> int | None:
        return agents


class WeightedSampler(Sampler):
    """``k`` distinct agents drawn with probability proportional to their sample counts."""

    Params = CountParams

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator,
               available: np.ndarray | None = None) -> np.ndarray:
        ids = candidates(population, available)
        sizes = population.num_samples[ids].astype(np.float64)
        k = min(self.params.how_many(len(population)), int((sizes > 0).sum()))
        return np.sort(rng.choice(ids, size=k, replace=False, p=sizes / sizes.sum()))

    def cohort_size(self, agents: int) -> int | None:
        return self.params.how_many(agents)


class RoundRobinSampler(Sampler):
    """Agents in id order, ``k`` at a time, wrapping around; the position is checkpointed. Agents that
    are unavailable when their turn comes are skipped for that pass."""

    Params = CountParams

    def __init__(self, params: CountParams) -> None:
        super().__init__(params)
        self.position = 0

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator,
               available: np.ndarray | None = None) -> np.ndarray:
        total = len(population)
        k = self.params.how_many(total)
        chosen = (self.position + np.arange(k)) % total
        self.position = int((self.position + k) % total)
        return chosen if available is None else chosen[np.isin(chosen, available)]

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position = int(state["position"])

    def cohort_size(self, agents: int) -> int | None:
        return self.params.how_many(agents)
