"""Image augmentation on whole batches, on the device, from a seeded generator.

The standard CIFAR recipe (random crop with zero padding, random horizontal flip) applied to a
stored batch before normalization, exactly as torchvision's ``RandomCrop(size, padding)`` and
``RandomHorizontalFlip`` would per image, but as tensor ops over the batch. The random draws come
from a CPU generator the caller owns (an agent's per-round stream), so a resumed run draws exactly
what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


def crop_and_flip(x: torch.Tensor, generator: torch.Generator, padding: int = 0, flip: bool = False) -> torch.Tensor:
    """Each image of ``x`` (``N, C, H, W``) zero-padded by ``padding`` and cropped back to ``H x W`` at
    a random offset, then mirrored left-right with probability 1/2."""
    n, _, height, width = x.shape
    if padding:
        offsets = torch.randint(0, 2 * padding + 1, (n, 2), generator=generator).to(x.device)
        padded = F.pad(x, (padding, padding, padding, padding))
        rows = offsets[:, 0:1] + torch.arange(height, device=x.device)  # (N, H)
        cols = offsets[:, 1:2] + torch.arange(width, device=x.device)  # (N, W)
        batch = torch.arange(n, device=x.device)[:, None, None]
        x = padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if flip:
        mirrored = torch.rand(n, generator=generator).to(x.device) < 0.5
        x = torch.where(mirrored.view(n, 1, 1, 1), x.flip(-1), x)
    return x


class Augmentation:
    """The configured augmentation (``training.augment``), or ``None`` from :func:`augmentation` when
    it does nothing."""

    def __init__(self, padding: int, flip: bool) -> None:
        self.padding, self.flip = padding, flip

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"training.augment applies to image batches (N, C, H, W), got shape {tuple(x.shape)}")
        return crop_and_flip(x, generator, self.padding, self.flip)


def augmentation(config: Any) -> Augmentation | None:
    """The augmentation a ``training.augment`` section describes, if any."""
    if config is None or (not config.crop_padding and not config.horizontal_flip):
        return None
    return Augmentation(config.crop_padding, config.horizontal_flip)
