"""`flcore new-plugin` writes a package that installs, is listed, runs, and passes its own test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from flcore.cli import main

KINDS = {"aggregator": "fedtest", "sampler": "pickfew", "partitioner": "stripes", "agent_plugin": "clipper",
         "server_plugin": "damper", "backend": "bysize", "availability": "sometimes", "device_profile": "phones",
         "round_policy": "cutoff"}


@pytest.mark.slow
def test_generated_packages_install_are_listed_and_pass_their_tests(tmp_path):
    """One package per kind, installed together as a user would, each listed with its version and
    passing its own two tests."""
    from flcore.newplugin import SETTINGS

    assert set(KINDS) == set(SETTINGS)
    site = tmp_path / "site"
    packages = []
    for kind, name in KINDS.items():
        result = CliRunner().invoke(main, ["new-plugin", "--kind", kind, name, "--dir", str(tmp_path)])
        assert result.exit_code == 0, result.output
        packages.append(tmp_path / f"flcore-{name}")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), *map(str, packages)], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listing = subprocess.run([sys.executable, "-m", "flcore.cli", "list-plugins", "--json", "--strict"], env=env,
                             capture_output=True, text=True, check=True)
    rows = {(c["kind"], c["name"], c["version"]) for c in json.loads(listing.stdout)["components"]
            if c["provided_by"].startswith("flcore-")}
    assert {(kind, name, "0.1.0") for kind, name in KINDS.items()} <= rows
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            *[str(p / "tests") for p in packages]],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert f"{2 * len(KINDS)} passed" in tests.stdout


def test_new_plugin_refuses_bad_names_and_existing_folders(tmp_path):
    assert CliRunner().invoke(main, ["new-plugin", "--kind", "sampler", "Bad-Name", "--dir", str(tmp_path)]).exit_code == 2
    assert CliRunner().invoke(main, ["new-plugin", "--kind", "sampler", "ok", "--dir", str(tmp_path)]).exit_code == 0
    again = CliRunner().invoke(main, ["new-plugin", "--kind", "sampler", "ok", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output
