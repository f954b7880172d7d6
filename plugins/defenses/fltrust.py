"""FLTrust (Cao, Fang, Liu and Gong, NDSS 2021): the server trains on a small clean root dataset each
round and trusts each update by its direction's agreement with the server's own update.

With the server update ``g_0`` (the global model trained on the root samples, ``context.train``):
``TS_i = ReLU(cos(delta_i, g_0))``; each update is rescaled to ``g_0``'s norm,
``delta_i' = delta_i ||g_0|| / ||delta_i||``; the aggregate is ``sum_i TS_i delta_i' / sum_i TS_i``
(no change when no update is trusted). The root dataset is ``root_size`` training samples drawn once
from the strategy's seeded stream; the server's copy is clean whatever poisoned agents do with theirs.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from pydantic import Field

from flcore.agents import AgentPopulation
from flcore.aggregation import Aggregator, stack_deltas
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Aggregate, RoundContext, RunPlan


class FLTrustParams(ComponentParams):
    root_size: int = Field(100, gt=0, description="How many training samples the server holds as its root dataset "
                           "(the paper: 100).")


def trust_aggregate(deltas: torch.Tensor, server: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """FLTrust's aggregate of the rows of ``deltas`` given the server update, and the trust scores."""
    server_norm = server.norm()
    norms = deltas.norm(dim=1)
    cosine = (deltas @ server) / (norms * server_norm).clamp_min(torch.finfo(deltas.dtype).tiny)
    trust = torch.relu(cosine)
    if float(trust.sum()) == 0.0:
        return torch.zeros_like(server), trust
    rescaled = deltas * (server_norm / norms.clamp_min(torch.finfo(deltas.dtype).tiny)).unsqueeze(1)
    return (trust.unsqueeze(1) * rescaled).sum(dim=0) / trust.sum(), trust


class FLTrust(Aggregator):
    """Trust-weighted, norm-matched mean; ``kept`` holds each update's share of the trust, and
    ``fltrust/trusted_share`` the share of updates with positive trust."""

    Params = FLTrustParams

    def check_run(self, plan: RunPlan) -> None:
        available = len(plan.data.y_train)
        if self.params.root_size > available:
            raise ValueError(f"'root_size' = {self.params.root_size} is more than the {available} training samples")

    def setup(self, population: AgentPopulation, rng: np.random.Generator) -> None:
        pool = population.partition.indices
        self.root = np.sort(rng.choice(pool, size=min(self.params.root_size, len(pool)), replace=False))

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[AgentResult], context: RoundContext
                  ) -> Aggregate:
        server = context.train(self.root).delta.to(global_vector)
        step, trust = trust_aggregate(stack_deltas(updates), server)
        total = float(trust.sum())
        kept = {u.agent_id: (float(t) / total if total > 0 else 0.0) for u, t in zip(updates, trust)}
        return Aggregate(global_vector + step, {"trusted_share": float((trust > 0).double().mean())}, kept=kept)
