"""``flcore report``: the paper's figures for a run, as PNG files and one HTML page.

Reads only the run folder (see docs/outputs.md), so it works on runs from other machines. For one
run: global metrics per round (Figure 8), the most-selected agents' local curves (Figure 9),
sampling counts per agent, memory per round (Figure 10), accuracy against epsilon where a component
reports ``<name>/epsilon`` (differential privacy), the labels per agent (Figure 6), the
profiler's table (Table 4), the resolved config and the plugin versions. For several runs: their
global curves overlaid. A sweep folder's report (each setting's mean curve over seeds with its 95%
confidence band, and the summary table) is :func:`flcore.sweep_summary.sweep_report`, built from the
same pieces.

A run folder is untrusted input: every file is read through :class:`~flcore.runfiles.RunFiles`
(no symbolic links, clear errors for malformed files), everything is read and checked before
anything is written, and the report is never written through a link inside the run folder.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, NonNegativeInt, field_validator

from flcore.engine.checkpoint import write_text
from flcore.errors import UserError
from flcore.plots import (
    Curve,
    agents_figure,
    global_figure,
    memory_figure,
    partition_figure,
    per_agent_figure,
    privacy_figure,
    sampling_figure,
    save_figure,
    virtual_time_figure,
)
from flcore.runfiles import RunFiles, numbers, require_columns


class PartitionFile(BaseModel):
    """an object whose 'label_counts' lists, for each agent, its number of samples of each label."""

    model_config = ConfigDict(extra="allow")
    label_counts: list[list[NonNegativeInt]] | None = None

    @field_validator("label_counts")
    @classmethod
    def _rectangular(cls, rows: list[list[int]] | None) -> list[list[int]] | None:
        if rows and len({len(r) for r in rows}) != 1:
            raise ValueError("every agent's row must have one count per label")
        return rows


class SummaryFile(BaseModel):
    """an object with 'final', the last round's metrics by name, as flcore run writes it."""

    model_config = ConfigDict(extra="allow")
    final: dict[str, float | int | str | None] = {}
    best_test_acc: float | None = None
    profile: str = ""


class PluginsFile(BaseModel):
    """an object with 'distributions' (name to version) and 'components', as flcore run writes it."""

    model_config = ConfigDict(extra="allow")
    distributions: dict[str, str] = {}
    components: dict[str, Any] = {}


@dataclass(frozen=True)
class History:
    """A run's metrics.csv, checked: the step (round or epoch) and the plotted columns as arrays."""

    step_name: str
    step: np.ndarray
    columns: dict[str, np.ndarray]

    def column(self, name: str) -> np.ndarray:
        return self.columns.get(name, np.full(len(self.step), np.nan))

    def epsilon(self) -> np.ndarray | None:
        """The privacy spent per round, from a component's ``<name>/epsilon`` column (the first), if any."""
        name = next((k for k in self.columns if k.endswith("/epsilon")), None)
        return None if name is None else self.columns[name]

    def curve(self, label: str) -> Curve:
        train = self.columns.get("train_loss")
        return Curve(label, self.step, self.column("test_acc"), self.column("test_loss"), train)


#: the per-agent evaluation columns the report plots (flcore.engine.personal)
PER_AGENT = ("agent_acc_mean", "agent_acc_p10", "agent_acc_p90")


def read_history(files: RunFiles) -> History:
    """metrics.csv of a run folder, or a UserError saying why it is not a (started) run."""
    rows = files.csv_rows("metrics.csv")
    if rows is None:
        raise UserError(f"'{files.root}' is not a flcore run folder: it has no metrics.csv.")
    if not rows:
        raise UserError(f"'{files.root}' has no completed round or epoch yet.")
    where = files.describe("metrics.csv")
    step_name = "round" if "round" in rows[0] else "epoch"
    if step_name not in rows[0]:
        raise UserError(f"{where} lacks the column 'round' (or 'epoch' for a centralized run); its columns are "
                        f"{', '.join(rows[0])}.")
    plotted = ["test_acc", "test_loss", "train_loss", "virtual_seconds", *PER_AGENT] + [
        k for k in rows[0] if k.startswith("memory/") or k.endswith("/epsilon")]
    columns = {name: numbers(rows, name, where) for name in plotted if name in rows[0]}
    return History(step_name, numbers(rows, step_name, where, integer=True), columns)


@dataclass
class RunRecord:
    """Everything the report shows about one run, read and checked before anything is drawn."""

    path: Path
    history: History
    agents: dict[str, np.ndarray] | None = None
    times_selected: np.ndarray | None = None
    label_counts: np.ndarray | None = None
    summary: SummaryFile = field(default_factory=SummaryFile)
    profile: str = ""
    plugins: PluginsFile = field(default_factory=PluginsFile)
    config_text: str = ""


def _agent_records(files: RunFiles) -> dict[str, np.ndarray] | None:
    versions = [v for v in files.folders("logs/agents") if v.startswith("version_")]
    versions.sort(key=lambda v: int(v.removeprefix("version_")) if v.removeprefix("version_").isdigit() else -1)
    arrays: dict[str, list[np.ndarray]] = {k: [] for k in ("agent", "round", "epoch", "loss", "acc")}
    for version in versions:
        relative = f"logs/agents/{version}/metrics.csv"
        rows = files.csv_rows(relative) or []
        require_columns(rows, list(arrays), files.describe(relative))
        for key, values in arrays.items():
            values.append(numbers(rows, key, files.describe(relative), integer=key in ("agent", "round", "epoch")))
    if not arrays["agent"] or not sum(len(a) for a in arrays["agent"]):
        return None
    merged = {k: np.concatenate(v) for k, v in arrays.items()}
    if (merged["agent"] < 0).any():
        raise UserError(f"{files.describe('logs/agents')}: an agent id is negative.")
    return merged


def read_run(path: str | Path) -> RunRecord:
    """Read and check every file of a run folder that the report uses."""
    files = RunFiles(path)
    record = RunRecord(Path(path), read_history(files))
    record.agents = _agent_records(files)
    sampling = files.csv_rows("sampling.csv")
    if sampling:
        require_columns(sampling, ["times_selected"], files.describe("sampling.csv"))
        record.times_selected = numbers(sampling, "times_selected", files.describe("sampling.csv"), integer=True)
    partition = files.json("partition.json", PartitionFile)
    if partition is not None and partition.label_counts:
        record.label_counts = np.array(partition.label_counts, dtype=np.int64)
    record.summary = files.json("summary.json", SummaryFile) or SummaryFile()
    record.profile = files.text("profile.txt") or record.summary.profile
    record.plugins = files.json("plugins.json", PluginsFile) or PluginsFile()
    record.config_text = files.text("config.yaml") or ""
    return record


def _output_folder(runs: Sequence[Path], out_dir: str | Path | None) -> Path:
    """Where the report goes; the default folder inside a run may not be (or be reached by) a link."""
    if out_dir is not None:
        out = Path(out_dir)
    elif len(runs) == 1:
        out = RunFiles(runs[0]).path("report")
    else:
        out = Path("report")
    if out.exists() and not out.is_dir():
        raise UserError(f"'{out}' exists and is not a folder; give another --out.")
    out.mkdir(parents=True, exist_ok=True)
    return out


def report(run_dirs: Sequence[str | Path], out_dir: str | Path | None = None) -> Path:
    """Write the report of one run (or the overlay of several) and return the HTML page."""
    runs = [Path(d) for d in run_dirs]
    if not runs:
        raise UserError("give at least one run folder.")
    records = [read_run(r) for r in runs] if len(runs) == 1 else []
    histories = [(r.name, read_history(RunFiles(r))) for r in runs] if not records else [
        (records[0].path.name, records[0].history)]
    out = _output_folder(runs, out_dir)
    step_name = histories[0][1].step_name
    figures = [("Global model per round (Figure 8)",
                save_figure(global_figure([h.curve(name) for name, h in histories], step_name), out / "global.png"))]
    timed = [(h.curve(name), h.column("virtual_seconds")) for name, h in histories
             if np.nanmax(h.column("virtual_seconds"), initial=0.0) > 0]
    if timed:  # a device profile moved the virtual clock
        figures.append(("Accuracy against virtual time and rounds",
                        save_figure(virtual_time_figure(timed), out / "virtual_time.png")))
    private = [(h.curve(name), h.epsilon()) for name, h in histories
               if h.epsilon() is not None and np.isfinite(h.epsilon()).any()]
    if private:  # a privacy component reported epsilon
        figures.append(("Accuracy against privacy spent (epsilon)",
                        save_figure(privacy_figure(private), out / "privacy.png")))
    personal = [(name, h.step, {k: h.column(k) for k in PER_AGENT}) for name, h in histories
                if np.isfinite(h.column("agent_acc_mean")).any()]
    if personal:  # evaluation.per_agent_every scored each agent on its held-out split
        figures.append(("Per-agent accuracy on held-out splits (mean, 10th-90th percentile)",
                        save_figure(per_agent_figure(personal), out / "per_agent.png")))
    sections: list[str] = []
    if records:
        record = records[0]
        figures += _run_figures(record, out)
        summary = record.summary
        shown = {k: v for k, v in summary.model_dump().items() if k not in ("profile", "final")}
        sections += [
            _section("Summary", _table(shown | {f"final {k}": v for k, v in summary.final.items()})),
            _section("Profiler (Table 4)",
                     f"<pre>{html.escape(record.profile)}</pre>" if record.profile else "<p>no profiler</p>"),
            _section("Plugins", _table(record.plugins.distributions) +
                     f"<pre>{html.escape(json.dumps(record.plugins.components, indent=2))}</pre>"),
            _section("Resolved config", f"<pre>{html.escape(record.config_text)}</pre>"),
        ]
    title = runs[0].name if len(runs) == 1 else "comparison of " + ", ".join(r.name for r in runs)
    return _write_page(out, title, figures, sections)


def _run_figures(record: RunRecord, out: Path) -> list[tuple[str, Path]]:
    figures = []
    if record.agents is not None:
        a = record.agents
        figures.append(("Local curves of the most-selected agents (Figure 9)",
                        save_figure(agents_figure(a["agent"], a["round"], a["epoch"], a["loss"], a["acc"]),
                                    out / "agents.png")))
    if record.times_selected is not None:
        figures.append(("Sampling counts per agent", save_figure(sampling_figure(record.times_selected),
                                                                 out / "sampling.png")))
    memory = {k.removeprefix("memory/"): v for k, v in record.history.columns.items() if k.startswith("memory/")}
    if memory:
        figures.append(("Memory per round (Figure 10)",
                        save_figure(memory_figure(record.history.step, memory, record.history.step_name),
                                    out / "memory.png")))
    if record.label_counts is not None:
        figures.append(("Labels per agent (Figure 6)", save_figure(partition_figure(record.label_counts),
                                                                   out / "partition.png")))
    return figures


def _write_page(out: Path, title: str, figures: list[tuple[str, Path]], sections: list[str]) -> Path:
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
