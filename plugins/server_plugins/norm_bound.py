"""Norm bounding with optional weak differential privacy (Sun et al. 2019, "Can You Really Backdoor
Federated Learning?"): a defense against boosted (model-replacement) updates that wraps any strategy."""

from __future__ import annotations

import torch
from pydantic import Field

from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, RoundContext
from flcore.server_plugin import ServerPlugin


class NormBoundParams(ComponentParams):
    max_norm: float = Field(1.0, gt=0, description="M: each update is scaled to L2 norm at most M.")
    noise_std: float = Field(0.0, ge=0, description="sigma: Gaussian noise N(0, sigma^2) added to every "
                             "coordinate of the aggregate (weak DP); 0 for none.")


class NormBound(ServerPlugin):
    """``delta <- delta * min(1, M / ||delta||)`` for every accepted update before the strategy, then
    ``W <- W + N(0, sigma^2 I)`` after it, the noise drawn from this plugin's seeded round stream.

    The noise makes no formal privacy claim (that needs an accountant and bounded sensitivity of the
    whole mechanism): it is the paper's "weak DP" defense.
    """

    Params = NormBoundParams

    def __init__(self, params: NormBoundParams) -> None:
        super().__init__(params)
        self._seen = self._clipped = 0

    def process_update(self, context: RoundContext, update: AgentResult) -> None:
        norm = float(update.delta.norm())
        self._seen += 1
        if norm > self.params.max_norm:
            update.delta = update.delta * (self.params.max_norm / norm)
            self._clipped += 1

    def process_aggregate(self, context: RoundContext, global_vector: torch.Tensor, aggregate: Aggregate) -> None:
        context.log(self, "clipped_share", self._clipped / max(self._seen, 1))
        self._seen = self._clipped = 0
        if self.params.noise_std == 0:
            return
        noise = context.rng(self).normal(0.0, self.params.noise_std, size=aggregate.vector.numel())
        aggregate.vector = aggregate.vector + torch.from_numpy(noise).to(aggregate.vector)
