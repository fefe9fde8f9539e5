"""Checkpoints a user can trust: atomic writes, ``weights_only`` loads, one file per run state.

A checkpoint is a dict of plain Python types and tensors only (see docs/DESIGN.md), so that
``torch.load(..., weights_only=True)`` can read it without executing pickled code: the
config is a dict, RNG states are tensors / lists, the data set's meta is a dict.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .data import DatasetMeta
from .data.meta import class_mismatch
from .errors import CheckpointError, first_line
from .fileio import atomic_write, deferred_interrupts
from .models import build_model

# Keys every fcnseg checkpoint has; used to tell our files from any other ``.pt`` file.
REQUIRED_KEYS = ("model", "model_args", "meta", "fcnseg_version")
# Entry -> the type it must have: a checkpoint's schema, checked on load so that a damaged
# or hand-made file is named with what it lacks instead of failing deep in the code.
SCHEMA: dict[str, type | tuple[type, ...]] = {"model": dict, "model_args": dict, "meta": dict}
RESUME_SCHEMA: dict[str, type | tuple[type, ...]] = {
    "config": dict, "optimizer": dict, "scheduler": dict, "scaler": dict, "epoch": int,
    "iteration": int, "rng": dict, "best_miou": (int, float), "history": list}


def model_entries(model: torch.nn.Module, meta: Any, model_args: dict[str, Any]) -> dict[str, Any]:
    """What every checkpoint holds, and all that predicting needs: the weights, the
    ``build_model`` arguments and the data set's meta (classes, palette, normalisation)."""
    return {"model": model.state_dict(), "model_args": dict(model_args),
            "meta": meta.to_dict(), "fcnseg_version": __version__}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically and return the path.

    The bytes go to a temporary file in the *same* folder (so the final ``os.replace`` is a
    rename on one file system, atomic on POSIX and Windows), are flushed and fsynced, and
    only then replace ``path``. A crash or SIGKILL at any moment leaves either the old or
    the new checkpoint, never a truncated one.
    """
    with deferred_interrupts():  # Ctrl-C mid-write: finish the file, then stop
        return atomic_write(path, lambda f: torch.save(state, f), fsync=True,
                            error=CheckpointError,
                            hint="free disk space or choose another run folder with --out")


def load_checkpoint(path: str | Path, resume: bool = False) -> dict[str, Any]:
    """Load an fcnseg checkpoint on the CPU with ``weights_only=True``.

    Raises :class:`CheckpointError` naming the file when it is missing, corrupt, not an
    fcnseg checkpoint, or lacks an entry it needs (those of a training state if ``resume``).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder: give a checkpoint file in it, e.g. "
                              f"{path / 'last.pt'}")
    if not path.is_file():
        raise CheckpointError(
            f"checkpoint {path} does not exist: check the path (e.g. RUN_DIR/best.pt)"
        )
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors all mean "unreadable"
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch file ({first_line(exc)}); "
            "use another checkpoint, e.g. RUN_DIR/best.pt or RUN_DIR/last.pt"
        ) from exc
    if not isinstance(checkpoint, dict) or any(k not in checkpoint for k in REQUIRED_KEYS):
        raise CheckpointError(
            f"{path} is not an fcnseg checkpoint (no {', '.join(REQUIRED_KEYS)} entries); "
            "use a last.pt or best.pt written by `fcnseg train`"
        )
    schema = {**SCHEMA, **(RESUME_SCHEMA if resume else {})}
    bad = [key for key, kind in schema.items()
           if not isinstance(checkpoint.get(key), kind) or isinstance(checkpoint[key], bool)
           or (kind is dict and key != "scaler" and not checkpoint[key])]
    if bad:
        what = "resume from it" if resume else "use it"
        raise CheckpointError(f"checkpoint {path} lacks or has empty {', '.join(bad)} "
                              f"entries, so fcnseg cannot {what}; use a last.pt written by "
                              "`fcnseg train`")
    return checkpoint


def check_compatible(checkpoint: dict[str, Any], model_args: dict[str, Any], path: Any,
                     class_names: list[str] | None = None) -> None:
    """Raise :class:`CheckpointError` when ``checkpoint`` was trained for another model.

    Compares the settings that change the weights' shapes or meaning: model name, backbone,
    number of classes and, when given, the class names in order (same count, other classes
    would silently mislabel every pixel).
    """
    saved = checkpoint.get("model_args", {})
    diffs = [
        f"{key} {saved.get(key)!r} in the checkpoint vs {model_args.get(key)!r} asked for"
        for key in ("name", "backbone", "num_classes")
        if saved.get(key) != model_args.get(key)
    ]
    saved_names = checkpoint.get("meta", {}).get("class_names")
    if not diffs and class_names is not None and saved_names is not None:
        diffs += [d for d in [class_mismatch(saved_names, class_names, "the data")] if d]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} does not fit: {'; '.join(diffs)}; "
            "use the same --model/--backbone/--dataset or start a new run folder"
        )


def model_from_checkpoint(
    path: str | Path, device: str | torch.device = "cpu"
) -> tuple[torch.nn.Module, Any, dict[str, Any]]:
    """Rebuild the model saved in ``path``: returns ``(model in eval mode, meta, checkpoint)``.

    The model is built with ``pretrained=False`` and no backbone weights file: every weight
    comes from the checkpoint, so evaluating or predicting needs this one file only.
    """
    checkpoint = load_checkpoint(path)
    args = dict(checkpoint["model_args"])
    args.update(pretrained=False, backbone_weights=None)
    model = build_model(**args)
    meta = DatasetMeta.from_dict(checkpoint["meta"])
    if meta.num_classes != args.get("num_classes"):
        raise CheckpointError(
            f"checkpoint {path} is inconsistent: {meta.num_classes} class names but "
            f"num_classes={args.get('num_classes')}; re-save it with `fcnseg train`"
        )
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as exc:
        lines = str(exc).strip().splitlines()
        detail = first_line(RuntimeError(lines[1] if len(lines) > 1 else lines[0]))
        raise CheckpointError(
            f"checkpoint {path} does not fit model {args.get('name')!r} with "
            f"{args.get('num_classes')} classes ({detail}); "
            "it was written by another model or class count"
        ) from exc
    model.to(device).eval()
    return model, meta, checkpoint


# --- RNG states: stored as tensors / lists so that weights_only=True can load them ----------


def capture_rng_state() -> dict[str, Any]:
    """The RNG states of python, numpy, torch (CPU) and CUDA, as plain types and tensors."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": [
            np_state[0],
            torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            int(np_state[2]),
            int(np_state[3]),
            float(np_state[4]),
        ],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state` (missing entries are left alone)."""
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "numpy" in state:
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "torch" in state:
        torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)
