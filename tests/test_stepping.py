"""The engine steps the model around Fabric only where Fabric would do nothing, and seeds only the
generators it uses: the same weights and the same random draws either way."""

from __future__ import annotations

import pytest
import torch
from lightning.fabric import Fabric

from flcore.engine.stepping import Stepper, fabric_is_transparent, place_module


def _train(stepper: Stepper, module: torch.nn.Module, params, steps: int = 6) -> None:
    g = torch.Generator().manual_seed(1)
    optimizer = stepper.setup_optimizer(torch.optim.SGD(params, lr=0.5, momentum=0.9))
    for _ in range(steps):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
        optimizer.zero_grad(set_to_none=True)
        stepper.backward(torch.nn.functional.cross_entropy(module(x), y))
        stepper.clip(optimizer, 0.05)  # small enough to clip every step
        optimizer.step()


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3))


def test_direct_steps_equal_fabric_steps_bit_for_bit():
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    assert fabric_is_transparent(fabric)
    direct_model, wrapped_model = _model(), _model()
    direct = place_module(fabric, direct_model)
    assert direct is direct_model  # not wrapped
    _train(Stepper(fabric, direct), direct, list(direct_model.parameters()))
    wrapped = fabric.setup_module(wrapped_model)
    through_fabric = Stepper(fabric, wrapped)
    through_fabric.direct = False
    _train(through_fabric, wrapped, list(wrapped_model.parameters()))
    for a, b in zip(direct_model.parameters(), wrapped_model.parameters()):
        assert torch.equal(a, b)
    untrained = _model()
    assert not torch.equal(next(untrained.parameters()), next(direct_model.parameters()))


@pytest.mark.parametrize("precision", ["64-true", "bf16-mixed", "16-true"])
def test_other_precisions_go_through_fabric(precision):
    fabric = Fabric(accelerator="cpu", devices=1, precision=precision)
    assert not fabric_is_transparent(fabric)
    assert Stepper(fabric, fabric.setup_module(_model())).direct is False


def test_a_non_finite_gradient_norm_raises_on_both_paths():
    fabric = Fabric(accelerator="cpu", devices=1, precision="32-true")
    for direct in (True, False):
        model = _model()
        module = place_module(fabric, model) if direct else fabric.setup_module(model)
        stepper = Stepper(fabric, module)
        stepper.direct = direct
        optimizer = stepper.setup_optimizer(torch.optim.SGD(model.parameters(), lr=0.1))
        stepper.backward(module(torch.full((2, 5), float("nan"))).sum())
        with pytest.raises(RuntimeError, match="non-finite"):
            stepper.clip(optimizer, 1.0)


def test_seeding_one_device_draws_what_seeding_all_devices_draws():
    from flcore import seeding

    seeding.seed_torch(0, seeding.TRAINING, 3, 7)
    everywhere = torch.rand(5), torch.nn.functional.dropout(torch.ones(8), 0.5)
    seeding.seed_torch(0, seeding.TRAINING, 3, 7, device=torch.device("cpu"))
    on_cpu = torch.rand(5), torch.nn.functional.dropout(torch.ones(8), 0.5)
    assert all(torch.equal(a, b) for a, b in zip(everywhere, on_cpu))
    seeding.seed_torch(0, seeding.TRAINING, 3, 8, device=torch.device("cpu"))
    assert not torch.equal(torch.rand(5), everywhere[0])
