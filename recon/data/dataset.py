"""Dataset containers shared by every loader and trainer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from recon.cameras import Cameras


@dataclass
class Split:
    """One split of posed images.

    Attributes:
        cameras: ``C`` cameras (float32), one image size and one lens model for the split: pinhole cameras of
            the undistorted images, or the stored images' lens when the dataset was loaded with
            ``distortion="keep"``.
        images: ``[C, H, W, 4]`` float32 in [0, 1]: sRGB-encoded color as stored on disk (not linearized),
            straight (not premultiplied) alpha in channel 3 (1 where the file has no alpha).
        names: frame names (file stem, e.g. ``"r_0"``), unique within the split.
    """

    cameras: Cameras
    images: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return len(self.names)


@dataclass
class SceneData:
    """A loaded dataset.

    Attributes:
        root: the dataset folder.
        format: "blender", "ngp" or "colmap".
        train, test: the splits (test: the dataset's own, else every ``test_every``-th image).
        points: optional sparse point cloud ``[P, 3]`` (COLMAP points3D, or a ply the dataset names).
        point_colors: ``[P, 3]`` in [0, 1] matching ``points`` (None when ``points`` is None).
        background: the dataset's background for RGBA images, linear RGB ``[3]`` values in [0, 1].
    """

    root: Path
    format: str
    train: Split
    test: Split
    points: torch.Tensor | None = None
    point_colors: torch.Tensor | None = None
    background: tuple[float, float, float] = (1.0, 1.0, 1.0)
