"""``flcore robustness``: attacks by defenses (by attacker shares, by seeds) from one grid file, every
cell the same experiment with the same seeds and data, summarised as a table and a figure.

A grid file (YAML; ``flcore/configs/robustness.yaml`` is the embedded default)::

    experiment: {...}          # the base experiment: a flcore config, or the path of one
    seeds: [0]
    shares: [0.2]              # the share of malicious agents, given to every attack
    attacks:                   # label: an agent-plugin spec, or null for no attack
      none: null
      sign_flip: {name: sign_flip, scale: 4}
    defenses:                  # label: federation entries (aggregator, server_plugins, ...)
      fedavg: {aggregator: fedavg}
      krum: {aggregator: {name: krum, byzantine: $f}}

Inside a defense, the strings ``$f`` and ``$share`` become the cell's expected malicious updates per
round (``round(share * cohort)``, the cohort from the sampler) and its share.

The grid becomes a list of :class:`Cell` (a name and dotted ``--set`` overrides of the base
experiment: the shape of a sweep's points), :func:`run_cell` runs or reads back each one in its own
folder, and :mod:`flcore.robustness_report` writes the table. A cell whose run finished is read
back and one that was stopped is resumed, so the command can simply be run again; handing the cells
to ``flcore sweep`` instead means replacing :func:`run_cells` (see the module's ``run_grid``).
"""

from __future__ import annotations

import importlib.resources
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from flcore.config import apply_overrides, read_config_file, validate_config, with_defaults
from flcore.errors import ConfigError
from flcore.params import format_validation_error

DEFAULT_GRID = "robustness.yaml"


class Grid(BaseModel):
    """A grid file, validated; unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")

    experiment: str | dict[str, Any] = Field(description="The base experiment: a config mapping or a file path.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Experiment seeds.")
    shares: list[float] = Field(default_factory=lambda: [0.2], min_length=1, description="Malicious shares.")
    attacks: dict[str, dict[str, Any] | str | None] = Field(min_length=1, description="Label: agent-plugin spec.")
    defenses: dict[str, dict[str, Any]] = Field(min_length=1, description="Label: federation entries.")

    @field_validator("shares")
    @classmethod
    def _shares_in_range(cls, shares: list[float]) -> list[float]:
        if any(not 0 < s <= 1 for s in shares):
            raise ValueError("every share must be in (0, 1]")
        return shares


@dataclass
class Cell:
    """One run of the grid: its labels and the overrides that make it from the base experiment."""

    attack: str
    defense: str
    share: float
    seed: int
    overrides: list[str]

    @property
    def name(self) -> str:
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{self.attack}-{self.defense}-share{self.share:g}-seed{self.seed}")


@dataclass
class CellResult:
    """What the table needs from one finished run."""

    cell: Cell
    run_dir: Path
    history: list[dict[str, Any]] = field(repr=False)

    def final(self, suffix: str) -> float | None:
        """The last value of the column ending in ``suffix`` (``test_acc``, ``/attack_success``)."""
        for row in reversed(self.history):
            for key, value in row.items():
                if (key == suffix or key.endswith(suffix)) and value not in (None, ""):
                    return float(value)
        return None

    def mean(self, suffix: str) -> float | None:
        """The mean over rounds of the column ending in ``suffix`` (``/malicious_kept``)."""
        values = [float(v) for row in self.history for k, v in row.items() if k.endswith(suffix) and v not in (None, "")]
        return sum(values) / len(values) if values else None


def load_grid(path: str | Path | None = None) -> tuple[Grid, dict[str, Any]]:
    """The grid file (the embedded default when ``path`` is None) and its base experiment mapping."""
    if path is None:
        import yaml

        data = yaml.safe_load(importlib.resources.files("flcore.configs").joinpath(DEFAULT_GRID).read_text())
        source, folder = "the default robustness grid", Path(".")
    else:
        data, source, folder = read_config_file(path), f"grid '{path}'", Path(path).parent
    try:
        grid = Grid.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "", source)) from None
    base = grid.experiment if isinstance(grid.experiment, dict) else read_config_file(folder / grid.experiment)
    if base.get("federation", {}) is None:
        raise ConfigError(f"{source}: the experiment must be federated (it has 'federation: null').")
    return grid, with_defaults(base)


def select(grid: Grid, attacks: Sequence[str] = (), defenses: Sequence[str] = (), shares: Sequence[float] = (),
           seeds: Sequence[int] = ()) -> Grid:
    """The grid narrowed to the given labels, with other shares or seeds (empty: keep the grid's)."""
    for kind, asked, known in (("attack", attacks, grid.attacks), ("defense", defenses, grid.defenses)):
        unknown = [a for a in asked if a not in known]
        if unknown:
            raise ConfigError(f"--{kind} {', '.join(unknown)}: the grid has no such {kind}; it has "
                              f"{', '.join(known)}.")
    return Grid.model_validate({
        "experiment": grid.experiment, "seeds": list(seeds or grid.seeds), "shares": list(shares or grid.shares),
        "attacks": {k: v for k, v in grid.attacks.items() if not attacks or k in attacks},
        "defenses": {k: v for k, v in grid.defenses.items() if not defenses or k in defenses}})


def expand(grid: Grid, base: dict[str, Any], cohort: int) -> list[Cell]:
    """Every cell: seeds, then attacks, then shares, then defenses, in the grid's order."""
    cells = []
    listed = list(base["federation"].get("agent_plugins") or [])
    for seed in grid.seeds:
        for attack, spec in grid.attacks.items():
            for share in grid.shares:
                attack_overrides = []
                if spec is not None:
                    plugin = {"name": spec} if isinstance(spec, str) else dict(spec)
                    if not {"share", "count", "ids"} & set(plugin):
                        plugin["share"] = share
                    attack_overrides = [f"federation.agent_plugins={json.dumps(listed + [plugin])}"]
                f = int(round(share * cohort))
                for defense, entries in grid.defenses.items():
                    cell = Cell(attack, defense, share, seed, [])
                    cell.overrides = [f"seed={seed}", f"name={cell.name}", 'logging.progress="off"', *attack_overrides,
                                      *(f"federation.{key}={json.dumps(_substitute(value, f, share))}"
                                        for key, value in entries.items())]
                    cells.append(cell)
    return cells


def _substitute(value: Any, f: int, share: float) -> Any:
    if value == "$f":
        return f
    if value == "$share":
        return share
    if isinstance(value, dict):
        return {k: _substitute(v, f, share) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, f, share) for v in value]
    return value


def cohort_of(base: dict[str, Any], registry: Any) -> int:
    """The most agents the base experiment's sampler selects a round (every agent when it cannot tell)."""
    from flcore.experiment import Experiment

    config = validate_config(base, "the grid's experiment")
    sampler = Experiment(config, registry=registry).components["sampler"].build()
    agents = config.federation.agents
    return sampler.cohort_size(agents) or agents


def run_cell(cell: Cell, base: dict[str, Any], runs: Path, registry: Any) -> CellResult:
    """Run one cell in ``runs/<cell>/``; a finished run there is read back, a stopped one resumed."""
    from flcore.engine.rundir import read_csv
    from flcore.experiment import Experiment

    folder = runs / cell.name
    config = validate_config(apply_overrides(base, cell.overrides), f"cell {cell.name}")
    previous = sorted(p for p in folder.glob("*") if (p / "config.yaml").is_file()) if folder.is_dir() else []
    if previous and _finished(previous[-1], config.federation.rounds):
        return CellResult(cell, previous[-1], read_csv(previous[-1] / "metrics.csv"))
    experiment = Experiment(config, registry=registry)
    if previous:
        result = experiment.run(resume_dir=previous[-1], progress="off")
    else:
        result = experiment.run(out_dir=folder, progress="off")
    return CellResult(cell, result.run_dir, result.history)


def _finished(run_dir: Path, rounds: int) -> bool:
    summary = run_dir / "summary.json"
    try:
        return json.loads(summary.read_text()).get("rounds_completed", 0) >= rounds
    except (OSError, ValueError, AttributeError):
        return False


def run_cells(cells: Sequence[Cell], base: dict[str, Any], runs: Path, registry: Any) -> list[CellResult]:
    """Every cell in order, one line each on stderr. (A sweep's runner replaces this function.)"""
    results = []
    for number, cell in enumerate(cells, 1):
        started = time.perf_counter()
        result = run_cell(cell, base, runs, registry)
        accuracy = result.final("test_acc")
        shown = f"test_acc {accuracy:.4f}" if accuracy is not None else "no evaluation"
        print(f"[{number}/{len(cells)}] {cell.attack} x {cell.defense}, share {cell.share:g}, seed {cell.seed}: "
              f"{shown} ({time.perf_counter() - started:.1f} s)", file=sys.stderr)
        results.append(result)
    return results


def check_cells(cells: Sequence[Cell], base: dict[str, Any], registry: Any) -> None:
    """Every cell's names and parameters, and every component's check against the run (Krum's f
    against the cohort, a backdoor's target against the classes), before the first run."""
    from flcore.engine.assembly import build_components, check_run
    from flcore.experiment import Experiment

    data = None
    for cell in cells:
        experiment = Experiment(validate_config(apply_overrides(base, cell.overrides), f"cell {cell.name}"),
                                registry=registry)
        data = data if data is not None else experiment.components["dataset"].build()  # the cells share it
        built, _ = build_components(experiment.components)
        try:
            check_run(experiment.config, experiment.components, built, data)
        except ConfigError as exc:
            raise ConfigError(f"cell {cell.name}: {exc}") from None


def run_grid(grid: Grid, base: dict[str, Any], out_dir: str | Path, plot: bool = True) -> dict[str, Path]:
    """Validate every cell, run them, and write ``table.md``, ``table.csv`` (and ``table.png``)."""
    from flcore.registry import discover
    from flcore.robustness_report import write_outputs

    registry = discover()
    cells = expand(grid, base, cohort_of(base, registry))
    check_cells(cells, base, registry)
    out = Path(out_dir)
    results = run_cells(cells, base, out / "runs", registry)
    return write_outputs(results, grid, out, plot)
