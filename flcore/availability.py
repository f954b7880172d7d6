"""The availability interface (``federation.availability``): which agents are online in a round.

Real devices are online only now and then: charging, idle, on an unmetered network. An availability
model answers, in the round protocol's *available* phase, which agents can be selected this round;
samplers then choose only among them. It reads the virtual clock (``context.clock``, the seconds
the round policy has advanced the run by) and the round index, and draws randomness from
``context.rng(self)`` so that a resumed run sees the same agents online.

Work over the whole population at once (NumPy over agent ids, never a Python loop over agents): a
round with a million registered agents should cost about what one with a thousand does.
"""

from __future__ import annotations

import numpy as np

from flcore.protocol import RoundComponent, RoundContext


class Availability(RoundComponent):
    """Decides who is online; override :meth:`online`.

    The engine calls :meth:`~flcore.protocol.RoundComponent.availability`, which intersects what
    :meth:`online` returns with the agents still available (another component, an asynchronous
    policy, may already have removed agents that are busy).
    """

    def online(self, context: RoundContext) -> np.ndarray | None:
        """The sorted ids of the agents online at ``context.clock`` in round ``context.index``,
        or ``None`` when every agent is."""
        raise NotImplementedError

    def availability(self, context: RoundContext, available: np.ndarray | None) -> np.ndarray | None:
        online = self.online(context)
        if online is None:
            return available
        online = np.asarray(online, dtype=np.int64)
        if available is None:
            return online
        return online[np.isin(online, available, assume_unique=True)]
