"""The outputs of ``flcore robustness``: one row per attack, defense and share (seeds averaged) as
``table.csv``, attack-by-defense tables per share as ``table.md``, heat maps as ``table.png``."""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from pathlib import Path
from statistics import mean, pstdev
from typing import Any, Sequence

from flcore.engine.checkpoint import write_text

COLUMNS = ("attack", "defense", "share", "seeds", "test_acc", "test_acc_std", "attack_success", "malicious_kept",
           "runs")


def summarise(results: Sequence[Any], out: Path) -> list[dict[str, Any]]:
    """One row per (attack, defense, share): final accuracy and attack success averaged over seeds,
    the mean share of the aggregate the defense gave malicious updates (where it tells)."""
    groups: dict[tuple[str, str, float], list[Any]] = defaultdict(list)
    for result in results:
        groups[(result.cell.attack, result.cell.defense, result.cell.share)].append(result)
    rows = []
    for (attack, defense, share), members in groups.items():
        accuracy = [r.final("test_acc") for r in members if r.final("test_acc") is not None]
        success = [r.final("/attack_success") for r in members if r.final("/attack_success") is not None]
        kept = [r.mean("/malicious_kept") for r in members if r.mean("/malicious_kept") is not None]
        rows.append({
            "attack": attack, "defense": defense, "share": share, "seeds": " ".join(str(r.cell.seed) for r in members),
            "test_acc": _or_none(mean, accuracy), "test_acc_std": pstdev(accuracy) if len(accuracy) > 1 else None,
            "attack_success": _or_none(mean, success), "malicious_kept": _or_none(mean, kept),
            "runs": " ".join(str(_relative(r.run_dir, out)) for r in members),
        })
    return rows


def _or_none(function: Any, values: list[float]) -> float | None:
    return function(values) if values else None


def _relative(path: Path, root: Path) -> Path:
    try:
        return Path(path).resolve().relative_to(root.resolve())
    except ValueError:
        return Path(path)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(COLUMNS), restval="")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else f"{v:.4f}" if isinstance(v, float) and k != "share" else v)
                         for k, v in row.items()})
    return buffer.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]], grid: Any) -> str:
    """Per share: final test accuracy (and a backdoor's attack success), then the malicious share
    of what each defense kept."""
    attacks, defenses = list(grid.attacks), list(grid.defenses)
    seeds = ", ".join(str(s) for s in grid.seeds)
    lines = []
    for share in grid.shares:
        cells = {(r["attack"], r["defense"]): r for r in rows if r["share"] == share}
        lines += [f"### {share:.0%} malicious agents", "",
                  f"Final test accuracy (mean over seeds {seeds}); for a backdoor, its attack success rate after "
                  "the slash.", "", _header(defenses)]
        for attack in attacks:
            lines.append(f"| {attack} | " + " | ".join(_score(cells.get((attack, d))) for d in defenses) + " |")
        lines += ["", "Share of the aggregate carried by malicious updates, mean over rounds (— where the defense "
                  "cannot tell which updates it used).", "", _header(defenses)]
        for attack in attacks:
            if grid.attacks[attack] is None:
                continue
            lines.append(f"| {attack} | " + " | ".join(_number(cells.get((attack, d)), "malicious_kept")
                                                      for d in defenses) + " |")
        lines.append("")
    return "\n".join(lines)


def _header(defenses: Sequence[str]) -> str:
    return "| attack \\ defense | " + " | ".join(defenses) + " |\n|---|" + "---|" * len(defenses)


def _score(row: dict[str, Any] | None) -> str:
    if row is None or row["test_acc"] is None:
        return "—"
    text = f"{row['test_acc']:.3f}"
    return text + (f" / {row['attack_success']:.3f}" if row["attack_success"] is not None else "")


def _number(row: dict[str, Any] | None, key: str) -> str:
    return "—" if row is None or row[key] is None else f"{row[key]:.2f}"


def plot(rows: Sequence[dict[str, Any]], grid: Any, path: Path) -> Path:
    """Heat maps, stacked: per share, final accuracy (attack by defense), then attack success for
    the attacks that measure it."""
    import numpy as np

    from flcore.plots import _pyplot

    plt = _pyplot()
    attacks, defenses = list(grid.attacks), list(grid.defenses)
    backdoors = [a for a in attacks if any(r["attack"] == a and r["attack_success"] is not None for r in rows)]
    panels = [(share, title, labels, key) for share in grid.shares
              for title, labels, key in [("final test accuracy", attacks, "test_acc")]
              + ([("attack success rate", backdoors, "attack_success")] if backdoors else [])]
    heights = [len(labels) for _, _, labels, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, squeeze=False, gridspec_kw={"height_ratios": heights},
                             figsize=(2.0 + 0.75 * len(defenses), 1.6 + 0.4 * sum(heights) + 0.5 * len(panels)))
    for ax, (share, title, labels, key) in zip(axes[:, 0], panels):
        cells = {(r["attack"], r["defense"]): r for r in rows if r["share"] == share}
        values = np.array([[np.nan if cells.get((a, d)) is None or cells[(a, d)][key] is None else cells[(a, d)][key]
                            for d in defenses] for a in labels])
        ax.imshow(values, vmin=0, vmax=1, cmap="RdYlGn" if key == "test_acc" else "RdYlGn_r", aspect="auto")
        for (r, c), value in np.ndenumerate(values):
            if not np.isnan(value):
                ax.text(c, r, f"{value:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(defenses)), defenses, rotation=40, ha="right", fontsize=8)
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_title(f"{title}, {share:.0%} malicious agents", fontsize=9)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_outputs(results: Sequence[Any], grid: Any, out: Path, with_plot: bool = True) -> dict[str, Path]:
    """Write table.csv, table.md and (unless ``with_plot`` is false) table.png into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    rows = summarise(results, out)
    paths = {"csv": out / "table.csv", "markdown": out / "table.md"}
    write_text(paths["csv"], to_csv(rows))
    write_text(paths["markdown"], to_markdown(rows, grid))
    if with_plot:
        paths["figure"] = plot(rows, grid, out / "table.png")
    return paths
