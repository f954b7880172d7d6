"""Parameter models of components, and validating a config section against one.

Each component declares ``Params``, a subclass of :class:`ComponentParams`: unknown keys are errors,
so a typo in a config names the plugin, the field and what the plugin accepts.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError


class ComponentParams(BaseModel):
    """Base of every component's parameter model: strict about unknown keys, infinities and NaNs, immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class NoParams(ComponentParams):
    """The parameters of a component that takes none."""


def params_model_of(target: Any) -> type[ComponentParams]:
    """A component's parameter model: its ``Params`` attribute, or its first argument's annotation."""
    model = getattr(target, "Params", None)
    if model is None and callable(target) and not isinstance(target, type):
        import inspect
        import typing

        hints = typing.get_type_hints(target)
        first = next(iter(inspect.signature(target).parameters), None)
        model = hints.get(first) if first else None
    if isinstance(model, type) and issubclass(model, BaseModel):
        return model
    return NoParams


def format_validation_error(exc: ValidationError, where: str, subject: str) -> str:
    """One paragraph naming each bad field, the value given and what was expected."""
    parts = []
    for error in exc.errors():
        location = ".".join(str(p) for p in error["loc"])
        field_path = f"{where}.{location}" if where and location else (where or location)
        if error["type"] == "extra_forbidden":
            parts.append(f"'{field_path}' is not a known field")
        elif error["type"] == "missing":
            parts.append(f"'{field_path}' is required but missing")
        else:
            parts.append(f"'{field_path}' = {error.get('input')!r}: {error['msg']}")
    return f"invalid {subject}: " + "; ".join(parts) + "."
