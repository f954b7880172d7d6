"""The Min-Max attack (Shejwalkar and Houmansadr 2021, AGR-agnostic): every malicious agent sends
``mu - gamma p``, the honest mean moved against a perturbation ``p``, with the largest ``gamma`` whose
update is no farther from any honest update than the two farthest honest updates are from each other:

    max_i ||mu - gamma p - delta_i|| <= max_{i,j} ||delta_i - delta_j||.

``p`` is ``mu / ||mu||`` (``unit``), ``sign(mu)`` (``sign``) or the honest per-coordinate standard
deviation (``std``). ``gamma`` is found as in the paper's Algorithm 1: start at ``gamma_init`` with a
step of ``gamma_init``; move up by half the step when the update satisfies the bound (remembering that
``gamma``), down by half when not, halve the step, and stop once the last ``gamma`` that satisfied the
bound is within ``tolerance`` of the current one (so ``gamma`` lies in ``[0, 2 gamma_init]``).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from flcore.attack import Attack, AttackParams
from flcore.protocol import AgentResult, RoundContext


class MinMaxParams(AttackParams):
    perturbation: Literal["unit", "sign", "std"] = Field("unit", description="p: the honest mean's unit vector, its "
                                                         "sign, or the honest standard deviation.")
    gamma_init: float = Field(10.0, gt=0, description="Where the search for gamma starts (the paper: 10).")
    tolerance: float = Field(1e-5, gt=0, description="The search stops when its step is below this.")


def perturbation(honest: torch.Tensor, kind: str) -> torch.Tensor:
    """``p`` for the rows of ``honest``."""
    mean = honest.mean(dim=0)
    if kind == "unit":
        return mean / mean.norm()
    if kind == "sign":
        return torch.sign(mean)
    return honest.std(dim=0)


def min_max_gamma(honest: torch.Tensor, p: torch.Tensor, gamma_init: float, tolerance: float) -> float:
    """The paper's search for the largest ``gamma`` that keeps ``mu - gamma p`` within the honest spread."""
    mean = honest.mean(dim=0)
    bound = torch.cdist(honest, honest).max()
    gamma, step, succeeded = gamma_init, gamma_init, 0.0
    for _ in range(200):  # the search converges long before; a float corner case must not spin
        if abs(succeeded - gamma) <= tolerance:
            break
        if torch.norm(honest - (mean - gamma * p), dim=1).max() <= bound:
            succeeded, gamma = gamma, gamma + step / 2
        else:
            gamma = gamma - step / 2
        step /= 2
    return float(succeeded)


class MinMax(Attack):
    """Colluding: rewrites every malicious update of the round from the honest ones; logs
    ``min_max/gamma``. Needs two honest updates in a round."""

    Params = MinMaxParams
    colluding = True

    def on_results(self, context: RoundContext, results: list[AgentResult]) -> None:
        honest, malicious = self.split(context, results)
        if not malicious or len(honest) < 2:
            return
        stacked = torch.stack([r.delta for r in honest])
        p = perturbation(stacked, self.params.perturbation)
        gamma = min_max_gamma(stacked, p, self.params.gamma_init, self.params.tolerance)
        crafted = stacked.mean(dim=0) - gamma * p
        for result in malicious:
            result.delta = crafted.clone()
        context.log(self, "gamma", gamma)
