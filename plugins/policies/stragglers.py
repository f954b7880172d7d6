"""FedProx's straggler model (Li et al. 2020, section 5.2): in every round a share of the selected
agents are stragglers that manage only a random number of local epochs, uniform in ``1 .. E-1``
for a budget of ``E``. FedAvg drops them (``mode: drop``); FedProx keeps their partial work
(``mode: keep_partial``). The choice of stragglers and their epochs come from this component's
stream, so they are the same whatever the strategy, and after a resume.
"""

from __future__ import annotations

from typing import Literal

from flcore_plugins.policies.synchronous import Synchronous, SynchronousParams
from pydantic import Field

from flcore.policy import PolicySetup
from flcore.protocol import AgentResult, AgentStatus, Instruction, RoundContext


class StragglersParams(SynchronousParams):
    share: float = Field(0.5, ge=0, le=1, description="Share of each round's selected agents that are stragglers "
                         "(rounded as FedProx does: round(share * selected)).")
    mode: Literal["drop", "keep_partial"] = Field(
        "keep_partial", description="drop: stragglers do not take part (FedAvg); keep_partial: they train a random "
        "number of epochs in 1 .. epochs-1 and their partial updates are kept (FedProx).")


class Stragglers(Synchronous):
    """Marks ``round(share * k)`` of a round's ``k`` participating agents as stragglers."""

    Params = StragglersParams

    def prepare(self, setup: PolicySetup) -> None:
        super().prepare(setup)
        if self.params.mode == "keep_partial" and self.params.share > 0 and setup.training.epochs < 2:
            raise ValueError(f"'mode' = 'keep_partial' gives stragglers 1 to epochs-1 local epochs, so training.epochs "
                             f"must be at least 2; it is {setup.training.epochs}")

    def configure_round(self, context: RoundContext, instructions: list[Instruction]) -> None:
        taking_part = [i for i in instructions if i.participate]
        count = round(self.params.share * len(taking_part))
        rng = context.rng(self)
        chosen = sorted(rng.choice(len(taking_part), size=count, replace=False).tolist()) if count else []
        self._budget: dict[int, int] = {}
        for index in chosen:
            instruction = taking_part[index]
            self._budget[instruction.agent_id] = instruction.epochs
            if self.params.mode == "drop":
                instruction.participate = False
            elif instruction.epochs > 1:
                instruction.epochs = int(rng.integers(1, instruction.epochs))

    def on_results(self, context: RoundContext, results: list[AgentResult]) -> None:
        for result in results:
            budget = self._budget.get(result.agent_id)
            if budget is None:
                continue
            if result.status is AgentStatus.DROPPED:
                result.reason = "straggler: dropped"
            elif result.status.accepted:
                result.status = AgentStatus.PARTIAL
                result.reason = f"straggler: {result.epochs} of {budget} epochs"
