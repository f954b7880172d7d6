"""Synthetic(alpha, beta): the federated benchmark of the FedProx paper (Li et al., MLSys 2020).

For user ``k``: ``u_k ~ N(0, alpha)``, ``B_k ~ N(0, beta)``; ``W_k ~ N(u_k, 1)`` (60x10) and
``b_k ~ N(u_k, 1)``; ``v_k ~ N(B_k, 1)`` (60); inputs ``x ~ N(v_k, Sigma)`` with diagonal
``Sigma_jj = j^-1.2``; labels ``y = argmax(softmax(W_k^T x + b_k))``. Samples per user follow
``lognormal(4, 2) + 50``, as in the published generator. ``iid=True`` gives Synthetic-IID: one shared
``W, b ~ N(0, 1)`` and ``v = 0``. ``alpha`` controls how much local models differ, ``beta`` how much
local data differ. Each user's samples are split into train and test parts; the group of every
training sample is its user, so the ``natural`` partitioner gives one agent per user.
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from flcore.data import ArrayDataModule
from flcore.params import ComponentParams


class SyntheticParams(ComponentParams):
    alpha: float = Field(1.0, ge=0, description="Variance of the per-user model means.")
    beta: float = Field(1.0, ge=0, description="Variance of the per-user input means.")
    iid: bool = Field(False, description="Synthetic-IID: one shared model and input distribution.")
    users: int = Field(30, gt=0, description="Number of users generated.")
    dimension: int = Field(60, gt=0)
    num_classes: int = Field(10, gt=1)
    max_samples_per_user: int | None = Field(None, gt=0, description="Cap on the log-normal user sizes.")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="Share of each user's samples held out for test.")
    seed: int = Field(0, ge=0, description="Seed of the generator.")


def generate(params: SyntheticParams) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Inputs, labels and user ids of every sample."""
    rng = np.random.default_rng(params.seed)
    d, c, users = params.dimension, params.num_classes, params.users
    sizes = rng.lognormal(4, 2, users).astype(np.int64) + 50
    if params.max_samples_per_user is not None:
        sizes = np.minimum(sizes, params.max_samples_per_user)
    std_x = np.power(np.arange(1, d + 1, dtype=np.float64), -1.2) ** 0.5
    if params.iid:
        w_shared, b_shared = rng.normal(0, 1, (d, c)), rng.normal(0, 1, c)
    model_means = rng.normal(0, np.sqrt(params.alpha), users)
    input_means = rng.normal(0, np.sqrt(params.beta), users)
    xs, ys = [], []
    for k in range(users):
        if params.iid:
            w, b, v = w_shared, b_shared, np.zeros(d)
        else:
            w = rng.normal(model_means[k], 1, (d, c))
            b = rng.normal(model_means[k], 1, c)
            v = rng.normal(input_means[k], 1, d)
        x = v + rng.standard_normal((sizes[k], d)) * std_x
        xs.append(x)
        ys.append(np.argmax(x @ w + b, axis=1))
    users_of = np.repeat(np.arange(users), sizes)
    return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int64), users_of


def Synthetic(params: SyntheticParams) -> ArrayDataModule:
    """Generate the dataset and split each user's samples into train and test."""
    x, y, users_of = generate(params)
    rng = np.random.default_rng(params.seed + 1)
    is_test = np.zeros(len(y), dtype=bool)
    starts = np.concatenate([[0], np.cumsum(np.bincount(users_of, minlength=params.users))])
    for k in range(params.users):
        count = starts[k + 1] - starts[k]
        n_test = int(round(params.test_fraction * count))
        is_test[starts[k] + rng.choice(count, n_test, replace=False)] = True
    train, test = ~is_test, is_test
    return ArrayDataModule(
        f"synthetic({params.alpha},{params.beta})",
        (torch.from_numpy(x[train]), torch.from_numpy(y[train])),
        (torch.from_numpy(x[test]), torch.from_numpy(y[test])),
        num_classes=params.num_classes,
        groups=users_of[train],
    )
