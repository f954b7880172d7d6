"""Attacks on a malicious agent's own finished update: sign flipping, Gaussian noise, scaling.

None of them colludes: each malicious agent trains honestly, then edits its own update in
``on_update``. What an agent needs from the round (a noise seed, the model-replacement factor) the
attack sends it in its instruction, so every backend computes the same update.
"""

from __future__ import annotations

import torch
from pydantic import Field

from flcore.attack import Attack, AttackParams
from flcore.protocol import AgentContext, AgentResult, Instruction, RoundContext, component_name


class SignFlipParams(AttackParams):
    scale: float = Field(1.0, gt=0, description="s: the malicious update is -s * delta.")


class SignFlip(Attack):
    """``delta <- -s * delta``: the honest direction, reversed and stretched."""

    Params = SignFlipParams

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        if self.is_malicious(agent):
            result.delta = result.delta * -self.params.scale


class GaussianNoiseParams(AttackParams):
    std: float = Field(1.0, gt=0, description="sigma: each coordinate of the malicious update is drawn from "
                       "N(0, sigma^2).")


class GaussianNoise(Attack):
    """``delta <- N(0, sigma^2 I)``, drawn from a seed the attack's round stream gives each agent."""

    Params = GaussianNoiseParams

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        marked = context.population.column(self.field_name)
        for instruction in instructions:
            if marked[instruction.agent_id]:
                seed = int(context.rng(self, instruction.agent_id).integers(2**63))
                instruction.extra[f"{component_name(self)}/seed"] = seed

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        if self.is_malicious(agent):
            generator = torch.Generator().manual_seed(agent.instruction.extra[f"{component_name(self)}/seed"])
            noise = torch.randn(result.delta.numel(), generator=generator, dtype=result.delta.dtype)
            result.delta = (noise * self.params.std).to(result.delta.device)


def replacement_factor(context: RoundContext, agent_id: int) -> float:
    """Model replacement's ``gamma``: the round's selected samples over the agent's own, so that
    sample-weighted FedAvg of ``gamma * (X - G)`` with near-zero honest updates lands on ``X``
    (Bagdasaryan et al. 2020, ``gamma = n / eta`` for a uniform mean with server rate ``eta``)."""
    sizes = context.population.num_samples
    return float(sizes[context.selected].sum()) / float(max(sizes[agent_id], 1))


class ScalingParams(AttackParams):
    factor: float | None = Field(None, gt=0, description="gamma: the malicious update is gamma * delta; None "
                                 "for model replacement's gamma, the round's selected samples over the agent's own.")


class Scaling(Attack):
    """``delta <- gamma * delta``: a boosted update (model replacement when ``gamma`` is the
    aggregation's inverse weight of the agent)."""

    Params = ScalingParams

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        send_factor(self, self.params.factor, context, instructions)

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        if self.is_malicious(agent):
            result.delta = result.delta * agent.instruction.extra[f"{component_name(self)}/factor"]


def send_factor(attack: Attack, factor: float | None, context: RoundContext, instructions: list[Instruction]) -> None:
    """Tell each malicious agent its boost: ``factor``, or model replacement's when ``None``."""
    marked = context.population.column(attack.field_name)
    for instruction in instructions:
        agent = instruction.agent_id
        if marked[agent]:
            gamma = replacement_factor(context, agent) if factor is None else factor
            instruction.extra[f"{component_name(attack)}/factor"] = float(gamma)
