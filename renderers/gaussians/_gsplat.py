"""Adapter of :func:`rasterize_gaussians` to gsplat's CUDA rasterizer (``pip install 'recon[gsplat]'``, gsplat>=1.4).

Uses the public ``gsplat.rasterization`` entry (classic mode, unpacked, ``render_mode="RGB+D"``), whose depth
channel is the accumulated, unnormalized ``sum w_i z_i`` like our ``depth`` output. The background is composited
here as ``(1 - alpha) * background`` (= ``T_final * background``), identical to the other backends.

Known differences to the reference (they are gsplat's, documented by gsplat): alpha is clamped at 0.999 instead
of 0.99, and the radius uses ``max(0.01, mid^2 - det)`` in some versions; pixels differ slightly where those
matter, so tests compare gsplat to the reference with a looser tolerance.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor


def _import_gsplat():
    try:
        import gsplat
    except ImportError as err:
        raise ImportError("backend 'gsplat' needs gsplat>=1.4: pip install 'recon[gsplat]'") from err
    return gsplat


def rasterize_gsplat(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                     world_to_cam: Tensor, K: Tensor, width: int, height: int, background: Tensor, near: float,
                     eps2d: float, tile_size: int):
    """gsplat twin of :func:`~recon.renderers.gaussians._ref.rasterize_gaussians_ref` (CUDA float32 inputs).

    Returns ``(rgb [H, W, D], alpha [H, W, 1], depth [H, W, 1], means2d [N, 2], radii [N] int32, depths [N])``.
    ``means2d`` is a view of gsplat's ``meta["means2d"]``; because the view itself is not used downstream, a hook
    on gsplat's tensor fills ``means2d.grad`` during backward, so ``means2d.retain_grad(); loss.backward()``
    behaves as with the other backends.
    """
    gsplat = _import_gsplat()
    D = colors.shape[1]
    render, alphas, meta = gsplat.rasterization(
        means=means, quats=quats, scales=scales, opacities=opacities, colors=colors,
        viewmats=world_to_cam[None], Ks=K[None], width=width, height=height, near_plane=near, eps2d=eps2d,
        tile_size=tile_size, packed=False, render_mode="RGB+D", rasterize_mode="classic", sh_degree=None)
    alpha = alphas[0]
    rgb = render[0, ..., :D] + (1.0 - alpha) * background
    depth = render[0, ..., D:D + 1]
    m2_full = meta["means2d"]  # [1, N, 2]
    means2d = m2_full[0]
    if m2_full.requires_grad:
        # A weak reference: a hook on m2_full that held its own view strongly would form a cycle through the
        # autograd graph that is never freed (memory grows every step).
        target = weakref.ref(means2d)

        def _fill_grad(grad: Tensor) -> None:
            view = target()
            if view is None:
                return
            g = grad[0].detach()
            view.grad = g.clone() if view.grad is None else view.grad + g

        m2_full.register_hook(_fill_grad)
    radii = meta["radii"][0]
    if radii.ndim == 2:  # gsplat >= 1.5 reports per-axis radii [N, 2]
        radii = radii.amax(dim=-1)
    depths = meta["depths"][0].detach()
    return rgb, alpha, depth, means2d, radii.to(torch.int32), depths
