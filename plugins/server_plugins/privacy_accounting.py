"""The privacy accountant behind ``dp_fedavg``: Google's ``dp-accounting`` RDP accountant, never a
hand-written formula.

Each round is ``PoissonSampledDpEvent(q, GaussianDpEvent(z))``, ``q`` the round's sampling rate.
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
from typing import Any, Iterator, Sequence

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
        if not rates:
            return 0.0
        if self.noise_multiplier == 0:
            return math.inf
        total = sum(count * self._curve(rate) for rate, count in sorted(Counter(rates).items()))
        from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon

        return float(compute_epsilon(self._orders, total, self.delta)[0])
