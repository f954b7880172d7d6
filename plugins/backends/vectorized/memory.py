"""How many agents train at once: the memory one agent's step needs, measured, against a budget.

On CUDA, one agent's need is ``torch.cuda.max_memory_allocated`` over a real one-agent step (the
same code path as a round's, batch size included) minus what was allocated before it. A CPU has no
allocator peak counter, so there it is what autograd saves for backward in a one-agent forward
pass (counted with saved-tensor hooks) plus the agent's stacked state (parameters, gradients,
optimizer state, buffers, its batch). The budget is ``memory_budget_mib`` when given, else
``memory_fraction`` of the device's free memory (CUDA: ``mem_get_info`` plus what PyTorch's cache
holds unused; CPU: the memory the system reports available).
"""

from __future__ import annotations

import math
import os
from typing import Callable

import torch


def chunk_capacity(budget_bytes: float, agent_bytes: float) -> int:
    """Agents that fit in ``budget_bytes`` at ``agent_bytes`` each; at least one."""
    if math.isinf(budget_bytes):
        return 2**31
    return max(1, int(budget_bytes // max(agent_bytes, 1.0)))


def cuda_step_bytes(step: Callable[[], None], device: torch.device) -> int:
    """The peak memory ``step`` allocates on a CUDA device beyond what was allocated before it.
    (It resets the device's peak counter: later ``max_memory_allocated`` readings start here.)"""
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def saved_for_backward_bytes(forward: Callable[[], torch.Tensor]) -> int:
    """Bytes of the distinct storages autograd saves while ``forward()`` builds its graph (its
    activations); the graph is freed on return."""
    seen: dict[tuple[int, torch.device], int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        seen[(storage.data_ptr(), t.device)] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    del out
    return sum(seen.values())


def device_budget(device: torch.device, fraction: float, budget_mib: float | None) -> float:
    """The bytes agents may take together on ``device``."""
    if budget_mib is not None:
        return budget_mib * 2**20
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return fraction * (free + cached)
    return fraction * _available_host_bytes()


def _available_host_bytes() -> float:
    """MemAvailable on Linux (free plus reclaimable cache), else the free physical pages."""
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return float("inf")
