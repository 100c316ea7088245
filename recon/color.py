"""sRGB transfer functions (IEC 61966-2-1), for numpy arrays and torch tensors."""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["linear_to_srgb", "srgb_to_linear"]


def srgb_to_linear(x):
    """Exact piecewise sRGB decoding (IEC 61966-2-1): ``x / 12.92`` below 0.04045, else ``((x + 0.055) / 1.055)^2.4``.

    Works on numpy arrays and torch tensors (dtype and device kept; gradients finite everywhere).
    """
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.04045, x / 12.92, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4)
    x = np.asarray(x)
    return np.where(x <= 0.04045, x / 12.92, ((np.maximum(x, 0.04045) + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x):
    """Exact piecewise sRGB encoding: ``12.92 x`` below 0.0031308, else ``1.055 x^(1/2.4) - 0.055``."""
    if isinstance(x, torch.Tensor):
        return torch.where(x <= 0.0031308, x * 12.92, 1.055 * x.clamp_min(0.0031308) ** (1 / 2.4) - 0.055)
    x = np.asarray(x)
    return np.where(x <= 0.0031308, x * 12.92, 1.055 * np.maximum(x, 0.0031308) ** (1 / 2.4) - 0.055)
