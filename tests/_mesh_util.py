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


def icosphere(subdivisions: int, radius: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Subdivided icosahedron: ``10 * 4^s + 2`` vertices [V, 3] float32 on the sphere, faces [F, 3] int64.

    Closed and consistently oriented (every edge shared by two faces).
    """
    p = (1 + 5**0.5) / 2
    verts = [[-1, p, 0], [1, p, 0], [-1, -p, 0], [1, -p, 0], [0, -1, p], [0, 1, p], [0, -1, -p], [0, 1, -p],
             [p, 0, -1], [p, 0, 1], [-p, 0, -1], [-p, 0, 1]]
    faces = [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
             [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5], [2, 4, 11],
             [6, 2, 10], [8, 6, 7], [9, 8, 1]]
    v, f = torch.tensor(verts, dtype=torch.float64), torch.tensor(faces)
    for _ in range(subdivisions):
        edges = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(1).values  # [3F, 2]
        uniq, inv = edges.unique(dim=0, return_inverse=True)
        mid = len(v) + inv.reshape(3, -1)  # midpoint vertex of edges (01, 12, 20) of every face
        v = torch.cat([v, (v[uniq[:, 0]] + v[uniq[:, 1]]) / 2])
        a, b, c = f.T
        ab, bc, ca = mid
        f = torch.cat([torch.stack(t, 1) for t in ((a, ab, ca), (b, bc, ab), (c, ca, bc), (ab, bc, ca))])
    return (radius * v / v.norm(dim=1, keepdim=True)).float(), f
