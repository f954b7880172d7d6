"""Synchronous rounds on the virtual clock: wait for everyone, a reporting deadline, over-selection.

An agent's time is its download, the samples it trained on and its upload, through the run's device
profile (:func:`flcore.devices.result_seconds`). A synchronous round lasts as long as the agents the
server waits for, plus ``server_seconds``; a round in which no agent was selected lasts
``idle_seconds``, so that the clock moves on and agents can come online.
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
from pydantic import Field

from flcore.devices import Work, planned_work, result_seconds, steps_within
from flcore.params import ComponentParams
from flcore.policy import PolicySetup, RoundPolicy
from flcore.protocol import AgentResult, AgentStatus, Instruction, RoundContext


class SynchronousParams(ComponentParams):
    server_seconds: float = Field(0.0, ge=0, description="Virtual seconds the server adds to every round "
                                  "(selection, aggregation).")
    idle_seconds: float = Field(60.0, ge=0, description="Virtual seconds a round lasts when no agent was selected "
                                "(nobody online), so that the clock moves on.")


class Synchronous(RoundPolicy):
    """Waits for every selected agent: the round lasts as long as the slowest accepted one. Keeps
    the strategy's streaming (it reads the accepted results after aggregation)."""

    Params = SynchronousParams

    def on_round_end(self, context: RoundContext, accepted: Sequence[AgentResult]) -> None:
        context.clock = context.clock + self.duration(context, accepted)

    def duration(self, context: RoundContext, accepted: Sequence[AgentResult]) -> float:
        """The round's virtual seconds."""
        if context.selected is not None and len(context.selected) == 0:
            return self.params.idle_seconds
        seconds = self.agent_seconds(context, accepted)
        return self.params.server_seconds + (float(seconds.max()) if len(seconds) else 0.0)

    def agent_seconds(self, context: RoundContext, results: Sequence[AgentResult]) -> np.ndarray:
        """Each result's virtual seconds from the round's start."""
        setup: PolicySetup = self.setup_
        return result_seconds(setup.devices, context.population, results, setup.model_bytes, setup.dense_bytes)

    def predicted(self, context: RoundContext, instructions: Sequence[Instruction]) -> tuple[np.ndarray, np.ndarray,
                                                                                             np.ndarray]:
        """For each instruction: the steps and samples it asks for, and the seconds that takes."""
        setup: PolicySetup = self.setup_
        agents = np.array([i.agent_id for i in instructions], dtype=np.int64)
        n = context.population.num_samples[agents]
        steps, samples = planned_work(n, np.array([i.epochs for i in instructions]),
                                      np.array([i.max_steps or 0 for i in instructions]), setup.training.batch_size)
        seconds = setup.devices.seconds(context.population, agents, Work(samples, setup.model_bytes, setup.dense_bytes))
        return steps, samples, np.asarray(seconds, dtype=np.float64)


class DeadlineParams(SynchronousParams):
    deadline: float = Field(gt=0, description="Virtual seconds from a round's start by which an agent must report.")
    late: Literal["drop", "keep_partial"] = Field(
        "drop", description="drop: an agent that misses the deadline is dropped (FedAvg); keep_partial: it trains "
        "only the steps that fit before the deadline and its partial update is kept (FedProx).")


class Deadline(Synchronous):
    """A reporting deadline ``D``. ``drop``: agents that report after ``D`` are dropped, and the
    server waits until ``D`` if any was late. ``keep_partial``: each agent is given, before it trains,
    the step budget that fits before ``D`` on its device (an agent whose transfers alone miss it does
    not take part); its update is ``partial`` when that is fewer steps than instructed."""

    Params = DeadlineParams

    def prepare(self, setup: PolicySetup) -> None:
        super().prepare(setup)
        if self.params.deadline is not None:
            self._check_reachable(setup)

    def _check_reachable(self, setup: PolicySetup) -> None:
        """Raise if no agent can meet the deadline: with drop, doing all its work; with keep_partial,
        one step."""
        population, training = setup.population, setup.training
        agents = np.flatnonzero(population.num_samples > 0)
        if not len(agents):
            return
        n = population.num_samples[agents]
        steps, samples = planned_work(n, training.epochs, training.max_steps, training.batch_size)
        if self.params.late == "keep_partial":
            steps, samples = planned_work(n, 1, 1, training.batch_size)
        seconds = setup.devices.seconds(population, agents, Work(samples, setup.model_bytes, setup.dense_bytes))
        fastest = int(np.argmin(seconds))
        if seconds[fastest] > self.params.deadline:
            work = "all its local work" if self.params.late == "drop" else "a single step"
            raise ValueError(f"'deadline' = {self.params.deadline:g} s can be met by no agent: the fastest, agent "
                             f"{agents[fastest]}, needs {seconds[fastest]:.6g} s for {work} ({int(samples[fastest])} "
                             f"samples, {setup.model_bytes} bytes down, {setup.dense_bytes} bytes up); expected a "
                             "deadline at least that long")

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        self._planned: dict[int, int] = {}
        self._hopeless: set[int] = set()
        if not instructions:
            return
        for instruction in instructions:
            instruction.deadline = self.params.deadline
        steps, samples, seconds = self.predicted(context, instructions)
        self._planned = {i.agent_id: int(s) for i, s in zip(instructions, steps)}
        if self.params.late != "keep_partial" or self.params.deadline is None:
            return
        late = np.flatnonzero(seconds > self.params.deadline)
        if not len(late):
            return
        setup: PolicySetup = self.setup_
        agents = np.array([instructions[i].agent_id for i in late], dtype=np.int64)
        fit = setup.devices.samples_within(context.population, agents, self.params.deadline, setup.model_bytes,
                                           setup.dense_bytes, most=samples[late])
        budget = np.minimum(steps_within(context.population.num_samples[agents], fit, setup.training.batch_size),
                            steps[late])
        for i, steps_fit in zip(late.tolist(), budget.tolist()):
            if steps_fit <= 0:
                instructions[i].participate = False
                self._hopeless.add(instructions[i].agent_id)
            else:
                instructions[i].max_steps = int(steps_fit)

    def on_results(self, context: RoundContext, results: list[AgentResult]) -> None:
        self._waited = False
        accepted = [r for r in results if r.status.accepted]
        seconds = self.agent_seconds(context, accepted)
        deadline = self.params.deadline
        self._seconds = {}
        for result, s in zip(accepted, seconds.tolist()):
            if deadline is not None and s > deadline:
                result.drop(f"late: reported {s:.6g} s into the round, after the deadline of {deadline:g} s")
                self._waited = True
                continue
            self._seconds[result.agent_id] = s
            if result.steps < self._planned.get(result.agent_id, result.steps):
                result.status = AgentStatus.PARTIAL
                result.reason = f"did {result.steps} of {self._planned[result.agent_id]} steps before the deadline"
        for result in results:
            if result.agent_id in self._hopeless:
                result.reason = "its transfers alone would take it past the deadline"

    def duration(self, context: RoundContext, accepted: Sequence[AgentResult]) -> float:
        if context.selected is not None and len(context.selected) == 0:
            return self.params.idle_seconds
        if self._waited:  # someone was late: the server waited until the deadline
            return self.params.server_seconds + float(self.params.deadline)
        reported = [self._seconds[r.agent_id] for r in accepted if r.agent_id in self._seconds]
        return self.params.server_seconds + (max(reported) if reported else 0.0)


class OverSelectionParams(DeadlineParams):
    keep: int = Field(gt=0, description="K: the round ends when K agents have reported; later ones are dropped. "
                      "Select more (the sampler's count, e.g. 1.3 K as Bonawitz et al.).")
    deadline: float | None = Field(None, gt=0, description="Also drop agents that report after this many virtual "
                                   "seconds (None: no deadline).")


class OverSelection(Deadline):
    """Over-selection (Bonawitz et al. 2019): the round closes as soon as ``keep`` agents reported;
    the rest are dropped. With a ``deadline``, fewer may be kept, and the round then ends at it."""

    Params = OverSelectionParams

    def on_results(self, context: RoundContext, results: list[AgentResult]) -> None:
        super().on_results(context, results)
        kept = sorted((r for r in results if r.status.accepted),
                      key=lambda r: (self._seconds[r.agent_id], r.agent_id))
        for result in kept[self.params.keep:]:
            result.drop(f"not among the first {self.params.keep} to report ({self._seconds[result.agent_id]:.6g} s)")
            del self._seconds[result.agent_id]
        if len(kept) >= self.params.keep:
            self._waited = False  # the K-th report closed the round before the deadline
