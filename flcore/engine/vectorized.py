"""The ``vectorized`` backend: a round's sampled agents train at once with ``torch.func``.

Every agent's parameters are stacked along a leading dimension; one ``vmap`` of ``grad`` of a
``functional_call`` computes all agents' gradients for a step, and SGD (momentum, Nesterov, weight
decay), Adam or AdamW updates the stack. Agents keep the batch order the sequential backend would
give them (the same per-agent generators), shards of different sizes are padded and masked, and an
agent whose epoch has ended is frozen until the others catch up, so the global model equals the
sequential backend's up to float rounding.

Supported: SGD, Adam and AdamW; models without batch norm, dropout or buffers; aggregators without
local hooks.
Anything else raises :class:`Unsupported`, and the engine falls back to ``sequential`` with a
warning.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
from torch import nn

from flcore.agents import AgentPopulation
from flcore.aggregation import Aggregator, ClientUpdate
from flcore.config import TrainingConfig
from flcore import seeding
from flcore.engine.local import flatten


class Unsupported(Exception):
    """This model, optimizer or aggregator cannot train vectorized."""


def check_supported(model: nn.Module, training: TrainingConfig, aggregator: Aggregator) -> None:
    """Raise :class:`Unsupported` with the reason, if any."""
    if training.optimizer.name not in _OPTIMIZERS:
        raise Unsupported(f"optimizer '{training.optimizer.name}' (vectorized: {', '.join(_OPTIMIZERS)})")
    hooks = ("on_local_start", "on_local_end")
    if aggregator.uses_local_hooks() or any(getattr(type(aggregator), h) is not getattr(Aggregator, h) for h in hooks):
        raise Unsupported(f"aggregator '{type(aggregator).__name__}' hooks into local training")
    if training.grad_clip_norm is not None:
        raise Unsupported("training.grad_clip_norm")
    for module in model.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            raise Unsupported(f"the model has {type(module).__name__} layers")
    if any(True for _ in model.buffers()):
        raise Unsupported("the model has buffers")


class VectorizedTrainer:
    """Trains many agents in lockstep on one device."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 transform: Callable[[torch.Tensor], torch.Tensor], seed: int, device: torch.device) -> None:
        self.model = model
        self.x, self.y = x, y
        self.transform = transform
        self.seed = seed
        self.device = device
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        self.buffers = {n: b.detach() for n, b in model.named_buffers()}
        self.shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]

    def _loss_fn(self, training: TrainingConfig):
        from torch.func import functional_call

        def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor):
            logits = functional_call(self.model, ({**params, **self.frozen}, self.buffers), (x,))
            per_sample = nn.functional.cross_entropy(logits, y, reduction="none",
                                                     label_smoothing=training.label_smoothing)
            total = (per_sample * weight).sum()
            correct = ((logits.argmax(dim=1) == y).float() * weight).sum()
            return total / weight.sum().clamp_min(1.0), (total.detach(), correct.detach())

        return loss

    def train_agents(self, agents: list[int], round_index: int, population: AgentPopulation,
                     global_vector: torch.Tensor, training: TrainingConfig, lr: float,
                     log_epoch: Callable[[dict[str, float]], None] | None = None) -> list[ClientUpdate]:
        """Train ``agents`` from the global weights; return one update per agent, in order."""
        from torch.func import grad, vmap

        k = len(agents)
        opt = training.optimizer
        chunks = torch.split(global_vector, [math.prod(s) for s in self.shapes])
        params = {n: c.view(s).unsqueeze(0).repeat(k, *([1] * len(s))).clone()
                  for n, c, s in zip(self.names, chunks, self.shapes)}
        optimizer = _OPTIMIZERS[opt.name](params, opt, k, self.device)
        shards = [torch.from_numpy(population.shard(a)) for a in agents]
        sizes = torch.tensor([len(s) for s in shards], device=self.device)
        if int(sizes.min()) == 0:
            raise Unsupported("an agent with an empty shard")
        batch = training.batch_size or int(sizes.max())
        generators = [seeding.torch_generator(self.seed, seeding.TRAINING, round_index, a, 1) for a in agents]
        step_grad = vmap(grad(self._loss_fn(training), has_aux=True), in_dims=(0, 0, 0, 0))
        steps_done = torch.zeros(k, dtype=torch.long, device=self.device)
        max_steps = training.max_steps
        losses = torch.zeros(k, dtype=torch.float64, device=self.device)
        for epoch in range(training.epochs):
            steps = [math.ceil(len(s) / batch) for s in shards]
            width = max(steps) * batch
            index = torch.zeros(k, width, dtype=torch.long)
            weight = torch.zeros(k, width)
            for i, (shard, gen) in enumerate(zip(shards, generators)):
                order = shard[torch.randperm(len(shard), generator=gen)]
                index[i, : len(order)] = order
                weight[i, : len(order)] = 1.0
            index, weight = index.to(self.device), weight.to(self.device)
            loss_sum = torch.zeros(k, dtype=torch.float64, device=self.device)
            correct = torch.zeros(k, dtype=torch.float64, device=self.device)
            for s in range(max(steps)):
                idx, w = index[:, s * batch:(s + 1) * batch], weight[:, s * batch:(s + 1) * batch]
                active = w.sum(dim=1) > 0
                if max_steps is not None:
                    active &= steps_done < max_steps
                if not bool(active.any()):
                    break
                w = w * active.unsqueeze(1)
                flat = self.transform(self.x[idx.reshape(-1)])
                xb = flat.reshape(k, idx.shape[1], *flat.shape[1:])
                yb = self.y[idx]
                grads, (total, right) = step_grad(params, xb, yb, w)
                loss_sum += total.double()
                correct += right.double()
                optimizer.step(params, grads, active, lr)
                steps_done += active.long()
            seen = weight.sum(dim=1).double().clamp_min(1)
            losses = loss_sum / seen
            if log_epoch is not None:
                for i, agent in enumerate(agents):
                    log_epoch({"agent": agent, "round": round_index, "epoch": epoch, "loss": float(losses[i]),
                               "acc": float(correct[i] / seen[i]), "samples": int(sizes[i])})
        updates = []
        for i, agent in enumerate(agents):
            local = flatten([params[n][i] for n in self.names])
            updates.append(ClientUpdate(agent, local - global_vector, int(sizes[i]), {"loss": float(losses[i])}))
        return updates


class _StackedSGD:
    """torch.optim.SGD's update for every agent at once, applied only where ``active``."""

    def __init__(self, params: dict[str, torch.Tensor], opt: Any, k: int, device: torch.device) -> None:
        self.opt = opt
        self.momentum = {n: torch.zeros_like(p) for n, p in params.items()} if opt.momentum else {}
        self.started = torch.zeros(k, dtype=torch.bool, device=device)

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], active: torch.Tensor,
             lr: float) -> None:
        opt = self.opt
        for name, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            mask = active.view(shape).to(p.dtype)
            g = grads[name]
            if opt.weight_decay:
                g = g + opt.weight_decay * p
            if opt.momentum:
                buf = self.momentum[name]
                first = (~self.started).view(shape).to(p.dtype)
                new_buf = first * g + (1 - first) * (opt.momentum * buf + g)
                buf.copy_(mask * new_buf + (1 - mask) * buf)
                g = g + opt.momentum * buf if opt.nesterov else buf
            p.sub_(lr * mask * g)
        self.started |= active


class _StackedAdam:
    """torch.optim.Adam's (or AdamW's, with decoupled weight decay) update, per agent, where ``active``."""

    eps = 1e-8

    def __init__(self, params: dict[str, torch.Tensor], opt: Any, k: int, device: torch.device) -> None:
        self.opt = opt
        self.decoupled = opt.name == "adamw"
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        self.steps = torch.zeros(k, device=device)

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], active: torch.Tensor,
             lr: float) -> None:
        beta1, beta2 = self.opt.betas
        decay = self.opt.weight_decay
        self.steps += active.to(self.steps.dtype)
        steps = self.steps.clamp_min(1)
        for name, p in params.items():
            shape = (-1,) + (1,) * (p.dim() - 1)
            mask = active.view(shape).to(p.dtype)
            g = grads[name]
            if decay and self.decoupled:
                p.mul_(1 - lr * decay * mask)
            elif decay:
                g = g + decay * p
            m, v = self.m[name], self.v[name]
            m.copy_(mask * (beta1 * m + (1 - beta1) * g) + (1 - mask) * m)
            v.copy_(mask * (beta2 * v + (1 - beta2) * g * g) + (1 - mask) * v)
            correction1 = (1 - beta1 ** steps).view(shape).to(p.dtype)
            correction2 = (1 - beta2 ** steps).view(shape).to(p.dtype)
            denominator = v.sqrt() / correction2.sqrt() + self.eps
            p.sub_(mask * (lr / correction1) * m / denominator)


_OPTIMIZERS = {"sgd": _StackedSGD, "adam": _StackedAdam, "adamw": _StackedAdam}
