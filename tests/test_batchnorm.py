"""BatchNorm folding for inference: same outputs, no BatchNorm left, original untouched."""

import pytest
import torch
from torch import nn

from fcnseg import build_model
from fcnseg.models import fold_batchnorm


def _with_running_stats(model: nn.Module) -> nn.Module:
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    torch.manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0", "tiny",
                                      pytest.param("resnet50", marks=pytest.mark.slow)])
def test_fold_batchnorm_keeps_outputs_and_removes_every_batchnorm(backbone):
    model = _with_running_stats(build_model("fcn8s", 5, backbone=backbone, pretrained=False))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # a copy was folded
    x = torch.randn(2, 3, 97, 131)
    with torch.no_grad():
        expected, got = model(x)["out"], folded(x)["out"]
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_fold_batchnorm_leaves_unpaired_batchnorm_alone():
    # A BatchNorm after a ReLU does not follow a conv: folding it would change the result.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.BatchNorm2d(4)).eval()
    _with_running_stats(model)
    folded = fold_batchnorm(model)
    assert isinstance(folded[2], nn.BatchNorm2d)
    x = torch.randn(1, 3, 8, 8)
    torch.testing.assert_close(folded(x), model(x))


def test_fold_batchnorm_keeps_the_activation_of_timm_batchnorm_act():
    # timm's BatchNormAct2d normalises and then applies its activation (ReLU6 in the Lite
    # bodies): the fold must keep the activation in the BatchNorm's place.
    from timm.layers import BatchNormAct2d

    model = nn.Sequential(nn.Conv2d(3, 4, 3), BatchNormAct2d(4, act_layer=nn.ReLU6)).eval()
    _with_running_stats(model)
    folded = fold_batchnorm(model)
    assert isinstance(folded[1], nn.ReLU6)
    x = torch.randn(1, 3, 8, 8) * 4
    torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
