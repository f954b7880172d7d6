"""Matplotlib figures of partitions and runs (an optional dependency: ``pip install flcore[plots]``).

Each ``*_figure`` function builds a figure from arrays and returns it, so a test can check what it
shows (legends, axis ranges, ticks) on the matplotlib objects; :func:`save_figure` writes one as a PNG.
The axes are chosen not to mislead: counts and memory start at zero, accuracy spans 0 to 1, and axes
of agents and rounds have whole-number ticks.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flcore.errors import UserError

#: above this many classes a colour bar replaces the legend of labels
MAX_LEGEND_CLASSES = 20


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plots need matplotlib, which is not installed: pip install 'flcore[plots]'") from None
    return plt


def _whole_number_ticks(axis: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


@dataclass(frozen=True)
class Curve:
    """One line of the global-metrics figure: a run, or a sweep setting's mean with a band."""

    label: str
    step: np.ndarray
    acc: np.ndarray
    loss: np.ndarray
    train_loss: np.ndarray | None = None
    acc_band: tuple[np.ndarray, np.ndarray] | None = None
    loss_band: tuple[np.ndarray, np.ndarray] | None = None


def global_figure(curves: Sequence[Curve], step_name: str = "round", title: str = "") -> Any:
    """Test accuracy and loss (and local training loss) per round, one line per curve (Figure 8)."""
    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for index, curve in enumerate(curves):
        colour = f"C{index % 10}"
        seen = ~np.isnan(curve.acc)
        acc_ax.plot(curve.step[seen], curve.acc[seen], marker=".", color=colour, label=curve.label)
        loss_ax.plot(curve.step[seen], curve.loss[seen], marker=".", color=colour, label=f"{curve.label} test")
        if curve.acc_band is not None:
            acc_ax.fill_between(curve.step[seen], *(b[seen] for b in curve.acc_band), color=colour, alpha=0.2)
        if curve.loss_band is not None:
            loss_ax.fill_between(curve.step[seen], *(b[seen] for b in curve.loss_band), color=colour, alpha=0.2)
        if curve.train_loss is not None and not np.isnan(curve.train_loss).all():
            loss_ax.plot(curve.step, curve.train_loss, linestyle="--", alpha=0.7, color=colour,
                         label=f"{curve.label} train")
    acc_ax.set(xlabel=step_name, ylabel="test accuracy", title="global model accuracy", ylim=(0, 1))
    loss_ax.set(xlabel=step_name, ylabel="cross-entropy", title="global model loss")
    loss_ax.set_ylim(bottom=0)
    for ax in (acc_ax, loss_ax):
        _whole_number_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    return fig


def virtual_time_figure(curves: Sequence[tuple[Curve, np.ndarray]]) -> Any:
    """Test accuracy against virtual time (a device profile's clock) beside accuracy against rounds,
    one line per run: each curve with its ``virtual_seconds`` per round."""
    plt = _pyplot()
    longest = max(float(np.nanmax(clock)) for _, clock in curves)
    unit, scale = ("hours", 3600.0) if longest >= 3 * 3600 else ("seconds", 1.0)
    fig, (time_ax, round_ax) = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for index, (curve, clock) in enumerate(curves):
        colour, seen = f"C{index % 10}", ~np.isnan(curve.acc)
        time_ax.plot(clock[seen] / scale, curve.acc[seen], marker=".", color=colour, label=curve.label)
        round_ax.plot(curve.step[seen], curve.acc[seen], marker=".", color=colour, label=curve.label)
    time_ax.set(xlabel=f"virtual time ({unit})", ylabel="test accuracy", title="accuracy against virtual time",
                ylim=(0, 1))
    time_ax.set_xlim(left=0)
    round_ax.set(xlabel="round", title="accuracy against rounds")
    _whole_number_ticks(round_ax.xaxis)
    for ax in (time_ax, round_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def privacy_figure(curves: Sequence[tuple[Curve, np.ndarray]]) -> Any:
    """Test accuracy against the privacy spent (a component's ``epsilon`` column) beside epsilon per
    round, one line per run: each curve with its epsilon per round."""
    plt = _pyplot()
    fig, (acc_ax, eps_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for index, (curve, epsilon) in enumerate(curves):
        colour, seen = f"C{index % 10}", ~np.isnan(curve.acc) & np.isfinite(epsilon)
        acc_ax.plot(epsilon[seen], curve.acc[seen], marker=".", color=colour, label=curve.label)
        finite = np.isfinite(epsilon)
        eps_ax.plot(curve.step[finite], epsilon[finite], marker=".", color=colour, label=curve.label)
    acc_ax.set(xlabel="epsilon", ylabel="test accuracy", title="accuracy against privacy spent", ylim=(0, 1))
    acc_ax.set_xlim(left=0)
    eps_ax.set(xlabel="round", ylabel="epsilon", title="privacy spent per round")
    eps_ax.set_ylim(bottom=0)
    _whole_number_ticks(eps_ax.xaxis)
    for ax in (acc_ax, eps_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def per_agent_figure(runs: Sequence[tuple[str, np.ndarray, dict[str, np.ndarray]]]) -> Any:
    """Per-agent accuracy on the held-out splits over rounds, one colour per run: the mean as a
    line, the 10th to 90th percentile as a band (fairness is judged on the worst agents), the
    10th percentile dashed. ``runs`` holds each run's label, rounds and ``agent_acc_*`` columns."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for index, (label, step, columns) in enumerate(runs):
        colour = f"C{index % 10}"
        seen = ~np.isnan(columns["agent_acc_mean"])
        ax.fill_between(step[seen], columns["agent_acc_p10"][seen], columns["agent_acc_p90"][seen], color=colour,
                        alpha=0.2, label=f"{label} p10-p90")
        ax.plot(step[seen], columns["agent_acc_mean"][seen], marker=".", color=colour, label=f"{label} mean")
        ax.plot(step[seen], columns["agent_acc_p10"][seen], linestyle="--", color=colour, alpha=0.8)
    ax.set(xlabel="round", ylabel="held-out accuracy", title="per-agent accuracy", ylim=(0, 1))
    _whole_number_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def agents_figure(agent: np.ndarray, round_index: np.ndarray, epoch: np.ndarray, loss: np.ndarray,
                  acc: np.ndarray, shown: int = 3) -> Any:
    """Local loss and accuracy of the most-selected agents over their rounds and epochs (Figure 9)."""
    plt = _pyplot()
    chosen = [int(a) for a in np.argsort(-np.bincount(agent), kind="stable")[:shown]]
    epochs = int(epoch.max()) + 1
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for a in chosen:
        mine = agent == a
        x = round_index[mine] + 1 + epoch[mine] / epochs
        loss_ax.plot(x, loss[mine], marker="o", label=f"agent {a}")
        acc_ax.plot(x, acc[mine], marker="o", label=f"agent {a}")
    loss_ax.set(xlabel="round (and local epoch)", ylabel="local training loss", title="agents' local loss")
    loss_ax.set_ylim(bottom=0)
    acc_ax.set(xlabel="round (and local epoch)", ylabel="local training accuracy", title="agents' local accuracy",
               ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        _whole_number_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def sampling_figure(times_selected: np.ndarray, limit: int = 500) -> Any:
    """How often each agent was selected (the first ``limit`` agents)."""
    plt = _pyplot()
    times = np.asarray(times_selected)
    shown = times[:limit]
    fig, ax = plt.subplots(figsize=(10, 3.2))
    ax.bar(np.arange(len(shown)), shown, width=0.8 if len(shown) <= 100 else 1.0, color="tab:blue")
    ax.set(xlabel="agent" + (f" (first {limit})" if len(times) > limit else ""), ylabel="times selected",
           title=f"sampling counts ({int((times > 0).sum())} of {len(times)} agents ever selected)",
           xlim=(-0.5, len(shown) - 0.5))
    ax.set_ylim(bottom=0, top=max(1, int(shown.max(initial=0))) * 1.05)
    _whole_number_ticks(ax.xaxis)
    _whole_number_ticks(ax.yaxis)
    fig.tight_layout()
    return fig


def memory_figure(step: np.ndarray, series: dict[str, np.ndarray], step_name: str = "round") -> Any:
    """Memory per round in MiB from zero, so that a change of 1 MiB in 400 looks as small as it is."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    top = 0.0
    for name, values in series.items():
        ax.plot(step, values, marker=".", label=name)
        top = max(top, float(np.nanmax(values, initial=0)))
    spans = ", ".join(f"{n} {np.nanmin(v):,.1f} to {np.nanmax(v):,.1f}" for n, v in series.items() if len(v))
    ax.set(xlabel=step_name, ylabel="MiB", title=f"memory ({spans} MiB)" if spans else "memory")
    ax.set_ylim(bottom=0, top=max(top, 1.0) * 1.1)
    _whole_number_ticks(ax.xaxis)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def draw_label_distribution(ax: Any, counts: np.ndarray, title: str = "", max_agents: int = 50) -> Any:
    """The paper's Figure 6 panel: one stacked bar per agent, one colour per label. Returns the colour
    map's mappable when there are too many classes for a legend (for a colour bar), else None."""
    plt = _pyplot()
    counts = np.asarray(counts)[:max_agents]
    agents, classes = counts.shape
    many = classes > MAX_LEGEND_CLASSES
    cmap = plt.get_cmap("tab10" if classes <= 10 else "tab20" if not many else "viridis", classes)
    bottom = np.zeros(agents)
    for label in range(classes):
        ax.bar(np.arange(agents), counts[:, label], bottom=bottom, color=cmap(label), width=0.8,
               label=None if many else str(label))
        bottom += counts[:, label]
    ax.set_xlabel("agent")
    ax.set_ylabel("samples")
    ax.set_xlim(-0.6, agents - 0.4)
    ax.set_ylim(bottom=0)
    ax.set_xticks(np.arange(agents) if agents <= 20 else np.linspace(0, agents - 1, 5, dtype=int))
    if title:
        ax.set_title(title)
    if many:
        from matplotlib.cm import ScalarMappable
        from matplotlib.colors import Normalize

        return ScalarMappable(norm=Normalize(0, classes - 1), cmap=cmap)
    return None


def partition_figure(counts: np.ndarray, title: str = "labels per agent") -> Any:
    """Labels per agent as stacked bars with a legend of labels (or a colour bar for many) (Figure 6)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    mappable = draw_label_distribution(ax, counts, title)
    if mappable is None:
        ax.legend(title="label", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  ncols=1 if np.asarray(counts).shape[1] <= 10 else 2)
    else:
        fig.colorbar(mappable, ax=ax, label="label")
    fig.tight_layout()
    return fig


def label_distributions_figure(panels: Sequence[tuple[str, np.ndarray]]) -> Any:
    """One panel per ``(title, counts)`` side by side, with one shared legend of labels."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 3.6), squeeze=False)
    mappable = None
    for ax, (title, counts) in zip(axes[0], panels):
        mappable = draw_label_distribution(ax, counts, title) or mappable
    handles, labels = axes[0][0].get_legend_handles_labels()
    if labels:
        fig.legend(handles, labels, title="label", loc="center right", fontsize="small")
        fig.tight_layout(rect=(0, 0, 0.93, 1))
    else:
        fig.tight_layout()
        if mappable is not None:
            fig.colorbar(mappable, ax=list(axes[0]), label="label")
    return fig


def save_figure(fig: Any, path: str | Path, dpi: int = 100) -> Path:
    """Write a figure as a PNG atomically and close it. A file already at ``path`` (a link, say) is
    replaced, never written through."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            fig.savefig(handle, format="png", dpi=dpi)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    finally:
        _pyplot().close(fig)
    return path


def save_label_distributions(panels: Sequence[tuple[str, np.ndarray]], path: str | Path) -> Path:
    """Save one panel per ``(title, counts)`` side by side, with a shared legend, as a PNG."""
    return save_figure(label_distributions_figure(panels), path, dpi=110)
