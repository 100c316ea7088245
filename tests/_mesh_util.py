"""Helpers shared by the mesh tests: a minimal OBJ reader, unit-sphere normalization, cameras around the origin."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from recon.cameras import Cameras, intrinsics_matrix, look_at


def read_obj(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions [V, 3] float64 and triangles [F, 3] int64 of an OBJ (v / f records; polygons fanned).

    Deliberately independent of recon's mesh loader (which repairs meshes), so face ids match open3d's."""
    verts, faces = [], []
    for line in Path(path).read_text().splitlines():
        tok = line.split()
        if not tok:
            continue
        if tok[0] == "v":
            verts.append([float(x) for x in tok[1:4]])
        elif tok[0] == "f":
            ids = [int(t.split("/")[0]) for t in tok[1:]]
            ids = [i - 1 if i > 0 else len(verts) + i for i in ids]
            faces += [[ids[0], ids[k], ids[k + 1]] for k in range(1, len(ids) - 1)]
    return torch.tensor(verts, dtype=torch.float64), torch.tensor(faces, dtype=torch.int64)


def unit_sphere(v: torch.Tensor) -> torch.Tensor:
    """Center the bounding box at the origin and scale the farthest vertex to radius 1; float32."""
    v = v - (v.amax(0) + v.amin(0)) / 2
    return (v / v.norm(dim=1).max()).float()


def cameras_at(eyes: np.ndarray, size: tuple[int, int], focal: float, up=(0.0, 0.0, 1.0)) -> Cameras:
    """Pinhole cameras at ``eyes [C, 3]`` looking at the origin; ``size = (H, W)``, centered principal point."""
    H, W = size
    K = intrinsics_matrix(focal, focal, W / 2, H / 2)[None].repeat(len(eyes), 1, 1)
    return Cameras(look_at(torch.as_tensor(np.asarray(eyes), dtype=torch.float64), up=up), K, W, H)
