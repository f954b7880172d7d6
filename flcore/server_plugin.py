"""Server-side plugins: steps around any strategy, composed as a list (``federation.server_plugins``).

How they compose, for plugins ``[A, B]`` around strategy ``S`` (the middleware order):

- each accepted update goes through ``A.process_update`` then ``B.process_update`` before ``S``
  sees it (clipping, norm bounding: streaming strategies still stream);
- around a strategy that declares ``sum_based`` (FedAvg, FedAdam: they divide a running sum of
  updates by its weight), the sum goes through ``A.process_sum`` then ``B.process_sum`` before
  ``S`` divides it (DP-FedAvg's noise on the sum of clipped updates, its fixed denominator);
- ``S`` aggregates;
- the aggregate goes through ``B.process_aggregate`` then ``A.process_aggregate`` (noise, a server
  learning-rate wrapper): the plugin listed first is the outermost.

A plugin may refuse a strategy it cannot wrap in :meth:`ServerPlugin.check_strategy` (a privacy
plugin refuses Krum, which selects single updates); the run then exits with code 2 before any work.
Every round phase of :class:`~flcore.protocol.RoundComponent` is available too, for instance to
instruct agents (adaptive clipping sends the round's clip norm) or to keep an accountant's state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from flcore.protocol import AgentResult, Aggregate, RoundComponent, RoundContext, UpdateSum

if TYPE_CHECKING:
    import torch

    from flcore.aggregation import Aggregator


class ServerPlugin(RoundComponent):
    """Base of server-side plugins; override the steps you need.

    ``sums_idle_rounds = True`` (with :meth:`process_sum`) declares that a round without an accepted
    update (nobody selected, every selected agent failed or dropped) still releases a model: the
    engine passes a zero sum (``count`` 0) through the plugins' :meth:`process_sum` and the strategy
    steps from it, as in any round. DP-FedAvg declares it: its round is the Gaussian mechanism on
    the sum, which releases noise alone when the sum is empty.
    """

    sums_idle_rounds: ClassVar[bool] = False

    def check_strategy(self, strategy: Aggregator) -> str | None:
        """Why this plugin cannot wrap ``strategy`` (read its declared capabilities), or ``None``."""
        return None

    def process_update(self, context: RoundContext, update: AgentResult) -> None:
        """Change one accepted update in place before the strategy sees it."""

    def process_aggregate(self, context: RoundContext, global_vector: torch.Tensor, aggregate: Aggregate) -> None:
        """Change the strategy's aggregate in place (``aggregate.vector``, ``aggregate.metrics``)."""

    def process_sum(self, context: RoundContext, total: UpdateSum) -> None:
        """Change a ``sum_based`` strategy's sum of updates in place (``total.vector``,
        ``total.weight``: the denominator) before the strategy divides it."""
