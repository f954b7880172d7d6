"""100,000 registered agents: light records, a round touches only the sampled ones."""

from __future__ import annotations

import json

from scale_data import ManySamples

from flcore.config import validate_config
from flcore.experiment import Experiment


def test_a_hundred_thousand_agents_run_and_are_recorded(tmp_path, tiny_config):
    tiny_config.update(dataset="many_samples", model="logistic")
    tiny_config["federation"].update(agents=100_000, rounds=2, sampler={"name": "uniform", "count": 10})
    experiment = Experiment(validate_config(tiny_config), plugins=[("scale", ManySamples)])
    result = experiment.run(out_dir=tmp_path)
    assert [row["selected"] for row in result.history] == [10, 10]
    from flcore.engine.rundir import read_csv

    selected = [int(r["times_selected"]) for r in read_csv(result.run_dir / "sampling.csv")]
    assert len(selected) == 100_000 and sum(selected) == 20
    assert result.history[-1]["agents_seen"] == sum(1 for t in selected if t)
    partition = json.loads((result.run_dir / "partition.json").read_text())
    assert len(partition["sizes"]) == 100_000 and set(partition["sizes"]) == {2}
    assert "label_counts" not in partition  # too many agents to chart
    from flcore.engine.state_store import read_checkpoint

    assert read_checkpoint(result.run_dir)["columns"]["selected_count"].tolist() == selected
