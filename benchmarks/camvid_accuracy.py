"""CamVid accuracy under a fixed wall-clock budget: the D2L chapter's recipe against fcnseg's.

Every recipe trains on the SegNet train split of ``../shared/data/camvid`` and is evaluated
with ``fcnseg evaluate`` on whole val images. fcnseg's recipe fine-tunes ImageNet
EfficientNet-Lite0 weights (installed with fcnseg, offline); the chapter's ResNet-18 trains
from random weights here, since torchvision's ImageNet weights cannot be downloaded
offline. Each recipe gets the same budget: ``fcnseg train --time-budget`` times a few
training steps and sets the number of epochs that fits it (the lr schedule spans exactly
those epochs). ``--folds val 0006R0`` trains each recipe twice: on SegNet's train split,
scored on its val (neighbouring frames of the drive that gives most of train), and on the
drives other than 0006R0, scored on every frame of that unseen drive.

    python benchmarks/camvid_accuracy.py --budget-minutes 60 --folds 0006R0 0001TP val

``--parallel`` trains every run at the same time, one core each (``--threads 1``); the
budget is then per core. Use it to screen candidates, not for the figures of a recipe.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from report import write_report

ROOT = Path(__file__).resolve().parents[1]
CAMVID = ROOT.parent / "shared" / "data" / "camvid"

# Settings changed on top of the fcnseg recipe, passed to `fcnseg train` as flags.
# fcnseg-scratch is fcnseg's recipe as it was before ImageNet weights could be had offline:
# ResNet-18 from random weights. fcnseg-bodylr fine-tunes the ImageNet body at a tenth of
# the new layers' lr; fcnseg-lite1 / -lite2 are the larger Lite bodies.
OVERRIDES: dict[str, dict] = {
    "fcnseg-scratch": {"backbone": "resnet18", "pretrained": False},
    "fcnseg-bodylr": {"backbone_lr": 0.1},
    "fcnseg-lite1": {"backbone": "efficientnet_lite1"},
    "fcnseg-lite2": {"backbone": "efficientnet_lite2"},
    "fcnseg-nojitter": {"color_jitter": 0.0},
}
# Test-time augmentation scored beside the plain prediction: flips and three scales.
TTA = ["--flip", "--scales", "0.75", "1", "1.25"]


def _train_flags(recipe: str, overrides: dict | None = None) -> list[str]:
    flags = ["--recipe", recipe]
    for key, value in (overrides or {}).items():
        flag = f"--{key.replace('_', '-')}"
        if isinstance(value, bool):
            flags.append(flag if value else f"--no-{flag[2:]}")
            continue
        values = value if isinstance(value, list) else [value]
        flags += [flag, *map(str, values)]
    return flags


# Flags on top of each recipe. The chapter's recipe gets only what offline CamVid training
# forces: no ImageNet weights for its ResNet-18; the budget sets its epochs (the book uses 5).
RECIPES: dict[str, list[str]] = {
    "d2l": _train_flags("d2l", {"pretrained": False}),
    "fcnseg": _train_flags("fcnseg"),
    **{name: _train_flags("fcnseg", values) for name, values in OVERRIDES.items()},
}


def fold_flags(fold: str) -> list[str]:
    """Data flags of a fold: SegNet's split for "val", else the drive held out of training."""
    return [] if fold == "val" else ["--data-option", f"holdout={fold}"]


def start_training(recipe: str, budget_s: float, out: Path, threads: int,
                   data: list[str]) -> subprocess.Popen:
    """``fcnseg train --time-budget``: the library times the step and plans the epochs."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "fcnseg", "train", *RECIPES[recipe], "--dataset", "camvid",
           "--data-dir", str(CAMVID), *data, "--time-budget", f"{budget_s:.0f}s",
           "--val-every", "5", "--out", str(out / recipe),
           "--overwrite"]  # a benchmark re-run replaces the recipe's previous run
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    log = open(out / f"{recipe}.train.log", "w")  # noqa: SIM115 - closed with the process
    print("$", " ".join(cmd[1:]), flush=True)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def evaluate(recipe: str, out: Path, data: list[str], checkpoint: str = "last.pt",
             tag: str = "", flags: tuple[str, ...] = ()) -> dict:
    result = out / f"{recipe}{tag}.metrics.json"
    cmd = [sys.executable, "-m", "fcnseg", "evaluate", "--checkpoint",
           str(out / recipe / checkpoint), "--dataset", "camvid", "--data-dir", str(CAMVID),
           *data, "--split", "val", "--json", str(result), "--no-progress", *flags]
    print("$", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, check=True)
    return json.loads(result.read_text())


def score(recipe: str, out: Path, data: list[str]) -> dict:
    """The saved model as is, with test-time augmentation, and (when the run kept a weight
    average) the last trained weights without it."""
    scores = {"plain": evaluate(recipe, out, data), "tta": evaluate(recipe, out, data,
                                                                     tag=".tta", flags=TTA)}
    checkpoint = torch.load(out / recipe / "last.pt", map_location="cpu", weights_only=True)
    if "trained_model" in checkpoint:  # the ablation of the weight average, for free
        checkpoint["model"] = checkpoint.pop("trained_model")
        torch.save(checkpoint, out / recipe / "no_average.pt")
        scores["no_average"] = evaluate(recipe, out, data, "no_average.pt", ".no_average")
    return scores


def train_all(runs: list[tuple[str, str]], budget_s: float, out: Path, threads: int,
              parallel: bool) -> dict[tuple[str, str], float]:
    """Train every (fold, recipe), all at once with ``parallel``; their wall seconds."""
    seconds = {}
    for group in [runs] if parallel else [[run] for run in runs]:
        start = time.perf_counter()
        procs = {(fold, recipe): start_training(recipe, budget_s, out / fold, threads,
                                                fold_flags(fold)) for fold, recipe in group}
        while procs:  # poll, so that each run's own wall time is recorded
            for run, proc in list(procs.items()):
                if proc.poll() is None:
                    continue
                if proc.returncode != 0:
                    fold, recipe = run
                    sys.exit(f"training {recipe} failed: see {out / fold / recipe}.train.log")
                seconds[run] = time.perf_counter() - start
                del procs[run]
            time.sleep(2)
    return seconds


def print_table(results: dict[str, dict[str, dict]]) -> None:
    """Each run's epochs, minutes, pixel accuracy and mIoU (+ TTA), then per-class IoU."""
    print(f"\n{'fold':<7} {'recipe':<15} {'epochs':>6} {'train min':>9} {'pix acc':>8} "
          f"{'mIoU':>6} {'+TTA':>6} {'no avg':>6}")
    for fold, recipes in results.items():
        for recipe, r in recipes.items():
            v = r["variants"]
            no_average = f"{v['no_average']['miou']:6.4f}" if "no_average" in v else "     -"
            print(f"{fold:<7} {recipe:<15} {r['epochs']:>6} {r['train_seconds'] / 60:9.1f} "
                  f"{r['pixel_accuracy']:8.4f} {r['miou']:6.4f} {v['tta']['miou']:6.4f} "
                  f"{no_average}")
    for fold, recipes in results.items():
        names = list(next(iter(recipes.values()))["per_class_iou"])
        print(f"per-class IoU, {fold}: " + ", ".join(
            f"{n} " + "/".join(f"{(recipes[r]['per_class_iou'][n] or 0):.2f}" for r in recipes)
            for n in names))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget-minutes", type=float, default=60.0)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--parallel", action="store_true",
                        help="train every recipe and fold at once, --threads each")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: all cores, 1 with --parallel)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "camvid")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "camvid.json")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--folds", nargs="+", default=None, metavar="FOLD",
                       help="where each recipe is scored, one training run per fold: 'val' "
                            "(SegNet's val split, frames of a drive that also gives most of "
                            "train) or a drive held out of training (0006R0, 0001TP, 0016E5); "
                            "default: val")
    where.add_argument("--holdout", default=None, metavar="DRIVE",
                       help="the same as --folds DRIVE")
    args = parser.parse_args()
    if not CAMVID.is_dir():
        sys.exit(f"CamVid not found at {CAMVID}: this benchmark reads the shared copy")
    folds = args.folds or [args.holdout or "val"]
    threads = args.threads or (1 if args.parallel else os.cpu_count() or 1)
    budget = args.budget_minutes * 60

    runs = [(fold, recipe) for fold in folds for recipe in args.recipes]
    seconds = train_all(runs, budget, args.out, threads, args.parallel)
    results: dict[str, dict[str, dict]] = {fold: {} for fold in folds}
    for fold, recipe in runs:
        plan = json.loads((args.out / fold / recipe / "plan.json").read_text())
        scores = score(recipe, args.out / fold, fold_flags(fold))
        results[fold][recipe] = {**plan, "train_seconds": seconds[fold, recipe],
                                 **scores["plain"], "variants": scores}
    print_table(results)
    write_report(args.json, budget_minutes=args.budget_minutes, threads_per_run=threads,
                 parallel=args.parallel, cores=os.cpu_count(), folds=folds, results=results)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
