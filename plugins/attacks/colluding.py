"""Colluding attacks: the malicious agents see the round's honest updates (``on_results`` holds every
update of the round) and all send one crafted vector.

- A Little Is Enough (Baruch et al., NeurIPS 2019): per coordinate, ``mu_j - z sigma_j`` of the
  honest updates, with the paper's ``z_max`` chosen so that the crafted update still looks like one
  of the majority: ``s = floor(n / 2 + 1) - f`` honest agents must "support" it, and
  ``z_max = Phi^{-1}((n - s) / n)``.
- Inner-product manipulation (Xie et al., UAI 2020): ``-epsilon * mu``, whose inner product with the
  true mean is negative for any ``epsilon > 0``, while small ``epsilon`` keeps it close to every
  honest update (Krum picks it).

Both are omniscient: they use the honest updates themselves, not an estimate from their own data.
"""

from __future__ import annotations

from statistics import NormalDist
from typing import Sequence

import torch
from pydantic import Field

from flcore.attack import Attack, AttackParams
from flcore.protocol import AgentResult, RoundContext


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s ``z_max`` for ``n`` updates of which ``f`` are malicious (``s`` at least 1)."""
    supporters = max(n // 2 + 1 - f, 1)
    return NormalDist().inv_cdf((n - supporters) / n)


class ALIEParams(AttackParams):
    z: float | None = Field(None, description="Standard deviations to shift by; None for the paper's z_max from "
                            "the round's numbers of updates and malicious updates.")


class ALittleIsEnough(Attack):
    """Every malicious update becomes ``mean - z * std`` (per coordinate, over the honest updates,
    unbiased std); the round's ``z`` is logged as ``alie/z``. Needs two honest updates in a round."""

    Params = ALIEParams
    colluding = True

    def on_results(self, context: RoundContext, results: list[AgentResult]) -> None:
        honest, malicious = self.split(context, results)
        if not malicious or len(honest) < 2:
            return
        z = self.params.z if self.params.z is not None else alie_z(len(honest) + len(malicious), len(malicious))
        stacked = torch.stack([r.delta for r in honest])
        crafted = stacked.mean(dim=0) - z * stacked.std(dim=0)
        _send(malicious, crafted)
        context.log(self, "z", z)


class IPMParams(AttackParams):
    epsilon: float = Field(0.1, gt=0, description="epsilon: the malicious update is -epsilon times the honest mean.")


class InnerProductManipulation(Attack):
    """Every malicious update becomes ``-epsilon * mean`` of the honest updates."""

    Params = IPMParams
    colluding = True

    def on_results(self, context: RoundContext, results: list[AgentResult]) -> None:
        honest, malicious = self.split(context, results)
        if malicious and honest:
            _send(malicious, -self.params.epsilon * torch.stack([r.delta for r in honest]).mean(dim=0))


def _send(malicious: Sequence[AgentResult], crafted: torch.Tensor) -> None:
    for result in malicious:
        result.delta = crafted.clone()
