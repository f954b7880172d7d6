"""Hugging Face datasets that the test builds and saves on disk become flcore datasets; nothing is downloaded."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from flcore.errors import ConfigError, DataNotFoundError
from flcore.registry import discover


def _load(**params):
    component = discover().resolve("dataset", "hf")
    return component.load()(component.params_model()(**params))


def _image_dataset(folder, rng, train=60, test=12, writers=4):
    import datasets

    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(num_classes=5),
                                  "writer": datasets.Value("string")})
    splits, arrays = {}, {}
    for split, n in (("train", train), ("test", test)):
        images = rng.integers(0, 256, size=(n, 8, 6, 3), dtype=np.uint8)
        labels = rng.integers(0, 4, size=n)  # label 4 never occurs: the class count comes from ClassLabel
        owners = [f"w{k}" for k in rng.integers(0, writers, size=n)]
        splits[split] = datasets.Dataset.from_dict({"img": list(images), "label": labels, "writer": owners},
                                                   features=features)
        arrays[split] = (images, labels, owners)
    datasets.DatasetDict(splits).save_to_disk(str(folder))
    return arrays


def test_an_image_dataset_saved_to_disk_becomes_an_flcore_dataset(tmp_path):
    arrays = _image_dataset(tmp_path / "images", np.random.default_rng(0))
    data = _load(path=str(tmp_path / "images"), image="img", group="writer")
    images, labels, owners = arrays["train"]
    assert data.x_train.dtype.is_floating_point is False and tuple(data.x_train.shape) == (60, 3, 8, 6)
    np.testing.assert_array_equal(data.x_train.numpy(), np.moveaxis(images, -1, 1))
    np.testing.assert_array_equal(data.y_train.numpy(), labels)
    np.testing.assert_array_equal(data.x_test.numpy(), np.moveaxis(arrays["test"][0], -1, 1))
    assert data.num_classes == 5 and data.spec.input_shape == (3, 8, 6)
    np.testing.assert_array_equal(data.groups, np.unique(owners, return_inverse=True)[1])
    x = data.transform(data.x_train).numpy()  # per channel: the training split's mean and sd
    np.testing.assert_allclose(x.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(x.std(axis=(0, 2, 3)), 1, atol=1e-3)


def test_a_tabular_dataset_from_local_parquet_files_with_string_labels(tmp_path):
    import datasets

    rng = np.random.default_rng(1)
    files, tables = {}, {}
    for split, n in (("train", 50), ("test", 10)):
        table = {"a": rng.normal(size=n), "b": rng.normal(3, 2, size=n), "skip": rng.normal(size=n),
                 "species": rng.choice(["setosa", "virginica", "versicolor"], size=n)}
        files[split] = str(tmp_path / f"{split}.parquet")
        datasets.Dataset.from_dict(table).to_parquet(files[split])
        tables[split] = table
    data = _load(path="parquet", data_files=files, features=["a", "b"], label="species",
                 cache_dir=str(tmp_path / "cache"))
    np.testing.assert_allclose(data.x_train.numpy(), np.stack([tables["train"]["a"], tables["train"]["b"]], 1),
                               rtol=1e-6)
    names = sorted(set(tables["train"]["species"]) | set(tables["test"]["species"]))
    np.testing.assert_array_equal(data.y_test.numpy(), [names.index(s) for s in tables["test"]["species"]])
    assert data.num_classes == 3 and data.spec.input_shape == (2,)


def test_a_single_split_is_held_out_by_test_fraction(tmp_path):
    import datasets

    datasets.Dataset.from_dict({"x": np.arange(40.0), "label": np.arange(40) % 2}).save_to_disk(str(tmp_path / "one"))
    data = _load(path=str(tmp_path / "one"), features=["x"], test_split=None, test_fraction=0.25)
    assert (len(data.y_train), len(data.y_test)) == (30, 10)
    seen = np.concatenate([data.x_train[:, 0].numpy(), data.x_test[:, 0].numpy()])
    assert sorted(seen.tolist()) == list(range(40))  # every row once, train and test disjoint


def test_a_dataset_that_is_not_here_is_a_clear_error_without_any_connection(tmp_path, monkeypatch):
    attempts = []
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: attempts.append(address))
    with pytest.raises(DataNotFoundError, match="save_to_disk"):
        _load(path="nobody/no-such-dataset", image="img", cache_dir=str(tmp_path / "cache"))
    assert attempts == []


def test_a_column_that_is_not_there_is_named_with_those_that_are(tmp_path):
    _image_dataset(tmp_path / "images", np.random.default_rng(2), train=8, test=4)
    with pytest.raises(ConfigError, match=r"no column 'image'; the dataset has \['img', 'label', 'writer'\]"):
        _load(path=str(tmp_path / "images"), image="image")


def test_an_experiment_on_a_saved_dataset_with_flowers_natural_id_partitioner(tmp_path):
    from flcore.testing import run_tiny_experiment, tiny_config

    arrays = _image_dataset(tmp_path / "images", np.random.default_rng(3), writers=4)
    config = tiny_config(agents=4, rounds=2, partitioner="flwr_natural_id")
    config |= {"dataset": {"name": "hf", "path": str(tmp_path / "images"), "image": "img", "group": "writer"},
               "model": {"name": "mlp", "hidden": [16]}}
    result = run_tiny_experiment(tmp_path / "runs", config)
    import json

    sizes = json.loads((result.run_dir / "partition.json").read_text())["sizes"]
    _, per_writer = np.unique(arrays["train"][2], return_counts=True)
    assert sorted(sizes) == sorted(per_writer.tolist()) and len(result.history) == 2
