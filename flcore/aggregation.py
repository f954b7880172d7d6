"""The server strategy (configured as ``federation.aggregator``): instruct agents, combine updates.

Updates are flat vectors over the model's trainable parameters (the paper's equation 1,
``delta = W_local - W_global``); :meth:`Aggregator.aggregate` returns the next global vector
(equation 2 for FedAvg), or an :class:`~flcore.protocol.Aggregate` holding the vector and metrics
for the round's row. It sees the round's failures in ``context.failures``. Server state (FedAdam's
moments) goes in :meth:`state_dict`; per-round instructions to agents in
:meth:`~flcore.protocol.RoundComponent.configure_round`; agent-side behaviour lives in agent-side
plugins, which a strategy pulls in through :meth:`~flcore.protocol.RoundComponent.requirements`
(``fedprox`` requires the ``proximal`` plugin).

BatchNorm running statistics and other floating buffers are not aggregated here: the engine sets them
to the sample-weighted mean of the agents' buffers (or keeps the global ones, ``federation.buffers``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch

from flcore.protocol import AgentResult, Aggregate, RoundComponent, RoundContext, UpdateSum

if TYPE_CHECKING:
    from flcore.config import TrainingConfig

__all__ = ["Aggregate", "Aggregator", "MeanAggregator", "AgentResult", "sample_weights", "stack_deltas",
           "weighted_mean_delta"]


class Aggregator(RoundComponent):
    """The server strategy; override :meth:`aggregate`.

    Declared capabilities, read by the engine and by server-side plugins instead of testing which
    strategy this is:

    - ``streaming = True``: the strategy receives each accepted update through :meth:`accumulate` as
      soon as its agent finishes; the engine then drops the update's ``delta``, so a round holds one
      running sum rather than one vector per agent, and :meth:`aggregate` gets updates whose
      ``delta`` is ``None``.
    - ``mean_based = True``: the next global model is a function of the (weighted) mean of the
      updates alone, so a privacy plugin that clips and noises the mean can account for it; selection
      rules such as Krum are not.
    - ``sum_based = True``: the mean is a running sum of updates divided by a weight, and the
      strategy hands that sum out (:meth:`update_sum`) and divides what it gets back, so server
      plugins can change the sum before the division (:meth:`~flcore.server_plugin.ServerPlugin.process_sum`).
    """

    streaming: bool = False
    mean_based: bool = False
    sum_based: bool = False

    def configure_training(self, training: TrainingConfig) -> TrainingConfig:
        """Adjust the run's local training settings once (FedSGD: one full-batch step)."""
        return training

    def accumulate(self, update: AgentResult) -> None:
        """Take one accepted update as it arrives (``streaming`` strategies only)."""
        raise NotImplementedError

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
                  ) -> torch.Tensor | Aggregate:
        """Return the next global parameter vector (or an :class:`Aggregate` with metrics)."""
        raise NotImplementedError

    def update_sum(self, updates: Sequence[AgentResult]) -> UpdateSum:
        """The round's running sum of updates, which :meth:`aggregate` then divides as it stands
        (``sum_based`` strategies only)."""
        raise NotImplementedError


def stack_deltas(updates: Sequence[AgentResult]) -> torch.Tensor:
    """The updates as an ``(agents, parameters)`` matrix."""
    return torch.stack([u.delta for u in updates])


def sample_weights(updates: Sequence[AgentResult], weighted: bool = True) -> torch.Tensor:
    """Aggregation weights summing to one: by sample count (``n_k / n``) or uniform."""
    device, dtype = updates[0].delta.device, updates[0].delta.dtype
    if weighted:
        counts = torch.tensor([float(u.num_samples) for u in updates], dtype=torch.float64)
        weights = counts / counts.sum()
    else:
        weights = torch.full((len(updates),), 1.0 / len(updates), dtype=torch.float64)
    return weights.to(device=device, dtype=dtype)


def weighted_mean_delta(updates: Sequence[AgentResult], weighted: bool = True) -> torch.Tensor:
    """The weighted mean of the updates' deltas (equation 2's sum)."""
    weights = sample_weights(updates, weighted)
    out = torch.zeros_like(updates[0].delta)
    for weight, update in zip(weights, updates):
        out.add_(update.delta, alpha=float(weight))
    return out


class MeanAggregator(Aggregator):
    """Base of strategies that need only the mean update (FedAvg and its server optimizers).

    Streams: keeps ``sum_k w_k delta_k`` and ``sum_k w_k`` while agents train, with ``w_k = n_k`` when
    the parameters say ``weighted`` (the default) and 1 otherwise. :meth:`mean_delta` returns the
    mean of what was accumulated, or of ``updates`` when called directly with their deltas.
    """

    streaming = True
    mean_based = True
    sum_based = True

    def __init__(self, params) -> None:
        super().__init__(params)
        self._sum: torch.Tensor | None = None
        self._weight = 0.0
        self._total: UpdateSum | None = None

    @property
    def weighted(self) -> bool:
        return bool(getattr(self.params, "weighted", True))

    def accumulate(self, update: AgentResult) -> None:
        weight = float(update.num_samples) if self.weighted else 1.0
        if self._sum is None:
            self._sum = update.delta * weight
        else:
            self._sum.add_(update.delta, alpha=weight)
        self._weight += weight

    def update_sum(self, updates: Sequence[AgentResult]) -> UpdateSum:
        if self._sum is None:  # not streamed: the updates still hold their deltas
            for update in updates:
                self.accumulate(update)
        self._total = UpdateSum(self._sum, self._weight, len(updates))
        return self._total

    def mean_delta(self, updates: Sequence[AgentResult]) -> torch.Tensor:
        """The (weighted) mean update of this round."""
        total, self._total = self._total, None
        if total is not None:  # handed out by update_sum, maybe changed by server plugins
            self._sum, self._weight = None, 0.0
            return total.vector / total.weight
        if self._sum is None:
            return weighted_mean_delta(updates, self.weighted)
        mean = self._sum.div_(self._weight)
        self._sum, self._weight = None, 0.0
        return mean
