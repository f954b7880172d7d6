"""Poisson sampling of agents: each available agent takes part independently with probability ``rate``.

The cohort's size varies from round to round (binomial), unlike the ``uniform`` sampler's fixed
count; in exchange each agent's inclusion is independent of every other's, which is the sampling that
privacy amplification by subsampling assumes (``dp_fedavg`` accounts for it exactly).
"""

from __future__ import annotations

import numpy as np
from pydantic import Field

from flcore.agents import AgentPopulation
from flcore.params import ComponentParams
from flcore.sampling import Sampler, candidates


class PoissonParams(ComponentParams):
    rate: float = Field(0.1, gt=0, le=1, description="q: the probability that each available agent is chosen, "
                        "independently of the others, every round.")


class PoissonSampler(Sampler):
    """Each available agent independently with probability ``rate``; a round may select none."""

    Params = PoissonParams
    uniform = True

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator,
               available: np.ndarray | None = None) -> np.ndarray:
        ids = candidates(population, available)
        return ids[rng.random(len(ids)) < self.params.rate]

    def inclusion_rate(self) -> float | None:
        return self.params.rate

    def cohort_size(self, agents: int) -> int | None:
        return agents  # the most it can select: every agent, in the unlikely round that draws them all
