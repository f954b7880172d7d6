"""Discovering plugins through entry points and resolving component names.

Load order: entry points of the group ``flcore`` sorted by distribution name, then entry-point name;
then plugins passed in code. Each plugin is loaded and asked to register in isolation, so one broken
package is recorded (and shown by ``flcore list-plugins``) while every other keeps working. Strict mode
(``FLCORE_STRICT_PLUGINS=1`` or ``strict=True``) turns such a failure into an error.

Environment variables, each a comma-separated list of ``distribution`` or ``distribution:entry_point``:

- ``FLCORE_BLOCK_PLUGINS``: plugins that are not loaded;
- ``FLCORE_ONLY_PLUGINS``: when set, only these plugins are loaded.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata as md
import os
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import pluggy

from flcore import hookspecs
from flcore.errors import PluginError
from flcore.kinds import HOOKS
from flcore.params import params_model_of

ENTRY_POINT_GROUP = "flcore"

#: Component kinds and the hook that registers each (defined once, in flcore.kinds).
KINDS: dict[str, str] = HOOKS

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_TRUE = {"1", "true", "yes", "on"}


def _normalize(dist_name: str) -> str:
    return re.sub(r"[-_.]+", "-", dist_name).lower()


@dataclass(frozen=True)
class Component:
    """A registered component: cheap to hold, imported only by :meth:`load`."""

    kind: str
    name: str
    target: str | Callable[..., Any]
    description: str
    provider: str
    version: str
    plugin: str

    @property
    def qualified_name(self) -> str:
        """``<distribution>:<name>``, which resolves even when two providers share the name."""
        return f"{self.provider}:{self.name}"

    def load(self) -> Any:
        """Import and return the component's class or factory."""
        if not isinstance(self.target, str):
            return self.target
        module_name, _, attribute = self.target.partition(":")
        try:
            obj = importlib.import_module(module_name)
            for part in attribute.split("."):
                obj = getattr(obj, part)
        except Exception as exc:  # a plugin's import error must name the plugin
            raise PluginError(
                f"{self.kind} '{self.name}' from {self.provider} {self.version} could not be imported "
                f"from '{self.target}': {type(exc).__name__}: {exc}"
            ) from exc
        return obj

    def params_model(self) -> type:
        """The pydantic model of the component's parameters (an empty one if it declares none)."""
        return params_model_of(self.load())


@dataclass(frozen=True)
class PluginFailure:
    """A plugin that could not be loaded or failed while registering."""

    plugin: str
    provider: str
    version: str
    error: str


@dataclass
class Registry:
    """Every component that the loaded plugins registered, by kind and name."""

    components: dict[str, dict[str, list[Component]]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS}
    )
    failures: list[PluginFailure] = field(default_factory=list)
    plugins: list[tuple[str, str, str]] = field(default_factory=list)  # (plugin, provider, version)

    # ----------------------------------------------------------------------------------- queries
    def all(self, kind: str | None = None) -> list[Component]:
        """Components sorted by kind, name and provider; of one kind if ``kind`` is given."""
        kinds = [kind] if kind else list(KINDS)
        out: list[Component] = []
        for k in kinds:
            self._check_kind(k)
            for name in sorted(self.components[k]):
                out.extend(sorted(self.components[k][name], key=lambda c: c.provider))
        return out

    def distributions(self) -> dict[str, str]:
        """Installed plugin distributions and their versions."""
        return {provider: version for _, provider, version in self.plugins}

    def resolve(self, kind: str, name: str) -> Component:
        """The one component of ``kind`` called ``name`` (or ``distribution:name``)."""
        self._check_kind(kind)
        provider, sep, short = name.rpartition(":")
        candidates = self.components[kind].get(short if sep else name, [])
        if sep:
            candidates = [c for c in candidates if _normalize(c.provider) == _normalize(provider)]
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            providers = ", ".join(f"{c.qualified_name} ({c.version})" for c in candidates)
            raise PluginError(
                f"{kind} '{name}' is provided by several plugins: {providers}. "
                f"Name the one you mean as '<distribution>:{short or name}', or block one of them "
                "with FLCORE_BLOCK_PLUGINS."
            )
        raise PluginError(self._unknown_message(kind, name))

    def _unknown_message(self, kind: str, name: str) -> str:
        known = sorted(self.components[kind])
        qualified = [c.qualified_name for c in self.all(kind)]
        message = f"unknown {kind} '{name}'."
        close = difflib.get_close_matches(name, known + qualified, n=1, cutoff=0.5)
        if close:
            message += f" Did you mean '{close[0]}'?"
        message += f" Installed {kind}s: {', '.join(known) if known else 'none'}."
        blocked = [f for f in self.failures if f.error.startswith("blocked")]
        broken = [f for f in self.failures if not f.error.startswith("blocked")]
        if broken:
            message += " Plugins that failed to load: " + "; ".join(
                f"{f.plugin} ({f.provider}): {f.error}" for f in broken
            ) + "."
        if blocked:
            message += " Blocked plugins: " + ", ".join(f.plugin for f in blocked) + "."
        return message

    @staticmethod
    def _check_kind(kind: str) -> None:
        if kind not in KINDS:
            raise PluginError(f"unknown component kind '{kind}'; expected one of {', '.join(KINDS)}.")

    # ------------------------------------------------------------------------------ registering
    def add_plugin(self, plugin: object, plugin_name: str, provider: str, version: str) -> None:
        """Ask one loaded plugin to register its components; record its failure, if any."""
        manager = pluggy.PluginManager("flcore")
        manager.add_hookspecs(hookspecs)
        staged: list[Component] = []
        try:
            _check_hook_names(plugin)
            manager.register(plugin, name=plugin_name)
            manager.check_pending()  # a hook implementation that matches no specification
            for kind, hook_name in KINDS.items():
                for impl in getattr(manager.hook, hook_name).get_hookimpls():
                    impl.function(register=self._register_callback(kind, staged, plugin_name, provider, version))
            if not staged:
                raise PluginError("it registered no component: does it implement a register_* hook with "
                                  "@flcore.hookimpl?")
        except Exception as exc:  # isolation: a plugin failing to register must not stop the others
            self.failures.append(PluginFailure(plugin_name, provider, version, f"{type(exc).__name__}: {exc}"))
            return
        for component in staged:
            self.components[component.kind].setdefault(component.name, []).append(component)
        self.plugins.append((plugin_name, provider, version))

    @staticmethod
    def _register_callback(kind: str, staged: list[Component], plugin: str, provider: str, version: str):
        def register(name: str, target: str | Callable[..., Any], description: str = "") -> None:
            if not isinstance(name, str) or not _NAME.match(name):
                raise ValueError(
                    f"{kind} name {name!r} is not valid: use letters, digits, '_', '-' and '.', no ':'"
                )
            if isinstance(target, str) and ":" not in target:
                raise ValueError(f"{kind} '{name}': target {target!r} must look like 'module:attribute'")
            staged.append(Component(kind, name, target, description, provider, version, plugin))

        return register


def _check_hook_names(plugin: object) -> None:
    """Refuse ``register_*`` attributes that are not flcore hook implementations: a misspelled hook
    (``register_aggregator``) or a hook without ``@hookimpl`` would otherwise be ignored silently."""
    hookimpl_marker = f"{hookspecs.hookimpl.project_name}_impl"
    for name in dir(plugin):
        if not name.startswith("register_") or not callable(getattr(plugin, name, None)):
            continue
        function = getattr(plugin, name)
        if name not in KINDS.values():
            close = difflib.get_close_matches(name, list(KINDS.values()), n=1, cutoff=0.6)
            hint = f"; did you mean '{close[0]}'?" if close else f"; flcore's hooks are {', '.join(KINDS.values())}"
            raise PluginError(f"'{name}' is not an flcore hook{hint}")
        if not hasattr(function, hookimpl_marker):
            raise PluginError(f"'{name}' is not marked with @flcore.hookimpl, so flcore would never call it")


def _env_list(variable: str) -> set[str]:
    return {item.strip() for item in os.environ.get(variable, "").split(",") if item.strip()}


def _matches(selectors: set[str], provider: str, plugin: str) -> bool:
    keys = {_normalize(provider), f"{_normalize(provider)}:{plugin}"}
    return any(
        (_normalize(s) if ":" not in s else f"{_normalize(s.split(':')[0])}:{s.split(':', 1)[1]}") in keys
        for s in selectors
    )


def _entry_points() -> list[md.EntryPoint]:
    seen: dict[tuple[str, str], md.EntryPoint] = {}
    for ep in md.entry_points(group=ENTRY_POINT_GROUP):
        provider = ep.dist.name if ep.dist else "unknown"
        seen.setdefault((_normalize(provider), ep.name), ep)
    return [seen[key] for key in sorted(seen)]


def strict_from_env() -> bool:
    """Whether ``FLCORE_STRICT_PLUGINS`` asks for strict plugin loading."""
    return os.environ.get("FLCORE_STRICT_PLUGINS", "").strip().lower() in _TRUE


def discover(
    strict: bool | None = None,
    extra_plugins: Iterable[tuple[str, object]] = (),
) -> Registry:
    """Load every ``flcore`` entry point (and ``extra_plugins``) into a new :class:`Registry`.

    Args:
        strict: raise :class:`PluginError` if any plugin fails; defaults to ``FLCORE_STRICT_PLUGINS``.
        extra_plugins: ``(name, module_or_object)`` pairs registered after the entry points, for
            plugins defined in code (a notebook, a test).
    """
    strict = strict_from_env() if strict is None else strict
    blocked, only = _env_list("FLCORE_BLOCK_PLUGINS"), _env_list("FLCORE_ONLY_PLUGINS")
    registry = Registry()
    for ep in _entry_points():
        provider = ep.dist.name if ep.dist else "unknown"
        version = ep.dist.version if ep.dist else "unknown"
        if _matches(blocked, provider, ep.name) or (only and not _matches(only, provider, ep.name)):
            registry.failures.append(PluginFailure(ep.name, provider, version, "blocked by environment"))
            continue
        try:
            plugin = ep.load()
        except Exception as exc:  # isolation: one broken package must not take the CLI down
            registry.failures.append(PluginFailure(ep.name, provider, version, f"{type(exc).__name__}: {exc}"))
            continue
        registry.add_plugin(plugin, ep.name, provider, version)
    for name, plugin in extra_plugins:
        registry.add_plugin(plugin, name, name, "local")
    broken = [f for f in registry.failures if f.error != "blocked by environment"]
    if strict and broken:
        raise PluginError(
            "strict plugin loading: "
            + "; ".join(f"plugin '{f.plugin}' from {f.provider} {f.version} failed: {f.error}" for f in broken)
        )
    return registry


def describe_params(model: type) -> list[dict[str, Any]]:
    """Each parameter of a pydantic model: name, type, default and description."""
    from pydantic import BaseModel

    rows = []
    for name, info in model.model_fields.items():
        annotation = info.annotation
        type_name = getattr(annotation, "__name__", None) or str(annotation).replace("typing.", "")
        # a default_factory (a list, say) is the default too: call it, as validation would
        default = None if info.is_required() else info.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            default = default.model_dump()
        rows.append(
            {
                "name": name,
                "type": type_name,
                "default": default,
                "required": info.is_required(),
                "description": info.description or "",
            }
        )
    return rows


def as_mapping(component: Component) -> Mapping[str, str]:
    """The stable JSON shape of one component in ``flcore list-plugins --json``."""
    return {
        "kind": component.kind,
        "name": component.name,
        "qualified_name": component.qualified_name,
        "provided_by": component.provider,
        "version": component.version,
        "plugin": component.plugin,
        "description": component.description,
    }
