"""Backbone weights: local torchvision state dicts, the torch hub cache, and clear errors.

No network: the ImageNet download is mocked, and every weights file is saved by the test.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision

from fcnseg.errors import FcnsegError, WeightsError
from fcnseg.models import build_model
from fcnseg.models.backbones import (
    BACKBONES,
    build_backbone,
    hub_cache_path,
    load_backbone_state,
)


def _seeded_resnet18(seed: int = 123) -> torchvision.models.ResNet:
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None)
    # Non-trivial BN statistics, so that a forgotten buffer would show in the features.
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def _torchvision_taps(model: torchvision.models.ResNet, x: torch.Tensor) -> list[torch.Tensor]:
    """layer2/3/4 outputs computed step by step from the torchvision model."""
    h = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    h = model.layer1(h)
    s8 = model.layer2(h)
    s16 = model.layer3(s8)
    return [s8, s16, model.layer4(s16)]


@pytest.fixture(scope="module")
def saved_resnet18(tmp_path_factory) -> tuple[torchvision.models.ResNet, Path]:
    model = _seeded_resnet18()
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)  # full torchvision state dict, fc.* included
    return model, path


@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> list[str]:
    """An empty torch hub cache in tmp_path and a download that fails like no network."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    calls: list[str] = []

    def no_network(url, dst, hash_prefix=None, progress=True):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    return calls


def test_features_from_a_saved_state_dict_equal_the_torchvision_model(saved_resnet18):
    reference, path = saved_resnet18
    body, channels = build_backbone("resnet18", weights_path=path)
    body.eval()
    x = torch.rand(2, 3, 64, 96)
    with torch.no_grad():
        ours = body(x)
        theirs = _torchvision_taps(reference, x)
    for key, expected in zip(("s8", "s16", "s32"), theirs, strict=True):
        assert ours[key].shape[1] == channels[key]
        assert torch.equal(ours[key], expected)  # exactly, not approximately


def test_build_model_uses_the_weights_file(saved_resnet18):
    reference, path = saved_resnet18
    model = build_model("fcn8s", 5, backbone_weights=str(path)).eval()
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.backbone(x)["s32"], _torchvision_taps(reference, x)[2])
    random_model = build_model("fcn8s", 5).eval()
    with torch.no_grad():  # guards against the file being silently ignored
        assert not torch.equal(random_model.backbone(x)["s32"], model.backbone(x)["s32"])


def test_a_state_dict_without_fc_also_loads(saved_resnet18):
    reference, _ = saved_resnet18
    state = {k: v for k, v in reference.state_dict().items() if not k.startswith("fc.")}
    body, _ = build_backbone("resnet18")
    load_backbone_state(body, state, "resnet18", "a state dict without fc.*")
    torch.testing.assert_close(body.conv1.weight, reference.conv1.weight, rtol=0, atol=0)


def test_missing_weights_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsError, match="nope.pth") as info:
        build_model("fcn32s", 3, backbone_weights=missing)
    assert "does not exist" in str(info.value)


@pytest.mark.parametrize("kind", ["garbage", "truncated", "not_tensors"])
def test_corrupt_weights_file(saved_resnet18, tmp_path, kind):
    _, good = saved_resnet18
    bad = tmp_path / f"{kind}.pth"
    if kind == "garbage":
        bad.write_bytes(b"this is not a torch file\x00\x01" * 10)
    elif kind == "truncated":
        bad.write_bytes(good.read_bytes()[:5000])
    else:
        torch.save([torch.zeros(3)], bad)
    with pytest.raises(WeightsError, match=f"{kind}.pth") as info:
        build_backbone("resnet18", weights_path=bad)
    assert "\n" not in str(info.value)  # one line for the CLI


def test_wrong_architecture_weights(saved_resnet18, tmp_path):
    _, path = saved_resnet18
    # resnet18 weights for a resnet34: layer blocks missing
    with pytest.raises(WeightsError, match=r"resnet18\.pth.*resnet34.*missing keys"):
        build_backbone("resnet34", weights_path=path)
    # a state dict with one tensor of the wrong shape (of the kilobyte test backbone)
    state = build_backbone("tiny")[0].state_dict()
    state["layer3.0.conv1.weight"] = torch.zeros(32, 8, 3, 3)
    torch.save(state, tmp_path / "shape.pth")
    with pytest.raises(WeightsError, match=r"shape\.pth.*shape mismatch.*layer3\.0\.conv1"):
        build_backbone("tiny", weights_path=tmp_path / "shape.pth")


def test_pretrained_with_empty_cache_and_no_network_names_the_cache_path(offline_hub):
    url, cached = hub_cache_path("resnet18")
    assert cached.parent == Path(torch.hub.get_dir()) / "checkpoints"
    with pytest.raises(WeightsError) as info:
        build_model("fcn32s", 21, pretrained=True)
    message = str(info.value)
    assert offline_hub == [url]  # the weights API tried to download exactly this file
    assert str(cached) in message and url in message and "--backbone-weights" in message
    assert "\n" not in message


def test_pretrained_reads_the_hub_cache_offline(offline_hub, saved_resnet18):
    reference, path = saved_resnet18
    _, cached = hub_cache_path("resnet18")
    cached.parent.mkdir(parents=True)
    cached.symlink_to(path)  # as if downloaded earlier
    body, _ = build_backbone("resnet18", pretrained=True)
    assert offline_hub == []  # no download attempted
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(body.eval()(x)["s32"], _torchvision_taps(reference, x)[2])


def test_pretrained_with_a_corrupt_cached_file(offline_hub):
    _, cached = hub_cache_path("resnet50")
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"half a download")
    with pytest.raises(WeightsError) as info:
        build_backbone("resnet50", pretrained=True)
    assert str(cached) in str(info.value) and "delete it" in str(info.value)
    assert offline_hub == []  # a cached file is read, not downloaded again


def test_weights_errors_are_user_errors():
    assert issubclass(WeightsError, FcnsegError)
    assert set(BACKBONES) == {"resnet18", "resnet34", "resnet50", "resnet101", "tiny",
                              "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}


def test_the_tiny_test_backbone_has_resnet_taps_and_no_imagenet_weights():
    body, channels = build_backbone("tiny")
    feats = body(torch.zeros(1, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "s8": (channels["s8"], 8, 12), "s16": (channels["s16"], 4, 6),
        "s32": (channels["s32"], 2, 3)}
    assert sum(p.numel() for p in body.parameters()) < 100_000
    with pytest.raises(WeightsError, match="--no-pretrained"):
        build_backbone("tiny", pretrained=True)
