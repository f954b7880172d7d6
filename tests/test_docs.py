"""The documentation: generated references are current, and the site builds without warnings."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent


def test_generated_references_are_up_to_date():
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "gen_reference.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_the_site_builds_strictly(tmp_path):
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "site" / "reference" / "config" / "index.html").is_file()


def _blocks(page: str, language: str) -> list[str]:
    import re

    return re.findall(rf"```{language}\n(.*?)```", (ROOT / "docs" / page).read_text(), flags=re.S)


def test_docs_cli_md_lists_every_command():
    from flcore.cli import main

    table = (ROOT / "docs" / "cli.md").read_text().split("## Exit codes")[0]
    missing = [name for name in main.list_commands(None) if f"| `flcore {name}" not in table]
    assert missing == [], f"docs/cli.md's table lacks {missing}"


def test_the_toml_example_in_config_md_is_the_yaml_example_and_builds_the_same_model():
    import tomllib
    import yaml

    from flcore.config import validate_config
    from flcore.experiment import Experiment

    yaml_data = yaml.safe_load(_blocks("config.md", "yaml")[0])
    toml_data = tomllib.loads(_blocks("config.md", "toml")[0])
    assert validate_config(toml_data) == validate_config(yaml_data)
    counts = []
    for data in (yaml_data, toml_data):
        experiment = Experiment(validate_config(data))
        spec = experiment.components["dataset"].build().spec
        counts.append(experiment.components["model"].build(spec).parameter_counts())
    assert counts[0] == counts[1] and counts[0]["total"] != 84_426  # 84,426: the TOML's old, other model


def test_the_python_api_page_runs_as_written(tmp_path, monkeypatch):
    from flcore.engine.rundir import read_csv

    monkeypatch.chdir(tmp_path)
    blocks = _blocks("python-api.md", "python")
    assert len(blocks) >= 3
    for block in blocks:
        namespace: dict = {}
        exec(compile(block, "docs/python-api.md", "exec"), namespace)  # noqa: S102 - our own docs
        if "result" in namespace and hasattr(namespace["result"], "run_dir"):
            result = namespace["result"]
            last = read_csv(result.run_dir / "metrics.csv")[-1]
            assert float(last["test_acc"]) == result.final["final"]["test_acc"]
            assert result.run_dir.resolve().parent == (tmp_path / "runs").resolve()
