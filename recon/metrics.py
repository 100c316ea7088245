"""Image metrics and losses: PSNR, SSIM (the 11x11 Gaussian-window SSIM of the 3DGS/NeRF papers)."""

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
