"""FEMNIST from tiny files in LEAF's JSON format: writers become agents."""

from __future__ import annotations

import json

import numpy as np
import pytest

from flcore.errors import DataNotFoundError
from flcore.testing import run_tiny_experiment, tiny_config


def write_leaf(root, users=5, per_user=12, seed=0):
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_user), ("test", 3)):
        (root / split).mkdir(parents=True)
        names = [f"f{u:04d}_{u % 3}" for u in range(users)]
        blob = {"users": names, "num_samples": [n] * users,
                "user_data": {name: {"x": rng.random((n, 784)).round(3).tolist(),
                                     "y": rng.integers(0, 62, n).tolist()} for name in names}}
        (root / split / f"all_data_0_niid_{split}.json").write_text(json.dumps(blob))


def test_femnist_keeps_writers_for_the_natural_partitioner(tmp_path):
    from flcore.registry import discover

    write_leaf(tmp_path / "femnist")
    component = discover().resolve("dataset", "femnist")
    data = component.load()(component.params_model()(root=str(tmp_path / "femnist")))
    assert data.spec.input_shape == (1, 28, 28) and data.num_classes == 62
    assert len(data.y_train) == 60 and len(data.y_test) == 15
    assert sorted(np.unique(data.groups).tolist()) == [0, 1, 2, 3, 4]
    assert (np.bincount(data.groups) == 12).all()


def test_femnist_runs_with_one_agent_per_writer(tmp_path):
    write_leaf(tmp_path / "femnist")
    config = tiny_config(agents=5, rounds=2, partitioner="natural", sampler="all")
    config["dataset"] = {"name": "femnist", "root": str(tmp_path / "femnist")}
    result = run_tiny_experiment(tmp_path / "runs", config)
    partition = json.loads((result.run_dir / "partition.json").read_text())
    assert partition["sizes"] == [12, 12, 12, 12, 12]


def test_missing_files_say_how_to_make_them(tmp_path):
    from flcore.registry import discover

    component = discover().resolve("dataset", "femnist")
    with pytest.raises(DataNotFoundError, match="preprocess.sh"):
        component.load()(component.params_model()(root=str(tmp_path)))


TEXT = "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer " * 2


def write_shakespeare(root, roles=3, per_role=6):
    for split, n in (("train", per_role), ("test", 2)):
        (root / split).mkdir(parents=True)
        text = TEXT
        names = [f"HAMLET_{r}" for r in range(roles)]
        blob = {"users": names, "num_samples": [n] * roles,
                "user_data": {name: {"x": [text[i:i + 80] for i in range(n)], "y": [text[i + 80] for i in range(n)]}
                              for name in names}}
        (root / split / "all_data_niid_0.json").write_text(json.dumps(blob))


def test_shakespeare_encodes_characters_and_keeps_roles(tmp_path):
    from flcore_leaf.shakespeare import LETTERS

    from flcore.registry import discover

    write_shakespeare(tmp_path / "sh")
    component = discover().resolve("dataset", "shakespeare")
    data = component.load()(component.params_model()(root=str(tmp_path / "sh")))
    from flcore.data import DataSpec

    assert data.spec == DataSpec(80, (80,))
    text = TEXT
    assert "".join(LETTERS[i] for i in data.x_train[1].tolist()) == text[1:81]
    assert LETTERS[int(data.y_train[1])] == text[81]
    assert sorted(np.unique(data.groups).tolist()) == [0, 1, 2]


def test_char_lstm_learns_federated_on_shakespeare(tmp_path):
    write_shakespeare(tmp_path / "sh")
    config = tiny_config(agents=3, rounds=2, partitioner="natural", sampler="all")
    config["dataset"] = {"name": "shakespeare", "root": str(tmp_path / "sh")}
    config["model"] = {"name": "char_lstm", "hidden": 16, "layers": 1}
    result = run_tiny_experiment(tmp_path / "runs", config)
    assert result.final["parameters"]["total"] == 80 * 8 + 4 * 16 * (8 + 16 + 2) + 16 * 80 + 80
    assert np.isfinite(result.history[-1]["test_loss"])
