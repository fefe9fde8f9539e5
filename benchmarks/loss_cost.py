"""What each training loss costs: forward + backward of the loss alone, at two batch sizes.

The demo's batch (8 x 5 classes x 96 x 96) and a CamVid batch of fcnseg's recipe
(8 x 11 classes x 256 x 320, a tenth of the pixels ignored), on random logits and labels
with some label boundaries. Best of ``--rounds`` timings, the losses alternating::

    OMP_NUM_THREADS=1 python benchmarks/loss_cost.py --json benchmarks/out/loss_cost.json

Run it with ``PYTHONPATH=<another checkout>/src`` to time another version of the losses.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from fcnseg.training.losses import build_loss

SIZES = {"demo": (8, 5, 96, 96), "camvid": (8, 11, 256, 320)}
LOSSES = [("ce", 0.0), ("ce", 4.0), ("ce+lovasz", 0.0), ("ce+lovasz", 4.0)]


def _batch(n: int, c: int, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    logits = torch.randn(n, c, h, w, requires_grad=True)
    labels = torch.randint(0, c, (n, h // 16, w // 16))  # 16 x 16 blocks: real boundaries
    labels = labels.repeat_interleave(16, 1).repeat_interleave(16, 2)
    labels[:, : h // 10] = 255  # an ignored band, as CamVid's void pixels
    return logits, labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    rows = []
    for size, shape in SIZES.items():
        logits, labels = _batch(*shape)
        fns = [build_loss(name, boundary_weight=bw) for name, bw in LOSSES]
        for fn in fns:  # warm-up
            fn(logits, labels).backward()
        best = [float("inf")] * len(fns)
        for _ in range(args.rounds):
            for i, fn in enumerate(fns):
                start = time.perf_counter()
                fn(logits, labels).backward()
                best[i] = min(best[i], time.perf_counter() - start)
        for (name, bw), seconds in zip(LOSSES, best, strict=True):
            rows.append({"size": size, "shape": list(shape), "loss": name,
                         "boundary_weight": bw, "ms": round(seconds * 1000, 1)})
    print(f"{'size':<7} {'loss':<10} {'boundary w':>10} {'ms (fwd+bwd)':>12}")
    for r in rows:
        print(f"{r['size']:<7} {r['loss']:<10} {r['boundary_weight']:>10g} {r['ms']:>12}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"threads": torch.get_num_threads(), "rows": rows},
                                        indent=2))


if __name__ == "__main__":
    main()
