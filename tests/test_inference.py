"""Whole-image inference: exact output sizes, tiles vs padding, score averaging, TTA."""

from __future__ import annotations

import pytest
import torch
from PIL import Image
from torch import nn

from fcnseg import build_model
from fcnseg.inference import Predictor, predict_mask, predict_probabilities


class Pointwise(nn.Module):
    """A 1x1 convolution: exactly translation-equivariant, so tiles cannot change anything."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, classes, 1)
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return {"out": self.conv(x)}


class Smooth(nn.Module):
    """Three 3x3 convolutions (receptive field 7): equivariant away from tile borders."""

    def __init__(self, classes: int = 4) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(8, classes, 3, padding=1))

    def forward(self, x):
        return {"out": self.net(x)}


class TileMean(nn.Module):
    """Two classes; the class-1 logit of every pixel is ``bias + gain * mean(tile)``.

    The prediction of a pixel depends on which tile it was seen in, which lets a test
    separate averaging scores from voting with labels.
    """

    def __init__(self, bias: float, gain: float) -> None:
        super().__init__()
        self.bias, self.gain = bias, gain
        self.dummy = nn.Parameter(torch.zeros(()))  # gives the model a device

    def forward(self, x):
        n, _, h, w = x.shape
        one = self.bias + self.gain * x.mean((1, 2, 3))
        logits = torch.stack([torch.zeros_like(one), one], 1)
        return logits.view(n, 2, 1, 1).expand(n, 2, h, w)  # a bare tensor output works too


class ColumnRamp(nn.Module):
    """Class-1 logit grows with the column index: not flip-equivariant."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        n, _, h, w = x.shape
        ramp = torch.linspace(-3, 3, w).view(1, 1, 1, w).expand(n, 1, h, w)
        return {"out": torch.cat([torch.zeros_like(ramp), ramp + 0 * x[:, :1]], 1)}


@pytest.mark.parametrize("size", [(360, 480), (375, 500), (97, 131)])
def test_fcn_predictions_have_exactly_the_input_size(size):
    torch.manual_seed(0)
    model = build_model("fcn8s", 5, backbone="tiny")
    image = torch.randn(1, 3, *size)
    probs = predict_probabilities(model, image)
    assert probs.shape == (1, 5, *size) and probs.dtype == torch.float32
    assert torch.allclose(probs.sum(1), torch.ones(1, *size), atol=1e-5)
    # tiles that do not divide the image: the last row/column of tiles is flush with the edge
    mask = predict_mask(model, image, mode="slide", tile=(96, 128), stride=(96, 128),
                        tile_batch=8)
    assert mask.shape == (1, *size) and mask.dtype == torch.int64


@pytest.mark.slow
def test_large_image_1200x1600():
    model = build_model("fcn32s", 3, backbone="resnet18")
    image = torch.randn(1, 3, 1200, 1600)
    assert predict_mask(model, image).shape == (1, 1200, 1600)
    tiny = Pointwise()
    probs = predict_probabilities(tiny, image, mode="slide", tile=(320, 480), tile_batch=6)
    assert probs.shape == (1, 3, 1200, 1600)
    # tiles are processed a chunk at a time: no forward sees more than tile_batch tiles
    assert max(c[0] for c in tiny.calls) <= 6 and len(tiny.calls) > 1
    assert all(c[-2:] == (320, 480) for c in tiny.calls)


def test_slide_equals_pad_for_a_pointwise_model():
    model = Pointwise()
    image = torch.randn(2, 3, 70, 90)
    pad = predict_probabilities(model, image, mode="pad")
    slide = predict_probabilities(model, image, mode="slide", tile=(32, 48), stride=(20, 30))
    assert torch.allclose(pad, slide, atol=1e-5)


def test_slide_agrees_closely_with_pad_on_a_fitted_model():
    torch.manual_seed(2)
    # a smooth picture (blurred noise) and labels a small conv net can learn
    image = nn.functional.avg_pool2d(torch.randn(1, 3, 96, 96), 9, 1, 4) * 3
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(96), indexing="ij")
    disk = ((yy - 48) ** 2 + (xx - 48) ** 2 < 500).long()
    label = (image[0, 0] > image[0, 1]).long() + disk
    model = Smooth(classes=3)
    opt = torch.optim.Adam(model.parameters(), 0.02)
    for _ in range(60):  # ~0.5 s: enough to give the classes real margins
        loss = nn.functional.cross_entropy(model(image)["out"], label[None])
        opt.zero_grad()
        loss.backward()
        opt.step()
    pad_probs = predict_probabilities(model, image)
    pad = pad_probs.argmax(1)
    assert (pad[0] == label).float().mean() > 0.7  # the fit did learn something
    slide_probs = predict_probabilities(model, image, mode="slide", tile=(48, 48), stride=(24, 24))
    agreement = (pad == slide_probs.argmax(1)).float().mean().item()
    assert agreement > 0.98
    # pixels whose 7 x 7 neighbourhood lies inside every tile covering them are exact:
    # rows/cols 0-20 are covered by the first tile only and are >= 3 px from its edges
    assert torch.allclose(pad_probs[..., :21, :21], slide_probs[..., :21, :21], atol=1e-5)


def test_small_images_are_padded_to_a_tile_and_cropped_back():
    model = Pointwise()
    image = torch.randn(1, 3, 20, 30)
    slide = predict_probabilities(model, image, mode="slide", tile=(32, 48))
    assert slide.shape == (1, 3, 20, 30)
    assert model.calls[-1][-2:] == (32, 48)
    assert torch.allclose(slide, predict_probabilities(model, image), atol=1e-5)


def test_overlap_averages_scores_not_labels():
    # image 8 x 12, tiles 8 x 8 with stride 2: origins 0, 2, 4; columns 6-7 are in all three.
    # Only columns 10-11 are bright, so only the last tile sees them.
    image = torch.zeros(1, 3, 8, 12)
    image[..., 10:] = 4.0
    bias = torch.log(torch.tensor(0.4 / 0.6)).item()  # dark tiles: p(class 1) = 0.4
    model = TileMean(bias=bias, gain=8.0)  # bright tile: mean 1.0 -> p(class 1) ~ 0.9995
    probs = predict_probabilities(model, image, mode="slide", tile=(8, 8), stride=(2, 2))
    tile_p1 = [torch.sigmoid(bias + 8.0 * image[..., x:x + 8].mean()).item()
               for x in (0, 2, 4)]
    assert tile_p1[0] == pytest.approx(0.4) and tile_p1[2] > 0.99
    # columns 6-7: scores averaged over the three tiles
    assert probs[0, 1, :, 6:8] == pytest.approx(torch.full((8, 2), sum(tile_p1) / 3), abs=1e-5)
    votes_for_1 = sum(p > 0.5 for p in tile_p1)
    assert votes_for_1 == 1  # a majority vote of labels would say class 0 ...
    mask = predict_mask(model, image, mode="slide", tile=(8, 8), stride=(2, 2))
    assert (mask[0, :, 6:8] == 1).all()  # ... averaged scores say class 1
    assert (mask[0, :, 0:2] == 0).all()  # columns seen by the first tile only


def test_lists_of_different_sizes_are_grouped_by_size():
    model = Pointwise()
    images = [torch.randn(3, 40, 50), torch.randn(3, 33, 21), torch.randn(3, 40, 50)]
    out = predict_probabilities(model, images)
    assert [tuple(p.shape) for p in out] == [(3, 40, 50), (3, 33, 21), (3, 40, 50)]
    assert sorted(c[0] for c in model.calls) == [1, 2]  # two forwards: one batch per size
    masks = predict_mask(model, images)
    assert masks[1].shape == (33, 21)
    # each image's result is its own: same as predicting it alone
    assert torch.allclose(out[2], predict_probabilities(model, images[2][None])[0], atol=1e-5)


def test_flip_tta_averages_flipped_views():
    model = ColumnRamp()
    image = torch.randn(1, 3, 16, 20)
    plain = predict_probabilities(model, image)
    assert not torch.allclose(plain, plain.flip(-1))
    tta = predict_probabilities(model, image, flip=True)
    # the ramp and its mirror averaged: symmetric left-right, p(class 1) ~ 0.5 everywhere
    assert torch.allclose(tta, tta.flip(-1), atol=1e-5)
    assert torch.allclose(tta[:, 1], torch.full_like(tta[:, 1], 0.5), atol=1e-5)


def test_multi_scale_tta_returns_input_size():
    model = Pointwise()
    image = torch.randn(1, 3, 30, 42)
    probs = predict_probabilities(model, image, scales=(0.5, 1.0, 1.5), flip=True)
    assert probs.shape == (1, 3, 30, 42)
    sizes = sorted({c[-2:] for c in model.calls})
    assert sizes == [(15, 21), (30, 42), (45, 63)]
    assert torch.allclose(probs.sum(1), torch.ones(1, 30, 42), atol=1e-5)
    # a pointwise model on a constant image: every scale gives the same scores
    const = torch.ones(1, 3, 30, 42) * 0.3
    assert torch.allclose(predict_probabilities(model, const, scales=(0.5, 1.5)),
                          predict_probabilities(model, const), atol=1e-5)


def test_bf16_runs_and_returns_fp32_and_restores_training_mode():
    model = Smooth()
    model.train()
    image = torch.randn(1, 3, 32, 40)
    fp32 = predict_probabilities(model, image)
    bf16 = predict_probabilities(model, image, dtype=torch.bfloat16)
    assert bf16.dtype == torch.float32
    assert (fp32 - bf16).abs().max() < 0.05
    assert model.training  # evaluate() during training must not leave the model in eval mode


def test_bad_options_raise():
    model = Pointwise()
    image = torch.randn(1, 3, 16, 16)
    with pytest.raises(KeyError, match="mode 'crop': choose one of pad, slide"):
        predict_probabilities(model, image, mode="crop")
    with pytest.raises(ValueError, match="stride"):
        predict_probabilities(model, image, mode="slide", tile=(8, 8), stride=(16, 16))
    with pytest.raises(ValueError, match="3 x H x W"):
        predict_probabilities(model, torch.randn(1, 16, 16))


# --- inference.evaluate: whole images of a split, one matrix, distributed without double counting


class ToySplit(torch.utils.data.Dataset):
    """Three images of different sizes with labels in {0, 1, 2} and some ignored pixels."""

    def __init__(self) -> None:
        from fcnseg.data import DatasetMeta

        self.meta = DatasetMeta("toy", ["a", "b", "c"], [(0, 0, 0), (255, 0, 0), (0, 0, 255)])
        g = torch.Generator().manual_seed(5)
        self.items = []
        for h, w in ((20, 30), (17, 23), (20, 30)):
            mask = torch.randint(0, 3, (h, w), generator=g)
            mask[0] = 255
            image = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
            self.items.append((image.numpy(), mask.numpy()))
        self.files = [(f"/x/img{i}.png", f"/x/m{i}.png") for i in range(3)]

    def __len__(self) -> int:
        return len(self.items)

    def read_raw(self, i):
        return self.items[i]


def _reference_matrix(model, ds) -> torch.Tensor:
    from fcnseg.data.transforms import Normalize
    from fcnseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(3)
    normalize = Normalize(ds.meta.mean, ds.meta.std)
    for image, mask in ds.items:
        cm.update(predict_mask(model, normalize.image(image)[None])[0], torch.from_numpy(mask))
    return cm.mat


def test_evaluate_counts_every_pixel_once_and_saves_pictures(tmp_path):
    from fcnseg.inference.evaluate import evaluate

    model, ds = Pointwise(), ToySplit()
    model.train()
    predictor = Predictor.from_model(model, ds.meta)
    cm = evaluate(predictor, ds, batch_size=3, progress=False,
                  save_predictions=tmp_path / "pred", max_images=2)
    assert torch.equal(cm.mat, _reference_matrix(model, ds))
    assert int(cm.mat.sum()) == 19 * 30 * 2 + 16 * 23
    assert model.training
    saved = sorted(p.name for p in (tmp_path / "pred").iterdir())
    assert saved == ["0000_img0.png", "0001_img1.png"]
    # image | truth | prediction side by side, 4 px gaps
    assert Image.open(tmp_path / "pred" / saved[0]).size == (3 * 30 + 8, 20)
    slide = predictor.with_options(mode="slide", tile=(8, 8))
    limited = evaluate(slide, ds, progress=False, limit=1)
    assert int(limited.mat.sum()) == 19 * 30


def _rank_main(rank: int, world: int, init_file: str, out: str) -> None:
    import torch.distributed as dist

    from fcnseg.inference.evaluate import evaluate

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world)
    try:
        ds = ToySplit()
        cm = evaluate(Predictor.from_model(Pointwise(), ds.meta), ds, progress=False)
        torch.save(cm.mat, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_evaluate_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    # 3 images on 2 ranks: a DistributedSampler would repeat one image; rank::world does not
    mp.spawn(_rank_main, args=(2, str(tmp_path / "init"), str(tmp_path / "mat")), nprocs=2)
    expected = _reference_matrix(Pointwise(), ToySplit())
    for rank in range(2):
        assert torch.equal(torch.load(tmp_path / f"mat.{rank}"), expected)
