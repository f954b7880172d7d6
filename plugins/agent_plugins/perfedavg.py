"""Per-FedAvg (Fallah, Mokhtari and Ozdaglar, NeurIPS 2020, "Personalized Federated Learning with
Theoretical Guarantees: A Model-Agnostic Meta-Learning Approach").

The federation learns a starting point ``w`` that is good after one step of local gradient descent:
it minimizes ``1/n sum_i f_i(w - alpha grad f_i(w))``. Each local step of an agent splits its batch
into parts ``D``, ``D'`` (and ``D''`` for the Hessian-free variant) and takes

- ``w~ = w - alpha grad f(w; D)``, the inner (adaptation) step, on a copy;
- first order (``fo``): ``w <- w - beta grad f(w~; D')``;
- Hessian-free (``hf``): ``w <- w - beta (I - alpha H(w; D'')) grad f(w~; D')``, the product of
  the Hessian with the vector computed by double backpropagation (exact; the paper approximates
  the same product by a finite difference of two gradients),

with ``beta`` the round's learning rate, applied by the configured optimizer. The strategy
aggregates the ``w`` of the agents as usual (FedAvg in the paper). Before an agent is scored, it
adapts the global model with ``adapt_steps`` steps at ``alpha`` on its own training shard
(``personalize``), the model Per-FedAvg's agents would use. Nothing is kept per agent.
"""

from __future__ import annotations

from typing import Callable, Literal

import torch
from pydantic import Field

from flcore.agent_plugin import AgentPlugin
from flcore.params import ComponentParams
from flcore.protocol import AgentContext, RunPlan


class PerFedAvgParams(ComponentParams):
    alpha: float = Field(0.01, gt=0, description="The inner (adaptation) step size alpha: of the step inside each "
                         "local update and of the adaptation before an agent is scored. The outer step beta is "
                         "the round's learning rate.")
    variant: Literal["fo", "hf"] = Field("fo", description="'fo': first-order (the gradient at the adapted "
                                         "point); 'hf': Hessian-free, corrected by -alpha H(w; D'') times it.")
    adapt_steps: int = Field(1, gt=0, description="Steps at alpha from the global model on the agent's training "
                             "shard before it is scored (the paper: one).")


def _parts(n: int, count: int) -> list[torch.Tensor]:
    """Positions of ``count`` contiguous, near-equal parts of a batch of ``n`` (a batch too small to
    split gives every part the whole batch)."""
    positions = torch.arange(n)
    return [positions] * count if n < count else list(torch.tensor_split(positions, count))


def _grad(value: torch.Tensor, params: list[torch.Tensor], **kwargs) -> list[torch.Tensor]:
    grads = torch.autograd.grad(value, params, allow_unused=True, **kwargs)
    return [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]


class PerFedAvg(AgentPlugin):
    """Each local step's gradient is the meta-gradient of ``f(w - alpha grad f(w))`` (first-order
    or Hessian-free), set through ``compute_gradients``; ``personalize`` takes the adaptation step."""

    Params = PerFedAvgParams
    not_vectorizable_because = ("it computes each step's gradient at a second point, w - alpha grad f(w), "
                                "through compute_gradients")

    def check_run(self, plan: RunPlan) -> None:
        training = plan.training
        count, names = (3, "D, D' and D''") if self.params.variant == "hf" else (2, "D and D'")
        if training is not None and training.batch_size is not None and training.batch_size < count:
            raise ValueError(f"training.batch_size = {training.batch_size} is too small for perfedavg "
                             f"(variant {self.params.variant!r}): each step splits its batch into {names}; "
                             f"expected at least {count}")

    def compute_gradients(self, agent: AgentContext, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                          loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        params, alpha = agent.params, self.params.alpha
        parts = _parts(len(x), 3 if self.params.variant == "hf" else 2)
        logits = model(x)
        losses = loss(logits, y)
        inner = _grad(losses[parts[0]].mean(), params)
        saved = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, g in zip(params, inner):
                p.sub_(alpha * g)
        outer = parts[1]
        meta = _grad(loss(model(x[outer]), y[outer]).mean(), params)
        with torch.no_grad():
            for p, value in zip(params, saved):
                p.copy_(value)
        if self.params.variant == "hf":
            third = parts[2]
            first = _grad(loss(model(x[third]), y[third]).mean(), params, create_graph=True)
            hessian_meta = _grad(sum((g * m).sum() for g, m in zip(first, meta)), params)
            meta = [m - alpha * h for m, h in zip(meta, hessian_meta)]
        for p, g in zip(params, meta):
            p.grad = g.detach()
        return losses.detach(), logits.detach()

    def personalize(self, agent: AgentContext) -> None:
        if agent.fit is None:
            raise RuntimeError("perfedavg needs agent.fit, which this backend does not offer")
        agent.fit(steps=self.params.adapt_steps, lr=self.params.alpha)
