"""Dataset format detection and the one entry point :func:`load_dataset`."""

from __future__ import annotations

import numbers
from pathlib import Path

from recon.data.blender import load_blender
from recon.data.colmap import find_sparse_dir, load_colmap
from recon.data.dataset import SceneData
from recon.data.io import check_distortion_mode, resolve_background
from recon.data.ngp import load_ngp

__all__ = ["load_dataset", "detect_format", "FORMATS"]

FORMATS = ("blender", "ngp", "colmap")
_LOADERS = {"blender": load_blender, "ngp": load_ngp, "colmap": load_colmap}


def detect_format(path: str | Path) -> str:
    """"blender" if ``transforms_train.json`` exists, "ngp" if ``transforms.json``, "colmap" if
    ``sparse/0/cameras.{bin,txt}`` or ``sparse/cameras.{bin,txt}``; else ``ValueError`` saying what was looked for."""
    root = Path(path)
    if root.is_file() and root.suffix == ".json":
        return "ngp"
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    if (root / "transforms_train.json").is_file():
        return "blender"
    if (root / "transforms.json").is_file():
        return "ngp"
    if find_sparse_dir(root) is not None:
        return "colmap"
    raise ValueError(f"cannot detect the dataset format of {root}: looked for transforms_train.json (blender), "
                     "transforms.json (ngp / nerfstudio), sparse/0/cameras.{bin,txt} or sparse/cameras.{bin,txt} "
                     "(colmap); pass format= to choose one")


def load_dataset(path: str | Path, *, format: str = "auto", downscale: int = 1, test_every: int = 8,
                 skip_missing_images: bool = False, background=None, distortion: str = "undistort") -> SceneData:
    """Load a dataset into :class:`~recon.data.dataset.SceneData`.

    Args:
        path: the dataset folder (for ngp also the ``transforms.json`` file itself).
        format: "auto" (see :func:`detect_format`), "blender", "ngp" or "colmap".
        downscale: integer N >= 1; images are area-averaged to ``round(W / N) x round(H / N)`` and ``K`` scaled
            by :meth:`Cameras.scaled`.
        test_every: when the dataset has no test split (ngp, colmap, Blender without test/val json), frames at
            indices 0, N, 2N, ... of the sorted frame list go to test and the rest to train.
        skip_missing_images: drop frames whose image file is missing (one warning) instead of raising
            ``FileNotFoundError``.
        background: None (dataset default: white), "white", "black" or an RGB triple in [0, 1]; stored in
            ``SceneData.background`` for the trainer to composite RGBA images over.
        distortion: "undistort" (default) resamples distorted images (instant-ngp / COLMAP lens models) to a
            pinhole with the same K; "keep" leaves the pixels as stored and gives the split's cameras
            ``model="opencv"`` (k1, k2, p1, p2, k3) or ``"fisheye"`` (k1..k4), pinhole frames beside OpenCV
            frames getting zero coefficients (a split mixing fisheye with other models raises ``ValueError``).

    Images: ``[C, H, W, 4]`` float32 in [0, 1], sRGB as stored, straight alpha (1 without alpha; 0 where
    undistortion has no source pixel; with "keep" every pixel keeps the file's alpha).
    Raises ``ValueError`` / ``FileNotFoundError`` naming the file and field on malformed input, and
    ``ValueError`` naming the argument for a bad ``downscale``, ``test_every``, ``background`` or ``distortion``.
    """
    if isinstance(downscale, bool) or not isinstance(downscale, numbers.Integral) or downscale < 1:
        raise ValueError(f"downscale must be an integer >= 1, got {downscale!r}")
    if isinstance(test_every, bool) or not isinstance(test_every, numbers.Integral) or test_every < 2:
        raise ValueError(f"test_every must be an integer >= 2, got {test_every!r}")
    resolve_background(background, (1.0, 1.0, 1.0))  # validate early, before decoding anything
    check_distortion_mode(distortion)
    if format == "auto":
        format = detect_format(path)
    if format not in _LOADERS:
        raise ValueError(f"unknown dataset format {format!r}; expected 'auto' or one of {', '.join(FORMATS)}")
    return _LOADERS[format](path, downscale=int(downscale), test_every=int(test_every),
                            skip_missing_images=skip_missing_images, background=background,
                            distortion=distortion)
