"""The Lightning Fabric local training runs on, built from ``runtime``."""

from __future__ import annotations

from typing import Any

import torch

from flcore.errors import ConfigError


def build_fabric(runtime: Any, **strategy: Any) -> Any:
    """A Lightning Fabric for the configured accelerator, devices and precision.

    Without ``strategy`` arguments it is one device in one process, and more devices are refused;
    a multi-process backend passes its own (``strategy="ddp", num_nodes=...``).
    """
    from lightning.fabric import Fabric

    if runtime.matmul_precision:
        torch.set_float32_matmul_precision(runtime.matmul_precision)
    try:
        fabric = Fabric(accelerator=runtime.accelerator, devices=runtime.devices, precision=runtime.precision,
                        **strategy)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"runtime (accelerator={runtime.accelerator!r}, devices={runtime.devices!r}, "
            f"precision={runtime.precision!r}) cannot be used here: {exc}"
        ) from None
    if fabric.world_size > 1 and not strategy:
        raise ConfigError(
            f"runtime.devices = {runtime.devices!r}: this backend trains on one device; use devices: 1, or "
            "federation.backend: distributed to spread agents over devices."
        )
    return fabric


def single_device_fabric(fabric: Any, runtime: Any) -> Any:
    """A Fabric on ``fabric``'s device alone: local training must not be wrapped in DDP, whose
    gradient all-reduce would tie together processes that train different agents."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import SingleDeviceStrategy

    return Fabric(strategy=SingleDeviceStrategy(device=fabric.device), precision=runtime.precision)
