"""int8 quantization recipes for an exported FCN, judged on images the calibration never saw.

Each recipe quantizes the same fp32 export with NNCF (calibrated on the checkpoint's
training split), runs it with OpenVINO over every image of the checkpoint's validation
split (with ``--data-option holdout=DRIVE``: a drive never seen in training or
calibration) at its own size, and reports its mIoU against fp32's, the pixel agreement
and the int8 images/s (one image at a time, OpenVINO latency mode):

* ``default``: what ``fcnseg export --int8`` did before: NNCF defaults, fast bias correction;
* ``bias``: full bias correction instead of the fast one;
* ``head-fp32``: the score convs and transposed convs (the head: ~1 % of the FLOPs) stay
  fp32, the body is int8;
* ``head-stem-fp32``: the head and the first conv (3 input channels) fp32;
* ``mixed``: asymmetric activations (NNCF's MIXED preset);
* ``+cal128``: any of the above with 128 calibration images instead of 32.

    python benchmarks/int8_recipes.py --checkpoint runs/camvid/best.pt \\
        --recipes default head-fp32 head-fp32+cal128 --json benchmarks/out/int8.json
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from report import write_report

RECIPES = ("default", "bias", "head-fp32", "head-stem-fp32", "mixed")
STEM_PATTERN = r".*/conv_stem/.*"  # the Lite bodies' first conv (3 input channels)


def quantize(fp32: Path, out: Path, images: list[np.ndarray], recipe: str) -> float:
    """Quantize ``fp32`` into ``out`` per ``recipe``; returns the seconds it took."""
    import nncf
    import onnx

    from fcnseg.inference.quantize import HEAD_PATTERN

    base = recipe.split("+")[0]
    kwargs: dict = {}
    if base == "bias":
        kwargs["fast_bias_correction"] = False
    if base == "mixed":
        kwargs["preset"] = nncf.QuantizationPreset.MIXED
    if base.startswith("head"):
        patterns = [HEAD_PATTERN] + ([STEM_PATTERN] if "stem" in base else [])
        kwargs["ignored_scope"] = nncf.IgnoredScope(patterns=patterns, validate=False)
    data = nncf.Dataset([{"image": i.transpose(2, 0, 1)[None].astype(np.float32)}
                         for i in images])
    start = time.perf_counter()
    model = nncf.quantize(onnx.load(str(fp32)), data, subset_size=len(images), **kwargs)
    onnx.save(model, str(out))
    return time.perf_counter() - start


def score(path: Path, samples: list, meta, precision: str = "auto"
          ) -> tuple[list[np.ndarray], float, float]:
    """OpenVINO's masks of ``samples``, their mIoU and images/s (the fp32 reference in fp32
    even where ``auto`` would pick bf16; an int8 file as users run it)."""
    from fcnseg import Predictor
    from fcnseg.metrics import ConfusionMatrix

    p = Predictor.from_file(path, runtime="openvino", precision=precision)
    p.predict(samples[0][0])
    start = time.perf_counter()
    masks = [p.predict(image) for image, _ in samples]
    rate = len(samples) / (time.perf_counter() - start)
    cm = ConfusionMatrix(meta.num_classes, meta.ignore_index)
    import torch

    for m, (_, truth) in zip(masks, samples, strict=True):
        cm.update(torch.from_numpy(m.astype(np.int64)), torch.from_numpy(truth.astype(np.int64)))
    return masks, float(cm.compute()["miou"]), rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES))
    parser.add_argument("--json", type=Path, default=Path("benchmarks/out/int8.json"))
    args = parser.parse_args()

    from fcnseg.checkpoint import load_checkpoint
    from fcnseg.data import build_dataset
    from fcnseg.inference.export import export_onnx
    from fcnseg.inference.quantize import spread

    config = load_checkpoint(args.checkpoint)["config"]
    options = config.get("data_options") or {}
    train = build_dataset(config["dataset"], config["data_dir"], config.get("split", "train"),
                          **options)
    val = build_dataset(config["dataset"], config["data_dir"], config.get("val_split", "val"),
                        **options)
    samples = [val.read_raw(i) for i in range(len(val))]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(args.checkpoint, fp32, progress=lambda *_: None)
        ref, ref_miou, ref_rate = score(fp32, samples, val.meta, "fp32")
        print(f"fp32: mIoU {ref_miou:.4f} on {len(samples)} unseen images, {ref_rate:.1f} img/s")
        for recipe in args.recipes:
            count = 128 if recipe.endswith("+cal128") else 32
            images = [train.read_raw(i)[0] for i in spread(list(range(len(train))), count)]
            out = Path(tmp) / f"{recipe}.onnx"
            seconds = quantize(fp32, out, images, recipe)
            masks, miou, rate = score(out, samples, val.meta)
            agree = float(np.mean([(a == b).mean() for a, b in zip(masks, ref, strict=True)]))
            rows.append({"recipe": recipe, "calibration": count, "miou": miou,
                         "miou_drop": ref_miou - miou, "agreement": agree,
                         "images_per_s": rate, "quantize_s": seconds})
            print(f"{recipe:<22} mIoU {miou:.4f} (drop {ref_miou - miou:+.4f}), "
                  f"{100 * agree:.2f} % agree, {rate:.1f} img/s, quantized in {seconds:.0f} s",
                  flush=True)
    write_report(args.json, fp32={"miou": ref_miou, "images_per_s": ref_rate},
                 images=len(samples), rows=rows)


if __name__ == "__main__":
    main()
