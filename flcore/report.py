"""``flcore report``: the paper's figures for a run, as PNG files and one HTML page.

Reads only the run folder (see docs/outputs.md), so it works on runs from other machines. For one
run: global metrics per round (Figure 8), the most-selected agents' local curves (Figure 9),
sampling counts per agent, memory per round (Figure 10), the labels per agent (Figure 6), the
profiler's table (Table 4), the resolved config and the plugin versions. For several runs: their
global curves overlaid.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from flcore.engine.checkpoint import write_text
from flcore.engine.rundir import read_csv
from flcore.errors import UserError
from flcore.plots import _pyplot, draw_label_distribution


def _floats(rows: list[dict[str, str]], key: str) -> np.ndarray:
    return np.array([float(r[key]) if r.get(key) not in (None, "") else np.nan for r in rows])


def _save(fig: Any, path: Path) -> Path:
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    _pyplot().close(fig)
    tmp.replace(path)
    return path


def _check_run(run_dir: Path) -> list[dict[str, str]]:
    metrics = run_dir / "metrics.csv"
    if not metrics.is_file():
        raise UserError(f"'{run_dir}' is not a flcore run folder: it has no metrics.csv.")
    rows = read_csv(metrics)
    if not rows:
        raise UserError(f"'{run_dir}' has no completed round or epoch yet.")
    return rows


def _step_key(rows: list[dict[str, str]]) -> str:
    return "round" if "round" in rows[0] else "epoch"


def plot_global(runs: Sequence[tuple[str, list[dict[str, str]]]], path: Path) -> Path:
    """Test accuracy and loss, and local training loss, per round (one line per run)."""
    plt = _pyplot()
    fig, (acc_ax, loss_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, rows in runs:
        step = _floats(rows, _step_key(rows))
        acc, loss = _floats(rows, "test_acc"), _floats(rows, "test_loss")
        seen = ~np.isnan(acc)
        acc_ax.plot(step[seen], acc[seen], marker=".", label=label)
        loss_ax.plot(step[seen], loss[seen], marker=".", label=f"{label} test")
        if "train_loss" in rows[0]:
            loss_ax.plot(step, _floats(rows, "train_loss"), linestyle="--", alpha=0.7, label=f"{label} train")
    acc_ax.set(xlabel=_step_key(runs[0][1]), ylabel="test accuracy", title="global model accuracy")
    loss_ax.set(xlabel=_step_key(runs[0][1]), ylabel="cross-entropy", title="global model loss")
    for ax in (acc_ax, loss_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_virtual_time(runs: Sequence[tuple[str, list[dict[str, str]]]], path: Path) -> Path | None:
    """Test accuracy against virtual time (the device profile's clock) beside accuracy against
    rounds, one line per run; ``None`` when no run's clock moved (no device profile)."""
    timed = [(label, rows) for label, rows in runs if np.nanmax(_floats(rows, "virtual_seconds"), initial=0.0) > 0]
    if not timed:
        return None
    plt = _pyplot()
    hours = max(np.nanmax(_floats(rows, "virtual_seconds")) for _, rows in timed) >= 3 * 3600
    unit, scale = ("hours", 3600.0) if hours else ("seconds", 1.0)
    fig, (time_ax, round_ax) = plt.subplots(1, 2, figsize=(10, 3.6), sharey=True)
    for label, rows in timed:
        clock, rounds, acc = _floats(rows, "virtual_seconds") / scale, _floats(rows, "round"), _floats(rows, "test_acc")
        seen = ~np.isnan(acc)
        time_ax.plot(clock[seen], acc[seen], marker=".", label=label)
        round_ax.plot(rounds[seen], acc[seen], marker=".", label=label)
    time_ax.set(xlabel=f"virtual time ({unit})", ylabel="test accuracy", title="accuracy against virtual time")
    round_ax.set(xlabel="round", title="accuracy against rounds")
    for ax in (time_ax, round_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_agents(records: list[dict[str, str]], path: Path, agents: int = 3) -> Path | None:
    """Local loss and accuracy of the most-selected agents, over their rounds and epochs (Figure 9)."""
    if not records:
        return None
    plt = _pyplot()
    ids = np.array([int(float(r["agent"])) for r in records])
    chosen = [int(a) for a in np.argsort(-np.bincount(ids), kind="stable")[:agents]]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    epochs = 1 + max(int(float(r["epoch"])) for r in records)
    for agent in chosen:
        mine = [r for r in records if int(float(r["agent"])) == agent]
        x = [int(float(r["round"])) + 1 + int(float(r["epoch"])) / epochs for r in mine]
        loss_ax.plot(x, [float(r["loss"]) for r in mine], marker="o", label=f"agent {agent}")
        acc_ax.plot(x, [float(r["acc"]) for r in mine], marker="o", label=f"agent {agent}")
    loss_ax.set(xlabel="round (and local epoch)", ylabel="local training loss", title="agents' local loss")
    acc_ax.set(xlabel="round (and local epoch)", ylabel="local training accuracy", title="agents' local accuracy")
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_sampling(rows: list[dict[str, str]], path: Path) -> Path:
    """How often each agent was selected, and its number of samples."""
    plt = _pyplot()
    times = np.array([int(r["times_selected"]) for r in rows])
    fig, ax = plt.subplots(figsize=(10, 3.2))
    shown = times[:500]
    ax.bar(np.arange(len(shown)), shown, width=1.0, color="tab:blue")
    ax.set(xlabel="agent" + (" (first 500)" if len(times) > 500 else ""), ylabel="times selected",
           title=f"sampling counts ({int((times > 0).sum())} of {len(times)} agents ever selected)")
    fig.tight_layout()
    return _save(fig, path)


def plot_memory(rows: list[dict[str, str]], path: Path) -> Path | None:
    """Memory per round: peak process memory, and device memory on accelerators (Figure 10)."""
    columns = [k for k in rows[0] if k.startswith("memory/")]
    if not columns:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    step = _floats(rows, _step_key(rows))
    for column in columns:
        ax.plot(step, _floats(rows, column), marker=".", label=column.removeprefix("memory/"))
    ax.set(xlabel=_step_key(rows), ylabel="MiB", title="memory")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    return _save(fig, path)


def plot_partition(partition: dict[str, Any], path: Path) -> Path | None:
    """Labels per agent as stacked bars (Figure 6)."""
    counts = partition.get("label_counts")
    if not counts:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    draw_label_distribution(ax, np.array(counts), "labels per agent")
    fig.tight_layout()
    return _save(fig, path)


def _agent_records(run_dir: Path) -> list[dict[str, str]]:
    files = sorted((run_dir / "logs" / "agents").glob("version_*/metrics.csv"))
    return [row for f in files for row in read_csv(f)]


def _read(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> Path:
    """Write the report of one run (or the overlay of several) and return the HTML page's path."""
    runs = [Path(d) for d in run_dirs]
    if not runs:
        raise UserError("give at least one run folder.")
    histories = [(run.name, _check_run(run)) for run in runs]
    out = Path(out_dir) if out_dir is not None else (runs[0] / "report" if len(runs) == 1 else Path("report"))
    out.mkdir(parents=True, exist_ok=True)
    figures: list[tuple[str, Path]] = [("Global model per round (Figure 8)", plot_global(histories, out / "global.png"))]
    timed = plot_virtual_time(histories, out / "virtual_time.png")
    if timed:
        figures.append(("Accuracy against virtual time and rounds", timed))
    sections: list[str] = []
    if len(runs) == 1:
        run = runs[0]
        figure = plot_agents(_agent_records(run), out / "agents.png")
        if figure:
            figures.append(("Local curves of the most-selected agents (Figure 9)", figure))
        if (run / "sampling.csv").is_file():
            figures.append(("Sampling counts per agent", plot_sampling(read_csv(run / "sampling.csv"), out / "sampling.png")))
        figure = plot_memory(histories[0][1], out / "memory.png")
        if figure:
            figures.append(("Memory per round (Figure 10)", figure))
        if (run / "partition.json").is_file():
            figure = plot_partition(json.loads((run / "partition.json").read_text()), out / "partition.png")
            if figure:
                figures.append(("Labels per agent (Figure 6)", figure))
        summary = json.loads(_read(run / "summary.json") or "{}")
        profile = _read(run / "profile.txt") or summary.get("profile", "")
        plugins = json.loads(_read(run / "plugins.json") or "{}")
        sections += [
            _section("Summary", _table({k: v for k, v in summary.items() if k not in ("profile", "final")}
                                       | {f"final {k}": v for k, v in summary.get("final", {}).items()})),
            _section("Profiler (Table 4)", f"<pre>{html.escape(profile)}</pre>" if profile else "<p>no profiler</p>"),
            _section("Plugins", _table(plugins.get("distributions", {})) +
                     f"<pre>{html.escape(json.dumps(plugins.get('components', {}), indent=2))}</pre>"),
            _section("Resolved config", f"<pre>{html.escape(_read(run / 'config.yaml'))}</pre>"),
        ]
    title = runs[0].name if len(runs) == 1 else "comparison of " + ", ".join(r.name for r in runs)
    body = "".join(f'<figure><img src="{p.name}" alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}'
                   f"</figcaption></figure>" for caption, p in figures) + "".join(sections)
    page = out / "index.html"
    write_text(page, _PAGE.format(title=html.escape(title), body=body))
    return page


def _section(title: str, content: str) -> str:
    return f"<section><h2>{html.escape(title)}</h2>{content}</section>"


def _table(values: dict[str, Any]) -> str:
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in values.items())
    return f"<table>{rows}</table>"


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
    return str(value)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>flcore report: {title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; color: #222; }}
figure {{ margin: 1.5rem 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
figcaption {{ color: #555; font-size: 0.9rem; }} pre {{ background: #f6f6f6; padding: 0.8rem; overflow-x: auto; }}
table {{ border-collapse: collapse; }} th, td {{ text-align: left; padding: 0.2rem 0.8rem; border-bottom: 1px solid #eee; }}
</style></head>
<body><h1>flcore report: {title}</h1>
{body}
</body></html>
"""
