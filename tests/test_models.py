"""The FCN model family: shapes for any input size, skip fusion, options and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fcnseg
from fcnseg.errors import FcnsegError, UnknownNameError
from fcnseg.models import BACKBONES, FCN, MODELS, bilinear_kernel, build_model
from fcnseg.models.backbones import depthwise_convs, early_layers


def test_top_level_exports():
    assert fcnseg.build_model is build_model
    assert fcnseg.bilinear_kernel is bilinear_kernel
    assert set(fcnseg.MODELS) == {"fcn32s", "fcn16s", "fcn8s"}


def test_320x480_gives_stride_32_features_and_full_resolution_scores():
    torch.manual_seed(0)
    model = build_model("fcn32s", 21).eval()
    x = torch.rand(1, 3, 320, 480)
    with torch.no_grad():
        assert model.backbone(x)["s32"].shape == (1, 512, 10, 15)
        assert model(x)["out"].shape == (1, 21, 320, 480)
    assert isinstance(model, FCN)
    assert (model.num_classes, model.output_stride) == (21, 32)


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0",
                                      pytest.param("efficientnet_lite1", marks=pytest.mark.slow),
                                      pytest.param("efficientnet_lite2", marks=pytest.mark.slow),
                                      pytest.param("resnet50", marks=pytest.mark.slow)])
def test_375x500_for_every_variant(backbone):
    x = torch.rand(1, 3, 375, 500)
    for name, stride in MODELS.items():
        model = build_model(name, 21, backbone=backbone).eval()
        assert model.output_stride == stride
        with torch.no_grad():
            out = model(x)["out"]
        assert out.shape == (1, 21, 375, 500)
        assert torch.isfinite(out).all()


@pytest.mark.parametrize("backbone", list(BACKBONES))
def test_every_backbone_and_variant_on_a_tiny_input(backbone):
    for name in MODELS:
        model = build_model(name, 3, backbone=backbone).eval()
        with torch.no_grad():
            out = model(torch.rand(1, 3, 33, 47))["out"]
        assert out.shape == (1, 3, 33, 47) and torch.isfinite(out).all()


@pytest.mark.parametrize("size", [(1, 1), (33, 47), (64, 96), (95, 31)])
def test_any_small_size_and_batch(size):
    model = build_model("fcn8s", 5).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))["out"]
    assert out.shape == (2, 5, *size)


def test_fcn16s_forward_is_the_skip_fusion():
    torch.manual_seed(0)
    model = build_model("fcn16s", 3).eval()
    nn.init.normal_(model.score16.weight)  # make the skip branch count
    x = torch.rand(1, 3, 64, 64)  # a multiple of 32: no padding involved
    with torch.no_grad():
        feats = model.backbone(x)
        scores = model.up32to16(model.score32(feats["s32"])) + model.score16(feats["s16"])
        torch.testing.assert_close(model(x)["out"], model.upsample(scores))


def test_any_size_is_zero_padded_to_a_multiple_of_32_and_cropped_back():
    torch.manual_seed(0)
    model = build_model("fcn8s", 3).eval()
    x = torch.rand(1, 3, 50, 70)
    padded = torch.zeros(1, 3, 64, 96)
    padded[..., :50, :70] = x
    with torch.no_grad():
        torch.testing.assert_close(model(x)["out"], model(padded)["out"][..., :50, :70])


def test_skip_scores_start_at_zero_and_learn():
    torch.manual_seed(0)
    model = build_model("fcn8s", 4)
    for conv in (model.score16, model.score8):
        assert torch.count_nonzero(conv.weight) == 0 and torch.count_nonzero(conv.bias) == 0
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():  # at init FCN-8s computes the coarse path only
        feats = model.backbone(x)
        coarse = model.up16to8(model.up32to16(model.score32(feats["s32"])))
        torch.testing.assert_close(model(x)["out"], model.upsample(coarse))
    target = torch.randint(0, 4, (2, 64, 64))
    nn.functional.cross_entropy(model(x)["out"], target).backward()
    for conv in (model.score16, model.score8, model.score32):
        assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


def _transposed(model: FCN) -> list[nn.ConvTranspose2d]:
    return [m for m in model.modules() if isinstance(m, nn.ConvTranspose2d)]


def test_upsampling_layers_match_the_variant():
    expected = {"fcn32s": [64], "fcn16s": [4, 32], "fcn8s": [4, 4, 16]}
    for name, kernels in expected.items():
        model = build_model(name, 3)
        layers = _transposed(model)
        assert sorted(m.kernel_size[0] for m in layers) == sorted(kernels)
        final = model.upsample
        s = model.output_stride
        assert (final.kernel_size[0], final.stride[0], final.padding[0]) == (2 * s, s, s // 2)
        torch.testing.assert_close(final.weight, bilinear_kernel(3, 3, 2 * s))


def test_frozen_and_xavier_upsampling():
    learnable = build_model("fcn8s", 3)
    assert all(m.weight.requires_grad for m in _transposed(learnable))
    frozen = build_model("fcn8s", 3, learnable_upsample=False)
    assert all(not m.weight.requires_grad for m in _transposed(frozen))
    assert frozen.score32.weight.requires_grad  # only the upsampling is frozen
    torch.manual_seed(0)
    xavier = build_model("fcn32s", 3, upsample_init="xavier")
    assert not torch.allclose(xavier.upsample.weight, bilinear_kernel(3, 3, 64))


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_freezing_the_early_backbone_layers(backbone):
    torch.manual_seed(0)
    model = build_model("fcn8s", 3, backbone=backbone)
    keys = list(model.state_dict())
    assert model.freeze_backbone(4) > 0
    frozen = {id(p) for module in model.frozen_layers for p in module.parameters()}
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    model.train()  # the frozen layers stay in eval mode: their statistics do not move
    assert model.backbone.training and not any(m.training for m in model.frozen_layers)
    model(torch.rand(2, 3, 64, 64))["out"].sum().backward()
    for name, p in model.named_parameters():
        assert (p.grad is None) == (id(p) in frozen), name
    moved = [k for k, v in stats.items() if not torch.equal(v, model.state_dict()[k])]
    assert moved and all(not k.startswith(("backbone.bn1.", "backbone.layer1.",
                                           "backbone.features.conv_stem", "backbone.features.bn1",
                                           "backbone.features.blocks.0.",
                                           "backbone.features.blocks.1.")) for k in moved)
    assert list(model.state_dict()) == keys  # checkpoints load either way
    model.freeze_backbone(0)  # a second call replaces the first
    assert all(p.requires_grad for p in model.parameters())
    stem_bn = model.backbone.bn1 if backbone == "resnet18" else model.backbone.features.bn1
    assert model.train() is model and stem_bn.training


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_freezing_the_depthwise_filters(backbone):
    torch.manual_seed(0)
    model = build_model("fcn8s", 3, backbone=backbone)
    frozen_early = model.freeze_backbone(4)
    assert model.freeze_backbone(4, depthwise=True) >= frozen_early  # a ResNet has none
    depthwise = {id(conv.weight) for conv in depthwise_convs(model.backbone)}
    assert bool(depthwise) == (backbone != "resnet18")
    model.train()
    model(torch.rand(2, 3, 64, 64))["out"].sum().backward()
    early = {id(p) for module in model.frozen_layers for p in module.parameters()}
    for name, p in model.named_parameters():
        assert (p.grad is None) == (id(p) in early | depthwise), name
    if depthwise:  # the BatchNorm after a fixed depthwise filter still trains
        assert model.backbone.features.blocks[3][0].bn2.weight.grad is not None
    model.freeze_backbone(0)
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("backbone", ["resnet18", "efficientnet_lite0"])
def test_early_layers_end_at_their_stride(backbone):
    body = build_model("fcn8s", 3, backbone=backbone).backbone.eval()
    for stride in (2, 4, 8):  # run in order, the layers take a 64 px input to 64 / stride
        with torch.no_grad():
            out = nn.Sequential(*early_layers(body, stride))(torch.rand(1, 3, 64, 64))
        assert out.shape[-1] == 64 // stride


def test_channels_last_and_bf16_autocast_on_cpu():
    torch.manual_seed(0)
    model = build_model("fcn8s", 3).eval()
    x = torch.rand(1, 3, 40, 72)
    with torch.no_grad():
        ref = model(x)["out"]
        model_cl = model.to(memory_format=torch.channels_last)
        out_cl = model_cl(x.to(memory_format=torch.channels_last))["out"]
        torch.testing.assert_close(out_cl, ref, atol=1e-4, rtol=1e-4)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out_bf16 = model_cl(x.to(memory_format=torch.channels_last))["out"]
    assert out_bf16.shape == (1, 3, 40, 72)
    assert out_bf16.dtype == torch.float32  # the final upsampling runs in fp32 on a CPU
    assert torch.isfinite(out_bf16.float()).all()
    # bf16 has ~3 significant digits: close to fp32 in relative terms, not equal
    assert (out_bf16.float() - ref).abs().mean() < 0.1 * ref.abs().mean() + 1e-3


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(UnknownNameError, match="fcn32s, fcn16s, fcn8s") as info:
        build_model("fcn4s", 21)
    assert isinstance(info.value, KeyError) and "fcn4s" in str(info.value)
    with pytest.raises(UnknownNameError, match="resnet18, resnet34, resnet50, resnet101"):
        build_model("fcn8s", 21, backbone="vgg16")
    with pytest.raises(UnknownNameError, match="bilinear, xavier"):
        build_model("fcn8s", 21, upsample_init="zeros")


@pytest.mark.parametrize("bad", [0, -3, 2.5, True])
def test_num_classes_must_be_a_positive_integer(bad):
    with pytest.raises(FcnsegError, match="num_classes"):
        build_model("fcn32s", bad)


def test_output_stride_is_checked():
    with pytest.raises(FcnsegError, match="output_stride"):
        FCN(3, output_stride=4)
