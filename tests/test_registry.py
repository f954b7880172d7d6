"""Plugin discovery: isolation of broken plugins, duplicates, suggestions, blocking, strict mode."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from flcore.cli import main
from flcore.errors import PluginError
from flcore.registry import discover

GOOD = """
from flcore import hookimpl

@hookimpl
def register_aggregators(register):
    register("fedmine", "flcore_plugins.aggregators.fedavg:FedAvg", "Mine.")
"""

DUPLICATE_FEDAVG = """
from flcore import hookimpl

@hookimpl
def register_aggregators(register):
    register("fedavg", "flcore_plugins.aggregators.fedavg:FedAvg", "Another FedAvg.")
"""


def test_builtins_are_registered_through_entry_points():
    registry = discover(strict=True)
    assert {c.plugin for c in registry.all() if c.provider == "flcore"} == {
        "datasets", "partitioners", "models", "samplers", "aggregators", "agent_plugins", "server_plugins", "backends",
        "agent_metadata", "attacks", "defenses", "availability", "device_profiles", "round_policies"}
    names = {c.name for c in registry.all("aggregator") if c.provider == "flcore"}
    assert {"fedavg", "fedprox", "fedadam", "krum"} <= names


def test_a_broken_plugin_is_recorded_and_the_rest_keep_working(fake_distribution):
    fake_distribution("broken-plugin", modules={"broken_mod": "raise ImportError('no such thing')"},
                      entry_points={"main": "broken_mod"})
    fake_distribution("good-plugin", modules={"good_mod": GOOD}, entry_points={"main": "good_mod"})
    registry = discover(strict=False)
    assert registry.resolve("aggregator", "fedmine").provider == "good-plugin"
    failure = next(f for f in registry.failures if f.provider == "broken-plugin")
    assert "no such thing" in failure.error


def test_a_plugin_failing_while_registering_is_isolated(fake_distribution):
    source = """
from flcore import hookimpl

@hookimpl
def register_samplers(register):
    register("half", "x:y")
    raise RuntimeError("bug in plugin")
"""
    fake_distribution("bad-register", modules={"bad_register": source}, entry_points={"main": "bad_register"})
    registry = discover(strict=False)
    assert "half" not in {c.name for c in registry.all("sampler")}  # nothing half-registered
    assert any("bug in plugin" in f.error for f in registry.failures)


def test_strict_mode_turns_a_broken_plugin_into_an_error(fake_distribution, monkeypatch):
    fake_distribution("broken-plugin", modules={"broken_mod2": "1/0"}, entry_points={"main": "broken_mod2"})
    with pytest.raises(PluginError, match="broken-plugin.*ZeroDivisionError"):
        discover(strict=True)
    monkeypatch.setenv("FLCORE_STRICT_PLUGINS", "1")
    with pytest.raises(PluginError):
        discover()


def test_a_duplicate_name_fails_naming_both_providers_and_qualified_names_resolve(fake_distribution):
    fake_distribution("other-fl", modules={"other_fl": DUPLICATE_FEDAVG}, entry_points={"main": "other_fl"})
    registry = discover()
    with pytest.raises(PluginError) as info:
        registry.resolve("aggregator", "fedavg")
    assert "flcore:fedavg" in str(info.value) and "other-fl:fedavg" in str(info.value)
    assert registry.resolve("aggregator", "other-fl:fedavg").provider == "other-fl"
    assert registry.resolve("aggregator", "flcore:fedavg").provider == "flcore"
    # never renamed: both are listed under their own name
    assert [c.provider for c in registry.all("aggregator") if c.name == "fedavg"] == ["flcore", "other-fl"]


def test_an_unknown_name_lists_what_is_installed_and_suggests_the_closest():
    with pytest.raises(PluginError) as info:
        discover().resolve("aggregator", "fedavgg")
    message = str(info.value)
    assert "Did you mean 'fedavg'" in message
    assert "fedprox" in message and "krum" in message


def test_blocking_and_allow_listing_by_environment(fake_distribution, monkeypatch):
    fake_distribution("good-plugin", modules={"good_mod3": GOOD}, entry_points={"main": "good_mod3"})
    monkeypatch.setenv("FLCORE_BLOCK_PLUGINS", "good_plugin")
    registry = discover()
    with pytest.raises(PluginError, match="Blocked plugins: main"):
        registry.resolve("aggregator", "fedmine")
    monkeypatch.delenv("FLCORE_BLOCK_PLUGINS")
    monkeypatch.setenv("FLCORE_ONLY_PLUGINS", "good-plugin")
    registry = discover()
    assert {c.provider for c in registry.all()} == {"good-plugin"}
    monkeypatch.setenv("FLCORE_ONLY_PLUGINS", "flcore:aggregators")
    assert {c.kind for c in discover().all()} == {"aggregator"}


def test_load_order_is_deterministic(fake_distribution):
    fake_distribution("zz-plugin", modules={"zz_mod": GOOD.replace("fedmine", "zzmine")}, entry_points={"main": "zz_mod"})
    fake_distribution("aa-plugin", modules={"aa_mod": GOOD.replace("fedmine", "aamine")}, entry_points={"main": "aa_mod"})
    order = [provider for _, provider, _ in discover().plugins]
    assert order == sorted(order, key=str.lower)
    assert order.index("aa-plugin") < order.index("flcore") < order.index("zz-plugin")


def test_invalid_registrations_are_reported():
    class Plugin:
        from flcore import hookimpl

        @staticmethod
        @hookimpl
        def register_models(register):
            register("bad:name", "m:x")

    registry = discover(extra_plugins=[("inline", Plugin)])
    assert any("not valid" in f.error for f in registry.failures if f.plugin == "inline")


@pytest.mark.parametrize("source,expected", [
    ("""
from flcore import hookimpl

@hookimpl
def register_aggregator(register):
    register("mine", "x:y")
""", "'register_aggregator' is not an flcore hook; did you mean 'register_aggregators'?"),
    ("""
def register_aggregators(register):
    register("mine", "x:y")
""", "'register_aggregators' is not marked with @flcore.hookimpl"),
    ("""
from flcore import hookimpl

@hookimpl
def register_aggregators(register):
    pass
""", "it registered no component"),
    ("""
VALUE = 1
""", "it registered no component"),
])
def test_a_plugin_that_would_register_nothing_is_a_recorded_failure(fake_distribution, source, expected):
    """A misspelled hook, a hook without @hookimpl, or a plugin that registers nothing would
    otherwise look installed while providing nothing: each is a failure shown by list-plugins,
    and fatal under --strict."""
    fake_distribution("quiet-plugin", modules={"quiet_mod": source}, entry_points={"main": "quiet_mod"})
    failure = next(f for f in discover(strict=False).failures if f.provider == "quiet-plugin")
    assert expected in failure.error
    with pytest.raises(PluginError, match="quiet-plugin"):
        discover(strict=True)
    listed = CliRunner().invoke(main, ["list-plugins"])
    assert "failed to load" in listed.output and "quiet-plugin" in listed.output


def test_the_kinds_are_listed_once_and_the_registry_the_cli_and_the_hooks_agree():
    from flcore import hookspecs
    from flcore.kinds import HOOKS, KINDS, kind_names
    from flcore.registry import KINDS as REGISTRY_KINDS

    assert REGISTRY_KINDS is HOOKS
    assert [k.hook for k in KINDS] == [HOOKS[name] for name in kind_names()]
    assert all(callable(getattr(hookspecs, hook)) for hook in HOOKS.values())
    choices = next(p for p in main.commands["list-plugins"].params if p.name == "kind").type.choices
    assert list(choices) == kind_names()
