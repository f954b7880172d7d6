"""Matplotlib figures of partitions and runs (an optional dependency: ``pip install flcore[plots]``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flcore.errors import UserError


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plots need matplotlib, which is not installed: pip install 'flcore[plots]'") from None
    return plt


def draw_label_distribution(ax: Any, counts: np.ndarray, title: str = "", max_agents: int = 50) -> None:
    """The paper's Figure 6 panel: one stacked bar per agent, one colour per label."""
    counts = np.asarray(counts)[:max_agents]
    agents, classes = counts.shape
    cmap = _pyplot().get_cmap("tab10" if classes <= 10 else "tab20" if classes <= 20 else "viridis", classes)
    bottom = np.zeros(agents)
    for label in range(classes):
        ax.bar(np.arange(agents), counts[:, label], bottom=bottom, color=cmap(label), width=0.8,
               label=str(label) if classes <= 20 else None)
        bottom += counts[:, label]
    ax.set_xlabel("agent")
    ax.set_ylabel("samples")
    ax.set_xticks(np.arange(agents) if agents <= 20 else np.linspace(0, agents - 1, 5, dtype=int))
    if title:
        ax.set_title(title)


def save_label_distributions(panels: Sequence[tuple[str, np.ndarray]], path: str | Path) -> Path:
    """Save one panel per ``(title, counts)`` side by side, with a shared legend, as a PNG."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    for ax, (title, counts) in zip(axes[0], panels):
        draw_label_distribution(ax, counts, title)
    handles, labels = axes[0][0].get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, title="label", loc="center right", fontsize="small")
        fig.tight_layout(rect=(0, 0, 0.93, 1))
    else:
        fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path
