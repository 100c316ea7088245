"""Precomputed diffuse transfer: self-shadowed diffuse light for the split-sum integrator.

Split-sum shades every point as if nothing occluded its view of the environment, so a trainer that uses it must
paint self-shadowing into the base color. The diffuse transfer of a surface point (Sloan et al. 2002) is the
spherical-harmonic projection of ``V(w) max(0, n.w)``, its visibility times the cosine lobe; with the light's
projection ``L_lm`` the shadowed irradiance is the dot product ``E = sum_lm T_lm L_lm``. The transfer depends on
geometry only (shadow rays through the mesh BVH, ``RayCaster.any_hit``); the light's projection is a linear,
differentiable function of its texels, so a learned light gets gradients through shadowed irradiance at the cost
of a ``[P, 16] x [16, 3]`` product per step.

Conventions: real spherical harmonics up to band 3 (16 coefficients, orthonormal on the sphere), world
directions (+Z up, the env-map convention of docs/inverse_rendering.md). The transfer stores one more channel,
the cosine-weighted visible fraction (ambient occlusion), which :func:`~recon.shading.splitsum.shade_splitsum`
uses as the specular occlusion.

One bounce of diffuse interreflection (what a path tracer at depth 3 adds: the direct light reflected once by
the object itself): with ``bounce_mesh`` the transfer rays that hit the surface are kept (:class:`Bounce`), and
:func:`bounce_irradiance` turns the reflected radiance at those hits into the irradiance they send back,
``E_ind(x) = (1 / N) sum_hits rho(y) E(y)`` for ``N`` cosine-distributed rays (``rho`` the diffuse reflectance,
``E(y)`` the direct irradiance at the hit). It is linear in the hits' base color and, through ``E(y) = T(y) L``,
in the light, so both get gradients.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.shading.brdf import _frame

__all__ = ["SH_BANDS", "SH_COEFFS", "TRANSFER_CHANNELS", "Bounce", "bounce_irradiance", "bounce_matrix",
           "diffuse_transfer",
           "light_sh", "sh_basis"]

SH_BANDS = 3
SH_COEFFS = (SH_BANDS + 1) ** 2
TRANSFER_CHANNELS = SH_COEFFS + 1  # the SH transfer, then the ambient occlusion


def sh_basis(d: Tensor) -> Tensor:
    """Real orthonormal spherical harmonics ``Y_lm`` of unit directions ``d [..., 3]`` for bands 0..3 ->
    ``[..., 16]``, ordered ``l = 0..3, m = -l..l``."""
    x, y, z = d[..., 0], d[..., 1], d[..., 2]
    x2, y2, z2 = x * x, y * y, z * z
    c0 = 0.5 / math.sqrt(math.pi)
    c1 = math.sqrt(3.0 / (4.0 * math.pi))
    c2a = 0.5 * math.sqrt(15.0 / math.pi)
    c2b = 0.25 * math.sqrt(5.0 / math.pi)
    c2c = 0.25 * math.sqrt(15.0 / math.pi)
    c3a = 0.25 * math.sqrt(35.0 / (2.0 * math.pi))
    c3b = 0.5 * math.sqrt(105.0 / math.pi)
    c3c = 0.25 * math.sqrt(21.0 / (2.0 * math.pi))
    c3d = 0.25 * math.sqrt(7.0 / math.pi)
    c3e = 0.25 * math.sqrt(105.0 / math.pi)
    return torch.stack([
        torch.full_like(x, c0),
        c1 * y, c1 * z, c1 * x,
        c2a * x * y, c2a * y * z, c2b * (3 * z2 - 1), c2a * x * z, c2c * (x2 - y2),
        c3a * y * (3 * x2 - y2), c3b * x * y * z, c3c * y * (5 * z2 - 1), c3d * z * (5 * z2 - 3),
        c3c * x * (5 * z2 - 1), c3e * z * (x2 - y2), c3a * x * (x2 - 3 * y2),
    ], dim=-1)


def light_sh(light) -> Tensor:
    """SH projection ``[16, 3]`` of an :class:`~recon.shading.envmap.EnvLight` (its rotation included), in world
    directions: the solid-angle-weighted sum over texel centers; differentiable w.r.t. the light's texels."""
    from recon.shading.envmap import _texel_dirs, rotate_z
    from recon.shading.splitsum import _band_solid_angle

    radiance = light.radiance()
    H = radiance.shape[0]
    dirs = rotate_z(_texel_dirs(H, radiance.dtype, radiance.device), float(getattr(light, "rotation_deg", 0.0)))
    # exact texel solid angles: the row's band per unit azimuth times the texel's azimuth span
    d_omega = (_band_solid_angle(H, radiance.dtype, radiance.device) * (math.pi / H))[:, None, None]
    basis = sh_basis(dirs) * d_omega  # [H, 2H, 16]
    return basis.reshape(-1, SH_COEFFS).T @ radiance.reshape(-1, 3)


def _sample_pattern(samples: int, seed: int, dtype) -> Tensor:
    """``[samples, 2]`` stratified points of the unit square (jittered grid, fixed by ``seed``)."""
    side = max(1, int(math.ceil(math.sqrt(samples))))
    g = torch.Generator().manual_seed(seed)
    i = torch.arange(side * side)
    cells = torch.stack([(i % side).to(dtype), (i // side).to(dtype)], -1)
    pts = (cells + torch.rand(side * side, 2, generator=g, dtype=dtype)) / side
    return pts[torch.randperm(side * side, generator=g)[:samples]]


@dataclass
class Bounce:
    """The transfer rays of :func:`diffuse_transfer` that hit the front of a surface, ``M`` of them: the point
    each left (``source [M]`` int64), the triangle it hit (``tri_id [M]`` int64) and the hit's barycentrics
    (``bary [M, 2]``, :class:`~recon.renderers.mesh.raycast.RayHits` convention); ``samples`` rays were cast
    per point."""

    source: Tensor
    tri_id: Tensor
    bary: Tensor
    samples: int

    def to_state(self) -> dict:
        return {"source": self.source.cpu(), "tri_id": self.tri_id.cpu(), "bary": self.bary.cpu(),
                "samples": self.samples}

    @classmethod
    def from_state(cls, state: dict, source: str = "<state>", num_points: int | None = None,
                   num_faces: int | None = None) -> Bounce:
        """Inverse of :meth:`to_state`; with ``num_points`` / ``num_faces`` the indices are range-checked.
        Raises ValueError naming ``source`` on anything malformed."""
        try:
            b = cls(state["source"].long(), state["tri_id"].long(), state["bary"].float(), int(state["samples"]))
        except (KeyError, TypeError, AttributeError, IndexError, ValueError) as err:
            raise ValueError(f"{source}: malformed interreflection state ({err!r})") from err
        m = b.source.shape[0] if b.source.dim() == 1 else -1
        if m < 0 or b.tri_id.shape != (m,) or b.bary.shape != (m, 2) or b.samples < 1:
            raise ValueError(f"{source}: interreflection state needs source [M], tri_id [M], bary [M, 2] and "
                             f"samples >= 1, got {tuple(b.source.shape)}, {tuple(b.tri_id.shape)}, "
                             f"{tuple(b.bary.shape)}, {b.samples}")
        for name, idx, n in (("source", b.source, num_points), ("tri_id", b.tri_id, num_faces)):
            if n is not None and m and (int(idx.min()) < 0 or int(idx.max()) >= n):
                raise ValueError(f"{source}: interreflection {name} must index [0, {n}), got values in "
                                 f"[{int(idx.min())}, {int(idx.max())}]")
        if not torch.isfinite(b.bary).all():
            raise ValueError(f"{source}: interreflection barycentrics must be finite")
        return b

    def to(self, device) -> Bounce:
        return Bounce(self.source.to(device), self.tri_id.to(device), self.bary.to(device), self.samples)


def bounce_irradiance(bounce: Bounce, num_points: int, reflected: Tensor) -> Tensor:
    """One bounce of diffuse interreflection: irradiance ``[num_points, 3]`` that the hits of ``bounce`` send
    back to their source points, from ``reflected [M, 3]`` = diffuse reflectance times direct irradiance at each
    hit (``rho(y) E(y)``; the outgoing radiance times pi). Differentiable w.r.t. ``reflected``."""
    if reflected.shape != (bounce.source.shape[0], 3):
        raise ValueError(f"reflected must be [{bounce.source.shape[0]}, 3] (one row per hit), "
                         f"got {tuple(reflected.shape)}")
    out = reflected.new_zeros(num_points, 3)
    # Cosine-distributed rays (pdf cos / pi): E = (pi / N) sum L, and L = rho E(y) / pi at a diffuse hit.
    return out.index_add(0, bounce.source.to(reflected.device), reflected) * (1.0 / bounce.samples)


@torch.no_grad()
def bounce_matrix(bounce: Bounce, faces: Tensor, num_vertices: int) -> Tensor:
    """The bounce of a mesh's own vertices as a sparse ``[V, V]`` matrix ``B``: ``B @ r`` is the irradiance
    :func:`bounce_irradiance` gives when the reflected irradiance ``r [V, 3]`` at the hits is interpolated from
    the vertices (hit ``(u, v)`` weights its triangle's corners ``u, v, 1 - u - v``). Repeated (point, vertex)
    pairs are summed, so a step costs one sparse product instead of one lookup per hit."""
    f = faces.long().to(bounce.tri_id.device)[bounce.tri_id]  # [M, 3]
    u, v = bounce.bary[:, 0], bounce.bary[:, 1]
    w = torch.stack([u, v, 1 - u - v], -1) * (1.0 / bounce.samples)
    rows = bounce.source[:, None].expand_as(f).reshape(-1)
    idx = torch.stack([rows, f.reshape(-1)])
    coo = torch.sparse_coo_tensor(idx, w.reshape(-1).float(), (num_vertices, num_vertices), check_invariants=True)
    return coo.coalesce()


@torch.no_grad()
def diffuse_transfer(points: Tensor, normals: Tensor, caster, samples: int = 64, seed: int = 0,
                     offset: float = 1e-4, scale: float | None = None, chunk: int = 8192,
                     bounce_mesh: tuple[Tensor, Tensor] | None = None) -> Tensor | tuple[Tensor, Bounce]:
    """Self-shadowed diffuse transfer of surface points -> ``[P, 17]``: the 16 SH coefficients of
    ``V(w) max(0, n.w)`` (so that ``E = T[:, :16] @ light_sh(light)`` is the shadowed irradiance) and the
    cosine-weighted visible fraction.

    Monte Carlo with ``samples`` cosine-distributed directions per point (a stratified pattern, randomly rotated
    about the normal per point, fixed by ``seed``); ``caster.any_hit`` decides visibility, rays start ``offset``
    times ``scale`` (the scene's extent; default: the extent of ``points``, 1 if they span nothing) off the
    surface along the normal.

    Args:
        points, normals: ``[P, 3]`` world positions and unit normals (e.g. a mesh's vertices and vertex normals).
        caster: a :class:`~recon.renderers.mesh.RayCaster` (anything with ``any_hit(origins, dirs, tmin, tmax)``;
            with ``bounce_mesh`` its ``closest_hit`` is used instead).
        bounce_mesh: ``(vertices [V, 3], faces [F, 3])`` the caster was built from: also return the
            :class:`Bounce` of the rays that hit a front face (a ray that hits a back face left from inside a
            closed pocket: it carries no light and is dropped from the bounce).
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    dtype, dev = torch.float32, points.device
    pts, nrm = points.detach().to(dtype), normals.detach().to(dtype)
    extent = float(scale) if scale is not None else (
        float((pts.max(0).values - pts.min(0).values).max()) if len(pts) else 0.0)
    extent = extent if extent > 0 else 1.0
    pattern = _sample_pattern(samples, seed, dtype).to(dev)
    r, phi0 = torch.sqrt(pattern[:, 0]), 2 * math.pi * pattern[:, 1]
    g = torch.Generator().manual_seed(seed + 1)
    spin = (2 * math.pi * torch.rand(len(pts), generator=g, dtype=dtype)).to(dev)
    out = torch.zeros(len(pts), TRANSFER_CHANNELS, dtype=dtype, device=dev)
    kept: list[tuple[Tensor, Tensor, Tensor]] = []
    bounce = bounce_mesh is not None
    if bounce:
        tri_verts = bounce_mesh[0].detach().to(dtype=dtype, device=dev)[bounce_mesh[1].long().to(dev)]  # [F, 3, 3]
        face_n = torch.linalg.cross(tri_verts[:, 1] - tri_verts[:, 0], tri_verts[:, 2] - tri_verts[:, 0], dim=-1)
    for s in range(0, len(pts), chunk):
        n = nrm[s:s + chunk]
        t1, t2 = _frame(n)
        phi = phi0[None, :] + spin[s:s + chunk, None]  # [p, S]
        lx, ly = r[None, :] * torch.cos(phi), r[None, :] * torch.sin(phi)
        lz = torch.sqrt((1 - r * r).clamp_min(0))[None, :].expand_as(lx)
        dirs = lx[..., None] * t1[:, None] + ly[..., None] * t2[:, None] + lz[..., None] * n[:, None]
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        origins = (pts[s:s + chunk] + offset * extent * n)[:, None].expand_as(dirs)
        if bounce:
            hits = caster.closest_hit(origins.reshape(-1, 3), dirs.reshape(-1, 3), 0.0, math.inf)
            hit = hits.hit.reshape(dirs.shape[:2])
            idx = torch.nonzero(hits.hit).squeeze(1)
            tri = hits.tri_id[idx].long()
            front = (face_n[tri] * dirs.reshape(-1, 3)[idx]).sum(-1) < 0
            idx, tri = idx[front], tri[front]
            kept.append((idx // samples + s, tri, hits.uv[idx].to(dtype)))
        else:
            hit = caster.any_hit(origins.reshape(-1, 3), dirs.reshape(-1, 3), 0.0, math.inf).reshape(dirs.shape[:2])
        vis = (~hit).to(dtype)  # [p, S]
        # Cosine-weighted samples (pdf cos / pi): the integral of V cos Y is pi * mean(V Y).
        out[s:s + chunk, :SH_COEFFS] = math.pi * (vis[..., None] * sh_basis(dirs)).mean(1)
        out[s:s + chunk, SH_COEFFS] = vis.mean(1)
    if not bounce:
        return out
    empty = (torch.zeros(0, dtype=torch.long, device=dev),) * 2 + (torch.zeros(0, 2, dtype=dtype, device=dev),)
    src, tri, bary = (torch.cat(x) for x in zip(*kept)) if kept else empty
    return out, Bounce(src, tri, bary, samples)
