"""Front-to-back compositing of packed ray samples: the volume renderer's core, shared by every field.

Layout (nerfacc's packed samples): ray ``r`` owns samples ``offsets[r] .. offsets[r + 1] - 1``, sorted by depth,
each an interval ``[t_start, t_end]`` along the ray (in units of its direction) with a color (any number of
channels) and either a density (``mode="density"``: opacity ``a = 1 - exp(-sigma (t_end - t_start))``, the
exact integral of a density constant over the interval) or an opacity (``mode="alpha"``: NeuS's discrete
alphas). With ``T_i = prod_{j < i} (1 - a_j)`` a sample is composited while ``T_i >= t_eps`` (early stop at
1e-4 by default, as nerfacc) with weight ``w_i = T_i a_i``:

    rgb = sum_i w_i c_i,   opacity = sum_i w_i,   depth = sum_i w_i (t_start_i + t_end_i) / 2  (unnormalized)

Backends: ``cpu`` (C++, ``cuda/volume``: a ray per iteration, hand-written backward over the same samples) and
``torch`` (``_ref.py``, any device and dtype). Gradients reach the values, the colors and the interval ends.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from recon.renderers._build import load_cpu_extension, resolve_cpu_backend

__all__ = ["BACKENDS", "VolumeOutput", "composite"]

BACKENDS = ("auto", "torch", "cpu")
MODES = ("density", "alpha")
_FAMILY = "volume"


@dataclass
class VolumeOutput:
    """Compositing result for ``R`` rays and ``S`` samples.

    Attributes:
        rgb: ``[R, D]`` ``sum_i w_i c_i`` (no background; add ``(1 - opacity) * background``).
        opacity: ``[R, 1]`` ``sum_i w_i``.
        depth: ``[R, 1]`` ``sum_i w_i t_mid_i``, unnormalized (divide by opacity for the expected depth).
        weights: ``[S]`` ``w_i`` (0 for samples after the early stop), for losses on the weights.
        count: ``[R]`` samples composited per ray (int32).
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    weights: Tensor
    count: Tensor


class _CompositeFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, colors, t_starts, t_ends, offsets, mode, t_eps):
        rgb, opacity, depth, weights, count = _ext().composite_forward(values, colors, t_starts, t_ends, offsets,
                                                                      mode, t_eps)
        ctx.save_for_backward(values, colors, t_starts, t_ends, offsets, count)
        ctx.mode = mode
        ctx.mark_non_differentiable(count)
        return rgb, opacity, depth, weights, count

    @staticmethod
    def backward(ctx, v_rgb, v_opacity, v_depth, v_weights, _v_count):
        values, colors, t_starts, t_ends, offsets, count = ctx.saved_tensors
        grads = _ext().composite_backward(values, colors, t_starts, t_ends, offsets, ctx.mode, count,
                                          *(g.contiguous() for g in (v_rgb, v_opacity, v_depth, v_weights)))
        return (*grads[:2], *grads[2:], None, None, None)


def _ext():
    return load_cpu_extension(_FAMILY)


def _resolve(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    return resolve_cpu_backend(_FAMILY, backend, device, dtype, "volume compositing")


def _validate(values, colors, t_starts, t_ends, offsets, mode, t_eps) -> None:
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if not (0.0 <= t_eps < 1.0):
        raise ValueError(f"t_eps must be in [0, 1), got {t_eps}")
    for name, x in (("values", values), ("colors", colors), ("t_starts", t_starts), ("t_ends", t_ends),
                    ("offsets", offsets)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    S = values.shape[0] if values.ndim == 1 else -1
    if values.ndim != 1:
        raise ValueError(f"values must have shape [S], got {tuple(values.shape)}")
    if colors.ndim != 2 or colors.shape[0] != S or colors.shape[1] < 1:
        raise ValueError(f"colors must have shape [S, D] with S={S}, D >= 1, got {tuple(colors.shape)}")
    for name, x in (("t_starts", t_starts), ("t_ends", t_ends)):
        if x.shape != (S,):
            raise ValueError(f"{name} must have shape [S] with S={S}, got {tuple(x.shape)}")
    if offsets.ndim != 1 or len(offsets) < 1 or offsets.dtype != torch.int64:
        raise ValueError(f"offsets must be an int64 tensor [R + 1], got {offsets.dtype} {tuple(offsets.shape)}")
    if offsets.device != values.device:
        raise ValueError(f"offsets must be on the values' device ({values.device}), got {offsets.device}")
    if int(offsets[0]) != 0 or int(offsets[-1]) != S or bool((offsets[1:] < offsets[:-1]).any()):
        raise ValueError(f"offsets must be non-decreasing from 0 to the sample count {S}")
    for name, x in (("values", values), ("colors", colors), ("t_starts", t_starts), ("t_ends", t_ends)):
        if x.dtype != values.dtype or x.device != values.device or not x.is_floating_point():
            raise TypeError(f"{name} must be floating point like values ({values.dtype}, {values.device}), "
                            f"got ({x.dtype}, {x.device})")


def _validate_samples(values, colors, t_starts, t_ends, mode) -> None:
    """The per-sample checks (the cpu kernel makes them itself, in one parallel pass, with the same messages)."""
    if not bool(torch.isfinite(values).all()) or bool((values < 0).any()) or (
            mode == "alpha" and bool((values > 1).any())):
        raise ValueError("values must be finite and " + (">= 0 (densities)" if mode == "density"
                                                          else "in [0, 1] (alphas)"))
    if not bool(torch.isfinite(colors).all()):
        raise ValueError("colors contains NaN or Inf")
    if not bool(torch.isfinite(t_starts).all() & torch.isfinite(t_ends).all()):
        raise ValueError("t_starts / t_ends contain NaN or Inf")
    if bool((t_ends < t_starts).any()):
        raise ValueError("t_ends must be >= t_starts")


def composite(values: Tensor, colors: Tensor, t_starts: Tensor, t_ends: Tensor, offsets: Tensor, *,
              mode: str = "density", t_eps: float = 1e-4, backend: str = "auto") -> VolumeOutput:
    """Composite packed samples front to back (module docstring).

    Args:
        values: ``[S]`` densities (``mode="density"``, >= 0) or opacities (``mode="alpha"``, in [0, 1]).
        colors: ``[S, D]``. t_starts, t_ends: ``[S]``. offsets: ``[R + 1]`` int64, ``offsets[-1] == S``.
        t_eps: early stop: a sample whose transmittance is below this is not composited.
        backend: "auto" (cpu for float32 CPU tensors when the C++ kernels build), "cpu" or "torch".
    Raises:
        ValueError / TypeError naming the argument for wrong shapes, dtypes, NaN, negative densities, alphas
        outside [0, 1], reversed intervals or offsets that do not partition the samples (the per-sample checks
        run inside the cpu kernel, one parallel pass).
    """
    _validate(values, colors, t_starts, t_ends, offsets, mode, t_eps)
    chosen = _resolve(backend, values.device, values.dtype)
    if chosen == "torch":
        from recon.renderers.volume._ref import composite_ref

        _validate_samples(values, colors, t_starts, t_ends, mode)
        rgb, opacity, depth, weights, count = composite_ref(values, colors, t_starts, t_ends, offsets, mode, t_eps)
    else:
        rgb, opacity, depth, weights, count = _CompositeFn.apply(
            values.contiguous(), colors.contiguous(), t_starts.contiguous(), t_ends.contiguous(),
            offsets.contiguous(), MODES.index(mode), float(t_eps))
    return VolumeOutput(rgb=rgb, opacity=opacity[:, None], depth=depth[:, None], weights=weights, count=count)
