"""The Gaussian rasterization op: ``rasterize_gaussians`` with ``torch`` / ``cpu`` / ``gsplat`` backends.

The ``cpu`` backend runs the C++ kernels of ``cuda/gaussians`` through two autograd Functions with hand-written
backward passes: projection (means, quats, scales -> means2d, conics, depths) and rasterization (2D Gaussians
-> images). Keeping them separate makes ``means2d`` a real node of the graph, so densification can read
``means2d.grad`` after ``means2d.retain_grad()``. The ``torch`` backend is the reference twin
(:mod:`recon.renderers.gaussians._ref`); ``gsplat`` wraps gsplat's CUDA kernels.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.renderers._build import ExtensionBuildError, load_cpu_extension, require_cpu_extension

__all__ = ["RasterOutput", "rasterize_gaussians", "BACKENDS"]

BACKENDS = ("auto", "torch", "cpu", "gsplat")


@dataclass
class RasterOutput:
    """Result of :func:`rasterize_gaussians` for one camera.

    Attributes:
        rgb: ``[H, W, D]`` ``sum_i w_i c_i + T_final * background``.
        alpha: ``[H, W, 1]`` ``1 - T_final``.
        depth: ``[H, W, 1]`` ``sum_i w_i z_i``, the *unnormalized* expected depth (divide by alpha).
        means2d: ``[N, 2]`` projected centers in pixels; a non-leaf graph node: after ``means2d.retain_grad()``
            and ``loss.backward()``, ``means2d.grad`` is ``dL/dmeans2d`` (used by densification). Values are
            meaningful only where ``radii > 0``.
        radii: ``[N]`` int32 pixel radii, 0 = culled / not visible.
        depths: ``[N]`` camera-space z (detached).
    """

    rgb: Tensor
    alpha: Tensor
    depth: Tensor
    means2d: Tensor
    radii: Tensor
    depths: Tensor


def _ext():
    return load_cpu_extension("gaussians")


class _ProjectFn(torch.autograd.Function):
    """means [N,3], quats [N,4], scales [N,3] -> means2d [N,2], conics [N,3], depths [N], radii [N] (int32)."""

    @staticmethod
    def forward(ctx, means, quats, scales, world_to_cam, K, width, height, near, eps2d):
        means2d, conics, depths, radii = _ext().project_forward(means, quats, scales, world_to_cam, K, width, height,
                                                                near, eps2d)
        ctx.save_for_backward(means, quats, scales, world_to_cam, K, radii)
        ctx.cfg = (width, height, near, eps2d)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, v_means2d, v_conics, v_depths, _v_radii):
        means, quats, scales, world_to_cam, K, radii = ctx.saved_tensors
        v_means, v_quats, v_scales = _ext().project_backward(
            means, quats, scales, world_to_cam, K, *ctx.cfg, radii,
            v_means2d.contiguous(), v_conics.contiguous(), v_depths.contiguous())
        return v_means, v_quats, v_scales, None, None, None, None, None, None


class _RasterFn(torch.autograd.Function):
    """Binned 2D Gaussians -> rgb [H,W,D], alpha [H,W,1], depth [H,W,1]."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, depths, background, tile_offsets, gauss_ids, width, height,
                tile_size):
        rgb, alpha, depth, final_T, n_contrib = _ext().rasterize_forward(
            means2d, conics, opacities, colors, depths, background, tile_offsets, gauss_ids, width, height, tile_size)
        ctx.save_for_backward(means2d, conics, opacities, colors, depths, background, tile_offsets, gauss_ids,
                              final_T, n_contrib)
        ctx.cfg = (width, height, tile_size)
        return rgb, alpha, depth

    @staticmethod
    def backward(ctx, v_rgb, v_alpha, v_depth):
        means2d, conics, opacities, colors, depths, background, offsets, ids, final_T, n_contrib = ctx.saved_tensors
        grads = _ext().rasterize_backward(means2d, conics, opacities, colors, depths, background, offsets, ids,
                                          *ctx.cfg, final_T, n_contrib, v_rgb.contiguous(), v_alpha.contiguous(),
                                          v_depth.contiguous())
        v_means2d, v_conics, v_opacities, v_colors, v_depths = grads
        return v_means2d, v_conics, v_opacities, v_colors, v_depths, None, None, None, None, None, None


def _check_shape(name: str, x, shape: tuple, spec: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        raise ValueError(f"{name} must have shape {spec}, got {tuple(x.shape)}")


def _validate(means, quats, scales, opacities, colors, world_to_cam, K, width, height, background, near, eps2d,
              tile_size) -> None:
    _check_shape("means", means, (None, 3), "[N, 3]")
    N = means.shape[0]
    _check_shape("quats", quats, (N, 4), f"[N, 4] with N={N} (w, x, y, z)")
    _check_shape("scales", scales, (N, 3), f"[N, 3] with N={N}")
    _check_shape("opacities", opacities, (N,), f"[N] with N={N}")
    _check_shape("colors", colors, (N, None), f"[N, D] with N={N}")
    _check_shape("world_to_cam", world_to_cam, (4, 4), "[4, 4]")
    _check_shape("K", K, (3, 3), "[3, 3]")
    D = colors.shape[1]
    if D < 1:
        raise ValueError(f"colors must have at least one channel, got {tuple(colors.shape)}")
    if background is not None:
        _check_shape("background", background, (D,), f"[D] with D={D} (the colors' channels)")
    for name, x in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opacities),
                    ("colors", colors)):
        if x.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"{name} must be float32, got {x.dtype}")
        if x.dtype != means.dtype or x.device != means.device:
            raise TypeError(f"{name} must match means' dtype and device ({means.dtype}, {means.device}), "
                            f"got ({x.dtype}, {x.device})")
    for name, x in (("means", means), ("scales", scales), ("quats", quats), ("opacities", opacities)):
        # A finite sum implies finite entries (NaN/Inf propagate); one reduction instead of an elementwise test.
        if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name} contains NaN or Inf; check the optimizer step / activations")
    for name, v in (("width", width), ("height", height), ("tile_size", tile_size)):
        if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if not near > 0 or not eps2d >= 0:
        raise ValueError(f"near must be > 0 and eps2d >= 0, got near={near}, eps2d={eps2d}")


def _resolve_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "cpu":
        require_cpu_extension("gaussians", device, dtype)
    if backend == "gsplat" and (device.type != "cuda" or dtype != torch.float32):
        raise ValueError(f"backend 'gsplat' needs float32 CUDA tensors, got {dtype} on {device}")
    if backend != "auto":
        return backend
    if dtype != torch.float32:
        return "torch"
    if device.type == "cpu":
        try:
            _ext()
            return "cpu"
        except ExtensionBuildError as err:
            reason = f"the C++ CPU kernels could not be built ({str(err)[:300]})"
    elif device.type == "cuda":
        try:
            import gsplat  # noqa: F401

            return "gsplat"
        except ImportError:
            reason = "gsplat is not installed (pip install 'recon[gsplat]')"
    else:
        reason = f"no compiled backend for device type {device.type!r}"
    # The default warning filter shows a given message once per call site.
    warnings.warn(f"recon: Gaussian rasterization falls back to the slow torch reference: {reason}", RuntimeWarning,
                  stacklevel=3)
    return "torch"


def rasterize_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                        world_to_cam: Tensor, K: Tensor, width: int, height: int, background: Tensor | None = None,
                        *, near: float = 0.01, eps2d: float = 0.3, tile_size: int = 16,
                        backend: str = "auto") -> RasterOutput:
    """Render ``N`` 3D Gaussians into one pinhole camera (3DGS / gsplat "classic" rasterization).

    Args:
        means: ``[N, 3]`` world-space centers.
        quats: ``[N, 4]`` rotations (w, x, y, z), unnormalized (normalized here, with gradient).
        scales: ``[N, 3]`` linear (already activated) standard deviations.
        opacities: ``[N]`` in (0, 1) (already activated).
        colors: ``[N, D]`` per-Gaussian colors (SH already evaluated); D = 3 is the fast path.
        world_to_cam: ``[4, 4]`` OpenCV world-to-camera matrix.
        K: ``[3, 3]`` intrinsics in pixels (pixel centers at +0.5).
        width, height: image size in pixels.
        background: ``[D]`` color behind the Gaussians; None = 0.
        near: Gaussians with camera z <= near are culled.
        eps2d: isotropic dilation (pixels^2) of every projected covariance.
        tile_size: tile edge in pixels for binning.
        backend: "auto" (cpu on CPU when the C++ kernels build, gsplat on CUDA when installed, else torch with a
            warning), "torch", "cpu" or "gsplat".

    Gradients flow to means, quats, scales, opacities and colors (not to the camera or the background) from all
    of rgb, alpha and depth. All float tensors float32 (the torch backend also accepts float64).

    Returns:
        :class:`RasterOutput`.
    Raises:
        ValueError: wrong shapes (naming the argument), non-finite means/scales/quats/opacities, bad sizes,
            unknown backend or a backend that does not fit the device.
        TypeError: non-tensor inputs or mixed dtypes/devices.
    """
    _validate(means, quats, scales, opacities, colors, world_to_cam, K, width, height, background, near, eps2d,
              tile_size)
    dev, dt = means.device, means.dtype
    name = _resolve_backend(backend, dev, dt)
    world_to_cam = world_to_cam.detach().to(device=dev, dtype=dt).contiguous()
    K = K.detach().to(device=dev, dtype=dt).contiguous()
    bg = (torch.zeros(colors.shape[1], device=dev, dtype=dt) if background is None
          else background.detach().to(device=dev, dtype=dt).contiguous())
    means, quats, scales, opacities, colors = (x.contiguous() for x in (means, quats, scales, opacities, colors))
    if name == "torch":
        from recon.renderers.gaussians._ref import rasterize_gaussians_ref

        rgb, alpha, depth, means2d, radii, depths = rasterize_gaussians_ref(
            means, quats, scales, opacities, colors, world_to_cam, K, width, height, bg, near, eps2d, tile_size)
    elif name == "gsplat":
        from recon.renderers.gaussians._gsplat import rasterize_gsplat

        rgb, alpha, depth, means2d, radii, depths = rasterize_gsplat(
            means, quats, scales, opacities, colors, world_to_cam, K, width, height, bg, near, eps2d, tile_size)
    else:
        means2d, conics, depths, radii = _ProjectFn.apply(means, quats, scales, world_to_cam, K, width, height,
                                                          float(near), float(eps2d))
        offsets, ids = _ext().bin_gaussians(means2d.detach(), conics.detach(), opacities.detach(), radii,
                                            depths.detach(), width, height, tile_size)
        rgb, alpha, depth = _RasterFn.apply(means2d, conics, opacities, colors, depths, bg, offsets, ids, width,
                                            height, tile_size)
    return RasterOutput(rgb=rgb, alpha=alpha, depth=depth, means2d=means2d, radii=radii, depths=depths.detach())
