"""Ray casting of 3D Gaussians: :class:`GaussianRayCaster` (a BVH built once, many ray queries) and
:func:`raycast_gaussians`, with ``cpu`` / ``torch`` backends.

Model (3DGRT-style "maximum response" evaluation). A ray ``x(t) = o + t d`` meets Gaussian ``i`` where its
response along the ray peaks: in the Gaussian's canonical frame ``M = S^-1 R^T``, ``p = M (o - mu)``,
``q = M d``, ``t* = -(p.q)/(q.q)`` and ``m2 = |p + t* q|^2``, so ``alpha = min(0.99, opacity exp(-m2 / 2))``.
Hits with ``tmin <= t* <= tmax`` and unclamped alpha >= 1/255 are composited front to back in order of
``(key, index)`` -- the key is the center's projection on the ray ``(mu - o).d / |d|^2`` ("center", the
default, the rasterizer's order) or ``t*`` ("hit") -- stopping before the hit that would take the transmittance
below 1e-4: the thresholds of the rasterizer. Outputs per ray: ``features = sum_i w_i c_i``,
``alpha = 1 - T``, ``depth = sum_i w_i key_i`` (unnormalized, in units of ``d``).

How it differs from rasterization (``rasterize.py``, 3DGS's EWA splatting): the rasterizer evaluates each
Gaussian's *2D projection* under a local affine approximation of the perspective map, dilated by ``eps2d``
(0.3 px^2), at the pixel center, and sorts by the Gaussians' center depths once per tile. The ray caster
evaluates the exact 3D Gaussian along each ray (no affine approximation, no dilation) and sorts per ray by
``t*``. The images agree where Gaussians are small against their distance and do not interpenetrate; they
differ for sub-pixel Gaussians (the dilation spreads them), near the image border of wide fields of view (the
affine approximation), and where overlapping Gaussians swap order. Ray casting needs no pinhole projection, so
it renders any camera model (fisheye, OpenCV distortion) and arbitrary rays (shadow rays, reflections).

* ``cpu``: C++ (``cuda/gaussians_rt``): a binary BVH (binned SAH, leaves of <= 4) over each Gaussian's
  bounding box of its alpha = 1/255 ellipsoid (``k = sqrt(2 ln(255 opacity))`` standard deviations, as
  3DGRT/RayGauss choose the extent from the opacity); an ordered depth-first traversal (each stack entry
  carries a lower bound of the keys below it; a pending hit is composited once no entry can precede it) or,
  for packets of rays from one origin, a cone-culled candidate list scanned per ray; a hand-written backward
  over the hits the forward pass recorded. ``transmittance`` (shadow rays) is an unordered product over a
  second tree built for it on its first call: eight-wide nodes and leaf blocks of up to eight Gaussians, each
  tested with one AVX2 operation. See ``docs/raycast.md``.
* ``torch``: the reference twin (every ray against every Gaussian), any device and dtype.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.renderers._build import load_cpu_extension, resolve_cpu_backend
from recon.renderers.gaussians.rasterize import _check_shape as _check

__all__ = ["BACKENDS", "GaussianRayCaster", "RaycastOutput", "raycast_gaussians"]

BACKENDS = ("auto", "torch", "cpu")
ORDERS = ("center", "hit")  # index = the C++ kernels' order code
_FAMILY = "gaussians_rt"


@dataclass
class RaycastOutput:
    """Ray casting result for ``R`` rays.

    Attributes:
        features: ``[R, D]`` ``sum_i w_i c_i`` (no background; add ``(1 - alpha) * background``).
        alpha: ``[R, 1]`` ``1 - T_final``.
        depth: ``[R, 1]`` ``sum_i w_i t*_i``, unnormalized (divide by alpha), in units of the ray direction.
        n_hits: ``[R]`` number of composited hits (int).
    """

    features: Tensor
    alpha: Tensor
    depth: Tensor
    n_hits: Tensor


def _ext():
    return load_cpu_extension(_FAMILY)


def _resolve(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    return resolve_cpu_backend(_FAMILY, backend, device, dtype, "Gaussian ray casting",
                               slow_note="every ray against every Gaussian: slow, O(rays x Gaussians) memory; the "
                                         "compiled ray caster takes float32 CPU tensors")


class _TraceFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, opacities, colors, origins, dirs, bvh, tmin, tmax, order, packet):
        feats, alpha, depth, final_T, n_hits, hit_prims, offsets = bvh.trace(origins, dirs, tmin, tmax, colors,
                                                                            order, packet)
        ctx.save_for_backward(colors, origins, dirs, final_T, hit_prims, offsets)
        ctx.bvh, ctx.span, ctx.order = bvh, (tmin, tmax), order
        ctx.mark_non_differentiable(n_hits)
        return feats, alpha, depth, n_hits

    @staticmethod
    def backward(ctx, v_feats, v_alpha, v_depth, _v_n):
        colors, origins, dirs, final_T, hit_prims, offsets = ctx.saved_tensors
        grads = ctx.bvh.trace_backward(origins, dirs, *ctx.span, colors, ctx.order, final_T, hit_prims, offsets,
                                       v_feats.contiguous(), v_alpha.contiguous(), v_depth.contiguous())
        return (*grads, None, None, None, None, None, None, None)


class GaussianRayCaster:
    """A ray caster over one set of ``N`` Gaussians: the BVH is built once here; :meth:`trace` and
    :meth:`transmittance` take any number of rays.

    Args:
        means ``[N, 3]``, quats ``[N, 4]`` (w, x, y, z, unnormalized), scales ``[N, 3]`` (activated standard
        deviations), opacities ``[N]`` (activated): gradients of :meth:`trace` flow to these tensors.
        backend: "auto" (cpu for float32 CPU tensors when the C++ kernels build, else torch), "cpu" or "torch".
    Raises:
        ValueError / TypeError on wrong shapes, dtypes, devices or non-finite values.
    """

    def __init__(self, means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, *, backend: str = "auto"):
        _check("means", means, (None, 3), "[N, 3]")
        N = means.shape[0]
        _check("quats", quats, (N, 4), f"[N, 4] with N={N} (w, x, y, z)")
        _check("scales", scales, (N, 3), f"[N, 3] with N={N}")
        _check("opacities", opacities, (N,), f"[N] with N={N}")
        for name, x in (("quats", quats), ("scales", scales), ("opacities", opacities)):
            if x.dtype != means.dtype or x.device != means.device:
                raise TypeError(f"{name} must match means' dtype and device ({means.dtype}, {means.device}), "
                                f"got ({x.dtype}, {x.device})")
        if not means.is_floating_point():
            raise TypeError(f"means must be a float tensor, got {means.dtype}")
        for name, x in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opacities)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or Inf")
        self.params = tuple(x.contiguous() for x in (means, quats, scales, opacities))
        self.backend = _resolve(backend, means.device, means.dtype)
        self._bvh = (_ext().Bvh(*(x.detach() for x in self.params)) if self.backend == "cpu" else None)

    def __len__(self) -> int:
        return self.params[0].shape[0]

    def _rays(self, origins: Tensor, dirs: Tensor, tmin: float, tmax: float) -> tuple[Tensor, Tensor]:
        _check("origins", origins, (None, 3), "[R, 3]")
        _check("dirs", dirs, (origins.shape[0], 3), f"[R, 3] with R={origins.shape[0]}")
        if not (tmin >= 0 and tmax > tmin):
            raise ValueError(f"need 0 <= tmin < tmax, got tmin={tmin}, tmax={tmax}")
        for name, x in (("origins", origins), ("dirs", dirs)):
            if not bool(torch.isfinite(x).all()):
                raise ValueError(f"{name} contains NaN or Inf")
        ref = self.params[0]
        return (origins.detach().to(ref).contiguous(), dirs.detach().to(ref).contiguous())

    def trace(self, origins: Tensor, dirs: Tensor, colors: Tensor, *, tmin: float = 0.0,
              tmax: float = math.inf, order: str = "center", packet: int = 1) -> RaycastOutput:
        """Composite the Gaussians along ``R`` rays ``origins [R, 3] + t dirs [R, 3]`` (directions need not be
        unit; ``t`` is in their units). ``colors [N, D]``: per-Gaussian features to composite (any D >= 1).
        ``order``: "center" composites in order of the centers' projections on the ray,
        ``(mu - o).d / |d|^2`` (the rasterizer's center-depth order, so a scene trained by rasterization looks
        the same); "hit" in order of ``t*`` (3DGRT's). ``depth`` sums ``w`` times that key.
        ``packet``: the rays come in groups of this many consecutive rays (e.g. a camera's 8 x 8 pixel tiles);
        a group whose rays share one origin and lie in a narrow cone is traced together (one BVH traversal for
        the group's cone, then a per-ray scan of its candidates): same result, several times faster for
        primary rays. 1 traces every ray alone.
        Differentiable w.r.t. the Gaussians' parameters and ``colors`` (not the rays)."""
        if order not in ORDERS:
            raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
        if not isinstance(packet, int) or packet < 1:
            raise ValueError(f"packet must be a positive int, got {packet!r}")
        origins, dirs = self._rays(origins, dirs, tmin, tmax)
        _check("colors", colors, (len(self), None), f"[N, D] with N={len(self)}")
        if colors.shape[1] < 1:
            raise ValueError(f"colors must have at least one channel, got {tuple(colors.shape)}")
        colors = colors.to(self.params[0].dtype).contiguous()
        if self.backend == "torch":
            from recon.renderers.gaussians._ref_raycast import raycast_ref

            feats, alpha, depth, n = raycast_ref(*self.params, colors, origins, dirs, tmin, tmax, order)
        else:
            feats, alpha, depth, n = _TraceFn.apply(*self.params, colors, origins, dirs, self._bvh, float(tmin),
                                                    float(min(tmax, 3.0e38)), ORDERS.index(order), packet)
        return RaycastOutput(features=feats, alpha=alpha[:, None], depth=depth[:, None], n_hits=n)

    @torch.no_grad()
    def transmittance(self, origins: Tensor, dirs: Tensor, *, tmin: float = 0.0, tmax: float = math.inf) -> Tensor:
        """``[R]`` fraction of light passing along each ray between ``tmin`` and ``tmax``: the product of
        ``1 - alpha`` over every hit there (order does not matter), set to 0 once below 1e-4 (the ray is
        then treated as blocked and the traversal stops). Not differentiable."""
        origins, dirs = self._rays(origins, dirs, tmin, tmax)
        if self.backend == "torch":
            from recon.renderers.gaussians._ref_raycast import transmittance_ref

            return transmittance_ref(*(x.detach() for x in self.params), origins, dirs, tmin, tmax)
        return self._bvh.transmittance(origins, dirs, float(tmin), float(min(tmax, 3.0e38)))

    @property
    def stats(self) -> dict:
        """BVH statistics (``cpu`` backend): nodes, Gaussians stored (those that can reach alpha 1/255), depth."""
        if self._bvh is None:
            return {}
        return {"nodes": self._bvh.num_nodes, "gaussians": self._bvh.num_prims, "depth": self._bvh.depth}


def raycast_gaussians(means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor,
                      origins: Tensor, dirs: Tensor, *, tmin: float = 0.0, tmax: float = math.inf,
                      order: str = "center", backend: str = "auto") -> RaycastOutput:
    """One-shot :class:`GaussianRayCaster` ``(means, quats, scales, opacities).trace(origins, dirs, colors)``;
    see the class for shapes. Builds the BVH for this call."""
    return GaussianRayCaster(means, quats, scales, opacities, backend=backend).trace(
        origins, dirs, colors, tmin=tmin, tmax=tmax, order=order)
