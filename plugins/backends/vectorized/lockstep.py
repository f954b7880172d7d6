"""Training a chunk of agents in lockstep: one ``vmap(grad(...))`` per step for all of them.

Each agent keeps what the sequential trainer would give it: its batch order (the same seeded
generator), its dropout masks (a generator seeded as torch's global one is for it), its BatchNorm
statistics, its epochs, step budget and learning rate. Shards of different sizes are padded to a
common width with sample weight 0, and an agent whose epochs or step budget have ended is frozen
(``active`` false) until the others finish.

A plugin that draws the batches (``epoch_batches``, DP-SGD's Poisson samples) is asked for each
agent's batches of an epoch, from that agent's batch-order generator; each step's batches are
padded to the largest of them. A plugin that computes the gradients (``compute_gradients``) gets,
in its ``vectorized_gradients``, each agent's per-sample gradients from a second ``vmap`` over the
agent's samples inside the one over agents, and combines them (DP-SGD: clip, masked sum, noise
from the agent's own generator, division by its expected batch size); the loss terms' gradients
are added after it, as the sequential trainer adds them.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch
from flcore_plugins.backends.vectorized.functional import FunctionalModel
from flcore_plugins.backends.vectorized.memory import cuda_step_bytes, saved_for_backward_bytes
from flcore_plugins.backends.vectorized.optimizers import OPTIMIZERS, clip_per_agent

from flcore import seeding
from flcore.augment import augmentation
from flcore.backend import TrainingSetup
from flcore.engine.local import diverged, finish_update, non_finite, only_one, plugins_overriding
from flcore.engine.weights import flatten
from flcore.protocol import AgentContext, AgentResult, AgentState, Instruction, RoundContext, split_like
from flcore.training import per_sample_loss

Stack = dict[str, torch.Tensor]

SINGLE_VALUE = "a BatchNorm layer got one value per channel in training (a batch of one sample), as torch refuses"
NONFINITE_NORM = ("the total norm of its gradients is non-finite, so they cannot be clipped "
                  "(training.grad_clip_norm)")


class Lockstep:
    """Trains agents of one round together on the setup's device."""

    def __init__(self, setup: TrainingSetup, functional: FunctionalModel) -> None:
        self.setup, self.functional = setup, functional
        self.device = setup.fabric.device
        self.names = functional.names
        self.shapes = [p.shape for n, p in setup.model.named_parameters() if p.requires_grad]
        self.model_buffers = dict(setup.model.named_buffers())
        self.optimizer = OPTIMIZERS[setup.training.optimizer.name]
        self.augment = augmentation(setup.training.augment)
        plugins = list(setup.agent_plugins)
        self.starting = plugins_overriding(plugins, "on_agent_start")
        self.batching = plugins_overriding(plugins, "transform_batch")
        self.penalizing = plugins_overriding(plugins, "loss_term")
        self.finishing = plugins_overriding(plugins, "on_update")
        self.batches = only_one(plugins_overriding(plugins, "epoch_batches"), "epoch_batches")
        self.gradient = only_one(plugins_overriding(plugins, "compute_gradients"), "compute_gradients")

    # ------------------------------------------------------------------------ the step
    def _loss(self, global_params: list[torch.Tensor]) -> Callable[..., Any]:
        """One agent's objective (its weighted mean loss plus the plugins' terms) and, as aux, its
        loss sum, correct count, updated BatchNorm buffers and single-value flag."""
        training, names, penalizing, functional = self.setup.training, self.names, self.penalizing, self.functional

        def loss(params: Stack, buffers: Stack, noise: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor,
                 weight: torch.Tensor) -> tuple[torch.Tensor, tuple[Any, ...]]:
            logits, new_buffers, single = functional.forward(params, buffers, noise, weight, x)
            total = (per_sample_loss(logits, y, training) * weight).sum()
            correct = ((logits.argmax(dim=1) == y).to(weight.dtype) * weight).sum()
            objective = total / weight.sum().clamp_min(1.0)
            for plugin in penalizing:
                term = plugin.loss_term(None, [params[n] for n in names], global_params)
                if term is not None:
                    objective = objective + term
            return objective, (total.detach(), correct.detach(), new_buffers, single)

        return loss

    def _step_function(self, global_params: list[torch.Tensor]) -> Callable[..., Any]:
        from torch.func import grad, vmap

        return vmap(grad(self._loss(global_params), has_aux=True), randomness="error")

    def _sample_step_function(self) -> Callable[..., Any]:
        """``(params, buffers, noise, x, y) -> (grads, (losses, right))`` for stacked agents: each
        sample's gradient of its own loss, ``(k, b, *shape)``, with its loss and whether it was
        classified right (a ``vmap`` over each agent's samples inside the one over agents)."""
        from torch.func import grad, vmap

        training, functional = self.setup.training, self.functional

        def one(params: Stack, buffers: Stack, noise: list[torch.Tensor], x: torch.Tensor, y: torch.Tensor
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
            weight = torch.ones(1, device=x.device)
            logits, _, _ = functional.forward(params, buffers, [m.unsqueeze(0) for m in noise], weight, x.unsqueeze(0))
            value = per_sample_loss(logits, y.unsqueeze(0), training).sum()
            return value, (value.detach(), (logits.argmax(dim=1) == y).sum().to(value.dtype))

        per_sample = vmap(grad(one, has_aux=True), in_dims=(None, None, 0, 0, 0), randomness="error")
        return vmap(per_sample, randomness="error")

    def _terms_function(self, global_params: list[torch.Tensor]) -> Callable[[Stack], Stack] | None:
        """The gradients of the plugins' loss terms alone, for stacked agents (``None``: no terms)."""
        from torch.func import grad, vmap

        if not self.penalizing:
            return None
        names, penalizing = self.names, self.penalizing

        def terms(params: Stack) -> torch.Tensor:
            total = torch.zeros((), device=global_params[0].device)
            for plugin in penalizing:
                term = plugin.loss_term(None, [params[n] for n in names], global_params)
                if term is not None:
                    total = total + term
            return total

        return vmap(grad(terms), randomness="error")

    def _plugin_gradients(self, sample_step: Callable[..., Any], terms: Callable[[Stack], Stack] | None,
                          contexts: list[AgentContext], streams: list[torch.Generator], params: Stack, buffers: Stack,
                          noise: list[torch.Tensor], xb: torch.Tensor, yb: torch.Tensor, w: torch.Tensor,
                          active: torch.Tensor) -> tuple[Stack, torch.Tensor, torch.Tensor]:
        """The gradient plugin's combination of the per-sample gradients (and the loss terms'
        gradients), with each agent's weighted loss sum and correct count."""
        sample_grads, (losses, right) = sample_step(params, buffers, noise, xb, yb)
        generators = [g if on else None for g, on in zip(streams, active.tolist())]
        grads = self.gradient.vectorized_gradients(contexts, sample_grads, w, generators)
        del sample_grads
        if terms is not None:
            extra = terms(params)
            grads = {n: g + extra[n] for n, g in grads.items()}
        return grads, (losses * w).sum(dim=1), (right * w).sum(dim=1)

    def _split(self, vector: torch.Tensor) -> list[torch.Tensor]:
        """Views of a flat vector shaped like the trainable parameters."""
        return [c.view(s) for c, s in zip(torch.split(vector, [math.prod(s) for s in self.shapes]), self.shapes)]

    def _stacks(self, global_vector: torch.Tensor, global_buffers: Stack, k: int) -> tuple[Stack, Stack]:
        """``k`` copies of the global parameters and buffers, stacked along a new first dimension."""
        chunks = torch.split(global_vector, [math.prod(s) for s in self.shapes])
        params = {n: c.view(s).unsqueeze(0).repeat(k, *([1] * len(s))) for n, c, s in zip(self.names, chunks,
                                                                                          self.shapes)}
        buffers = {n: global_buffers.get(n, b).unsqueeze(0).repeat(k, *([1] * b.dim()))
                   for n, b in self.model_buffers.items()}
        return params, buffers

    def check_vmap(self, sample: torch.Tensor) -> None:
        """One agent's forward pass under ``vmap`` on ``sample`` (raises what the model cannot do)."""
        from torch.func import vmap

        params, buffers = self._stacks(flatten([p for p in self.setup.model.parameters() if p.requires_grad]),
                                       {}, 1)
        weight = torch.ones(1, len(sample), device=sample.device)
        noise = self.functional.draw_noise([torch.Generator(device=sample.device)], [len(sample)], len(sample), sample.device)
        with torch.no_grad():
            vmap(self.functional.forward, randomness="error")(params, buffers, noise, weight, sample.unsqueeze(0))

    # ------------------------------------------------------------------------ memory
    def agent_bytes(self, global_vector: torch.Tensor, batch: int) -> int:
        """The memory one agent's step takes at ``batch`` samples (see :mod:`.memory`)."""
        inputs = self._probe_inputs(batch)
        if self.device.type == "cuda":
            return cuda_step_bytes(lambda: self.probe_step(global_vector, inputs), self.device)
        x, y, weight = inputs
        params, buffers = self._stacks(global_vector, {}, 1)
        optimizer = self.optimizer(params, self.setup.training.optimizer, 1, self.device)
        noise = self.functional.draw_noise([torch.Generator(device=self.device)], [batch], batch, self.device)
        one = {n: p[0].clone().requires_grad_() for n, p in params.items()}
        saved = saved_for_backward_bytes(
            lambda: self._loss(self._split(global_vector))(one, {n: b[0] for n, b in buffers.items()},
                                                           [t[0] for t in noise], x[0], y[0], weight[0])[0])
        state = [*params.values(), *params.values(), *buffers.values(), *noise, x]  # params, grads, ...
        if self.gradient is not None:  # and the per-sample gradients: a batch of gradients
            state += [p.expand(batch, *p.shape) for p in params.values()]
        return saved + optimizer.state_bytes() + sum(t.numel() * t.element_size() for t in state)

    def _probe_inputs(self, batch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A one-agent batch of ``batch`` training samples (repeated if there are fewer), its labels
        and weights, stacked as a round's are."""
        setup = self.setup
        index = torch.arange(batch) % len(setup.y)
        x = setup.transform(setup.x[index.to(setup.x.device)]).unsqueeze(0)
        y = setup.y[index.to(setup.y.device)].unsqueeze(0)
        return x, y, torch.ones(1, batch, device=self.device)

    def probe_step(self, global_vector: torch.Tensor, inputs: tuple[torch.Tensor, ...] | None = None) -> Stack:
        """One agent's real step from ``global_vector`` on the probe's batch (``inputs``, default one
        of ``training.batch_size``), what CUDA's peak counter measures; returns its new parameters."""
        setup = self.setup
        x, y, weight = inputs if inputs is not None else self._probe_inputs(setup.training.batch_size or 1)
        batch = x.shape[1]
        global_params = self._split(global_vector)
        lr = torch.full((1,), setup.training.optimizer.lr, dtype=torch.float64, device=self.device)
        active = torch.ones(1, dtype=torch.bool, device=self.device)
        params, buffers = self._stacks(global_vector, {}, 1)
        optimizer = self.optimizer(params, setup.training.optimizer, 1, self.device)
        noise = self.functional.draw_noise([torch.Generator(device=self.device)], [batch], batch, self.device)
        if self.gradient is not None:
            probe = AgentContext(0, 0, Instruction(0, 1), [p[0] for p in params.values()], global_params,
                                 float(lr[0]), batch, AgentState(setup.population, 0))
            grads, _, _ = self._plugin_gradients(self._sample_step_function(), self._terms_function(global_params),
                                                 [probe], [torch.Generator(device=self.device)], params, buffers,
                                                 noise, x, y, weight, active)
        else:
            grads, _ = self._step_function(global_params)(params, buffers, noise, x, y, weight)
        if setup.training.grad_clip_norm is not None:
            clip_per_agent(grads, setup.training.grad_clip_norm)
        optimizer.step(params, grads, active, lr)
        return params

    # ------------------------------------------------------------------------ a round's chunk
    def train(self, context: RoundContext, instructions: list[Instruction]) -> list[AgentResult]:
        """Train agents with non-empty shards together; one result per instruction, in order."""
        setup, device = self.setup, self.device
        x, y, transform = setup.x, setup.y, setup.transform
        k = len(instructions)
        agents = [i.agent_id for i in instructions]
        global_vector = context.global_vector
        global_params = self._split(global_vector)
        params, buffers = self._stacks(global_vector, context.global_buffers, k)
        lr = torch.tensor([context.lr * i.lr_scale for i in instructions], dtype=torch.float64, device=device)
        optimizer = self.optimizer(params, setup.training.optimizer, k, device)
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
        orders = [seeding.torch_generator(setup.seed, seeding.TRAINING, context.index, a, 1) for a in agents]
        augmenting = [seeding.torch_generator(setup.seed, seeding.TRAINING, context.index, a, 2) for a in agents] \
            if self.augment is not None else []
        # each agent's stream for dropout masks and a gradient plugin's noise, seeded as sequential seeds torch's
        masks = [torch.Generator(device=device).manual_seed(seeding.derive_seed(setup.seed, seeding.TRAINING, context.index, a))
                 for a in agents] if self.functional.calls or self.gradient is not None else []
        if self.gradient is None:
            step_grad = self._step_function(global_params)
        else:
            sample_step, terms = self._sample_step_function(), self._terms_function(global_params)
        clip = setup.training.grad_clip_norm
        epochs = torch.tensor([i.epochs for i in instructions], device=device)
        budget = torch.tensor([i.max_steps if i.max_steps is not None else 2**62 for i in instructions], device=device)
        steps_done = torch.zeros(k, dtype=torch.long, device=device)
        single = torch.zeros(k, dtype=torch.bool, device=device)
        unclippable = torch.zeros(k, dtype=torch.bool, device=device)
        histories: list[list[dict[str, float]]] = [[] for _ in agents]
        losses = [float("nan")] * k
        for epoch in range(int(epochs.max())):
            running = (epoch < epochs) & (steps_done < budget)  # who starts this epoch, as sequential would
            if not bool(running.any()):
                break
            starting = running.tolist()  # one device sync per epoch, not one per agent
            for i in range(k):
                contexts[i].epoch = epoch
            if self.batches is None:
                steps = self._shuffled_steps(shards, sizes, orders, starting, batch)
            else:
                steps = self._plugin_steps(contexts, shards, sizes, orders, starting)
            loss_sum = torch.zeros(k, dtype=torch.float64, device=device)
            correct = torch.zeros(k, dtype=torch.float64, device=device)
            seen = torch.zeros(k, dtype=torch.float64, device=device)
            for idx, w, w_cpu, listed in steps:
                active = listed & running & (steps_done < budget)
                if not bool(active.any()):
                    break
                w = w * active.unsqueeze(1)
                raw = x[idx.reshape(-1)]
                if augmenting:
                    raw = self._augment(raw.reshape(k, idx.shape[1], *raw.shape[1:]), augmenting, w_cpu,
                                        active).flatten(0, 1)
                flat = transform(raw)
                xb = flat.reshape(k, idx.shape[1], *flat.shape[1:])
                yb = y[idx]
                if self.batching:
                    xb, yb = self._transform_batches(contexts, xb, yb)
                noise = self._noise(masks, w_cpu, active, idx.shape[1])
                if self.gradient is None:
                    grads, (total, right, new_buffers, one_value) = step_grad(params, buffers, noise, xb, yb, w)
                    buffers.update(new_buffers)
                    single |= one_value & active
                else:
                    grads, total, right = self._plugin_gradients(sample_step, terms, contexts, masks, params, buffers,
                                                                 noise, xb, yb, w, active)
                if clip is not None:
                    unclippable |= clip_per_agent(grads, clip) & active
                loss_sum += total.double()
                correct += right.double()
                seen += w.sum(dim=1).double()
                optimizer.step(params, grads, active, lr)
                steps_done += active.long()
            epoch_loss = (loss_sum / seen.clamp_min(1)).tolist()
            epoch_acc = (correct / seen.clamp_min(1)).tolist()
            for i, (agent, samples) in enumerate(zip(agents, seen.long().tolist())):
                if starting[i]:
                    losses[i] = epoch_loss[i]
                    histories[i].append({"agent": agent, "round": context.index, "epoch": epoch, "loss": losses[i],
                                         "acc": epoch_acc[i], "samples": samples})
        results = []
        failures = [SINGLE_VALUE if one else NONFINITE_NORM if bad else None
                    for one, bad in zip(single.tolist(), unclippable.tolist())]
        steps = steps_done.tolist()
        for i, agent in enumerate(agents):
            if failures[i]:
                results.append(AgentResult.failed(agent, failures[i], sizes[i]))
                continue
            delta = flatten([params[n][i] for n in self.names]) - global_vector
            if diverged(losses[i], delta):
                results.append(non_finite(agent, losses[i], sizes[i]))
                continue
            contexts[i].steps = steps[i]
            result = AgentResult(agent, delta, sizes[i], {"loss": losses[i]},
                                 {n: b[i].clone() for n, b in buffers.items()}, steps=steps[i],
                                 epochs=len(histories[i]), history=histories[i])
            results.append(finish_update(self.finishing, contexts[i], result))
        return results

    def _shuffled_steps(self, shards: list[torch.Tensor], sizes: list[int], orders: list[torch.Generator],
                        starting: list[bool], batch: int) -> Iterator[tuple[torch.Tensor, ...]]:
        """An epoch's steps as the sequential trainer cuts them: each starting agent's shard in its
        seeded random order, in batches of ``batch`` (the last shorter). Each step is ``(index, weight,
        weight on the CPU, listed)``, ``listed``: the agents that have a batch there."""
        k = len(shards)
        width = max(math.ceil(s / batch) for s in sizes) * batch
        index = torch.zeros(k, width, dtype=torch.long)
        weight_cpu = torch.zeros(k, width)
        for i, (shard, order) in enumerate(zip(shards, orders)):
            if starting[i]:
                index[i, : sizes[i]] = shard[torch.randperm(sizes[i], generator=order)]
                weight_cpu[i, : sizes[i]] = 1.0
        index, weight = index.to(self.device), weight_cpu.to(self.device)
        for s in range(width // batch):
            w = weight[:, s * batch:(s + 1) * batch]
            yield index[:, s * batch:(s + 1) * batch], w, weight_cpu[:, s * batch:(s + 1) * batch], w.sum(dim=1) > 0

    def _plugin_steps(self, contexts: list[AgentContext], shards: list[torch.Tensor], sizes: list[int],
                      orders: list[torch.Generator], starting: list[bool]) -> Iterator[tuple[torch.Tensor, ...]]:
        """An epoch's steps from the plugin's ``epoch_batches``, drawn for each starting agent from its
        batch-order generator (as the sequential trainer draws them); each step's batches are padded
        to the largest (at least one column), and an empty batch is a step too."""
        training = self.setup.training
        epochs = [[shards[i][p] for p in self.batches.epoch_batches(contexts[i], sizes[i],
                                                                     training.batch_size or sizes[i], orders[i])]
                  if starting[i] else [] for i in range(len(shards))]
        for s in range(max(len(e) for e in epochs)):
            rows = [e[s] if s < len(e) else None for e in epochs]
            width = max([1] + [len(r) for r in rows if r is not None])
            index = torch.zeros(len(rows), width, dtype=torch.long)
            weight_cpu = torch.zeros(len(rows), width)
            for i, row in enumerate(rows):
                if row is not None:
                    index[i, : len(row)] = row
                    weight_cpu[i, : len(row)] = 1.0
            listed = torch.tensor([r is not None for r in rows], device=self.device)
            yield index.to(self.device), weight_cpu.to(self.device), weight_cpu, listed

    def _augment(self, raw: torch.Tensor, generators: list[torch.Generator], weight: torch.Tensor,
                 active: torch.Tensor) -> torch.Tensor:
        """``training.augment`` on each stepping agent's real samples, from its own stream, drawing
        exactly what the sequential trainer draws for that batch (padding rows are left alone)."""
        raw = raw.clone()
        for i, (stepping, count) in enumerate(zip(active.tolist(), weight.sum(dim=1).long().tolist())):
            if stepping and count:
                raw[i, :count] = self.augment(raw[i, :count], generators[i])
        return raw

    def _noise(self, generators: list[torch.Generator], weight: torch.Tensor, active: torch.Tensor,
               batch: int) -> list[torch.Tensor]:
        """This step's dropout masks: drawn for the agents that step, as many rows as their batch."""
        if not self.functional.calls:
            return []
        stepping = active.tolist()
        counts = [int(c) for c in weight.sum(dim=1).tolist()]
        return self.functional.draw_noise([g if on else None for g, on in zip(generators, stepping)], counts, batch,
                                          self.device)

    def _transform_batches(self, contexts: list[AgentContext], xb: torch.Tensor, yb: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each agent's plugins' ``transform_batch`` on its slice of the stacked batch."""
        xs, ys = list(xb.unbind(0)), list(yb.unbind(0))
        for i, agent in enumerate(contexts):
            for plugin in self.batching:
                xs[i], ys[i] = plugin.transform_batch(agent, xs[i], ys[i])
        return torch.stack(xs), torch.stack(ys)
