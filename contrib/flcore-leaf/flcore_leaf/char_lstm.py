"""LEAF's next-character model: embedding, two LSTM layers, a linear output on the last step."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from flcore.data import DataSpec
from flcore.models import ClassifierModule
from flcore.params import ComponentParams


class CharLSTMParams(ComponentParams):
    embedding: int = Field(8, gt=0, description="Embedding width (LEAF: 8).")
    hidden: int = Field(256, gt=0, description="LSTM width (LEAF: 256).")
    layers: int = Field(2, gt=0, description="Stacked LSTM layers (LEAF: 2).")


class _Net(nn.Module):
    def __init__(self, vocabulary: int, params: CharLSTMParams) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, params.embedding)
        self.lstm = nn.LSTM(params.embedding, params.hidden, params.layers, batch_first=True)
        self.out = nn.Linear(params.hidden, vocabulary)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(x))
        return self.out(hidden[:, -1])


def CharLSTM(params: CharLSTMParams, spec: DataSpec) -> ClassifierModule:
    """Predicts the next character from a sequence of character ids."""
    if len(spec.input_shape) != 1:
        raise ValueError(f"char_lstm needs sequences of character ids, got inputs of shape {spec.input_shape}")
    return ClassifierModule(_Net(spec.num_classes, params))
