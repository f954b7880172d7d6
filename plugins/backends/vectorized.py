"""The ``vectorized`` backend: a round's agents train at once with ``torch.func``.

Every agent's parameters are stacked along a leading dimension; one ``vmap`` of ``grad`` of a
``functional_call`` computes all agents' gradients for a step, and SGD (momentum, Nesterov, weight
decay), Adam or AdamW updates the stack. Agents keep the batch order the sequential backend would
give them (the same per-agent generators), shards of different sizes are padded and masked, and an
agent whose epoch or step budget has ended is frozen until the others finish, so each agent's
instruction (epochs, step budget, learning-rate scale) is honoured and the global model equals the
sequential backend's up to float rounding.

Agent-side plugins that declare ``vectorizable`` run here: their loss terms inside the ``vmap``,
their other steps once per agent. Anything else (another optimizer, gradient clipping, batch norm,
dropout, buffers, a plugin that is not vectorizable) is named by :meth:`VectorizedBackend.check`;
the run then falls back to ``sequential`` with a warning, or exits with code 2 when ``strict``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from flcore_plugins.backends.sequential import SequentialBackend
from pydantic import Field
from torch import nn

from flcore import seeding
from flcore.backend import Backend, Deliver, TrainingSetup, Unsupported
from flcore.engine.local import diverged, finish_update, non_finite, plugins_overriding
from flcore.engine.weights import flatten
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, AgentResult, AgentState, Instruction, RoundContext, split_like
from flcore.training import per_sample_loss


class VectorizedParams(ComponentParams):
    strict: bool = Field(False, description="Exit with code 2, instead of falling back to sequential with a "
                         "warning, when the experiment cannot be vectorized.")


class VectorizedBackend(Backend):
    """Trains a round's agents in lockstep on one device."""

    Params = VectorizedParams

    def check(self, setup: TrainingSetup) -> None:
        training = setup.training
        if training.optimizer.name not in _OPTIMIZERS:
            raise Unsupported(f"optimizer '{training.optimizer.name}' (vectorized: {', '.join(_OPTIMIZERS)})")
        if training.grad_clip_norm is not None:
            raise Unsupported("training.grad_clip_norm")
        if training.augment.crop_padding or training.augment.horizontal_flip:
            raise Unsupported("training.augment")
        for plugin in setup.agent_plugins:
            if not plugin.vectorizable:
                raise Unsupported(f"agent-side plugin '{plugin.component_name}' does not declare vectorizable")
        for plugin in plugins_overriding(list(setup.agent_plugins), "before_step"):
            raise Unsupported(f"agent-side plugin '{plugin.component_name}' edits gradients in before_step")
        for module in setup.model.modules():
            if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
                raise Unsupported(f"the model has {type(module).__name__} layers")
        if any(True for _ in setup.model.buffers()):
            raise Unsupported("the model has buffers")

    def fallback(self) -> Backend | None:
        return None if self.params.strict else SequentialBackend(self.params)

    def prepare(self, setup: TrainingSetup) -> None:
        self.setup = setup
        model = setup.model
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.shapes = [p.shape for n, p in model.named_parameters() if p.requires_grad]
        self.frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
        plugins = list(setup.agent_plugins)
        self.starting = plugins_overriding(plugins, "on_agent_start")
        self.batching = plugins_overriding(plugins, "transform_batch")
        self.penalizing = plugins_overriding(plugins, "loss_term")
        self.finishing = plugins_overriding(plugins, "on_update")

    def _loss_fn(self, global_params: list[torch.Tensor]) -> Callable[..., Any]:
        from torch.func import functional_call

        model, training, names, penalizing = self.setup.model, self.setup.training, self.names, self.penalizing

        def loss(params: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor):
            logits = functional_call(model, {**params, **self.frozen}, (x,))
            total = (per_sample_loss(logits, y, training) * weight).sum()
            correct = ((logits.argmax(dim=1) == y).float() * weight).sum()
            objective = total / weight.sum().clamp_min(1.0)
            for plugin in penalizing:
                term = plugin.loss_term(None, [params[n] for n in names], global_params)
                if term is not None:
                    objective = objective + term
            return objective, (total.detach(), correct.detach())

        return loss

    def train(self, context: RoundContext, instructions: Sequence[Instruction], deliver: Deliver) -> None:
        population = self.setup.population
        results: dict[int, AgentResult] = {}
        training: list[Instruction] = []
        for instruction in instructions:
            n = int(population.num_samples[instruction.agent_id])
            if not instruction.participate:
                results[instruction.agent_id] = AgentResult.dropped(instruction.agent_id, "instructed not to take part", n)
            elif n == 0:
                results[instruction.agent_id] = AgentResult.failed(instruction.agent_id, "its shard is empty")
            else:
                training.append(instruction)
        if training:
            for result in self._train_lockstep(context, training):
                results[result.agent_id] = result
        for instruction in instructions:
            deliver(results[instruction.agent_id])

    def _train_lockstep(self, context: RoundContext, instructions: list[Instruction]) -> list[AgentResult]:
        """Train agents with non-empty shards together; one result per instruction, in order."""
        from torch.func import grad, vmap

        setup, device = self.setup, self.setup.fabric.device
        x, y, transform = setup.x, setup.y, setup.transform
        k = len(instructions)
        agents = [i.agent_id for i in instructions]
        global_vector = context.global_vector
        chunks = torch.split(global_vector, [math.prod(s) for s in self.shapes])
        params = {n: c.view(s).unsqueeze(0).repeat(k, *([1] * len(s))).clone()
                  for n, c, s in zip(self.names, chunks, self.shapes)}
        global_params = [c.view(s) for c, s in zip(chunks, self.shapes)]
        lr = torch.tensor([context.lr * i.lr_scale for i in instructions], device=device)
        optimizer = _OPTIMIZERS[setup.training.optimizer.name](params, setup.training.optimizer, k, device)
        shards = [torch.from_numpy(setup.population.shard(a)) for a in agents]
        sizes = [len(s) for s in shards]
        contexts = [AgentContext(a, context.index, inst, [params[n][i] for n in self.names],
                                 split_like(global_vector, global_params), context.lr * inst.lr_scale, sizes[i],
                                 AgentState(setup.population, a))
                    for i, (a, inst) in enumerate(zip(agents, instructions))]
        for agent in contexts:
            for plugin in self.starting:
                plugin.on_agent_start(agent)
        batch = setup.training.batch_size or max(sizes)
        generators = [seeding.torch_generator(setup.seed, seeding.TRAINING, context.index, a, 1) for a in agents]
        step_grad = vmap(grad(self._loss_fn(global_params), has_aux=True), in_dims=(0, 0, 0, 0))
        epochs = torch.tensor([i.epochs for i in instructions], device=device)
        budget = torch.tensor([i.max_steps if i.max_steps is not None else 2**62 for i in instructions], device=device)
        steps_done = torch.zeros(k, dtype=torch.long, device=device)
        histories: list[list[dict[str, float]]] = [[] for _ in agents]
        losses = [float("nan")] * k
        for epoch in range(int(epochs.max())):
            running = (epoch < epochs) & (steps_done < budget)  # who starts this epoch, as sequential would
            if not bool(running.any()):
                break
            width = max(math.ceil(s / batch) for s in sizes) * batch
            index = torch.zeros(k, width, dtype=torch.long)
            weight = torch.zeros(k, width)
            for i, (shard, gen) in enumerate(zip(shards, generators)):
                if bool(running[i]):
                    index[i, : sizes[i]] = shard[torch.randperm(sizes[i], generator=gen)]
                    weight[i, : sizes[i]] = 1.0
            index, weight = index.to(device), weight.to(device)
            loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
            correct = torch.zeros(k, dtype=torch.float64, device=device)
            seen = torch.zeros(k, dtype=torch.float64, device=device)
            for s in range(width // batch):
                idx, w = index[:, s * batch:(s + 1) * batch], weight[:, s * batch:(s + 1) * batch]
                active = (w.sum(dim=1) > 0) & running & (steps_done < budget)
                if not bool(active.any()):
                    break
                w = w * active.unsqueeze(1)
                flat = transform(x[idx.reshape(-1)])
                xb = flat.reshape(k, idx.shape[1], *flat.shape[1:])
                yb = y[idx]
                if self.batching:
                    xb, yb = self._transform_batches(contexts, xb, yb)
                grads, (total, right) = step_grad(params, xb, yb, w)
                loss_sum += total.double()
                correct += right.double()
                seen += w.sum(dim=1).double()
                optimizer.step(params, grads, active, lr)
                steps_done += active.long()
            for i, agent in enumerate(agents):
                if bool(running[i]):
                    losses[i] = float(loss_sum[i] / seen[i].clamp_min(1))
                    histories[i].append({"agent": agent, "round": context.index, "epoch": epoch, "loss": losses[i],
                                         "acc": float(correct[i] / seen[i].clamp_min(1)), "samples": int(seen[i])})
        results = []
        for i, agent in enumerate(agents):
            delta = flatten([params[n][i] for n in self.names]) - global_vector
            if diverged(losses[i], delta):
                results.append(non_finite(agent, losses[i], sizes[i]))
                continue
            contexts[i].steps = int(steps_done[i])
            result = AgentResult(agent, delta, sizes[i], {"loss": losses[i]}, steps=int(steps_done[i]),
                                 epochs=len(histories[i]), history=histories[i])
            results.append(finish_update(self.finishing, contexts[i], result))
        return results

    def _transform_batches(self, contexts: list[AgentContext], xb: torch.Tensor, yb: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each agent's plugins' ``transform_batch`` on its slice of the stacked batch."""
        xs, ys = list(xb.unbind(0)), list(yb.unbind(0))
        for i, agent in enumerate(contexts):
            for plugin in self.batching:
                xs[i], ys[i] = plugin.transform_batch(agent, xs[i], ys[i])
        return torch.stack(xs), torch.stack(ys)


def _per_agent(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A ``(k,)`` vector shaped to broadcast against a ``(k, ...)`` stack."""
    return values.view((-1,) + (1,) * (like.dim() - 1)).to(like.dtype)


class _StackedSGD:
    """torch.optim.SGD's update for every agent at once, applied only where ``active``."""

    def __init__(self, params: dict[str, torch.Tensor], opt: Any, k: int, device: torch.device) -> None:
        self.opt = opt
        self.momentum = {n: torch.zeros_like(p) for n, p in params.items()} if opt.momentum else {}
        self.started = torch.zeros(k, dtype=torch.bool, device=device)

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor], active: torch.Tensor,
             lr: torch.Tensor) -> None:
        opt = self.opt
        for name, p in params.items():
            mask = _per_agent(active, p)
            g = grads[name]
            if opt.weight_decay:
                g = g + opt.weight_decay * p
            if opt.momentum:
                buf = self.momentum[name]
                first = _per_agent(~self.started, p)
                new_buf = first * g + (1 - first) * (opt.momentum * buf + g)
                buf.copy_(mask * new_buf + (1 - mask) * buf)
                g = g + opt.momentum * buf if opt.nesterov else buf
            p.sub_(_per_agent(lr, p) * mask * g)
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
             lr: torch.Tensor) -> None:
        beta1, beta2 = self.opt.betas
        decay = self.opt.weight_decay
        self.steps += active.to(self.steps.dtype)
        steps = self.steps.clamp_min(1)
        for name, p in params.items():
            mask = _per_agent(active, p)
            rate = _per_agent(lr, p)
            g = grads[name]
            if decay and self.decoupled:
                p.mul_(1 - rate * decay * mask)
            elif decay:
                g = g + decay * p
            m, v = self.m[name], self.v[name]
            m.copy_(mask * (beta1 * m + (1 - beta1) * g) + (1 - mask) * m)
            v.copy_(mask * (beta2 * v + (1 - beta2) * g * g) + (1 - mask) * v)
            correction1 = _per_agent(1 - beta1 ** steps, p)
            correction2 = _per_agent(1 - beta2 ** steps, p)
            denominator = v.sqrt() / correction2.sqrt() + self.eps
            p.sub_(mask * (rate / correction1) * m / denominator)


_OPTIMIZERS = {"sgd": _StackedSGD, "adam": _StackedAdam, "adamw": _StackedAdam}
