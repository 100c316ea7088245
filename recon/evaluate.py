"""Evaluation: render a split, compare in sRGB over the evaluation background, write per-view metrics."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from recon.data.dataset import Split
from recon.metrics import psnr, ssim
from recon.renderers import RenderSettings, render


def composite(images: torch.Tensor, background: torch.Tensor) -> torch.Tensor:
    """``[C, H, W, 4]`` straight-alpha images over ``background [3]`` -> ``[C, H, W, 3]``."""
    rgb, alpha = images[..., :3], images[..., 3:]
    return rgb * alpha + background.to(images) * (1 - alpha)


def alpha_is_mask(alpha_mode: str, data_format: str) -> bool:
    """Whether image alpha marks valid pixels (photos) rather than coverage (see the ``alpha_mode`` option)."""
    if alpha_mode == "auto":
        return data_format != "blender"
    return alpha_mode == "mask"


def fill_invalid(gt: torch.Tensor, pred: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """Replace target pixels whose alpha < 0.5 by the (detached) prediction, so losses and metrics ignore them."""
    return torch.where(images[..., 3:] >= 0.5, gt, pred.detach())


@torch.no_grad()
def evaluate_split(scene, split: Split, background: torch.Tensor, settings: RenderSettings,
                   out_dir: Path | None = None, mask: bool = False) -> dict:
    """PSNR/SSIM per view and mean, on sRGB-encoded images (as stored) composited over ``background``.
    With ``mask``, pixels whose alpha < 0.5 are left out (they take the rendered value).

    Returns ``{"psnr", "ssim", "views": [{"name", "psnr", "ssim"}]}``; writes ``<name>.png`` renders to
    ``out_dir`` when given.
    """
    from recon.data.io import write_png

    device = background.device
    settings = replace(settings, background=background)
    views = []
    for i in range(len(split)):
        images = split.images[i : i + 1].to(device)
        gt = composite(images, background)
        out = render(scene, split.cameras[i].to(device), settings)
        pred = out.rgb.clamp(0, 1)
        if mask:
            gt = fill_invalid(gt, pred, images)
        views.append({"name": split.names[i], "psnr": round(psnr(pred, gt).item(), 4),
                      "ssim": round(ssim(pred, gt).item(), 5)})
        if out_dir is not None:
            write_png(Path(out_dir) / f"{split.names[i]}.png", pred[0].cpu().numpy())
    return {"psnr": round(float(np.mean([v["psnr"] for v in views])), 4) if views else None,
            "ssim": round(float(np.mean([v["ssim"] for v in views])), 5) if views else None,
            "views": views}
