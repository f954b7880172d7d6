"""Adaptive quantile clipping (Andrew et al. 2021, "Differentially Private Learning with Adaptive
Clipping"): the clip norm follows the ``gamma`` quantile of the update norms, learnt privately.

Each round the server counts the updates that were not clipped, adds Gaussian noise of standard
deviation ``sigma_b`` to the count, divides by the expected number of agents and takes a geometric
step: ``C <- C * exp(-eta_C * (b_tilde - gamma))``. The count is a second Gaussian release, so the
updates' sum gets the noise multiplier ``z_Delta = (z^-2 - (2 sigma_b)^-2)^(-1/2)`` and the two
together cost what one Gaussian mechanism of multiplier ``z`` costs (the paper's Theorem 1).
"""

from __future__ import annotations

import math

import numpy as np


def delta_noise_multiplier(noise_multiplier: float, count_noise: float) -> float:
    """``z_Delta``: the sum's noise multiplier that leaves ``z`` for the whole round."""
    if noise_multiplier == 0:
        return 0.0
    rest = noise_multiplier**-2 - (2 * count_noise) ** -2
    if rest <= 0:
        raise ValueError(
            f"count_noise = {count_noise} leaves no budget for the updates: with noise_multiplier = "
            f"{noise_multiplier} it must exceed noise_multiplier / 2 = {noise_multiplier / 2}"
        )
    return rest**-0.5


def next_clip_norm(
    clip_norm: float,
    unclipped: int,
    expected: float,
    count_noise: float,
    learning_rate: float,
    quantile: float,
    rng: np.random.Generator,
) -> tuple[float, float]:
    """The next round's clip norm and the noised share of unclipped updates ``b_tilde``."""
    share = (unclipped + rng.normal(0.0, count_noise)) / expected
    return clip_norm * math.exp(-learning_rate * (share - quantile)), share
