"""A model's trainable parameters as one flat vector, and its buffers, in and out."""

from __future__ import annotations

from typing import Sequence

import torch


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """One vector holding every tensor's values (a copy)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


@torch.no_grad()
def load_vector(tensors: Sequence[torch.Tensor], vector: torch.Tensor) -> None:
    """Copy ``vector``'s values into ``tensors`` in place (never aliasing it)."""
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(vector[offset : offset + n].view_as(t))
        offset += n


class ModelWeights:
    """Reads and writes a model's trainable parameters (as one vector) and its buffers.

    Frozen parameters (feature extraction) are not part of the vector: they never change.
    """

    def __init__(self, model: torch.nn.Module) -> None:
        self.names = [name for name, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = dict(model.named_buffers())

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params)

    def shapes(self) -> list[tuple[str, tuple[int, ...]]]:
        """Each trainable parameter's name and shape (what a checkpoint is checked against)."""
        return [(name, tuple(p.shape)) for name, p in zip(self.names, self.params)]

    def vector(self) -> torch.Tensor:
        return flatten(self.params)

    def buffer_state(self) -> dict[str, torch.Tensor]:
        """A copy of the buffers (BatchNorm statistics and counters)."""
        return {name: b.detach().clone() for name, b in self.buffers.items()}

    @torch.no_grad()
    def load(self, vector: torch.Tensor, buffers: dict[str, torch.Tensor]) -> None:
        """Put weights and buffers into the model."""
        load_vector(self.params, vector)
        for name, value in buffers.items():
            self.buffers[name].copy_(value)
