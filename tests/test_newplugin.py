"""`flcore new-plugin` writes a package that installs, is listed, runs, and passes its own test."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from flcore.cli import main


@pytest.mark.slow
@pytest.mark.parametrize("kind,name", [("aggregator", "fedtest"), ("sampler", "pickfew"), ("partitioner", "stripes")])
def test_generated_package_installs_is_listed_and_passes_its_test(tmp_path, kind, name):
    result = CliRunner().invoke(main, ["new-plugin", "--kind", kind, name, "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    package = tmp_path / f"flcore-{name}"
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(site), str(package)], check=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listing = subprocess.run([sys.executable, "-m", "flcore.cli", "list-plugins", "--json", "--strict"], env=env,
                             capture_output=True, text=True, check=True)
    rows = [c for c in json.loads(listing.stdout)["components"] if c["provided_by"] == f"flcore-{name}"]
    assert [(r["kind"], r["name"], r["version"]) for r in rows] == [(kind, name, "0.1.0")]
    tests = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(package / "tests")],
                           env=env, capture_output=True, text=True, cwd=tmp_path)
    assert tests.returncode == 0, tests.stdout + tests.stderr
    assert "2 passed" in tests.stdout


def test_new_plugin_refuses_bad_names_and_existing_folders(tmp_path):
    assert CliRunner().invoke(main, ["new-plugin", "--kind", "sampler", "Bad-Name", "--dir", str(tmp_path)]).exit_code == 2
    assert CliRunner().invoke(main, ["new-plugin", "--kind", "sampler", "ok", "--dir", str(tmp_path)]).exit_code == 0
    again = CliRunner().invoke(main, ["new-plugin", "--kind", "sampler", "ok", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output
