"""Batch augmentation equals torchvision's per-image transforms, is seeded per agent and round, and
never touches evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF

from flcore.augment import crop_and_flip
from flcore.config import validate_config
from flcore.experiment import Experiment


def test_crop_and_flip_equals_torchvision_per_image():
    """Replay the draws: each image equals TF.crop(TF.pad(img, p), top, left, H, W), flipped when drawn."""
    x = torch.randint(0, 256, (6, 3, 8, 10), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = crop_and_flip(x, torch.Generator().manual_seed(5), padding=2, flip=True)
    replay = torch.Generator().manual_seed(5)
    offsets = torch.randint(0, 5, (6, 2), generator=replay)
    flips = torch.rand(6, generator=replay) < 0.5
    for i in range(6):
        expected = TF.crop(TF.pad(x[i], [2]), int(offsets[i, 0]), int(offsets[i, 1]), 8, 10)
        if flips[i]:
            expected = TF.hflip(expected)
        assert torch.equal(out[i], expected), i
    assert 0 < int(flips.sum()) < 6 and out.shape == x.shape


def test_flips_are_fair_and_offsets_uniform_over_the_padding():
    x = torch.arange(16, dtype=torch.float32).view(1, 1, 4, 4).repeat(4500, 1, 1, 1)
    flipped = crop_and_flip(x, torch.Generator().manual_seed(1), padding=0, flip=True)
    mirrored = (flipped == x.flip(-1)).flatten(1).all(dim=1)
    assert bool(((flipped == x).flatten(1).all(dim=1) | mirrored).all())
    # a fair coin: 4,500 draws stay within 5 standard deviations (0.037) of a half
    assert abs(float(mirrored.float().mean()) - 0.5) < 0.037
    cropped = crop_and_flip(x + 1, torch.Generator().manual_seed(2), padding=1, flip=False)
    padded = torch.nn.functional.pad(x[0, 0] + 1, (1, 1, 1, 1))
    windows = {(top, left): padded[top:top + 4, left:left + 4] for top in range(3) for left in range(3)}
    seen = [next(o for o, w in windows.items() if torch.equal(c[0], w)) for c in cropped]
    shares = np.array([seen.count(o) for o in windows]) / len(seen)
    assert np.abs(shares - 1 / 9).max() < 0.03  # each of the 9 offsets about equally often


def _run(tmp_path, tiny_config, name, **augment):
    tiny_config["model"] = {"name": "cnn", "channels": [4, 8], "kernel_size": 3, "hidden": 16}
    tiny_config["training"]["augment"] = augment
    return Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / name)


def test_augmented_runs_are_seeded_differ_from_plain_and_resume_exactly(tmp_path, tiny_config):
    plain = _run(tmp_path, tiny_config, "plain")
    first = _run(tmp_path, tiny_config, "a", crop_padding=2, horizontal_flip=True)
    second = _run(tmp_path, tiny_config, "b", crop_padding=2, horizontal_flip=True)
    for key, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[key]), key
    assert any(not torch.equal(v, plain.state_dict[k]) for k, v in first.state_dict.items())
    stopped = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "c", stop_after_rounds=1)
    resumed = Experiment(validate_config(tiny_config)).run(resume_dir=stopped.run_dir)
    for key, value in first.state_dict.items():
        assert torch.equal(value, resumed.state_dict[key]), key


def test_evaluation_is_never_augmented(tmp_path, tiny_config):
    """One round with lr 0: training changes nothing, so test metrics equal the plain run's."""
    tiny_config["training"]["optimizer"]["lr"] = 1e-12
    tiny_config["federation"]["rounds"] = 1
    plain = _run(tmp_path, tiny_config, "plain")
    augmented = _run(tmp_path, tiny_config, "aug", crop_padding=3, horizontal_flip=True)
    assert augmented.history[0]["test_acc"] == pytest.approx(plain.history[0]["test_acc"], abs=1e-9)
    assert np.isfinite(augmented.history[0]["test_loss"])


def test_augmentation_of_inputs_that_are_not_images_is_bad_input(tmp_path, tiny_config):
    from flcore.errors import ConfigError

    tiny_config["training"]["augment"] = {"horizontal_flip": True}
    tiny_config["dataset"] = "synthetic"
    tiny_config["model"] = "logistic"
    with pytest.raises(ConfigError, match="training.augment = .*crops and flips apply to images.*'synthetic'"):
        Experiment(validate_config(tiny_config)).run(out_dir=tmp_path)
    assert not list(tmp_path.iterdir())


def test_centralized_training_augments_its_training_batches_the_same_way(tmp_path, tiny_config):
    """`flcore train` draws the same recipe from a stream of the seed: two runs agree, and differ
    from an unaugmented one."""
    tiny_config["federation"] = None
    tiny_config["model"] = {"name": "cnn", "channels": [4, 8], "kernel_size": 3, "hidden": 16}
    tiny_config["training"]["epochs"] = 1
    plain = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "plain")
    tiny_config["training"]["augment"] = {"crop_padding": 2, "horizontal_flip": True}
    first = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "a")
    second = Experiment(validate_config(tiny_config)).run(out_dir=tmp_path / "b")
    for key, value in first.state_dict.items():
        assert torch.equal(value, second.state_dict[key]), key
    assert any(not torch.equal(v, plain.state_dict[k]) for k, v in first.state_dict.items())


def test_vectorized_augments_each_agent_as_sequential_does(tmp_path, tiny_config):
    """The same per-agent draws on the real samples of each batch: the models agree to rounding."""
    tiny_config["federation"].update(partitioner={"name": "quantity_skew", "sigma": 0.5})
    tiny_config["training"]["batch_size"] = 16
    sequential = _run(tmp_path, tiny_config, "s", crop_padding=2, horizontal_flip=True)
    tiny_config["federation"]["backend"] = {"name": "vectorized", "strict": True}
    vectorized = _run(tmp_path, tiny_config, "v", crop_padding=2, horizontal_flip=True)
    for key, value in sequential.state_dict.items():
        torch.testing.assert_close(vectorized.state_dict[key], value, rtol=1e-4, atol=1e-5)
