"""Optimizers, losses and learning-rate schedules built from a :class:`TrainingConfig`.

Shared by the federated engine and centralized training, so that both train the same way.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import torch
import torch.nn.functional as F


def build_optimizer(config: Any, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """The optimizer an :class:`flcore.config.OptimizerConfig` describes."""
    params = [p for p in params if p.requires_grad]
    if config.name == "sgd":
        return torch.optim.SGD(
            params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay,
            nesterov=config.nesterov and config.momentum > 0,
        )
    if config.name == "adam":
        return torch.optim.Adam(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    if config.name == "adamw":
        return torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay)
    if config.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.name == "adagrad":
        return torch.optim.Adagrad(params, lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.name!r}")


def compute_loss(logits: torch.Tensor, targets: torch.Tensor, config: Any | None) -> torch.Tensor:
    """The configured loss (cross-entropy when no config is given)."""
    if config is not None and config.loss == "nll":
        return F.nll_loss(logits, targets)
    smoothing = config.label_smoothing if config is not None else 0.0
    return F.cross_entropy(logits, targets, label_smoothing=smoothing)


def lr_factor(schedule: Any, step: int, total: int) -> float:
    """The learning-rate multiplier at round (or epoch) ``step`` of ``total``."""
    if schedule.name == "constant":
        return 1.0
    if schedule.name == "step":
        return schedule.gamma ** (step // schedule.step_size)
    if schedule.name == "multistep":
        return schedule.gamma ** sum(1 for m in schedule.milestones if step >= m)
    if schedule.name == "exponential":
        return schedule.gamma**step
    if schedule.name == "cosine":
        progress = min(step / max(total, 1), 1.0)
        return schedule.min_factor + (1 - schedule.min_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown scheduler {schedule.name!r}")


def per_sample_loss(logits: torch.Tensor, targets: torch.Tensor, config: Any | None) -> torch.Tensor:
    """The configured loss of each sample (what :func:`compute_loss` averages)."""
    if config is not None and config.loss == "nll":
        return F.nll_loss(logits, targets, reduction="none")
    smoothing = config.label_smoothing if config is not None else 0.0
    return F.cross_entropy(logits, targets, reduction="none", label_smoothing=smoothing)
