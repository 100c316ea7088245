"""Meshes of fields (``recon export RUN --format obj|ply|glb`` on a tri-plane or SDF run).

The field is sampled on a ``resolution^3`` grid over its box in slabs (the grid itself, 4 bytes a point, is the one
big allocation: 512^3 is 0.5 GB), cut by marching cubes (:func:`recon.renderers.volume.isosurface.marching_cubes`) at
its level set, and cleaned:

1. connected components smaller than ``min_component`` times the largest one are dropped (floaters);
2. with the training cameras, regions of faces that no camera sees (walls inside the object, the underside of
   the box) are cut, as ``recon train mesh`` does before texturing;
3. each vertex takes the field's color seen head-on (view direction against its normal), converted to linear;
   with ``texture_size > 0`` the colors are baked into an xatlas base-color texture instead.

Level sets: a tri-plane field's surface is where its density reaches ``level`` (default ``ln 2 / dt``, the
density at which one of its rendering intervals ``dt`` is half opaque); an SDF's is its zero set (``level`` 0).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import Tensor

from recon.scenes.mesh import MeshScene

__all__ = ["FieldMeshOptions", "default_level", "field_to_mesh", "grid_bytes"]

_SLAB_POINTS = 1 << 18
"""Grid points per field evaluation (bounds the evaluation's working memory to a few hundred MB)."""


class FieldMeshOptions:
    """Options of :func:`field_to_mesh` (the export command's flags).

    Args:
        resolution: grid points per axis over the field's box (>= 8).
        level: iso-level in the field's units (None: :func:`default_level`).
        min_component: keep components with at least this fraction of the largest one's faces (0: all).
        texture_size: > 0 bakes the colors into a texture of this size (xatlas), 0 keeps vertex colors.
        max_bytes: refuse a grid whose estimate (:func:`grid_bytes`) exceeds this (None: 80 % of the memory
            available now).
    """

    def __init__(self, resolution: int = 512, level: float | None = None, min_component: float = 0.05,
                 texture_size: int = 0, max_bytes: int | None = None) -> None:
        if not isinstance(resolution, int) or resolution < 8:
            raise ValueError(f"--resolution must be an integer >= 8, got {resolution!r}")
        if level is not None and not math.isfinite(level):
            raise ValueError(f"--level must be finite, got {level}")
        if not 0 <= min_component <= 1:
            raise ValueError(f"--min-component must be in [0, 1], got {min_component}")
        if texture_size < 0 or (texture_size and texture_size < 64):
            raise ValueError(f"--texture-size must be 0 (vertex colors) or >= 64, got {texture_size}")
        self.resolution, self.level, self.min_component = resolution, level, min_component
        self.texture_size, self.max_bytes = texture_size, max_bytes


def grid_bytes(resolution: int, compiled: bool = True) -> int:
    """Estimated peak memory of extracting a mesh at ``resolution``: the float32 grid, marching cubes' pass over
    it and the evaluation slabs (the mesh itself is small next to them). Without the compiled kernel the torch
    twin holds float64 copies, masks and int64 keys of the whole grid: about 10x more."""
    per_point = 8 if compiled else 80
    return per_point * resolution ** 3 + (256 << 20)


def _compiled() -> bool:
    from recon.renderers._build import ExtensionBuildError, load_cpu_extension

    try:
        load_cpu_extension("isosurface")
        return True
    except ExtensionBuildError:
        return False


def _available_bytes() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 8 << 30


def _check_memory(opts: FieldMeshOptions) -> None:
    budget = opts.max_bytes if opts.max_bytes is not None else int(0.8 * _available_bytes())
    compiled = _compiled()
    need = grid_bytes(opts.resolution, compiled)
    if need > budget:
        fit = int(((budget - (256 << 20)) / (8 if compiled else 80)) ** (1 / 3)) if budget > (256 << 20) else 0
        raise ValueError(f"--resolution {opts.resolution} needs about {need / 2**30:.1f} GB "
                         f"({opts.resolution}^3 float32 grid and marching cubes); {budget / 2**30:.1f} GB may be "
                         f"used here; --resolution {fit} or less fits")


def _kind(field) -> str:
    from recon.scenes.triplane import TriPlaneField

    if isinstance(field, TriPlaneField):
        return "density"
    if hasattr(field, "sdf"):
        return "sdf"
    raise TypeError(f"cannot extract a mesh from a {type(field).__name__}")


def default_level(field) -> float:
    """The iso-level used when none is given: 0 for an SDF; for a density field ``ln 2 / dt`` with ``dt`` the
    mean edge of its box over its samples per ray (a density at which one rendering interval is half opaque)."""
    if _kind(field) == "sdf":
        return 0.0
    dt = float((field.hi - field.lo).mean()) / field.samples
    return math.log(2.0) / dt


@torch.no_grad()
def sample_grid(field, resolution: int) -> tuple[Tensor, Tensor, Tensor]:
    """``values [R, R, R]`` (float32, CPU) of the field's scalar (density or SDF) at the grid points over its box,
    with the grid's ``origin [3]`` and ``spacing [3]``. Evaluated a few slabs at a time."""
    lo, hi = field.lo.float().cpu(), field.hi.float().cpu()
    spacing = (hi - lo) / (resolution - 1)
    axes = [torch.linspace(float(lo[a]), float(hi[a]), resolution) for a in range(3)]
    values = torch.empty(resolution, resolution, resolution)
    device = field.lo.device
    yz = torch.stack(torch.meshgrid(axes[1], axes[2], indexing="ij"), -1).reshape(-1, 2)
    per_slab = max(1, _SLAB_POINTS // len(yz))
    kind = _kind(field)
    for i0 in range(0, resolution, per_slab):
        xs = axes[0][i0:i0 + per_slab]
        pts = torch.cat([xs.repeat_interleave(len(yz))[:, None], yz.repeat(len(xs), 1)], -1).to(device)
        v = field.density(pts)[0] if kind == "density" else field.sdf(pts)
        values[i0:i0 + len(xs)] = v.float().cpu().reshape(len(xs), resolution, resolution)
    return values, lo, spacing


def vertex_normals(verts: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals ``[V, 3]`` of a mesh (faces counter-clockwise seen from outside)."""
    tri = verts[faces.long()]
    fn = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    n = torch.zeros_like(verts).index_add_(0, faces.long().reshape(-1), fn.repeat_interleave(3, 0))
    return torch.nn.functional.normalize(n, dim=-1)


@torch.no_grad()
def vertex_colors(field, verts: Tensor, normals: Tensor, chunk: int = 1 << 16) -> Tensor:
    """Linear RGB ``[V, 3]``: the field's color at each vertex seen along ``-normal`` (head-on)."""
    from recon.color import srgb_to_linear

    device = field.lo.device
    out = []
    for s in range(0, len(verts), chunk):
        x, n = verts[s:s + chunk].to(device), normals[s:s + chunk].to(device)
        out.append(field.color(x, -n).float().cpu() if hasattr(field, "color") else field(x, -n)[1].float().cpu())
    rgb = torch.cat(out) if out else torch.zeros(0, 3)
    return srgb_to_linear(rgb.clamp(0, 1))


def field_to_mesh(field, opts: FieldMeshOptions | None = None, cameras=None, source: str = "field") -> MeshScene:
    """The cleaned, colored mesh of a field's level set (module docstring).

    Args:
        field: a :class:`~recon.scenes.triplane.TriPlaneField` or a field with ``sdf(x)`` and ``color(x, d)``.
        opts: :class:`FieldMeshOptions`. cameras: the training cameras (None: no culling of unseen faces).
        source: names the field in errors.

    Raises:
        ValueError: a resolution that does not fit in memory (with the estimate), NaN in the field, or a level
            the field never crosses inside its box. TypeError: not a field.
    """
    from recon.renderers.volume.isosurface import marching_cubes
    from recon.train.mesh import bake_vertex_colors, hidden_regions, keep_large_components, uv_atlas, visible_faces

    opts = opts or FieldMeshOptions()
    _check_memory(opts)
    level = default_level(field) if opts.level is None else float(opts.level)
    values, origin, spacing = sample_grid(field, opts.resolution)
    bad = int(torch.isnan(values).sum())
    if bad:
        raise ValueError(f"{source}: the field is NaN at {bad} of {values.numel()} grid points; cannot extract a mesh")
    # Inside is negative for marching cubes: an SDF as is, a density negated (its inside is high).
    sign = -1.0 if _kind(field) == "density" else 1.0
    lo_v, hi_v = float(values.min()), float(values.max())
    crosses = (lo_v <= level < hi_v) if sign < 0 else (lo_v < level <= hi_v)  # both sides of the level present
    if not crosses:
        what = "density" if sign < 0 else "SDF"
        raise ValueError(f"{source}: the field's {what} never crosses the level {level:.4g} inside its box "
                         f"(it spans [{lo_v:.4g}, {hi_v:.4g}] on the {opts.resolution}^3 grid); no surface to "
                         "extract (pass --level inside that range)")
    if sign < 0:
        values.neg_()  # in place: the grid is the only big allocation
    verts, faces = marching_cubes(values, sign * level, origin=origin.tolist(), spacing=spacing.tolist())
    del values
    verts, faces, _ = keep_large_components(verts, faces.long(), 1, min_fraction=opts.min_component)
    if cameras is not None and len(faces):
        seen = visible_faces(verts, faces, cameras)
        if seen.any():
            verts, faces, _ = keep_large_components(verts, faces[~hidden_regions(faces, seen)], 1,
                                                    min_fraction=opts.min_component)
    colors = vertex_colors(field, verts, vertex_normals(verts, faces))
    if opts.texture_size:
        uvs, uv_faces = uv_atlas(verts, faces, opts.texture_size)
        tex = bake_vertex_colors(uvs, uv_faces, colors, faces, opts.texture_size, "auto")
        from recon.scenes.mesh import MeshMaterial

        return MeshScene(verts, faces, uvs=uvs, uv_faces=uv_faces, material=MeshMaterial(base_color=tex))
    return MeshScene(verts, faces, vertex_colors=colors)

