"""The power-of-choice sampler."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from pydantic import Field, model_validator

from flcore.agents import AgentPopulation
from flcore.params import ComponentParams
from flcore.protocol import Requirement
from flcore.sampling import Sampler, candidates


class PowerOfChoiceParams(ComponentParams):
    candidates: int = Field(10, gt=0, description="d: agents drawn as candidates, weighted by data size.")
    count: int = Field(3, gt=0, description="m: agents kept, those with the highest last local loss.")

    @model_validator(mode="after")
    def _count_within_candidates(self) -> PowerOfChoiceParams:
        if self.count > self.candidates:
            raise ValueError(f"count ({self.count}) must not exceed candidates ({self.candidates})")
        return self


class PowerOfChoice(Sampler):
    """Reads the ``last_loss`` agent field of flcore's ``participation`` metadata, which it requires
    (so a config need not enable it)."""

    Params = PowerOfChoiceParams

    @classmethod
    def requirements(cls, params: PowerOfChoiceParams) -> Sequence[Requirement]:
        return (Requirement("agent_metadata", "flcore:participation"),)

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator,
               available: np.ndarray | None = None) -> np.ndarray:
        ids = candidates(population, available)
        sizes = population.num_samples[ids].astype(np.float64)
        d = min(self.params.candidates, int((sizes > 0).sum()))
        drawn = rng.choice(ids, size=d, replace=False, p=sizes / sizes.sum())
        loss = population.column("last_loss")[drawn].astype(np.float64)
        loss = np.where(np.isnan(loss), np.inf, loss)
        order = np.lexsort((drawn, -loss))  # highest loss first; ties by id, deterministic
        return np.sort(drawn[order[: min(self.params.count, d)]])
