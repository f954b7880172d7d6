"""FedScale's trace pickles become flcore's CSV traces, read without unpickling any object."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from click.testing import CliRunner
from flcore_plugins.availability.trace import OnlineIntervals

from flcore.cli import main
from flcore.errors import UserError
from flcore.fedscale_traces import convert_behaviour, convert_devices, load_plain_pickle
from flcore.testing import build
from flcore.traces import read_table

BEHAVIOUR = {
    7: {"duration": 1000, "inactive": [300, 800], "finish_time": 1000, "active": [100, 600], "model": "x"},
    2: {"duration": 500, "inactive": [50, 400, 400], "finish_time": 500, "active": [0, 200, 400], "model": "y"},
}


def fedscale_is_active(trace: dict, t: float) -> bool:
    """FedScale's ClientMetadata.is_active, restated: online when active[i] <= t % finish <= inactive[i]."""
    local = t % trace["finish_time"]
    return any(a <= local <= b for a, b in zip(trace["active"], trace["inactive"]))


def test_the_behaviour_trace_converts_to_intervals_flcore_reads_as_fedscale_does(tmp_path):
    source, target = tmp_path / "client_behave_trace", tmp_path / "online.csv"
    source.write_bytes(pickle.dumps(BEHAVIOUR))
    counts = convert_behaviour(source, target)
    assert counts == {"agents": 2, "intervals": 4, "skipped": 1}  # client 2's last interval lasts no time
    assert target.read_text().splitlines() == ["agent,start,end,period,client", "0,0,50,500,2", "0,200,400,500,2",
                                               "1,100,300,1000,7", "1,600,800,1000,7"]
    index = OnlineIntervals.from_table(read_table(target, ("agent", "start", "end"), ("period",)), 2)
    clients = [BEHAVIOUR[2], BEHAVIOUR[7]]  # agents in client-id order
    for t in np.arange(0.5, 3000, 37.0):  # off the interval boundaries, where closed and half-open agree
        expected = [a for a, trace in enumerate(clients) if fedscale_is_active(trace, t)]
        assert np.flatnonzero(index.online(float(t))).tolist() == expected, t


def test_device_capacities_convert_to_speeds_in_fedscale_units(tmp_path):
    source, target = tmp_path / "client_device_capacity", tmp_path / "devices.csv"
    source.write_bytes(pickle.dumps({1: {"computation": 20.0, "communication": 800.0},
                                     2: {"computation": 5.0, "communication": 100.0}}))
    assert convert_devices(source, target) == {"agents": 2}
    profile = build("device_profile", "trace", path=str(target))
    from flcore.agents import AgentPopulation
    from flcore.partition import Partition

    population = AgentPopulation(Partition.from_shards([np.arange(1)] * 3), profile.state_fields())
    profile.setup(population, np.random.default_rng(0))
    # FedScale: computation 3 * samples * ms / 1000 s, communication kbit / (kbit/s) with kbit = bytes / 1024 * 8
    from flcore.devices import Work

    samples, up, down = 64.0, 5000.0, 7000.0
    fedscale = [3 * samples * ms / 1000 + (up + down) / 1024 * 8 / kbits for ms, kbits in [(20, 800), (5, 100), (20, 800)]]
    np.testing.assert_allclose(profile.seconds(population, np.arange(3), Work(np.full(3, samples), down, up)), fedscale)


class Boom:
    def __reduce__(self):
        import os

        return (os.mkdir, ("/tmp/flcore-test-must-not-exist",))


@pytest.mark.parametrize("payload", [{1: Boom()}, {1: {"active": np.array([1, 2])}}, [Boom()]])
def test_pickles_that_name_any_callable_are_refused_without_running_it(tmp_path, payload):
    import os

    source = tmp_path / "evil.pkl"
    source.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match="only plain dicts, lists, numbers and strings"):
        load_plain_pickle(source)
    assert not os.path.exists("/tmp/flcore-test-must-not-exist")
    result = CliRunner().invoke(main, ["convert-trace", "--from", "fedscale-behaviour", str(source),
                                       str(tmp_path / "out.csv")])
    assert result.exit_code == 2 and "Traceback" not in result.output and not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("payload, message", [
    ({1: {"active": [0, 5], "inactive": [3]}}, "'active' has 2 times and 'inactive' 1"),
    ({1: {"active": [5], "inactive": [3]}}, "interval 0: active = 5.0, inactive = 3.0"),
    ({1: {"active": ["soon"], "inactive": [3]}}, "'soon' is not a finite number"),
    ([1, 2], "expected a dict of clients"),
])
def test_malformed_traces_name_the_client_and_field(tmp_path, payload, message):
    source = tmp_path / "trace.pkl"
    source.write_bytes(pickle.dumps(payload))
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        convert_behaviour(source, tmp_path / "out.csv")


def test_convert_trace_command_keeps_the_first_clients(tmp_path):
    source = tmp_path / "b.pkl"
    source.write_bytes(pickle.dumps(BEHAVIOUR))
    result = CliRunner().invoke(main, ["convert-trace", "--from", "fedscale-behaviour", str(source),
                                       str(tmp_path / "one.csv"), "--limit", "1"])
    assert result.exit_code == 0, result.output
    assert {line.split(",")[-1] for line in (tmp_path / "one.csv").read_text().splitlines()[1:]} == {"2"}
