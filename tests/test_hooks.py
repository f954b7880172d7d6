"""Every hook specification is documented with its signature and exercised by a test."""

from __future__ import annotations

import inspect
from pathlib import Path

from flcore import hookspecs
from flcore.registry import KINDS

ROOT = Path(__file__).parent.parent


def hook_names() -> list[str]:
    return [name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("register_")]


def test_every_kind_has_a_hook_and_every_hook_a_kind():
    assert sorted(hook_names()) == sorted(KINDS.values())


def test_every_hook_is_documented_with_its_signature():
    docs = (ROOT / "docs" / "plugins.md").read_text()
    for name in hook_names():
        signature = f"{name}{inspect.signature(getattr(hookspecs, name))}"
        assert f"### `{signature}`" in docs, f"docs/plugins.md lacks a section '### `{signature}`'"
        assert getattr(hookspecs, name).__doc__, f"{name} has no docstring"


def test_every_hook_is_implemented_by_a_plugin_that_a_test_exercises():
    sources = "\n".join(p.read_text() for p in list((ROOT / "plugins").rglob("*.py")) + list((ROOT / "contrib").rglob("*.py")))
    tests = "\n".join(p.read_text() for p in list((ROOT / "tests").rglob("test_*.py")) + list((ROOT / "contrib").rglob("test_*.py")))
    for kind, name in KINDS.items():
        assert f"def {name}(register)" in sources, f"no plugin implements {name}"
        assert f'"{kind}"' in tests or f"'{kind}'" in tests, f"no test resolves a component of kind {kind!r}"

