"""Triangle meshes: the four differentiable raster ops (nvdiffrast-style), the BVH ray caster and the mesh
renderer registered for :class:`~recon.scenes.mesh.MeshScene`. Conventions: ``docs/mesh.md``."""

from __future__ import annotations

import importlib

from recon.renderers.mesh import render as _render  # noqa: F401  (registers the MeshScene renderer)

_LAZY = {
    "rasterize": "rasterize", "interpolate": "rasterize", "texture": "texture", "build_mipmaps": "texture",
    "antialias": "antialias", "RayCaster": "raycast", "RayHits": "raycast",
    "render_mesh_arrays": "render", "MeshArrays": "render", "MeshAux": "render",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    # The ops load lazily so importing the package stays cheap (their C++ builds on first use anyway).
    if name in _LAZY:
        return getattr(importlib.import_module(f"recon.renderers.mesh.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'recon.renderers.mesh' has no attribute {name!r}")
