"""The global model scored on all the training data: the "training loss" curves of FedProx's figures
(Li et al. 2020), which the agents' own local losses (metrics.csv ``train_loss``) are not."""

from __future__ import annotations

from typing import Callable

from flcore.protocol import RoundContext
from flcore.server_plugin import ServerPlugin


class TrainSet(ServerPlugin):
    """Logs ``train_set/loss`` and ``train_set/acc`` on every evaluation round."""

    def on_evaluate(self, context: RoundContext, evaluate: Callable[..., dict[str, float]]) -> None:
        scores = evaluate(context.data.x_train, context.data.y_train)
        context.log(self, "loss", scores["loss"])
        context.log(self, "acc", scores["acc"])
