"""Pure-PyTorch reference twin of the Gaussian rasterizer (readable; autograd gives the gradients).

It implements exactly the math of the compiled kernels (3DGS / gsplat "classic" convention), so that tests can
compare pixels and vector-Jacobian products:

* projection: ``p = R mean + t``; cull ``z <= near``; ``Sigma = (Rq S)(Rq S)^T``, ``Sigma_c = R Sigma R^T``;
  clamped perspective Jacobian; ``Sigma_2d = J Sigma_c J^T + eps2d I``; conic = ``Sigma_2d^-1``; radius
  ``ceil(3 sqrt(lambda_max))``; cull when the radius box misses the image;
* binning into ``tile_size`` tiles, depth sorted per tile (ties by index);
* front-to-back compositing at pixel centers ``(i + 0.5, j + 0.5)`` with the ``1/255`` skip, the ``0.99``
  clamp and the ``T < 1e-4`` early stop expressed with masks and ``cumprod``.

Runs on any device. Memory is bounded by compositing a chunk of tiles at a time under
``torch.utils.checkpoint`` (intermediates are recomputed in the backward pass), so it can render the benchmark
scene; it is slow by design.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from recon.cameras import quat_wxyz_to_rotmat

# Thresholds shared with the C++ kernels (cuda/gaussians/gs_math.h).
ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.99
T_MIN = 1e-4
# Elements (tiles x pixels x list length) composited per checkpointed chunk.
_CHUNK_ELEMS = 1 << 22


def project_gaussians_ref(means: Tensor, quats: Tensor, scales: Tensor, world_to_cam: Tensor, K: Tensor,
                          width: int, height: int, near: float, eps2d: float):
    """Project 3D Gaussians into one pinhole camera.

    Args: means ``[N, 3]``, quats ``[N, 4]`` (w, x, y, z; normalized here), scales ``[N, 3]``,
    world_to_cam ``[4, 4]``, K ``[3, 3]``.
    Returns ``means2d [N, 2]`` (pixels), ``conics [N, 3]`` (a, b, c of the inverse 2D covariance),
    ``depths [N]`` (camera z), ``radii [N]`` int32 (0 = culled; no gradient).
    """
    R = world_to_cam[:3, :3].to(means.dtype)
    t = world_to_cam[:3, 3].to(means.dtype)
    fx, fy, cx, cy = (K[0, 0].item(), K[1, 1].item(), K[0, 2].item(), K[1, 2].item())
    p = means @ R.T + t
    x, y, z = p.unbind(-1)
    in_front = z > near
    # Culled Gaussians use a dummy z so that no inf/nan enters the graph (their gradient is zero anyway).
    zs = torch.where(in_front, z, torch.ones_like(z))
    q = quats / quats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    Mq = quat_wxyz_to_rotmat(q) * scales[:, None, :]
    cov_c = R @ (Mq @ Mq.transpose(1, 2)) @ R.T
    lim_xp = (width - cx) / fx + 0.3 * width / fx
    lim_xn = cx / fx + 0.3 * width / fx
    lim_yp = (height - cy) / fy + 0.3 * height / fy
    lim_yn = cy / fy + 0.3 * height / fy
    tx = zs * torch.clamp(x / zs, -lim_xn, lim_xp)
    ty = zs * torch.clamp(y / zs, -lim_yn, lim_yp)
    zero = torch.zeros_like(zs)
    J = torch.stack([fx / zs, zero, -fx * tx / (zs * zs), zero, fy / zs, -fy * ty / (zs * zs)], -1).reshape(-1, 2, 3)
    cov2 = J @ cov_c @ J.transpose(1, 2)
    s00 = cov2[:, 0, 0] + eps2d
    s01 = cov2[:, 0, 1]
    s11 = cov2[:, 1, 1] + eps2d
    det = s00 * s11 - s01 * s01
    ok = in_front & (det > 0)
    dets = torch.where(ok, det, torch.ones_like(det))
    conics = torch.stack([s11 / dets, -s01 / dets, s00 / dets], -1)
    means2d = torch.stack([fx * x / zs + cx, fy * y / zs + cy], -1)
    with torch.no_grad():
        mid = 0.5 * (s00 + s11)
        lam = mid + torch.sqrt(torch.clamp_min(mid * mid - det, 0.1))
        r = torch.ceil(3.0 * torch.sqrt(lam))
        u, v = means2d[:, 0], means2d[:, 1]
        inside = (u + r > 0) & (u - r < width) & (v + r > 0) & (v - r < height)
        radii = torch.where(ok & inside, r, torch.zeros_like(r)).to(torch.int32)
    return means2d, conics, z, radii


def tile_bins_ref(means2d: Tensor, radii: Tensor, depths: Tensor, width: int, height: int, tile_size: int):
    """Tile/Gaussian intersections sorted by (tile, depth, index).

    Returns ``tile_offsets [n_tiles + 1]`` (int64) and ``gauss_ids [M]`` (int64): tile ``t`` composites
    ``gauss_ids[tile_offsets[t]:tile_offsets[t + 1]]`` front to back.
    """
    dev = means2d.device
    tw, th = -(-width // tile_size), -(-height // tile_size)
    with torch.no_grad():
        vis = torch.nonzero(radii > 0).squeeze(1)
        r = radii[vis].to(means2d.dtype)
        m = means2d[vis]
        # Same float expressions as the C++ binning (floor/ceil of (mean -/+ radius) / tile_size).
        x0 = torch.floor((m[:, 0] - r) / tile_size).clamp(0, tw).long()
        x1 = torch.ceil((m[:, 0] + r) / tile_size).clamp(0, tw).long()
        y0 = torch.floor((m[:, 1] - r) / tile_size).clamp(0, th).long()
        y1 = torch.ceil((m[:, 1] + r) / tile_size).clamp(0, th).long()
        nx, ny = x1 - x0, y1 - y0
        counts = nx * ny
        g = torch.repeat_interleave(torch.arange(len(vis), device=dev), counts)
        start = torch.cumsum(counts, 0) - counts
        local = torch.arange(len(g), device=dev) - start[g]
        tile = (y0[g] + local // nx[g]) * tw + x0[g] + local % nx[g]
        # Rank by (depth, index): a stable sort of the depths keeps index order on ties.
        rank = torch.empty_like(vis)
        rank[torch.sort(depths[vis], stable=True).indices] = torch.arange(len(vis), device=dev)
        order = torch.argsort(tile * max(len(vis), 1) + rank[g])
        gauss_ids = vis[g[order]]
        tile_offsets = torch.zeros(tw * th + 1, dtype=torch.long, device=dev)
        tile_offsets[1:] = torch.cumsum(torch.bincount(tile, minlength=tw * th), 0)
    return tile_offsets, gauss_ids


def _composite_chunk(pix, ids, valid, means2d, conics, opacities, colors, depths):
    """Composite tiles: ``pix [t, P, 2]``, padded lists ``ids/valid [t, L]`` -> (sum w c, T_final, sum w z)."""
    m, cn = means2d[ids], conics[ids]
    dx = pix[:, :, None, 0] - m[:, None, :, 0]  # [t, P, L]
    dy = pix[:, :, None, 1] - m[:, None, :, 1]
    a, b, c = (cn[:, None, :, k] for k in range(3))
    power = -0.5 * (a * dx * dx + c * dy * dy) - b * dx * dy
    alpha = torch.clamp(opacities[ids][:, None, :] * torch.exp(power), max=ALPHA_MAX)
    keep = valid[:, None, :] & (power <= 0) & (alpha >= ALPHA_MIN)
    alpha = torch.where(keep, alpha, torch.zeros_like(alpha))
    with torch.no_grad():
        # Sequential early stop: Gaussian k is included iff T before it times (1 - alpha_k) >= T_MIN.
        # Skipped Gaussians have alpha 0 and the running product is monotone, so the inclusive cumprod
        # decides it for every k at once.
        included = torch.cumprod(1.0 - alpha, dim=-1) >= T_MIN
    alpha = torch.where(included, alpha, torch.zeros_like(alpha))
    T_incl = torch.cumprod(1.0 - alpha, dim=-1)
    T_excl = torch.cat([torch.ones_like(T_incl[..., :1]), T_incl[..., :-1]], dim=-1)
    w = alpha * T_excl
    rgb = torch.einsum("tpl,tld->tpd", w, colors[ids])
    depth = torch.einsum("tpl,tl->tp", w, depths[ids])
    return rgb, T_incl[..., -1], depth


def rasterize_ref(means2d: Tensor, conics: Tensor, opacities: Tensor, colors: Tensor, depths: Tensor,
                  background: Tensor, tile_offsets: Tensor, gauss_ids: Tensor, width: int, height: int,
                  tile_size: int):
    """Composite binned 2D Gaussians. Returns rgb ``[H, W, D]``, alpha ``[H, W, 1]``, depth ``[H, W, 1]``."""
    dev, dt = means2d.device, means2d.dtype
    D = colors.shape[1]
    tw, th = -(-width // tile_size), -(-height // tile_size)
    n_tiles, P = tw * th, tile_size * tile_size
    counts = (tile_offsets[1:] - tile_offsets[:-1]).tolist()
    offs = tile_offsets.tolist()
    local = torch.arange(P, device=dev)
    lx, ly = (local % tile_size).to(dt) + 0.5, (local // tile_size).to(dt) + 0.5
    rgb_t, T_t, depth_t = [], [], []
    t0 = 0
    while t0 < n_tiles:
        t1, L = t0 + 1, counts[t0]
        while t1 < n_tiles and (t1 - t0 + 1) * P * max(L, counts[t1]) <= _CHUNK_ELEMS:
            L = max(L, counts[t1])
            t1 += 1
        nt = t1 - t0
        if L == 0:
            rgb_t.append(torch.zeros(nt, P, D, device=dev, dtype=dt))
            T_t.append(torch.ones(nt, P, device=dev, dtype=dt))
            depth_t.append(torch.zeros(nt, P, device=dev, dtype=dt))
        else:
            slot = torch.arange(L, device=dev)
            start = torch.tensor(offs[t0:t1], device=dev)
            cnt = torch.tensor(counts[t0:t1], device=dev)
            valid = slot[None, :] < cnt[:, None]
            ids = gauss_ids[torch.where(valid, start[:, None] + slot[None, :], torch.zeros_like(valid, dtype=torch.long))]
            tiles = torch.arange(t0, t1, device=dev)
            pix = torch.stack([(tiles % tw * tile_size).to(dt)[:, None] + lx, (tiles // tw * tile_size).to(dt)[:, None] + ly], -1)
            out = checkpoint(_composite_chunk, pix, ids, valid, means2d, conics, opacities, colors, depths,
                             use_reentrant=False)
            rgb_t.append(out[0]), T_t.append(out[1]), depth_t.append(out[2])
        t0 = t1

    def to_image(x):  # [n_tiles, P, C] -> [H, W, C]
        x = x.reshape(th, tw, tile_size, tile_size, -1).permute(0, 2, 1, 3, 4)
        return x.reshape(th * tile_size, tw * tile_size, -1)[:height, :width]

    T = to_image(torch.cat(T_t)[..., None])
    rgb = to_image(torch.cat(rgb_t)) + T * background
    depth = to_image(torch.cat(depth_t)[..., None])
    if len(gauss_ids) == 0:
        # Nothing visible: keep the outputs in the graph (zero gradients) so that backward() works as usual.
        anchor = sum(x.sum() for x in (means2d, conics, opacities, colors, depths)) * 0.0
        rgb, T, depth = rgb + anchor, T + anchor, depth + anchor
    return rgb, 1.0 - T, depth


def rasterize_gaussians_ref(means, quats, scales, opacities, colors, world_to_cam, K, width, height, background,
                            near=0.01, eps2d=0.3, tile_size=16):
    """Reference of the whole op (inputs already validated; ``background [D]``).

    Returns ``(rgb [H, W, D], alpha [H, W, 1], depth [H, W, 1], means2d [N, 2], radii [N], depths [N])``.
    """
    means2d, conics, depths, radii = project_gaussians_ref(means, quats, scales, world_to_cam, K, width, height,
                                                           near, eps2d)
    offsets, ids = tile_bins_ref(means2d.detach(), radii, depths.detach(), width, height, tile_size)
    rgb, alpha, depth = rasterize_ref(means2d, conics, opacities, colors, depths, background, offsets, ids,
                                      width, height, tile_size)
    return rgb, alpha, depth, means2d, radii, depths
