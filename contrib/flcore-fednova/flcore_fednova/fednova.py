"""FedNova (Wang, Liu, Liang, Joshi and Poor, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization", NeurIPS 2020): normalized averaging.

An agent that takes more local steps moves further, so FedAvg's ``sum_i p_i delta_i`` drifts toward
the minimizer of a surrogate objective that weights agents by ``p_i ||a_i||_1`` instead of ``p_i``:
the objective inconsistency. FedNova divides each update by the norm of its local solver's
coefficient vector and moves the global model by the effective step count:

    x <- x + server_lr * tau_eff * sum_i p_i delta_i / ||a_i||_1,   tau_eff = sum_i p_i ||a_i||_1

with ``delta_i = y_i - x`` after ``tau_i`` local steps and ``p_i = n_i / n`` over the round's accepted
agents. ``a_i`` is defined by ``delta_i = -lr * sum_s a_i[s] g_s``: for plain SGD every ``a_i[s]`` is
1, so ``||a_i||_1 = tau_i``; see :func:`coefficient_norm` for momentum. When every agent's
``||a_i||_1`` is equal the rule is FedAvg's, and this implementation then returns FedAvg's model bit
for bit.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Sequence

import torch
from pydantic import Field

from flcore.aggregation import Aggregator
from flcore.errors import ConfigError, RunFailure
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, Instruction, RoundContext

if TYPE_CHECKING:
    from flcore.config import TrainingConfig


def coefficient_norm(steps: int, momentum: float = 0.0, nesterov: bool = False) -> float:
    """``||a||_1`` for ``steps`` steps of ``torch.optim.SGD`` (no dampening; weight decay and gradient
    clipping only change the gradients, not their coefficients).

    - Plain SGD: ``tau``.
    - Heavy-ball momentum ``rho`` (the paper's momentum example; the authors' code, JYWa/FedNova
      ``distoptim/FedNova.py``, accumulates the same value step by step as ``local_normalizing_vec``):
      ``a[s] = (1 - rho^(tau - s + 1)) / (1 - rho)``, so
      ``||a||_1 = [tau - rho (1 - rho^tau) / (1 - rho)] / (1 - rho)``.
    - Nesterov (torch steps by ``g + rho * buf``): each gradient is applied once directly and ``rho``
      times through the buffer, so ``||a||_1 = tau + rho * heavy_ball``. This is derived here; the
      authors' code uses the heavy-ball value for Nesterov too.
    """
    tau, rho = float(steps), float(momentum)
    if rho == 0.0:
        return tau
    heavy_ball = (tau - rho * (1.0 - rho**tau) / (1.0 - rho)) / (1.0 - rho)
    return tau + rho * heavy_ball if nesterov else heavy_ball


class FedNovaParams(ComponentParams):
    server_lr: float = Field(1.0, gt=0, description="Server step size applied to the normalized update.")
    weighted: bool = Field(True, description="p_i = n_i / n over the round's accepted agents; else uniform.")


class FedNova(Aggregator):
    """Normalized averaging; learns the local optimizer from :meth:`configure_training`.

    Streams: keeps ``sum_i p_i delta_i / r_i``, ``sum_i p_i`` and ``sum_i p_i r_i`` with ``r_i`` the
    agent's ``||a_i||_1`` relative to the round's first update, which is the rule above with
    ``tau_eff`` factored as ``||a_ref||_1 * sum_i p_i r_i``; equal coefficients give ``r_i = 1.0``
    exactly, hence FedAvg's arithmetic. An agent instructed with ``lr_scale`` steps ``lr_scale``
    times further per gradient, so its ``||a_i||_1`` is scaled by it.

    Not ``mean_based``: the next model weights each update by ``tau_eff / ||a_i||_1``, which a
    clip-and-noise-the-mean privacy plugin does not account for.
    """

    Params = FedNovaParams
    streaming = True

    def __init__(self, params: FedNovaParams) -> None:
        super().__init__(params)
        self.momentum, self.nesterov = 0.0, False  # plain SGD until configure_training says otherwise
        self._clear()

    def _clear(self) -> None:
        """Forget the round: its instructions and sums."""
        self._instructions: Sequence[Instruction] = ()
        self._sum: torch.Tensor | None = None
        self._mass = 0.0  # sum_i p_i (unnormalized)
        self._relative_steps = 0.0  # sum_i p_i r_i
        self._reference: float | None = None  # ||a_ref||_1, the first update's
        self._lr_scales: dict[int, float] | None = None

    def configure_training(self, training: TrainingConfig) -> TrainingConfig:
        optimizer = training.optimizer
        if optimizer.name != "sgd":
            raise ConfigError(
                f"federation.aggregator 'fednova' normalizes updates by the coefficients of local SGD, but "
                f"training.optimizer.name is '{optimizer.name}'; expected 'sgd' (with or without momentum or "
                "nesterov), whose coefficients the paper defines.")
        self.momentum, self.nesterov = optimizer.momentum, optimizer.nesterov
        return training

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        # kept, not read: components instructed after the strategy may still change lr_scale
        self._instructions = instructions

    def coefficient(self, update: AgentResult) -> float:
        """This update's ``||a_i||_1``, in units of the round's learning rate."""
        if update.steps < 1:
            raise RunFailure(
                f"fednova normalizes by local steps, but agent {update.agent_id}'s accepted update reports "
                f"steps = {update.steps}; the backend must count the optimizer steps in AgentResult.steps.")
        if self._lr_scales is None:
            self._lr_scales = {i.agent_id: i.lr_scale for i in self._instructions}
        scale = self._lr_scales.get(update.agent_id, 1.0)
        return scale * coefficient_norm(update.steps, self.momentum, self.nesterov)

    def accumulate(self, update: AgentResult) -> None:
        norm = self.coefficient(update)
        if self._reference is None:
            self._reference = norm
        ratio = norm / self._reference
        p = float(update.num_samples) if self.params.weighted else 1.0
        if self._sum is None:
            self._sum = update.delta * (p / ratio)
        else:
            self._sum.add_(update.delta, alpha=p / ratio)
        self._mass += p
        self._relative_steps += p * ratio

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
                  ) -> Aggregate:
        if self._sum is None:  # called directly, not streamed
            for update in updates:
                self.accumulate(update)
        direction = self._sum.div_(self._mass)  # sum_i p_i delta_i / r_i
        scale = self._relative_steps / self._mass  # tau_eff / ||a_ref||_1
        tau_eff = scale * self._reference
        self._clear()
        return Aggregate(global_vector + self.params.server_lr * (scale * direction), {"tau_eff": tau_eff})
