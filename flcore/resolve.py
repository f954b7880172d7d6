"""Resolving the components a config names: registry lookup, parameter validation, requirements.

Everything here happens before any work, so ``flcore validate`` and ``flcore run`` reject the same
mistakes with the same message (exit code 2): an unknown or ambiguous name, bad parameters, a
requirement that cannot be met.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from pydantic import ValidationError

from flcore.errors import ConfigError, PluginError
from flcore.params import ComponentParams, format_validation_error

if TYPE_CHECKING:
    from flcore.config import ExperimentConfig
    from flcore.registry import Component, Registry

#: kinds a run holds a list of (the others: exactly one each)
LIST_KINDS = ("agent_plugin", "server_plugin", "agent_metadata")


def validate_params(component: Component, params: Mapping[str, Any], where: str) -> ComponentParams:
    """Validate a config section against the component's own parameter model."""
    model = component.params_model()
    try:
        return model.model_validate(dict(params))
    except ValidationError as exc:
        accepted = ", ".join(model.model_fields) or "none"
        owner = f"{component.kind} '{component.name}' (from {component.provider} {component.version})"
        raise ConfigError(
            format_validation_error(exc, where, f"parameters for {owner}") + f" Parameters it accepts: {accepted}."
        ) from None


@dataclass(frozen=True)
class Resolved:
    """A component chosen by a config section, with its validated parameters."""

    component: Component
    params: ComponentParams
    where: str

    def build(self, *args: Any) -> Any:
        """Construct it as ``target(params, *args)``; the object learns the name it was configured
        under (``component_name``), which namespaces its metrics and random streams."""
        obj = self.component.load()(self.params, *args)
        with contextlib.suppress(AttributeError, TypeError):
            obj.component_name = self.component.name
        return obj

    @contextlib.contextmanager
    def rejecting(self) -> Iterator[None]:
        """Turn a ValueError raised inside (the component rejecting this experiment's data) into a
        ConfigError naming the config section: bad input, not a crash."""
        try:
            yield
        except ValueError as exc:
            raise ConfigError(f"{self.where} '{self.component.name}' cannot be used here: {exc}") from None

    @property
    def label(self) -> str:
        """``kind 'name' (distribution version)``, for messages that must name the plugin."""
        c = self.component
        return f"{c.kind} '{c.name}' (from {c.provider} {c.version})"


def resolve(registry: Registry, kind: str, name: str, params: Mapping[str, Any], where: str) -> Resolved:
    """One component by name, its parameters validated."""
    component = registry.resolve(kind, name)
    return Resolved(component, validate_params(component, params, where), where)


def resolve_components(config: ExperimentConfig, registry: Registry) -> dict[str, Any]:
    """Resolve every component the config names, and every component those require.

    Returns ``{kind: Resolved}`` for the single kinds and ``{kind: [Resolved, ...]}`` for
    agent-side plugins, server-side plugins and agent metadata. Raises
    :class:`flcore.errors.PluginError` or :class:`flcore.errors.ConfigError` before any work.
    """
    resolved: dict[str, Any] = {"dataset": resolve(registry, "dataset", config.dataset.name, config.dataset.params,
                                                   "dataset"),
                                "model": resolve(registry, "model", config.model.name, config.model.params, "model")}
    federation = config.federation
    if federation is None:
        return resolved
    for kind in ("partitioner", "sampler", "aggregator", "backend", "availability", "device_profile", "round_policy"):
        spec = getattr(federation, kind)
        resolved[kind] = resolve(registry, kind, spec.name, spec.params, f"federation.{kind}")
    for kind, section in (("agent_plugin", "agent_plugins"), ("server_plugin", "server_plugins"),
                          ("agent_metadata", "agent_metadata")):
        resolved[kind] = [resolve(registry, kind, spec.name, spec.params, f"federation.{section}[{i}]")
                          for i, spec in enumerate(getattr(federation, section))]
    _add_requirements(resolved, registry)
    return resolved


def _add_requirements(resolved: dict[str, Any], registry: Registry) -> None:
    """Pull in what components require, transitively. A required component the config lists itself
    is not added twice: the config's entry (its parameters, its place) is kept. Required agent-side
    plugins go before the listed ones, in the order of the components requiring them."""
    pending = [r for value in resolved.values() for r in (value if isinstance(value, list) else [value])]
    added: dict[str, list[Resolved]] = {kind: [] for kind in LIST_KINDS}
    while pending:
        owner = pending.pop(0)
        target = owner.component.load()
        for requirement in getattr(target, "requirements", lambda params: ())(owner.params):
            if requirement.kind not in LIST_KINDS:
                raise PluginError(f"{owner.label} requires a {requirement.kind} ('{requirement.name}'), but a run "
                                  f"has exactly one {requirement.kind}, chosen by the config.")
            component = registry.resolve(requirement.kind, requirement.name)
            present = resolved[requirement.kind] + added[requirement.kind]
            if any(r.component == component for r in present):
                continue
            where = f"{owner.where} (requires {requirement.kind} '{requirement.name}')"
            entry = Resolved(component, validate_params(component, requirement.params, where), where)
            added[requirement.kind].append(entry)
            pending.append(entry)
    for kind in LIST_KINDS:
        resolved[kind] = added[kind] + resolved[kind]
