"""Fused CPU kernels of Monte Carlo shading (``cuda/shading``) and their torch reference twins.

Layout: material tensors are per pixel, ``n, v, base [P, 3]``, ``rough, metal [P, 1]``; sample tensors are per
pixel and sample, ``l, u, radiance, bounce [P, S, 3]``, ``weight [P, S]`` (S samples of a pixel; a ``[P, 3]``
sample tensor means S = 1). The math is :mod:`recon.shading.brdf`'s, in the same float32 operation order.

* :func:`brdf_shade`: ``sum_s principled_brdf(n, v, l) max(n.l, 0) (radiance weight + bounce)`` -> ``[P, 3]``,
  differentiable w.r.t. ``n, base, rough, metal, radiance`` (hand-written backward); ``v, l, weight, bounce``
  get no gradient.
* :func:`sample_brdf`, :func:`pdf_brdf`: the samplers of :mod:`recon.shading.brdf` (no gradient).

Each takes ``backend``: ``"cpu"`` (the C++ kernels; float32 CPU tensors), ``"torch"`` (the twin) or ``"auto"``
(``cpu`` when it applies and the extension builds, else ``torch``; a failed build warns once).
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from recon.shading import brdf

__all__ = ["BACKENDS", "extension", "resolve_backend", "brdf_shade", "brdf_shade_ref", "sample_brdf", "pdf_brdf"]

BACKENDS = ("auto", "torch", "cpu")


def extension():
    """The compiled ``cuda/shading`` module, or None (with one warning) when it cannot be built."""
    from recon.renderers.mesh._backend import cpu_extension

    return cpu_extension("shading")


def resolve_backend(backend: str, *tensors: Tensor | None) -> str:
    """``"cpu"`` or ``"torch"`` for ``tensors``. ``ValueError`` for an unknown name, or ``"cpu"`` with tensors
    that are not float32 on the CPU, or when the extension cannot be built."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "torch":
        return backend
    fits = all(t is None or (t.device.type == "cpu" and t.dtype == torch.float32) for t in tensors)
    if backend == "auto":
        return "cpu" if fits and extension() is not None else "torch"
    if not fits:
        bad = next(t for t in tensors if t is not None and (t.device.type != "cpu" or t.dtype != torch.float32))
        raise ValueError(f"backend 'cpu' needs float32 CPU tensors, got {bad.dtype} on {bad.device}; "
                         "use 'auto' or 'torch'")
    if extension() is None:
        raise ValueError("backend 'cpu' is unavailable: the C++ extension cuda/shading could not be built")
    return "cpu"


def _check_pixels(n, v, base, rough, metal) -> int:
    for name, t, last in (("n", n, 3), ("v", v, 3), ("base", base, 3), ("rough", rough, 1), ("metal", metal, 1)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if t.ndim != 2 or t.shape != (n.shape[0], last):
            raise ValueError(f"{name} must have shape [P, {last}] with P = n.shape[0] = {n.shape[0]}, "
                             f"got {tuple(t.shape)}")
    return n.shape[0]


def _samples(name: str, t: Tensor | None, P: int, last: int | None) -> Tensor | None:
    """``t`` as ``[P, S, last]`` (``[P, S]`` for last None); a ``[P, last]`` (``[P]``) tensor becomes S = 1."""
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    want = 2 if last is None else 3
    if t.ndim == want - 1:
        t = t.unsqueeze(1)
    if t.ndim != want or t.shape[0] != P or (last is not None and t.shape[-1] != last):
        spec = "[P, S]" if last is None else f"[P, S, {last}]"
        raise ValueError(f"{name} must have shape {spec} with P = {P}, got {tuple(t.shape)}")
    return t


# ------------------------------------------------------------------------------------------------ brdf_shade

def brdf_shade_ref(n, v, l, base, rough, metal, radiance, weight, bounce=None) -> Tensor:
    """Torch twin of :func:`brdf_shade` (shapes as there, already ``[P, S, ...]``)."""
    S = l.shape[1]

    def per_sample(x: Tensor) -> Tensor:
        return x[:, None].expand(-1, S, -1)

    f = brdf.principled_brdf(per_sample(n), per_sample(v), l, per_sample(base), per_sample(rough),
                             per_sample(metal))
    cos = (per_sample(n) * l).sum(-1, keepdim=True).clamp_min(0.0)
    incident = radiance * weight[..., None]
    if bounce is not None:
        incident = incident + bounce
    return (f * cos * incident).sum(1)


class _BrdfShadeFn(torch.autograd.Function):
    """(n, v, l, base, rough, metal, radiance, weight, bounce) -> [P, 3]; gradients to n, base, rough, metal,
    radiance."""

    @staticmethod
    def forward(ctx, n, v, l, base, rough, metal, radiance, weight, bounce):
        out = extension().brdf_shade_forward(n, v, l, base, rough, metal, radiance, weight, bounce)
        ctx.save_for_backward(n, v, l, base, rough, metal, radiance, weight, bounce)
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        n, v, l, base, rough, metal, radiance, weight, bounce = ctx.saved_tensors
        need = ctx.needs_input_grad
        g_n, g_base, g_rough, g_metal, g_rad = extension().brdf_shade_backward(
            n, v, l, base, rough, metal, radiance, weight, bounce, grad_out.contiguous(), bool(need[6]))
        return (g_n if need[0] else None, None, None, g_base if need[3] else None, g_rough if need[4] else None,
                g_metal if need[5] else None, g_rad if need[6] else None, None, None)


def brdf_shade(n: Tensor, v: Tensor, l: Tensor, base: Tensor, rough: Tensor, metal: Tensor, radiance: Tensor,
               weight: Tensor, bounce: Tensor | None = None, *, backend: str = "auto") -> Tensor:
    """Shaded sum over the samples of each pixel: ``out [P, 3] = sum_s f(n, v, l_s) max(n.l_s, 0)
    (radiance_s weight_s + bounce_s)`` with ``f`` = :func:`recon.shading.brdf.principled_brdf`.

    Args:
        n, v, base: ``[P, 3]`` unit normal, unit direction to the viewer, linear base color.
        rough, metal: ``[P, 1]`` perceptual roughness and metallic in [0, 1].
        l: ``[P, S, 3]`` (or ``[P, 3]``: S = 1) unit directions to the light; no gradient.
        radiance: ``[P, S, 3]`` incident radiance along ``l`` (e.g. the environment lookup), differentiable.
        weight: ``[P, S]`` per-sample factor (MIS weight / pdf x visibility); no gradient.
        bounce: optional ``[P, S, 3]`` extra incident radiance (already weighted); no gradient.
        backend: ``auto``, ``cpu`` or ``torch`` (see the module docstring).
    Returns:
        ``[P, 3]``; differentiable w.r.t. ``n, base, rough, metal, radiance``.
    Raises:
        ValueError / TypeError: shapes or types that do not fit (naming the argument), or an unusable backend.
    """
    P = _check_pixels(n, v, base, rough, metal)
    l = _samples("l", l, P, 3)
    S = l.shape[1]
    radiance, weight, bounce = _samples("radiance", radiance, P, 3), _samples("weight", weight, P, None), \
        _samples("bounce", bounce, P, 3)
    for name, t in (("radiance", radiance), ("weight", weight), ("bounce", bounce)):
        if t is not None and t.shape[1] != S:
            raise ValueError(f"{name} must have S = l.shape[1] = {S} samples per pixel, got {tuple(t.shape)}")
    if resolve_backend(backend, n, v, l, base, rough, metal, radiance, weight, bounce) == "torch":
        return brdf_shade_ref(n, v, l, base, rough, metal, radiance, weight.detach(),
                              None if bounce is None else bounce.detach())
    c = [t.contiguous() for t in (n, v, base, rough, metal, radiance)]
    fixed = [t.detach().contiguous() for t in (l, weight)]
    extra = bounce.detach().contiguous() if bounce is not None else n.new_zeros(0)
    return _BrdfShadeFn.apply(c[0], c[1].detach(), fixed[0], c[2], c[3], c[4], c[5], fixed[1], extra)


# ------------------------------------------------------------------------------------------------ samplers

@torch.no_grad()
def sample_brdf(n: Tensor, v: Tensor, base: Tensor, rough: Tensor, metal: Tensor, u: Tensor, *,
                backend: str = "auto") -> tuple[Tensor, Tensor]:
    """:func:`recon.shading.brdf.sample_brdf` with per-pixel material: ``u [P, S, 3]`` (or ``[P, 3]``) uniform
    numbers -> ``(l [P, S, 3], pdf [P, S])`` (``[P, 3]``, ``[P]`` for a ``[P, 3]`` ``u``). No gradient."""
    P = _check_pixels(n, v, base, rough, metal)
    flat = isinstance(u, Tensor) and u.ndim == 2
    u = _samples("u", u, P, 3)
    if resolve_backend(backend, n, v, base, rough, metal, u) == "torch":
        S = u.shape[1]
        l, pdf = brdf.sample_brdf(*(x[:, None].expand(-1, S, -1) for x in (n, v, base, rough, metal)), u)
    else:
        l, pdf = extension().sample_brdf(*(x.contiguous() for x in (n, v, base, rough, metal, u)))
    return (l[:, 0], pdf[:, 0]) if flat else (l, pdf)


@torch.no_grad()
def pdf_brdf(n: Tensor, v: Tensor, l: Tensor, base: Tensor, rough: Tensor, metal: Tensor, *,
             backend: str = "auto") -> Tensor:
    """:func:`recon.shading.brdf.pdf_brdf` with per-pixel material: ``l [P, S, 3]`` (or ``[P, 3]``) ->
    ``pdf [P, S]`` (``[P]``). No gradient."""
    P = _check_pixels(n, v, base, rough, metal)
    flat = isinstance(l, Tensor) and l.ndim == 2
    l = _samples("l", l, P, 3)
    if resolve_backend(backend, n, v, l, base, rough, metal) == "torch":
        S = l.shape[1]
        x = [t[:, None].expand(-1, S, -1) for t in (n, v, base, rough, metal)]
        pdf = brdf.pdf_brdf(x[0], x[1], l, x[2], x[3], x[4])
    else:
        pdf = extension().pdf_brdf(*(t.contiguous() for t in (n, v, l, base, rough, metal)))
    return pdf[:, 0] if flat else pdf
