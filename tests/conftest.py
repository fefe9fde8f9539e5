"""Shared fixtures: synthetic data made once, the shared CamVid, checkpoints written by the
library's own code, and the ``tiny`` backbone (kilobytes) wherever ResNet itself is not what
a test is about."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fcnseg import build_model
from fcnseg.checkpoint import model_entries, save_checkpoint
from fcnseg.data import DatasetMeta, build_dataset

CAMVID = Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"
needs_camvid = pytest.mark.skipif(not (CAMVID / "val").is_dir(),
                                  reason=f"the shared CamVid is not at {CAMVID}")

SHAPES = {"size": 16, "image_size": 64, "val_size": 4}  # the synthetic set most tests use
# A smaller one for runs in subprocesses (torchrun, signals): 5 val images split unevenly.
SMALL_SHAPES = {"size": 8, "image_size": 48, "val_size": 5}
TOY_CLASSES = ["background", "thing"]
TOY_PALETTE = [(0, 0, 0), (200, 30, 30)]
TINY = "tiny"  # the test backbone (fcnseg.models.backbones.tiny_resnet)


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory) -> Path:
    """The synthetic ``shapes`` set of :data:`SHAPES`, generated once per test session."""
    root = tmp_path_factory.mktemp("shapes") / "shapes"
    build_dataset("shapes", root, "train", **SHAPES)
    return root


@pytest.fixture(scope="session")
def small_shapes_dir(tmp_path_factory) -> Path:
    """The synthetic ``shapes`` set of :data:`SMALL_SHAPES`, generated once per session."""
    root = tmp_path_factory.mktemp("small_shapes") / "shapes"
    build_dataset("shapes", root, "train", **SMALL_SHAPES)
    return root


def data_options(data: dict) -> list[str]:
    """``--data-option key=value`` flags of a shapes set's parameters."""
    return [x for k, v in data.items() for x in ("--data-option", f"{k}={v}")]


def make_checkpoint(path: Path, classes=TOY_CLASSES, palette=TOY_PALETTE, model="fcn32s",
                    backbone=TINY, seed: int = 0) -> Path:
    """An untrained model's checkpoint, written with the library's own entries and writer."""
    torch.manual_seed(seed)
    args = {"name": model, "num_classes": len(classes), "backbone": backbone}
    net = build_model(**args)
    return save_checkpoint(path, model_entries(net, DatasetMeta("toy", classes, palette), args))


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory) -> Path:
    """A two-class (background, thing) untrained FCN-32s checkpoint on the tiny backbone."""
    return make_checkpoint(tmp_path_factory.mktemp("toy") / "best.pt")


@pytest.fixture(scope="session")
def deploy_venv(tmp_path_factory) -> Path:
    """The bin folder of a fresh virtual environment holding fcnseg's built wheel installed
    as the README's deployment install (``fcnseg[deploy]``, no PyTorch). Built once per run
    from the checkout: the wheel, not the editable tree, so package data is tested too."""
    import subprocess
    import sys
    import venv

    root = Path(__file__).resolve().parents[1]
    work = tmp_path_factory.mktemp("deploy")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w",
                    str(work / "wheel"), str(root)], check=True, capture_output=True)
    wheel = next((work / "wheel").glob("fcnseg-*.whl"))
    venv.create(work / "venv", with_pip=True)
    bin_dir = work / "venv" / "bin"
    subprocess.run([str(bin_dir / "pip"), "install", "-q", "--no-cache-dir",
                    f"{wheel}[deploy]", "-c", str(root / "constraints.txt")],
                   check=True, capture_output=True)
    return bin_dir


def export_model(checkpoint: Path, out: Path) -> Path:
    """``fcnseg export`` of ``checkpoint`` (fp32, checked) to ``out``."""
    from fcnseg.cli import main

    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out)]) == 0
    return out


def free_port() -> int:
    """A loopback TCP port nothing listens on now."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(command: list[str], timeout: float = 120.0, **popen):
    """``command`` (an ``fcnseg serve`` line without ``--port``) started on a free port and
    polled until ``/ready`` answers: ``(process, base URL)``. Fails, naming what the server
    said, if it exits or is not ready within ``timeout`` seconds."""
    import subprocess
    import time
    import urllib.request

    port = free_port()
    popen.setdefault("stderr", subprocess.PIPE)
    proc = subprocess.Popen([*command, "--port", str(port)], text=True, **popen)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the server exited: {proc.stderr.read() if proc.stderr else ''}")
        try:
            with urllib.request.urlopen(base + "/ready", timeout=2):
                return proc, base
        except OSError:
            time.sleep(0.1)
    proc.kill()
    pytest.fail(f"{' '.join(command)} was not ready in {timeout:g} s")


def wait_until(condition, timeout: float = 30.0, what: str = "the condition") -> None:
    """Poll ``condition()`` until true, failing after ``timeout`` seconds."""
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout:g} s")
        time.sleep(0.02)


def quick_flags(data_dir: Path, out: Path, *extra: str, data=SHAPES) -> list[str]:
    """``fcnseg train`` flags of a run of seconds on the shapes set at ``data_dir``: the
    tiny backbone from random weights, fp32 on the CPU; ``extra`` flags override."""
    return ["--dataset", "shapes", "--data-dir", str(data_dir), *data_options(data),
            "--model", "fcn8s", "--no-pretrained", "--backbone", TINY, "--epochs", "2",
            "--batch-size", "4",
            "--crop", "48", "48", "--workers", "0", "--device", "cpu", "--precision", "fp32",
            "--out", str(out), *extra]


def quick_config(data_dir: Path, out: Path, **overrides):
    """The :func:`quick_flags` run as a resolved ``TrainConfig`` (``overrides`` as fields)."""
    from fcnseg.training.config import resolve_config

    base = dict(dataset="shapes", data_dir=str(data_dir), data_options=SHAPES, model="fcn8s",
                pretrained=False, backbone=TINY, epochs=2, batch_size=4, crop=[48, 48],
                workers=0, device="cpu", precision="fp32", out=str(out))
    return resolve_config({**base, **overrides})
