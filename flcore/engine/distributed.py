"""The ``distributed`` backend: a round's agents spread over processes with Lightning Fabric.

Every process builds the same experiment from the same seed, so all agree on the sampled agents
without talking. Process ``r`` of ``w`` trains agents ``selected[r::w]`` with the sequential trainer
(an agent's random streams depend only on seed, round and agent, so it trains exactly as it would in
one process); the updates are then all-gathered, put back in selection order, and every process runs
the same aggregation. The global model is therefore bit-identical to the sequential backend's on
CPU, robust aggregators see every update, and no process waits for a broadcast. Only rank 0 writes
the run folder and talks to loggers.

Launch with ``runtime.devices: N`` (and ``runtime.num_nodes: M``) from ``flcore run``, which
Lightning's launcher re-executes once per local process, or under ``torchrun`` or SLURM as
Lightning supports.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

from flcore.aggregation import ClientUpdate
from flcore.engine.local import AgentFailure


class UpdateExchange:
    """Splits a round's agents over ranks and gathers their updates back in order."""

    def __init__(self, fabric: Any) -> None:
        self.fabric = fabric
        self.rank = fabric.global_rank
        self.world = fabric.world_size

    def mine(self, agents: Sequence[int]) -> list[int]:
        """The agents this process trains."""
        return list(agents[self.rank :: self.world])

    def gather(self, agents: Sequence[int], local: Sequence[ClientUpdate | AgentFailure], logs: list[dict],
               template: torch.Tensor, buffer_like: dict[str, torch.Tensor]
               ) -> tuple[list[ClientUpdate | AgentFailure], list[dict]]:
        """Every rank's results, in the order of ``agents``, and every rank's agent log records."""
        import torch.distributed as dist

        slots = math.ceil(len(agents) / self.world)
        device = self.fabric.device
        dimension = template.numel()
        buffer_names = sorted(buffer_like)
        buffer_sizes = [buffer_like[n].numel() for n in buffer_names]
        deltas = torch.zeros(slots, dimension, dtype=template.dtype, device=device)
        buffers = torch.zeros(slots, sum(buffer_sizes), dtype=torch.float64, device=device)
        meta: list[dict[str, Any]] = []
        for slot, result in enumerate(local):
            if isinstance(result, AgentFailure):
                meta.append({"agent": result.agent_id, "failure": result.reason})
                continue
            deltas[slot] = result.delta
            if buffer_names:
                buffers[slot] = torch.cat([result.buffers[n].reshape(-1).double() for n in buffer_names])
            meta.append({"agent": result.agent_id, "num_samples": result.num_samples, "metrics": result.metrics})
        all_deltas = self.fabric.all_gather(deltas).reshape(self.world, slots, dimension)
        all_buffers = self.fabric.all_gather(buffers).reshape(self.world, slots, -1)
        all_meta: list[Any] = [None] * self.world
        dist.all_gather_object(all_meta, {"meta": meta, "logs": logs})
        ordered: list[ClientUpdate | AgentFailure] = []
        for position, agent in enumerate(agents):
            rank, slot = position % self.world, position // self.world
            info = all_meta[rank]["meta"][slot]
            if "failure" in info:
                ordered.append(AgentFailure(agent, 0, info["failure"]))
                continue
            restored = {}
            for name, chunk in zip(buffer_names, torch.split(all_buffers[rank, slot], buffer_sizes)):
                restored[name] = chunk.to(buffer_like[name].dtype).view_as(buffer_like[name])
            ordered.append(ClientUpdate(agent, all_deltas[rank, slot].clone(), info["num_samples"],
                                        info["metrics"], restored))
        all_logs = [record for entry in all_meta for record in entry["logs"]]
        return ordered, all_logs

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank (the run folder's path, say)."""
        return self.fabric.broadcast(value, src=0)
