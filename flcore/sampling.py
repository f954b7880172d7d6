"""The sampler interface: which agents train in a round."""

from __future__ import annotations

from typing import Any

import numpy as np

from flcore.agents import AgentPopulation
from flcore.params import ComponentParams, NoParams


class Sampler:
    """Chooses agents each round.

    ``rng`` is derived from the experiment seed and the round alone, so the choice does not depend on
    how many random numbers training consumed, and a resumed run chooses the same agents. A sampler
    that keeps its own state (a round-robin position) returns it from :meth:`state_dict`.
    """

    Params: type[ComponentParams] = NoParams

    def __init__(self, params: ComponentParams) -> None:
        self.params = params

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator) -> np.ndarray:
        """Return the ids of the agents that train this round (distinct, any order)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
