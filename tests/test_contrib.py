"""The contrib packages, installed from their folders as a user would, are listed and run."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
from pathlib import Path

import pytest
import tomllib
from click.testing import CliRunner

from flcore.cli import main

CONTRIB = Path(__file__).parent.parent / "contrib"
PACKAGES = sorted(p for p in CONTRIB.iterdir() if (p / "pyproject.toml").is_file())


def _installed(name: str) -> bool:
    try:
        md.version(name)
        return True
    except md.PackageNotFoundError:
        if os.environ.get("CI"):
            raise AssertionError(f"{name} is not installed; .ci/run installs every contrib package") from None
        return False


def _write_femnist(root: Path) -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 3)):
        (root / split).mkdir(parents=True)
        users = [f"w{u}" for u in range(4)]
        blob = {"users": users, "num_samples": [n] * 4,
                "user_data": {u: {"x": rng.random((n, 784)).tolist(), "y": rng.integers(0, 62, n).tolist()}
                              for u in users}}
        (root / split / "data.json").write_text(json.dumps(blob))


def _overrides(package: str, tmp_path: Path) -> list[str]:
    if package == "flcore-fedexp":
        return ["federation.aggregator=fedexp"]
    if package == "flcore-dnc":
        return ["federation.aggregator={name: dnc, byzantine: 1}", "federation.agent_plugins=[{name: min_max, count: 2}]"]
    if package == "flcore-powerofchoice":
        return ["federation.sampler={name: power_of_choice, candidates: 10, count: 4}"]
    if package == "flcore-fednova":
        return ["federation.aggregator=fednova", "federation.partitioner={name: quantity_skew, sigma: 1.0}"]
    if package == "flcore-leaf":
        _write_femnist(tmp_path / "femnist")
        return ["dataset={name: femnist, root: " + str(tmp_path / "femnist") + "}", "federation.agents=4",
                "federation.partitioner=natural", "model={name: mlp, hidden: [16]}"]
    if package == "flcore-hf":
        return ["federation.partitioner={name: flwr_dirichlet, alpha: 0.5, min_partition_size: 5}"]
    raise AssertionError(f"add an experiment for the new contrib package {package}")


def test_there_are_at_least_three_contrib_packages():
    assert len(PACKAGES) >= 3


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda p: p.name)
def test_contrib_package_is_listed_with_its_version_and_runs(folder, tmp_path):
    project = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    if not _installed(project["name"]):
        pytest.skip(f"{project['name']} is not installed (pip install {folder})")
    listing = json.loads(CliRunner().invoke(main, ["list-plugins", "--json"]).output)
    mine = [c for c in listing["components"] if c["provided_by"] == project["name"]]
    assert mine and all(c["version"] == project["version"] for c in mine)
    assert listing["distributions"][project["name"]] == project["version"]
    sets = [item for o in _overrides(project["name"], tmp_path) for item in ("--set", o)]
    result = CliRunner().invoke(main, ["run", "--out", str(tmp_path / "runs"), "--set", "federation.rounds=2", *sets])
    assert result.exit_code == 0, result.output
    run_dir = next((tmp_path / "runs").iterdir())
    used = json.loads((run_dir / "plugins.json").read_text())["components"]
    assert any(entry["provided_by"] == project["name"] for entries in used.values() for entry in entries)
