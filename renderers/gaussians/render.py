"""Render a GaussianScene through the rasterization op or the ray caster (one camera at a time)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from recon.cameras import Cameras
from recon.renderers.interface import RenderOutput, RenderSettings, register_renderer
from recon.scenes.gaussians import GaussianScene
from recon.sh import eval_sh


@dataclass
class GaussianAux:
    """Per-camera extras for densification: ``means2d[c] [N, 2]`` (graph nodes; call ``retain_grad``),
    ``radii[c] [N]`` int32 pixel radii (0 = not visible)."""

    means2d: list[torch.Tensor]
    radii: list[torch.Tensor]


def scene_colors(scene: GaussianScene, camera_center: torch.Tensor, degree: int) -> torch.Tensor:
    """View-dependent colors ``[N, 3]`` as 3DGS: SH at the direction camera -> Gaussian, +0.5, clamped at 0."""
    coeffs = scene.sh_coeffs
    if degree == 0:
        raw = eval_sh(0, coeffs, coeffs.new_zeros(len(scene), 3))
    else:
        dirs = scene.means - camera_center.to(scene.means)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        raw = eval_sh(degree, coeffs, dirs)
    return torch.clamp_min(raw + 0.5, 0.0)


@register_renderer(GaussianScene)
def render_gaussians(scene: GaussianScene, cameras: Cameras, settings: RenderSettings) -> RenderOutput:
    """Render ``scene`` into every camera; returns ``[C, H, W, *]`` images and :class:`GaussianAux`."""
    from recon.renderers.gaussians.rasterize import rasterize_gaussians

    gs = settings.gaussians
    degree = scene.active_sh_degree if gs.sh_degree is None else min(gs.sh_degree, scene.max_sh_degree)
    device = scene.means.device
    bg = settings.background
    bg = torch.zeros(3, device=device) if bg is None else torch.as_tensor(bg, dtype=torch.float32, device=device)
    cams = cameras.to(device=device, dtype=torch.float32)
    centers = cams.centers()
    if gs.method == "raycast":
        from recon.renderers.gaussians.raycast_render import render_raycast

        return render_raycast(scene, cams, settings, degree, bg)
    if gs.method != "raster":
        raise ValueError(f"settings.gaussians.method must be 'raster' or 'raycast', got {gs.method!r}")
    if not cams.is_pinhole:
        raise ValueError(f"cameras with the {cams.model!r} lens model cannot be rasterized: set "
                         "settings.gaussians.method='raycast' (CLI: --gaussians-method raycast, or --render-method "
                         "raycast when training), or load the data with distortion='undistort'")
    rgbs, alphas, depths, means2d, radii = [], [], [], [], []
    for c in range(len(cams)):
        colors = scene_colors(scene, centers[c], degree)
        out = rasterize_gaussians(scene.means, scene.quats, scene.scales, scene.opacities, colors,
                                  cams.world_to_cam[c], cams.K[c], cams.width, cams.height, bg,
                                  near=gs.near, eps2d=gs.eps2d, tile_size=gs.tile_size, backend=settings.backend)
        rgbs.append(out.rgb)
        alphas.append(out.alpha)
        depths.append(out.depth / out.alpha.clamp_min(1e-6) * (out.alpha > 1e-6))
        means2d.append(out.means2d)
        radii.append(out.radii)
    return RenderOutput(rgb=torch.stack(rgbs), alpha=torch.stack(alphas), depth=torch.stack(depths),
                        aux=GaussianAux(means2d=means2d, radii=radii))
