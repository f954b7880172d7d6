"""Per-agent evaluation: each agent's held-out split, when it is scored, and the round's summary.

``evaluation.holdout`` carves a stratified, seeded fraction out of every agent's shard before round
1: the agent trains on the rest, and its held-out samples have its own label distribution. Every
``evaluation.per_agent_every`` rounds (and after the last) the agents (all, or a seeded sample of
``evaluation.per_agent_agents``) are scored on their held-out split with the model each would use:
the global model, made personal by the agent-side plugins' ``personalize`` (a personal head, Ditto's
model, a few steps of fine-tuning). Fairness is judged on the worst agents, so the round's row holds
the spread of the per-agent accuracies, not only their mean.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from flcore import seeding
from flcore.partition import Partition

#: the columns a per-agent evaluation adds to the round's row (docs/outputs.md)
COLUMNS = ("agent_acc_mean", "agent_acc_weighted", "agent_acc_p10", "agent_acc_p90", "agent_acc_std",
           "agent_acc_range", "agent_loss_mean", "agents_evaluated")


def split_holdout(partition: Partition, labels: np.ndarray, fraction: float,
                  rng: np.random.Generator) -> tuple[Partition, Partition]:
    """Each agent's shard cut into (training, held-out) parts, stratified by label: of the ``c``
    samples of a class an agent holds, ``round(fraction * c)`` (halves up) go to the held-out part,
    but at most ``c - 1``, so no class leaves an agent's training data. Which ones is a seeded
    draw; the training part keeps the shard's order. Vectorized over all agents at once."""
    labels = np.asarray(labels)
    indices = partition.indices
    agent = np.repeat(np.arange(partition.num_agents, dtype=np.int64), partition.sizes)
    classes = int(labels.max()) + 1 if len(labels) else 1
    group = agent * classes + labels[indices]
    order = np.lexsort((rng.random(len(indices)), group))  # by (agent, class), random within
    grouped = group[order]
    starts = np.flatnonzero(np.r_[True, grouped[1:] != grouped[:-1]]) if len(grouped) else np.zeros(0, np.int64)
    counts = np.diff(np.r_[starts, len(grouped)])
    rank = np.arange(len(grouped)) - np.repeat(starts, counts)
    quota = np.minimum(np.floor(fraction * counts + 0.5), counts - 1).astype(np.int64)
    held = np.zeros(len(indices), dtype=bool)
    held[order] = rank < np.repeat(quota, counts)
    return _part(indices, agent, ~held, partition.num_agents), _part(indices, agent, held, partition.num_agents)


def _part(indices: np.ndarray, agent: np.ndarray, keep: np.ndarray, agents: int) -> Partition:
    offsets = np.zeros(agents + 1, dtype=np.int64)
    np.cumsum(np.bincount(agent[keep], minlength=agents), out=offsets[1:])
    return Partition(indices[keep].astype(np.int64), offsets)


class PerAgentEvaluation:
    """When per-agent evaluation runs, on which agents, and the summary of their scores."""

    def __init__(self, evaluation: Any, holdout: Partition, seed: int) -> None:
        self.every, self.count = evaluation.per_agent_every, evaluation.per_agent_agents
        self.holdout, self.seed = holdout, seed

    def due(self, round_index: int, rounds: int) -> bool:
        """Every ``per_agent_every`` rounds and after the last."""
        return self.every is not None and ((round_index + 1) % self.every == 0 or round_index + 1 == rounds)

    def agents(self, round_index: int) -> np.ndarray:
        """The agents scored this round: every agent with a held-out split, or a sample of
        ``per_agent_agents`` of them drawn from ``(seed, EVALUATION, round)`` alone."""
        candidates = np.flatnonzero(self.holdout.sizes > 0)
        if self.count is None or self.count >= len(candidates):
            return candidates
        rng = seeding.numpy_rng(self.seed, seeding.EVALUATION, round_index)
        return np.sort(rng.choice(candidates, size=self.count, replace=False))


def summarize(scores: list[dict[str, float]], sizes: np.ndarray) -> dict[str, float]:
    """The round's per-agent columns: accuracy mean, mean weighted by held-out samples, 10th and
    90th percentiles (NumPy's linear interpolation), standard deviation (population), max - min,
    and the mean loss."""
    if not scores:
        return {}
    acc = np.array([s["acc"] for s in scores], dtype=np.float64)
    loss = np.array([s["loss"] for s in scores], dtype=np.float64)
    return {
        "agent_acc_mean": float(acc.mean()),
        "agent_acc_weighted": float(np.average(acc, weights=np.asarray(sizes, dtype=np.float64))),
        "agent_acc_p10": float(np.percentile(acc, 10)),
        "agent_acc_p90": float(np.percentile(acc, 90)),
        "agent_acc_std": float(acc.std()),
        "agent_acc_range": float(acc.max() - acc.min()),
        "agent_loss_mean": float(loss.mean()),
        "agents_evaluated": len(acc),
    }
