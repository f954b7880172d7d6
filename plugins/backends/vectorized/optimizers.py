"""Every built-in optimizer's update, and gradient clipping, for stacked per-agent tensors.

Each class applies ``torch.optim``'s single-tensor update rule (the one it uses on a CPU) to
parameters stacked along a leading agent dimension, only where ``active``: an agent that has
finished its epochs or step budget keeps its parameters and optimizer state. Hyperparameters that
:func:`flcore.training.build_optimizer` leaves at torch's defaults (RMSprop's ``alpha`` and ``eps``,
Adagrad's ``eps``) are read from torch, so the two stay the same optimizer.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch

Stack = dict[str, torch.Tensor]


def _per_agent(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(k,)`` vector shaped to broadcast against a ``(k, ...)`` stack."""
    return values.view((-1,) + (1,) * (like.dim() - 1))


def _torch_default(optimizer: type, name: str) -> Any:
    return inspect.signature(optimizer.__init__).parameters[name].default


class StackedOptimizer:
    """Base: ``step(params, grads, active, lr)`` updates the stacks in place; ``lr`` is ``(k,)``."""

    def __init__(self, params: Stack, opt: Any, k: int, device: torch.device) -> None:
        self.opt = opt

    def state_bytes(self) -> int:
        """Bytes of the optimizer state (the memory probe's count on devices without a peak counter)."""
        total = 0
        for value in vars(self).values():
            tensors = value.values() if isinstance(value, dict) else [value]
            total += sum(t.numel() * t.element_size() for t in tensors if isinstance(t, torch.Tensor))
        return total

    def _decayed(self, g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        return g + self.opt.weight_decay * p if self.opt.weight_decay else g


class StackedSGD(StackedOptimizer):
    """torch.optim.SGD: momentum (the first step's buffer is the gradient), Nesterov, weight decay."""

    def __init__(self, params: Stack, opt: Any, k: int, device: torch.device) -> None:
        super().__init__(params, opt, k, device)
        self.momentum = {n: torch.zeros_like(p) for n, p in params.items()} if opt.momentum else {}
        self.started = torch.zeros(k, dtype=torch.bool, device=device)

    @torch.no_grad()
    def step(self, params: Stack, grads: Stack, active: torch.Tensor, lr: torch.Tensor) -> None:
        opt = self.opt
        for name, p in params.items():
            mask, g = _per_agent(active, p), self._decayed(grads[name], p)
            if opt.momentum:
                buf = self.momentum[name]
                new_buf = torch.where(_per_agent(self.started, p), opt.momentum * buf + g, g)
                buf.copy_(torch.where(mask, new_buf, buf))
                g = g + opt.momentum * buf if opt.nesterov else buf
            p.copy_(torch.where(mask, p - _per_agent(lr, p).to(p.dtype) * g, p))
        self.started |= active


class StackedAdam(StackedOptimizer):
    """torch.optim.Adam, or AdamW (decoupled weight decay); bias corrections in float64 as torch's."""

    def __init__(self, params: Stack, opt: Any, k: int, device: torch.device) -> None:
        super().__init__(params, opt, k, device)
        self.decoupled = opt.name == "adamw"
        self.eps = _torch_default(torch.optim.Adam, "eps")
        self.m = {n: torch.zeros_like(p) for n, p in params.items()}
        self.v = {n: torch.zeros_like(p) for n, p in params.items()}
        self.steps = torch.zeros(k, dtype=torch.float64, device=device)

    @torch.no_grad()
    def step(self, params: Stack, grads: Stack, active: torch.Tensor, lr: torch.Tensor) -> None:
        beta1, beta2 = self.opt.betas
        decay = self.opt.weight_decay
        self.steps += active.to(self.steps.dtype)
        steps = self.steps.clamp_min(1)
        step_size = lr.double() / (1 - beta1**steps)
        correction2_sqrt = (1 - beta2**steps).sqrt()
        for name, p in params.items():
            mask, g = _per_agent(active, p), grads[name]
            if decay and self.decoupled:
                p.copy_(torch.where(mask, p * _per_agent(1 - lr.double() * decay, p).to(p.dtype), p))
            elif decay:
                g = g + decay * p
            m, v = self.m[name], self.v[name]
            m.copy_(torch.where(mask, m.lerp(g, 1 - beta1), m))
            v.copy_(torch.where(mask, torch.addcmul(v * beta2, g, g, value=1 - beta2), v))
            denominator = v.sqrt() / _per_agent(correction2_sqrt, p).to(p.dtype) + self.eps
            p.copy_(torch.where(mask, p - _per_agent(step_size, p).to(p.dtype) * (m / denominator), p))


class StackedRMSprop(StackedOptimizer):
    """torch.optim.RMSprop (not centered), with momentum and weight decay."""

    def __init__(self, params: Stack, opt: Any, k: int, device: torch.device) -> None:
        super().__init__(params, opt, k, device)
        self.alpha = _torch_default(torch.optim.RMSprop, "alpha")
        self.eps = _torch_default(torch.optim.RMSprop, "eps")
        self.square = {n: torch.zeros_like(p) for n, p in params.items()}
        self.momentum = {n: torch.zeros_like(p) for n, p in params.items()} if opt.momentum else {}

    @torch.no_grad()
    def step(self, params: Stack, grads: Stack, active: torch.Tensor, lr: torch.Tensor) -> None:
        momentum = self.opt.momentum
        for name, p in params.items():
            mask, g = _per_agent(active, p), self._decayed(grads[name], p)
            square = self.square[name]
            square.copy_(torch.where(mask, torch.addcmul(square * self.alpha, g, g, value=1 - self.alpha), square))
            average = square.sqrt() + self.eps
            rate = _per_agent(lr, p).to(p.dtype)
            if momentum:
                buf = self.momentum[name]
                buf.copy_(torch.where(mask, buf * momentum + g / average, buf))
                p.copy_(torch.where(mask, p - rate * buf, p))
            else:
                p.copy_(torch.where(mask, p - rate * (g / average), p))


class StackedAdagrad(StackedOptimizer):
    """torch.optim.Adagrad with no learning-rate decay and a zero initial accumulator, as built."""

    def __init__(self, params: Stack, opt: Any, k: int, device: torch.device) -> None:
        super().__init__(params, opt, k, device)
        self.eps = _torch_default(torch.optim.Adagrad, "eps")
        self.sum = {n: torch.zeros_like(p) for n, p in params.items()}

    @torch.no_grad()
    def step(self, params: Stack, grads: Stack, active: torch.Tensor, lr: torch.Tensor) -> None:
        for name, p in params.items():
            mask, g = _per_agent(active, p), self._decayed(grads[name], p)
            total = self.sum[name]
            total.copy_(torch.where(mask, torch.addcmul(total, g, g), total))
            p.copy_(torch.where(mask, p - _per_agent(lr, p).to(p.dtype) * (g / (total.sqrt() + self.eps)), p))


OPTIMIZERS: dict[str, type[StackedOptimizer]] = {"sgd": StackedSGD, "adam": StackedAdam, "adamw": StackedAdam,
                                                 "rmsprop": StackedRMSprop, "adagrad": StackedAdagrad}


@torch.no_grad()
def clip_per_agent(grads: Stack, max_norm: float) -> torch.Tensor:
    """Scale each agent's gradients to a total L2 norm of at most ``max_norm``, as
    ``torch.nn.utils.clip_grad_norm_`` (which Fabric's ``clip_gradients`` calls) does for one
    agent; returns which agents' norm was non-finite (the sequential trainer fails those)."""
    norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads.values()], dim=1)
    total = torch.linalg.vector_norm(norms, dim=1)
    scale = (max_norm / (total + 1e-6)).clamp(max=1.0)
    for g in grads.values():
        g.mul_(_per_agent(scale, g).to(g.dtype))
    return ~torch.isfinite(total)
