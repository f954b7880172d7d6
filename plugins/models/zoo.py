"""The paper's Table 2 from torchvision: one definition per family, a registered name per variant.

Each model is adapted to its dataset:

- the classifier head is replaced to output ``num_classes``;
- for inputs with other than 3 channels the first convolution is rebuilt; with pretrained weights
  for a grayscale input its kernel is the sum of the RGB kernels, so a gray image gives exactly the
  response the pretrained layer gives to that image replicated on three channels;
- inputs smaller than the architecture can take (AlexNet needs 63x63, for example) are upsampled to
  the smallest size that works, found by a probe at construction; nothing is upsampled to 224 by
  default.

Transfer-learning modes: ``scratch`` (random init), ``finetune`` (pretrained, all trainable) and
``feature_extract`` (pretrained, only the new head trains; the backbone is frozen and its batch norm
stays in eval mode). Pretrained weights come from torchvision's weights API (the torch hub cache,
downloading when allowed) or from a local checkpoint, always loaded with ``weights_only=True``.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from flcore_plugins.models.variants import FAMILIES, VARIANTS
from pydantic import Field, model_validator
from torch import nn

from flcore.data import DataSpec
from flcore.errors import ConfigError
from flcore.models import ClassifierModule
from flcore.params import ComponentParams

_PROBE_SIZES = (32, 48, 64, 96, 128, 160, 224)


class ZooParams(ComponentParams):
    mode: Literal["scratch", "finetune", "feature_extract"] = "scratch"
    weights: str | None = Field(
        None, description="torchvision weights name ('DEFAULT', 'IMAGENET1K_V1', ...) for finetune/feature_extract; "
        "'none' keeps a random backbone (random features)."
    )
    checkpoint: str | None = Field(None, description="A local state_dict file of the torchvision architecture.")
    download: bool = Field(True, description="Let torchvision download weights missing from the hub cache.")
    input_size: int | None = Field(None, gt=0, description="Resize inputs to this size; default only when needed.")

    @model_validator(mode="after")
    def _pretrained_source(self) -> ZooParams:
        if self.mode != "scratch" and self.weights is None and self.checkpoint is None:
            object.__setattr__(self, "weights", "DEFAULT")
        return self


def _get(module: nn.Module, path: str) -> nn.Module:
    for part in path.split("."):
        module = module[int(part)] if part.isdigit() else getattr(module, part)  # type: ignore[index]
    return module


def _set(module: nn.Module, path: str, value: nn.Module) -> None:
    parent_path, _, last = path.rpartition(".")
    parent = _get(module, parent_path) if parent_path else module
    if last.isdigit():
        parent[int(last)] = value  # type: ignore[index]
    else:
        setattr(parent, last, value)


def _pretrained_weights(builder: str, params: ZooParams) -> Any:
    """A torchvision weights enum member, available offline or with a clear error."""
    from torchvision.models import get_model_weights

    try:
        weights = get_model_weights(builder)[params.weights] if params.weights != "DEFAULT" \
            else get_model_weights(builder).DEFAULT
    except KeyError:
        names = ", ".join(w.name for w in get_model_weights(builder))
        raise ConfigError(f"model.weights = {params.weights!r}: {builder} has the weights {names} (or DEFAULT).") from None
    cached = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    if not cached.exists() and not params.download:
        raise ConfigError(
            f"model.weights = {params.weights!r}: the file {cached.name} is not in the torch hub cache "
            f"({cached.parent}) and model.download is false. Download {weights.url} into that folder, "
            f"or set model.checkpoint to a local state_dict file."
        )
    return weights


def _load_checkpoint(net: nn.Module, path: str) -> None:
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"model.checkpoint = {path!r}: no such file.")
    state = torch.load(file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(f"model.checkpoint = {path!r} does not fit the architecture: {exc}") from None


def _adapt_first_conv(conv: nn.Conv2d, channels: int, pretrained: bool) -> nn.Conv2d:
    new = nn.Conv2d(channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                    conv.dilation, conv.groups, conv.bias is not None)
    if pretrained:
        with torch.no_grad():
            summed = conv.weight.sum(dim=1, keepdim=True)
            new.weight.copy_(summed.repeat(1, channels, 1, 1) / channels if channels != 1 else summed)
            if conv.bias is not None:
                new.bias.copy_(conv.bias)
    return new


def _new_head(head: nn.Module, num_classes: int) -> nn.Module:
    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, num_classes)
    if isinstance(head, nn.Conv2d):  # SqueezeNet classifies with a 1x1 convolution
        return nn.Conv2d(head.in_channels, num_classes, kernel_size=1)
    raise TypeError(f"cannot replace a head of type {type(head).__name__}")


def _smallest_working_size(net: nn.Module, channels: int, height: int, width: int) -> int | None:
    """None if ``net`` takes the input as it is, else the smallest square size that works."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            for size in (None, *_PROBE_SIZES):
                if size is not None and size <= min(height, width):
                    continue
                h, w = (height, width) if size is None else (size, size)
                try:
                    net(torch.zeros(1, channels, h, w))
                    return size
                except RuntimeError:
                    continue
    finally:
        net.train(was_training)
    raise ValueError(f"no input size up to {_PROBE_SIZES[-1]} works for this architecture")


class ZooNet(nn.Module):
    """A torchvision network with an optional resize in front and frozen-backbone batch norm."""

    def __init__(self, backbone: nn.Module, head_path: str, resize_to: int | None, freeze_backbone: bool) -> None:
        super().__init__()
        self.resize = nn.Upsample(size=(resize_to, resize_to), mode="bilinear", align_corners=False) \
            if resize_to else nn.Identity()
        self.backbone = backbone
        self.head_path = head_path
        self.freeze_backbone = freeze_backbone
        if freeze_backbone:
            head = set(id(p) for p in _get(backbone, head_path).parameters())
            for p in backbone.parameters():
                p.requires_grad = id(p) in head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.resize(x))

    def train(self, mode: bool = True) -> ZooNet:
        super().train(mode)
        if self.freeze_backbone and mode:  # frozen statistics stay frozen
            head = _get(self.backbone, self.head_path)
            for module in self.backbone.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module not in set(head.modules()):
                    module.eval()
        return self


def build(name: str, params: ZooParams, spec: DataSpec) -> ClassifierModule:
    """Build the registered variant ``name`` adapted to ``spec``."""
    from torchvision.models import get_model

    builder, family = VARIANTS[name]
    head_path, conv_path = FAMILIES[family]
    if len(spec.input_shape) != 3:
        raise ValueError(f"model '{name}' needs image inputs (channels, height, width), got shape {spec.input_shape}")
    channels, height, width = spec.input_shape
    from_weights = params.mode != "scratch" and params.checkpoint is None and params.weights != "none"
    weights = _pretrained_weights(builder, params) if from_weights else None
    try:
        net = get_model(builder, weights=None)
        if weights is not None:
            # weights_only: a file planted in the hub cache (read without a hash check) must not run code;
            # torchvision's own get_model(weights=...) reads it with weights_only=False
            net.load_state_dict(weights.get_state_dict(progress=False, check_hash=True, weights_only=True))
    except (OSError, RuntimeError, pickle.UnpicklingError) as exc:  # urllib errors are OSErrors
        raise ConfigError(
            f"model '{name}': pretrained weights {params.weights!r} could not be loaded ({exc}). Offline, put the "
            f"file in {Path(torch.hub.get_dir()) / 'checkpoints'} or set model.checkpoint to a local file."
        ) from None
    if params.mode != "scratch" and params.checkpoint is not None:
        _load_checkpoint(net, params.checkpoint)
    pretrained = from_weights or (params.mode != "scratch" and params.checkpoint is not None)
    if channels != 3:
        _set(net, conv_path, _adapt_first_conv(_get(net, conv_path), channels, pretrained))
    _set(net, head_path, _new_head(_get(net, head_path), spec.num_classes))
    if family == "squeezenet":  # its head is a conv followed by ReLU; keep logits signed
        net.classifier[2] = nn.Identity()
    resize_to = params.input_size or _smallest_working_size(net, channels, height, width)
    return ClassifierModule(ZooNet(net, head_path, resize_to, freeze_backbone=params.mode == "feature_extract"))


def _factory(name: str) -> Callable[[ZooParams, DataSpec], ClassifierModule]:
    def make(params: ZooParams, spec: DataSpec) -> ClassifierModule:
        return build(name, params, spec)

    make.__name__ = make.__qualname__ = name
    make.__doc__ = f"torchvision's {VARIANTS[name][0]}, adapted to the dataset (see flcore_plugins.models.zoo)."
    make.Params = ZooParams  # type: ignore[attr-defined]
    return make


for _name in VARIANTS:
    globals()[_name] = _factory(_name)
