"""The release: a licence, one version, a changelog entry for it, and install commands that agree."""

from __future__ import annotations

import importlib.metadata as md
from pathlib import Path

import tomllib

import flcore

ROOT = Path(__file__).parent.parent


def test_the_licence_is_apache_2_and_the_package_says_so():
    text = (ROOT / "LICENSE").read_text()
    assert text.split()[:4] == ["Apache", "License", "Version", "2.0,"] and "END OF TERMS AND CONDITIONS" in text
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


def test_the_version_lives_in_one_place():
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and pyproject["project"]["dynamic"] == ["version"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "flcore.__version__"}
    assert md.version("flcore") == flcore.__version__
    assert f"## {flcore.__version__} " in (ROOT / "CHANGELOG.md").read_text()


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()[-1]
    assert ci.startswith("python3 -m venv .venv && ") and "contrib/flcore-*/" in ci and "--no-deps" not in ci
    assert f"\n{ci}\n" in (ROOT / "README.md").read_text()


def test_the_docs_no_longer_promise_pip_install_flcore():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        assert "(`pip install flcore`)" not in page.read_text(), page.name
