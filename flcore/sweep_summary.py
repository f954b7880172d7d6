"""A sweep folder's results: each setting's finished runs, summarised over seeds.

Everything here is computed from the run folders alone (read as untrusted input, through
:class:`~flcore.runfiles.RunFiles`), so a sweep that was killed and resumed summarises exactly as one
that ran straight through. For each setting and metric: the mean over seeds, the sample standard
deviation and the 95% confidence interval of the mean from Student's t with n - 1 degrees of freedom.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from flcore.errors import UserError
from flcore.runfiles import RunFiles
from flcore.sweep_plan import SWEEP_FILE, SweepSpec, parse_spec, plan, planned_rounds, run_state


def t_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation and the Student-t confidence interval of the mean."""
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean()) if len(x) else math.nan
    if len(x) < 2:
        return mean, math.nan, math.nan, math.nan
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1)) * std / math.sqrt(len(x))
    return mean, std, mean - half, mean + half


@dataclass
class SettingResult:
    """One setting's finished runs: per-seed final metrics and histories."""

    setting_id: str
    label: str
    setting: dict[str, Any]
    planned: int
    finals: dict[int, dict[str, float]] = field(default_factory=dict)
    histories: dict[int, Any] = field(default_factory=dict)


@dataclass
class SweepResults:
    """A sweep folder's runs grouped by setting, read from the run folders alone."""

    folder: Path
    spec: SweepSpec
    settings: list[SettingResult]

    @property
    def step_name(self) -> str:
        for s in self.settings:
            for history in s.histories.values():
                return history.step_name
        return "round"

    def rows(self) -> list[dict[str, Any]]:
        """One row per setting: its values, seeds finished, and mean/std/CI of each metric."""
        keys = list(dict.fromkeys(k for s in self.settings for k in s.setting))
        rows = []
        for s in self.settings:
            row: dict[str, Any] = {"setting": s.label}
            row |= {k: json.dumps(s.setting[k]) if isinstance(s.setting.get(k), (dict, list)) else s.setting.get(k)
                    for k in keys}
            row["seeds"] = len(s.finals)
            row["planned"] = s.planned
            for metric in self.spec.metrics:
                values = [f[metric] for f in s.finals.values() if f.get(metric) is not None]
                mean, std, low, high = t_interval(values)
                row |= {f"{metric}_mean": mean, f"{metric}_std": std, f"{metric}_ci95_low": low,
                        f"{metric}_ci95_high": high}
            rows.append(row)
        return rows

    def summary_csv(self) -> str:
        import csv
        import io

        rows = self.rows()
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["setting"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _plain(v) for k, v in row.items()} for row in rows)
        return buffer.getvalue()

    def summary_markdown(self) -> str:
        header = ["setting", "seeds"] + [f"{m} (mean ± 95% CI)" for m in self.spec.metrics] + [
            f"{m} sd" for m in self.spec.metrics]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for row in self.rows():
            cells = [row["setting"], f"{row['seeds']}/{row['planned']}"]
            for m in self.spec.metrics:
                mean, low, high = row[f"{m}_mean"], row[f"{m}_ci95_low"], row[f"{m}_ci95_high"]
                cells.append("n/a" if math.isnan(mean) else f"{mean:.4f}" if math.isnan(low)
                             else f"{mean:.4f} ± {(high - low) / 2:.4f}")
            cells += ["n/a" if math.isnan(row[f"{m}_std"]) else f"{row[f'{m}_std']:.4f}" for m in self.spec.metrics]
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        note = (f"\nMean over each setting's finished seeds ({', '.join(map(str, self.spec.seeds))}); ± is the half-width "
                "of the 95% confidence interval of the mean (Student t, n - 1 degrees of freedom); sd is the sample "
                "standard deviation.\n")
        return "\n".join(lines) + "\n" + note

    def summary_html(self) -> str:
        import html

        rows = self.rows()
        if not rows:
            return "<p>no runs</p>"
        head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(_plain(v))}</td>" for v in row.values()) + "</tr>"
                       for row in rows)
        return f"<table><tr>{head}</tr>{body}</table>"

    def write_summary(self) -> None:
        from flcore.engine.checkpoint import write_text

        write_text(self.folder / "summary.csv", self.summary_csv())
        write_text(self.folder / "summary.md", self.summary_markdown())

    def curves(self) -> list[Any]:
        """Each setting's mean test accuracy and loss per round over its finished seeds, with the 95% band."""
        from flcore.plots import Curve

        curves = []
        for s in self.settings:
            histories = list(s.histories.values())
            if not histories:
                continue
            length = min(len(h.step) for h in histories)
            step = histories[0].step[:length]
            bands = {}
            for metric in ("test_acc", "test_loss"):
                stack = np.stack([h.column(metric)[:length] for h in histories])
                stats = [t_interval(column) if not np.isnan(column).any() else (math.nan,) * 4 for column in stack.T]
                mean, _, low, high = (np.array(v) for v in zip(*stats))
                bands[metric] = (mean, (low, high) if len(histories) > 1 else None)
            curves.append(Curve(f"{s.label} (n={len(histories)})", step, bands["test_acc"][0], bands["test_loss"][0],
                                acc_band=bands["test_acc"][1], loss_band=bands["test_loss"][1]))
        return curves


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return "" if value is None else str(value)


def read_sweep(folder: str | Path) -> SweepResults:
    """Group a sweep folder's finished runs by setting, reading ``sweep.yaml`` and the run folders."""
    from flcore.report import SummaryFile, read_history

    folder = Path(folder)
    files = RunFiles(folder)
    text = files.text(SWEEP_FILE)
    if text is None:
        raise UserError(f"'{folder}' is not a flcore sweep folder: it has no {SWEEP_FILE}.")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{files.describe(SWEEP_FILE)} is not valid YAML: {exc}".replace("\n", " ")) from None
    if not isinstance(data, dict):
        raise UserError(f"{files.describe(SWEEP_FILE)} must hold a mapping, as flcore sweep writes it.")
    spec = parse_spec(data.pop("sweep", None) or {}, f"'{folder / SWEEP_FILE}'")
    results: dict[str, SettingResult] = {}
    for run in plan(data, spec):
        setting = results.setdefault(run.setting_id, SettingResult(run.setting_id, run.label, run.setting, 0))
        setting.planned += 1
        relative = f"runs/{run.key}"
        files.path(relative)  # no link on the way
        state, path = run_state(folder / relative, planned_rounds(run.config)) if files.is_file(relative) else ("new", None)
        if state != "finished":
            continue
        inner = RunFiles(path)
        summary = inner.json("summary.json", SummaryFile)
        final = dict(summary.final) | {"best_test_acc": summary.best_test_acc}
        setting.finals[run.seed] = {k: float(v) for k, v in final.items() if isinstance(v, (int, float))}
        setting.histories[run.seed] = read_history(inner)
    return SweepResults(folder, spec, list(results.values()))


def is_sweep(path: Path) -> bool:
    """Whether ``path`` is a sweep folder (it holds sweep.yaml and runs/)."""
    return (path / SWEEP_FILE).is_file() and (path / "runs").is_dir()


def sweep_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> Path:
    """The overlay of a sweep's settings (mean over seeds, 95% band) and its summary table."""
    from flcore.plots import global_figure, save_figure
    from flcore.report import _section, _write_page

    results = read_sweep(sweep_dir)
    out = Path(out_dir) if out_dir is not None else RunFiles(sweep_dir).path("report")
    if out.exists() and not out.is_dir():
        raise UserError(f"'{out}' exists and is not a folder; give another --out.")
    out.mkdir(parents=True, exist_ok=True)
    curves = results.curves()
    figures = []
    if curves:
        title = "mean over seeds; band: 95% confidence interval (Student t)"
        figures.append(("Global model per round, each setting over its seeds",
                        save_figure(global_figure(curves, results.step_name, title), out / "global.png")))
    sections = [_section("Summary over seeds", results.summary_html())]
    return _write_page(out, Path(sweep_dir).name, figures, sections)
