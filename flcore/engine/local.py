"""Local training of one agent on one reused model, running the agent-side plugins.

The model is set up once per process; each agent loads the global weights into it, trains on batches
sliced from the dataset's tensors, and returns its update. No Trainer, no model copy, no DataLoader
per agent: that fixed cost is what made TorchFL slow with many small clients. Backends reuse this
loop (``sequential`` and ``distributed`` train with it; ``vectorized`` falls back to it).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from flcore import seeding
from flcore.agent_plugin import AgentPlugin
from flcore.augment import augmentation
from flcore.backend import TrainingSetup
from flcore.engine.stepping import Stepper
from flcore.engine.weights import ModelWeights, flatten
from flcore.protocol import (
    AgentContext,
    AgentFailure,
    AgentResult,
    AgentState,
    Instruction,
    RoundContext,
    overrides,
    split_like,
)
from flcore.training import build_optimizer, compute_loss, per_sample_loss


def diverged(loss: float, delta: torch.Tensor) -> bool:
    """Whether a loss or an update is NaN or infinite. A sum is non-finite if any entry is (or if
    the weights are astronomically large): one reduction instead of a boolean copy of the update."""
    return not math.isfinite(loss) or not math.isfinite(float(delta.sum()))


def non_finite(agent_id: int, loss: float, num_samples: int) -> AgentResult:
    """The failed result of an agent whose loss or weights are NaN or infinite."""
    return AgentResult.failed(agent_id, f"local training produced non-finite weights (loss {loss})", num_samples)


def plugins_overriding(plugins: list[AgentPlugin], method: str) -> list[AgentPlugin]:
    """The plugins that implement ``method``: the engine calls a step only where it does something."""
    return [p for p in plugins if overrides(p, method, AgentPlugin)]


class LocalTrainer:
    """Trains agents one after another on a single model and device."""

    def __init__(self, setup: TrainingSetup) -> None:
        self.setup = setup
        self.model = setup.module
        self.stepper = Stepper(setup.fabric, setup.module)
        self.device = setup.fabric.device
        self.weights = ModelWeights(setup.model)
        self.params = self.weights.params
        self.augment = augmentation(setup.training.augment)
        plugins = list(setup.agent_plugins)
        self.starting = plugins_overriding(plugins, "on_agent_start")
        self.batching = plugins_overriding(plugins, "transform_batch")
        self.penalizing = plugins_overriding(plugins, "loss_term")
        self.stepping = plugins_overriding(plugins, "before_step")
        self.finishing = plugins_overriding(plugins, "on_update")
        # at most one plugin may choose the batches or compute the gradient (DP-SGD does both)
        self.batches = only_one(plugins_overriding(plugins, "epoch_batches"), "epoch_batches")
        self.gradient = only_one(plugins_overriding(plugins, "compute_gradients"), "compute_gradients")
        self.personalizing = plugins_overriding(plugins, "personalize")

    def run(self, context: RoundContext, instruction: Instruction) -> AgentResult:
        """Train one agent; a raise or a divergence becomes a failed result (never propagates)."""
        agent = instruction.agent_id
        n = int(self.setup.population.num_samples[agent])
        try:
            return self.train_agent(context, instruction)
        except AgentFailure as exc:
            return AgentResult.failed(agent, exc.reason, n)
        except Exception as exc:  # the failure policy decides; never a bare traceback
            return AgentResult.failed(agent, repr(exc), n, cause=exc)

    def train_agent(self, context: RoundContext, instruction: Instruction) -> AgentResult:
        """Train one agent from the global weights as instructed and return its result."""
        agent_id = instruction.agent_id
        return self.train_indices(context, instruction, self.setup.population.shard(agent_id), agent_id)

    def train_indices(self, context: RoundContext, instruction: Instruction, indices: np.ndarray,
                      stream: int) -> AgentResult:
        """Train from the global weights on the training samples ``indices``, with random streams
        keyed by ``stream`` (the agent's id, or :data:`flcore.seeding.SERVER`)."""
        setup, training = self.setup, self.setup.training
        agent_id, round_index = instruction.agent_id, context.index
        shard = torch.from_numpy(np.asarray(indices))
        n = len(shard)
        if not instruction.participate:
            return AgentResult.dropped(agent_id, "instructed not to take part", n)
        if n == 0:
            raise AgentFailure("its shard is empty")
        self.weights.load(context.global_vector, context.global_buffers)
        seeding.seed_torch(setup.seed, seeding.TRAINING, round_index, stream, device=self.device)
        order_gen = seeding.torch_generator(setup.seed, seeding.TRAINING, round_index, stream, 1)
        augment_gen = seeding.torch_generator(setup.seed, seeding.TRAINING, round_index, stream, 2)
        lr = context.lr * instruction.lr_scale
        optimizer = build_optimizer(training.optimizer, self.params)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer = self.stepper.setup_optimizer(optimizer)
        agent = AgentContext(agent_id, round_index, instruction, self.params,
                             split_like(context.global_vector, self.params), lr, n,
                             AgentState(setup.population, agent_id), model=self.model,
                             score=lambda: self.score(shard),
                             fit=self.fitter(shard, lr, (seeding.TRAINING, round_index, stream, 3)))
        for plugin in self.starting:
            plugin.on_agent_start(agent)
        batch_size = training.batch_size or n
        max_steps = instruction.max_steps
        self.model.train()
        loss_value, history = float("nan"), []
        for epoch in range(instruction.epochs):
            agent.epoch = epoch
            if self.batches is None:
                order = shard[torch.randperm(n, generator=order_gen)]
                batches = (order[start : start + batch_size] for start in range(0, n, batch_size))
            else:
                batches = (shard[p] for p in self.batches.epoch_batches(agent, n, batch_size, order_gen))
            loss_sum = torch.zeros((), device=self.device)
            correct = torch.zeros((), device=self.device, dtype=torch.long)
            seen = 0
            for idx in batches:
                xb = setup.x[idx].to(self.device, non_blocking=True)
                if self.augment is not None:
                    xb = self.augment(xb, augment_gen)
                xb = setup.transform(xb)
                yb = setup.y[idx].to(self.device, non_blocking=True)
                for plugin in self.batching:
                    xb, yb = plugin.transform_batch(agent, xb, yb)
                if self.gradient is None:
                    logits = self.model(xb)
                    loss = compute_loss(logits, yb, training)
                    objective = loss
                    for plugin in self.penalizing:
                        term = plugin.loss_term(agent, self.params, agent.global_params)
                        if term is not None:
                            objective = objective + term
                    optimizer.zero_grad(set_to_none=True)
                    self.stepper.backward(objective)
                    batch_loss = loss.detach() * len(idx)
                else:
                    optimizer.zero_grad(set_to_none=True)
                    losses, logits = self.gradient.compute_gradients(
                        agent, self.setup.model, xb, yb, lambda out, target: per_sample_loss(out, target, training))
                    self._add_loss_terms(agent)
                    batch_loss = losses.detach().sum()
                for plugin in self.stepping:
                    plugin.before_step(agent)
                if training.grad_clip_norm is not None:
                    self.stepper.clip(optimizer, training.grad_clip_norm)
                optimizer.step()
                agent.steps += 1
                loss_sum += batch_loss
                correct += (logits.detach().argmax(dim=1) == yb).sum()
                seen += len(idx)
                if max_steps is not None and agent.steps >= max_steps:
                    break
            loss_value = float(loss_sum) / max(seen, 1)  # a plugin's batches may all be empty
            history.append({"agent": agent_id, "round": round_index, "epoch": epoch,
                            "loss": loss_value, "acc": float(correct) / max(seen, 1), "samples": seen})
            if max_steps is not None and agent.steps >= max_steps:
                break
        delta = flatten(self.params) - context.global_vector
        if diverged(loss_value, delta):
            return non_finite(agent_id, loss_value, n)
        result = AgentResult(agent_id, delta, n, {"loss": loss_value}, self.weights.buffer_state(),
                             steps=agent.steps, epochs=len(history), history=history)
        return finish_update(self.finishing, agent, result)

    def _add_loss_terms(self, agent: AgentContext) -> None:
        """The loss terms' gradients added to a plugin's (they do not depend on the batch)."""
        terms = [t for p in self.penalizing if (t := p.loss_term(agent, self.params, agent.global_params)) is not None]
        if terms:
            self.stepper.backward(sum(terms))

    def fitter(self, shard: torch.Tensor, lr: float, keys: tuple[int, ...]):
        """``AgentContext.fit`` for one agent: each call trains on ``shard`` with its own batch-order
        stream, ``keys`` plus the call's number."""
        calls = iter(range(2**31))

        def fit(steps: int | None = None, epochs: int | None = None, params: list[torch.Tensor] | None = None,
                loss_term=None, lr: float | None = lr) -> int:
            return self.fit(shard, keys + (next(calls),), steps, epochs, params, loss_term, lr)

        return fit

    def fit(self, shard: torch.Tensor, keys: tuple[int, ...], steps: int | None, epochs: int | None,
            params: list[torch.Tensor] | None, loss_term, lr: float) -> int:
        """Train the weights now in the model on ``shard`` for ``steps`` steps or ``epochs`` passes
        (only ``params``, a fresh optimizer at ``lr``, ``loss_term(params)`` added); the steps taken."""
        setup, training = self.setup, self.setup.training
        n = len(shard)
        batch_size = training.batch_size or n
        per_epoch = math.ceil(n / batch_size)
        total = steps if steps is not None else (epochs or 0) * per_epoch
        if n == 0 or total <= 0:
            return 0
        trained = list(self.params if params is None else params)
        optimizer = build_optimizer(training.optimizer, trained)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer = self.stepper.setup_optimizer(optimizer)
        order_gen = seeding.torch_generator(setup.seed, *keys)
        was_training = self.model.training
        self.model.train()
        done = 0
        while done < total:
            order = shard[torch.randperm(n, generator=order_gen)]
            for start in range(0, n, batch_size):
                idx = order[start : start + batch_size]
                xb = setup.transform(setup.x[idx].to(self.device, non_blocking=True))
                yb = setup.y[idx].to(self.device, non_blocking=True)
                objective = compute_loss(self.model(xb), yb, training)
                if loss_term is not None:
                    objective = objective + loss_term(trained)
                for p in self.params:
                    p.grad = None
                self.stepper.backward(objective)
                if training.grad_clip_norm is not None:
                    self.stepper.clip(optimizer, training.grad_clip_norm)
                optimizer.step()
                done += 1
                if done >= total:
                    break
        for p in self.params:
            p.grad = None
        self.model.train(was_training)
        return done

    def personalize(self, context: RoundContext, agent_id: int, lr: float) -> None:
        """Load the global model, then let the plugins' ``personalize`` make it this agent's own
        (per-agent evaluation); ``agent.fit`` uses the agent's training shard and an evaluation
        stream, and torch is seeded from ``(seed, EVALUATION, round, agent)``."""
        setup = self.setup
        self.weights.load(context.global_vector, context.global_buffers)
        if not self.personalizing:
            return
        shard = torch.from_numpy(np.asarray(setup.population.shard(agent_id)))
        seeding.seed_torch(setup.seed, seeding.EVALUATION, context.index, agent_id, device=self.device)
        instruction = Instruction(agent_id, setup.training.epochs, setup.training.max_steps)
        agent = AgentContext(agent_id, context.index, instruction, self.params,
                             split_like(context.global_vector, self.params), lr, len(shard),
                             AgentState(setup.population, agent_id), model=self.model,
                             score=lambda: self.score(shard),
                             fit=self.fitter(shard, lr, (seeding.EVALUATION, context.index, agent_id, 1)))
        for plugin in self.personalizing:
            plugin.personalize(agent)

    @torch.no_grad()
    def score(self, indices: torch.Tensor) -> dict[str, float]:
        """The configured loss and the accuracy of the current weights on the training samples
        ``indices``, in eval mode and in batches of ``training.batch_size`` (``AgentContext.score``)."""
        setup, training = self.setup, self.setup.training
        was_training = self.model.training
        self.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        batch_size = training.batch_size or max(len(indices), 1)
        for start in range(0, len(indices), batch_size):
            idx = indices[start : start + batch_size]
            xb = setup.transform(setup.x[idx].to(self.device, non_blocking=True))
            yb = setup.y[idx].to(self.device, non_blocking=True)
            logits = self.model(xb).float()
            loss_sum += per_sample_loss(logits, yb, training).sum().double()
            correct += (logits.argmax(dim=1) == yb).sum()
        self.model.train(was_training)
        n = max(len(indices), 1)
        return {"loss": float(loss_sum) / n, "acc": float(correct) / n}


def only_one(plugins: list[AgentPlugin], method: str) -> AgentPlugin | None:
    """The one plugin implementing ``method``, or ``None``; two cannot both do it."""
    if len(plugins) > 1:
        from flcore.errors import ConfigError

        names = ", ".join(getattr(p, "component_name", "") or type(p).__name__ for p in plugins)
        raise ConfigError(f"federation.agent_plugins: {names} each implement {method}; at most one of them may be listed")
    return plugins[0] if plugins else None


def finish_update(plugins: list[AgentPlugin], agent: AgentContext, result: AgentResult) -> AgentResult:
    """Run the plugins' ``on_update`` on a finished update, then attach what they wrote and sent."""
    for plugin in plugins:
        plugin.on_update(agent, result)
    if plugins and result.delta is not None and not math.isfinite(float(result.delta.sum())):
        names = ", ".join(type(p).__name__ for p in plugins)
        return AgentResult.failed(agent.agent_id, f"agent-side plugins ({names}) made the update non-finite",
                                  result.num_samples)
    result.state.update(agent.state.written)
    result.extra.update(agent.extra)
    return result

