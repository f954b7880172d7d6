"""Sample-level DP-SGD in local training (Abadi et al. 2016, "Deep Learning with Differential Privacy").

Every local step draws a Poisson sample of the agent's shard (each sample in with probability
``q = batch_size / n``, about ``n / batch_size`` steps an epoch), computes each sample's gradient with
``torch.func`` (``functional_call`` + ``vmap(grad)``), clips each to L2 norm ``C``, sums them, adds
Gaussian noise ``N(0, (z C)^2 I)`` and divides by the expected batch size ``q n``; the configured
optimizer takes its step from that (post-processing). Each agent's steps are per-agent state
(checkpointed), and its epsilon composes ``PoissonSampledDpEvent(q, GaussianDpEvent(z))`` over them
with dp-accounting's RDP accountant (:mod:`flcore_plugins.server_plugins.privacy_accounting`).
It runs on every backend: on the vectorized one :meth:`DPSGD.vectorized_gradients` does the same
per agent on the stacked per-sample gradients, with the same batches and noise draws.
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
from pydantic import Field, model_validator

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField, AgentPopulation
from flcore.errors import ConfigError
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, AgentResult, RoundContext, RunPlan

from ..server_plugins import privacy_accounting

STEPS = "dp_sgd_steps"


class DPSGDParams(ComponentParams):
    clip_norm: float = Field(1.0, gt=0, description="C: each sample's gradient is scaled to L2 norm at most C.")
    noise_multiplier: float | None = Field(
        None, ge=0, description="z: the sum of clipped gradients gets Gaussian noise of standard deviation z * C "
        "per coordinate; 0 for none (and no privacy). Default 1.0 unless target_epsilon is set.")
    target_epsilon: float | None = Field(
        None, gt=0, description="Calibrate z before round 1 so that the worst agent's epsilon after every planned "
        "round is at most this (instead of noise_multiplier).")
    delta: float = Field(1e-5, gt=0, lt=1, description="The delta at which epsilon is reported; below 1 / training samples.")
    max_epsilon: float | None = Field(
        None, gt=0, description="A budget: the run ends, successfully, before a round after which some agent's "
        "epsilon could exceed it.")

    @model_validator(mode="after")
    def _one_noise_setting(self) -> DPSGDParams:
        if self.noise_multiplier is not None and self.target_epsilon is not None:
            raise ValueError("noise_multiplier and target_epsilon are mutually exclusive: set one (target_epsilon "
                             "calibrates the noise multiplier)")
        return self


class DPSGD(AgentPlugin):
    """Sample-level DP-SGD: Poisson-sampled batches, per-sample gradients clipped to ``C``, noise
    ``N(0, (z C)^2)`` on their sum, divided by the expected batch size.

    Logs ``dp_sgd/epsilon`` every round: the largest epsilon at ``delta`` of any agent so far.

    Guarantee: sample-level (epsilon, delta)-differential privacy, for adding or removing one
    training sample of any one agent, of everything that agent releases (its updates, so the global
    models too): the Gaussian mechanism on the clipped per-sample gradient sum at every local step,
    Poisson sampling of each batch at rate ``q = batch_size / n`` (exact: the plugin draws the
    batches so), composed over the steps the agent actually ran by dp-accounting's RDP accountant.
    It does not cover the agent-level question (all of an agent's data; use ``dp_fedavg``), models
    with BatchNorm (refused), or diagnostics computed without noise (the training loss, evaluation
    on the agent's shard). summary.json states the run's figure in words; docs/privacy.md says where
    it holds.
    """

    Params = DPSGDParams
    #: on the vectorized backend: the Poisson batches are drawn per agent (epoch_batches), and
    #: vectorized_gradients clips, sums, noises and scales the backend's per-agent, per-sample gradients
    vectorizable = True

    def __init__(self, params: DPSGDParams) -> None:
        super().__init__(params)
        self.noise_multiplier = params.noise_multiplier if params.noise_multiplier is not None else 1.0
        self.calibrated = False
        self._batch_size: int | None = None
        self._epochs, self._max_steps, self._rounds = 1, None, 1
        self._planned_rounds = 1  # the rounds a target epsilon was calibrated for
        self._population: AgentPopulation | None = None
        self._epsilon = 0.0
        self._stopped: str | None = None
        self._rdp: privacy_accounting.RdpRounds | None = None
        self._expected = 1.0

    # ---------------------------------------------------------------------------- before round 1
    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField(STEPS, 0, "int64", "DP-SGD steps the agent has taken, for its epsilon"),)

    def check_run(self, plan: RunPlan) -> None:
        privacy_accounting.check_available()
        model = plan.model
        if model is not None:
            norms = [name for name, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
            if norms:
                raise ValueError(f"the model has BatchNorm layers ({', '.join(norms[:3])}), which mix the samples of a "
                                 "batch, so per-sample gradients and their clipping are ill-defined; use a model "
                                 "without BatchNorm (GroupNorm or LayerNorm instead)")
        samples = len(plan.data.x_train) if plan.data is not None and hasattr(plan.data, "x_train") else None
        if samples and self.params.delta >= 1 / samples:
            raise ValueError(f"delta = {self.params.delta} must be below 1 / training samples = {1 / samples:.3g}: a "
                             "larger delta allows releasing one sample outright")
        self._rounds = plan.rounds
        if plan.training is not None:
            self._batch_size = plan.training.batch_size
            self._epochs, self._max_steps = plan.training.epochs, plan.training.max_steps

    def setup(self, population: AgentPopulation, rng: np.random.Generator) -> None:
        self._population = population
        if self.params.target_epsilon is not None:
            self._planned_rounds = self._rounds
            planned = [(q, self._rounds * steps) for q, steps in self._round_steps(population.num_samples)]
            try:
                self.noise_multiplier = privacy_accounting.calibrate_noise(
                    self.params.target_epsilon, self.params.delta, planned)
            except ValueError as exc:
                raise ConfigError(f"{self.component_name or 'dp_sgd'}: target_epsilon: {exc}") from None
            self.calibrated = True
            logging.getLogger(__name__).info(
                "dp_sgd: noise multiplier %.6g calibrated to reach epsilon %g at delta %g after %d rounds",
                self.noise_multiplier, self.params.target_epsilon, self.params.delta, self._rounds)

    # ---------------------------------------------------------------------------- local training
    def rate(self, n: int) -> float:
        """``q``: the Poisson sampling rate of a batch from a shard of ``n`` samples."""
        return 1.0 if not self._batch_size or self._batch_size >= n else self._batch_size / n

    def epoch_batches(self, agent: AgentContext, n: int, batch_size: int, generator: torch.Generator
                      ) -> Iterable[torch.Tensor]:
        q = batch_size / n if batch_size < n else 1.0
        self._expected = expected_batch(n, batch_size)  # the denominator of this agent's noised gradient sums
        for _ in range(max(1, round(n / batch_size))):
            yield torch.nonzero(torch.rand(n, generator=generator) < q).flatten()

    def compute_gradients(self, agent: AgentContext, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                          loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        clip = self.params.clip_norm
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        if len(x):
            grads, losses, logits = per_sample_gradients(model, x, y, loss)
            norms = torch.sqrt(sum(g.reshape(len(x), -1).pow(2).sum(dim=1) for g in grads.values()))
            scale = torch.clamp(clip / norms, max=1.0)
            summed = [torch.einsum("b,b...->...", scale, grads[name]) for name in names]
        else:  # an empty Poisson batch is a step too: noise alone
            with torch.no_grad():
                logits = model(x)
            losses = logits.new_zeros(0)
            summed = [torch.zeros_like(p) for p in agent.params]
        expected = self._expected
        std = self.noise_multiplier * clip
        for p, total in zip(agent.params, summed):
            if std > 0:
                total = total + torch.randn(total.shape, device=total.device, dtype=total.dtype) * std
            p.grad = total / expected
        return losses.detach(), logits.detach()

    def vectorized_gradients(self, agents: list[AgentContext], sample_grads: dict[str, torch.Tensor],
                             weight: torch.Tensor, generators: list[torch.Generator | None]
                             ) -> dict[str, torch.Tensor]:
        """:meth:`compute_gradients` for a stack of agents: each sample's gradient clipped to ``C``,
        summed over the agent's batch (``weight`` masks the padding), noised from the agent's own
        generator in the order the sequential path draws (parameter by parameter), divided by the
        agent's expected batch size."""
        clip = self.params.clip_norm
        k, b = weight.shape
        norms = torch.sqrt(sum(g.reshape(k, b, -1).pow(2).sum(dim=2) for g in sample_grads.values()))
        scale = torch.clamp(clip / norms, max=1.0) * weight
        summed = {name: torch.einsum("kb,kb...->k...", scale.to(g.dtype), g) for name, g in sample_grads.items()}
        std = self.noise_multiplier * clip
        if std > 0:
            for i, generator in enumerate(generators):
                if generator is None:
                    continue
                for total in summed.values():
                    noise = torch.randn(total.shape[1:], generator=generator, device=total.device, dtype=total.dtype)
                    total[i] = total[i] + noise * std
        batch = self._batch_size
        expected = torch.tensor([expected_batch(a.num_samples, batch or a.num_samples) for a in agents],
                                dtype=torch.float64, device=weight.device)
        return {name: total / expected.view(-1, *[1] * (total.dim() - 1)).to(total.dtype)
                for name, total in summed.items()}

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        agent.state[STEPS] = int(agent.state[STEPS]) + int(result.steps)

    # ---------------------------------------------------------------------------- accounting
    def _steps_per_round(self, sizes: np.ndarray) -> np.ndarray:
        """The most steps a round takes on shards of ``sizes`` samples (``epoch_batches``' count)."""
        sizes = np.asarray(sizes, dtype=np.int64)
        batch = np.minimum(self._batch_size, sizes) if self._batch_size else sizes
        steps = self._epochs * np.maximum(1, np.rint(sizes / np.maximum(batch, 1))).astype(np.int64)
        return steps if self._max_steps is None else np.minimum(steps, self._max_steps)

    def _round_steps(self, sizes: np.ndarray) -> list[tuple[float, int]]:
        """Each shard size's rate and the most steps one round takes there."""
        unique = np.unique(sizes[sizes > 0])
        return [(self.rate(int(n)), int(k)) for n, k in zip(unique, self._steps_per_round(unique))]

    def _accountant(self) -> privacy_accounting.RdpRounds:
        if self._rdp is None or self._rdp.noise_multiplier != self.noise_multiplier:
            self._rdp = privacy_accounting.RdpRounds(self.noise_multiplier, self.params.delta)  # caches its curves
        return self._rdp

    def epsilon(self, extra_rounds: int = 0) -> float:
        """The worst agent's epsilon so far; with ``extra_rounds``, if every agent also trained that
        many more full rounds (what a budget must allow for)."""
        population = self._population
        sizes, steps = population.num_samples, population.column(STEPS).astype(np.int64)
        if extra_rounds:
            steps = steps + extra_rounds * self._steps_per_round(sizes)
        used = (steps > 0) & (sizes > 0)
        if not used.any():
            return 0.0
        # per shard size, its most steps: the worst agent is among them
        order = np.argsort(sizes[used], kind="stable")
        shard, count = sizes[used][order], steps[used][order]
        starts = np.flatnonzero(np.r_[True, shard[1:] != shard[:-1]])
        most = np.maximum.reduceat(count, starts)
        return self._accountant().worst_epsilon((self.rate(int(n)), int(s)) for n, s in zip(shard[starts], most))

    def on_round_end(self, context: RoundContext, accepted: Any) -> None:
        self._epsilon = self.epsilon()
        context.log(self, "epsilon", self._epsilon)

    def stop_reason(self, next_round: int) -> str | None:
        budget = self.params.max_epsilon
        if budget is None or self._population is None:
            return None
        ahead = self.epsilon(extra_rounds=1)
        if ahead > budget:
            self._stopped = (f"dp_sgd's privacy budget max_epsilon = {budget:g}: after round {next_round + 1} some "
                             f"agent's epsilon could reach {ahead:.4g} (it is {self.epsilon():.4g} now)")
            return self._stopped
        return None

    def guarantee(self) -> str:
        """The run's privacy guarantee in words."""
        p, eps = self.params, self.epsilon() if self._population is not None else 0.0
        if self.noise_multiplier == 0:
            return "No differential privacy: noise_multiplier is 0, so the clipped gradients are used as they are."
        calibrated = (f" (calibrated before round 1 to reach target_epsilon = {p.target_epsilon:g} after "
                      f"{self._planned_rounds} rounds)") if self.calibrated else ""
        return (
            f"Sample-level ({eps:.4g}, {p.delta:g})-differential privacy for adding or removing one training sample "
            f"of any one agent, of everything that agent releases (its updates, hence the global models): DP-SGD with "
            f"per-sample gradients clipped to L2 norm {p.clip_norm:g} and Gaussian noise of multiplier "
            f"{self.noise_multiplier:.6g}{calibrated} at every local step, each batch a Poisson sample of the agent's "
            f"shard at rate batch_size / shard size (Poisson sampling (exact)), accounted per agent over the steps it "
            f"ran by the RDP accountant of dp-accounting {privacy_accounting.library_version()}; the figure is the "
            "worst agent's. It is not user-level privacy (all of one agent's data), and the run's diagnostics "
            "(training loss, local evaluation) are not private."
        )

    def state_dict(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "planned_rounds": self._planned_rounds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        # a calibrated z stays the run's, even when a resume extends federation.rounds
        self.noise_multiplier = float(state["noise_multiplier"])
        self._planned_rounds = int(state["planned_rounds"])

    def run_summary(self) -> dict[str, Any]:
        eps = self.epsilon() if self._population is not None else 0.0
        summary = {
            "epsilon": eps if math.isfinite(eps) else None,
            "delta": self.params.delta,
            "noise_multiplier": self.noise_multiplier,
            "calibrated_noise_multiplier": self.calibrated,
            "clip_norm": self.params.clip_norm,
            "accountant": "dp-accounting RDP, per agent (worst agent)",
            "guarantee": self.guarantee(),
        }
        if self._stopped:
            summary["stopped"] = self._stopped
        return summary


def expected_batch(n: int, batch_size: int) -> float:
    """``q n``: the expected size of a Poisson batch at rate ``q = batch_size / n`` (at most 1)."""
    q = batch_size / n if batch_size < n else 1.0
    return q * n


def per_sample_gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                         loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                         ) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
    """Each sample's gradient of its loss (by parameter name, a leading batch axis), its loss and
    its logits, in one vectorized pass (``torch.func``); dropout draws differ per sample."""
    from torch.func import functional_call, grad, vmap

    params = {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}
    frozen = {name: p.detach() for name, p in model.named_parameters() if not p.requires_grad}
    buffers = dict(model.named_buffers())

    def one(weights: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor):
        logits = functional_call(model, (weights, frozen, buffers), (xi.unsqueeze(0),))
        value = loss(logits, yi.unsqueeze(0)).sum()
        return value, (value.detach(), logits.squeeze(0).detach())

    grads, (losses, logits) = vmap(grad(one, has_aux=True), in_dims=(None, 0, 0), randomness="different")(params, x, y)
    return grads, losses, logits
