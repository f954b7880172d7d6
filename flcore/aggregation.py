"""The aggregator interface: combining agents' updates, and changing local training where needed.

Updates are flat vectors over the model's trainable parameters (the paper's equation 1,
``delta = W_local - W_global``); :meth:`Aggregator.aggregate` returns the next global vector
(equation 2 for FedAvg). An aggregator can keep server state (FedAdam's moments) in its
:meth:`state_dict`, change the local objective (FedProx's proximal term) through
:meth:`local_penalty`, and correct local gradients (SCAFFOLD) through :meth:`on_before_step`; the core
calls the local hooks only when an aggregator overrides them.

BatchNorm running statistics and other floating buffers are not aggregated here: the engine sets them
to the sample-weighted mean of the agents' buffers (or keeps the global ones, ``federation.buffers``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

import torch

from flcore.params import ComponentParams, NoParams

if TYPE_CHECKING:
    from flcore.agents import AgentPopulation
    from flcore.config import TrainingConfig


@dataclass
class ClientUpdate:
    """What one agent sends back after local training."""

    agent_id: int
    delta: torch.Tensor
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LocalContext:
    """What local-training hooks see: the agent, the model's trainable parameters, the global ones."""

    agent_id: int
    round_index: int
    population: AgentPopulation
    params: list[torch.Tensor]
    global_params: list[torch.Tensor]
    lr: float
    steps: int = 0


class Aggregator:
    """Combines updates into the next global model; override :meth:`aggregate`.

    An aggregator with ``streaming = True`` receives each update through :meth:`accumulate` as soon
    as its agent finishes; the engine then drops the update's ``delta``, so a round holds one
    running sum rather than one vector per agent, and :meth:`aggregate` gets updates whose
    ``delta`` is ``None``.
    """

    Params: type[ComponentParams] = NoParams
    streaming: bool = False

    def __init__(self, params: ComponentParams) -> None:
        self.params = params

    # ------------------------------------------------------------------------------ server side
    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[ClientUpdate], round_index: int) -> torch.Tensor:
        """Return the next global parameter vector."""
        raise NotImplementedError

    def accumulate(self, update: ClientUpdate) -> None:
        """Take one update as it arrives (``streaming`` aggregators only)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """Server state to checkpoint (tensors, numbers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    # ------------------------------------------------------------------------------ client side
    def configure_training(self, training: TrainingConfig) -> TrainingConfig:
        """Adjust local training settings (FedSGD trains one full-batch step)."""
        return training

    def on_local_start(self, context: LocalContext) -> None:
        """Called before an agent's local training."""

    def local_penalty(self, context: LocalContext) -> torch.Tensor | None:
        """A term added to the local loss at every step (FedProx)."""
        return None

    def on_before_step(self, context: LocalContext) -> None:
        """Called after backward, before the optimizer step; may edit ``p.grad`` (SCAFFOLD)."""

    def on_local_end(self, context: LocalContext, update: ClientUpdate) -> None:
        """Called after an agent's local training with its update."""

    def uses_local_hooks(self) -> bool:
        """Whether the engine must call the per-step hooks (skipped otherwise, for speed)."""
        cls = type(self)
        return cls.local_penalty is not Aggregator.local_penalty or cls.on_before_step is not Aggregator.on_before_step


def stack_deltas(updates: Sequence[ClientUpdate]) -> torch.Tensor:
    """The updates as an ``(agents, parameters)`` matrix."""
    return torch.stack([u.delta for u in updates])


def sample_weights(updates: Sequence[ClientUpdate], weighted: bool = True) -> torch.Tensor:
    """Aggregation weights summing to one: by sample count (``n_k / n``) or uniform."""
    device, dtype = updates[0].delta.device, updates[0].delta.dtype
    if weighted:
        counts = torch.tensor([float(u.num_samples) for u in updates], dtype=torch.float64)
        weights = counts / counts.sum()
    else:
        weights = torch.full((len(updates),), 1.0 / len(updates), dtype=torch.float64)
    return weights.to(device=device, dtype=dtype)


def weighted_mean_delta(updates: Sequence[ClientUpdate], weighted: bool = True) -> torch.Tensor:
    """The weighted mean of the updates' deltas (equation 2's sum)."""
    weights = sample_weights(updates, weighted)
    out = torch.zeros_like(updates[0].delta)
    for weight, update in zip(weights, updates):
        out.add_(update.delta, alpha=float(weight))
    return out


class MeanAggregator(Aggregator):
    """Base of aggregators that need only the mean update (FedAvg and its server optimizers).

    Streams: keeps ``sum_k w_k delta_k`` and ``sum_k w_k`` while agents train, with ``w_k = n_k`` when
    the parameters say ``weighted`` (the default) and 1 otherwise. :meth:`mean_delta` returns the
    mean of what was accumulated, or of ``updates`` when called directly with their deltas.
    """

    streaming = True

    def __init__(self, params: ComponentParams) -> None:
        super().__init__(params)
        self._sum: torch.Tensor | None = None
        self._weight = 0.0

    @property
    def weighted(self) -> bool:
        return bool(getattr(self.params, "weighted", True))

    def accumulate(self, update: ClientUpdate) -> None:
        weight = float(update.num_samples) if self.weighted else 1.0
        if self._sum is None:
            self._sum = update.delta * weight
        else:
            self._sum.add_(update.delta, alpha=weight)
        self._weight += weight

    def mean_delta(self, updates: Sequence[ClientUpdate]) -> torch.Tensor:
        """The (weighted) mean update of this round."""
        if self._sum is None:
            return weighted_mean_delta(updates, self.weighted)
        mean = self._sum.div_(self._weight)
        self._sum, self._weight = None, 0.0
        return mean
