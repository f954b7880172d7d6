"""Models as Lightning modules, usable for federated and for centralized training.

A model component is called as ``Model(params, spec)`` with the dataset's :class:`flcore.data.DataSpec`
and returns a :class:`ClassifierModule`. The federated engine calls only ``forward`` and reads
``parameters()``; a plain ``lightning.Trainer`` uses the steps below.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from torch import nn

from flcore.training import build_optimizer, compute_loss, lr_factor


class ClassifierModule(L.LightningModule):
    """Wraps a network that maps inputs to class logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.training_config: Any = None  # set by configure_training before a Trainer fits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def configure_training(self, training: Any) -> None:
        """Use these :class:`flcore.config.TrainingConfig` settings for centralized training."""
        self.training_config = training

    def parameter_counts(self) -> dict[str, int]:
        """Trainable, frozen and total parameter counts (the paper's Table 3)."""
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "frozen": total - trainable, "total": total}

    def _step(self, batch: Any, stage: str) -> torch.Tensor:
        x, y = batch
        logits = self(x)
        loss = compute_loss(logits, y, self.training_config)
        acc = (logits.argmax(dim=1) == y).float().mean()
        self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=True, on_step=False)
        self.log(f"{stage}/acc", acc, prog_bar=True, on_epoch=True, on_step=False)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        if self.training_config is None:
            raise RuntimeError("call configure_training(config.training) before fitting")
        optimizer = build_optimizer(self.training_config.optimizer, self.parameters())
        schedule = self.training_config.scheduler
        total = self.trainer.max_epochs if self.trainer is not None else 1
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(schedule, epoch, total))
        return {"optimizer": optimizer, "lr_scheduler": scheduler}
