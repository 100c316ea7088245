"""Image metrics and losses: PSNR, SSIM (the 11x11 Gaussian-window SSIM of the 3DGS/NeRF papers); mesh
chamfer-L1 for geometry."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F


def _check_images(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.ndim != 4:
        raise ValueError(f"images must both have shape [C, H, W, D], got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """PSNR in dB per image for ``[C, H, W, D]`` images with peak 1; returns ``[C]``."""
    _check_images(pred, target)
    mse = ((pred - target) ** 2).flatten(1).mean(1)
    return -10.0 * torch.log10(mse.clamp_min(1e-12))


@functools.lru_cache(maxsize=4)
def _window(size: int, sigma: float, channels: int, device: str, dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()
    w = (g[:, None] * g[None, :]).to(device=device, dtype=dtype)
    return w.expand(channels, 1, size, size).contiguous()


def ssim(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM per image for ``[C, H, W, D]`` images in [0, 1]; returns ``[C]``.

    Gaussian window 11x11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, zero padding ("same" size), as in the
    reference SSIM used by 3DGS, so numbers are comparable with published ones. Differentiable.
    """
    _check_images(pred, target)
    d = pred.shape[-1]
    x = pred.permute(0, 3, 1, 2)
    y = target.permute(0, 3, 1, 2)
    w = _window(window, sigma, d, str(x.device), x.dtype)
    pad = window // 2
    mu_x = F.conv2d(x, w, padding=pad, groups=d)
    mu_y = F.conv2d(y, w, padding=pad, groups=d)
    sxx = F.conv2d(x * x, w, padding=pad, groups=d) - mu_x**2
    syy = F.conv2d(y * y, w, padding=pad, groups=d) - mu_y**2
    sxy = F.conv2d(x * y, w, padding=pad, groups=d) - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    num = (2 * mu_x * mu_y + c1) * (2 * sxy + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2)
    return (num / den).flatten(1).mean(1)


def sample_surface(vertices: torch.Tensor, faces: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` points ``[n, 3]`` sampled uniformly (area-weighted) on a triangle mesh ``vertices [V, 3]``,
    ``faces [F, 3]``; deterministic for a given ``seed``. Raises ``ValueError`` for a mesh without area."""
    v = vertices.detach().double().cpu()
    f = faces.long().cpu()
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    area = torch.cross(b - a, c - a, dim=-1).norm(dim=-1)
    if len(f) == 0 or not area.sum() > 0:
        raise ValueError("cannot sample points on a mesh without faces or with zero total area")
    gen = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(area / area.sum(), n, replacement=True, generator=gen)
    r1, r2 = torch.rand(n, 1, generator=gen, dtype=torch.float64), torch.rand(n, 1, generator=gen, dtype=torch.float64)
    s = r1.sqrt()
    return (1 - s) * a[idx] + s * (1 - r2) * b[idx] + s * r2 * c[idx]


def chamfer_l1(verts_a: torch.Tensor, faces_a: torch.Tensor, verts_b: torch.Tensor, faces_b: torch.Tensor,
               samples: int = 100_000, seed: int = 0) -> dict:
    """Chamfer-L1 between two meshes: ``samples`` surface points on each, mean Euclidean distance to the
    nearest sample of the other, in both directions. Returns ``{"a_to_b", "b_to_a", "chamfer"}`` where
    ``chamfer`` is the mean of the two directions (the usual "chamfer-L1" of mesh reconstruction papers).
    Distances are in the meshes' units; normalize them first (e.g. to the unit sphere of the reference)."""
    from scipy.spatial import cKDTree

    pa = sample_surface(verts_a, faces_a, samples, seed).numpy()
    pb = sample_surface(verts_b, faces_b, samples, seed + 1).numpy()
    d_ab = cKDTree(pb).query(pa, workers=-1)[0].mean()
    d_ba = cKDTree(pa).query(pb, workers=-1)[0].mean()
    return {"a_to_b": float(d_ab), "b_to_a": float(d_ba), "chamfer": float(0.5 * (d_ab + d_ba))}
