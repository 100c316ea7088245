"""Surface samples of a triangle mesh at ray hits: the mesh half of Monte Carlo indirect lighting.

:func:`surface_at_hits` turns ray-caster hits (triangle id + barycentrics) into a
:class:`~recon.shading.shade.GBuffer` with the same material lookup the rasterizing renderer does at pixel
centers (base color texture / ``COLOR_0`` vertex colors times the color factor, roughness-metallic texture times
its factors, face-varying or area-weighted vertex shading normals). :class:`MeshTracer` bundles a
:class:`~recon.renderers.mesh.raycast.RayCaster` with it, so the representation-agnostic shader
(``recon.shading.mc``) can ask "what surface does this ray hit?" without importing mesh code.

Textures are looked up bilinearly (a secondary hit has no pixel footprint to pick a mip level from). Nothing here
is differentiable: the indirect term it feeds is computed under ``torch.no_grad``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.renderers.mesh.raycast import RayCaster
from recon.scenes.mesh import vertex_normals
from recon.shading.shade import GBuffer

__all__ = ["surface_at_hits", "MeshTracer"]

_DEFAULT_GRAY = 0.5  # same as recon.renderers.mesh.render.DEFAULT_GRAY (importing it would be circular)


def _barycentric(attr: Tensor, tri: Tensor, tri_id: Tensor, bary: Tensor) -> Tensor:
    # Ray-caster convention: point = u p0 + v p1 + (1 - u - v) p2 (same as the rasterizer's).
    idx = tri.long()[tri_id]  # [M, 3]
    u, v = bary[:, 0:1].to(attr), bary[:, 1:2].to(attr)
    return u * attr[idx[:, 0]] + v * attr[idx[:, 1]] + (1.0 - u - v) * attr[idx[:, 2]]


@torch.no_grad()
def surface_at_hits(mesh, tri_id: Tensor, bary: Tensor, dirs: Tensor, backend: str = "auto") -> GBuffer:
    """Material and geometry of ``mesh`` (a :class:`~recon.renderers.mesh.render.MeshArrays`) at ``M`` ray hits.

    Args:
        tri_id: ``[M]`` int triangle indices (all hits, no ``-1``). bary: ``[M, 2]`` barycentrics
            (:class:`~recon.renderers.mesh.raycast.RayHits` convention). dirs: ``[M, 3]`` the rays' directions
            (the G-buffer's ``view`` is ``-normalize(dirs)``).
        backend: texture backend (see :func:`~recon.renderers.mesh.texture.texture`).
    Returns:
        :class:`~recon.shading.shade.GBuffer` of ``M`` samples, detached.
    Raises:
        ValueError: mismatched lengths.
    """
    from recon.renderers.mesh.texture import texture

    M = tri_id.shape[0]
    if bary.shape != (M, 2) or dirs.shape != (M, 3):
        raise ValueError(f"tri_id [M], bary [M, 2] and dirs [M, 3] must agree, got {tuple(tri_id.shape)}, "
                         f"{tuple(bary.shape)}, {tuple(dirs.shape)}")
    verts = mesh.vertices.detach()
    faces = mesh.faces.to(verts.device)
    tri_id = tri_id.to(verts.device).long()
    bary = bary.to(verts)
    position = _barycentric(verts, faces, tri_id, bary)
    f = faces.long()[tri_id]
    fn = torch.linalg.cross(verts[f[:, 1]] - verts[f[:, 0]], verts[f[:, 2]] - verts[f[:, 0]], dim=-1)
    geo_normal = fn / fn.norm(dim=-1, keepdim=True).clamp_min(1e-20)
    if mesh.normals is not None and mesh.normal_faces is not None:
        normal = _barycentric(mesh.normals.detach().to(verts), mesh.normal_faces, tri_id, bary)
    else:
        normal = _barycentric(vertex_normals(verts, faces), faces, tri_id, bary)
    normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    rough = metal = None
    if mesh.base_color is not None and mesh.uvs is not None and mesh.uv_faces is not None:
        uv = _barycentric(mesh.uvs.detach().to(verts), mesh.uv_faces, tri_id, bary).reshape(1, 1, M, 2)
        color = texture(mesh.base_color.detach(), uv.contiguous(), filter_mode="linear", boundary_mode="wrap",
                        backend=backend).reshape(M, -1)[:, :3]
        if mesh.roughness_metallic is not None:
            rm = texture(mesh.roughness_metallic.detach(), uv.contiguous(), filter_mode="linear",
                         boundary_mode="wrap", backend=backend).reshape(M, -1)
            rough, metal = rm[:, 0:1], rm[:, 1:2]
    elif mesh.vertex_colors is not None:
        color = _barycentric(mesh.vertex_colors.detach().to(verts), faces, tri_id, bary)
    else:
        color = torch.full((M, 3), _DEFAULT_GRAY, dtype=verts.dtype, device=verts.device)
    if mesh.color_factor is not None:
        color = color * mesh.color_factor.detach().to(color)
    rough = torch.ones(M, 1, dtype=verts.dtype, device=verts.device) if rough is None else rough
    metal = torch.ones(M, 1, dtype=verts.dtype, device=verts.device) if metal is None else metal
    rough = rough * torch.as_tensor(mesh.roughness_factor, dtype=rough.dtype, device=rough.device).detach()
    metal = metal * torch.as_tensor(mesh.metallic_factor, dtype=metal.dtype, device=metal.device).detach()
    view = -dirs.to(verts) / dirs.to(verts).norm(dim=-1, keepdim=True).clamp_min(1e-20)
    return GBuffer(position=position, normal=normal, geo_normal=geo_normal, view=view, base_color=color,
                   roughness=rough, metallic=metal)


class MeshTracer:
    """Ray queries of a mesh for the Monte Carlo shader: shadow rays (``any_hit``) and, for indirect light, the
    surface a ray hits (``surface_at``). Built once per render from the (detached) mesh."""

    def __init__(self, mesh, *, backend: str = "auto", texture_backend: str = "auto") -> None:
        self.mesh = mesh
        self.texture_backend = texture_backend
        self.caster = RayCaster(mesh.vertices.detach().float().contiguous(), mesh.faces.detach(), backend=backend)

    def any_hit(self, origins: Tensor, dirs: Tensor, tmin: float = 0.0, tmax: float = float("inf")) -> Tensor:
        """``[N]`` bool: does the ray ``origins [N, 3] + t dirs [N, 3]`` hit anything with ``tmin <= t <= tmax``."""
        return self.caster.any_hit(origins, dirs, tmin, tmax)

    def surface_at(self, origins: Tensor, dirs: Tensor, tmin: float = 0.0) -> tuple[Tensor, GBuffer]:
        """Closest hits of ``N`` rays: ``(index [M] int64 of the rays that hit, GBuffer of those M hits)``."""
        hits = self.caster.closest_hit(origins, dirs, tmin)
        index = torch.nonzero(hits.hit).squeeze(1)
        gb = surface_at_hits(self.mesh, hits.tri_id[index], hits.uv[index], dirs[index],
                             backend=self.texture_backend)
        return index.to(origins.device), gb
