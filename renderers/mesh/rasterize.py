"""The mesh raster ops ``rasterize`` and ``interpolate`` (contract: ``docs/mesh.md``).

Backends: ``torch`` is the reference twin (:mod:`recon.renderers.mesh._ref`, autograd); ``cpu`` runs the C++
kernels of ``cuda/mesh_raster`` (a tiled, binned rasterizer) through autograd Functions with hand-written backward
passes; ``nvdiffrast`` wraps nvdiffrast on CUDA (:mod:`recon.renderers.mesh._nvdiffrast`). ``auto`` picks
nvdiffrast for CUDA tensors when installed, the C++ kernels for float32 CPU tensors, the reference otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from recon.renderers.mesh._backend import cpu_extension, resolve_backend

__all__ = ["interpolate", "rasterize"]

_FAMILY = "mesh_raster"
_MAX_TRIANGLES = 1 << 24  # ids are stored as float32(id + 1)


def _ext():
    return cpu_extension(_FAMILY)


class _RasterizeFn(torch.autograd.Function):
    """pos [C,V,4] -> rast [C,H,W,4] (differentiable through u, v, ndc_z), rast_db [C,H,W,4] (not)."""

    @staticmethod
    def forward(ctx, pos, tri, height, width, with_db):
        rast, rast_db = _ext().rasterize_forward(pos, tri, height, width, with_db)
        ctx.save_for_backward(pos, tri, rast)
        ctx.mark_non_differentiable(rast_db)
        return rast, rast_db

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_rast, _grad_db):
        pos, tri, rast = ctx.saved_tensors
        grad_pos = _ext().rasterize_backward(pos, tri, rast, grad_rast.contiguous())
        return grad_pos, None, None, None, None


class _InterpolateFn(torch.autograd.Function):
    """attr [1|C,V,A], rast -> out [C,H,W,A] (differentiable w.r.t. attr and rast[..., :2]), out_da (not)."""

    @staticmethod
    def forward(ctx, attr, rast, tri, rast_db, diff_idx):
        out, out_da = _ext().interpolate_forward(attr, rast, tri, rast_db, diff_idx)
        ctx.save_for_backward(attr, rast, tri)
        out_da = out.new_empty(0) if out_da is None else out_da
        ctx.mark_non_differentiable(out_da)
        return out, out_da

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out, _grad_da):
        attr, rast, tri = ctx.saved_tensors
        grad_attr, grad_rast = _ext().interpolate_backward(attr, rast, tri, grad_out.contiguous())
        return grad_attr, grad_rast, None, None, None


def _check_shape(name: str, x, shape: tuple, spec: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, x.shape)):
        raise ValueError(f"{name} must have shape {spec}, got {tuple(x.shape)}")


def _check_float(name: str, x: Tensor) -> None:
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor (float32), got {x.dtype}")


def _check_tri(tri, device: torch.device) -> None:
    """Shape, dtype and device of ``tri [F, 3]`` (the index range is checked by :func:`_tri_int32`)."""
    _check_shape("tri", tri, (None, 3), "[F, 3]")
    if tri.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"tri must be int32 (or int64, converted), got {tri.dtype}")
    if tri.device != device:
        raise ValueError(f"tri must be on the device of the other inputs ({device}), got {tri.device}")
    if tri.shape[0] >= _MAX_TRIANGLES:
        raise ValueError(f"tri holds {tri.shape[0]} triangles; at most 2^24 - 1 are supported (float32 ids)")


# On CPU with the C++ backend, the checks below run as sequential C++ loops: every torch op on a large tensor
# wakes the intra-op thread team, which costs milliseconds on a busy machine (more than the checks themselves).
def _tri_int32(tri: Tensor, n_vertices: int, ext) -> Tensor:
    """``tri`` as contiguous int32 after checking that its indices lie in ``[0, n_vertices)``."""
    if tri.numel():
        lo, hi = ext.index_range(tri) if ext is not None else (int(tri.min()), int(tri.max()))
        if lo < 0 or hi >= n_vertices:
            raise ValueError(f"tri indices must lie in [0, {n_vertices}) (the number of vertices), got values in "
                             f"[{lo}, {hi}]")
    return tri.to(torch.int32).contiguous()


def _all_finite(x: Tensor, ext) -> bool:
    if ext is not None and x.dtype in (torch.float32, torch.float64):
        return ext.all_finite(x)
    return bool(torch.isfinite(x).all())


def _pick_backend(backend: str, dtype: torch.dtype, *tensors: Tensor) -> str:
    on_cuda = any(t.is_cuda for t in tensors)
    if backend == "auto" and not on_cuda and dtype != torch.float32:
        return "torch"  # the C++ kernels are float32-only; float64 (gradcheck) runs the reference
    name = resolve_backend(backend, _FAMILY, *tensors)
    if name == "cpu" and dtype != torch.float32:
        raise ValueError(f"backend 'cpu' needs float32 tensors, got {dtype}; use backend='torch' for {dtype}")
    return name


def rasterize(pos: Tensor, tri: Tensor, resolution: tuple[int, int], *, grad_db: bool = True,
              backend: str = "auto") -> tuple[Tensor, Tensor | None]:
    """Rasterize triangles given in clip space, one image per camera (no back-face culling).

    Args:
        pos: ``[C, V, 4]`` clip-space vertex positions per camera (``Cameras.clip_matrices`` maps world to clip).
        tri: ``[F, 3]`` int32 vertex indices (int64 is converted); both windings are drawn.
        resolution: ``(H, W)`` in pixels; pixel ``(i, j)`` samples NDC ``((2j + 1) / W - 1, (2i + 1) / H - 1)``.
        grad_db: compute ``rast_db`` (as nvdiffrast's flag of the same name); False skips it (returned as None),
            which saves writing 16 bytes per pixel when no texture filtering needs it.
        backend: "auto", "torch", "cpu" or "nvdiffrast" (see the module docstring).

    Returns:
        ``rast [C, H, W, 4]`` = ``(u, v, ndc_z, triangle_id + 1)`` with perspective-correct barycentrics ``(u, v)``
        of ``tri[id]``'s first two vertices; all 0 on empty pixels (nothing covers them within ``ndc_z in [-1, 1]``).
        Differentiable w.r.t. ``pos`` through ``u, v, ndc_z``. The nearest triangle wins, exact ties go to the
        smaller id. ``rast_db [C, H, W, 4]`` = ``(du/dx, du/dy, dv/dx, dv/dy)`` in pixels, not differentiable.

    Raises:
        ValueError: wrong shapes or dtypes (naming the argument), NaN/Inf in ``pos``, ``tri`` indices out of
            range, a bad resolution, an unknown or unusable backend.
        TypeError: non-tensor inputs.
    """
    _check_shape("pos", pos, (None, None, 4), "[C, V, 4] (clip-space x, y, z, w per camera)")
    _check_float("pos", pos)
    _check_tri(tri, pos.device)
    if (not isinstance(resolution, Sequence) or len(resolution) != 2
            or not all(isinstance(r, int) and not isinstance(r, bool) and r > 0 for r in resolution)):
        raise ValueError(f"resolution must be (H, W) with positive ints, got {resolution!r}")
    H, W = int(resolution[0]), int(resolution[1])
    name = _pick_backend(backend, pos.dtype, pos, tri)
    ext = _ext() if name == "cpu" else None
    if not _all_finite(pos, ext):
        raise ValueError("pos contains NaN or Inf; check the vertex positions and the camera matrices")
    tri = _tri_int32(tri, pos.shape[1], ext)
    if name == "torch":
        from recon.renderers.mesh import _ref

        rast, rast_db = _ref.rasterize(pos, tri, (H, W))
    elif name == "nvdiffrast":
        from recon.renderers.mesh import _nvdiffrast

        rast, rast_db = _nvdiffrast.rasterize(pos, tri, (H, W))
    else:
        rast, rast_db = _RasterizeFn.apply(pos.contiguous(), tri, H, W, bool(grad_db))
    return rast, (rast_db if grad_db else None)


def _diff_indices(diff_attrs, n_attrs: int) -> list[int]:
    if isinstance(diff_attrs, str):
        if diff_attrs != "all":
            raise ValueError(f"diff_attrs must be 'all' or a list of attribute indices, got {diff_attrs!r}")
        return list(range(n_attrs))
    try:
        idx = [int(i) for i in diff_attrs]
    except (TypeError, ValueError):
        raise ValueError(f"diff_attrs must be 'all' or a list of attribute indices, got {diff_attrs!r}") from None
    if any(i < 0 or i >= n_attrs for i in idx):
        raise ValueError(f"diff_attrs indices must lie in [0, {n_attrs}) (attr's last dimension), got {idx}")
    return idx


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor, rast_db: Tensor | None = None,
                diff_attrs: str | Sequence[int] | None = None, *,
                backend: str = "auto") -> tuple[Tensor, Tensor | None]:
    """Interpolate per-vertex attributes with the barycentrics of :func:`rasterize`.

    Args:
        attr: ``[V, A]`` shared by all cameras, or ``[C, V, A]`` per camera.
        rast: ``[C, H, W, 4]`` from :func:`rasterize` with the same ``tri``.
        tri: ``[F, 3]`` int32 vertex indices (int64 is converted).
        rast_db: optional ``[C, H, W, 4]`` from :func:`rasterize`; needed for ``out_da``.
        diff_attrs: "all" or a list of attribute indices whose screen-space derivatives to return.
        backend: "auto", "torch", "cpu" or "nvdiffrast".

    Returns:
        ``out [C, H, W, A]`` = ``u a0 + v a1 + (1 - u - v) a2`` (0 on empty pixels), differentiable w.r.t. ``attr``
        and ``rast[..., :2]``; ``out_da [C, H, W, 2 n]`` = ``(da_k/dx, da_k/dy)`` per listed attribute (not
        differentiable) when both ``rast_db`` and ``diff_attrs`` are given, otherwise None.

    Raises:
        ValueError: wrong shapes or dtypes (naming the argument), ``tri`` indices out of range, bad
            ``diff_attrs``, an unknown or unusable backend.
        TypeError: non-tensor inputs.
    """
    _check_shape("rast", rast, (None, None, None, 4), "[C, H, W, 4] (from rasterize)")
    _check_float("rast", rast)
    C, H, W, _ = rast.shape
    if not isinstance(attr, Tensor) or attr.ndim not in (2, 3):
        got = tuple(attr.shape) if isinstance(attr, Tensor) else type(attr).__name__
        raise ValueError(f"attr must have shape [V, A] or [C, V, A] with C={C}, got {got}")
    if attr.ndim == 3:
        _check_shape("attr", attr, (C, None, None), f"[V, A] or [C, V, A] with C={C}")
    _check_float("attr", attr)
    if attr.device != rast.device:
        raise ValueError(f"attr must be on rast's device ({rast.device}), got {attr.device}")
    _check_tri(tri, rast.device)
    if rast_db is not None:
        _check_shape("rast_db", rast_db, (C, H, W, 4), f"[C, H, W, 4] = {(C, H, W, 4)} like rast")
    idx = None if diff_attrs is None else _diff_indices(diff_attrs, attr.shape[-1])
    dtype = torch.promote_types(attr.dtype, rast.dtype)
    name = _pick_backend(backend, dtype, attr, rast, tri)
    tri = _tri_int32(tri, attr.shape[-2], _ext() if name == "cpu" else None)
    if name == "torch":
        from recon.renderers.mesh import _ref

        return _ref.interpolate(attr, rast, tri, rast_db, idx)
    if name == "nvdiffrast":
        from recon.renderers.mesh import _nvdiffrast

        return _nvdiffrast.interpolate(attr, rast, tri, rast_db, diff_attrs)
    want_da = rast_db is not None and idx is not None
    attr3 = attr if attr.ndim == 3 else attr.unsqueeze(0)
    db = rast_db.detach().contiguous() if want_da else None
    out, out_da = _InterpolateFn.apply(attr3.contiguous(), rast.contiguous(), tri, db, idx if want_da else [])
    return out, (out_da if want_da else None)
