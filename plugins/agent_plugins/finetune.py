"""Local fine-tuning at evaluation time: each agent adapts the global model to its own data with a
few steps before it is scored (the FedAvg + fine-tuning baseline of the personalization
literature, e.g. Yu et al. 2020, "Salvaging Federated Learning by Local Adaptation").

Training is unchanged: the fine-tuned weights exist only while the agent is evaluated and are never
sent to the server, so this plugin holds no per-agent state.
"""

from __future__ import annotations

import math

from pydantic import Field

from flcore.agent_plugin import AgentPlugin
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, RunPlan


class FinetuneParams(ComponentParams):
    steps: int = Field(5, gt=0, description="Optimizer steps k of fine-tuning on the agent's training shard "
                       "before it is scored; at most the steps of one round of local training on the smallest shard.")
    lr: float | None = Field(None, gt=0, description="Fine-tuning learning rate; None: the round's local rate.")


class Finetune(AgentPlugin):
    """``personalize``: ``steps`` steps of the configured optimizer from the global weights (or from
    what earlier plugins loaded: a personal head) on the agent's training shard."""

    Params = FinetuneParams
    not_vectorizable_because = "it trains each agent at evaluation time through agent.fit"

    def check_run(self, plan: RunPlan) -> None:
        training = plan.training
        if plan.shard_sizes is None or training is None or not len(plan.shard_sizes):
            return
        smallest = int(min(plan.shard_sizes))
        per_pass = math.ceil(smallest / (training.batch_size or max(smallest, 1)))
        local = training.epochs * per_pass if training.max_steps is None else min(training.max_steps,
                                                                                    training.epochs * per_pass)
        if self.params.steps > local:
            raise ValueError(f"'steps' = {self.params.steps} is more steps than a round of local training takes on "
                             f"the smallest training shard ({smallest} samples, training.batch_size "
                             f"{training.batch_size}, training.epochs {training.epochs}: {local} steps); expected at "
                             f"most {local}: fine-tuning adapts the global model, it does not retrain it")

    def personalize(self, agent: AgentContext) -> None:
        if agent.fit is None:
            raise RuntimeError("finetune needs agent.fit, which this backend does not offer")
        agent.fit(steps=self.params.steps, lr=self.params.lr if self.params.lr is not None else agent.lr)
