"""Deferred physically based shading of relightable Gaussians (:class:`~recon.scenes.gaussians_pbr.PBRGaussianScene`).

Per camera, one rasterization pass composites the Gaussians' material into a G-buffer: base color (3),
roughness and metallic (2), the normal (3: each Gaussian's shortest axis facing the camera) and, for shadowed
split-sum, a per-Gaussian diffuse transfer (17: baked self-shadowing, :func:`bake_transfer`, baked on first use
and cached on the scene). The features are normalized by the coverage, the position is the expected depth along
the pixel's ray, and the shared shading layer (:func:`recon.shading.shade.shade`) shades every covered pixel
under the light. The radiance is encoded to sRGB and composited over the background with the coverage, like the
mesh renderer's PBR mode. Shadow rays of the Monte Carlo integrator go through the Gaussian ray caster
(:class:`GaussianTracer`) from the G-buffer point moved ``SHADOW_OFFSET`` of the scene's extent along the normal
(the point lies inside the shell of Gaussians that made it), as the bake's rays do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.color import linear_to_srgb
from recon.renderers.interface import RenderOutput, RenderSettings

__all__ = ["GaussianTracer", "bake_transfer", "outward_normals", "render_gaussians_pbr"]

SHADOW_OFFSET = 0.02  # shadow rays start this fraction of the scene's extent off the surface
_COVERED = 1e-3  # pixels with less coverage are background (not shaded)


class GaussianTracer:
    """Shadow rays through Gaussians for the Monte Carlo shader: a ray is blocked when its transmittance
    (:meth:`GaussianRayCaster.transmittance`) is below 1/2. Callers lift the origins off the shell of
    Gaussians that made them (``SHADOW_OFFSET``)."""

    def __init__(self, scene):
        from recon.renderers.gaussians.raycast import GaussianRayCaster

        params = [x.detach().float().cpu().contiguous() for x in (scene.means, scene.quats, scene.scales,
                                                                    scene.opacities)]
        self.caster = GaussianRayCaster(*params)

    def any_hit(self, origins: Tensor, dirs: Tensor, tmin: float, tmax: float) -> Tensor:
        dev = origins.device
        T = self.caster.transmittance(origins.detach().float().cpu(), dirs.detach().float().cpu(),
                                      tmin=float(tmin), tmax=float(tmax))
        return (T < 0.5).to(dev)


def scene_extent(scene) -> float:
    lo, hi = scene.bounds()
    return max(float((hi - lo).max()), 1e-6)


def _key(scene, samples: int, seed: int) -> tuple:
    """What the cached bake depends on: the geometry tensors (address and in-place version; writes through
    ``.data`` are not seen, so edit parameters under ``torch.no_grad()``) and the bake's settings."""
    return (len(scene), samples, seed, str(scene.means.device), *((t.data_ptr(), t._version) for t in (
        scene.means, scene.quats, scene.log_scales, scene.opacity_logits)))


@torch.no_grad()
def bake_transfer(scene, samples: int = 32, seed: int = 0, offset: float = SHADOW_OFFSET) -> Tensor:
    """Per-Gaussian self-shadowed diffuse transfer ``[N, 17]`` (:func:`recon.shading.prt.diffuse_transfer`) with
    shadow rays through the Gaussians themselves, from each center moved along its normal by three standard
    deviations plus ``offset`` times the scene's extent (flat Gaussians overlap their neighbours).

    A Gaussian's shortest axis has no sign. Both sides are baked and the side that sees more of the sky is
    kept: the outside of a surface, also where "away from the centroid" is wrong (the inside of a ring). The
    result is cached on the scene until its geometry changes, so renders of the same scene reuse it."""
    return _bake(scene, samples, seed, offset)[0]


def outward_normals(scene, samples: int = 32, seed: int = 0) -> Tensor:
    """``[N, 3]`` each Gaussian's shortest axis, on the side that :func:`bake_transfer` keeps (the outside)."""
    return _bake(scene, samples, seed, SHADOW_OFFSET)[1]


@torch.no_grad()
def _bake(scene, samples: int, seed: int, offset: float) -> tuple[Tensor, Tensor]:
    key = (*_key(scene, samples, seed), offset)
    cached = getattr(scene, "_transfer_cache", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    from recon.shading.prt import diffuse_transfer

    n = scene.normals().detach()
    extent = scene_extent(scene)
    lift = 3.0 * scene.scales.detach().min(-1).values[:, None] + offset * extent
    tracer = GaussianTracer(scene)
    means = scene.means.detach()
    up = diffuse_transfer(means + lift * n, n, tracer, samples=samples, seed=seed, scale=extent)
    down = diffuse_transfer(means - lift * n, -n, tracer, samples=samples, seed=seed, scale=extent)
    outside = up[:, 16:] >= down[:, 16:]
    out = (torch.where(outside, up, down), torch.where(outside, n, -n))
    scene._transfer_cache = (key, out)
    return out


def render_gaussians_pbr(scene, cameras: Cameras, settings: RenderSettings, light,
                         transfer: Tensor | None = None) -> RenderOutput:
    """Render ``scene`` shaded under ``light``; rgb sRGB over the background, alpha, depth, normal and the
    G-buffer channels albedo / roughness / metallic (0 on the background), ``aux`` for densification.
    ``transfer [N, 17]``: baked self-shadowing for split-sum (:func:`bake_transfer`)."""
    from recon.renderers.gaussians.rasterize import rasterize_gaussians
    from recon.renderers.gaussians.render import GaussianAux
    from recon.shading.shade import GBuffer, shade

    if not cameras.is_pinhole:
        raise ValueError("relightable Gaussians are rasterized: cameras must be pinhole (undistort the images)")
    gs = settings.gaussians
    device = scene.means.device
    bg = settings.background
    bg = torch.zeros(3, device=device) if bg is None else torch.as_tensor(bg, dtype=torch.float32, device=device)
    cams = cameras.to(device=device, dtype=torch.float32)
    W, H = cams.width, cams.height
    tracer = None
    samples = int(getattr(scene, "shadow_samples", 32))
    if transfer is None and settings.shading.integrator == "splitsum" and settings.shading.shadows and samples > 0:
        transfer = bake_transfer(scene, samples=samples)  # baked self-shadowing (cached on the scene)
    if settings.shading.integrator == "mc" and settings.shading.shadows:
        tracer = GaussianTracer(scene)
    # Base color may exceed 1 only in an evaluation's albedo alignment (trainers keep it in [0, 1]).
    material = torch.cat([scene.base_color.clamp_min(0), scene.roughness_metallic.clamp(0, 1)], -1)
    outs: dict[str, list[Tensor]] = {k: [] for k in ("rgb", "alpha", "depth", "normal", "albedo", "roughness",
                                                      "metallic", "means2d", "radii")}
    origins_all, dirs_all = cams.rays()
    centers = cams.centers()
    for c in range(len(cams)):
        center = centers[c]
        feats = [material, scene.normals(toward=center)]
        if transfer is not None:
            feats.append(transfer.to(material))
        out = rasterize_gaussians(scene.means, scene.quats, scene.scales, scene.opacities, torch.cat(feats, -1),
                                  cams.world_to_cam[c], cams.K[c], W, H, None, near=gs.near, eps2d=gs.eps2d,
                                  tile_size=gs.tile_size, backend=settings.backend)
        alpha = out.alpha.reshape(-1, 1)
        a = alpha.clamp_min(1e-6)
        g = out.rgb.reshape(H * W, -1) / a
        z = out.depth.reshape(-1, 1) / a
        m = alpha[:, 0] > _COVERED
        d = dirs_all[c]
        fwd = cams.world_to_cam[c, 2, :3]
        position = origins_all[c] + d * (z / (d @ fwd).clamp_min(1e-6)[:, None])
        normal = g[:, 5:8] / g[:, 5:8].norm(dim=-1, keepdim=True).clamp_min(1e-12)
        if tracer is not None:  # shadow rays leave the shell of Gaussians that made the point
            position = position + normal * (SHADOW_OFFSET * scene_extent(scene))
        gb = GBuffer(position=position[m], normal=normal[m], geo_normal=normal[m], view=-d[m],
                     base_color=g[m, :3], roughness=g[m, 3:4], metallic=g[m, 4:5],
                     transfer=g[m, 8:] if transfer is not None else None)
        lin = torch.zeros(H * W, 3, device=device).index_put((m.nonzero()[:, 0],), shade(gb, light,
                                                                                          settings.shading, tracer))
        cov = alpha * m[:, None]
        rgb = linear_to_srgb(lin.clamp(0.0, 1.0)) * cov + bg * (1.0 - cov)
        mf = m[:, None].float()
        for key, value in (("rgb", rgb), ("alpha", alpha), ("depth", z * mf), ("normal", normal * mf),
                           ("albedo", g[:, :3] * mf), ("roughness", g[:, 3:4] * mf), ("metallic", g[:, 4:5] * mf)):
            outs[key].append(value.reshape(H, W, -1))
        outs["means2d"].append(out.means2d)
        outs["radii"].append(out.radii)
    st = {k: torch.stack(v) for k, v in outs.items() if k not in ("means2d", "radii")}
    return RenderOutput(rgb=st["rgb"], alpha=st["alpha"], depth=st["depth"], normal=st["normal"],
                        gbuffer={k: st[k] for k in ("albedo", "roughness", "metallic")},
                        aux=GaussianAux(means2d=outs["means2d"], radii=outs["radii"]))
