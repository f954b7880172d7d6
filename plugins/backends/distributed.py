"""The ``distributed`` backend: a round's agents spread over processes with Lightning Fabric.

Every process builds the same experiment from the same seed, so all agree on the sampled agents and
their instructions without talking. Process ``r`` of ``w`` trains agents ``selected[r::w]`` with the
sequential trainer (an agent's random streams depend only on seed, round and agent, so it trains
exactly as it would in one process); the results are then all-gathered, put back in selection order,
and every process runs the same aggregation. The global model is therefore bit-identical to the
sequential backend's on CPU, robust strategies see every update, and no process waits for a
broadcast. Per-agent state written by agent-side plugins (SCAFFOLD's control variates) travels in the
results, so every process's population stays identical. Only rank 0 writes the run folder and talks
to loggers.

Launch with ``runtime.devices: N`` (and ``runtime.num_nodes: M``) from ``flcore run``, which
Lightning's launcher re-executes once per local process, or under ``torchrun`` or SLURM as
Lightning supports.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
from flcore_plugins.backends.sequential import SequentialBackend

from flcore.backend import Deliver
from flcore.engine.runtime import build_fabric, single_device_fabric
from flcore.protocol import AgentResult, Instruction, RoundContext


class DistributedBackend(SequentialBackend):
    """Splits each round's agents over processes and gathers their results in order."""

    max_devices = None

    def launch(self, runtime: Any) -> Any:
        self.collective = build_fabric(runtime, strategy="ddp", num_nodes=runtime.num_nodes)
        self.collective.launch()
        return single_device_fabric(self.collective, runtime)

    @property
    def rank(self) -> int:
        collective = getattr(self, "collective", None)  # not launched (flcore validate): one process
        return collective.global_rank if collective is not None else 0

    @property
    def world_size(self) -> int:
        collective = getattr(self, "collective", None)
        return collective.world_size if collective is not None else 1

    def broadcast(self, value: Any) -> Any:
        return self.collective.broadcast(value, src=0)

    def train(self, context: RoundContext, instructions: Sequence[Instruction], deliver: Deliver) -> None:
        mine = [self.trainer.run(context, i) for i in instructions[self.rank :: self.world_size]]
        for result in self._gather(instructions, mine, context):
            deliver(result)

    def _gather(self, instructions: Sequence[Instruction], local: Sequence[AgentResult],
                context: RoundContext) -> list[AgentResult]:
        """Every rank's results, in the order of ``instructions``: deltas and buffers as tensors,
        everything else (status, metrics, steps, state, extra, history) as objects."""
        import torch.distributed as dist

        world, device = self.world_size, self.collective.device
        slots = math.ceil(len(instructions) / world)
        template, buffer_like = context.global_vector, context.global_buffers
        buffer_names = sorted(buffer_like)
        buffer_sizes = [buffer_like[n].numel() for n in buffer_names]
        deltas = torch.zeros(slots, template.numel(), dtype=template.dtype, device=device)
        buffers = torch.zeros(slots, sum(buffer_sizes), dtype=torch.float64, device=device)
        meta: list[dict[str, Any]] = []
        for slot, result in enumerate(local):
            if result.delta is not None:
                deltas[slot] = result.delta
            if buffer_names and result.buffers:
                buffers[slot] = torch.cat([result.buffers[n].reshape(-1).double() for n in buffer_names])
            meta.append({"num_samples": result.num_samples, "metrics": result.metrics, "status": result.status,
                         "steps": result.steps, "epochs": result.epochs, "state": result.state,
                         "extra": result.extra, "history": result.history, "reason": result.reason,
                         "upload_bytes": result.upload_bytes,
                         "has_delta": result.delta is not None, "has_buffers": bool(result.buffers)})
        all_deltas = self.collective.all_gather(deltas).reshape(world, slots, -1)
        all_buffers = self.collective.all_gather(buffers).reshape(world, slots, -1)
        all_meta: list[Any] = [None] * world
        dist.all_gather_object(all_meta, meta)
        ordered = []
        for position, instruction in enumerate(instructions):
            rank, slot = position % world, position // world
            info = all_meta[rank][slot]
            restored = {}
            if info.pop("has_buffers"):
                for name, chunk in zip(buffer_names, torch.split(all_buffers[rank, slot], buffer_sizes)):
                    restored[name] = chunk.to(buffer_like[name].dtype).view_as(buffer_like[name])
            delta = all_deltas[rank, slot].clone() if info.pop("has_delta") else None
            ordered.append(AgentResult(instruction.agent_id, delta, buffers=restored, **info))
        return ordered
