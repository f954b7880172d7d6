"""pFedMe (T. Dinh, Tran and Nguyen, NeurIPS 2020, "Personalized Federated Learning with Moreau
Envelopes"): each agent's personal model ``theta_i`` is the proximal point of its loss around its
local copy ``w_i`` of the global model, ``theta_i = argmin_theta f_i(theta) + lam/2 ||theta - w_i||^2``.

Each local step, on one batch ``D``:

- ``inner_steps`` (K) gradient steps on ``theta`` at ``personal_lr`` of
  ``f(theta; D) + lam/2 ||theta - w||^2`` approximate the proximal point (``theta`` starts the
  round at the global model and carries over from batch to batch, as in the paper's code);
- the local model moves toward it, ``w <- w - eta lam (w - theta)``: the plugin sets the gradient to
  ``lam (w - theta)`` and the configured optimizer steps at the round's rate ``eta``.

The server's mixing ``w <- (1 - beta) w + beta mean_i w_i`` is FedAvg with ``server_lr: beta``.
The agent's last ``theta`` is kept in per-agent state (``pfedme_personal``) and is the model it is
scored with; an agent that has not trained yet is scored with the global model.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
from pydantic import Field
from torch.func import functional_call

from flcore.agent_plugin import AgentPlugin
from flcore.agents import AgentField
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, AgentResult, RunPlan, split_like

FIELD = "pfedme_personal"


class PFedMeParams(ComponentParams):
    lam: float = Field(15.0, gt=0, description="lambda: the pull between the personal model theta and the local "
                       "model w (the paper: 15 on MNIST).")
    inner_steps: int = Field(5, gt=0, description="K: gradient steps on theta per batch, approximating the "
                             "proximal point.")
    personal_lr: float = Field(0.01, gt=0, description="The step size of the K inner steps on theta.")


class PFedMe(AgentPlugin):
    """Per batch: K proximal steps on ``theta``, then the gradient ``lam (w - theta)`` for ``w``;
    ``theta`` kept per agent and scored."""

    Params = PFedMeParams
    not_vectorizable_because = "it trains a second, personal model inside each step through compute_gradients"

    def state_fields(self) -> Sequence[AgentField]:
        return (AgentField(FIELD, None, None, "pFedMe's personal model theta_i of the agent (flat vector)"),)

    def check_run(self, plan: RunPlan) -> None:
        rate = self.params.personal_lr * self.params.lam
        if rate >= 2:
            raise ValueError(f"'personal_lr' x 'lam' = {self.params.personal_lr} x {self.params.lam} = {rate:g}: "
                             "the inner steps on theta then overshoot its proximal term and diverge; expected "
                             "personal_lr * lam below 2 (the paper: 0.01 to 0.1 with lam 15)")

    def on_agent_start(self, agent: AgentContext) -> None:
        self._theta = [p.detach().clone() for p in agent.params]

    def compute_gradients(self, agent: AgentContext, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                          loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        names = [name for name, p in model.named_parameters() if p.requires_grad]
        lam, lr = self.params.lam, self.params.personal_lr
        w = [p.detach() for p in agent.params]
        theta = self._theta
        for step in range(self.params.inner_steps):
            current = [t.requires_grad_() for t in theta]
            logits = functional_call(model, dict(zip(names, current)), (x,))
            losses = loss(logits, y)
            grads = torch.autograd.grad(losses.mean(), current, allow_unused=True)
            with torch.no_grad():
                theta = [t - lr * ((0 if g is None else g) + lam * (t - v)) for t, g, v in zip(current, grads, w)]
            if step == 0:
                first = (losses.detach(), logits.detach())
        self._theta = [t.detach() for t in theta]
        for p, t in zip(agent.params, self._theta):
            p.grad = lam * (p.detach() - t)
        return first

    def on_update(self, agent: AgentContext, result: AgentResult) -> None:
        agent.state[FIELD] = torch.cat([t.reshape(-1) for t in self._theta]).cpu()

    @torch.no_grad()
    def personalize(self, agent: AgentContext) -> None:
        stored = agent.state[FIELD]
        if stored is not None:
            for p, value in zip(agent.params, split_like(stored.to(agent.params[0]), agent.params)):
                p.copy_(value)
