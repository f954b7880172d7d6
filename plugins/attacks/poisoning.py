"""Label flipping: malicious agents train honestly on their own inputs with wrong labels (data
poisoning; Fang et al. 2020, Tolpegin et al. 2020)."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from flcore.attack import Attack, AttackParams
from flcore.protocol import AgentContext, Instruction, RoundContext, component_name


class LabelFlipParams(AttackParams):
    mapping: Literal["reverse", "next"] = Field("reverse", description="reverse: label l becomes C - 1 - l; next: "
                                                "l becomes (l + 1) mod C, for C classes.")


def flip(y: torch.Tensor, classes: int, mapping: str) -> torch.Tensor:
    """The poisoned labels."""
    return classes - 1 - y if mapping == "reverse" else (y + 1) % classes


class LabelFlip(Attack):
    """Every label of a malicious agent's batches is flipped before the forward pass."""

    Params = LabelFlipParams

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        marked = context.population.column(self.field_name)
        for instruction in instructions:
            if marked[instruction.agent_id]:
                instruction.extra[f"{component_name(self)}/classes"] = context.data.num_classes

    def transform_batch(self, agent: AgentContext, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_malicious(agent):
            return x, y
        return x, flip(y, agent.instruction.extra[f"{component_name(self)}/classes"], self.params.mapping)
