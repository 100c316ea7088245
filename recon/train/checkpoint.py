"""Atomic writes and checkpoints (plain tensors and primitives; loaded with ``weights_only=True``)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch

from recon.fileio import atomic_write_bytes, atomic_write_text  # noqa: F401  (re-exported)


def save_checkpoint(path: Path, state: dict) -> None:
    """``torch.save`` to a temp file then rename, so a kill never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(state, tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint safely (``weights_only=True``); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for corrupt files
        raise ValueError(f"{path}: not a readable recon checkpoint ({type(err).__name__}: {err})") from err


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The checkpoint with the highest step in ``run_dir/checkpoints``, or None."""
    ckpts = sorted(Path(run_dir, "checkpoints").glob("step-*.pt"))
    return ckpts[-1] if ckpts else None
