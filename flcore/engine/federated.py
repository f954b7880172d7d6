"""The federated round loop: select, instruct, train, results, aggregate, evaluate, record.

Everything a round does is in :meth:`FederatedRun.run_round`, top to bottom, in the phases of the
round protocol (:mod:`flcore.protocol`, docs/concepts.md). Random streams come from
:mod:`flcore.seeding`, so a run resumed from any checkpoint ends with the same weights as one that
was never interrupted.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from flcore import seeding
from flcore.backend import Backend, TrainingSetup
from flcore.config import RESUMABLE_FIELDS, ExperimentConfig, config_to_dict
from flcore.devices import model_bytes
from flcore.engine.assembly import (
    build_components,
    build_data_and_model,
    build_partition,
    build_population,
    check_run,
    check_server_plugins,
    prepare_backend,
    prepare_policy,
    training_tensors,
)
from flcore.engine.buffers import average_buffers
from flcore.engine.checkpoint import CorruptFile, DiskFull, save_torch
from flcore.engine.evaluation import evaluate
from flcore.engine.guard import RunInterrupted, RunLock, terminate_as_interrupt
from flcore.engine.local import LocalTrainer
from flcore.engine.observers import log_run_artifacts, memory_stats
from flcore.engine.personal import PerAgentEvaluation, split_holdout, summarize
from flcore.engine.recording import Progress, Recorder, progress_mode
from flcore.engine.result import RunResult
from flcore.engine.rundir import RunDirectory, partition_record
from flcore.engine.state_store import CheckpointStore, config_fingerprint
from flcore.engine.stepping import place_module
from flcore.engine.weights import ModelWeights
from flcore.errors import ConfigError, RunFailure
from flcore.policy import PolicySetup
from flcore.protocol import PHASES, AgentResult, AgentStatus, Aggregate, Instruction, RoundContext, overrides
from flcore.server_plugin import ServerPlugin
from flcore.training import lr_factor

#: the run folder's cache (one per process) of per-agent state beyond federation.agent_state_memory_mb
#: (flcore.agent_spill); emptied at start and resume, removed at the end
SPILL_FOLDER = ".agent-state"


class FederatedRun:
    """The state of one federated run: its parts, the global model, the records so far."""

    def __init__(self, config: ExperimentConfig, components: dict[str, Any], run_dir: RunDirectory,
                 backend: Backend, fabric: Any) -> None:
        self.config, self.federation, self.run_dir = config, config.federation, run_dir
        self.fabric, self.is_main = fabric, backend.rank == 0
        self.data, self.model = build_data_and_model(config, components)
        self.partition = build_partition(config, components, self.data)
        self.holdout, self.per_agent = self._hold_out(config)
        self._build_round_components(components, backend)
        self.population = build_population(self.partition, self.components + [backend], config.seed)
        self.population.spill_to(str(run_dir.path / f"{SPILL_FOLDER}-rank-{backend.rank}"),
                                 int(config.federation.agent_state_memory_mb * 2**20))
        self.backend = self._prepare_backend(backend)
        self.weights = ModelWeights(self.model)
        self.global_vector = self.weights.vector()
        self.global_buffers = self.weights.buffer_state()
        prepare_policy(self.policy, self.strategy,
                       PolicySetup(self.population, self.devices, self.training,
                                   model_bytes(self.global_vector, self.global_buffers), model_bytes(self.global_vector)),
                       self.labels)
        self.virtual_seconds = 0.0  # the virtual clock, advanced by the round policy
        self.store = CheckpointStore(run_dir.path)
        self.history: list[dict[str, Any]] = []
        self.next_round = 0
        self.checkpointed_round = 0  # the round the checkpoint on disk continues from
        self.agents_seen = 0
        self.idle_rounds = 0  # consecutive rounds in which no update was accepted
        self.updated_rounds = 0  # rounds in which the model changed
        self.session = 1  # 1 for a new run, +1 for each resume
        self.seconds_before = 0.0  # time spent by earlier sessions, up to their last checkpoint
        self.session_started = time.perf_counter()
        self.setup_seconds = 0.0
        self._agent_log_step = 0
        self.stopped: dict[str, Any] | None = None  # why a component ended the run early (stop_reason)

    def start_recording(self) -> None:
        """Open the loggers and profiler (after a resume, so that they know the session)."""
        self.recorder = Recorder(self.config, self.run_dir, self.is_main, self.session)
        self.recorder.agent_log_step = self._agent_log_step

    def _build_round_components(self, components: dict[str, Any], backend: Backend) -> None:
        built, self.labels = build_components(components)
        self.labels[id(backend)] = components["backend"].label
        self.sampler, self.strategy = built["sampler"], built["aggregator"]
        self.agent_plugins, self.server_plugins, self.metadata = \
            built["agent_plugin"], built["server_plugin"], built["agent_metadata"]
        check_server_plugins(self.strategy, self.server_plugins, self.labels)
        check_run(self.config, components, built, self.data, self.model, self.partition.sizes)
        self.training = self.strategy.configure_training(self.config.training)
        self.availability, self.devices, self.policy = \
            built["availability"], built["device_profile"], built["round_policy"]
        # the policy acts last in every phase: it sees instructions and results as the others left them
        self.components = [self.sampler, self.strategy, *self.server_plugins, *self.agent_plugins, *self.metadata,
                           self.availability, self.devices, self.policy]
        self.phase = {name: [c for c in self.components if overrides(c, name)] for name in PHASES}
        self.updating = [p for p in self.server_plugins if overrides(p, "process_update", ServerPlugin)]
        self.summing = [p for p in self.server_plugins if overrides(p, "process_sum", ServerPlugin)]
        self.post_aggregating = [p for p in reversed(self.server_plugins)
                                 if overrides(p, "process_aggregate", ServerPlugin)]
        # stream updates into the strategy as agents finish, unless a component must see them all first
        self.streaming = self.strategy.streaming and not self.phase["on_results"]

    def _prepare_backend(self, backend: Backend) -> Backend:
        module = place_module(self.fabric, self.model)
        self.module = module
        x, y = training_tensors(self.data, self.fabric.device)
        self.setup = TrainingSetup(self.fabric, self.model, module, x, y, self.data.transform, self.config.seed,
                                   self.training, self.strategy, self.agent_plugins, self.population)
        self._server_trainer: LocalTrainer | None = None
        self._personal_trainer: LocalTrainer | None = None
        return prepare_backend(backend, self.setup, self.labels[id(backend)])

    # -------------------------------------------------------------------------------- rounds
    def run_round(self, r: int) -> dict[str, Any]:
        """One round, in the protocol's phases: select, instruct, train, results, aggregate,
        evaluate, record, checkpoint."""
        federation, profile = self.federation, self.recorder.profile
        started = time.perf_counter()
        context = RoundContext(r, federation.rounds, self.config.seed, self.population, self.global_vector,
                               self.global_buffers,
                               lr=self.training.optimizer.lr * lr_factor(self.training.scheduler, r, federation.rounds),
                               data=self.data, trainer=self._train_on_server, clock=self.virtual_seconds)
        with profile("sample"):
            selected = self._select(context)
        with profile("instruct"):
            instructions = self._instruct(context, selected)
        local_metrics = self._evaluate_on_shards(selected) if self.config.evaluation.local else []
        with profile("local_train"):
            results = self._train(context, instructions)
        with profile("aggregate"):
            accepted = self._settle(context, results)
            self._aggregate(context, accepted)
            for component in self.phase["on_round_end"]:
                component.on_round_end(context, accepted)
            self._advance_clock(context)

        row = self._row(context, results, accepted, local_metrics)
        last = r + 1 == federation.rounds
        if ((r + 1) % self.config.evaluation.every == 0 or last) and self.is_main:
            with profile("evaluate"):
                row.update(self._evaluate(context))
        if self.per_agent is not None and self.per_agent.due(r, federation.rounds) and self.is_main:
            with profile("evaluate"):
                row.update(self._evaluate_agents(context))
        row.update(context.metrics)
        row.update(memory_stats(self.fabric.device))
        self.next_round = r + 1
        row["seconds"] = time.perf_counter() - started  # the round up to its checkpoint
        with profile("log"):
            self.history.append(row)
            self.recorder.round(row, self.history)
        if (r + 1) % self.config.checkpoint.every == 0 or last:
            with profile("checkpoint"):
                self.checkpoint()
        return row

    def _select(self, context: RoundContext) -> np.ndarray:
        """Available and select phases: components narrow who can be chosen, then the sampler's
        choice among them, checked."""
        r = context.index
        for component in self.phase["availability"]:
            available = component.availability(context, context.available)
            if available is not None:
                available = np.asarray(available, dtype=np.int64)
                if available.ndim != 1 or (len(available) > 1 and bool((np.diff(available) <= 0).any())) or (
                        context.available is not None and not np.isin(available, context.available).all()):
                    raise RunFailure(f"{self.labels[id(component)]} returned an invalid set of available agents in "
                                     f"round {r + 1}: expected sorted, distinct ids among those available before it")
            context.available = available
        rng = seeding.numpy_rng(self.config.seed, seeding.SAMPLING, r)
        selected = np.asarray(self.sampler.sample(self.population, r, rng, context.available))
        n = len(self.population)
        if selected.ndim != 1 or (len(selected) and (not np.issubdtype(selected.dtype, np.integer)
                                                     or selected.min() < 0 or selected.max() >= n)) \
                or len(np.unique(selected)) != len(selected) \
                or (context.available is not None and not np.isin(selected, context.available).all()):
            raise RunFailure(f"{self.labels[id(self.sampler)]} returned an invalid selection in round {r + 1}: "
                             f"expected distinct available agent ids in [0, {n}), got {selected[:10].tolist()}...")
        selected = selected.astype(np.int64)
        for component in self.phase["narrow_selection"]:
            narrowed = np.asarray(component.narrow_selection(context, selected), dtype=np.int64)
            if narrowed.ndim != 1 or len(np.unique(narrowed)) != len(narrowed) or not np.isin(narrowed, selected).all():
                raise RunFailure(f"{self.labels[id(component)]} narrowed the selection of round {r + 1} to an invalid "
                                 "set: expected distinct ids among those the sampler chose")
            selected = narrowed
        counts = self.population.column("selected_count")[selected]
        self.agents_seen += int((counts == 0).sum())
        self.population.update("selected_count", selected, counts + 1)
        context.selected = selected
        return selected

    def _instruct(self, context: RoundContext, selected: np.ndarray) -> list[Instruction]:
        """Instruct phase: defaults from the training settings, then each component's edits."""
        training = self.training
        instructions = [Instruction(agent, training.epochs, training.max_steps) for agent in selected.tolist()]
        context.instructions = instructions
        for component in self.phase["configure_round"]:
            component.configure_round(context, instructions)
            if [i.agent_id for i in instructions] != selected.tolist() or not all(
                    isinstance(i.epochs, int) and i.epochs > 0 and (i.max_steps is None or i.max_steps > 0)
                    and math.isfinite(i.lr_scale) and i.lr_scale > 0 for i in instructions):
                raise RunFailure(f"{self.labels[id(component)]} made invalid instructions in round {context.index + 1}: "
                                 "keep one per selected agent, in order, with epochs > 0, max_steps > 0 or None and "
                                 "a positive lr_scale (set participate=False to drop an agent)")
        return instructions

    def _train(self, context: RoundContext, instructions: list[Instruction]) -> list[AgentResult]:
        """Train phase: the backend trains the instructed agents; each result is logged, put to the
        failure policy and, when streaming, handed to the strategy at once."""
        results: dict[int, AgentResult] = {}

        def deliver(result: AgentResult) -> None:
            self.recorder.agent_epochs(result.history)
            if result.status is AgentStatus.FAILED and self.federation.on_agent_failure == "fail":
                raise RunFailure(f"agent {result.agent_id} failed in round {context.index + 1}: {result.reason}. "
                                 "Set federation.on_agent_failure=skip to drop such updates instead.") from result.cause
            if self.streaming and result.status.accepted:
                self._to_strategy(context, result)
            results[result.agent_id] = result

        self.backend.train(context, instructions, deliver)
        wanted = [i.agent_id for i in instructions]
        if sorted(results) != sorted(wanted):
            raise RunFailure(f"{self.labels[id(self.backend)]} returned results for agents {sorted(results)[:10]} "
                             f"where {sorted(wanted)[:10]} were instructed, in round {context.index + 1}")
        return [results[agent] for agent in wanted]

    def _to_strategy(self, context: RoundContext, update: AgentResult) -> None:
        for plugin in self.updating:
            plugin.process_update(context, update)
        if self.strategy.streaming:
            self.strategy.accumulate(update)
            update.delta = None  # the running sum holds it now

    def _settle(self, context: RoundContext, results: list[AgentResult]) -> list[AgentResult]:
        """Results phase: components see every result; skipped failures are reported; accepted
        updates reach the strategy (unless streamed already) and their per-agent state is stored."""
        if not self.streaming:
            for component in self.phase["on_results"]:
                component.on_results(context, results)
        for result in results:
            if result.status is AgentStatus.FAILED:
                warnings.warn(f"skipping update: agent {result.agent_id} failed in round {context.index + 1}: "
                              f"{result.reason}", stacklevel=2)
        accepted = [r for r in results if r.status.accepted]
        context.failures = [r for r in results if not r.status.accepted]
        if not self.streaming:
            for update in accepted:
                self._to_strategy(context, update)
        for update in accepted:
            for name, value in update.state.items():
                self.population.set(name, update.agent_id, value)
        return accepted

    def _aggregate(self, context: RoundContext, accepted: list[AgentResult]) -> None:
        """Aggregate phase: the strategy's next global model, then the server plugins' (outermost
        last), each checked; buffers follow ``federation.buffers``."""
        if not accepted:
            self._note_idle_round(context)
            if not any(p.sums_idle_rounds for p in self.summing):
                return
        if self.summing:
            self._process_sum(context, accepted)
        out = self.strategy.aggregate(self.global_vector, accepted, context)
        aggregate = out if isinstance(out, Aggregate) else Aggregate(out)
        self._check_vector(aggregate.vector, self.strategy, context)
        for plugin in self.post_aggregating:
            plugin.process_aggregate(context, self.global_vector, aggregate)
            self._check_vector(aggregate.vector, plugin, context)
        context.kept = aggregate.kept
        for key, value in aggregate.metrics.items():
            context.log(self.strategy, key, value)
        self.global_vector = aggregate.vector.detach()
        if not accepted:  # a plugin released the sum of no updates (sums_idle_rounds): still an idle round
            return
        if self.federation.buffers == "weighted_mean" and self.global_buffers:
            self.global_buffers = average_buffers(self.global_buffers, accepted)
        self.idle_rounds = 0
        self.updated_rounds += 1

    def _process_sum(self, context: RoundContext, accepted: list[AgentResult]) -> None:
        """The strategy's sum of updates through the server plugins' ``process_sum``, in list order,
        before the strategy divides it (``check_server_plugins`` made sure it is ``sum_based``)."""
        total = self.strategy.update_sum(accepted)
        if not accepted and total.vector is None:  # an idle round's sum (sums_idle_rounds): zero
            total.vector = torch.zeros_like(self.global_vector)
        for plugin in self.summing:
            plugin.process_sum(context, total)
            self._check_vector(total.vector, plugin, context)
            if not (math.isfinite(total.weight) and total.weight > 0):
                raise RunFailure(f"{self.labels[id(plugin)]} set the denominator of the sum of updates to "
                                 f"{total.weight!r} in round {context.index + 1}, where a positive number was expected")

    def _check_vector(self, vector: Any, component: Any, context: RoundContext) -> None:
        """A strategy or server plugin must return a finite vector shaped like the global model."""
        expected = self.global_vector
        problem = None
        if not isinstance(vector, torch.Tensor):
            problem = f"a {type(vector).__name__}"
        elif vector.shape != expected.shape:
            problem = f"a vector of shape {tuple(vector.shape)}"
        elif not math.isfinite(float(vector.sum())):
            problem = "non-finite values"
        if problem:
            raise RunFailure(f"{self.labels.get(id(component), type(component).__name__)} returned {problem} in round "
                             f"{context.index + 1}, where a finite vector of shape {tuple(expected.shape)} (the global "
                             "model's trainable parameters) was expected; the global model was not updated")

    def _note_idle_round(self, context: RoundContext) -> None:
        """A round without an accepted update leaves the model as it was; too many in a row stop the
        run (``federation.stall_rounds``), so that a run of skipped agents cannot end with exit 0.
        A round whose updates a component holds for later (``deferred``) is waiting, not idle, and a
        round that selected nobody (the ``poisson`` sampler's, now and then) is no failure of agents."""
        nobody = context.selected is not None and len(context.selected) == 0
        if nobody or any(f.status is AgentStatus.DEFERRED for f in context.failures):
            return
        self.idle_rounds += 1
        limit = self.federation.stall_rounds
        if self.idle_rounds >= limit:
            raise RunFailure(f"no update was accepted in {self.idle_rounds} consecutive rounds (up to round "
                             f"{context.index + 1}; federation.stall_rounds = {limit}): every selected agent failed or "
                             "was dropped. The checkpoint before these rounds is intact.")

    def _advance_clock(self, context: RoundContext) -> None:
        """The virtual clock after the round: finite, and never earlier than before it."""
        try:
            clock = float(context.clock)
        except (TypeError, ValueError):
            clock = math.nan
        if not math.isfinite(clock) or clock < self.virtual_seconds:
            raise RunFailure(f"the virtual clock was set to {context.clock!r} in round {context.index + 1} (by "
                             f"{self.labels[id(self.policy)]} or another component), where a finite value of at least "
                             f"{self.virtual_seconds} (its value before the round) was expected")
        self.virtual_seconds = clock

    def _row(self, context: RoundContext, results: list[AgentResult], accepted: list[AgentResult],
             local_metrics: list[dict[str, float]]) -> dict[str, Any]:
        statuses = [r.status for r in results]
        row: dict[str, Any] = {
            "round": context.index + 1, "selected": len(context.selected),
            "completed": statuses.count(AgentStatus.COMPLETED), "partial": statuses.count(AgentStatus.PARTIAL),
            "dropped": statuses.count(AgentStatus.DROPPED), "deferred": statuses.count(AgentStatus.DEFERRED),
            "skipped": statuses.count(AgentStatus.FAILED),
            "lr": context.lr, "agents_seen": self.agents_seen,
        }
        row["available"] = len(self.population) if context.available is None else len(context.available)
        row["virtual_seconds"] = self.virtual_seconds
        if accepted:
            weights = np.array([u.num_samples for u in accepted], dtype=np.float64)
            row["train_loss"] = float(np.average([u.metrics.get("loss", np.nan) for u in accepted], weights=weights))
        if local_metrics:
            row["local_loss"] = float(np.mean([m["loss"] for m in local_metrics]))
            row["local_acc"] = float(np.mean([m["acc"] for m in local_metrics]))
        return row

    def _evaluate(self, context: RoundContext) -> dict[str, float]:
        """Evaluate phase: the new global model on the test split, then the components' own scores."""
        self.weights.load(self.global_vector, self.global_buffers)
        batch, device = self.config.evaluation.batch_size, self.fabric.device

        def score(x: torch.Tensor, y: torch.Tensor, vector: torch.Tensor | None = None,
                  buffers: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
            if vector is None and buffers is None:
                return evaluate(self.module, x, y, self.data.transform, batch, device)
            self.weights.load(self.global_vector if vector is None else vector, buffers or self.global_buffers)
            try:
                return evaluate(self.module, x, y, self.data.transform, batch, device)
            finally:
                self.weights.load(self.global_vector, self.global_buffers)

        metrics = score(self.data.x_test, self.data.y_test)
        for component in self.phase["on_evaluate"]:
            component.on_evaluate(context, score)
        return {"test_loss": metrics["loss"], "test_acc": metrics["acc"]}

    def _hold_out(self, config: ExperimentConfig) -> tuple[Any, PerAgentEvaluation | None]:
        """Carve each agent's held-out split from its shard (``evaluation.holdout``; the agents then
        train on the rest), and the per-agent evaluation's schedule: ``(None, None)`` without them."""
        evaluation = config.evaluation
        if evaluation.per_agent_every is not None and evaluation.holdout == 0:
            raise ConfigError(f"evaluation.per_agent_every = {evaluation.per_agent_every}: per-agent evaluation scores "
                              "each agent on its held-out split, and evaluation.holdout is 0; set evaluation.holdout "
                              "to a share in (0, 1), such as 0.2.")
        if evaluation.holdout == 0:
            return None, None
        self.partition, holdout = split_holdout(self.partition, np.asarray(self.data.train_labels), evaluation.holdout,
                                                seeding.numpy_rng(config.seed, seeding.PARTITION, 1))
        if evaluation.per_agent_every is None:
            warnings.warn(f"evaluation.holdout = {evaluation.holdout} sets aside that share of every agent's shard, "
                          "but evaluation.per_agent_every is not set, so no agent is ever scored on it; set "
                          "evaluation.per_agent_every (say 10) or holdout back to 0", stacklevel=2)
            return holdout, None
        if not (holdout.sizes > 0).any():
            raise ConfigError(f"evaluation.holdout = {evaluation.holdout}: no agent holds out a sample (each class "
                              "keeps at least one training sample per agent); raise the share or give the agents more "
                              "data.")
        return holdout, PerAgentEvaluation(evaluation, holdout, config.seed)

    def _evaluate_agents(self, context: RoundContext) -> dict[str, float]:
        """Per-agent evaluation: each scheduled agent's model (the global one, made personal by the
        agent-side plugins' ``personalize``) on the agent's held-out split; the row gets the summary."""
        if self._personal_trainer is None:
            self._personal_trainer = LocalTrainer(self.setup)
        context = replace(context, global_vector=self.global_vector, global_buffers=self.global_buffers)
        agents = self.per_agent.agents(context.index)
        scores = []
        for agent in agents.tolist():
            held = torch.from_numpy(self.holdout.shard(agent))
            self._personal_trainer.personalize(context, agent, context.lr)
            scores.append(evaluate(self.module, self.data.x_train[held], self.data.y_train[held],
                                   self.data.transform, self.config.evaluation.batch_size, self.fabric.device))
        self.weights.load(self.global_vector, self.global_buffers)
        return summarize(scores, self.holdout.sizes[agents])

    def _train_on_server(self, context: RoundContext, indices: np.ndarray,
                         instruction: Instruction | None) -> AgentResult:
        """``context.train``: the global model trained on samples the server holds."""
        if self._server_trainer is None:
            self._server_trainer = LocalTrainer(replace(self.setup, agent_plugins=()))
        instruction = instruction or Instruction(-1, self.training.epochs, self.training.max_steps)
        result = self._server_trainer.train_indices(context, instruction, np.asarray(indices, dtype=np.int64),
                                                    seeding.SERVER)
        self.weights.load(self.global_vector, self.global_buffers)
        return result

    def _evaluate_on_shards(self, agents: np.ndarray) -> list[dict[str, float]]:
        """The global model on each selected agent's own shard (empty shards are left out)."""
        self.weights.load(self.global_vector, self.global_buffers)
        scores = []
        for agent in agents.tolist():
            shard = torch.from_numpy(self.population.shard(agent))
            if len(shard):
                scores.append(evaluate(self.module, self.data.x_train[shard], self.data.y_train[shard],
                                       self.data.transform, self.config.evaluation.batch_size, self.fabric.device))
        return scores

    # -------------------------------------------------------------------------------- state
    def checkpoint(self) -> None:
        """Write the checkpoint (rank 0); every rank forgets the per-agent changes it holds."""
        if self.is_main:
            self.store.save(self.state_dict(), self.manifest(), self.population, self.next_round)
        else:
            self.population.mark_saved()
        self.checkpointed_round = self.next_round

    def elapsed(self) -> float:
        """Seconds this run has taken over all its sessions."""
        return self.seconds_before + time.perf_counter() - self.session_started

    def manifest(self) -> dict[str, Any]:
        """What a checkpoint is checked against before a resume."""
        from flcore import __version__

        return {"flcore": __version__, "agents": len(self.population), "model": self.weights.shapes(),
                "fingerprint": config_fingerprint(config_to_dict(self.config), RESUMABLE_FIELDS),
                "fields": [{"name": f.name, "dtype": f.dtype, "default": f.default if f.dtype else None}
                           for f in self.population.fields()]}

    def state_dict(self) -> dict[str, Any]:
        """The server side of the run; per-agent state goes to the checkpoint's journal."""
        return {
            "next_round": self.next_round,
            "global_vector": self.global_vector.detach().cpu(),
            "global_buffers": {k: v.detach().cpu() for k, v in self.global_buffers.items()},
            "components": {key: c.state_dict() for key, c in self._stateful().items()},
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "agent_log_step": self.recorder.agent_log_step,
            "agents_seen": self.agents_seen,
            "idle_rounds": self.idle_rounds,
            "updated_rounds": self.updated_rounds,
            "session": self.session,
            "elapsed_seconds": self.elapsed(),
            "virtual_seconds": self.virtual_seconds,
        }

    def _stateful(self) -> dict[str, Any]:
        keyed = {"sampler": self.sampler, "aggregator": self.strategy, "backend": self.backend,
                 "availability": self.availability, "device_profile": self.devices, "round_policy": self.policy}
        for kind, items in (("server_plugin", self.server_plugins), ("agent_plugin", self.agent_plugins),
                            ("agent_metadata", self.metadata)):
            for index, item in enumerate(items):
                keyed[f"{kind}[{index}]:{item.component_name}"] = item
        return keyed

    def resume(self) -> None:
        """Restore the run folder's checkpoint after checking it belongs to this run."""
        checkpoint = self.store.load()
        self._check_manifest(checkpoint["manifest"])
        self.store.restore_population(self.population)
        state = checkpoint["state"]
        device = self.fabric.device
        self.next_round = int(state["next_round"])
        self.global_vector = state["global_vector"].to(device)
        self.global_buffers = {k: v.to(device) for k, v in state["global_buffers"].items()}
        stateful = self._stateful()
        if set(state["components"]) != set(stateful):
            raise CorruptFile(f"'{self.store.file}' holds state of components {sorted(state['components'])}, this run "
                              f"has {sorted(stateful)}")
        for key, component in stateful.items():
            component.load_state_dict(state["components"][key])
        self.history = list(state["history"])
        self._agent_log_step = int(state["agent_log_step"])
        self.agents_seen = int(state["agents_seen"])
        self.idle_rounds = int(state["idle_rounds"])
        self.updated_rounds = int(state["updated_rounds"])
        self.session = int(state["session"]) + 1
        self.seconds_before = float(state["elapsed_seconds"])
        self.virtual_seconds = float(state["virtual_seconds"])
        self.checkpointed_round = self.next_round
        torch.set_rng_state(state["torch_rng"])

    def _check_manifest(self, manifest: dict[str, Any]) -> None:
        expected = self.manifest()
        file = self.store.file
        if manifest.get("fingerprint") != expected["fingerprint"]:
            raise CorruptFile(f"'{file}' was written by a run with another config than this folder's config.yaml "
                              "(only federation.rounds, evaluation.every, checkpoint.every and logging.progress may "
                              "change on resume)")
        if manifest.get("agents") != expected["agents"]:
            raise CorruptFile(f"'{file}' holds {manifest.get('agents')} agents; this run has {expected['agents']}")
        if [tuple(s) for _, s in manifest.get("model", [])] != [s for _, s in expected["model"]]:
            raise CorruptFile(f"'{file}' holds a model of other shapes than this run's "
                              f"{self.config.model.name} ({self.weights.size:,} trainable parameters)")

    # -------------------------------------------------------------------------------- driver
    def run(self, progress: str, stop_after_rounds: int | None = None) -> None:
        """Run the remaining rounds (at most ``stop_after_rounds`` of them). A run that ends without
        any accepted update fails: its model is the initial one."""
        rounds = range(self.next_round, self.federation.rounds)
        if stop_after_rounds is not None:
            rounds = rounds[:stop_after_rounds]
        shown = Progress(progress if self.is_main else "off", self.federation.rounds, self.next_round)
        try:
            for r in rounds:
                if self._stop_before(r):
                    break
                shown.update(self.run_round(r))
        finally:
            shown.close()
        if self.next_round == self.federation.rounds and self.updated_rounds == 0:
            raise RunFailure(f"no update was accepted in any of the {self.next_round} rounds: every selected agent "
                             "failed or was dropped, so the model is the initial one.")

    def _stop_before(self, r: int) -> bool:
        """Whether a component ends the run before round ``r`` (``stop_reason``): a successful end,
        recorded in summary.json, with the checkpoint of the rounds run so far written."""
        for component in self.phase["stop_reason"]:
            if reason := component.stop_reason(r):
                self.stopped = {"before_round": r + 1, "by": self.labels.get(id(component), component.component_name),
                                "reason": reason}
                if self.checkpointed_round != self.next_round:
                    self.checkpoint()
                if self.is_main:
                    print(f"stopped before round {r + 1} of {self.federation.rounds}: {reason}", file=sys.stderr)
                return True
        return False

    def finish(self) -> dict[str, Any]:
        """Write the final model, sampling counts, profiler summary and summary.json (rank 0)."""
        self.weights.load(self.global_vector, self.global_buffers)
        final = self.history[-1] if self.history else {}
        if not self.is_main:
            return {"final": final, "parameters": self.model.parameter_counts()}
        save_torch(self.model.state_dict(), self.run_dir.path / "model.pt")
        self.recorder.write_metrics(self.history)
        selected = self.population.column("selected_count")
        self.run_dir.write_csv(
            "sampling.csv",
            ({"agent": a, "times_selected": int(t), "samples": int(n)}
             for a, (t, n) in enumerate(zip(selected, self.population.num_samples))),
        )
        profile = self.recorder.finalize()
        summary = {
            "rounds_completed": self.next_round,
            "final": final,
            "best_test_acc": max((h["test_acc"] for h in self.history if "test_acc" in h), default=None),
            "parameters": self.model.parameter_counts(),
            "seconds": self.elapsed(),
            "sessions": self.session,
            "rounds_without_update": self.next_round - self.updated_rounds,
            "setup_seconds": self.setup_seconds,
            "agent_state": self.population.spill.stats() if self.population.spill else None,
            "backend": self.backend.component_name,
            "profile": profile,
        }
        if self.stopped is not None:
            summary["stop"] = {**self.stopped, "successful": True}
        if components := {key: s for key, c in self._stateful().items() if (s := c.run_summary())}:
            summary["components"] = components
        self.run_dir.write_json("summary.json", summary)
        log_run_artifacts(self.recorder.loggers, self.run_dir.path)
        return summary

    def records(self) -> dict[str, Any]:
        """What the run's components record about themselves (records.json), by checkpoint key."""
        return {key: record for key, c in self._stateful().items() if (record := c.run_record())}


def run_federated(config: ExperimentConfig, components: dict[str, Any], provenance: dict[str, Any],
                  out_dir: str | Path, resume_dir: str | Path | None, progress: bool | str | None,
                  stop_after_rounds: int | None) -> RunResult:
    """Build a :class:`FederatedRun` in a new (or resumed) folder, run it, and summarise it.

    Rank 0 holds the folder's lock throughout. A new run's folder is removed again if the run
    cannot start; a resumed run rewrites ``config.yaml`` only once its checkpoint passed every check.
    """
    started = time.perf_counter()
    backend: Backend = components["backend"].build()
    check_devices(config, backend, components["backend"].label)
    fabric = backend.launch(config.runtime)
    is_main = backend.rank == 0
    run_dir, fresh = _run_folder(config, out_dir, resume_dir, backend)
    lock = RunLock(run_dir.path) if is_main else None
    run: FederatedRun | None = None
    try:
        if fresh and is_main:
            run_dir.write_config(config_to_dict(config))
            run_dir.write_json("plugins.json", provenance)
        try:
            run = FederatedRun(config, components, run_dir, backend, fabric)
            if not fresh:
                run.resume()
                if is_main:
                    run_dir.write_config(config_to_dict(config))
        except BaseException:
            if fresh and resume_dir is None and is_main:  # never leave a half-written run folder behind
                lock.release()
                shutil.rmtree(run_dir.path, ignore_errors=True)
            raise
        if not fresh and run.next_round >= config.federation.rounds:
            return _finished(run_dir, config, backend)
        run.start_recording()
        if fresh and is_main:
            record = partition_record(run.partition, run.data.train_labels, run.data.num_classes)
            run_dir.write_json("partition.json", record)
            if records := run.records():
                run_dir.write_json("records.json", records)
            run.recorder.hyperparams(config_to_dict(config) | {"partition": record["statistics"]})
        run.setup_seconds = time.perf_counter() - started
        with terminate_as_interrupt():
            try:
                run.run(progress_mode(config.logging.progress, progress), stop_after_rounds)
            except KeyboardInterrupt:
                raise RunInterrupted(_stopped_message(run, "interrupted")) from None
            except DiskFull as exc:
                if run.checkpointed_round == 0 and resume_dir is None and is_main:
                    lock.release()
                    shutil.rmtree(run_dir.path, ignore_errors=True)
                    raise RunFailure(f"{exc}. The run had not reached its first checkpoint, so its folder was "
                                     "removed; free some space and start it again.") from exc
                raise RunFailure(_stopped_message(run, str(exc))) from exc
        summary = run.finish()
    finally:
        if run is not None:
            run.population.close_spill()
        if lock is not None:
            lock.release()
    state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    return RunResult(run_dir.path, run.history, summary, state, rank=backend.rank)


def check_devices(config: ExperimentConfig, backend: Backend, label: str) -> None:
    """The backend can use the devices ``runtime`` asks for (its declared ``max_devices``)."""
    from flcore.config import device_count

    runtime = config.runtime
    count = device_count(runtime.devices)
    wanted = None if count is None else count * runtime.num_nodes
    if backend.max_devices is not None and wanted is not None and wanted > backend.max_devices:
        raise ConfigError(f"runtime.devices = {runtime.devices!r} (x runtime.num_nodes = {runtime.num_nodes}): {label} "
                          f"trains on {backend.max_devices} device(s); use devices: 1, or federation.backend: "
                          "distributed to spread agents over devices.")


def check_federated(config: ExperimentConfig, components: dict[str, Any]) -> None:
    """Build everything a run builds before its first round (data, model, partition, components,
    population, backend checks), in memory on one device, writing nothing: what ``flcore validate``
    runs, so that it rejects what ``flcore run`` would."""
    from flcore.engine.runtime import build_fabric

    backend: Backend = components["backend"].build()
    check_devices(config, backend, components["backend"].label)
    one_device = config.runtime.model_copy(update={"devices": 1, "num_nodes": 1})
    fabric = build_fabric(one_device)
    FederatedRun(config, components, RunDirectory(Path("unwritten-run-folder")), backend, fabric)


def _run_folder(config: ExperimentConfig, out_dir: str | Path, resume_dir: str | Path | None,
                backend: Backend) -> tuple[RunDirectory, bool]:
    """The run's folder, and whether the run starts from round 1 in it. A folder whose run was
    killed before its first checkpoint is started again, its partial outputs removed."""
    if resume_dir is None:
        path = RunDirectory.create(out_dir, config.name).path if backend.rank == 0 else None
        return RunDirectory(backend.broadcast(path)), True
    run_dir = RunDirectory(resume_dir)
    if CheckpointStore(run_dir.path).exists():
        return run_dir, False
    if not run_dir.config_file.is_file():
        raise ConfigError(f"--resume {resume_dir}: neither checkpoint.pt nor config.yaml there; is it a flcore run "
                          "folder?")
    if backend.rank == 0:
        run_dir.clear_outputs()
    return run_dir, True


def _finished(run_dir: RunDirectory, config: ExperimentConfig, backend: Backend) -> RunResult:
    """A resumed run that has nothing left to do: its records stay as they are."""
    from flcore.engine.rundir import read_csv

    summary_file = run_dir.path / "summary.json"
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    summary["already_finished"] = True
    history = read_csv(run_dir.path / "metrics.csv") if (run_dir.path / "metrics.csv").is_file() else []
    if backend.rank == 0:
        print(f"{run_dir.path}: all {config.federation.rounds} rounds are done; nothing to resume (extend the run "
              "with --set federation.rounds=N).", file=sys.stderr)
    return RunResult(run_dir.path, history, summary, {}, rank=backend.rank)


def _stopped_message(run: FederatedRun, what: str) -> str:
    folder = run.run_dir.path
    if run.checkpointed_round:
        kept = f"{folder} holds the checkpoint after round {run.checkpointed_round}"
    else:
        kept = f"{folder} holds no checkpoint yet, so the run will start again from round 1"
    return f"{what} in round {run.next_round + 1} of {run.federation.rounds}. {kept}; continue with: flcore run --resume {folder}"
