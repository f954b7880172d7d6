"""The engine's virtual clock and selection hooks: recorded per round, checked, plotted."""

from __future__ import annotations

import numpy as np
import pytest

from flcore import hookimpl
from flcore.config import validate_config
from flcore.errors import RunFailure
from flcore.experiment import Experiment
from flcore.policy import RoundPolicy
from flcore.server_plugin import ServerPlugin
from flcore.testing import run_tiny_experiment, tiny_config


class Backwards(RoundPolicy):
    def on_round_end(self, context, accepted):
        context.clock = context.clock - 1.0


class Outsider(ServerPlugin):
    def narrow_selection(self, context, selected):
        return np.append(selected[:1], 7 if 7 not in selected else 6)


class Halves(ServerPlugin):
    """Starts only the first half of the sampler's choice."""

    def narrow_selection(self, context, selected):
        return selected[: len(selected) // 2]


class Plugins:
    @staticmethod
    @hookimpl
    def register_round_policies(register):
        register("backwards", Backwards, "Test.")

    @staticmethod
    @hookimpl
    def register_server_plugins(register):
        register("outsider", Outsider, "Test.")
        register("halves", Halves, "Test.")


def run(tmp_path, **federation):
    return Experiment(validate_config(tiny_config(**federation)), plugins=[("test", Plugins)]).run(
        out_dir=tmp_path, progress=False)


def test_a_clock_that_goes_back_stops_the_run_naming_the_policy(tmp_path):
    with pytest.raises(RunFailure, match="virtual clock was set to -1.0 in round 1 .*round_policy 'backwards'"):
        run(tmp_path, round_policy="backwards")


def test_narrowing_to_agents_the_sampler_did_not_choose_stops_the_run(tmp_path):
    with pytest.raises(RunFailure, match="server_plugin 'outsider' .* narrowed the selection of round 1"):
        run(tmp_path, server_plugins=["outsider"])


def test_narrowed_agents_alone_train_and_count_as_selected(tmp_path):
    result = run(tmp_path, server_plugins=["halves"], rounds=2)
    assert [(row["selected"], row["completed"]) for row in result.history] == [(2, 2), (2, 2)]
    from flcore.engine.rundir import read_csv

    assert sum(int(r["times_selected"]) for r in read_csv(result.run_dir / "sampling.csv")) == 4


def test_metrics_csv_records_available_agents_and_virtual_seconds(tmp_path):
    from flcore.engine.rundir import read_csv

    result = run_tiny_experiment(tmp_path, tiny_config(rounds=2, availability={"name": "bernoulli", "p": 0.5},
                                                       device_profile="drawn"))
    rows = read_csv(result.run_dir / "metrics.csv")
    assert [float(r["virtual_seconds"]) for r in rows] == [row["virtual_seconds"] for row in result.history]
    assert 0 < float(rows[0]["virtual_seconds"]) < float(rows[1]["virtual_seconds"])
    assert all(int(r["selected"]) <= int(r["available"]) < 8 for r in rows)


def test_the_report_plots_accuracy_against_virtual_time_when_the_clock_moved(tmp_path):
    pytest.importorskip("matplotlib")
    from flcore.report import report

    timed = run_tiny_experiment(tmp_path / "timed", tiny_config(rounds=2, device_profile="drawn"))
    untimed = run_tiny_experiment(tmp_path / "untimed", tiny_config(rounds=2))
    page = report([timed.run_dir], tmp_path / "a")
    assert (tmp_path / "a" / "virtual_time.png").stat().st_size > 0 and "virtual_time.png" in page.read_text()
    report([untimed.run_dir], tmp_path / "b")
    assert not (tmp_path / "b" / "virtual_time.png").exists()
