"""Every registry dispatches: each name builds what it names, an unknown name is a
KeyError listing the names (smp's habit), and the config's choices are the registry's."""

from __future__ import annotations

import pytest
import torch

from fcnseg.errors import UnknownNameError
from fcnseg.training.config import CHOICES
from fcnseg.training.losses import LOSSES, build_loss
from fcnseg.training.optim import OPTIMIZERS, SCHEDULES, build_optimizer, lr_factor


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_every_optimizer_builds_and_steps(name, tmp_path):
    from conftest import quick_config

    config = quick_config(tmp_path, tmp_path / "run", optimizer=name, backbone_lr=1.0)
    model = torch.nn.Conv2d(3, 2, 1)
    opt = build_optimizer(model, config)
    model(torch.ones(1, 3, 4, 4)).sum().backward()
    before = model.weight.detach().clone()
    opt.step()
    assert not torch.equal(model.weight, before)
    assert type(opt).__name__.lower() == name


@pytest.mark.parametrize("name", list(SCHEDULES))
def test_every_schedule_starts_at_one_and_stays_in_range(name):
    factors = [lr_factor(step, 100, name, warmup=0) for step in range(101)]
    assert factors[0] == pytest.approx(1.0) and all(0 <= f <= 1 for f in factors)
    assert factors == sorted(factors, reverse=True)


@pytest.mark.parametrize("name", list(LOSSES))
def test_every_loss_is_finite_and_differentiable(name):
    logits = torch.randn(2, 3, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 8, 8))
    target[0, 0, 0] = 255
    loss = build_loss(name)(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad is not None


def test_unknown_names_list_the_registry_and_choices_come_from_it():
    with pytest.raises(UnknownNameError, match="ce, ce\\+lovasz"):
        build_loss("dice")
    with pytest.raises(KeyError, match="poly, cosine, constant"):
        lr_factor(0, 10, "linear", 0)
    assert CHOICES["optimizer"] == tuple(OPTIMIZERS) and CHOICES["loss"] == tuple(LOSSES)
    assert CHOICES["schedule"] == tuple(SCHEDULES)


def test_one_precision_table_and_one_auto_rule(monkeypatch):
    from fcnseg import device

    assert set(CHOICES["precision"]) == set(device.PRECISIONS) - {"int8"}
    with pytest.raises(UnknownNameError, match="auto, fp32, bf16, fp16"):
        device.resolve_precision(torch.device("cpu"), "int8")
    for fast, dtype in ((True, torch.bfloat16), (False, torch.float32)):
        monkeypatch.setattr(device, "cpu_has_fast_bf16", lambda fast=fast: fast)
        assert device.resolve_precision(torch.device("cpu"))[0] == dtype
        assert device.auto_precision("cpu")[0] == ("bf16" if fast else "fp32")
        # training depthwise convolutions (EfficientNet-Lite) on a CPU: fp32, even there
        assert device.resolve_precision(torch.device("cpu"), "auto", depthwise_training=True)[0] \
            == torch.float32
        assert device.resolve_precision(torch.device("cpu"), "bf16", depthwise_training=True)[0] \
            == torch.bfloat16  # asked for


@pytest.mark.parametrize("name", ["torch", "onnxruntime", "openvino"])
def test_every_runtime_opens_a_model(name, toy_checkpoint, tmp_path):
    from conftest import export_model
    from fcnseg.inference.runtimes import RUNTIMES, load_runtime

    assert name in RUNTIMES
    checkpoint = toy_checkpoint
    onnx_file = checkpoint if name == "torch" else export_model(checkpoint, tmp_path / "m.onnx")
    rt, meta, _, reason = load_runtime(checkpoint if name == "torch" else onnx_file, name,
                                       precision="fp32")
    assert reason.startswith(name) or name == "torch"
    probs = rt(__import__("numpy").zeros((1, 3, 16, 16), "float32"))
    assert probs.shape == (1, meta.num_classes, 16, 16)
    with pytest.raises(UnknownNameError, match="auto, torch, onnxruntime, openvino"):
        load_runtime(checkpoint, "tensorrt")
