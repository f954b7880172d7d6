"""The ``vectorized`` backend component: what it can train, and a round in memory-sized chunks."""

from __future__ import annotations

import logging
import math
import warnings
from typing import Sequence

from flcore_plugins.backends.sequential import SequentialBackend
from flcore_plugins.backends.vectorized.functional import FunctionalModel, blocking_layer
from flcore_plugins.backends.vectorized.lockstep import Lockstep
from flcore_plugins.backends.vectorized.memory import chunk_capacity, device_budget
from flcore_plugins.backends.vectorized.optimizers import OPTIMIZERS
from pydantic import Field

from flcore.backend import Backend, Deliver, TrainingSetup, Unsupported
from flcore.engine.local import plugins_overriding
from flcore.engine.weights import flatten
from flcore.params import ComponentParams
from flcore.protocol import AgentResult, Instruction, RoundContext

log = logging.getLogger(__name__)

MIB = 2**20


class VectorizedParams(ComponentParams):
    strict: bool = Field(False, description="Exit with code 2, instead of falling back to sequential with a "
                         "warning, when the experiment cannot be vectorized.")
    chunk_size: int | None = Field(None, gt=0, description="Agents trained at once; None: as many as fit in the "
                                   "memory budget, measured with a one-agent probe step.")
    memory_fraction: float = Field(0.8, gt=0, le=1, description="Share of the device's free memory (CPU: the "
                                   "system's available memory) the agents of a chunk may take.")
    memory_budget_mib: float | None = Field(None, gt=0, description="The memory a chunk may take, in MiB, instead "
                                            "of memory_fraction of the free memory.")


class VectorizedBackend(Backend):
    """Trains a round's agents in lockstep on one device, in chunks that fit its memory."""

    Params = VectorizedParams

    def check(self, setup: TrainingSetup) -> None:
        training = setup.training
        if training.optimizer.name not in OPTIMIZERS:
            raise Unsupported(f"optimizer '{training.optimizer.name}' (vectorized: {', '.join(OPTIMIZERS)})")
        precision = setup.fabric.strategy.precision
        if getattr(precision, "scaler", None) is not None:
            raise Unsupported(f"runtime.precision '{precision.precision}' (its gradient scaler; use bf16-mixed)")
        for plugin in setup.agent_plugins:
            if not plugin.vectorizable:
                why = f" ({plugin.not_vectorizable_because})" if plugin.not_vectorizable_because else ""
                raise Unsupported(f"agent-side plugin '{plugin.component_name}' does not declare vectorizable{why}")
        for plugin in plugins_overriding(list(setup.agent_plugins), "before_step"):
            raise Unsupported(f"agent-side plugin '{plugin.component_name}' edits gradients in before_step")
        vectorized = plugins_overriding(list(setup.agent_plugins), "vectorized_gradients")
        for plugin in plugins_overriding(list(setup.agent_plugins), "compute_gradients"):
            if plugin not in vectorized:  # the vmapped step differentiates itself unless told how to combine
                raise Unsupported(f"agent-side plugin '{plugin.component_name}' implements compute_gradients but not "
                                  "vectorized_gradients")
        blocker = blocking_layer(setup.model)
        if blocker:
            raise Unsupported(blocker)
        sample = setup.transform(setup.x[: min(3, len(setup.x))])
        functional = FunctionalModel(setup.model, sample, precision)
        lockstep = Lockstep(setup, functional)
        try:
            lockstep.check_vmap(sample)
        except RuntimeError as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise Unsupported(f"the model cannot run under torch.func.vmap ({reason})") from None
        self.lockstep = lockstep

    def fallback(self) -> Backend | None:
        return None if self.params.strict else SequentialBackend(self.params)

    def prepare(self, setup: TrainingSetup) -> None:
        self.setup = setup
        if getattr(self, "lockstep", None) is None or self.lockstep.setup is not setup:
            self.check(setup)
        self.capacity, self.agent_mib, self.budget_mib = self._chunk_capacity(setup)
        self._warned = False

    def _chunk_capacity(self, setup: TrainingSetup) -> tuple[int, float | None, float | None]:
        """Agents per chunk: ``chunk_size``, or the budget over one agent's measured step."""
        if self.params.chunk_size is not None:
            return self.params.chunk_size, None, None
        batch = setup.training.batch_size or int(setup.population.num_samples.max())
        if self.lockstep.batches is not None:  # a plugin's batches vary in size (Poisson: sd below sqrt(batch))
            batch += math.ceil(4 * math.sqrt(batch))
        vector = flatten([p for p in setup.model.parameters() if p.requires_grad])
        agent = self.lockstep.agent_bytes(vector, batch)
        budget = device_budget(setup.fabric.device, self.params.memory_fraction, self.params.memory_budget_mib)
        capacity = chunk_capacity(budget, agent)
        log.info("vectorized: one agent's step takes %.1f MiB on %s; chunks of up to %d agents fit in %.0f MiB",
                 agent / MIB, setup.fabric.device, capacity, budget / MIB)
        return capacity, agent / MIB, budget / MIB

    def train(self, context: RoundContext, instructions: Sequence[Instruction], deliver: Deliver) -> None:
        population = self.setup.population
        ready: dict[int, AgentResult] = {}
        training: list[Instruction] = []
        for instruction in instructions:
            n = int(population.num_samples[instruction.agent_id])
            if not instruction.participate:
                ready[instruction.agent_id] = AgentResult.dropped(instruction.agent_id, "instructed not to take part", n)
            elif n == 0:
                ready[instruction.agent_id] = AgentResult.failed(instruction.agent_id, "its shard is empty")
            else:
                training.append(instruction)
        chunks = [training[s:s + self.capacity] for s in range(0, len(training), self.capacity)]
        context.log(self, "chunk_size", self.capacity)
        context.log(self, "chunks", len(chunks))
        if len(chunks) > 1 and not self._warned:
            self._warn_split(len(training))
        position = 0
        for chunk in chunks:  # deliver in instruction order as results come, so updates stream chunk by chunk
            for result in self.lockstep.train(context, chunk):
                ready[result.agent_id] = result
            while position < len(instructions) and instructions[position].agent_id in ready:
                deliver(ready.pop(instructions[position].agent_id))
                position += 1
        for instruction in instructions[position:]:
            deliver(ready.pop(instruction.agent_id))

    def _warn_split(self, agents: int) -> None:
        self._warned = True
        if self.agent_mib is None:
            why = "federation.backend.chunk_size"
        else:
            why = (f"one agent's step takes {self.agent_mib:.1f} MiB and the budget is {self.budget_mib:.0f} MiB; "
                   "set memory_fraction, memory_budget_mib or chunk_size to change it")
        warnings.warn(f"vectorized: {agents} agents train in chunks of up to {self.capacity} ({why})", stacklevel=2)
