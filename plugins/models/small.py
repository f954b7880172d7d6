"""Small models defined here rather than taken from torchvision: MLP, LeNet-5, CNN, logistic."""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import Field, StrictInt
from torch import nn

from flcore.data import DataSpec
from flcore.models import ClassifierModule
from flcore.params import ComponentParams, NoParams

#: a layer's width or channel count: a whole number above zero (``true`` is not 1)
Width = Annotated[StrictInt, Field(gt=0)]


class MLPParams(ComponentParams):
    hidden: list[Width] = Field(default_factory=lambda: [200, 200], description="Widths of the hidden layers.")
    dropout: float = Field(0.0, ge=0, lt=1)


def MLP(params: MLPParams, spec: DataSpec) -> ClassifierModule:
    """Dense ReLU layers on the flattened input."""
    layers: list[nn.Module] = [nn.Flatten()]
    width = math.prod(spec.input_shape)
    for hidden in params.hidden:
        layers += [nn.Linear(width, hidden), nn.ReLU()]
        if params.dropout:
            layers.append(nn.Dropout(params.dropout))
        width = hidden
    layers.append(nn.Linear(width, spec.num_classes))
    return ClassifierModule(nn.Sequential(*layers))


def Logistic(params: NoParams, spec: DataSpec) -> ClassifierModule:
    """One linear layer; with cross-entropy this is multinomial logistic regression."""
    return ClassifierModule(nn.Sequential(nn.Flatten(), nn.Linear(math.prod(spec.input_shape), spec.num_classes)))


def _image_shape(spec: DataSpec, model: str) -> tuple[int, int, int]:
    if len(spec.input_shape) != 3:
        raise ValueError(f"model '{model}' needs image inputs (channels, height, width), got shape {spec.input_shape}")
    return spec.input_shape  # type: ignore[return-value]


class LeNet5Params(ComponentParams):
    activation: str = Field("tanh", pattern="^(tanh|relu)$", description="tanh as in the paper, or relu.")


def LeNet5(params: LeNet5Params, spec: DataSpec) -> ClassifierModule:
    """C1 (6@5x5) - S2 - C3 (16@5x5) - S4 - F5 (120) - F6 (84) - output. A 28x28 input is padded by
    2 so that C1 sees 32x32, as in the original; no upsampling."""
    channels, height, width = _image_shape(spec, "lenet5")
    if min(height, width) < 28:
        raise ValueError(f"lenet5 needs inputs of at least 28x28, got {height}x{width}; use 'cnn' or 'mlp'")
    act = nn.Tanh if params.activation == "tanh" else nn.ReLU
    pad = 2 if min(height, width) < 32 else 0
    h, w = (height + 2 * pad - 4) // 2, (width + 2 * pad - 4) // 2
    h, w = (h - 4) // 2, (w - 4) // 2
    net = nn.Sequential(
        nn.Conv2d(channels, 6, 5, padding=pad), act(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, 5), act(), nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * h * w, 120), act(),
        nn.Linear(120, 84), act(),
        nn.Linear(84, spec.num_classes),
    )
    return ClassifierModule(net)


class CNNParams(ComponentParams):
    channels: tuple[Width, Width] = Field((32, 64), description="Channels of the two conv layers.")
    kernel_size: Width = Field(5, description="Side of the square kernels.")
    hidden: Width = Field(512, description="Width of the hidden dense layer.")


def CNN(params: CNNParams, spec: DataSpec) -> ClassifierModule:
    """conv-relu-pool twice (same padding), a hidden dense layer, and the output layer."""
    channels, height, width = _image_shape(spec, "cnn")
    c1, c2 = params.channels
    k, pad = params.kernel_size, params.kernel_size // 2
    net = nn.Sequential(
        nn.Conv2d(channels, c1, k, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, k, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(c2 * (height // 4) * (width // 4), params.hidden), nn.ReLU(),
        nn.Linear(params.hidden, spec.num_classes),
    )
    return ClassifierModule(net)
