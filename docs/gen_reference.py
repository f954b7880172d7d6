"""Generate docs/reference/config.md from the pydantic models and docs/reference/cli.md from click.

    python docs/gen_reference.py           # write the files
    python docs/gen_reference.py --check   # exit 1 if they are out of date (a test runs this)
"""

from __future__ import annotations

import sys
import types
import typing
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from flcore.cli import main as cli
from flcore.config import ComponentSpec, ExperimentConfig

HERE = Path(__file__).parent / "reference"


def _type(annotation: Any) -> str:
    if typing.get_origin(annotation) is typing.Literal:
        return " or ".join(f"`{a!r}`" if a is not None else "None" for a in typing.get_args(annotation))
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return " or ".join(_type(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "None"
    text = str(annotation) if typing.get_args(annotation) else getattr(annotation, "__name__", str(annotation))
    return text.replace("typing.", "").replace("flcore.config.", "").replace("ComponentSpec", "component")


def _models(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    nested: list[tuple[str, type[BaseModel]]] = []
    out.append(f"## `{prefix or 'top level'}`\n")
    out.append(f"{(model.__doc__ or '').strip()}\n")
    out.append("| key | type | default | description |\n|---|---|---|---|")
    for name, info in model.model_fields.items():
        if info.default is not PydanticUndefined:
            default = f"`{info.default!r}`"
        elif info.default_factory is not None:
            value = info.default_factory()
            if isinstance(value, ComponentSpec):
                default = f"`{value.name}`"
            elif isinstance(value, BaseModel):
                default = "see below"
            else:
                default = f"`{[v.name if isinstance(v, ComponentSpec) else v for v in value]!r}`"
        else:
            default = "required"
        out.append(f"| `{name}` | {_type(info.annotation)} | {default} | {info.description or ''} |")
        for candidate in getattr(info.annotation, "__args__", (info.annotation,)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel) and candidate.__name__ not in (
                    "ComponentSpec", "LoggerSpec"):
                nested.append((f"{prefix}.{name}" if prefix else name, candidate))
    out.append("")
    for path, child in nested:
        _models(child, path, out)


def config_reference() -> str:
    out = ["# Config reference\n", "Generated from flcore's pydantic models by `docs/gen_reference.py`. A component "
           "(dataset, model, partitioner, sampler, aggregator, logger) is its name or `{name: ..., <parameter>: ...}`; "
           "`flcore describe KIND NAME` lists a component's parameters.\n"]
    _models(ExperimentConfig, "", out)
    return "\n".join(out)


def _command(command: click.Command, name: str, out: list[str]) -> None:
    context = click.Context(command, info_name=name, terminal_width=100, max_content_width=100)
    out.append(f"## `{name}`\n\n```text\n{command.get_help(context)}\n```\n")
    if isinstance(command, click.Group):
        for sub in sorted(command.list_commands(context)):
            _command(command.get_command(context, sub), f"{name} {sub}", out)


def cli_reference() -> str:
    out = ["# CLI reference\n", "Generated from the click commands by `docs/gen_reference.py`.\n"]
    _command(cli, "flcore", out)
    return "\n".join(out)


def main(check: bool) -> int:
    HERE.mkdir(exist_ok=True)
    stale = []
    for name, text in (("config.md", config_reference()), ("cli.md", cli_reference())):
        path = HERE / name
        if check:
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print("out of date, run python docs/gen_reference.py: " + ", ".join(stale))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv))
