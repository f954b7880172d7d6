"""Planning a sweep: its spec (grid, seeds, random search), the runs it stands for and their folders.

A run's key comes from its setting and seed (a readable slug, a hash of the run's whole config, the
seed), so the same sweep started again finds its runs; :func:`run_state` says what a run folder
holds (finished, checkpointed, begun, new) from the folder alone.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flcore.errors import ConfigError, UserError
from flcore.params import format_validation_error
from flcore.runfiles import RunFiles

SWEEP_FILE = "sweep.yaml"
EVENTS_FILE = "events.jsonl"


class Range(BaseModel):
    """A continuous (or integer) range for random search; ``log`` draws uniformly in log space."""

    model_config = ConfigDict(extra="forbid")
    low: float
    high: float
    log: bool = False
    integer: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> Range:
        if not self.low < self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class RandomSearch(BaseModel):
    """``samples`` settings drawn from ``params`` (each a list of choices or a range), seeded."""

    model_config = ConfigDict(extra="forbid")
    samples: int = Field(gt=0, description="How many settings to draw.")
    seed: int = Field(0, ge=0, description="Seed of the draws (not of the runs).")
    params: dict[str, list[Any] | Range] = Field(min_length=1, description="Dotted config key: choices or range.")


class SweepSpec(BaseModel):
    """The ``sweep:`` section of a sweep file."""

    model_config = ConfigDict(extra="forbid")
    grid: dict[str, list[Any]] = Field(default_factory=dict, description="Dotted config key: values to try.")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1, description="Seeds of every setting.")
    random: RandomSearch | None = Field(None, description="Random search, crossed with the grid.")
    metrics: list[str] = Field(default_factory=lambda: ["test_acc", "test_loss"], min_length=1,
                               description="Final metrics summarised over seeds (summary.json's 'final' keys, "
                               "or best_test_acc).")

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, grid: dict[str, list[Any]]) -> dict[str, list[Any]]:
        for key, values in grid.items():
            if not values:
                raise ValueError(f"'{key}' has no values")
        return grid

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError("seeds must be distinct and non-negative")
        return seeds

    @model_validator(mode="after")
    def _no_seed_key(self) -> SweepSpec:
        keys = list(self.grid) + list(self.random.params if self.random else {})
        if "seed" in keys:
            raise ValueError("sweep the seed with 'seeds', not as a grid or random key")
        if self.random and set(self.grid) & set(self.random.params):
            raise ValueError(f"{sorted(set(self.grid) & set(self.random.params))} are both in grid and random")
        return self


@dataclass(frozen=True)
class PlannedRun:
    """One run of the sweep: its setting, seed, full config, and the key its folder is named by."""

    setting_id: str
    label: str
    setting: dict[str, Any]
    seed: int
    config: dict[str, Any] = field(repr=False)

    @property
    def key(self) -> str:
        return f"{self.setting_id}-seed{self.seed}"


# ---------------------------------------------------------------------------------------------- plan
def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """``data`` with ``dotted`` set to ``value``, sections created as ``--set`` creates them."""
    from flcore.config import apply_overrides

    result = apply_overrides(data, [f"{dotted}=0"])
    node = result
    for part in dotted.split(".")[:-1]:
        node = node[part]
    node[dotted.split(".")[-1]] = copy.deepcopy(value)
    return result


def _draw(random: RandomSearch) -> list[dict[str, Any]]:
    """The random-search settings: without replacement when every parameter is a list of choices."""
    rng = np.random.default_rng(random.seed)
    keys = list(random.params)
    if all(isinstance(v, list) for v in random.params.values()):
        product = list(itertools.product(*random.params.values()))
        if random.samples > len(product):
            raise ConfigError(f"sweep.random.samples = {random.samples}: the choices allow only {len(product)} "
                              "distinct settings; draw fewer, or use a range.")
        picked = rng.choice(len(product), size=random.samples, replace=False)
        return [dict(zip(keys, product[i])) for i in picked]
    draws = []
    for _ in range(random.samples):
        draw = {}
        for key, space in random.params.items():
            if isinstance(space, list):
                draw[key] = copy.deepcopy(space[int(rng.integers(len(space)))])
            elif space.integer:
                draw[key] = int(rng.integers(int(space.low), int(space.high) + 1))
            else:
                low, high = (math.log(space.low), math.log(space.high)) if space.log else (space.low, space.high)
                value = float(rng.uniform(low, high))
                draw[key] = float(f"{math.exp(value) if space.log else value:.4g}")
        draws.append(draw)
    return draws


def settings(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every setting: the grid's product, crossed with the random draws; in a stable order."""
    grid = [dict(zip(spec.grid, values)) for values in itertools.product(*spec.grid.values())]
    if spec.random is None:
        return grid
    return [g | r for g in grid for r in _draw(spec.random)]


def _short(key: str) -> str:
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def _value_text(value: Any) -> str:
    if isinstance(value, dict):  # a component section: its name, then its parameters
        rest = ", ".join(f"{k}={_value_text(v)}" for k, v in value.items() if k != "name")
        return f"{value.get('name', '')}({rest})" if rest else str(value.get("name", "()"))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value_text(v) for v in value) + "]"
    return str(value)


def label_of(setting: dict[str, Any]) -> str:
    """A person's name for a setting: ``aggregator=fedprox, lr=0.01``."""
    return ", ".join(f"{_short(k)}={_value_text(v)}" for k, v in setting.items()) or "base"


def _slug(setting: dict[str, Any]) -> str:
    parts = [re.sub(r"[^A-Za-z0-9.+=-]+", "-", f"{_short(k)}-{_value_text(v)}").strip("-") for k, v in setting.items()]
    return "_".join(parts)[:60].strip("-_") or "base"


def _digest(config: dict[str, Any]) -> str:
    blob = json.dumps({k: v for k, v in config.items() if k != "seed"}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def plan(base: dict[str, Any], spec: SweepSpec) -> list[PlannedRun]:
    """Every run of the sweep, each config validated, in setting-major, seed-minor order."""
    from flcore.config import config_to_dict, validate_config, with_defaults

    base = _set(with_defaults(base), "logging.progress", "off")
    runs = []
    for setting in settings(spec):
        data = base
        for key, value in setting.items():
            data = _set(data, key, value)
        label = label_of(setting)
        config = config_to_dict(validate_config(_set(data, "seed", spec.seeds[0]), f"sweep setting {label}"))
        setting_id = f"{_slug(setting)}-{_digest(config)}"
        for seed in spec.seeds:
            runs.append(PlannedRun(setting_id, label, setting, seed, config | {"seed": seed}))
    ids = [r.key for r in runs]
    if len(set(ids)) != len(ids):
        raise ConfigError("the sweep lists the same setting twice; give each grid value once.")
    return runs


# ------------------------------------------------------------------------------------------- loading
def read_sweep_file(path: str | Path) -> tuple[dict[str, Any], SweepSpec]:
    """A sweep file: an experiment config with a ``sweep:`` section beside its other sections."""
    from flcore.config import read_config_file

    data = read_config_file(path)
    section = data.pop("sweep", None) or {}
    return data, parse_spec(section, f"sweep file '{path}'")


def parse_spec(section: Any, source: str) -> SweepSpec:
    try:
        return SweepSpec.model_validate(section)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, "sweep", source)) from None


def parse_values(item: str, option: str) -> tuple[str, Any]:
    """``KEY=VALUES`` from the command line; VALUES is YAML, ``a,b,c`` a shorthand for ``[a, b, c]``."""
    key, sep, raw = item.partition("=")
    if not sep or not key.strip() or not raw.strip():
        raise ConfigError(f"{option} '{item}' must look like 'dotted.key=[value1, value2]'.")
    try:
        value = yaml.safe_load(raw)
        if not isinstance(value, (list, dict)):
            value = [yaml.safe_load(v) for v in raw.split(",")]
    except yaml.YAMLError as exc:
        raise ConfigError(f"{option} '{item}': the values are not YAML: {exc}".replace("\n", " ")) from None
    return key.strip(), value


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or ``0-9`` (inclusive) or a mix: ``0-2,7``."""
    seeds: list[int] = []
    for part in text.split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", part)
        if not match or (match.group(2) and int(match.group(2)) < int(match.group(1))):
            raise ConfigError(f"--seeds '{text}': expected seeds like 0,1,2 or a range 0-4.")
        first = int(match.group(1))
        seeds += list(range(first, int(match.group(2) or first) + 1))
    return seeds


def sweep_from_options(config: Path | None, overrides: Sequence[str], grid: Sequence[str], seeds: str | None,
                       samples: int | None, sample: Sequence[str], search_seed: int | None,
                       metrics: Sequence[str]) -> tuple[dict[str, Any], SweepSpec]:
    """The base config and the sweep from a sweep file (or plain config) and the command line."""
    from flcore.config import apply_overrides, default_config_data, with_defaults

    if config is None:
        base, section = default_config_data(), {}
    else:
        base, spec = read_sweep_file(config)
        section = spec.model_dump(exclude_unset=True)
    base = apply_overrides(with_defaults(base), overrides)
    section.setdefault("grid", {}).update(parse_values(g, "--grid") for g in grid)
    if seeds is not None:
        section["seeds"] = parse_seeds(seeds)
    if metrics:
        section["metrics"] = list(metrics)
    if samples is not None or sample or search_seed is not None:
        random = section.get("random") or {}
        random.setdefault("params", {}).update(parse_values(s, "--sample") for s in sample)
        if samples is not None:
            random["samples"] = samples
        if search_seed is not None:
            random["seed"] = search_seed
        section["random"] = random
    return base, parse_spec(section, "sweep options")


# --------------------------------------------------------------------------------------------- runs


def run_state(folder: Path, rounds: int | None) -> tuple[str, Path | None]:
    """``new``, ``finished``, ``checkpointed`` or ``begun`` (no checkpoint yet), and the run folder.

    A federated run is finished when its summary.json says it completed all ``rounds``; one stopped
    early (``stop_after_rounds``) or extended since has a checkpoint to continue from.
    """
    from flcore.report import SummaryFile

    files = RunFiles(folder)
    found = files.folders()
    if not found:
        return "new", None
    if len(found) > 1:
        raise UserError(f"'{folder}' holds {len(found)} run folders ({', '.join(found)}); a sweep keeps one per run. "
                        "Remove the ones you do not want.")
    run = folder / found[0]
    inner = RunFiles(run)
    if inner.is_file("summary.json"):
        completed = (inner.json("summary.json", SummaryFile).model_extra or {}).get("rounds_completed")
        if rounds is None or completed == rounds:
            return "finished", run
    if inner.is_file("checkpoint.pt"):
        return "checkpointed", run
    return "begun", run


def planned_rounds(config: dict[str, Any]) -> int | None:
    """A planned run's federation.rounds (None for a centralized run)."""
    return (config.get("federation") or {}).get("rounds")
