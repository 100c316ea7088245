"""Render a GaussianScene by ray casting (``settings.gaussians.method = "raycast"``), for any camera model.

Per camera: the view-dependent colors from the camera center (as the rasterizer), the rasterizer's ``eps2d``
dilation as its 3D equivalent (a Gaussian at distance ``z`` gets ``eps2d (z / f)^2`` added to its variance on
every axis: one pixel spans ``z / f`` there), a BVH over the dilated Gaussians, then one ray per pixel center
(``Cameras.rays``, lens distortion included) traced in 8 x 8 pixel packets. Depth is camera-space z of the
composited keys. For densification, ``aux.means2d`` are leaf tensors at the projected centers whose gradient is
``dL/d(pixel)``: they shift the means in the camera plane by ``z / f`` per pixel (a zero shift in the forward
pass) -- the rasterizer's ``means2d.grad`` for pinhole cameras, an approximation of it under lens distortion
(the lens Jacobian is not applied).
"""

from __future__ import annotations

import torch

from recon.cameras import Cameras
from recon.renderers.interface import RenderOutput, RenderSettings

_TILE = 8


def _tile_order(width: int, height: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel centers ``[T * 64, 2]`` tile after tile (``_TILE`` x ``_TILE`` tiles; a partial tile at the right or
    bottom edge is padded with copies of one of its pixels, so every packet of 64 rays is one tile), and the
    index of each row-major pixel ``[H * W]`` in that list."""
    ty, tx = torch.meshgrid(torch.arange(_TILE, device=device), torch.arange(_TILE, device=device), indexing="ij")
    tiles_x, tiles_y = -(-width // _TILE), -(-height // _TILE)
    oy, ox = torch.meshgrid(torch.arange(tiles_y, device=device) * _TILE, torch.arange(tiles_x, device=device) * _TILE,
                            indexing="ij")
    xs = (ox.reshape(-1, 1) + tx.reshape(1, -1)).clamp(max=width - 1)  # padding repeats the edge pixel
    ys = (oy.reshape(-1, 1) + ty.reshape(1, -1)).clamp(max=height - 1)
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1).float() + 0.5
    where = torch.empty(height * width, dtype=torch.long, device=device)
    flat = (ys * width + xs).reshape(-1)
    # Padding copies trace the same ray as the pixel itself, so any copy gives the pixel's value.
    where[flat] = torch.arange(len(flat), device=device)
    return pix, where


def render_raycast(scene, cams: Cameras, settings: RenderSettings, degree: int, bg: torch.Tensor) -> RenderOutput:
    """Ray-cast ``scene`` into every camera of ``cams``; outputs as :func:`render_gaussians`."""
    from recon.renderers.gaussians.raycast import GaussianRayCaster
    from recon.renderers.gaussians.render import GaussianAux, scene_colors

    gs = settings.gaussians
    backend = settings.backend
    if backend not in ("auto", "cpu", "torch"):
        raise ValueError(f"backend {backend!r} cannot ray-cast Gaussians; use 'auto', 'cpu' or 'torch'")
    W, H = cams.width, cams.height
    pix, inverse = _tile_order(W, H, scene.means.device)
    centers = cams.centers()
    means, scales = scene.means, scene.scales
    rgbs, alphas, depths, means2d, radii = [], [], [], [], []
    for c in range(len(cams)):
        cam = cams[c]
        R, t = cam.world_to_cam[0, :3, :3], cam.world_to_cam[0, :3, 3]
        K = cam.K[0]
        fx, fy = K[0, 0], K[1, 1]
        with torch.no_grad():
            p_cam = means.detach() @ R.T + t
            dist = p_cam[:, 2] if cam.model != "fisheye" else p_cam.norm(dim=-1)
            dist = dist.clamp_min(gs.near)
            uv = cam.project(means.detach())[0][0]
            inside = ((uv[:, 0] > -0.5 * W) & (uv[:, 0] < 1.5 * W) & (uv[:, 1] > -0.5 * H) & (uv[:, 1] < 1.5 * H)
                      & torch.isfinite(uv).all(-1) & ((p_cam[:, 2] > gs.near) | (cam.model == "fisheye")))
            rad = torch.ceil(3.0 * scales.detach().max(-1).values * 0.5 * (fx + fy) / dist)
            radii.append(torch.where(inside, rad, torch.zeros_like(rad)).to(torch.int32))
        m2d = uv.clone().requires_grad_(means.requires_grad)
        shift = m2d - m2d.detach()  # zero; carries dL/d(pixel) back to m2d
        means_c = means + (shift[:, :1] * (dist / fx)[:, None]) * R[0] + (shift[:, 1:] * (dist / fy)[:, None]) * R[1]
        scales_c = scales
        if gs.eps2d > 0:
            pixel = dist / (0.5 * (fx + fy))
            scales_c = (scales.square() + gs.eps2d * pixel.square()[:, None]).sqrt()
        caster = GaussianRayCaster(means_c, scene.quats, scales_c, scene.opacities, backend=backend)
        origins, dirs = cam.rays(pix[None])
        out = caster.trace(origins[0], dirs[0], scene_colors(scene, centers[c], degree), tmin=gs.near,
                           order=gs.raycast_order, packet=_TILE * _TILE)
        alpha = out.alpha[inverse].reshape(H, W, 1)
        rgbs.append(out.features[inverse].reshape(H, W, 3) + (1.0 - alpha) * bg)
        alphas.append(alpha)
        z = (out.depth[:, 0] * (dirs[0] @ R[2]))[inverse].reshape(H, W, 1)  # key (distance) -> camera z
        depths.append(z / alpha.clamp_min(1e-6) * (alpha > 1e-6))
        means2d.append(m2d)
    return RenderOutput(rgb=torch.stack(rgbs), alpha=torch.stack(alphas), depth=torch.stack(depths),
                        aux=GaussianAux(means2d=means2d, radii=radii))
