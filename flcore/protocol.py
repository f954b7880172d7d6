"""The round protocol: what every component sees of a round, and in which order.

A round is a fixed sequence of named phases (docs/concepts.md):

0. **available**: components narrow the set of agents that can be selected this round
   (availability models, agents still busy on an asynchronous clock);
1. **select**: the sampler chooses agents among the available ones (components may then narrow
   the selection: an asynchronous policy starts only as many agents as it has free slots);
2. **instruct**: one :class:`Instruction` per selected agent (epochs or a step budget, a
   learning-rate scale, participate or drop, a deadline, free key-values for plugins), which
   components edit in :meth:`RoundComponent.configure_round`;
3. **train**: the backend trains the instructed agents, running the agent-side plugins;
4. **results**: one :class:`AgentResult` per agent, completed, partial, dropped or failed, which
   components see (and may change) in :meth:`RoundComponent.on_results`;
5. **aggregate**: server plugins process each accepted update, the strategy combines them (it sees
   the failures too) into the next global weights plus metrics, and server plugins process the
   aggregate;
6. **evaluate and record**: the global model is evaluated, components add their metrics to the
   round's row (namespaced by component), state is checkpointed.

Every component kind derives from :class:`RoundComponent`, so any of them can take part in any
phase; the engine calls a phase only on the components that override it.
"""

from __future__ import annotations

import enum
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from flcore.agents import AgentField, AgentPopulation
from flcore.params import ComponentParams, NoParams

if TYPE_CHECKING:
    import torch


class AgentStatus(str, enum.Enum):
    """How an agent's part in a round ended."""

    COMPLETED = "completed"  # did what it was instructed to do
    PARTIAL = "partial"  # did less (a deadline, a straggler) but its update is kept
    DROPPED = "dropped"  # did not take part, or its update is discarded (late, offline)
    FAILED = "failed"  # raised, or produced non-finite weights
    DEFERRED = "deferred"  # held by a component for a later round (still in flight on a virtual clock)

    @property
    def accepted(self) -> bool:
        """Whether the update reaches the server."""
        return self in (AgentStatus.COMPLETED, AgentStatus.PARTIAL)


@dataclass
class Instruction:
    """What the server tells one agent before it trains.

    The engine fills the defaults from ``training``; components edit them in
    :meth:`RoundComponent.configure_round`. ``extra`` carries free key-values (by convention
    ``"<component>/<key>"``) from server-side components to agent-side plugins, such as SCAFFOLD's
    server control variate.
    """

    agent_id: int
    epochs: int
    max_steps: int | None = None
    lr_scale: float = 1.0
    participate: bool = True
    deadline: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class AgentResult:
    """What one agent's part in a round produced.

    ``delta`` is ``W_local - W_global`` over the trainable parameters (the paper's equation 1).
    ``steps`` and ``epochs`` are the local optimizer steps and epochs actually taken. ``state`` holds
    the agent's per-agent state as written by agent-side plugins (the engine stores it in the
    population once the update is accepted); ``extra`` is what agent-side plugins send to the server.
    """

    agent_id: int
    delta: torch.Tensor | None
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    status: AgentStatus = AgentStatus.COMPLETED
    steps: int = 0
    epochs: int = 0
    state: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    reason: str = ""
    cause: BaseException | None = field(default=None, repr=False, compare=False)
    upload_bytes: int | None = None  # the update's size on the wire, set by a compression plugin (None: dense)

    @classmethod
    def failed(cls, agent_id: int, reason: str, num_samples: int = 0, cause: BaseException | None = None
               ) -> AgentResult:
        """The result of an agent whose training raised or diverged."""
        return cls(agent_id, None, num_samples, status=AgentStatus.FAILED, reason=reason, cause=cause)

    @classmethod
    def dropped(cls, agent_id: int, reason: str, num_samples: int = 0) -> AgentResult:
        """The result of an agent that did not take part."""
        return cls(agent_id, None, num_samples, status=AgentStatus.DROPPED, reason=reason)

    def drop(self, reason: str) -> None:
        """Discard this update (late, offline): the server will see it as a failure."""
        self.status, self.reason, self.delta = AgentStatus.DROPPED, reason, None


class AgentFailure(Exception):
    """Raised inside local training to fail one agent with a reason (the engine applies
    ``federation.on_agent_failure``)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Aggregate:
    """What a strategy returns: the next global weights, and metrics for the round's row."""

    vector: torch.Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    #: which accepted updates the strategy used, and with what share of the aggregate, by agent id
    #: (Krum: its one chosen update at 1.0), where it can tell; ``None`` where it cannot (a
    #: coordinate-wise median). Components read it in ``on_round_end`` as ``context.kept``.
    kept: dict[int, float] | None = None


@dataclass
class UpdateSum:
    """A sum-based strategy's running sum before it divides (:attr:`~flcore.aggregation.Aggregator.sum_based`):
    ``vector`` is ``sum_k w_k delta_k`` over the round's ``count`` accepted updates and ``weight``
    the denominator the strategy divides it by (``sum_k w_k`` unless a server plugin fixes it)."""

    vector: torch.Tensor
    weight: float
    count: int


def component_name(component: Any) -> str:
    """The name a component was configured under (the engine sets it), else its class name."""
    return getattr(component, "component_name", None) or type(component).__name__.lower()


@dataclass
class RoundContext:
    """What server-side phases see of the current round.

    ``index`` is 0-based; ``lr`` is the round's local learning rate after the schedule (an agent
    trains with ``lr * instruction.lr_scale``); ``available`` holds the ids that could be selected
    (``None``: every agent); ``failures`` the results that did not reach the server (filled after
    the results phase); ``metrics`` the component metrics of the round's row; ``data`` the run's
    dataset (an :class:`~flcore.data.ArrayDataModule`: ``x_train``, ``x_test``, ``transform``, ...);
    ``clock`` the virtual seconds of the run: when the round starts until the results phase, when it
    ends after it (the round policy advances it; it never goes back).
    """

    index: int
    rounds: int
    seed: int
    population: AgentPopulation
    global_vector: torch.Tensor
    global_buffers: dict[str, torch.Tensor] = field(default_factory=dict)
    lr: float = 0.0
    available: np.ndarray | None = None
    selected: np.ndarray | None = None
    data: Any = None
    instructions: list[Instruction] = field(default_factory=list)
    failures: list[AgentResult] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    trainer: Any = field(default=None, repr=False)
    kept: dict[int, float] | None = None  # the strategy's Aggregate.kept, after the aggregate phase
    clock: float = 0.0

    def train(self, indices: np.ndarray, instruction: Instruction | None = None) -> AgentResult:
        """Train the round's global model on the training samples ``indices`` on the server
        (FLTrust's root dataset, a server-side fine-tuning step), with no agent-side plugins;
        returns the result as an agent's would be (``agent_id`` -1, its delta from the global)."""
        if self.trainer is None:
            raise RuntimeError("server-side training is available during rounds only")
        return self.trainer(self, indices, instruction)

    def log(self, component: Any, key: str, value: float) -> None:
        """Add ``<component>/<key>`` to the round's row in metrics.csv and the loggers."""
        self.metrics[f"{component_name(component)}/{key}"] = float(value)

    def rng(self, component: Any, *keys: int) -> np.random.Generator:
        """A random stream for this component in this round, independent of every other stream
        and of how many numbers other components drew (so resume stays exact)."""
        return component_rng(self.seed, component, ROUND_STREAM, self.index, *keys)


SETUP_STREAM, ROUND_STREAM = 0, 1


def component_rng(seed: int, component: Any, *keys: int) -> np.random.Generator:
    """A NumPy generator keyed by the experiment seed, the component's name and ``keys``
    (non-negative integers): ``SETUP_STREAM`` for :meth:`RoundComponent.setup`, ``ROUND_STREAM`` and
    the round for :meth:`RoundContext.rng`."""
    from flcore.seeding import PLUGINS

    tag = zlib.crc32(component_name(component).encode("utf-8"))
    return np.random.default_rng(np.random.SeedSequence([seed, PLUGINS, tag, *keys]))


class AgentState(Mapping[str, Any]):
    """One agent's per-agent state during local training: reads come from the population, writes
    are recorded in the agent's result and stored by the engine once its update is accepted (so
    that every backend, including one whose agents train in other processes, carries them)."""

    def __init__(self, population: AgentPopulation, agent_id: int) -> None:
        self._population = population
        self._agent = agent_id
        self.written: dict[str, Any] = {}

    def __getitem__(self, name: str) -> Any:
        if name in self.written:
            return self.written[name]
        return self._population.get(name, self._agent)

    def __setitem__(self, name: str, value: Any) -> None:
        self._population.check_field(name)
        self.written[name] = value

    def __iter__(self) -> Iterator[str]:
        return iter(self._population.field_names())

    def __len__(self) -> int:
        return len(self._population.field_names())


@dataclass
class AgentContext:
    """What agent-side plugins see while one agent trains.

    ``score()`` returns the configured loss and the accuracy of the weights now in ``params`` on the
    agent's shard (eval mode, no gradient, no augmentation): called in ``on_agent_start`` it is the
    global model's loss on the agent's data, which q-FFL weighs agents by. ``None`` where the
    backend does not offer it (the vectorized one).
    """

    agent_id: int
    round_index: int
    instruction: Instruction
    params: list[torch.Tensor]
    global_params: list[torch.Tensor]
    lr: float
    num_samples: int
    state: AgentState
    model: Any = None
    steps: int = 0
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    score: Callable[[], dict[str, float]] | None = field(default=None, repr=False)
    fit: Callable[..., int] | None = field(default=None, repr=False)

    def send(self, component: Any, key: str, value: Any) -> None:
        """Send ``value`` to the server under ``<component>/<key>`` (in ``AgentResult.extra``)."""
        self.extra[f"{component_name(component)}/{key}"] = value


@dataclass(frozen=True)
class Requirement:
    """A component that another one needs in the run: FedProx's strategy needs the ``proximal``
    agent-side plugin, power-of-choice needs the ``participation`` metadata."""

    kind: str
    name: str
    params: Mapping[str, Any] = field(default_factory=dict)


class RoundComponent:
    """Base of every component that takes part in rounds: samplers, strategies, agent-side and
    server-side plugins, backends and agent metadata.

    Override only the phases you need; the engine skips phases a component does not override.
    """

    Params: type[ComponentParams] = NoParams
    component_name: str = ""

    def __init__(self, params: ComponentParams) -> None:
        self.params = params

    @classmethod
    def requirements(cls, params: ComponentParams) -> Sequence[Requirement]:
        """Other components this one needs in the run (resolved and validated with the config)."""
        return ()

    def state_fields(self) -> Sequence[AgentField]:
        """Per-agent state this component keeps in the population (checkpointed, carried by every
        backend). Only fields declared by the run's components exist."""
        return ()

    def setup(self, population: AgentPopulation, rng: np.random.Generator) -> None:
        """Called once when a run is built (before a checkpoint is restored): initialize per-agent
        state, for instance choose which agents are malicious, from the seeded ``rng``."""

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        """Instruct phase: edit the selected agents' instructions in place."""

    def availability(self, context: RoundContext, available: np.ndarray | None) -> np.ndarray | None:
        """Available phase: return the sorted ids that can be selected this round, a subset of
        ``available`` (``None`` means every agent; return it unchanged to keep everyone)."""
        return available

    def on_results(self, context: RoundContext, results: list[AgentResult]) -> None:
        """Results phase: see every agent's result, completed or not; may change statuses
        (drop late agents) or accepted updates. Overriding it makes the engine hold every update
        of the round until this phase, instead of streaming them into the strategy."""

    def on_round_end(self, context: RoundContext, accepted: Sequence[AgentResult]) -> None:
        """After aggregation, with the accepted results (metadata updates, bookkeeping)."""

    def on_evaluate(self, context: RoundContext, evaluate: Callable[..., dict[str, float]]) -> None:
        """Evaluate phase: ``evaluate(x, y, vector=None, buffers=None)`` scores the new global model
        (or the weights ``vector``, a personal model say) on stored tensors such as
        ``context.data.x_test`` or a backdoor's triggered copy; log what it returns with
        ``context.log``. It runs on rank 0 only: do not change state here."""

    def state_dict(self) -> dict[str, Any]:
        """Server-side state to checkpoint: tensors, numbers, strings, containers of them."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    def check_run(self, plan: RunPlan) -> None:
        """Called once before round 1 with the run's facts: raise ``ValueError`` naming your
        parameter, its value and what was expected when this component cannot work in this run
        (Krum's ``byzantine`` too large for the cohort, a backdoor's target outside the classes).
        The run then exits with code 2, naming the component's config section."""

    def run_summary(self) -> dict[str, Any]:
        """What ``summary.json`` should state about this component when the run ends (a privacy
        guarantee, its epsilon): JSON values, under ``components`` by checkpoint key (empty: nothing)."""
        return {}

    def run_record(self) -> dict[str, Any]:
        """What a person should find in the run folder about this component once the run is built
        (an attack's malicious agents): JSON values, written to ``records.json`` (empty: nothing)."""
        return {}

    def stop_reason(self, next_round: int) -> str | None:
        """Before each round (0-based ``next_round``): a reason to end the run here, successfully
        (exit 0, the reason in summary.json), such as a privacy budget that the round could exceed;
        ``None`` to go on."""
        return None

    def narrow_selection(self, context: RoundContext, selected: np.ndarray) -> np.ndarray:
        """Select phase, after the sampler: return the agents that actually start this round, a
        subset of ``selected`` in its order (an asynchronous policy starts only as many as it has
        free slots); return ``selected`` to keep them all."""
        return selected


PHASES = ("setup", "availability", "configure_round", "on_results", "on_round_end", "on_evaluate", "narrow_selection",
          "stop_reason")


def overrides(component: Any, method: str, base: type = RoundComponent) -> bool:
    """Whether ``component`` implements ``method`` itself rather than inheriting ``base``'s."""
    own = getattr(type(component), method, None)
    return own is not None and own is not getattr(base, method, None)


def split_like(vector: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Views of a flat vector shaped like ``tensors`` (no copy)."""
    import torch

    return [chunk.view_as(t) for chunk, t in zip(torch.split(vector, [t.numel() for t in tensors]), tensors)]


@dataclass(frozen=True)
class RunPlan:
    """The facts of a run that components check before round 1 (:meth:`RoundComponent.check_run`).

    ``cohort`` is the most agents the sampler selects in a round, where it can tell
    (:meth:`flcore.sampling.Sampler.cohort_size`), else ``None``; ``data`` is the run's dataset (an
    :class:`~flcore.data.ArrayDataModule`: ``num_classes``, ``spec``, ``x_train``, ...); ``model``
    the run's ``torch.nn.Module`` (check a layer name against ``model.named_modules()``), ``None``
    where a check runs without building it (a sweep's cells before their first run); ``sampler``
    the run's sampler, to read its declared capabilities (``uniform``) and ``component_name``;
    ``training`` the run's ``training`` section (``batch_size``, ``epochs``, ``max_steps``), ``None``
    where a check runs without one; ``shard_sizes`` the agents' training-shard sizes (after
    ``evaluation.holdout``), ``None`` where not known yet.
    """

    agents: int
    rounds: int
    cohort: int | None
    data: Any
    model: Any = None
    sampler: Any = None
    training: Any = None
    shard_sizes: Any = None
