"""Principled metallic-roughness BRDF (glTF 2.0 / UE4 style) and its importance samplers.

Conventions for every function: world-space tensors, last dim 3, leading dims broadcast; ``n`` the unit shading
normal, ``v`` the unit direction from the surface point TO the viewer, ``l`` the unit direction to the light;
``base_color [..., 3]`` linear, ``roughness [..., 1]`` and ``metallic [..., 1]`` in [0, 1]. Roughness is the
perceptual one: ``alpha = roughness^2``, clamped to ``alpha >= ALPHA_MIN = 1e-3`` (roughness ~0.032) because below
that D is a spike that float32 cannot integrate and its gradients explode. The BRDF is returned WITHOUT the cosine
``n.l``. Everything is differentiable in float32 and float64, with finite gradients everywhere: dot products that
enter a division are clamped to ``>= 1e-4`` and the result is masked to 0 where ``n.l <= 0`` or ``n.v <= 0``.

Sampling outputs carry autograd history through their inputs; the usual estimator ``f(l) cos / pdf`` treats ``l``
and ``pdf`` as constants, so call the samplers under ``torch.no_grad()`` (or detach) unless you mean otherwise.
"""

from __future__ import annotations

import math

import torch

__all__ = [
    "ALPHA_MIN", "roughness_to_alpha", "ggx_d", "smith_g2_height_correlated", "schlick_fresnel",
    "principled_brdf", "principled_brdf_parts", "sample_ggx_vndf", "pdf_ggx", "sample_cosine", "pdf_cosine",
    "sample_brdf", "pdf_brdf", "specular_probability",
]

ALPHA_MIN = 1e-3
# Floor for cosines that are divided by; the masked-out region never uses the clamped value, it only keeps the
# discarded branch of torch.where finite so that its (zero) gradient is not NaN.
_COS_EPS = 1e-4
_LUMA = (0.2126, 0.7152, 0.0722)  # Rec. 709 luminance, for the lobe-selection weights
_F0_DIELECTRIC = 0.04


def _check(name: str, t: torch.Tensor, last: int) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.ndim == 0 or t.shape[-1] != last:
        raise ValueError(f"{name} must have shape [..., {last}], got {tuple(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point (float32 or float64), got {t.dtype}")


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).sum(-1, keepdim=True)


def _safe_normalize(x: torch.Tensor) -> torch.Tensor:
    # sqrt of a clamped squared norm: a zero vector maps to zero with a finite (zero-ish) gradient, not NaN.
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True).clamp_min(1e-20))


def _luma(c: torch.Tensor) -> torch.Tensor:
    return c[..., 0:1] * _LUMA[0] + c[..., 1:2] * _LUMA[1] + c[..., 2:3] * _LUMA[2]


def roughness_to_alpha(roughness: torch.Tensor) -> torch.Tensor:
    """GGX width ``alpha = roughness^2`` clamped to ``>= ALPHA_MIN``; same shape as ``roughness``."""
    return roughness.square().clamp_min(ALPHA_MIN)


def ggx_d(n_dot_h: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """GGX / Trowbridge-Reitz normal distribution ``D(h)``, normalized so that ``int D(h) (n.h) dh = 1``.

    ``n_dot_h [...]`` and ``alpha [...]`` broadcast; returns their broadcast shape, 0 where ``n.h <= 0``.
    """
    a2 = alpha * alpha
    nh = n_dot_h.clamp(0.0, 1.0)
    den = nh * nh * (a2 - 1.0) + 1.0  # >= a2 >= 1e-6, so D stays finite
    d = a2 / (math.pi * den * den)
    return torch.where(n_dot_h > 0, d, torch.zeros_like(d))


def smith_g2_height_correlated(n_dot_v: torch.Tensor, n_dot_l: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Visibility term ``V = G2 / (4 n.l n.v)`` of the height-correlated Smith GGX masking-shadowing function.

    ``V = 0.5 / (n.l sqrt(n.v^2 (1 - a^2) + a^2) + n.v sqrt(n.l^2 (1 - a^2) + a^2))`` (Heitz 2014). Inputs broadcast;
    cosines are clamped to ``>= 1e-4`` so the result is finite (callers mask backfacing pairs).
    """
    a2 = alpha * alpha
    nv = n_dot_v.clamp(_COS_EPS, 1.0)
    nl = n_dot_l.clamp(_COS_EPS, 1.0)
    gv = nl * torch.sqrt(nv * nv * (1.0 - a2) + a2)
    gl = nv * torch.sqrt(nl * nl * (1.0 - a2) + a2)
    return 0.5 / (gv + gl)


def schlick_fresnel(f0: torch.Tensor, v_dot_h: torch.Tensor) -> torch.Tensor:
    """Schlick's Fresnel ``F = f0 + (1 - f0) (1 - v.h)^5``; ``f0 [..., 3]``, ``v_dot_h [..., 1]`` -> ``[..., 3]``."""
    return f0 + (1.0 - f0) * (1.0 - v_dot_h.clamp(0.0, 1.0)).pow(5)


def _f0(base_color: torch.Tensor, metallic: torch.Tensor) -> torch.Tensor:
    return _F0_DIELECTRIC * (1.0 - metallic) + base_color * metallic


def principled_brdf_parts(n, v, l, base_color, roughness, metallic) -> tuple[torch.Tensor, torch.Tensor]:
    """Diffuse and specular parts of :func:`principled_brdf`, each ``[..., 3]`` (without the cosine).

    diffuse = (1 - metallic) base_color / pi (Lambert); specular = D V F with F0 = lerp(0.04, base_color, metallic).
    Both are 0 where ``n.l <= 0`` or ``n.v <= 0``.

    Raises:
        ValueError / TypeError: a tensor with the wrong last dim or a non-float dtype (the message names it).
    """
    for name, t, last in (("n", n, 3), ("v", v, 3), ("l", l, 3), ("base_color", base_color, 3),
                          ("roughness", roughness, 1), ("metallic", metallic, 1)):
        _check(name, t, last)
    n_dot_l, n_dot_v = _dot(n, l), _dot(n, v)
    h = _safe_normalize(v + l)
    alpha = roughness_to_alpha(roughness)
    spec = (ggx_d(_dot(n, h), alpha) * smith_g2_height_correlated(n_dot_v, n_dot_l, alpha)
            * schlick_fresnel(_f0(base_color, metallic), _dot(v, h)))
    diff = ((1.0 - metallic) * base_color / math.pi).expand_as(spec)
    front = (n_dot_l > 0) & (n_dot_v > 0)
    zero = torch.zeros_like(spec)
    return torch.where(front, diff, zero), torch.where(front, spec, zero)


def principled_brdf(n, v, l, base_color, roughness, metallic) -> torch.Tensor:
    """Principled metallic-roughness BRDF ``f(v, l) [..., 3]`` = Lambert diffuse + GGX specular, without the cosine.

    Args:
        n, v, l: ``[..., 3]`` unit normal, direction to the viewer, direction to the light (world space).
        base_color: ``[..., 3]`` linear. roughness, metallic: ``[..., 1]`` in [0, 1]; alpha = roughness^2 >= 1e-3.
    Returns:
        ``[..., 3]``, 0 where ``n.l <= 0`` or ``n.v <= 0``. Reciprocal: ``f(v, l) == f(l, v)``.
    """
    diff, spec = principled_brdf_parts(n, v, l, base_color, roughness, metallic)
    return diff + spec


def _frame(n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # Branchless orthonormal basis (Duff et al. 2017): continuous except across n.z = 0, never degenerate.
    nx, ny, nz = n[..., 0:1], n[..., 1:2], n[..., 2:3]
    sign = torch.where(nz >= 0, torch.ones_like(nz), -torch.ones_like(nz))
    a = -1.0 / (sign + nz)
    b = nx * ny * a
    t = torch.cat([1.0 + sign * nx * nx * a, sign * b, -sign * nx], -1)
    s = torch.cat([b, sign + ny * ny * a, -ny], -1)
    return t, s


def _to_world(x_local: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    t, s = _frame(n)
    return x_local[..., 0:1] * t + x_local[..., 1:2] * s + x_local[..., 2:3] * n


def sample_ggx_vndf(n: torch.Tensor, v: torch.Tensor, alpha: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Sample ``l [..., 3]`` by reflecting ``v`` about a GGX visible normal (Heitz 2018, "Sampling the GGX
    Distribution of Visible Normals").

    Args:
        n, v: ``[..., 3]`` unit vectors with ``n.v > 0`` (for ``n.v <= 0`` the result is finite but meaningless).
        alpha: ``[..., 1]`` GGX width (use :func:`roughness_to_alpha`). u: ``[..., 2]`` uniform in [0, 1).
    Returns:
        ``l [..., 3]`` unit; it may point below the surface (the BRDF is 0 there). Its density is :func:`pdf_ggx`.
    """
    t, s = _frame(n)
    vx, vy = _dot(v, t), _dot(v, s)
    vz = _dot(v, n).clamp_min(_COS_EPS)
    vh = _safe_normalize(torch.cat([alpha * vx, alpha * vy, vz], -1))
    lensq = vh[..., 0:1] ** 2 + vh[..., 1:2] ** 2
    inv_len = torch.rsqrt(lensq.clamp_min(1e-20))
    zero, one = torch.zeros_like(lensq), torch.ones_like(lensq)
    t1 = torch.where(lensq > 1e-14, torch.cat([-vh[..., 1:2] * inv_len, vh[..., 0:1] * inv_len, zero], -1),
                     torch.cat([one, zero, zero], -1))
    t2 = torch.linalg.cross(vh, t1, dim=-1)
    r = torch.sqrt(u[..., 0:1])
    phi = 2.0 * math.pi * u[..., 1:2]
    p1, p2 = r * torch.cos(phi), r * torch.sin(phi)
    blend = 0.5 * (1.0 + vh[..., 2:3])
    p2 = (1.0 - blend) * torch.sqrt((1.0 - p1 * p1).clamp_min(0.0)) + blend * p2
    nh = p1 * t1 + p2 * t2 + torch.sqrt((1.0 - p1 * p1 - p2 * p2).clamp_min(0.0)) * vh
    h_local = _safe_normalize(torch.cat([alpha * nh[..., 0:1], alpha * nh[..., 1:2], nh[..., 2:3].clamp_min(0.0)], -1))
    h = _to_world(h_local, n)
    return 2.0 * _dot(v, h) * h - v


def pdf_ggx(n: torch.Tensor, v: torch.Tensor, l: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Solid-angle density ``[...]`` of ``l`` under :func:`sample_ggx_vndf`, over the whole sphere of ``l``.

    ``pdf = D_v(h) / (4 v.h) = D(h) G1(v) / (4 n.v) = D(h) / (2 (n.v + sqrt(a^2 + (1 - a^2) n.v^2)))`` with
    ``h = normalize(v + l)``. 0 where ``n.v <= 0`` or ``n.h <= 0``. Below-horizon ``l`` keep their density (the
    sampler does produce them), so this integrates to 1 over the sphere.
    """
    n_dot_v = _dot(n, v)
    nv = n_dot_v.clamp(_COS_EPS, 1.0)
    a2 = alpha * alpha
    pdf = ggx_d(_dot(n, _safe_normalize(v + l)), alpha) / (2.0 * (nv + torch.sqrt(a2 + (1.0 - a2) * nv * nv)))
    return torch.where(n_dot_v > 0, pdf, torch.zeros_like(pdf)).squeeze(-1)


def sample_cosine(n: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Cosine-weighted hemisphere sample ``l [..., 3]`` around ``n [..., 3]`` from ``u [..., 2]`` in [0, 1)."""
    r = torch.sqrt(u[..., 0:1])
    phi = 2.0 * math.pi * u[..., 1:2]
    local = torch.cat([r * torch.cos(phi), r * torch.sin(phi), torch.sqrt((1.0 - u[..., 0:1]).clamp_min(0.0))], -1)
    return _to_world(local, n)


def pdf_cosine(n: torch.Tensor, l: torch.Tensor) -> torch.Tensor:
    """Density ``[...]`` of :func:`sample_cosine`: ``max(n.l, 0) / pi``."""
    return (_dot(n, l).clamp_min(0.0) / math.pi).squeeze(-1)


def specular_probability(n, v, base_color, metallic) -> torch.Tensor:
    """Probability ``[..., 1]`` that :func:`sample_brdf` picks the specular lobe.

    ``luma(F_schlick(F0, n.v)) / (luma(F_schlick(F0, n.v)) + luma((1 - metallic) base_color))``, clamped to
    [0.1, 0.9] so that neither lobe is ever starved (a lobe with probability 0 would make the mixture pdf 0 where
    the other lobe's BRDF is not).
    """
    w_spec = _luma(schlick_fresnel(_f0(base_color, metallic), _dot(n, v).clamp(0.0, 1.0)))
    w_diff = _luma((1.0 - metallic) * base_color)
    return (w_spec / (w_spec + w_diff).clamp_min(1e-8)).clamp(0.1, 0.9)


def sample_brdf(n, v, base_color, roughness, metallic, u) -> tuple[torch.Tensor, torch.Tensor]:
    """One-sample mixture sampling of the principled BRDF: ``u [..., 3]`` -> ``(l [..., 3], pdf [...])``.

    ``u[..., 0] < p_spec`` (:func:`specular_probability`) picks the GGX visible-normal lobe, else the cosine lobe;
    ``u[..., 1:3]`` drive the chosen lobe. ``pdf`` is the mixture density :func:`pdf_brdf` at ``l`` (the
    one-sample MIS estimator is ``f(v, l) n.l / pdf``). Other shapes as in :func:`principled_brdf`.
    """
    _check("u", u, 3)
    p_spec = specular_probability(n, v, base_color, metallic)
    l_spec = sample_ggx_vndf(n, v, roughness_to_alpha(roughness), u[..., 1:3])
    l_diff = sample_cosine(n, u[..., 1:3])
    l = torch.where(u[..., 0:1] < p_spec, l_spec, l_diff)
    return l, pdf_brdf(n, v, l, base_color, roughness, metallic)


def pdf_brdf(n, v, l, base_color, roughness, metallic) -> torch.Tensor:
    """Mixture density ``[...]`` of :func:`sample_brdf`: ``p_spec pdf_ggx + (1 - p_spec) pdf_cosine``."""
    p_spec = specular_probability(n, v, base_color, metallic).squeeze(-1)
    alpha = roughness_to_alpha(roughness)
    return p_spec * pdf_ggx(n, v, l, alpha) + (1.0 - p_spec) * pdf_cosine(n, l)
