"""What a dead worker costs a ``torchrun`` training run: the steps redone.

Trains FCN-8s on a synthetic ``shapes`` set twice with ``torchrun --nproc-per-node 2``: once
undisturbed, once with ``--max-restarts 1`` and one worker killed (SIGKILL, by its pid) as
the run passes ``--kill-at`` steps. torchrun restarts the group with the same command line,
which resumes from the run's ``last.pt`` (written every ``--checkpoint-every`` steps). The
steps redone are the steps reached when the worker died minus the step of the checkpoint
the restart resumed from; the finished run is compared with the undisturbed one.

    python benchmarks/fault_resume.py --checkpoint-every 10 --kill-at 45
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from report import write_report

STEPS = re.compile(r"epoch (\d+)/\d+:\s+\d+%\|[^|]*\|\s*(\d+)/(\d+)")


def command(data: Path, out: Path, args: argparse.Namespace, restarts: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
            "2", "--max-restarts", str(restarts), "-m", "fcnseg", "train", "--dataset",
            "shapes", "--data-dir", str(data), "--data-option", f"size={args.images}",
            "--data-option", "image_size=64", "--data-option", "val_size=8", "--model",
            "fcn8s", "--backbone", "resnet18", "--no-pretrained", "--epochs",
            str(args.epochs), "--batch-size", "8", "--crop", "64", "64", "--workers", "0",
            "--precision", "fp32", "--val-every", "0", "--checkpoint-every",
            str(args.checkpoint_every), "--out", str(out)]


def children(pid: int) -> list[int]:
    """The PIDs of ``pid``'s child processes (procps' pgrep): torchrun's workers."""
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True)
    return [int(line) for line in found.stdout.split()]


def faulty_run(cmd: list[str], kill_at: int) -> dict:
    """Run ``cmd``, kill a worker once rank 0's progress bar passes ``kill_at`` steps."""
    agent = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             env={**os.environ, "OMP_NUM_THREADS": "1"},
                             start_new_session=True)
    reached, text, killed = [0], [], threading.Event()

    def read() -> None:
        buf = ""
        while chunk := agent.stderr.read1(4096).decode(errors="replace"):
            text.append(chunk)
            buf = (buf + chunk)[-4096:]
            for epoch, step, per_epoch in STEPS.findall(buf):
                reached[0] = max(reached[0], (int(epoch) - 1) * int(per_epoch) + int(step))
            if reached[0] >= kill_at and not killed.is_set():
                at = reached[0]
                os.kill(max(children(agent.pid)), signal.SIGKILL)
                killed.set()
                reached.append(at)

    began = time.perf_counter()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    agent.wait(timeout=1800)
    reader.join(timeout=10)
    err = "".join(text)
    resumed = re.search(r"resuming from \S+ \(step (\d+)\)", err)
    return {"status": agent.returncode, "seconds": time.perf_counter() - began,
            "killed_at_step": reached[1] if len(reached) > 1 else None,
            "resumed_from_step": int(resumed.group(1)) if resumed else None,
            "log_tail": err[-1500:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--checkpoint-every", type=int, default=10)
    parser.add_argument("--kill-at", type=int, default=45, help="kill a worker at this step")
    parser.add_argument("--json", type=Path,  # benchmarks/out/, wherever it is run from
                        default=Path(__file__).resolve().parent / "out" / "fault_resume.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        began = time.perf_counter()
        clean = subprocess.run(command(tmp / "data", tmp / "clean", args, 0),
                               capture_output=True, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
        clean_s = time.perf_counter() - began
        if clean.returncode:
            raise SystemExit(clean.stderr[-3000:])
        row = faulty_run(command(tmp / "data", tmp / "faulty", args, 1), args.kill_at)
        if row["status"]:
            raise SystemExit(row["log_tail"])
        done, ref = (torch.load(tmp / r / "last.pt", weights_only=True)
                     for r in ("faulty", "clean"))
        same = all(torch.equal(done["model"][k], v) for k, v in ref["model"].items())
    row.pop("log_tail")
    row.update(checkpoint_every=args.checkpoint_every, clean_seconds=clean_s,
               steps=ref["progress"]["step"], same_weights_as_clean=same)
    row["steps_redone"] = row["killed_at_step"] - row["resumed_from_step"]
    print(f"{row['steps']} steps, --checkpoint-every {args.checkpoint_every}: a worker "
          f"killed at step {row['killed_at_step']}, the restart resumed from step "
          f"{row['resumed_from_step']}: {row['steps_redone']} steps redone; "
          f"{row['seconds']:.0f} s against {clean_s:.0f} s undisturbed; the same weights "
          f"as the undisturbed run: {same}")
    write_report(args.json, rows=[row])


if __name__ == "__main__":
    main()
