"""The ``fcnseg`` command line: one sub-command per module in :mod:`fcnseg.commands`.

Each command module defines ``add_parser(subparsers)`` (which registers its options and
sets ``func``) so this file stays a dispatcher. User errors (:class:`FcnsegError`) print
one line and exit 2; a Ctrl-C exits 130; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Any, NoReturn

from . import __version__
from .allocator import keep_freed_memory
from .errors import FcnsegError

# Packages of the training install (`pip install "fcnseg[train]"`): an install for exported
# models has none of them, and a command that needs one says so in one line.
TRAINING_PACKAGES = ("torch", "torchvision", "timm", "matplotlib")

# Sub-command name -> module under fcnseg.commands. Each module only registers its options
# here; what a command needs (PyTorch for training, FastAPI...) is imported inside its run().
COMMANDS = {
    "demo": "Train, evaluate and visualise an FCN-8s on the built-in synthetic data (offline).",
    "train": "Train an FCN on VOC, CamVid, COCO annotations, an image/mask folder or the "
             "synthetic data.",
    "evaluate": "Evaluate a checkpoint on whole images: pixel accuracy, mean IoU, per-class IoU.",
    "predict": "Predict masks for images of any size; write palette PNGs and overlays.",
    "export": "Export a checkpoint to ONNX (fp32 or int8), checked against PyTorch.",
    "serve": "Serve a model over HTTP: a JSON/PNG API and a web page (FastAPI + uvicorn).",
    "upsample": "Enlarge a photo with a bilinear-initialised transposed convolution.",
}


class Parser(argparse.ArgumentParser):
    """argparse with fcnseg's error line: ``fcnseg: error: ...`` and status 2 for every
    command, one line, as for the errors the commands themselves raise."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"fcnseg: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fcnseg",
        description="Semantic segmentation with Fully Convolutional Networks.",
    )
    parser.add_argument("--version", action="version", version=f"fcnseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f".commands.{name}", __package__)
        except ModuleNotFoundError as exc:
            if _package(exc) not in TRAINING_PACKAGES:
                raise
            _add_unavailable(sub, name, help_text, _package(exc))
            continue
        module.add_parser(sub, help_text)
    return parser


def _package(exc: ModuleNotFoundError) -> str:
    return (exc.name or "").split(".")[0]


def missing_package(command: str, package: str) -> FcnsegError:
    """The one line for a command whose packages this install does not have."""
    return FcnsegError(f"fcnseg {command} needs {package}, which this install does not have "
                       "(it runs exported models): pip install 'fcnseg[train]' -c constraints.txt")


def _add_unavailable(sub: Any, name: str, help_text: str, package: str) -> None:
    """A command whose options need a missing package: any arguments, one line of advice."""
    p = sub.add_parser(name, help=f"{help_text} [needs {package}: pip install 'fcnseg[train]']",
                       add_help=False, prefix_chars="\0")
    p.add_argument("arguments", nargs=argparse.REMAINDER)

    def run(args: argparse.Namespace) -> int:
        raise missing_package(name, package)
    p.set_defaults(func=run)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fcnseg`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "keep_freed_memory", False):  # training commands: see allocator.py
        keep_freed_memory()  # a process-wide malloc setting: the application's call
    try:
        status = args.func(args)
    except ModuleNotFoundError as exc:
        if _package(exc) not in TRAINING_PACKAGES:
            raise
        print(f"fcnseg: error: {missing_package(args.command, _package(exc))}", file=sys.stderr)
        return 2
    except FcnsegError as exc:
        print(f"fcnseg: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"fcnseg: interrupted{'; ' + str(exc) if str(exc) else ''}", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
