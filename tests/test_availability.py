"""Availability models: always, Bernoulli, diurnal and traces, against hand computations and NumPy
references, and bad traces named by file, line and column."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from flcore_plugins.availability.trace import OnlineIntervals
from hypothesis import given, settings
from hypothesis import strategies as st

from flcore.agents import AgentPopulation
from flcore.errors import ConfigError
from flcore.partition import Partition
from flcore.protocol import ROUND_STREAM, SETUP_STREAM, RoundContext, component_rng
from flcore.testing import build, check_availability, run_tiny_experiment, tiny_config
from flcore.traces import read_table


def population(agents: int) -> AgentPopulation:
    return AgentPopulation(Partition.from_shards([np.array([a]) for a in range(agents)]))


def context(index: int, agents: AgentPopulation, clock: float = 0.0, seed: int = 0) -> RoundContext:
    return RoundContext(index, index + 1, seed, agents, torch.zeros(3), clock=clock)


def set_up(name: str, agents: AgentPopulation, seed: int = 0, **params):
    model = build("availability", name, **params)
    for agent_field in model.state_fields():
        agents.add_field(agent_field)
    model.setup(agents, component_rng(seed, model, SETUP_STREAM))
    return model


def write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize("name, params", [("always", {}), ("bernoulli", {"p": 0.3}), ("diurnal", {"spread": 0.5})])
def test_built_in_models_pass_the_conformance_check(name, params):
    check_availability(name, **params)


def test_the_trace_model_passes_the_conformance_check(tmp_path):
    trace = write(tmp_path / "online.csv", "agent,start,end\n" + "".join(
        f"{a},{3600 * (a % 5)},{3600 * (a % 5) + 5000}\n{a},30000,{30000 + 900 * a}\n" for a in range(1, 50)))
    check_availability("trace", path=str(trace))


def test_always_keeps_what_is_available():
    agents = population(5)
    model = set_up("always", agents)
    assert model.availability(context(0, agents), None) is None
    assert model.availability(context(0, agents), np.array([1, 3])).tolist() == [1, 3]


def test_bernoulli_draws_each_agent_from_its_own_stream_every_round():
    agents = population(1000)
    model = set_up("bernoulli", agents, seed=4, p=0.3)
    for r in range(3):
        reference = np.flatnonzero(component_rng(4, model, ROUND_STREAM, r).random(1000) < 0.3)
        assert model.availability(context(r, agents, seed=4), None).tolist() == reference.tolist()
    subset = np.arange(0, 1000, 7)
    online = model.availability(context(1, agents, seed=4), subset)
    reference = np.flatnonzero(component_rng(4, model, ROUND_STREAM, 1).random(1000) < 0.3)
    assert online.tolist() == sorted(set(reference.tolist()) & set(subset.tolist()))


@settings(max_examples=25, deadline=None)
@given(p=st.floats(0.05, 1.0), seed=st.integers(0, 2**16))
def test_bernoulli_puts_about_p_of_the_agents_online(p, seed):
    agents = population(4000)
    model = set_up("bernoulli", agents, seed=seed, p=p)
    share = np.mean([len(model.availability(context(r, agents, seed=seed), None)) / 4000 for r in range(5)])
    assert abs(share - p) < 4 * math.sqrt(p * (1 - p) / 20000) + 1e-9  # four standard deviations


def test_diurnal_probability_is_the_documented_cosine():
    agents = population(3)
    model = set_up("diurnal", agents, period=100.0, low=0.1, high=0.9)
    agents.update("diurnal_phase", np.arange(3), [0.0, 0.25, 0.5])
    for t, expected in [(0.0, [0.9, 0.5, 0.1]), (25.0, [0.5, 0.9, 0.5]), (50.0, [0.1, 0.5, 0.9])]:
        np.testing.assert_allclose(model.probability(agents, t), expected, atol=1e-12)


@settings(max_examples=30, deadline=None)
@given(t=st.floats(0, 1e6), low=st.floats(0, 0.5), high=st.floats(0.5, 1))
def test_diurnal_probability_stays_between_low_and_high_and_repeats_every_period(t, low, high):
    agents = population(20)
    model = set_up("diurnal", agents, period=86400.0, low=low, high=high)
    p = model.probability(agents, t)
    assert ((p >= low - 1e-12) & (p <= high + 1e-12)).all()
    np.testing.assert_allclose(model.probability(agents, t + 86400.0), p, atol=1e-9)


def test_diurnal_online_agents_follow_the_probability_drawn_from_the_round_stream():
    agents = population(500)
    model = set_up("diurnal", agents, seed=2)
    phases = component_rng(2, model, SETUP_STREAM).random(500)
    np.testing.assert_array_equal(agents.column("diurnal_phase"), phases)
    chance = model.probability(agents, 7200.0)
    expected = np.flatnonzero(component_rng(2, model, ROUND_STREAM, 5).random(500) < chance)
    assert model.availability(context(5, agents, clock=7200.0, seed=2), None).tolist() == expected.tolist()


def test_trace_online_sets_by_hand(tmp_path):
    trace = write(tmp_path / "t.csv", "# online intervals\nagent,start,end\n0,0,10\n0,20,30\n\n2,5,25\n3,100,200\n")
    agents = population(5)
    model = set_up("trace", agents, path=str(trace))
    expected = {0.0: [0], 5.0: [0, 2], 10.0: [2], 19.9: [2], 20.0: [0, 2], 25.0: [0], 30.0: [], 150.0: [3], 250.0: []}
    for t, ids in expected.items():
        assert model.availability(context(0, agents, clock=t), None).tolist() == ids, t
    again = set_up("trace", population(5), path=str(trace), missing="online")
    assert again.availability(context(0, agents, clock=30.0), None).tolist() == [1, 4]


def test_trace_periods_repeat_per_agent(tmp_path):
    trace = write(tmp_path / "t.csv", "agent,start,end,period\n0,0,10,100\n1,50,60,60\n")
    agents = population(2)
    model = set_up("trace", agents, path=str(trace))
    for t, ids in [(5.0, [0]), (55.0, [1]), (105.0, [0]), (115.0, [1]), (160.0, []), (170.0, [1]), (205.0, [0])]:
        assert model.availability(context(0, agents, clock=t), None).tolist() == ids, t


def brute_force(intervals: list[list[tuple[float, float]]], periods: list[float], t: float) -> list[int]:
    """Who is online at t, interval by interval (the reference)."""
    online = []
    for agent, (spans, period) in enumerate(zip(intervals, periods)):
        local = t % period if math.isfinite(period) else t
        if any(start <= local < end for start, end in spans):
            online.append(agent)
    return online


@st.composite
def traces(draw):
    agents = draw(st.integers(1, 12))
    shared = draw(st.sampled_from([None, 50.0]))  # one period for everyone, or one per agent
    intervals, periods = [], []
    for _ in range(agents):
        period = shared or draw(st.sampled_from([math.inf, 50.0, 80.0]))
        cuts = sorted(draw(st.lists(st.integers(0, 49 if math.isfinite(period) else 300), max_size=8, unique=True)))
        spans = [(float(a), float(b)) for a, b in zip(cuts[::2], cuts[1::2])]
        intervals.append(spans)
        periods.append(period)
    times = draw(st.lists(st.floats(0, 1000, allow_nan=False), min_size=1, max_size=12))
    return intervals, periods, times


@settings(max_examples=60, deadline=None)
@given(traces(), st.booleans())
def test_trace_pointers_agree_with_a_brute_force_scan(case, in_order):
    intervals, periods, times = case
    if in_order:
        times = sorted(times)
    rows = [(a, s, e, periods[a]) for a, spans in enumerate(intervals) for s, e in spans]
    counts = np.bincount([r[0] for r in rows], minlength=len(intervals)) if rows else np.zeros(len(intervals), int)
    order = sorted(range(len(rows)), key=lambda i: (rows[i][0], rows[i][1]))
    has_period = any(math.isfinite(p) for p in periods)
    index = OnlineIntervals(len(intervals), np.array([rows[i][1] for i in order], dtype=float),
                            np.array([rows[i][2] for i in order], dtype=float), counts,
                            np.array(periods) if has_period else None)
    if not has_period:
        periods = [math.inf] * len(intervals)
    for t in times:
        assert np.flatnonzero(index.online(t)).tolist() == brute_force(intervals, periods, t), t


@pytest.mark.parametrize("text, where", [
    ("agent,start,end\n0,0,10\n9,0,10\n", "line 3, column 'agent' = 9: expected an agent id of this run"),
    ("agent,start,end\n0,0,10\n1,5,8\n0,8,12\n", "line 4, column 'start' = 8: overlaps agent 0's interval [0, 10) on line 2"),
    ("agent,start,end\n0,10,10\n", "line 2, column 'end' = 10: an interval must end after it starts"),
    ("agent,start,end\n0,-1,10\n", "line 2, column 'start' = -1: expected a virtual time in seconds"),
    ("agent,start,end\n0,0,ten\n", "line 2, column 'end' = 'ten': expected a number"),
    ("agent,start,end\n0,0\n", "line 2: 2 values where the header names 3 columns"),
    ("agent,begin,end\n0,0,1\n", "line 1: the header names the columns ['agent', 'begin', 'end']; expected 'start'"),
    ("agent,start,end,period\n0,0,10,20\n0,12,15,30\n", "line 3, column 'period' = 30: agent 0 has period 20 on line 2"),
    ("agent,start,end,period\n0,0,25,20\n", "line 2, column 'end' = 25: an interval must lie within its period"),
])
def test_bad_traces_name_the_file_line_and_column(tmp_path, text, where):
    trace = write(tmp_path / "bad.csv", text)
    with pytest.raises(ConfigError) as error:
        set_up("trace", population(3), path=str(trace))
    assert f"trace '{trace}', {where}" in str(error.value)


def test_a_bad_trace_stops_flcore_run_with_exit_code_2_before_any_round(tmp_path, tiny_config):
    import yaml
    from click.testing import CliRunner

    from flcore.cli import main

    trace = write(tmp_path / "online.csv", "agent,start,end\n0,0,100\n12,0,100\n")
    tiny_config["federation"]["availability"] = {"name": "trace", "path": str(trace)}
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    result = CliRunner().invoke(main, ["run", str(config), "--out", str(tmp_path / "runs"), "--quiet"])
    assert result.exit_code == 2, result.output
    assert f"trace '{trace}', line 3, column 'agent' = 12" in result.output and "Traceback" not in result.output
    assert not list((tmp_path / "runs").glob("*/metrics.csv"))  # no half-written run folder


def test_a_changed_trace_refuses_to_resume(tmp_path):
    from flcore.config import validate_config
    from flcore.experiment import Experiment

    trace = write(tmp_path / "online.csv", "agent,start,end\n" + "".join(f"{a},0,1000\n" for a in range(8)))
    config = validate_config(tiny_config(availability={"name": "trace", "path": str(trace)}, rounds=2))
    stopped = Experiment(config).run(out_dir=tmp_path / "runs", progress=False, stop_after_rounds=1)
    write(trace, "agent,start,end\n" + "".join(f"{a},0,1000\n" for a in range(7)))
    with pytest.raises(ConfigError, match="changed since the run started"):
        Experiment(config).run(resume_dir=stopped.run_dir, progress=False)


def test_samplers_choose_only_online_agents_and_the_row_counts_them(tmp_path):
    trace = write(tmp_path / "online.csv", "agent,start,end\n1,0,10\n3,0,10\n6,0,10\n")
    result = run_tiny_experiment(tmp_path, tiny_config(availability={"name": "trace", "path": str(trace)}, rounds=2))
    assert [(row["available"], row["selected"]) for row in result.history] == [(3, 3), (3, 3)]
    from flcore.engine.rundir import read_csv

    chosen = {int(r["agent"]) for r in read_csv(result.run_dir / "sampling.csv") if int(r["times_selected"])}
    assert chosen == {1, 3, 6}


def test_read_table_reads_numbers_and_ignores_other_columns(tmp_path):
    table = read_table(write(tmp_path / "t.csv", "start,agent,note,end\n1.5,0,x,2\n3,1,y,4e2\n"), ("agent", "start", "end"))
    assert {k: v.tolist() for k, v in table.columns.items()} == {"agent": [0, 1], "start": [1.5, 3], "end": [2, 400]}
    assert table.line(1) == 3
