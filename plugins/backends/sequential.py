"""The ``sequential`` backend: one reused model and optimizer per process, agents in order."""

from __future__ import annotations

from typing import Sequence

from flcore.backend import Backend, Deliver, TrainingSetup
from flcore.engine.local import LocalTrainer
from flcore.protocol import Instruction, RoundContext


class SequentialBackend(Backend):
    """Trains the round's agents one after another on the process's one model. Runs every
    agent-side plugin; fastest on a CPU."""

    def prepare(self, setup: TrainingSetup) -> None:
        self.trainer = LocalTrainer(setup)

    def train(self, context: RoundContext, instructions: Sequence[Instruction], deliver: Deliver) -> None:
        for instruction in instructions:
            deliver(self.trainer.run(context, instruction))
