"""The mesh ``texture`` op (and ``build_mipmaps``) with ``torch`` / ``cpu`` / ``nvdiffrast`` backends.

Conventions (docs/mesh.md): ``uv (0, 0)`` is the top-left corner of the texture as stored, texel ``(i, j)`` has its
center at ``((j + 0.5) / W, (i + 0.5) / H)``. The sampling math (bilinear, trilinear LOD, wrap / clamp, odd mip
sizes) is documented in :mod:`recon.renderers.mesh._ref_texture`, the reference twin. The ``cpu`` backend runs the
C++ kernels of ``cuda/mesh_texture`` through an autograd Function whose hand-written backward returns one gradient
per mip level; the pyramid itself is built from the base texture by differentiable torch ops, so autograd carries
the level gradients down to ``tex``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.renderers.mesh import _ref_texture as ref
from recon.renderers.mesh._backend import cpu_extension, resolve_backend

__all__ = ["BOUNDARY_MODES", "FILTER_MODES", "build_mipmaps", "texture"]

FILTER_MODES = ref.FILTER_MODES
BOUNDARY_MODES = ref.BOUNDARY_MODES
_FILTER_IDS = {"nearest": 0, "linear": 1, "linear-mipmap-linear": 2}
_BOUNDARY_IDS = {"wrap": 0, "clamp": 1}


class _TextureFn(torch.autograd.Function):
    """uv [C,H,W,2], uv_da, levels [T,h_k,w_k,D]... -> out [C,H,W,D]; gradients to uv and every level."""

    @staticmethod
    def forward(ctx, uv, uv_da, filter_id, boundary_id, *levels):
        ext = cpu_extension("mesh_texture")
        out = ext.texture_forward(list(levels), uv, uv_da, filter_id, boundary_id)
        ctx.save_for_backward(uv, uv_da, *levels)
        ctx.modes = (filter_id, boundary_id)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        uv, uv_da, *levels = ctx.saved_tensors
        need_uv = bool(ctx.needs_input_grad[0]) and ctx.modes[0] != 0  # nearest: zero uv gradient
        need_tex = any(ctx.needs_input_grad[4:])
        grads = cpu_extension("mesh_texture").texture_backward(levels, uv, uv_da, *ctx.modes,
                                                               grad_out.contiguous(), need_uv, need_tex)
        g_uv = grads[0] if ctx.needs_input_grad[0] else None
        g_levels = ([g if need else None for g, need in zip(grads[1:], ctx.needs_input_grad[4:])] if need_tex
                    else [None] * len(levels))
        return (g_uv, None, None, None, *g_levels)


def _check_float(name: str, x, ndim: tuple[int, ...], spec: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ndim:
        raise ValueError(f"{name} must have shape {spec}, got {tuple(x.shape)}")
    if x.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"{name} must be float32 (float64 on the torch backend), got {x.dtype}")


def _check_max_mip_level(max_mip_level) -> None:
    if max_mip_level is not None and (not isinstance(max_mip_level, int) or isinstance(max_mip_level, bool)
                                      or max_mip_level < 0):
        raise ValueError(f"max_mip_level must be None or an int >= 0, got {max_mip_level!r}")


def build_mipmaps(tex: Tensor, max_mip_level: int | None = None) -> list[Tensor]:
    """Mip pyramid of ``tex [Ht, Wt, D] | [C, Ht, Wt, D]``: ``[tex, level_1, ..., level_L]`` (same leading dims).

    2x2 box filter; level ``k + 1`` has size ``ceil(h_k / 2) x ceil(w_k / 2)``, odd sizes repeat their last row /
    column (exactly nvdiffrast's pyramid for power-of-two sizes). Built with torch ops, so it is differentiable and
    runs on any device. ``max_mip_level`` limits the number of levels after the base (None: down to ``1 x 1``).

    Raises:
        ValueError: ``tex`` is not 3D / 4D float with positive sizes, or ``max_mip_level`` is not None / int >= 0.
    """
    _check_float("tex", tex, (3, 4), "[Ht, Wt, D] or [C, Ht, Wt, D]")
    if min(tex.shape[-3:]) < 1:
        raise ValueError(f"tex must have positive height, width and channels, got {tuple(tex.shape)}")
    _check_max_mip_level(max_mip_level)
    return ref.build_mipmaps(tex, max_mip_level)


def _validate(tex, uv, uv_da, filter_mode, boundary_mode, max_mip_level) -> str:
    """Checks the arguments; returns the concrete filter mode."""
    _check_float("tex", tex, (3, 4), "[Ht, Wt, D] or [C, Ht, Wt, D]")
    _check_float("uv", uv, (4,), "[C, H, W, 2]")
    if uv.shape[-1] != 2:
        raise ValueError(f"uv must have shape [C, H, W, 2], got {tuple(uv.shape)}")
    C = uv.shape[0]
    if min(tex.shape[-3:]) < 1:
        raise ValueError(f"tex must have positive height, width and channels, got {tuple(tex.shape)}")
    if tex.dim() == 4 and tex.shape[0] not in (1, C):
        raise ValueError(f"tex must have shape [Ht, Wt, D] (shared) or [C, Ht, Wt, D] with C={C} (one per camera, "
                         f"as uv), got {tuple(tex.shape)}")
    if filter_mode not in FILTER_MODES:
        raise ValueError(f"filter_mode must be one of {FILTER_MODES}, got {filter_mode!r}")
    if boundary_mode not in BOUNDARY_MODES:
        raise ValueError(f"boundary_mode must be one of {BOUNDARY_MODES}, got {boundary_mode!r}")
    _check_max_mip_level(max_mip_level)
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if uv_da is not None else "linear"
    if filter_mode == "linear-mipmap-linear":
        if uv_da is None:
            raise ValueError("filter_mode 'linear-mipmap-linear' needs uv_da [C, H, W, 4] (the uv pixel derivatives "
                             "from interpolate(..., rast_db, diff_attrs=...)), got None")
        _check_float("uv_da", uv_da, (4,), "[C, H, W, 4]")
        if uv_da.shape != (*uv.shape[:3], 4):
            raise ValueError(f"uv_da must have shape [C, H, W, 4] = {(*uv.shape[:3], 4)} (as uv), "
                             f"got {tuple(uv_da.shape)}")
    for name, x in (("uv", uv), ("uv_da", uv_da)):
        if x is not None and (x.device != tex.device or x.dtype != tex.dtype):
            raise ValueError(f"{name} must match tex's dtype and device ({tex.dtype}, {tex.device}), "
                             f"got ({x.dtype}, {x.device})")
    return filter_mode


def _backend_for(backend: str, family: str, dtype: torch.dtype, *tensors) -> str:
    """resolve_backend plus the dtype rule: compiled backends take float32; ``auto`` uses torch for float64."""
    name = resolve_backend(backend, family, *tensors)
    if name != "torch" and dtype != torch.float32:
        if backend != "auto":
            raise ValueError(f"backend {backend!r} needs float32 tensors, got {dtype}; use 'torch' for {dtype}")
        name = "torch"
    return name


def texture(tex: Tensor, uv: Tensor, uv_da: Tensor | None = None, filter_mode: str = "auto",
            boundary_mode: str = "wrap", max_mip_level: int | None = None, *, backend: str = "auto") -> Tensor:
    """Sample a texture at per-pixel texture coordinates (nvdiffrast's ``texture``).

    Args:
        tex: ``[Ht, Wt, D]`` shared by all cameras, or ``[C, Ht, Wt, D]`` one per camera (``[1, Ht, Wt, D]`` is
            shared too). Any ``Ht, Wt >= 1``.
        uv: ``[C, H, W, 2]`` texture coordinates; ``(0, 0)`` = top-left corner of the stored texture, ``u`` right,
            ``v`` down. Non-finite entries sample 0. Empty pixels just sample normally (mask them afterwards).
        uv_da: ``[C, H, W, 4]`` ``(du/dx, du/dy, dv/dx, dv/dy)`` in pixels (``interpolate``'s ``out_da``), for
            mip level selection; no gradient flows into it.
        filter_mode: ``nearest``, ``linear`` (bilinear), ``linear-mipmap-linear`` (trilinear, needs ``uv_da``) or
            ``auto`` (trilinear with ``uv_da``, else bilinear).
        boundary_mode: ``wrap`` (repeat) or ``clamp`` (to the edge texels).
        max_mip_level: limit on the number of mip levels after the base (None: down to ``1 x 1``).
        backend: ``auto`` (nvdiffrast for CUDA tensors when installed, the C++ ``cpu`` kernels for float32 CPU
            tensors, else ``torch``), ``torch``, ``cpu`` or ``nvdiffrast``.

    Returns:
        ``[C, H, W, D]``, differentiable w.r.t. ``tex`` (through every mip level) and ``uv`` (not through the LOD).

    Raises:
        ValueError: wrong shapes / dtypes / devices (naming the argument), unknown modes, trilinear without
            ``uv_da``, or a backend that does not fit the tensors.
        TypeError: non-tensor inputs.
    """
    filter_mode = _validate(tex, uv, uv_da, filter_mode, boundary_mode, max_mip_level)
    name = _backend_for(backend, "mesh_texture", tex.dtype, tex, uv, uv_da)
    if filter_mode != "linear-mipmap-linear":
        uv_da = None
    if name == "torch":
        return ref.texture(tex, uv, uv_da, filter_mode, boundary_mode, max_mip_level)
    if name == "nvdiffrast":
        from recon.renderers.mesh import _nvdiffrast

        return _nvdiffrast.texture(tex, uv, uv_da, filter_mode, boundary_mode, max_mip_level)
    tex4 = (tex if tex.dim() == 4 else tex[None]).contiguous()
    if filter_mode == "linear-mipmap-linear":
        levels = [lev.contiguous() for lev in ref.build_mipmaps(tex4, max_mip_level)]
        uv_da = uv_da.detach().contiguous()
    else:
        levels = [tex4]
        uv_da = uv.new_zeros(0)
    return _TextureFn.apply(uv.contiguous(), uv_da, _FILTER_IDS[filter_mode], _BOUNDARY_IDS[boundary_mode], *levels)
