"""Local training of one agent on one reused model.

The model is set up once per process; each agent loads the global weights into it, trains on batches
sliced from the dataset's tensors, and returns its update. No Trainer, no model copy, no DataLoader
per agent: that fixed cost is what made TorchFL slow with many small clients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch

from flcore.agents import AgentPopulation
from flcore.aggregation import Aggregator, ClientUpdate, LocalContext
from flcore.config import TrainingConfig
from flcore.engine import seeding
from flcore.training import build_optimizer, compute_loss


def flatten(tensors: list[torch.Tensor]) -> torch.Tensor:
    """One vector holding every tensor's values (a copy)."""
    return torch.cat([t.detach().reshape(-1) for t in tensors])


@torch.no_grad()
def load_vector(tensors: list[torch.Tensor], vector: torch.Tensor) -> None:
    """Copy ``vector``'s values into ``tensors`` in place (never aliasing it)."""
    offset = 0
    for t in tensors:
        n = t.numel()
        t.copy_(vector[offset : offset + n].view_as(t))
        offset += n


@dataclass
class AgentFailure(Exception):
    """An agent whose local training raised or produced non-finite weights."""

    agent_id: int
    round_index: int
    reason: str
    cause: BaseException | None = None  # the original error, kept for --debug tracebacks

    def __str__(self) -> str:
        return f"agent {self.agent_id} failed in round {self.round_index}: {self.reason}"

    @classmethod
    def non_finite(cls, agent_id: int, round_index: int, loss: float) -> AgentFailure:
        """The failure of an agent whose loss or weights are NaN or infinite."""
        return cls(agent_id, round_index, f"local training produced non-finite weights (loss {loss})")


class LocalTrainer:
    """Trains agents one after another on a single model and device."""

    def __init__(
        self,
        fabric: Any,
        model: torch.nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor],
        seed: int,
    ) -> None:
        self.fabric = fabric
        self.module = model
        self.model = fabric.setup_module(model)
        self.device = fabric.device
        self.x, self.y = x, y
        self.transform = transform
        self.seed = seed
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.buffers = {name: b for name, b in model.named_buffers()}

    # ------------------------------------------------------------------------------ state
    def global_vector(self) -> torch.Tensor:
        """The model's trainable parameters as one vector."""
        return flatten(self.params)

    def buffer_state(self) -> dict[str, torch.Tensor]:
        """A copy of the model's buffers (BatchNorm statistics and counters)."""
        return {name: b.detach().clone() for name, b in self.buffers.items()}

    @torch.no_grad()
    def load(self, vector: torch.Tensor, buffers: dict[str, torch.Tensor]) -> None:
        """Put global weights and buffers into the model."""
        load_vector(self.params, vector)
        for name, value in buffers.items():
            self.buffers[name].copy_(value)

    # ------------------------------------------------------------------------------ training
    def train_agent(
        self,
        agent_id: int,
        round_index: int,
        population: AgentPopulation,
        global_vector: torch.Tensor,
        global_buffers: dict[str, torch.Tensor],
        training: TrainingConfig,
        lr: float,
        aggregator: Aggregator,
        log_epoch: Callable[[dict[str, float]], None] | None = None,
    ) -> ClientUpdate:
        """Train one agent from the global weights and return its update."""
        self.load(global_vector, global_buffers)
        shard = torch.from_numpy(population.shard(agent_id))
        n = len(shard)
        if n == 0:
            raise AgentFailure(agent_id, round_index, "its shard is empty")
        seeding.seed_torch(self.seed, seeding.TRAINING, round_index, agent_id)
        order_gen = seeding.torch_generator(self.seed, seeding.TRAINING, round_index, agent_id, 1)
        optimizer = build_optimizer(training.optimizer, self.params)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer = self.fabric.setup_optimizers(optimizer)
        context = LocalContext(agent_id, round_index, population, self.params,
                               _split_like(global_vector, self.params), lr)
        hooks = aggregator.uses_local_hooks()
        aggregator.on_local_start(context)
        batch_size = training.batch_size or n
        self.model.train()
        loss_value = float("nan")
        for epoch in range(training.epochs):
            order = shard[torch.randperm(n, generator=order_gen)]
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            seen = 0
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                xb = self.transform(self.x[idx].to(self.device, non_blocking=True))
                yb = self.y[idx].to(self.device, non_blocking=True)
                logits = self.model(xb)
                loss = compute_loss(logits, yb, training)
                objective = loss
                if hooks:
                    penalty = aggregator.local_penalty(context)
                    if penalty is not None:
                        objective = loss + penalty
                optimizer.zero_grad(set_to_none=True)
                self.fabric.backward(objective)
                if hooks:
                    aggregator.on_before_step(context)
                if training.grad_clip_norm is not None:
                    self.fabric.clip_gradients(self.model, optimizer, max_norm=training.grad_clip_norm)
                optimizer.step()
                context.steps += 1
                loss_sum += loss.detach() * len(idx)
                correct += (logits.detach().argmax(dim=1) == yb).sum()
                seen += len(idx)
                if training.max_steps is not None and context.steps >= training.max_steps:
                    break
            loss_value = float(loss_sum) / seen
            if log_epoch is not None:
                log_epoch({"agent": agent_id, "round": round_index, "epoch": epoch,
                           "loss": loss_value, "acc": float(correct) / seen, "samples": seen})
            if training.max_steps is not None and context.steps >= training.max_steps:
                break
        delta = flatten(self.params) - global_vector
        if diverged(loss_value, delta):
            raise AgentFailure.non_finite(agent_id, round_index, loss_value)
        update = ClientUpdate(agent_id, delta, n, {"loss": loss_value}, self.buffer_state())
        aggregator.on_local_end(context, update)
        return update


def diverged(loss: float, delta: torch.Tensor) -> bool:
    """Whether a loss or an update is NaN or infinite. A sum is non-finite if any entry is (or if
    the weights are astronomically large): one reduction instead of a boolean copy of the update."""
    return not math.isfinite(loss) or not math.isfinite(float(delta.sum()))


def _split_like(vector: torch.Tensor, tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    return [chunk.view_as(t) for chunk, t in zip(torch.split(vector, [t.numel() for t in tensors]), tensors)]
