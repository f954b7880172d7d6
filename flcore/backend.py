"""Execution backends: how a round's instructed agents are trained (``federation.backend``).

A backend launches the process(es) and the Lightning Fabric local training runs on
(:meth:`Backend.launch`), says whether it can train this experiment (:meth:`Backend.check`, which
names what blocks it), and trains a round (:meth:`Backend.train`), delivering one
:class:`~flcore.protocol.AgentResult` per instruction through ``deliver`` as soon as it has it (the
engine streams accepted updates into the strategy from there).

The built-ins are ``sequential`` (one reused model), ``vectorized`` (the round's agents at once with
``torch.func``) and ``distributed`` (agents spread over processes); a new backend is one module
plus an entry point. :class:`flcore.engine.local.LocalTrainer` is the reusable per-agent training
loop that runs the agent-side plugins.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Sequence

from flcore.protocol import AgentResult, Instruction, RoundComponent, RoundContext

if TYPE_CHECKING:
    import torch

    from flcore.agent_plugin import AgentPlugin
    from flcore.agents import AgentPopulation
    from flcore.aggregation import Aggregator
    from flcore.config import RuntimeConfig, TrainingConfig
    from flcore.models import ClassifierModule


class Unsupported(Exception):
    """A backend cannot train this experiment; the message names what blocks it."""


@dataclass
class TrainingSetup:
    """Everything a backend is handed to train agents.

    ``module`` is ``model`` set up on ``fabric`` (device, precision): train and evaluate through it.
    ``x`` and ``y`` are the training tensors (on the device when it is an accelerator);
    ``transform`` turns a stored batch into model inputs.
    """

    fabric: Any
    model: ClassifierModule
    module: Any
    x: torch.Tensor
    y: torch.Tensor
    transform: Callable[[torch.Tensor], torch.Tensor]
    seed: int
    training: TrainingConfig
    strategy: Aggregator
    agent_plugins: Sequence[AgentPlugin]
    population: AgentPopulation
    options: dict[str, Any] = field(default_factory=dict)


Deliver = Callable[[AgentResult], None]


class Backend(RoundComponent):
    """Base of execution backends; override :meth:`train` (and :meth:`launch` for processes).

    ``max_devices`` declares how many devices (``runtime.devices`` times ``runtime.num_nodes``) the
    backend can use: 1 for one process on one device, ``None`` for any number.
    """

    max_devices: int | None = 1

    def launch(self, runtime: RuntimeConfig) -> Any:
        """Start what the backend needs and return the Fabric that local training uses (one
        device). The default: one process, the configured accelerator and precision."""
        from flcore.engine.runtime import build_fabric

        return build_fabric(runtime)

    @property
    def rank(self) -> int:
        """This process's rank; only rank 0 writes the run folder."""
        return 0

    @property
    def world_size(self) -> int:
        return 1

    def broadcast(self, value: Any) -> Any:
        """Rank 0's ``value`` on every process (the run folder's path)."""
        return value

    def check(self, setup: TrainingSetup) -> None:
        """Raise :class:`Unsupported` naming what this backend cannot train (an agent-side plugin,
        an optimizer, a layer). Called once, before any round."""

    def prepare(self, setup: TrainingSetup) -> None:
        """Build what training needs (called after :meth:`check` passed)."""
        self.setup_ = setup

    def train(self, context: RoundContext, instructions: Sequence[Instruction], deliver: Deliver) -> None:
        """Train every instructed agent from ``context.global_vector`` and ``context.global_buffers``
        and call ``deliver`` once per instruction, in any order (a failed agent gets a failed
        result, a non-participating one a dropped result)."""
        raise NotImplementedError

    def fallback(self) -> Backend | None:
        """A backend to use instead when :meth:`check` fails and the user did not ask for strict
        behaviour (``None``: the run stops with exit code 2)."""
        return None
