"""Datasets loaded from tiny files the tests write in the real formats; tampered files never run code."""

from __future__ import annotations

import gzip
import os
import pickle

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


@pytest.mark.parametrize("hundred", [False, True])
@pytest.mark.parametrize("protocol,python2", [(2, False), (5, False), (None, True)])
def test_cifar_files_of_every_pickle_protocol_load_with_their_values(tmp_path, hundred, protocol, python2):
    """The official archives hold Python 2 pickles; re-saved copies hold any protocol."""
    files = cifar_like(tmp_path, hundred, per_batch=7, protocol=protocol, python2=python2)
    data = build("cifar100" if hundred else "cifar10", root=str(tmp_path))
    np.testing.assert_array_equal(data.x_train.numpy(), files["x_train"])
    np.testing.assert_array_equal(data.y_train.numpy(), files["y_train"])
    np.testing.assert_array_equal(data.x_test.numpy(), files["x_test"])
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64


class _RunsCode:
    """Unpickling this calls ``os.system``: what a tampered dataset file would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("victim", ["data_batch_3", "test_batch", "batches.meta"])
@pytest.mark.parametrize("where", ["whole file", "inside the batch"])
def test_a_tampered_cifar_file_is_refused_without_running_its_code(tmp_path, victim, where):
    cifar_like(tmp_path / "data", hundred=False, per_batch=4)
    marker = tmp_path / "code-ran"
    payload = _RunsCode(marker)
    if where == "inside the batch":
        payload = {"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 3], "batch_label": payload,
                   "label_names": [f"c{i}" for i in range(10)]}
    path = tmp_path / "data" / "cifar-10-batches-py" / victim
    path.write_bytes(pickle.dumps(payload))
    with pytest.raises(DataNotFoundError) as info:
        build("cifar10", root=str(tmp_path / "data"))
    assert not marker.exists()
    assert str(path) in str(info.value) and "never runs code" in str(info.value)
    assert "system" in str(info.value)  # it names what the file asked for


@pytest.mark.parametrize("batch,complaint", [
    ({"data": np.array([[1] * 3072] * 4, dtype=object), "labels": [0, 1, 2, 3]}, "dtype 'O"),
    ({"data": np.zeros(4, dtype=[("r", "u1"), ("g", "u1")]), "labels": [0, 1, 2, 3]}, "dtype 'V2'"),
    ({"data": np.zeros((4, 3000), np.uint8), "labels": [0, 1, 2, 3]}, "shape (4, 3000)"),
    ({"data": np.zeros((4, 3072), np.float32), "labels": [0, 1, 2, 3]}, "float32"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2]}, "not a list of 4 integer labels"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [0, 1, 2, 10]}, "outside 0..9"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": [0.0, 1.0, 2.0, 3.0]}, "integer labels"),
    ({"data": np.zeros((4, 3072), np.uint8), "labels": {0, 1, 2, 3}}, "type set"),
    ([1, 2, 3], "not a dict"),
])
def test_a_cifar_batch_that_is_not_plain_pixels_and_labels_is_refused(tmp_path, batch, complaint):
    cifar_like(tmp_path, hundred=False, per_batch=4)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    path.write_bytes(pickle.dumps(batch))
    with pytest.raises(DataNotFoundError) as info:
        build("cifar10", root=str(tmp_path))
    assert str(path) in str(info.value) and complaint in str(info.value)


@pytest.mark.parametrize("content", [b"", b"not a pickle", pickle.dumps({"data": 1})[:-3]])
def test_a_truncated_or_garbage_cifar_file_names_the_file(tmp_path, content):
    cifar_like(tmp_path, hundred=True, per_batch=4)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(content)
    with pytest.raises(DataNotFoundError, match="is not a CIFAR file flcore can read") as info:
        build("cifar100", root=str(tmp_path))
    assert str(path) in str(info.value)


def test_the_mnist_family_ignores_torchvisions_legacy_processed_files(tmp_path):
    """torchvision would load MNIST/processed/{training,test}.pt with torch.load in place of the IDX files."""
    files = mnist_like(tmp_path, "MNIST", n_train=20, n_test=10)
    processed = tmp_path / "MNIST" / "processed"
    processed.mkdir()
    for name, n in (("training.pt", 20), ("test.pt", 10)):
        torch.save((torch.zeros(n, 28, 28, dtype=torch.uint8), torch.full((n,), 7)), processed / name)
    data = build("mnist", root=str(tmp_path))
    torch.testing.assert_close(data.x_test[:, 0], torch.from_numpy(files["x_test"]))
    np.testing.assert_array_equal(data.y_train.numpy(), files["y_train"])


def test_decompressing_never_writes_through_a_symlink_in_the_dataset_folder(tmp_path):
    mnist_like(tmp_path / "data", "MNIST", n_train=20, n_test=10)
    outside = tmp_path / "elsewhere" / "authorized_keys"
    outside.parent.mkdir()
    (tmp_path / "data" / "MNIST" / "raw" / "train-images-idx3-ubyte").symlink_to(outside)
    with pytest.raises(DataNotFoundError, match="train-images-idx3-ubyte"):
        build("mnist", root=str(tmp_path / "data"))
    assert not outside.exists()


def test_a_corrupt_gzip_file_is_bad_input_naming_it(tmp_path):
    mnist_like(tmp_path, "FashionMNIST", n_train=20, n_test=10)
    packed = tmp_path / "FashionMNIST" / "raw" / "t10k-labels-idx1-ubyte.gz"
    packed.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20)[:-6])
    with pytest.raises(DataNotFoundError, match="t10k-labels-idx1-ubyte.gz' could not be decompressed"):
        build("fashion_mnist", root=str(tmp_path))
    assert not (packed.parent / "t10k-labels-idx1-ubyte").exists()


def test_idx_files_of_another_dataset_are_refused_not_trained_on(tmp_path):
    mnist_like(tmp_path, "MNIST", n_train=30, n_test=10, classes=15)  # labels 0..14 for 10 classes
    with pytest.raises(DataNotFoundError, match="labels from 0 to 14; mnist has the classes 0..9"):
        build("mnist", root=str(tmp_path))


def test_idx_images_and_labels_of_different_lengths_are_refused(tmp_path):
    from dataset_files import write_idx_labels

    mnist_like(tmp_path, "MNIST", n_train=30, n_test=10)
    write_idx_labels(tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte", np.zeros(9), compress=False)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataNotFoundError, match="10 images.*9 labels|9 labels"):
        build("mnist", root=str(tmp_path))
