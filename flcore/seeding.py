"""Random streams derived from the experiment seed.

Every stream is a pure function of ``(seed, stream, round, agent)``: sampling does not depend on how
many random numbers training consumed, an agent trains the same way whichever process trains it, and
a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import numpy as np
import torch

PARTITION, SAMPLING, TRAINING, INIT, EVALUATION, PLUGINS = range(6)

#: the stream key of server-side training (``RoundContext.train``), where an agent's id would be
SERVER = 2**31


def derive_seed(seed: int, *keys: int) -> int:
    """A 63-bit seed for one stream, independent of every other ``keys``."""
    return int(np.random.SeedSequence([seed, *keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def numpy_rng(seed: int, *keys: int) -> np.random.Generator:
    """A NumPy generator for one stream."""
    return np.random.default_rng(np.random.SeedSequence([seed, *keys]))


def torch_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU torch generator for one stream (batch order)."""
    return torch.Generator().manual_seed(derive_seed(seed, *keys))


def seed_torch(seed: int, *keys: int, device: torch.device | None = None) -> None:
    """Seed torch's global generators (dropout and other layers draw from them): every device's, or
    with ``device`` only the CPU's and that device's.

    Per agent the engine passes its device: ``torch.manual_seed`` also queues a seed for every
    accelerator torch was built for, and while CUDA is not initialized each call formats the whole
    call stack for its lazy-init record: about 1 ms per agent in the engine (1-2% of E1's round).
    """
    value = derive_seed(seed, *keys)
    if device is None:
        torch.manual_seed(value)
        return
    torch.default_generator.manual_seed(value)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(value)
    elif device.type == "mps":
        torch.mps.manual_seed(value)
