"""The privacy accountant behind ``dp_fedavg`` and ``dp_sgd``: Google's ``dp-accounting`` RDP
accountant, never a hand-written formula.

Each round (each local step, for DP-SGD) is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, ``q``
its sampling rate. :func:`calibrate_noise` finds the noise multiplier for a target epsilon by
bisection with the same accountant.
The library's costly step, one such event's RDP curve, is computed once per rate; rounds compose by
adding curves (RDP's composition, as the library's accountant does) and the library converts the
total to epsilon. Epsilon is recomputed from the list of the rounds' rates, so a resumed run, which
restores that list, reports exactly the epsilon of an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from contextlib import contextmanager
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np


def _library() -> Any:
    try:
        import dp_accounting
    except ImportError:
        raise ValueError(
            "differential privacy needs Google's dp-accounting package for its accountant: "
            "pip install 'flcore[privacy]' (or dp-accounting>=0.4)"
        ) from None
    return dp_accounting


def check_available() -> None:
    """Raise ``ValueError`` (bad input, exit 2) when the accountant library is missing."""
    _library()


def library_version() -> str:
    from importlib.metadata import version

    return version("dp-accounting")


def round_event(rate: float, noise_multiplier: float) -> Any:
    """One round of DP-FedAvg as the accountant sees it: the Gaussian mechanism on a Poisson sample."""
    dp = _library()
    return dp.PoissonSampledDpEvent(rate, dp.GaussianDpEvent(noise_multiplier))


class _NoConvergenceNotes(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "failed to converge" not in record.getMessage()


@contextmanager
def _quiet_library() -> Iterator[None]:
    """At large sampling rates the library cannot evaluate some fractional orders and logs a warning
    for each; it leaves them out, which only loosens the bound, so one run need not print dozens."""
    logger, quiet = logging.getLogger("absl"), _NoConvergenceNotes()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


class RdpRounds:
    """Epsilon at ``delta`` of rounds of the subsampled Gaussian mechanism with multiplier ``z``."""

    def __init__(self, noise_multiplier: float, delta: float) -> None:
        self.noise_multiplier, self.delta = noise_multiplier, delta
        self._curves: dict[float, np.ndarray] = {}
        self._orders: np.ndarray | None = None

    def _curve(self, rate: float) -> np.ndarray:
        if rate not in self._curves:
            accountant = _library().rdp.RdpAccountant()
            with _quiet_library():
                accountant.compose(round_event(rate, self.noise_multiplier))
            self._curves[rate], self._orders = accountant.rdp, accountant.orders
        return self._curves[rate]

    def epsilon(self, rates: Sequence[float]) -> float:
        """Epsilon after one round at each sampling rate in ``rates`` (``inf`` without noise)."""
        return self.epsilon_of(Counter(rates))

    def epsilon_of(self, counts: Mapping[float, int]) -> float:
        """Epsilon after ``count`` steps at each sampling rate (``inf`` without noise)."""
        counts = {rate: count for rate, count in counts.items() if count > 0}
        if not counts:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        total = sum(count * self._curve(rate) for rate, count in sorted(counts.items()))
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        return float(compute_epsilon(self._orders, total, self.delta)[0])

    def worst_epsilon(self, groups: Iterable[tuple[float, int]]) -> float:
        """The largest epsilon among several parties, each ``(rate, steps)``: DP-SGD's worst agent."""
        return max((self.epsilon_of({rate: steps}) for rate, steps in dominant(groups)), default=0.0)


def dominant(groups: Iterable[tuple[float, int]]) -> list[tuple[float, int]]:
    """The ``(rate, steps)`` pairs no other pair matches or exceeds in both (epsilon grows with
    each), so the worst party is among them; one pair per rate, the most steps."""
    most: dict[float, int] = {}
    for rate, steps in groups:
        if steps > 0:
            most[float(rate)] = max(int(steps), most.get(float(rate), 0))
    kept, best = [], -1
    for rate in sorted(most, reverse=True):  # from the highest rate down, keep a pair with more steps
        if most[rate] > best:
            kept.append((rate, most[rate]))
            best = most[rate]
    return kept


def calibrate_noise(target_epsilon: float, delta: float, groups: Sequence[tuple[float, int]],
                    tolerance: float = 1e-4, max_groups: int = 8) -> float:
    """The smallest noise multiplier, within ``tolerance`` relative, whose worst epsilon over
    ``groups`` (``(rate, steps)`` pairs) is at most ``target_epsilon``: a bisection with the
    accountant, as Opacus' ``get_noise_multiplier`` does. Each step of the bisection computes one
    RDP curve per group (about 0.1 s), so beyond ``max_groups`` undominated groups it calibrates
    for one that dominates them all, the highest rate with the most steps: still at most the
    target, though a little more noise than needed. Raises ``ValueError`` when no multiplier up to
    10,000 reaches the target."""
    groups = dominant(groups)
    if not groups:
        raise ValueError("there are no steps to account for, so no noise multiplier can be calibrated")
    if len(groups) > max_groups:
        groups = [(max(rate for rate, _ in groups), max(steps for _, steps in groups))]

    def fits(z: float) -> bool:
        return RdpRounds(z, delta).worst_epsilon(groups) <= target_epsilon

    low, high = 0.0, 1.0
    while not fits(high):
        low, high = high, high * 2
        if high > 1e4:
            raise ValueError(f"target_epsilon = {target_epsilon} is out of reach: even a noise multiplier of 10,000 "
                             f"spends more over the planned steps at delta = {delta}")
    while high - low > tolerance * high:
        middle = (low + high) / 2
        low, high = (low, middle) if fits(middle) else (middle, high)
    return high
