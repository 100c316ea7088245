"""Tri-plane feature sampling, the encoding of :class:`~recon.scenes.triplane.TriPlaneField`,
:class:`~recon.scenes.sdf.NeuralSDF` and the background field, with the derivatives a neural SDF trains through.

``triplane_sample(planes, u)``: ``planes`` is a list of levels, each ``[3, C, r, r]`` (the xy, xz and yz planes;
plane ``(a, b)`` reads axis ``a`` along a texel row and ``b`` down the columns, as ``grid_sample``'s (x, y)); at
points ``u [N, 3]`` in ``[-1, 1]^3`` each plane is sampled bilinearly at the point's projection, texel centers on
the corners (``align_corners=True``) and coordinates clamped to the border (their derivative 0 outside, as
``grid_sample``'s ``padding_mode="border"``): ``grid_sample``'s result up to float rounding. The result is ``[N, K]``, ``K = sum_l 3 C_l``, columns ordered by
level, then plane, then channel: the concatenation a neural SDF decodes; a K-Planes field multiplies the three
planes of a level.

``triplane_sample_vjp_u(planes, u, grad)``: ``sum_k grad[:, k] dF_k/du``, the encoding's share of a field's
spatial gradient given ``grad = dsdf/dF``. It is itself differentiable: with respect to ``grad`` (the decoder's
weights train through it), to the planes, and to ``u`` (bilinear interpolation's only second derivative, the
cross term ``d2f/dx dy``). A neural SDF computes its normal with it without a second pass through the encoding's
backward, and the eikonal loss trains the planes through it.

Differentiability: ``triplane_sample`` twice (its gradient with respect to the points is
``triplane_sample_vjp_u``, differentiable once more), enough for an eikonal or curvature loss. With the ``cpu``
backend the planes' gradients and ``triplane_sample_vjp_u``'s own gradients carry no graph: a third derivative,
or a second one through the planes' gradient (a penalty on the planes' gradient, a Hessian with respect to the
planes), needs the ``torch`` backend.

Backends: ``cpu`` (C++, ``cuda/encoding/triplane.cpp``: one pass over the points per op, every level at once,
on a channels-last copy of the planes made once per call;
the scatter into the planes accumulates in one private buffer per chunk of points (one chunk per thread),
summed in chunk order, so results do not depend on thread scheduling, only on the thread count) and ``torch`` (``grid_sample``, the twin; any device and dtype;
``triplane_sample_vjp_u`` through autograd with ``create_graph``). ``auto`` picks ``cpu`` for float32 CPU
tensors when the kernels build.
"""

from __future__ import annotations

import torch
from torch import Tensor

from recon.renderers._build import load_cpu_extension, resolve_cpu_backend

__all__ = ["triplane_sample", "triplane_sample_vjp_u"]

_FAMILY = "encoding"
_PLANES = ((0, 1), (0, 2), (1, 2))  # xy, xz, yz


def _ext():
    return load_cpu_extension(_FAMILY)


def _channels_last(planes) -> list[Tensor]:
    """The kernels' layout, ``[3, r, r, C]``: a texel's channels contiguous."""
    return [p.detach().permute(0, 2, 3, 1).contiguous() for p in planes]


def _channels_first(grads) -> list[Tensor]:
    return [g.permute(0, 3, 1, 2) for g in grads]


class _Sample(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, *planes):
        ctx.save_for_backward(u, *planes)
        ctx.cl = _channels_last(planes)
        return _ext().triplane_forward(u, ctx.cl)

    @staticmethod
    def backward(ctx, g):
        u, *planes = ctx.saved_tensors
        need_u, need_p = ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:])
        g = g.contiguous()
        gu = _SampleVjpU.apply(u, g, ctx.cl, *planes) if need_u else None
        gp = [None] * len(planes)
        if need_p:  # not differentiable again (a neural SDF trains its normals through triplane_sample_vjp_u)
            gp = _channels_first(_ext().triplane_backward(u, ctx.cl, g, False, True)[1])
        return (gu, *gp)


class _SampleVjpU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, g, cl, *planes):
        ctx.save_for_backward(u, g)
        ctx.cl = cl if cl is not None else _channels_last(planes)
        return _ext().triplane_backward(u, ctx.cl, g, True, False)[0]

    @staticmethod
    def backward(ctx, h):
        u, g = ctx.saved_tensors
        need = ctx.needs_input_grad
        n = len(ctx.cl)
        gu, gg, gp = _ext().triplane_backward_backward(u, ctx.cl, g, h.contiguous(), need[0], need[1],
                                                       any(need[3:]))
        return (gu if need[0] else None, gg if need[1] else None, None,
                *(_channels_first(gp) if any(need[3:]) else [None] * n))


def _sample_ref(planes: list[Tensor], u: Tensor) -> Tensor:
    grid = torch.stack([u[:, list(p)] for p in _PLANES])[:, :, None, :]  # [3, N, 1, 2], (x, y) = (a, b)
    out = []
    for level in planes:
        f = torch.nn.functional.grid_sample(level, grid, mode="bilinear", padding_mode="border",
                                            align_corners=True)[..., 0]  # [3, C, N]
        out.append(f.permute(2, 0, 1).reshape(len(u), -1))
    return torch.cat(out, -1)


def _check(planes, u: Tensor) -> None:
    if not isinstance(u, Tensor) or u.ndim != 2 or u.shape[1] != 3:
        raise ValueError(f"u must be a tensor [N, 3], got {getattr(u, 'shape', type(u).__name__)}")
    if not planes:
        raise ValueError("planes must hold at least one level")
    for i, p in enumerate(planes):
        if p.ndim != 4 or p.shape[0] != 3 or p.shape[2] != p.shape[3] or p.shape[2] < 2:
            raise ValueError(f"planes[{i}] must have shape [3, C, r, r] with r >= 2, got {tuple(p.shape)}")
        if p.dtype != u.dtype or p.device != u.device:
            raise TypeError(f"planes[{i}] must match u's dtype and device ({u.dtype}, {u.device}), "
                            f"got ({p.dtype}, {p.device})")


def _backend(backend: str, u: Tensor) -> str:
    return resolve_cpu_backend(_FAMILY, backend, u.device, u.dtype, "tri-plane sampling")


def triplane_sample(planes, u: Tensor, *, backend: str = "auto") -> Tensor:
    """Features ``[N, K]`` of the tri-plane levels ``planes`` (each ``[3, C, r, r]``) at ``u [N, 3]`` (module
    docstring). Differentiable with respect to ``u`` and the planes."""
    planes = list(planes)
    _check(planes, u)
    if _backend(backend, u) == "torch":
        return _sample_ref(planes, u)
    return _Sample.apply(u.contiguous(), *planes)


def triplane_sample_vjp_u(planes, u: Tensor, grad: Tensor, *, backend: str = "auto") -> Tensor:
    """``[N, 3]``: ``sum_k grad[:, k] dF_k/du`` for ``F = triplane_sample(planes, u)`` and ``grad [N, K]``;
    differentiable with respect to ``grad``, the planes and ``u`` (module docstring)."""
    planes = list(planes)
    _check(planes, u)
    K = sum(3 * p.shape[1] for p in planes)
    if grad.shape != (len(u), K):
        raise ValueError(f"grad must have shape [N, K] = {(len(u), K)}, got {tuple(grad.shape)}")
    if _backend(backend, u) == "torch":
        graph = torch.is_grad_enabled() and (u.requires_grad or grad.requires_grad
                                             or any(p.requires_grad for p in planes))
        with torch.enable_grad():
            v = u if u.requires_grad else u.detach().requires_grad_(True)
            (gu,) = torch.autograd.grad(_sample_ref(planes, v), v, grad, create_graph=graph)
        return gu
    return _SampleVjpU.apply(u.contiguous(), grad.contiguous(), None, *planes)
