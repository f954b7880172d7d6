"""Datasets loaded through torchvision's real classes from tiny files the tests write."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dataset_files import cifar_like, mnist_like

from flcore.errors import DataNotFoundError
from flcore.registry import discover


def build(name: str, **params):
    component = discover().resolve("dataset", name)
    return component.load()(component.params_model()(**params))


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist_family_reads_gzipped_idx_files(tmp_path, name, folder):
    files = mnist_like(tmp_path, folder, n_train=50, n_test=20)
    data = build(name, root=str(tmp_path), val_fraction=0.2)
    assert data.spec.input_shape == (1, 28, 28) and data.num_classes == 10
    assert data.x_train.dtype == torch.uint8 and len(data.y_train) == 40 and len(data.y_val) == 10
    torch.testing.assert_close(data.x_test[:, 0], torch.from_numpy(files["x_test"]))
    # train and validation never overlap, and together are the training file
    ids = lambda x: set((x[:, 0, 0, 0].long() + 256 * x[:, 0, 0, 1].long()).tolist())  # noqa: E731
    assert not ids(data.x_train) & ids(data.x_val)
    assert ids(data.x_train) | ids(data.x_val) == set(range(50))
    # the batch transform normalizes with the training split's statistics
    transformed = data.transform(data.x_train)
    assert transformed.dtype == torch.float32
    assert abs(float(transformed.mean())) < 1e-4 and abs(float(transformed.std()) - 1) < 1e-3


def test_emnist_letters_are_upright_and_zero_based(tmp_path):
    files = mnist_like(tmp_path, "EMNIST", 30, 10, classes=26, prefix="emnist-letters", label_offset=1)
    data = build("emnist", root=str(tmp_path), split="letters")
    assert data.num_classes == 26
    assert int(data.y_train.min()) == 0 and int(data.y_train.max()) == 25
    np.testing.assert_array_equal(data.y_train.numpy(), files["y_train"] - 1)
    np.testing.assert_array_equal(data.x_train[:, 0].numpy(), files["x_train"].transpose(0, 2, 1))


def test_emnist_byclass_keeps_labels(tmp_path):
    mnist_like(tmp_path, "EMNIST", 70, 10, classes=62, prefix="emnist-byclass")
    data = build("emnist", root=str(tmp_path), split="byclass")
    assert data.num_classes == 62 and int(data.y_train.max()) == 61


@pytest.mark.parametrize("hundred", [False, True])
def test_cifar_reads_pickled_batches(tmp_path, hundred):
    files = cifar_like(tmp_path, hundred, per_batch=12)
    data = build("cifar100" if hundred else "cifar10", root=str(tmp_path))
    assert data.spec.input_shape == (3, 32, 32) and data.num_classes == (100 if hundred else 10)
    np.testing.assert_array_equal(data.x_train.numpy(), files["x_train"])
    np.testing.assert_array_equal(data.y_test.numpy(), files["y_test"])


def test_missing_files_say_which_where_and_how(tmp_path):
    with pytest.raises(DataNotFoundError) as info:
        build("mnist", root=str(tmp_path / "nowhere"))
    message = str(info.value)
    assert "train-images-idx3-ubyte" in message and "nowhere" in message and "download: true" in message
    with pytest.raises(DataNotFoundError, match="cifar-10-batches-py"):
        build("cifar10", root=str(tmp_path))


def test_a_vision_dataset_runs_federated_from_the_cli(tmp_path):
    from click.testing import CliRunner

    from flcore.cli import main

    mnist_like(tmp_path / "data", "MNIST", 200, 50)
    result = CliRunner().invoke(main, [
        "run", "--out", str(tmp_path / "runs"), "--set", "dataset.name=mnist", "--set", f"dataset.root={tmp_path / 'data'}",
        "--set", "model=lenet5", "--set", "federation.rounds=2", "--set", "federation.agents=4",
        "--set", "federation.partitioner={name: niid, niid_factor: 1}",
    ])
    assert result.exit_code == 0, result.output
    assert "results:" in result.output
