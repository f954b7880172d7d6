"""Shared fixtures: fake plugin distributions and tiny experiment configs."""

from __future__ import annotations

import importlib
import os
import sys
import textwrap
from pathlib import Path
from typing import Callable

import pytest
from hypothesis import settings

# CI replays the same examples every run, so a rare counterexample shows up in development, not as a flaky CI
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def fake_distribution(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Path]:
    """Make an installed-looking distribution: a dist-info with entry points, and its modules, on sys.path."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    created_modules: list[str] = []

    def make(name: str, version: str = "1.0", modules: dict[str, str] | None = None,
             entry_points: dict[str, str] | None = None) -> Path:
        dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
        dist_info.mkdir()
        (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
        lines = ["[flcore]"] + [f"{k} = {v}" for k, v in (entry_points or {}).items()]
        (dist_info / "entry_points.txt").write_text("\n".join(lines) + "\n")
        for module, source in (modules or {}).items():
            (site / f"{module}.py").write_text(textwrap.dedent(source))
            created_modules.append(module)
        importlib.invalidate_caches()
        return dist_info

    yield make
    for module in created_modules:
        sys.modules.pop(module, None)


@pytest.fixture
def tiny_config() -> dict:
    """A federated experiment on the embedded digits that runs in about a second (flcore.testing's)."""
    from flcore.testing import tiny_config as make

    return make() | {"seed": 3}
