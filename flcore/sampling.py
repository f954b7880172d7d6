"""The sampler interface: which agents train in a round."""

from __future__ import annotations

import numpy as np

from flcore.agents import AgentPopulation
from flcore.protocol import RoundComponent


class Sampler(RoundComponent):
    """Chooses agents each round, among the available ones.

    ``rng`` is derived from the experiment seed and the round alone, so the choice does not depend on
    how many random numbers training consumed, and a resumed run chooses the same agents.
    ``available`` holds the sorted ids of the agents that can be chosen this round, or ``None`` when
    every agent can. A sampler that keeps its own state (a round-robin position) returns it from
    :meth:`~flcore.protocol.RoundComponent.state_dict`.

    ``uniform = True`` declares that in every round each available agent is equally likely to be
    chosen, whatever earlier rounds chose (privacy accounting's sampling rate needs it); a size-weighted
    or round-robin choice is not.

    ``inclusion_rate()`` declares Poisson sampling: each available agent is chosen independently of
    the others with that probability every round (the ``poisson`` sampler); ``None`` (the default)
    where the choice is not independent, a fixed-size draw say. Privacy accounting reads it to claim
    exact amplification by subsampling instead of an approximation.
    """

    uniform: bool = False

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator,
               available: np.ndarray | None = None) -> np.ndarray:
        """Return the ids of the agents that train this round (distinct, any order, all available)."""
        raise NotImplementedError

    def inclusion_rate(self) -> float | None:
        """The probability that each available agent is chosen, independently of every other agent,
        in every round, where the sampler draws that way (Poisson sampling); else ``None``."""
        return None

    def cohort_size(self, agents: int) -> int | None:
        """The most agents :meth:`sample` selects in a round out of ``agents``, where it can tell
        (``None`` where it cannot); components check it before round 1 (Krum's ``n > 2f + 2``)."""
        return None


def candidates(population: AgentPopulation, available: np.ndarray | None) -> np.ndarray:
    """The ids a sampler may choose from: ``available``, or every agent."""
    return np.arange(len(population)) if available is None else np.asarray(available, dtype=np.int64)
