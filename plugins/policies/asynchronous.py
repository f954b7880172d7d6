"""Asynchronous FL on the virtual clock: FedAsync (Xie et al. 2019) and FedBuff (Nguyen et al. 2022).

A round is one server step. At its start, agents still training are unavailable, and the policy
starts new agents on the free slots of ``concurrency`` (a random subset of the sampler's choice, so
the sampler's count is an upper bound: ``sampler: {name: uniform, fraction: 1}`` lets every free
slot be filled). A started agent trains from the current global model at once, and its update is
held (``deferred``) until the virtual clock reaches its arrival: the round's start plus the agent's
download, compute and upload time on the device profile. The policy then advances the clock through
arrivals, earliest first (ties in the order agents started), until ``buffer`` updates have arrived
(FedAsync: one); those reach the strategy in this round, their staleness ``tau`` being the server
steps since their agent started. A slot freed while the buffer fills is used at the next step.

- FedAsync: the update of an agent that started from ``x_tau`` becomes
  ``alpha * s(tau) * (x_tau + delta - x)``, so that a mean-based strategy (fedavg) makes
  ``x <- (1 - alpha_t) x + alpha_t (x_tau + delta)`` with ``alpha_t = alpha * s(tau)``.
- FedBuff: each update is scaled by ``s(tau)``; ``fedavg`` with ``weighted: false`` and
  ``server_lr: eta_g`` then makes the paper's ``x <- x + eta_g * mean_k s(tau_k) delta_k``.

Staleness weights ``s``: ``constant`` 1; ``polynomial`` ``(1 + tau)^-a``; ``hinge`` 1 for
``tau <= b``, else ``1 / (a (tau - b) + 1)``. Updates in flight, the models they started from and
the buffer are server state: checkpointed, so a killed run resumes bit-identically. Updates still in
flight when the run ends are discarded.
"""

from __future__ import annotations

import bisect
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from flcore.aggregation import Aggregator
from flcore.devices import result_seconds
from flcore.params import ComponentParams
from flcore.policy import PolicySetup, RoundPolicy
from flcore.protocol import AgentResult, AgentStatus, RoundContext


def staleness_weight(kind: str, staleness: np.ndarray, a: float, b: float) -> np.ndarray:
    """``s(tau)`` for each staleness: constant, polynomial ``(1 + tau)^-a`` or hinge."""
    tau = np.asarray(staleness, dtype=np.float64)
    if kind == "constant":
        return np.ones_like(tau)
    if kind == "polynomial":
        return (1.0 + tau) ** -a
    return np.where(tau <= b, 1.0, 1.0 / (a * (tau - b) + 1.0))


class AsyncParams(ComponentParams):
    concurrency: int = Field(10, gt=0, description="Agents training at once.")
    staleness: Literal["constant", "polynomial", "hinge"] = Field(
        "polynomial", description="Staleness weight s(tau): constant 1, polynomial (1+tau)^-a, hinge 1 up to b "
        "then 1/(a(tau-b)+1).")
    a: float = Field(0.5, ge=0, description="Exponent (polynomial) or slope (hinge) of the staleness weight.")
    b: float = Field(4.0, ge=0, description="hinge: the staleness up to which updates count fully.")
    server_seconds: float = Field(0.0, ge=0, description="Virtual seconds the server adds to every step.")
    idle_seconds: float = Field(60.0, ge=0, description="Virtual seconds a round lasts when no agent started or "
                                "arrived (nobody online), so that the clock moves on.")


class AsyncPolicy(RoundPolicy):
    """Agents in flight on the virtual clock, a server step every ``buffer_size`` arrivals."""

    Params = AsyncParams
    buffer_size = 1

    def __init__(self, params: AsyncParams) -> None:
        super().__init__(params)
        self.step = 0  # server steps so far: the version of the global model
        self.started = 0  # agents started so far: breaks ties between equal arrival times
        self.in_flight: list[dict[str, Any]] = []  # sorted by (arrival, order)
        self.buffer: list[dict[str, Any]] = []  # arrived, waiting for the buffer to fill

    # ---------------------------------------------------------------------------- phases
    def availability(self, context: RoundContext, available: np.ndarray | None) -> np.ndarray | None:
        if not self.in_flight:
            return available
        busy = np.array([record["agent"] for record in self.in_flight], dtype=np.int64)
        if available is None:
            free = np.ones(len(context.population), dtype=bool)
            free[busy] = False
            return np.flatnonzero(free)
        return available[~np.isin(available, busy)]

    def narrow_selection(self, context: RoundContext, selected: np.ndarray) -> np.ndarray:
        slots = self.params.concurrency - len(self.in_flight)
        if len(selected) <= slots:
            return selected
        keep = np.sort(context.rng(self, 0).choice(len(selected), size=max(slots, 0), replace=False))
        return selected[keep]

    def on_results(self, context: RoundContext, results: list[AgentResult]) -> None:
        setup: PolicySetup = self.setup_
        started = [r for r in results if r.status.accepted]
        seconds = result_seconds(setup.devices, context.population, started, setup.model_bytes, setup.dense_bytes)
        if started:
            self.remember_start(context)
        for result, s in zip(started, seconds.tolist()):
            self._hold(result, context.clock + s)
        clock, arrived = context.clock, 0
        while self.in_flight and len(self.buffer) < self.buffer_size:
            record = self.in_flight.pop(0)
            clock = max(clock, record["arrival"])
            self.buffer.append(record)
            arrived += 1
        if len(self.buffer) >= self.buffer_size:
            results.extend(self._release(context, self.buffer))
            self.buffer = []
            self.step += 1
            self.forget_starts()
            clock += self.params.server_seconds
        elif not started and not arrived:
            clock += self.params.idle_seconds
        context.log(self, "in_flight", len(self.in_flight))
        context.clock = clock

    # ---------------------------------------------------------------------------- the updates
    def remember_start(self, context: RoundContext) -> None:
        """Agents start from the current model (FedAsync keeps it, to mix it in when they arrive)."""

    def transform(self, context: RoundContext, record: dict[str, Any], weight: float) -> torch.Tensor:
        """The update that reaches the strategy for an arrived ``record`` of staleness weight ``weight``."""
        raise NotImplementedError

    def _hold(self, result: AgentResult, arrival: float) -> None:
        record = {"agent": result.agent_id, "version": self.step, "order": self.started, "arrival": float(arrival),
                  "status": result.status.value, "num_samples": int(result.num_samples), "metrics": dict(result.metrics),
                  "buffers": dict(result.buffers), "steps": int(result.steps), "epochs": int(result.epochs),
                  "state": dict(result.state), "extra": dict(result.extra), "upload_bytes": result.upload_bytes,
                  "delta": result.delta.detach()}
        self.started += 1
        keys = [(r["arrival"], r["order"]) for r in self.in_flight]
        self.in_flight.insert(bisect.bisect(keys, (record["arrival"], record["order"])), record)
        result.status, result.delta = AgentStatus.DEFERRED, None
        result.reason = f"in flight until {arrival:.6g} s"

    def _release(self, context: RoundContext, records: list[dict[str, Any]]) -> list[AgentResult]:
        staleness = np.array([self.step - r["version"] for r in records], dtype=np.int64)
        weights = staleness_weight(self.params.staleness, staleness, self.params.a, self.params.b)
        context.log(self, "staleness", float(staleness.mean()))
        context.log(self, "staleness_max", int(staleness.max()))
        released = []
        for record, weight in zip(records, weights.tolist()):
            delta = self.transform(context, record, weight)
            released.append(AgentResult(record["agent"], delta, record["num_samples"], record["metrics"],
                                        record["buffers"], status=AgentStatus(record["status"]), steps=record["steps"],
                                        epochs=record["epochs"], state=record["state"], extra=record["extra"],
                                        reason=f"arrived with staleness {self.step - record['version']}",
                                        upload_bytes=record["upload_bytes"]))
        return released

    def forget_starts(self) -> None:
        """Drop what no update in flight or buffered needs any more."""

    # ---------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "started": self.started, "in_flight": _encode(self.in_flight),
                "buffer": _encode(self.buffer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.started = int(state["step"]), int(state["started"])
        self.in_flight, self.buffer = _decode(state["in_flight"]), _decode(state["buffer"])


_NUMPY = "__numpy__"


def _encode(value: Any) -> Any:
    """Held results as ``torch.load(weights_only=True)`` reads them: NumPy arrays and scalars (per-agent
    state read from columns) become tagged tensors, decoded to the same type and dtype."""
    if isinstance(value, (np.ndarray, np.generic)) and not isinstance(value, np.str_):
        return {_NUMPY: torch.from_numpy(np.array(value)), "scalar": isinstance(value, np.generic)}
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v) for v in value)
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict):
        if _NUMPY in value:
            array = value[_NUMPY].numpy().copy()
            return array[()] if value["scalar"] else array
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    return value


class FedAsyncParams(AsyncParams):
    alpha: float = Field(0.6, gt=0, le=1, description="Mixing weight of a fresh update (alpha_t = alpha * s(tau)).")


class FedAsync(AsyncPolicy):
    """One update per server step, mixed in as ``x <- (1 - alpha_t) x + alpha_t x_new``."""

    Params = FedAsyncParams
    buffer_size = 1

    def __init__(self, params: FedAsyncParams) -> None:
        super().__init__(params)
        self.models: dict[int, torch.Tensor] = {}  # version -> global model, while an agent started from it

    def check_strategy(self, strategy: Aggregator) -> str | None:
        if not getattr(strategy, "mean_based", False):
            return (f"FedAsync mixes each update into the model through the mean of the round's one update, and "
                    f"{type(strategy).__name__} is not mean-based (use fedavg)")
        return None

    def remember_start(self, context: RoundContext) -> None:
        self.models.setdefault(self.step, context.global_vector.detach().clone())

    def transform(self, context: RoundContext, record: dict[str, Any], weight: float) -> torch.Tensor:
        current = context.global_vector
        start = self.models[record["version"]].to(current.device)
        alpha = self.params.alpha * weight
        return alpha * (start + record["delta"].to(current.device) - current)

    def forget_starts(self) -> None:
        needed = {r["version"] for r in self.in_flight + self.buffer}
        self.models = {v: m for v, m in self.models.items() if v in needed}

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"models": self.models}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.models = {int(v): m for v, m in state["models"].items()}


class FedBuffParams(AsyncParams):
    buffer: int = Field(10, gt=0, description="K: updates per server step.")
    concurrency: int = Field(20, gt=0, description="Agents training at once (at least buffer).")

    @model_validator(mode="after")
    def _room_for_a_buffer(self) -> FedBuffParams:
        if self.concurrency < self.buffer:
            raise ValueError(f"concurrency = {self.concurrency} is below buffer = {self.buffer}: the buffer could never "
                             "fill; expected concurrency >= buffer")
        return self


class FedBuff(AsyncPolicy):
    """A server step every ``buffer`` arrivals, each update scaled by its staleness weight."""

    Params = FedBuffParams

    @property
    def buffer_size(self) -> int:  # type: ignore[override]
        return self.params.buffer

    def transform(self, context: RoundContext, record: dict[str, Any], weight: float) -> torch.Tensor:
        return weight * record["delta"].to(context.global_vector.device)
