"""User-level differentially private FedAvg (McMahan et al. 2018, "Learning Differentially Private
Recurrent Language Models"), around any strategy that divides a sum of updates.

Each round: every accepted update is clipped to L2 norm ``C``; Gaussian noise of standard deviation
``z * C`` is added to the sum of the clipped updates; the sum is divided by a fixed denominator, the
expected number of selected agents, so that dropped agents do not change the noise's scale and the
mean is unbiased (the paper's ``f_f`` estimator). With ``target_quantile`` set, ``C`` follows that
quantile of the update norms (:mod:`.quantile_clipping`). The accountant (:mod:`.privacy_accounting`)
reports epsilon at ``delta`` every round; ``target_epsilon`` calibrates ``z`` to the planned rounds
before round 1, and ``max_epsilon`` ends the run before a round that would exceed it.
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import torch
from pydantic import Field, model_validator

from flcore.aggregation import Aggregator
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, RoundContext, RunPlan, UpdateSum
from flcore.server_plugin import ServerPlugin

from . import privacy_accounting, quantile_clipping

_NOISE, _COUNT_NOISE = 0, 1  # keys of the plugin's random streams in a round


class DPFedAvgParams(ComponentParams):
    clip_norm: float = Field(
        1.0,
        gt=0,
        description="C: each agent's update is scaled to L2 norm at most C (the initial C with adaptive clipping).",
    )
    noise_multiplier: float | None = Field(
        None,
        ge=0,
        description="z: the sum of clipped updates gets Gaussian noise of "
        "standard deviation z * C per coordinate; 0 for none (and no privacy). Default 1.0 unless target_epsilon is set.",
    )
    target_epsilon: float | None = Field(
        None,
        gt=0,
        description="Calibrate z before round 1 so that epsilon after the planned rounds is at most this "
        "(instead of noise_multiplier).",
    )
    max_epsilon: float | None = Field(
        None,
        gt=0,
        description="A budget: the run ends, successfully, before a round that would take epsilon above it.",
    )
    delta: float = Field(1e-5, gt=0, lt=1, description="The delta at which epsilon is reported; below 1 / agents.")
    expected_agents: float | None = Field(
        None,
        gt=0,
        description="The fixed denominator of the mean: the expected "
        "number of agents a round selects (default: the sampler's cohort size).",
    )
    target_quantile: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="gamma: adapt C towards this quantile of the update norms (Andrew et al. 2021); unset: a fixed C.",
    )
    clip_learning_rate: float = Field(0.2, gt=0, description="eta_C: the geometric step of adaptive clipping.")
    count_noise: float | None = Field(
        None,
        ge=0,
        description="sigma_b: the noise on the count of unclipped "
        "updates (default: expected agents / 20, the paper's choice).",
    )


    @model_validator(mode="after")
    def _one_noise_setting(self) -> DPFedAvgParams:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError(
                "noise_multiplier and target_epsilon are mutually exclusive: set one (target_epsilon "
                "calibrates the noise multiplier)"
            )
        return self


class DPFedAvg(ServerPlugin):
    """Clip every update to ``C``, noise the sum with ``N(0, (z C)^2 I)``, divide by the expected
    cohort; the sum's noise multiplier is ``z_Delta`` rather than ``z`` with adaptive clipping.

    Logs ``dp_fedavg/epsilon`` (at ``delta``, every round), ``clip_norm`` (the round's), ``noise_std``
    and ``clipped_share`` (not private: a simulator's diagnostic), and with adaptive clipping the
    noised ``unclipped_share``. Checkpoints ``C`` and the rounds' sampling rates.

    Guarantee: user-level (epsilon, delta)-differential privacy of the global models (adding or
    removing all of one agent's data), the Gaussian mechanism on the clipped sum, accounted by
    dp-accounting's RDP accountant assuming Poisson sampling of agents: exact with the ``poisson``
    sampler (any sampler declaring ``inclusion_rate``), whose rate is the accounted one; the
    ``uniform`` sampler's fixed-size draw makes it the customary approximation, not a proven bound. summary.json states
    the run's epsilon in words; docs/privacy.md says where it holds.
    """

    Params = DPFedAvgParams
    #: a round without accepted updates releases noise alone, as the accounted mechanism does
    sums_idle_rounds = True

    def __init__(self, params: DPFedAvgParams) -> None:
        super().__init__(params)
        self.clip_norm = params.clip_norm
        self.rates: list[float] = []  # each accounted round's sampling rate
        self._cohort = self._expected = 1.0
        self._count_noise = 0.0
        self.noise_multiplier = params.noise_multiplier if params.noise_multiplier is not None else 1.0
        self.calibrated = False
        self._sum_multiplier = self.noise_multiplier
        self._stopped: str | None = None
        self._sampler = ""
        self._agents = self._planned_rounds = 1
        self._poisson: float | None = None  # the sampler's declared inclusion rate, where it samples that way
        self._seen = self._unclipped = 0
        self._accountant = privacy_accounting.RdpRounds(self.noise_multiplier, params.delta)

    @property
    def adaptive(self) -> bool:
        return self.params.target_quantile is not None

    def check_strategy(self, strategy: Aggregator) -> str | None:
        if not getattr(strategy, "sum_based", False):
            return (
                "its privacy accounting needs a strategy that divides a sum of updates (sum_based: fedavg, "
                "fedavgm, fedprox, fedadam, ...); this one combines updates otherwise (a selection, a median), "
                "which the Gaussian mechanism on the sum does not cover"
            )
        if getattr(strategy, "weighted", False):
            return (
                "weighting updates by sample count lets one agent's share of the sum exceed the clip norm; set "
                "the aggregator's 'weighted: false'"
            )
        return None

    def check_run(self, plan: RunPlan) -> None:
        p = self.params
        privacy_accounting.check_available()
        if p.delta >= 1 / plan.agents:
            raise ValueError(
                f"delta = {p.delta} must be below 1 / agents = {1 / plan.agents:.3g}: a larger delta "
                "allows releasing one agent's data outright"
            )
        if plan.sampler is not None and not getattr(plan.sampler, "uniform", False):
            raise ValueError(
                f"the sampler '{plan.sampler.component_name}' does not choose agents uniformly "
                "(uniform: false), so no single sampling rate bounds every agent's; use 'uniform' or "
                "'all'"
            )
        rate = plan.sampler.inclusion_rate() if plan.sampler is not None else None
        self._poisson = None if rate is None else float(rate)
        if self._poisson is not None:  # Poisson sampling: the expected cohort is q N, its largest N
            plan = replace(plan, cohort=p.expected_agents or self._poisson * plan.agents)
        if plan.cohort is None and p.expected_agents is None:
            raise ValueError(
                "expected_agents is unset and the sampler does not tell how many agents it selects; set expected_agents"
            )
        self._cohort = float(plan.cohort if plan.cohort is not None else p.expected_agents)
        self._expected = float(p.expected_agents if p.expected_agents is not None else self._cohort)
        self._sampler = getattr(plan.sampler, "component_name", "") or ""
        self._agents, self._planned_rounds = plan.agents, plan.rounds
        if self.adaptive:
            self._count_noise = p.count_noise if p.count_noise is not None else self._expected / 20
        if p.target_epsilon is not None:
            self.noise_multiplier = privacy_accounting.calibrate_noise(
                p.target_epsilon, p.delta, [(self._planned_rate(plan.agents), plan.rounds)]
            )
            self.calibrated = True
            logging.getLogger(__name__).info(
                "dp_fedavg: noise multiplier %.6g calibrated to reach epsilon %g at delta %g after %d rounds",
                self.noise_multiplier, p.target_epsilon, p.delta, plan.rounds,
            )
        try:
            self._use_noise(self.noise_multiplier)
        except ValueError as error:
            if p.count_noise is not None:
                raise
            raise ValueError(
                f"{error}; count_noise was not set, and its default, the expected agents per round / 20 = "
                f"{self._expected:g} / 20, is too small here: set count_noise above {self.noise_multiplier / 2:g} "
                f"or select more than {10 * self.noise_multiplier:g} agents per round"
            ) from None

    def _use_noise(self, noise_multiplier: float) -> None:
        """Noise and account with ``z``; with adaptive clipping the sum gets ``z_Delta``."""
        self.noise_multiplier = noise_multiplier
        self._sum_multiplier = noise_multiplier
        if self.adaptive:
            self._sum_multiplier = quantile_clipping.delta_noise_multiplier(noise_multiplier, self._count_noise)
        self._accountant = privacy_accounting.RdpRounds(noise_multiplier, self.params.delta)

    def _planned_rate(self, agents: int) -> float:
        """The sampling rate a round is expected to have: the sampler's, or its cohort over the agents."""
        return self._poisson if self._poisson is not None else min(1.0, self._cohort / max(agents, 1))

    def stop_reason(self, next_round: int) -> str | None:
        budget = self.params.max_epsilon
        if budget is None:
            return None
        # availability can raise a round's rate after selection: allow for the largest one seen so far
        rate = max([self._planned_rate(self._agents), *self.rates])
        ahead = self._accountant.epsilon([*self.rates, rate])
        if ahead > budget:
            self._stopped = (
                f"dp_fedavg's privacy budget max_epsilon = {budget:g}: round {next_round + 1} would take epsilon to "
                f"{ahead:.4g} (it is {self.epsilon():.4g} after {len(self.rates)} rounds)"
            )
            return self._stopped
        return None

    def process_update(self, context: RoundContext, update: AgentResult) -> None:
        norm = float(update.delta.norm())
        self._seen += 1
        if norm <= self.clip_norm:
            self._unclipped += 1
        else:
            update.delta = update.delta * (self.clip_norm / norm)

    def process_sum(self, context: RoundContext, total: UpdateSum) -> None:
        std = self._sum_multiplier * self.clip_norm
        if std > 0:
            seed = int(context.rng(self, _NOISE).integers(2**63))
            generator = torch.Generator(device=total.vector.device).manual_seed(seed)
            noise = torch.randn(
                total.vector.shape, generator=generator, device=total.vector.device, dtype=total.vector.dtype
            )
            total.vector.add_(noise, alpha=std)
        total.weight = self._expected
        context.log(self, "clip_norm", self.clip_norm)
        context.log(self, "noise_std", std)
        context.log(self, "clipped_share", 1 - self._unclipped / max(self._seen, 1))
        if self.adaptive:
            self.clip_norm, share = quantile_clipping.next_clip_norm(
                self.clip_norm,
                self._unclipped,
                self._expected,
                self._count_noise,
                self.params.clip_learning_rate,
                self.params.target_quantile,
                context.rng(self, _COUNT_NOISE),
            )
            context.log(self, "unclipped_share", share)

    def on_round_end(self, context: RoundContext, accepted: Any) -> None:
        # every round is accounted, an idle one too: it released noise alone (sums_idle_rounds)
        available = len(context.population) if context.available is None else len(context.available)
        selected = 0 if context.selected is None else len(context.selected)
        if self._poisson is not None:  # each agent in independently at the sampler's rate: exact
            self.rates.append(self._poisson)
        else:
            self.rates.append(min(1.0, max(self._cohort, selected) / max(available, 1)))
        self._seen = self._unclipped = 0
        context.log(self, "epsilon", self.epsilon())

    def epsilon(self) -> float:
        """Epsilon at ``delta`` over the rounds so far."""
        return self._accountant.epsilon(self.rates)

    def guarantee(self) -> str:
        """The run's privacy guarantee in words."""
        p, eps = self.params, self.epsilon()
        rates = sorted(set(self.rates)) or [self._cohort]
        rate = f"{rates[0]:.4g}" if len(rates) == 1 else f"{rates[0]:.4g} to {rates[-1]:.4g}"
        if self.noise_multiplier == 0:
            return "No differential privacy: noise_multiplier is 0, so the clipped updates are released as they are."
        clip = (
            f"clipped to L2 norm {p.clip_norm:g}"
            if not self.adaptive
            else (f"clipped to an adaptive L2 norm (quantile {p.target_quantile:g}, now {self.clip_norm:.4g})")
        )
        calibrated = (
            f" (calibrated before round 1 to reach target_epsilon = {p.target_epsilon:g} after "
            f"{self._planned_rounds} rounds)"
            if self.calibrated
            else ""
        )
        sampler = f"This run's sampler '{self._sampler}' " if self._sampler else "This run's sampler "
        sampling = (
            f"{sampler}selects a fixed number of agents without replacement instead, for which the Poisson "
            "figure is the customary approximation (as in McMahan et al. 2018), not a proven bound"
        )
        if self._poisson is not None:
            sampling = f"{sampler}selects agents exactly that way (Poisson sampling (exact)), so the figure is a bound"
        if rates == [1.0]:
            sampling = "every agent takes part in every round here, so no amplification by sampling is claimed"
        return (
            f"User-level ({eps:.4g}, {p.delta:g})-differential privacy of the sequence of global models over "
            f"{len(self.rates)} rounds, for adding or removing all of one agent's data: the Gaussian mechanism "
            f"with noise multiplier {self.noise_multiplier:.6g}{calibrated} on the sum of updates {clip}, accounted by the RDP "
            f"accountant of dp-accounting {privacy_accounting.library_version()} assuming each agent is selected "
            f"independently (Poisson sampling) at rate {rate} per round. "
            f"{sampling}. It assumes a trusted server and treats the strategy's step as post-processing."
        )

    def run_summary(self) -> dict[str, Any]:
        eps = self.epsilon()
        return {
            "epsilon": eps if math.isfinite(eps) else None,
            "delta": self.params.delta,
            "noise_multiplier": self.noise_multiplier,
            "calibrated_noise_multiplier": self.calibrated,
            "rounds_accounted": len(self.rates),
            "clip_norm": self.clip_norm,
            "accountant": "dp-accounting RDP",
            "guarantee": self.guarantee(),
            **({"stopped": self._stopped} if self._stopped else {}),
        }

    def state_dict(self) -> dict[str, Any]:
        return {"clip_norm": self.clip_norm, "rates": list(self.rates), "noise_multiplier": self.noise_multiplier,
                "planned_rounds": self._planned_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.clip_norm = float(state["clip_norm"])
        self.rates = [float(r) for r in state["rates"]]
        # a calibrated z stays the run's, even when a resume extends federation.rounds
        if "noise_multiplier" in state and float(state["noise_multiplier"]) != self.noise_multiplier:
            self._use_noise(float(state["noise_multiplier"]))
            self._planned_rounds = int(state["planned_rounds"])
