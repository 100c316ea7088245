"""Marching cubes: the triangle mesh of a level set of a sampled scalar field (SDF or density).

``marching_cubes(values, level)`` cuts every cube of the grid ``values [X, Y, Z]`` (point ``(i, j, k)`` at
``origin + (i, j, k) * spacing``) along the level set. A vertex sits on each grid edge whose ends lie on both
sides of the level (one is ``< level``, the other ``>= level``), linearly interpolated, and is shared by every
triangle that uses it, so a surface inside the grid comes out closed and watertight. Ambiguous faces are resolved
by the asymptotic decider (as scikit-image's Lewiner variant does), on both sides of the face alike. Triangles are
wound so that their normals point toward increasing values (out of an SDF's negative inside; pass ``-density``
and ``-level`` for a density, whose inside is high).

Backends: ``cpu`` (C++, ``cuda/isosurface``, parallel over x slabs) and ``torch`` (``_ref_isosurface.py``, any
device; a table of every cube configuration built once). Both return the same faces in the same order. Not
differentiable (extraction, not rendering).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.renderers._build import load_cpu_extension, resolve_cpu_backend

__all__ = ["BACKENDS", "marching_cubes"]

BACKENDS = ("auto", "torch", "cpu")
_FAMILY = "isosurface"


def _ext():
    return load_cpu_extension(_FAMILY)


@torch.no_grad()
def marching_cubes(values: Tensor, level: float = 0.0, *, origin=(0.0, 0.0, 0.0), spacing=(1.0, 1.0, 1.0),
                   backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Triangle mesh of ``{x : values(x) = level}``.

    Args:
        values: ``[X, Y, Z]`` samples, every size >= 2; NaN counts as above the level.
        level: the iso-value.
        origin, spacing: world position of sample ``(0, 0, 0)`` and the step along each axis (``[3]`` each).
        backend: ``auto`` (compiled C++ on CPU tensors, else the twin), ``cpu`` or ``torch``.

    Returns:
        ``vertices [V, 3]`` float32 and ``faces [F, 3]`` int32 (counter-clockwise seen from the ``>= level``
        side). Vertices are ordered by their grid edge (axis, then row-major point), faces by cube.

    Raises:
        ValueError: on a wrong shape, a non-finite level or an unknown backend.
    """
    if not isinstance(values, Tensor) or values.dim() != 3 or min(values.shape) < 2:
        got = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
        raise ValueError(f"values must have shape [X, Y, Z] with every size >= 2, got {got}")
    if not torch.isfinite(torch.tensor(float(level))):
        raise ValueError(f"level must be finite, got {level}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    values = values.detach().float().contiguous()
    if resolve_cpu_backend(_FAMILY, backend, values.device, values.dtype, "marching cubes") == "cpu":
        keys, centers = _ext().marching_cubes_keys(values, float(level))
    else:
        from recon.renderers.volume._ref_isosurface import marching_cubes_keys

        keys, centers = marching_cubes_keys(values, float(level))
    return _vertices_from_keys(values, level, keys, centers, origin, spacing)


def _vertices_from_keys(values: Tensor, level: float, keys: Tensor, centers: Tensor, origin,
                        spacing) -> tuple[Tensor, Tensor]:
    """Unique vertex keys -> positions (edge vertices interpolated, centers the mean of their cycle's vertices);
    triangle keys -> int32 faces into them."""
    X, Y, Z = values.shape
    unique, inverse = torch.unique(keys.reshape(-1), return_inverse=True)
    n_edge = int((unique < 3 * X * Y * Z).sum())  # centers' keys sort after every edge key
    axis, point = unique[:n_edge] // (X * Y * Z), unique[:n_edge] % (X * Y * Z)
    i, j, k = point // (Y * Z), point // Z % Y, point % Z
    step = torch.stack([(axis == 0).long(), (axis == 1).long(), (axis == 2).long()], -1)
    flat = values.reshape(-1)
    v0 = flat[point].double()
    v1 = flat[point + (step[:, 0] * Y + step[:, 1]) * Z + step[:, 2]].double()
    t = ((level - v0) / (v1 - v0)).nan_to_num(0.5).clamp(0, 1)  # NaN only where an end is NaN
    idx = torch.stack([i, j, k], -1).double() + t[:, None] * step.double()
    origin_t = torch.as_tensor(origin, dtype=torch.float64, device=values.device)
    spacing_t = torch.as_tensor(spacing, dtype=torch.float64, device=values.device)
    verts = origin_t + idx * spacing_t
    if len(centers):  # rows in key order, as the unique keys
        centers = centers[torch.argsort(centers[:, 0])]
        cycle = centers[:, 1:]
        pos = verts[torch.searchsorted(unique[:n_edge], cycle.clamp_min(0))]
        used = (cycle >= 0).double()[..., None]
        verts = torch.cat([verts, (pos * used).sum(1) / used.sum(1)])
    return verts.float(), inverse.reshape(-1, 3).to(torch.int32)
