"""``flcore new-plugin``: write a ready-to-install plugin package (replaces TorchFL's code generator).

The package has a pyproject with the entry point, the component with its pydantic parameters, a
README and a test that passes as written, using :mod:`flcore.testing`. The templates are the files
in ``flcore/plugin_templates/``, one component and one test per kind.
"""

from __future__ import annotations

import importlib.resources
import re
from pathlib import Path
from string import Template

from flcore.errors import UserError
from flcore.kinds import HOOKS

#: the kinds a template exists for, and the --set that uses the generated component
SETTINGS = {
    "aggregator": "federation.aggregator=$name",
    "sampler": "federation.sampler=$name",
    "partitioner": "federation.partitioner=$name",
    "agent_plugin": "'federation.agent_plugins=[$name]'",
    "server_plugin": "'federation.server_plugins=[$name]'",
    "backend": "federation.backend=$name",
    "availability": "federation.availability=$name",
    "device_profile": "federation.device_profile=$name",
    "round_policy": "federation.round_policy=$name",
}


def _template(file: str) -> Template:
    return Template(importlib.resources.files("flcore").joinpath("plugin_templates", file).read_text("utf-8"))


def write_plugin(kind: str, name: str, directory: str | Path = ".") -> Path:
    """Write the package for component ``name`` of ``kind`` under ``directory``; return its folder."""
    from flcore import __version__

    if kind not in SETTINGS:
        raise UserError(f"--kind {kind!r}: expected one of {', '.join(SETTINGS)}.")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise UserError(f"NAME {name!r}: use lower-case letters, digits and '_', starting with a letter.")
    dist, package = f"flcore-{name.replace('_', '-')}", f"flcore_{name}"
    target = Path(directory) / dist
    if target.exists():
        raise UserError(f"'{target}' already exists; choose another NAME or --dir.")
    values = {"name": name, "kind": kind, "dist": dist, "package": package, "module": name,
              "cls": "".join(part.capitalize() for part in name.split("_")), "hook": HOOKS[kind],
              "flcore_version": ".".join(__version__.split(".")[:2]),
              "setting": Template(SETTINGS[kind]).substitute(name=name)}
    files = {
        "pyproject.toml": "pyproject.toml.tmpl",
        "README.md": "README.md.tmpl",
        f"{package}/__init__.py": "__init__.py.tmpl",
        f"{package}/{name}.py": f"{kind}.py.tmpl",
        f"tests/test_{name}.py": f"{kind}_test.py.tmpl",
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_template(template).substitute(values))
    return target
