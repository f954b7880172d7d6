"""Evaluating a model on tensors: mean loss and accuracy."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F


@torch.inference_mode()
def evaluate(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    transform: Callable[[torch.Tensor], torch.Tensor],
    batch_size: int,
    device: torch.device,
) -> dict[str, float]:
    """Cross-entropy loss and accuracy of ``model`` over ``(x, y)``, in eval mode."""
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    for start in range(0, len(y), batch_size):
        xb = transform(x[start : start + batch_size].to(device, non_blocking=True))
        yb = y[start : start + batch_size].to(device, non_blocking=True)
        logits = model(xb).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").double()
        correct += (logits.argmax(dim=1) == yb).sum()
    model.train(was_training)
    n = max(len(y), 1)
    return {"loss": float(loss_sum) / n, "acc": float(correct) / n}
