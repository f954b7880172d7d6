"""Aggregating floating buffers (BatchNorm statistics) and counters, outside of the aggregator."""

from __future__ import annotations

from typing import Sequence

import torch

from flcore.protocol import AgentResult


def average_buffers(global_buffers: dict[str, torch.Tensor], updates: Sequence[AgentResult]) -> dict[str, torch.Tensor]:
    """Sample-weighted mean of floating buffers; integer counters take the largest value."""
    if not global_buffers:
        return global_buffers
    total = float(sum(u.num_samples for u in updates))
    out = {}
    for name, value in global_buffers.items():
        if value.is_floating_point():
            acc = torch.zeros_like(value, dtype=torch.float64)
            for u in updates:
                acc += u.buffers[name].double() * (u.num_samples / total)
            out[name] = acc.to(value.dtype)
        else:
            out[name] = torch.stack([u.buffers[name] for u in updates]).amax(dim=0)
    return out
