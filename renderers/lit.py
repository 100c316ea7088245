"""The renderer of :class:`~recon.scenes.lit.LitScene`: the geometry's own renderer fills the G-buffer, the
shared shading layer shades it under the scene's light (DESIGN.md section 1).

``settings.shading.supersample = N`` (N > 1) renders the color at N x N sub-pixel samples and resamples them with
a path tracer's reconstruction filter: Mitsuba's default ``gaussian`` (stddev 0.5 px, truncated and shifted to 0
at a radius of 2 px, separable), which is what the synthetic datasets were rendered with -- so silhouettes and
texture edges get the same slight blur. G-buffer channels stay pixel-center values.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from recon.cameras import Cameras
from recon.renderers.interface import RenderOutput, RenderSettings, register_renderer
from recon.scenes.lit import LitScene
from recon.scenes.mesh import MeshScene

__all__ = ["render_lit", "render_supersampled"]


def _render_once(scene: LitScene, cameras: Cameras, settings: RenderSettings) -> RenderOutput:
    from recon.renderers.mesh.render import mesh_arrays, render_mesh_arrays

    if isinstance(scene.geometry, MeshScene):
        return render_mesh_arrays(mesh_arrays(scene.geometry), cameras, settings, shading="pbr", light=scene.light)
    from recon.scenes.gaussians_pbr import PBRGaussianScene

    if isinstance(scene.geometry, PBRGaussianScene):
        from recon.renderers.gaussians.pbr import render_gaussians_pbr

        return render_gaussians_pbr(scene.geometry, cameras, settings, scene.light)
    raise TypeError(f"LitScene: no PBR renderer for geometry of type {type(scene.geometry).__name__}")


@register_renderer(LitScene)
def render_lit(scene: LitScene, cameras: Cameras, settings: RenderSettings) -> RenderOutput:
    """Render ``scene`` shaded by its light; outputs as for the geometry (rgb sRGB over the background)."""
    return render_supersampled(lambda cams, s: _render_once(scene, cams, s), cameras, settings)


def render_supersampled(draw, cameras: Cameras, settings: RenderSettings) -> RenderOutput:
    """``draw(cameras, settings) -> RenderOutput`` at ``settings.shading.supersample`` x that many sub-pixel
    samples per pixel, color and alpha resampled under the pixel filter (module docstring); the other channels
    come from a pixel-center pass."""
    n = int(settings.shading.supersample)
    if n < 1:
        raise ValueError(f"ShadingSettings.supersample must be >= 1, got {n}")
    if n == 1:
        return draw(cameras, settings)
    big = draw(cameras.scaled(n), replace(settings, channels=("rgb", "alpha")))
    extra = tuple(c for c in settings.channels if c not in ("rgb", "alpha"))
    # The pixel-center pass only supplies the G-buffer channels; its color is discarded, so shade it cheaply.
    cheap = replace(settings.shading, spp=1, indirect=False)
    out = draw(cameras, replace(settings, channels=extra, shading=cheap)) if extra else RenderOutput()
    out.rgb, out.alpha = _gaussian_resample(big.rgb, n), _gaussian_resample(big.alpha, n)
    return out


_FILTER_STDDEV = 0.5
_FILTER_RADIUS = 4 * _FILTER_STDDEV  # Mitsuba's gaussian rfilter: radius 4 stddev, value shifted to 0 there


def _filter_taps(n: int, like: torch.Tensor) -> torch.Tensor:
    """1D weights ``[5 n]`` of the sub-pixel samples within 2 px of an output pixel center, summing to 1.

    Sample ``t`` of the window sits ``(t - 2 n + 0.5) / n - 0.5`` pixels from the center of the pixel whose
    sub-samples are ``t = 2n .. 3n - 1``.
    """
    t = torch.arange(5 * n, dtype=torch.float64)
    d = (t - 2 * n + 0.5) / n - 0.5
    a = -0.5 / _FILTER_STDDEV ** 2
    w = (torch.exp(a * d * d) - math.exp(a * _FILTER_RADIUS ** 2)).clamp_min(0.0)
    return (w / w.sum()).to(like)


def _gaussian_resample(x: torch.Tensor, n: int) -> torch.Tensor:
    """``[C, H n, W n, D]`` sub-pixel samples -> ``[C, H, W, D]`` pixels under the Gaussian pixel filter (borders
    replicate the edge samples; the filter is normalized, so a constant image stays constant)."""
    C, Hn, Wn, D = x.shape
    w = _filter_taps(n, x)
    y = x.permute(0, 3, 1, 2).reshape(C * D, 1, Hn, Wn)
    y = torch.nn.functional.pad(y, (2 * n, 2 * n, 2 * n, 2 * n), mode="replicate")
    y = torch.nn.functional.conv2d(y, w.view(1, 1, -1, 1), stride=(n, 1))
    y = torch.nn.functional.conv2d(y, w.view(1, 1, 1, -1), stride=(1, n))
    return y.reshape(C, D, Hn // n, Wn // n).permute(0, 2, 3, 1).contiguous()
