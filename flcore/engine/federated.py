"""The federated round loop: sample, train locally, aggregate, evaluate, log, checkpoint.

Everything a round does is in :meth:`FederatedRun.run_round`, top to bottom. Random streams come from
:mod:`flcore.engine.seeding`, so a run resumed from any checkpoint ends with the same weights as one
that was never interrupted.
"""

from __future__ import annotations

import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from flcore.agents import AgentPopulation
from flcore.aggregation import ClientUpdate
from flcore.config import config_to_dict
from flcore.engine import seeding
from flcore.engine.buffers import average_buffers
from flcore.engine.checkpoint import load_torch, save_torch
from flcore.engine.evaluation import evaluate
from flcore.engine.local import AgentFailure, LocalTrainer, diverged
from flcore.engine.observers import build_loggers, build_profiler, log_run_artifacts, memory_stats
from flcore.engine.rundir import RunDirectory, partition_record
from flcore.engine.runtime import build_fabric, check_distributable, single_device_fabric
from flcore.errors import ConfigError, RunFailure
from flcore.training import lr_factor

if TYPE_CHECKING:
    from flcore.experiment import Experiment, RunResult

CHECKPOINT_FORMAT = 1


class FederatedRun:
    """The state of one federated run, built from an :class:`~flcore.experiment.Experiment`."""

    def __init__(self, experiment: Experiment, run_dir: RunDirectory, progress: bool | None, fabric: Any,
                 exchange: Any = None) -> None:
        config = experiment.config
        self.config = config
        self.federation = config.federation
        self.seed = config.seed
        self.run_dir = run_dir
        parts = experiment.components

        self.data = parts["dataset"].build()
        seeding.seed_torch(self.seed, seeding.INIT)
        with parts["model"].rejecting():
            self.model = parts["model"].build(self.data.spec)
        partitioner = parts["partitioner"].build()
        with parts["partitioner"].rejecting():
            self.partition = partitioner.split(
                self.data.train_labels, self.federation.agents, seeding.numpy_rng(self.seed, seeding.PARTITION),
                self.data.groups,
            )
        if self.partition.num_agents != self.federation.agents:
            raise RunFailure(
                f"partitioner '{parts['partitioner'].component.name}' returned {self.partition.num_agents} "
                f"shards for federation.agents = {self.federation.agents}"
            )
        self.metadata = [r.build() for r in parts["agent_metadata"]]
        self.population = AgentPopulation(self.partition, [f for m in self.metadata for f in m.fields()])
        self.sampler = parts["sampler"].build()
        self.aggregator = parts["aggregator"].build()
        self.training = self.aggregator.configure_training(config.training)

        self.fabric = fabric
        self.exchange = exchange
        if exchange is not None:
            check_distributable(self.aggregator, parts["aggregator"].component.name)
        self.is_main = fabric.global_rank == 0
        x, y = self.data.x_train, self.data.y_train
        local_fabric = single_device_fabric(fabric, config.runtime) if exchange is not None else fabric
        if self.fabric.device.type != "cpu":
            x, y = x.to(self.fabric.device), y.to(self.fabric.device)
        self.trainer = LocalTrainer(local_fabric, self.model, x, y, self.data.transform, self.seed)
        self.vectorized = None
        if self.federation.backend == "vectorized":
            from flcore.engine.vectorized import Unsupported, VectorizedTrainer, check_supported

            try:
                check_supported(self.model, self.training, self.aggregator)
                self.vectorized = VectorizedTrainer(self.model, x, y, self.data.transform, self.seed, self.fabric.device)
            except Unsupported as exc:
                warnings.warn(f"the vectorized backend cannot train this experiment ({exc}); "
                              "falling back to sequential", stacklevel=1)
        self.global_vector = self.trainer.global_vector()
        self.global_buffers = self.trainer.buffer_state()
        self.times_selected = np.zeros(self.federation.agents, dtype=np.int64)
        self.history: list[dict[str, Any]] = []
        self.next_round = 0

        self.loggers = build_loggers(config.logging.loggers, run_dir.logs, config.name) if self.is_main else []
        self.agent_logger = None
        if config.logging.agent_metrics and self.is_main:
            from lightning.pytorch.loggers import CSVLogger

            self.agent_logger = CSVLogger(str(run_dir.logs), name="agents")
        self.profiler = build_profiler(config.logging.profiler if self.is_main else None, run_dir.path)
        self.agent_log_step = 0
        self.setup_seconds = 0.0
        self.show_progress = sys.stderr.isatty() if progress is None else progress
        if config.logging.progress != "auto":
            self.show_progress = config.logging.progress == "on"
        self.show_progress = self.show_progress and self.is_main  # one bar, not one per process

    # -------------------------------------------------------------------------------- rounds
    def run_round(self, r: int) -> dict[str, Any]:
        """One round: sample, train each sampled agent, aggregate, evaluate, log, checkpoint."""
        federation, profile = self.federation, self.profiler.profile
        started = time.perf_counter()
        with profile("sample"):
            selected = np.asarray(
                self.sampler.sample(self.population, r, seeding.numpy_rng(self.seed, seeding.SAMPLING, r))
            )
        self._check_selection(selected, r)
        self.times_selected[selected] += 1
        lr = self.training.optimizer.lr * lr_factor(self.training.scheduler, r, federation.rounds)

        local_metrics = [self._evaluate_on_shard(a) for a in selected.tolist()] if self.config.evaluation.local else []
        with profile("local_train"):
            updates, failed = self._train_selected(selected.tolist(), r, lr)

        with profile("aggregate"):
            if updates:
                self.global_vector = self.aggregator.aggregate(self.global_vector, updates, r)
                if federation.buffers == "weighted_mean":
                    self.global_buffers = average_buffers(self.global_buffers, updates)
            for component in self.metadata:
                component.on_round_end(self.population, r, updates)

        row: dict[str, Any] = {"round": r + 1, "selected": len(selected), "skipped": len(failed), "lr": lr}
        if updates:
            weights = np.array([u.num_samples for u in updates], dtype=np.float64)
            row["train_loss"] = float(np.average([u.metrics["loss"] for u in updates], weights=weights))
        if local_metrics:
            row["local_loss"] = float(np.mean([m["loss"] for m in local_metrics]))
            row["local_acc"] = float(np.mean([m["acc"] for m in local_metrics]))
        last = r + 1 == federation.rounds
        if ((r + 1) % self.config.evaluation.every == 0 or last) and self.is_main:
            with profile("evaluate"):
                self.trainer.load(self.global_vector, self.global_buffers)
                metrics = evaluate(self.trainer.model, self.data.x_test, self.data.y_test, self.data.transform,
                                   self.config.evaluation.batch_size, self.fabric.device)
            row["test_loss"], row["test_acc"] = metrics["loss"], metrics["acc"]
        row["agents_seen"] = int((self.times_selected > 0).sum())
        row.update(memory_stats(self.fabric.device))

        with profile("log"):
            for logger in self.loggers:
                logger.log_metrics({k: v for k, v in row.items() if k != "round"}, step=r + 1)
            self.history.append(row)
            if self.is_main:
                self.run_dir.write_csv("metrics.csv", self.history)
        self.next_round = r + 1
        if ((r + 1) % self.config.checkpoint.every == 0 or last) and self.is_main:
            with profile("checkpoint"):
                save_torch(self.state_dict(), self.run_dir.checkpoint)
        row["seconds"] = time.perf_counter() - started  # the whole round; metrics.csv gets it next write
        return row

    def _train_selected(self, agents: list[int], r: int, lr: float) -> tuple[list[ClientUpdate], list[int]]:
        """Train the round's agents; apply the failure policy to any that raise or diverge."""
        log = self._log_agent_epoch if self.agent_logger or self.loggers else None
        if self.vectorized is not None:
            batch = self.vectorized.train_agents(agents, r, self.population, self.global_vector, self.training,
                                                 lr, log)
            results: list[ClientUpdate | AgentFailure] = []
            for update in batch:
                loss = update.metrics["loss"]
                results.append(AgentFailure.non_finite(update.agent_id, r, loss) if diverged(loss, update.delta)
                               else update)
        else:
            results = []
            mine = self.exchange.mine(agents) if self.exchange else agents
            records: list[dict] = []
            if self.exchange is not None:
                log = records.append
            for agent in mine:
                try:
                    results.append(self.trainer.train_agent(agent, r, self.population, self.global_vector,
                                                            self.global_buffers, self.training, lr, self.aggregator, log))
                except Exception as exc:  # the failure policy decides; never a bare traceback
                    results.append(exc if isinstance(exc, AgentFailure) else AgentFailure(agent, r, repr(exc), exc))
            if self.exchange is not None:
                results, records = self.exchange.gather(agents, results, records, self.global_vector,
                                                        self.global_buffers)
                if self.is_main and (self.agent_logger or self.loggers):
                    for record in records:
                        self._log_agent_epoch(record)
        updates, failed = [], []
        for result in results:
            if isinstance(result, AgentFailure):
                result.round_index = r + 1
                if self.federation.on_agent_failure == "fail":
                    raise RunFailure(f"{result}. Set federation.on_agent_failure=skip to drop such updates instead."
                                     ) from result.cause
                warnings.warn(f"skipping update: {result}", stacklevel=1)
                failed.append(result.agent_id)
                continue
            if self.aggregator.streaming:
                self.aggregator.accumulate(result)
                result.delta = None  # the running sum holds it now
            updates.append(result)
        return updates, failed

    def _check_selection(self, selected: np.ndarray, r: int) -> None:
        if selected.ndim != 1 or len(np.unique(selected)) != len(selected) or (
            len(selected) and (selected.min() < 0 or selected.max() >= len(self.population))
        ):
            raise RunFailure(
                f"sampler '{self.federation.sampler.name}' returned an invalid selection in round {r + 1}: "
                f"expected distinct agent ids in [0, {len(self.population)}), got {selected[:10].tolist()}..."
            )

    def _evaluate_on_shard(self, agent: int) -> dict[str, float]:
        self.trainer.load(self.global_vector, self.global_buffers)
        shard = torch.from_numpy(self.population.shard(agent))
        return evaluate(self.trainer.model, self.data.x_train[shard], self.data.y_train[shard],
                        self.data.transform, self.config.evaluation.batch_size, self.fabric.device)

    def _log_agent_epoch(self, record: dict[str, float]) -> None:
        self.agent_log_step += 1
        if self.agent_logger is not None:
            self.agent_logger.log_metrics(dict(record), step=self.agent_log_step)
        step = record["round"] * self.training.epochs + record["epoch"]
        scalars = {f"agent_{record['agent']}/train_loss": record["loss"],
                   f"agent_{record['agent']}/train_acc": record["acc"]}
        for logger in self.loggers:
            if type(logger).__name__ != "CSVLogger":
                logger.log_metrics(scalars, step=int(step))

    # -------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs; random streams are derived from seed and round."""
        population = self.population.state_dict()
        return {
            "format": CHECKPOINT_FORMAT,
            "next_round": self.next_round,
            "global_vector": self.global_vector.detach().cpu(),
            "global_buffers": {k: v.detach().cpu() for k, v in self.global_buffers.items()},
            "aggregator": self.aggregator.state_dict(),
            "sampler": self.sampler.state_dict(),
            "population": {"columns": {k: torch.from_numpy(v) for k, v in population["columns"].items()},
                           "objects": population["objects"]},
            "times_selected": torch.from_numpy(self.times_selected.copy()),
            "history": self.history,
            "torch_rng": torch.get_rng_state(),
            "agent_log_step": self.agent_log_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a checkpoint written by :meth:`state_dict`."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise RunFailure(f"checkpoint format {state.get('format')!r} is not supported (expected {CHECKPOINT_FORMAT})")
        device = self.fabric.device
        self.next_round = int(state["next_round"])
        self.global_vector = state["global_vector"].to(device)
        self.global_buffers = {k: v.to(device) for k, v in state["global_buffers"].items()}
        self.aggregator.load_state_dict(state["aggregator"])
        self.sampler.load_state_dict(state["sampler"])
        self.population.load_state_dict(
            {"columns": {k: v.numpy() for k, v in state["population"]["columns"].items()},
             "objects": state["population"]["objects"]}
        )
        self.times_selected = state["times_selected"].numpy().copy()
        self.history = list(state["history"])
        self.agent_log_step = int(state["agent_log_step"])
        torch.set_rng_state(state["torch_rng"])

    # -------------------------------------------------------------------------------- driver
    def run(self, stop_after_rounds: int | None = None) -> None:
        """Run the remaining rounds (at most ``stop_after_rounds`` of them)."""
        from tqdm.auto import tqdm

        rounds = range(self.next_round, self.federation.rounds)
        if stop_after_rounds is not None:
            rounds = rounds[:stop_after_rounds]
        bar = tqdm(total=self.federation.rounds, initial=self.next_round, desc="rounds",
                   disable=not self.show_progress, leave=False, dynamic_ncols=True)
        for r in rounds:
            row = self.run_round(r)
            bar.update(1)
            bar.set_postfix({k: f"{row[k]:.4f}" for k in ("train_loss", "test_acc") if k in row})
        bar.close()

    def finish(self, started: float) -> dict[str, Any]:
        """Write the final model, sampling counts, profiler summary and summary.json (rank 0)."""
        self.trainer.load(self.global_vector, self.global_buffers)
        if not self.is_main:
            return {"final": self.history[-1] if self.history else {}, "parameters": self.model.parameter_counts()}
        save_torch(self.model.state_dict(), self.run_dir.path / "model.pt")
        self.run_dir.write_csv("metrics.csv", self.history)
        self.run_dir.write_csv(
            "sampling.csv",
            ({"agent": a, "times_selected": int(t), "samples": int(n)}
             for a, (t, n) in enumerate(zip(self.times_selected, self.population.num_samples))),
        )
        for logger in self.loggers + ([self.agent_logger] if self.agent_logger else []):
            logger.finalize("success")
        self.profiler.describe()
        summary = {
            "rounds_completed": self.next_round,
            "final": self.history[-1] if self.history else {},
            "best_test_acc": max((h["test_acc"] for h in self.history if "test_acc" in h), default=None),
            "parameters": self.model.parameter_counts(),
            "seconds": time.perf_counter() - started,
            "setup_seconds": self.setup_seconds,
            "profile": self.profiler.summary() if hasattr(self.profiler, "recorded_durations") else "",
        }
        self.run_dir.write_json("summary.json", summary)
        log_run_artifacts(self.loggers, self.run_dir.path)
        return summary


def run_federated(
    experiment: Experiment,
    out_dir: str | Path,
    resume_dir: str | Path | None,
    progress: bool | None,
    stop_after_rounds: int | None,
) -> RunResult:
    """Build a :class:`FederatedRun` in a new (or resumed) folder, run it, and summarise it."""
    from flcore.experiment import RunResult

    started = time.perf_counter()
    config = experiment.config
    distributed = config.federation.backend == "distributed"
    fabric = build_fabric(config.runtime, distributed)
    exchange = None
    if distributed:
        from flcore.engine.distributed import UpdateExchange

        exchange = UpdateExchange(fabric)
    is_main = fabric.global_rank == 0
    if resume_dir is not None:
        run_dir = RunDirectory(resume_dir)
        if not run_dir.checkpoint.is_file():
            raise ConfigError(f"--resume {resume_dir}: no checkpoint.pt there to resume from.")
    else:
        path = RunDirectory.create(out_dir, config.name).path if is_main else None
        run_dir = RunDirectory(exchange.broadcast(path) if exchange else path)
        if is_main:
            run_dir.write_config(config_to_dict(config))
            run_dir.write_json("plugins.json", experiment.provenance())
    try:
        run = FederatedRun(experiment, run_dir, progress, fabric, exchange)
    except BaseException:
        if resume_dir is None and is_main:  # never leave a half-written run folder behind
            shutil.rmtree(run_dir.path, ignore_errors=True)
        raise
    if resume_dir is not None:
        run.load_state_dict(load_torch(run_dir.checkpoint))
    elif is_main:
        record = partition_record(run.partition, run.data.train_labels, run.data.num_classes)
        run_dir.write_json("partition.json", record)
        for logger in run.loggers:
            logger.log_hyperparams(config_to_dict(config) | {"partition": record["statistics"]})
    run.setup_seconds = time.perf_counter() - started
    run.run(stop_after_rounds)
    summary = run.finish(started)
    state = {k: v.detach().cpu() for k, v in run.model.state_dict().items()}
    return RunResult(run_dir.path, run.history, summary, state, rank=fabric.global_rank)
