"""The power-of-choice sampler."""

from __future__ import annotations

import numpy as np
from pydantic import Field, model_validator

from flcore.agents import AgentPopulation
from flcore.params import ComponentParams
from flcore.sampling import Sampler


class PowerOfChoiceParams(ComponentParams):
    candidates: int = Field(10, gt=0, description="d: agents drawn as candidates, weighted by data size.")
    count: int = Field(3, gt=0, description="m: agents kept, those with the highest last local loss.")

    @model_validator(mode="after")
    def _count_within_candidates(self) -> PowerOfChoiceParams:
        if self.count > self.candidates:
            raise ValueError(f"count ({self.count}) must not exceed candidates ({self.candidates})")
        return self


class PowerOfChoice(Sampler):
    """Reads the ``last_loss`` agent metadata column (from flcore's ``participation`` component)."""

    Params = PowerOfChoiceParams

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator) -> np.ndarray:
        if "last_loss" not in population.columns:
            raise RuntimeError("power_of_choice needs the 'last_loss' agent metadata of flcore's 'participation'")
        sizes = population.num_samples.astype(np.float64)
        d = min(self.params.candidates, int((sizes > 0).sum()))
        candidates = rng.choice(len(population), size=d, replace=False, p=sizes / sizes.sum())
        loss = population.columns["last_loss"][candidates].astype(np.float64)
        loss = np.where(np.isnan(loss), np.inf, loss)
        order = np.lexsort((candidates, -loss))  # highest loss first; ties by id, deterministic
        return np.sort(candidates[order[: min(self.params.count, d)]])
