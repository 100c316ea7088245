"""Deferred physically based shading of relightable Gaussians (:class:`~recon.scenes.gaussians_pbr.PBRGaussianScene`).

Per camera, one rasterization pass composites the Gaussians' material into a G-buffer: base color (3),
roughness and metallic (2), the normal (3: each Gaussian's shortest axis facing the camera) and, when given,
a per-Gaussian diffuse transfer (17: baked self-shadowing, :func:`bake_transfer`). The features are normalized
by the coverage, the position is the expected depth along the pixel's ray, and the shared shading layer
(:func:`recon.shading.shade.shade`) shades every covered pixel under the light. The radiance is encoded to sRGB
and composited over the background with the coverage, like the mesh renderer's PBR mode. Shadow rays of the
Monte Carlo integrator go through the Gaussian ray caster (:class:`GaussianTracer`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.color import linear_to_srgb
from recon.renderers.interface import RenderOutput, RenderSettings

__all__ = ["GaussianTracer", "bake_transfer", "render_gaussians_pbr"]

_COVERED = 1e-3  # pixels with less coverage are background (not shaded)


class GaussianTracer:
    """Shadow rays through Gaussians for the Monte Carlo shader: a ray is blocked when its transmittance
    (:meth:`GaussianRayCaster.transmittance`) is below 1/2. ``tmin``: rays start this far from their origin
    (a G-buffer point lies inside the Gaussians that made it)."""

    def __init__(self, scene, tmin: float):
        from recon.renderers.gaussians.raycast import GaussianRayCaster

        params = [x.detach().float().cpu().contiguous() for x in (scene.means, scene.quats, scene.scales,
                                                                    scene.opacities)]
        self.caster = GaussianRayCaster(*params)
        self.tmin = float(tmin)

    def any_hit(self, origins: Tensor, dirs: Tensor, tmin: float, tmax: float) -> Tensor:
        dev = origins.device
        T = self.caster.transmittance(origins.detach().float().cpu(), dirs.detach().float().cpu(),
                                      tmin=max(float(tmin), self.tmin), tmax=float(tmax))
        return (T < 0.5).to(dev)


def scene_extent(scene) -> float:
    lo, hi = scene.bounds()
    return max(float((hi - lo).max()), 1e-6)


@torch.no_grad()
def bake_transfer(scene, samples: int = 64, seed: int = 0) -> Tensor:
    """Per-Gaussian self-shadowed diffuse transfer ``[N, 17]`` (:func:`recon.shading.prt.diffuse_transfer`) with
    shadow rays through the Gaussians themselves, from each center offset by three standard deviations along
    its normal (oriented away from the scene's center)."""
    from recon.shading.prt import diffuse_transfer

    center = scene.means.detach().mean(0)
    n = scene.normals()
    n = n * torch.where(((scene.means.detach() - center) * n).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    thick = scene.scales.detach().min(-1).values[:, None]
    points = scene.means.detach() + 3.0 * thick * n
    tracer = GaussianTracer(scene, tmin=0.0)
    return diffuse_transfer(points, n.detach(), tracer, samples=samples, seed=seed, scale=scene_extent(scene))


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
    if settings.shading.integrator == "mc" and settings.shading.shadows:
        tracer = GaussianTracer(scene, tmin=0.03 * scene_extent(scene))
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
