"""The device-profile interface (``federation.device_profile``): how long an agent's round takes.

An agent's round on the virtual clock is

    download (the global model's bytes) + compute (the training samples it processed)
    + upload (its update's bytes, after any compression plugin: ``AgentResult.upload_bytes``)

and a device profile turns that work into seconds for each agent: :meth:`DeviceProfile.seconds`.
Profiles keep per-agent speeds in declared agent fields (drawn in ``setup`` from the seeded
generator, or read from a device trace), so they are checkpointed and identical on every process.
Everything works on arrays of agents at once.

The helpers :func:`planned_work` and :func:`steps_within` count, without training, the steps and
samples local training will take (the engine's loop: ``epochs`` passes over the shard in batches of
``batch_size``, stopped after ``max_steps``), so that a policy can predict an agent's time before it
trains and give it only the steps that fit before a deadline.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

from flcore.agents import AgentPopulation
from flcore.protocol import AgentResult, RoundComponent

if TYPE_CHECKING:
    import torch


@dataclass
class Work:
    """What each agent of ``agents`` does in a round: samples processed (a sample seen twice counts
    twice), and bytes downloaded and uploaded. Arrays, one entry per agent, or scalars for all."""

    samples: np.ndarray
    download_bytes: np.ndarray | float
    upload_bytes: np.ndarray | float


class DeviceProfile(RoundComponent):
    """Per-agent device and network speeds; override :meth:`seconds`."""

    def seconds(self, population: AgentPopulation, agents: np.ndarray, work: Work) -> np.ndarray:
        """Virtual seconds each agent of ``agents`` takes for ``work`` (finite, non-negative, and
        never less for more work)."""
        raise NotImplementedError

    def samples_within(self, population: AgentPopulation, agents: np.ndarray, seconds: float | np.ndarray,
                       download_bytes: np.ndarray | float, upload_bytes: np.ndarray | float,
                       most: np.ndarray | int = 2**40) -> np.ndarray:
        """The most samples each agent can process within ``seconds`` with those transfers (0 if
        the transfers alone take longer), at most ``most``. The default bisects :meth:`seconds`;
        a profile with a closed form overrides it."""
        agents = np.asarray(agents, dtype=np.int64)
        low = np.zeros(len(agents), dtype=np.int64)  # always fits, or nothing does
        high = np.broadcast_to(np.asarray(most, dtype=np.int64), low.shape).copy()
        fits = self.seconds(population, agents, Work(high.astype(np.float64), download_bytes, upload_bytes)) <= seconds
        low[fits] = high[fits]
        while True:
            open_ = high - low > 1
            if not open_.any():
                break
            middle = (low + high) // 2
            ok = self.seconds(population, agents, Work(middle.astype(np.float64), download_bytes, upload_bytes)) <= seconds
            low = np.where(open_ & ok, middle, low)
            high = np.where(open_ & ~ok, middle, high)
        none = self.seconds(population, agents, Work(np.zeros(len(agents)), download_bytes, upload_bytes)) > seconds
        return np.where(none, 0, low)


def planned_work(num_samples: np.ndarray, epochs: np.ndarray | int, max_steps: np.ndarray | int | None,
                 batch_size: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The steps and samples local training takes on shards of ``num_samples``: ``epochs`` passes in
    batches of ``batch_size`` (``None``: the whole shard), stopped after ``max_steps`` (``None`` or
    a value of 0 or less: no budget)."""
    n = np.asarray(num_samples, dtype=np.int64)
    batch = np.maximum(n, 1) if batch_size is None else np.full_like(n, batch_size)
    per_epoch = -(-n // batch)  # ceil
    steps = per_epoch * np.asarray(epochs, dtype=np.int64)
    if max_steps is not None:
        budget = np.asarray(max_steps, dtype=np.int64)
        steps = np.where(budget > 0, np.minimum(steps, budget), steps)
    full, rest = np.divmod(steps, np.maximum(per_epoch, 1))
    samples = full * n + np.minimum(rest * batch, n)
    return steps, samples


def steps_within(num_samples: np.ndarray, samples: np.ndarray, batch_size: int | None) -> np.ndarray:
    """The most steps whose samples add up to at most ``samples`` on shards of ``num_samples``
    (the inverse of :func:`planned_work` without a step budget)."""
    n = np.asarray(num_samples, dtype=np.int64)
    budget = np.asarray(samples, dtype=np.int64)
    batch = np.maximum(n, 1) if batch_size is None else np.full_like(n, batch_size)
    per_epoch = -(-n // batch)
    full, left = np.divmod(budget, np.maximum(n, 1))
    return np.where(n > 0, full * per_epoch + np.minimum(left // batch, per_epoch - 1), 0)


def samples_processed(result: AgentResult) -> int:
    """The training samples an agent's result says it processed, over all its epochs."""
    return int(sum(record.get("samples", 0) for record in result.history))


def upload_size(result: AgentResult, dense_bytes: int) -> int:
    """The bytes an agent's update takes on the wire: what a compression plugin set, else the
    dense update's."""
    if result.upload_bytes is not None:
        return int(result.upload_bytes)
    if result.delta is not None:
        return int(result.delta.numel() * result.delta.element_size())
    return int(dense_bytes)


def model_bytes(vector: torch.Tensor, buffers: dict[str, torch.Tensor] | None = None) -> int:
    """The bytes of a global model sent to an agent: its trainable vector and floating buffers."""
    size = vector.numel() * vector.element_size()
    for buffer in (buffers or {}).values():
        if buffer.is_floating_point():
            size += buffer.numel() * buffer.element_size()
    return int(size)


def result_seconds(devices: DeviceProfile, population: AgentPopulation, results: Sequence[AgentResult],
                   download_bytes: int, dense_bytes: int) -> np.ndarray:
    """Virtual seconds each result's agent took: the model's download, the samples it processed,
    its update's upload."""
    if not results:
        return np.zeros(0)
    agents = np.array([r.agent_id for r in results], dtype=np.int64)
    work = Work(np.array([samples_processed(r) for r in results], dtype=np.float64), float(download_bytes),
                np.array([upload_size(r, dense_bytes) for r in results], dtype=np.float64))
    return np.asarray(devices.seconds(population, agents, work), dtype=np.float64)
