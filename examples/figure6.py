"""Reproduce the paper's Figure 6: CIFAR-10-shaped labels (50,000, 5,000 per class) split among
5 agents IID and non-IID with niid_factor 1, 3 and 5.

    python examples/figure6.py docs/figures/figure6.png
"""

from __future__ import annotations

import sys

import numpy as np

from flcore import seeding
from flcore.plots import save_label_distributions
from flcore.registry import discover


def main(path: str) -> None:
    registry = discover()
    labels = np.repeat(np.arange(10), 5000)
    panels = []
    for title, name, params in [("IID", "iid", {}), ("non-IID, niid=1", "niid", {"niid_factor": 1}),
                                ("non-IID, niid=3", "niid", {"niid_factor": 3}),
                                ("non-IID, niid=5", "niid", {"niid_factor": 5})]:
        component = registry.resolve("partitioner", name)
        partitioner = component.load()(component.params_model()(**params))
        split = partitioner.split(labels, 5, seeding.numpy_rng(0, seeding.PARTITION))
        counts = split.label_counts(labels, 10)
        print(f"{title:18s} classes per agent: {(counts > 0).sum(axis=1).tolist()}")
        panels.append((title, counts))
    print(save_label_distributions(panels, path))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "figure6.png")
