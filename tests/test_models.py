"""Every registered model: forward and backward at the datasets' input shapes; transfer learning."""

from __future__ import annotations

import pytest
import torch

from flcore.data import DataSpec
from flcore.errors import ConfigError
from flcore.registry import discover

REGISTRY = discover()
ZOO = [c.name for c in REGISTRY.all("model") if c.target.startswith("flcore_plugins.models.zoo")]
SMALL = ["mlp", "cnn", "logistic"]


def build(name, spec, **params):
    component = REGISTRY.resolve("model", name)
    return component.load()(component.params_model()(**params), spec)


def forward_backward(model, spec, batch=2):
    model.train()
    x = torch.randn(batch, *spec.input_shape)
    logits = model(x)
    assert logits.shape == (batch, spec.num_classes)
    torch.nn.functional.cross_entropy(logits, torch.arange(batch) % spec.num_classes).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)


def test_the_zoo_has_every_variant_of_table_2():
    assert len(ZOO) == 1 + 4 + 3 + 9 + 4 + 2 + 8  # AlexNet, DenseNet, MobileNet, ResNet, ShuffleNet, SqueezeNet, VGG


@pytest.mark.parametrize("name", ZOO)
def test_zoo_variant_trains_on_grayscale_28_and_colour_32(name):
    torch.manual_seed(0)
    for spec in (DataSpec(10, (1, 28, 28)), DataSpec(100, (3, 32, 32))):
        forward_backward(build(name, spec), spec)


@pytest.mark.parametrize("name", SMALL + ["lenet5"])
def test_small_models_train_on_every_input_shape(name):
    shapes = [(1, 28, 28), (3, 32, 32)] + ([] if name == "lenet5" else [(1, 8, 8), (60,)])
    for shape in shapes:
        if name == "cnn" and len(shape) == 1:
            continue
        spec = DataSpec(10, shape)
        forward_backward(build(name, spec), spec)


def test_lenet5_is_the_real_60k_parameter_lenet():
    for shape in ((1, 28, 28), (1, 32, 32)):
        counts = build("lenet5", DataSpec(10, shape)).parameter_counts()
        assert counts["total"] == 61_706  # LeCun et al.'s C1..F6 with a 10-way output layer


def test_models_that_need_images_say_so():
    with pytest.raises(ValueError, match="image inputs"):
        build("cnn", DataSpec(10, (60,)))
    with pytest.raises(ValueError, match="at least 28x28"):
        build("lenet5", DataSpec(10, (1, 8, 8)))


@pytest.mark.parametrize("name,head", [("resnet152", 2048), ("resnet18", 512), ("mobilenet_v3_small", 1024),
                                       ("vgg11_bn", 4096), ("densenet121", 1024), ("squeezenet1_1", 512)])
def test_feature_extraction_trains_only_the_head(tmp_path, name, head):
    """The paper's Table 3: ResNet152 on CIFAR-10 in feature extraction has 20,490 trainable parameters."""
    from torchvision.models import get_model

    checkpoint = tmp_path / "backbone.pt"
    torch.save(get_model(name).state_dict(), checkpoint)
    spec = DataSpec(10, (3, 32, 32))
    model = build(name, spec, mode="feature_extract", checkpoint=str(checkpoint))
    counts = model.parameter_counts()
    assert counts["trainable"] == head * 10 + 10
    assert counts["frozen"] + counts["trainable"] == counts["total"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model.train()
    torch.nn.functional.cross_entropy(model(torch.randn(4, 3, 32, 32)), torch.tensor([0, 1, 2, 3])).backward()
    optimizer.step()
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    head_keys = {k for k, p in model.named_parameters() if p.requires_grad}
    assert changed == head_keys  # the head moved; nothing else did, batch-norm statistics included


def test_finetune_starts_from_the_local_checkpoint_and_adapts_grayscale(tmp_path):
    from torchvision.models import resnet18

    torch.manual_seed(1)
    source = resnet18()
    torch.save(source.state_dict(), tmp_path / "r18.pt")
    model = build("resnet18", DataSpec(7, (1, 28, 28)), mode="finetune", checkpoint=str(tmp_path / "r18.pt"))
    backbone = model.net.backbone
    torch.testing.assert_close(backbone.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    torch.testing.assert_close(backbone.conv1.weight, source.conv1.weight.sum(dim=1, keepdim=True))
    assert backbone.fc.out_features == 7
    assert model.parameter_counts()["frozen"] == 0
    # a gray image gives the pretrained first layer's response to that image on three channels
    gray = torch.randn(2, 1, 32, 32)
    torch.testing.assert_close(backbone.conv1(gray), source.conv1(gray.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)


def test_scratch_ignores_pretrained_weights_and_everything_trains():
    counts = build("resnet18", DataSpec(10, (3, 32, 32))).parameter_counts()
    assert counts["frozen"] == 0 and counts["trainable"] == counts["total"]


def test_missing_pretrained_weights_offline_say_how_to_provide_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="not in the torch hub cache.*model.checkpoint"):
        build("resnet18", DataSpec(10, (3, 32, 32)), mode="finetune", download=False)
    with pytest.raises(ConfigError, match="no such file"):
        build("resnet18", DataSpec(10, (3, 32, 32)), mode="finetune", checkpoint=str(tmp_path / "nope.pt"))
    with pytest.raises(ConfigError, match="IMAGENET1K_V1"):
        build("resnet18", DataSpec(10, (3, 32, 32)), mode="finetune", weights="NOPE")


def test_a_checkpoint_of_another_architecture_is_a_clear_error(tmp_path):
    from torchvision.models import resnet18

    torch.save(resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(ConfigError, match="does not fit"):
        build("resnet34", DataSpec(10, (3, 32, 32)), mode="finetune", checkpoint=str(tmp_path / "r18.pt"))


def test_small_inputs_are_upsampled_only_when_the_architecture_needs_it():
    assert isinstance(build("resnet18", DataSpec(10, (3, 32, 32))).net.resize, torch.nn.Identity)
    alexnet = build("alexnet", DataSpec(10, (1, 28, 28))).net.resize
    assert isinstance(alexnet, torch.nn.Upsample) and alexnet.size[0] <= 64
