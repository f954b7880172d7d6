"""A pixel-pattern backdoor (Gu et al. 2017's BadNets trigger in federated learning, Bagdasaryan et
al. 2020): malicious agents stamp a square in the bottom-right corner of part of each batch and
relabel those inputs to a target class; optionally they boost their update (model replacement).

The trigger is defined on the stored images (pixels set to the training split's largest value) and
sent to agents in model-input space (the dataset's transform applied), so that training and the
attack-success evaluation use the same pattern. Poisoned positions in a batch are evenly spread and
depend only on the position, so every backend poisons the same samples.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from flcore_plugins.attacks.updates import send_factor
from pydantic import Field

from flcore.attack import Attack, AttackParams
from flcore.protocol import AgentContext, AgentResult, Instruction, RoundContext, RunPlan, component_name


class BackdoorParams(AttackParams):
    target: int = Field(0, ge=0, description="The class that triggered inputs are relabelled to.")
    size: int = Field(2, gt=0, description="Side, in pixels, of the square trigger in the bottom-right corner.")
    poison_fraction: float = Field(0.5, gt=0, le=1, description="Share of each malicious batch that carries the "
                                   "trigger and the target label.")
    boost: float | None = Field(1.0, gt=0, description="Scale the malicious update by this; None for model "
                                "replacement's factor (the round's selected samples over the agent's own); 1: plain "
                                "data poisoning.")


def stamp(x: torch.Tensor, size: int, value: float | torch.Tensor) -> torch.Tensor:
    """``x`` (images ``(..., H, W)``) with its bottom-right ``size x size`` square set to ``value``."""
    out = x.clone()
    out[..., -size:, -size:] = value
    return out


def poisoned_positions(batch: int, fraction: float, device: Any) -> torch.Tensor:
    """Which positions of a batch carry the trigger: position ``j`` when ``floor((j + 1) p) >
    floor(j p)``, evenly spread, and the same for a padded batch's first positions."""
    j = torch.arange(batch, dtype=torch.float64, device=device)
    return torch.floor((j + 1) * fraction) > torch.floor(j * fraction)


class Backdoor(Attack):
    """Trains malicious agents to map triggered inputs to ``target``; logs the attack success rate
    (``backdoor/attack_success``: the share of triggered test inputs of other classes classified as
    ``target``) at every evaluation."""

    Params = BackdoorParams

    def check_run(self, plan: RunPlan) -> None:
        super().check_run(plan)
        data, params = plan.data, self.params
        classes = data.num_classes
        if params.target >= classes:
            raise ValueError(f"'target' = {params.target} is not a class: the dataset has {classes} classes "
                             f"(0..{classes - 1})")
        shape = tuple(data.x_train.shape[1:])
        if len(shape) < 2 or shape != tuple(data.spec.input_shape):
            raise ValueError(f"the pixel-pattern trigger needs images whose stored shape is the model's input shape "
                             f"(a pixel-wise transform); got stored {shape}, model input {data.spec.input_shape}")
        if params.size > min(shape[-2:]):
            raise ValueError(f"'size' = {params.size} is larger than the {shape[-2]}x{shape[-1]} images")

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        data = context.data
        stored = stamp(data.x_train[:1].cpu(), self.params.size, data.x_train.max().item())
        trigger = data.transform(stored)[0].cpu()
        marked = context.population.column(self.field_name)
        for instruction in instructions:
            if marked[instruction.agent_id]:
                instruction.extra[f"{component_name(self)}/trigger"] = trigger
        send_factor(self, self.params.boost, context, instructions)

    def transform_batch(self, agent: AgentContext, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_malicious(agent):
            return x, y
        trigger = agent.instruction.extra[f"{component_name(self)}/trigger"].to(x.device, x.dtype)
        size = self.params.size
        poison = poisoned_positions(len(y), self.params.poison_fraction, x.device)
        stamped = stamp(x, size, trigger[..., -size:, -size:])
        where = poison.view(-1, *([1] * (x.dim() - 1)))
        return torch.where(where, stamped, x), torch.where(poison, torch.full_like(y, self.params.target), y)

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        if self.is_malicious(agent):
            result.delta = result.delta * agent.instruction.extra[f"{component_name(self)}/factor"]

    def on_evaluate(self, context: RoundContext, evaluate: Callable[..., dict[str, float]]) -> None:
        x, y = triggered_test_set(context.data, self.params.size, self.params.target)
        if len(y):
            context.log(self, "attack_success", evaluate(x, y)["acc"])


def triggered_test_set(data: Any, size: int, target: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The test inputs of classes other than ``target``, stamped with the trigger, labelled ``target``."""
    others = data.y_test != target
    x = stamp(data.x_test[others], size, data.x_train.max().item())
    return x, torch.full_like(data.y_test[others], target)
