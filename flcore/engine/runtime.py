"""The Lightning Fabric a run trains with, for one device or for the distributed backend."""

from __future__ import annotations

from typing import Any

import torch

from flcore.errors import ConfigError


def build_fabric(runtime: Any, distributed: bool) -> Any:
    """A Lightning Fabric for the configured accelerator and precision; for the distributed backend,
    a DDP one whose other processes Lightning launches here (or torchrun/SLURM launched)."""
    from lightning.fabric import Fabric

    if runtime.matmul_precision:
        torch.set_float32_matmul_precision(runtime.matmul_precision)
    extra = {"strategy": "ddp", "num_nodes": runtime.num_nodes} if distributed else {}
    try:
        fabric = Fabric(accelerator=runtime.accelerator, devices=runtime.devices, precision=runtime.precision, **extra)
    except (ValueError, RuntimeError, TypeError) as exc:
        raise ConfigError(
            f"runtime (accelerator={runtime.accelerator!r}, devices={runtime.devices!r}, "
            f"precision={runtime.precision!r}) cannot be used here: {exc}"
        ) from None
    if fabric.world_size > 1 and not distributed:
        raise ConfigError(
            f"runtime.devices = {runtime.devices!r}: the sequential and vectorized backends train on one device; "
            "use devices: 1, or federation.backend: distributed to spread agents over devices."
        )
    if distributed:
        fabric.launch()
    return fabric


def check_distributable(aggregator: Any, name: str) -> None:
    """Per-agent state that an aggregator keeps from its local hooks would live on one process only."""
    from flcore.aggregation import Aggregator

    hooks = [h for h in ("on_local_start", "on_local_end") if getattr(type(aggregator), h) is not getattr(Aggregator, h)]
    if hooks:
        raise ConfigError(
            f"federation.aggregator '{name}' keeps per-agent state in {', '.join(hooks)}, which the distributed "
            "backend would split across processes; use the sequential backend with it."
        )


def single_device_fabric(fabric: Any, runtime: Any) -> Any:
    """A Fabric on this process's device alone: local training must not be wrapped in DDP, whose
    gradient all-reduce would tie together processes that train different agents."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import SingleDeviceStrategy

    return Fabric(strategy=SingleDeviceStrategy(device=fabric.device), precision=runtime.precision)
