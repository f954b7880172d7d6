"""``flcore new-plugin``: write a ready-to-install plugin package (replaces TorchFL's code generator).

The package has a pyproject with the entry point, the component with its pydantic parameters, a
README and a test that passes as written, using :mod:`flcore.testing`.
"""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from flcore.errors import UserError

_HOOK = {"aggregator": "register_aggregators", "sampler": "register_samplers", "partitioner": "register_partitioners"}

_COMPONENT = {
    "aggregator": '''"""The $name aggregator."""

from __future__ import annotations

from typing import Sequence

import torch
from pydantic import Field

from flcore.aggregation import Aggregator, ClientUpdate, weighted_mean_delta
from flcore.params import ComponentParams


class ${cls}Params(ComponentParams):
    server_lr: float = Field(1.0, gt=0, description="Step size applied to the mean update.")


class $cls(Aggregator):
    """Sample-weighted mean of the updates, scaled by server_lr. Replace with your rule."""

    Params = ${cls}Params

    def aggregate(self, global_vector: torch.Tensor, updates: Sequence[ClientUpdate], round_index: int) -> torch.Tensor:
        return global_vector + self.params.server_lr * weighted_mean_delta(updates)
''',
    "sampler": '''"""The $name sampler."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from flcore.agents import AgentPopulation
from flcore.params import ComponentParams
from flcore.sampling import Sampler


class ${cls}Params(ComponentParams):
    count: int = Field(5, gt=0, description="Agents per round.")


class $cls(Sampler):
    """Uniformly random agents. Replace with your rule; agent metadata is in population.columns."""

    Params = ${cls}Params

    def sample(self, population: AgentPopulation, round_index: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(population), size=min(self.params.count, len(population)), replace=False)
''',
    "partitioner": '''"""The $name partitioner."""

from __future__ import annotations

from flcore.params import ComponentParams
from flcore.partition import Partition, Partitioner


class ${cls}Params(ComponentParams):
    pass


class $cls(Partitioner):
    """Round-robin over a seeded shuffle. Replace with your rule."""

    Params = ${cls}Params

    def split(self, labels, num_agents, rng, groups=None) -> Partition:
        order = rng.permutation(len(labels))
        return Partition.from_shards([order[a::num_agents] for a in range(num_agents)])
''',
}

_TEST = {
    "aggregator": '''from flcore.testing import check_aggregator, run_tiny_experiment, tiny_config


def test_${name}_honours_the_interface():
    check_aggregator("$name")


def test_${name}_learns(tmp_path):
    result = run_tiny_experiment(tmp_path, tiny_config(aggregator="$name", rounds=4))
    assert result.history[-1]["test_acc"] > 0.5
''',
    "sampler": '''from flcore.testing import check_sampler, run_tiny_experiment, tiny_config


def test_${name}_honours_the_interface():
    check_sampler("$name")


def test_${name}_runs(tmp_path):
    result = run_tiny_experiment(tmp_path, tiny_config(sampler="$name", rounds=3))
    assert [row["selected"] for row in result.history] == [5, 5, 5]
''',
    "partitioner": '''from flcore.testing import check_partitioner, run_tiny_experiment, tiny_config


def test_${name}_honours_the_interface():
    check_partitioner("$name")


def test_${name}_runs(tmp_path):
    result = run_tiny_experiment(tmp_path, tiny_config(partitioner="$name", rounds=2))
    assert result.history[-1]["test_acc"] > 0.3
''',
}

_PYPROJECT = '''[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "$dist"
version = "0.1.0"
description = "The $name $kind for flcore."
readme = "README.md"
requires-python = ">=3.10"
dependencies = ["flcore>=$flcore_version"]

[project.optional-dependencies]
test = ["pytest>=8"]

[project.entry-points.flcore]
$package = "$package"

[tool.setuptools]
packages = ["$package"]
'''

_INIT = '''"""$dist: the $name $kind for flcore."""

from flcore import hookimpl


@hookimpl
def $hook(register):
    register("$name", "$package.$module:$cls", "Describe $name in one line.")
'''

_README = '''# $dist

The `$name` $kind for [flcore](https://pypi.org/project/flcore/).

```bash
pip install .
flcore list-plugins --kind $kind      # shows $name, provided by $dist
flcore describe $kind $name
flcore run --set federation.$kind=$name
```

Develop: `pip install -e '.[test]' && pytest`.
'''


def write_plugin(kind: str, name: str, directory: str | Path = ".") -> Path:
    """Write the package for component ``name`` of ``kind`` under ``directory``; return its folder."""
    from flcore import __version__

    if kind not in _COMPONENT:
        raise UserError(f"--kind {kind!r}: expected one of {', '.join(_COMPONENT)}.")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise UserError(f"NAME {name!r}: use lower-case letters, digits and '_', starting with a letter.")
    dist, package = f"flcore-{name.replace('_', '-')}", f"flcore_{name}"
    target = Path(directory) / dist
    if target.exists():
        raise UserError(f"'{target}' already exists; choose another NAME or --dir.")
    values = {"name": name, "kind": kind, "dist": dist, "package": package, "module": name,
              "cls": "".join(part.capitalize() for part in name.split("_")), "hook": _HOOK[kind],
              "flcore_version": ".".join(__version__.split(".")[:2])}
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{package}/__init__.py": _INIT,
        f"{package}/{name}.py": _COMPONENT[kind],
        f"tests/test_{name}.py": _TEST[kind],
    }
    for relative, template in files.items():
        path = target / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(Template(template).substitute(values))
    return target
