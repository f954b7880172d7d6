"""A training step's backward, gradient clipping and optimizer: through Fabric, or around it.

Fabric's wrappers cost a fixed few hundred microseconds a step (a backward hook registered on every
forward output, precision and strategy dispatch): about 5% of E1's round with LeNet-5 on a CPU. On one
device in plain 32-bit precision they do nothing else, so the engine steps the model directly there;
every other precision or strategy goes through Fabric. Both paths run the same tensor operations.
"""

from __future__ import annotations

from typing import Any

import torch


def fabric_is_transparent(fabric: Any) -> bool:
    """Whether ``fabric`` only places tensors on one device: single-device strategy, 32-bit precision."""
    from lightning.fabric.plugins.precision import Precision
    from lightning.fabric.strategies import SingleDeviceStrategy

    return type(fabric.strategy) is SingleDeviceStrategy and type(fabric.strategy.precision) is Precision


def place_module(fabric: Any, model: torch.nn.Module) -> torch.nn.Module:
    """``model`` ready to train and evaluate on ``fabric``: moved to its device, wrapped only where the
    wrapper does something."""
    if fabric_is_transparent(fabric):
        return model.to(fabric.device)
    return fabric.setup_module(model)


class Stepper:
    """Backward, clipping and optimizer set-up for one model, chosen once per process."""

    def __init__(self, fabric: Any, module: torch.nn.Module) -> None:
        self.fabric = fabric
        self.module = module
        self.direct = fabric_is_transparent(fabric)

    def setup_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return optimizer if self.direct else self.fabric.setup_optimizers(optimizer)

    def backward(self, objective: torch.Tensor) -> None:
        if self.direct:
            objective.backward()
        else:
            self.fabric.backward(objective)

    def clip(self, optimizer: torch.optim.Optimizer, max_norm: float) -> None:
        """Clip the gradients' global L2 norm; a non-finite norm raises, as Fabric's does."""
        if not self.direct:
            self.fabric.clip_gradients(self.module, optimizer, max_norm=max_norm)
            return
        params = [p for group in optimizer.param_groups for p in group["params"]]
        torch.nn.utils.clip_grad_norm_(params, max_norm=max_norm, error_if_nonfinite=True)
