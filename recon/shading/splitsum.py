"""Split-sum image-based lighting (Karis 2013) for the principled BRDF, differentiable w.r.t. the environment map.

Outgoing radiance under a distant environment ``L(l)``:
``Lo = (1 - metallic) base_color E(n) / pi + (F0 A + B) P(r, roughness)`` where ``E(n) / pi`` is the cosine-
convolved map, ``P`` the map prefiltered with the GGX lobe under the ``n = v = r`` assumption (weights
``D(n.h) n.l``, normalized), ``r`` the mirror direction of ``v`` and ``(A, B)`` the scale and bias of F0 in the
pre-integrated specular BRDF (:func:`brdf_lut`).

Environment maps follow the dataset convention: equirectangular ``[H, W, 3]`` linear HDR with ``W = 2 H``; a unit
direction ``d`` (scene -> environment) maps to ``u = 0.5 - atan2(d_y, d_x) / (2 pi)`` wrapped to [0, 1),
``v = acos(d_z) / pi``, ``v = 0`` the top row (+Z up); texel ``(i, j)`` has its center at ``u = (j + 0.5) / W``,
``v = (i + 0.5) / H``.

Convolutions. Every filter here depends only on the angle between the output direction and the source direction,
so on an equirectangular grid the weights for output column ``j`` are those of column 0 shifted by ``j`` columns:
each output row is a circular cross-correlation along ``u``. We therefore apply the dense (output row x source
row) weight matrices per azimuthal frequency: ``rfft`` along ``u``, a batched ``[F, h, h]`` complex matrix product,
``irfft``. This is exactly the dense texel-to-texel matrix product (same weights, same result to rounding) but the
cached weights of a 64 x 128 level take 2 MB instead of 268 MB, so every level can keep the full 64 x 128 source.
Weights integrate each source texel with >= 4 x 4 sub-samples and exact band solid angles, and are normalized per
output texel (a constant map stays constant to rounding). The map enters linearly, so autograd carries gradients
to every texel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from recon.shading.brdf import ggx_d, roughness_to_alpha, sample_ggx_vndf, smith_g2_height_correlated

__all__ = ["SplitSumConfig", "SplitSumLight", "brdf_lut", "shade_splitsum"]

_SUPERSAMPLE = 4  # least sub-samples per source texel and axis when integrating filter weights
_MAX_SUPERSAMPLE = 8  # a configured level that needs more is rejected (weights cost 2 h^3 ss^2 evaluations)


def _supersample(h: int, roughness: float | None) -> int:
    """Sub-samples per texel axis so that the GGX lobe (half width ~1.3 alpha in l) spans >= 1.5 sub-samples."""
    if roughness is None:
        return _SUPERSAMPLE
    alpha = max(roughness * roughness, 1e-3)
    return max(_SUPERSAMPLE, math.ceil(1.5 * math.pi / (1.3 * alpha * h)))


def _dir_to_uv(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit-ish ``d [..., 3]`` -> ``(u, v)`` each ``[...]`` in the equirectangular convention of the module doc."""
    d = d * torch.rsqrt((d * d).sum(-1, keepdim=True).clamp_min(1e-20))
    x, y, z = d.unbind(-1)
    # atan2's gradient is 0/0 at the poles: feed it a harmless (1, 0) there (u is arbitrary at a pole anyway).
    pole = x * x + y * y < 1e-20
    x = torch.where(pole, torch.ones_like(x), x)
    y = torch.where(pole, torch.zeros_like(y), y)
    u = torch.remainder(0.5 - torch.atan2(y, x) / (2 * math.pi), 1.0)
    v = torch.acos(z.clamp(-1 + 1e-6, 1 - 1e-6)) / math.pi  # clamped: acos' is infinite at +-1
    return u, v


def _uv_to_dir(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`_dir_to_uv`: ``u, v [...]`` -> unit ``d [..., 3]``."""
    phi, theta = 2 * math.pi * (0.5 - u), math.pi * v
    return torch.stack([theta.sin() * phi.cos(), theta.sin() * phi.sin(), theta.cos()], -1)


def _bilinear(tex: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``tex [h, w, C]`` at directions ``d [..., 3]`` (u wraps, v clamps) -> ``[..., C]``."""
    h, w, c = tex.shape
    u, v = _dir_to_uv(d)
    x = u * w - 0.5
    y = (v * h - 0.5).clamp(0, h - 1)
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    x0, y0 = x0.long(), y0.long()
    x0, x1 = torch.remainder(x0, w), torch.remainder(x0 + 1, w)
    y1 = (y0 + 1).clamp(max=h - 1)
    flat = tex.reshape(h * w, c)

    def fetch(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat[(yy * w + xx).reshape(-1)].reshape(*yy.shape, c)

    top = fetch(y0, x0) * (1 - fx) + fetch(y0, x1) * fx
    bottom = fetch(y1, x0) * (1 - fx) + fetch(y1, x1) * fx
    return top * (1 - fy) + bottom * fy


def _band_solid_angle(h: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Solid angle per unit azimuth of each of ``h`` rows, ``[h]``: ``cos(theta_top) - cos(theta_bottom)``."""
    edges = torch.arange(h + 1, dtype=torch.float64) * (math.pi / h)
    return (edges[:-1].cos() - edges[1:].cos()).to(device=device, dtype=dtype)


def _area_downsample(radiance: torch.Tensor, h: int) -> torch.Tensor:
    """Solid-angle weighted box filter of ``radiance [H, 2H, 3]`` to ``[h, 2h, 3]`` (identity when ``h == H``)."""
    if h == radiance.shape[0]:
        return radiance
    wgt = _band_solid_angle(radiance.shape[0], radiance.dtype, radiance.device)[:, None, None]
    num = F.adaptive_avg_pool2d((radiance * wgt).permute(2, 0, 1)[None], (h, 2 * h))
    den = F.adaptive_avg_pool2d(wgt.expand(-1, radiance.shape[1], 1).permute(2, 0, 1)[None], (h, 2 * h))
    return (num / den)[0].permute(1, 2, 0)


@functools.lru_cache(maxsize=32)
def _kernel_f64(h: int, roughness: float | None) -> torch.Tensor:
    """Weights ``[h, h, 2h]`` float64: output row i at column 0 <- source texel (k, m); rows sum to 1.

    ``roughness=None`` is the cosine lobe ``max(c, 0) / pi`` (irradiance / pi); otherwise the split-sum GGX
    prefilter ``D(sqrt((1 + c) / 2)) max(c, 0)`` (with ``n = v = r``, ``n.h = cos(half the angle)`` and
    ``n.l = c``), ``c`` the cosine between output and source direction.
    """
    w, ss = 2 * h, _supersample(h, roughness)
    f64 = torch.float64
    edges = torch.arange(h * ss + 1, dtype=f64) * (math.pi / (h * ss))
    theta = 0.5 * (edges[:-1] + edges[1:])
    band = edges[:-1].cos() - edges[1:].cos()
    u = (torch.arange(w * ss, dtype=f64) + 0.5) / (w * ss)
    src = _uv_to_dir(u[None, :].expand(h * ss, -1), (theta / math.pi)[:, None].expand(-1, w * ss))
    area = band[:, None] * (2 * math.pi / (w * ss))
    out = _uv_to_dir(torch.full((h,), 0.5 / w, dtype=f64), (torch.arange(h, dtype=f64) + 0.5) / h)
    alpha = None if roughness is None else roughness_to_alpha(torch.tensor(roughness, dtype=f64))
    kernel = torch.empty(h, h, w, dtype=f64)
    for i in range(h):
        c = src @ out[i]
        if alpha is None:
            wt = c.clamp_min(0) / math.pi
        else:
            wt = ggx_d(torch.sqrt((0.5 * (1 + c)).clamp_min(0)), alpha) * c.clamp_min(0)
        k = (wt * area).reshape(h, ss, w, ss).sum((1, 3))
        kernel[i] = k / k.sum()
    return kernel


@functools.lru_cache(maxsize=64)
def _kernel_spectrum(h: int, roughness: float | None, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``conj(rfft(kernel))`` as ``[F, h_out, h_src]`` complex (F = h + 1), on ``device`` in ``dtype``'s precision."""
    spec = torch.fft.rfft(_kernel_f64(h, roughness), dim=-1).conj().permute(2, 0, 1).contiguous()
    return spec.to(device=device, dtype=torch.complex64 if dtype == torch.float32 else torch.complex128)


def _convolve(tex: torch.Tensor, roughness: float | None) -> torch.Tensor:
    """Filter ``tex [h, 2h, 3]`` with the cached kernel: per-frequency dense matrix product -> ``[h, 2h, 3]``."""
    h, w, _ = tex.shape
    spectrum = _kernel_spectrum(h, roughness, tex.device, tex.dtype)
    src_hat = torch.fft.rfft(tex, dim=1).permute(1, 0, 2)  # [F, h, 3]
    return torch.fft.irfft(torch.matmul(spectrum, src_hat).permute(1, 0, 2), n=w, dim=1)


@functools.lru_cache(maxsize=8)
def _brdf_lut_cached(size: int, samples: int) -> torch.Tensor:
    f64 = torch.float64
    k = torch.arange(samples, dtype=torch.int64)
    radical = torch.zeros(samples, dtype=f64)  # base-2 radical inverse (Hammersley), deterministic and stratified
    bits, scale = k.clone(), 0.5
    while bool((bits > 0).any()):
        radical += (bits & 1).to(f64) * scale
        bits, scale = bits >> 1, scale * 0.5
    u = torch.stack([(k.to(f64) + 0.5) / samples, radical], -1)[None]  # [1, S, 2]
    nv = torch.linspace(0, 1, size, dtype=f64).clamp_min(1e-3)[:, None, None]  # [size, 1, 1]
    v = torch.cat([torch.sqrt(1 - nv * nv), torch.zeros_like(nv), nv], -1)
    n = torch.tensor([[[0.0, 0.0, 1.0]]], dtype=f64)
    lut = torch.empty(size, size, 2, dtype=f64)
    for i, rough in enumerate(torch.linspace(0, 1, size, dtype=f64).tolist()):
        alpha = roughness_to_alpha(torch.tensor(rough, dtype=f64))
        l = sample_ggx_vndf(n, v, alpha, u)  # [size, S, 3]
        nl = l[..., 2:]
        h = F.normalize(v + l, dim=-1)
        fc = (1 - (v * h).sum(-1, keepdim=True).clamp(0, 1)).pow(5)
        a2 = alpha * alpha
        g1 = 2 * nv / (nv + torch.sqrt(a2 + (1 - a2) * nv * nv))
        # VNDF estimator of int D V F n.l dl: f n.l / pdf = F G2 / G1(v) with G2 = 4 V n.l n.v.
        wt = torch.where(nl > 0, 4 * smith_g2_height_correlated(nv, nl, alpha) * nl * nv / g1, torch.zeros_like(nl))
        lut[i, :, 0] = ((1 - fc) * wt).mean((1, 2))
        lut[i, :, 1] = (fc * wt).mean((1, 2))
    return lut.float()


def brdf_lut(size: int = 64, samples: int = 512) -> torch.Tensor:
    """Pre-integrated specular BRDF ``[size, size, 2]`` float32 (CPU): ``(A, B)`` with
    ``int f_spec(v, l) n.l dl = F0 A + B`` (Schlick Fresnel, GGX, height-correlated Smith).

    Axes: ``lut[i, j] = (A, B)`` at roughness ``i / (size - 1)`` (alpha = roughness^2 >= 1e-3) and
    ``n.v = j / (size - 1)`` (n.v clamped to >= 1e-3), both endpoints included so lookups interpolate, never
    extrapolate. Computed with ``samples`` Hammersley points of the GGX visible-normal sampler (deterministic),
    cached per ``(size, samples)``; a copy is returned.

    Raises:
        ValueError: ``size < 2`` or ``samples < 1``.
    """
    if size < 2 or samples < 1:
        raise ValueError(f"brdf_lut needs size >= 2 and samples >= 1, got size={size}, samples={samples}")
    return _brdf_lut_cached(int(size), int(samples)).clone()


def _lut_lookup(lut: torch.Tensor, n_dot_v: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
    """Bilinear lookup of ``lut [S, S, 2]`` at ``n_dot_v, roughness [..., 1]`` -> ``[..., 2]``."""
    s = lut.shape[0]
    x = n_dot_v.clamp(0, 1).squeeze(-1) * (s - 1)
    y = roughness.clamp(0, 1).squeeze(-1) * (s - 1)
    x0, y0 = x.floor().clamp(0, s - 2), y.floor().clamp(0, s - 2)
    fx, fy = (x - x0).unsqueeze(-1), (y - y0).unsqueeze(-1)
    x0, y0 = x0.long(), y0.long()
    flat = lut.reshape(s * s, 2)

    def fetch(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
        return flat[(yy * s + xx).reshape(-1)].reshape(*yy.shape, 2)

    return ((fetch(y0, x0) * (1 - fx) + fetch(y0, x0 + 1) * fx) * (1 - fy)
            + (fetch(y0 + 1, x0) * (1 - fx) + fetch(y0 + 1, x0 + 1) * fx) * fy)


@dataclass(frozen=True)
class SplitSumConfig:
    """Resolution and roughness levels of a :class:`SplitSumLight`."""

    roughness_levels: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    """Roughness of each prefiltered level, strictly increasing from 0 (level 0 is the unfiltered map) to 1."""
    level_heights: tuple[int, ...] = (64, 64, 32, 32, 16, 16)
    """Rows of each level (columns = 2 x rows), capped at the map's rows. A level's GGX lobe must not be much
    sharper than its texels (checked: about roughness^2 >= 0.45 / height)."""
    diffuse_height: int = 32
    """Rows of the cosine-convolved (irradiance / pi) map."""
    lut_size: int = 64
    """Side of the BRDF lookup table (:func:`brdf_lut`)."""
    lut_samples: int = 512
    """Samples per BRDF lookup table entry."""


def _check_config(cfg: SplitSumConfig) -> None:
    levels, heights = cfg.roughness_levels, cfg.level_heights
    if len(levels) < 2 or len(levels) != len(heights):
        raise ValueError(f"roughness_levels and level_heights need the same length >= 2, got {len(levels)} and "
                         f"{len(heights)}")
    if levels[0] != 0.0 or levels[-1] != 1.0 or any(b <= a for a, b in zip(levels, levels[1:])):
        raise ValueError(f"roughness_levels must increase strictly from 0.0 to 1.0, got {levels}")
    if min(heights) < 2 or cfg.diffuse_height < 2:
        raise ValueError(f"level_heights and diffuse_height must be >= 2, got {heights}, {cfg.diffuse_height}")
    for rough, h in zip(levels[1:], heights[1:]):
        if _supersample(h, rough) > _MAX_SUPERSAMPLE:
            raise ValueError(f"roughness level {rough} is too sharp for level_heights entry {h}: its lobe would need "
                             f"{_supersample(h, rough)} sub-samples per texel axis (at most {_MAX_SUPERSAMPLE}); "
                             f"raise the roughness or the height")


class SplitSumLight:
    """Split-sum representation of a distant environment map, built differentiably from ``radiance [H, 2H, 3]``.

    Holds ``diffuse_map [hd, 2hd, 3]`` (irradiance / pi, the map convolved with the cosine lobe) and ``levels``, a
    list of ``[h_k, 2h_k, 3]`` maps prefiltered with the GGX lobe of ``config.roughness_levels[k]``. Everything is
    a linear function of ``radiance``, so gradients flow to its texels. Rebuild it after every change to the map
    (a build from a 64 x 128 map takes a few ms after the first call has cached the weights).

    Raises:
        ValueError: ``radiance`` not ``[H, 2H, 3]`` or an inconsistent ``config``. TypeError: not floating point.
    """

    def __init__(self, radiance: torch.Tensor, config: SplitSumConfig = SplitSumConfig()) -> None:
        if not isinstance(radiance, torch.Tensor) or not radiance.is_floating_point():
            raise TypeError(f"radiance must be a floating-point torch.Tensor, got {getattr(radiance, 'dtype', None)}")
        if radiance.ndim != 3 or radiance.shape[2] != 3 or radiance.shape[1] != 2 * radiance.shape[0]:
            raise ValueError(f"radiance must have shape [H, 2H, 3] (equirectangular), got {tuple(radiance.shape)}")
        _check_config(config)
        self.config = config
        rows = radiance.shape[0]
        hd = min(config.diffuse_height, rows)
        self.diffuse_map = _convolve(_area_downsample(radiance, hd), None)
        self.levels: list[torch.Tensor] = []
        for rough, h in zip(config.roughness_levels, config.level_heights):
            tex = _area_downsample(radiance, min(h, rows))
            self.levels.append(tex if rough == 0.0 else _convolve(tex, float(rough)))
        self.lut = _brdf_lut_cached(config.lut_size, config.lut_samples).to(radiance.device, radiance.dtype)

    def diffuse(self, n: torch.Tensor) -> torch.Tensor:
        """Irradiance / pi at normals ``n [..., 3]`` -> ``[..., 3]`` (Lambert: ``base_color * diffuse(n)``)."""
        return _bilinear(self.diffuse_map, n)

    def specular(self, r: torch.Tensor, roughness: torch.Tensor) -> torch.Tensor:
        """Prefiltered radiance ``[..., 3]`` at reflection directions ``r [..., 3]`` and ``roughness [..., 1]``.

        Bilinear within each level, linear in roughness between the two bracketing levels (roughness clamped to
        [0, 1]).
        """
        levels = self.config.roughness_levels
        rough = roughness.clamp(0.0, 1.0)
        out = None
        for k, tex in enumerate(self.levels):
            up = (rough - levels[k - 1]) / (levels[k] - levels[k - 1]) if k > 0 else torch.ones_like(rough)
            down = (levels[k + 1] - rough) / (levels[k + 1] - levels[k]) if k + 1 < len(levels) else torch.ones_like(
                rough)
            wk = torch.minimum(up, down).clamp(0.0, 1.0)
            if not bool((wk > 0).any()):
                continue
            term = wk * _bilinear(tex, r)
            out = term if out is None else out + term
        return out


def shade_splitsum(n, v, base_color, roughness, metallic, light: SplitSumLight, diffuse=None,
                   specular_occlusion=None) -> torch.Tensor:
    """Outgoing linear radiance ``[..., 3]`` of the principled BRDF under ``light`` (split-sum approximation).

    Args:
        n, v: ``[..., 3]`` unit normal and direction to the viewer (world space).
        base_color: ``[..., 3]`` linear. roughness, metallic: ``[..., 1]`` in [0, 1].
        light: a :class:`SplitSumLight` (same device and dtype).
        diffuse: ``[..., 3]`` irradiance / pi to use instead of the light's unoccluded ``diffuse(n)`` (e.g. the
            self-shadowed irradiance of :mod:`recon.shading.prt`), or None.
        specular_occlusion: ``[..., 1]`` factor on the specular term (e.g. the visible fraction), or None.
    Returns:
        ``(1 - metallic) base_color diffuse(n) + (F0 A + B) specular(r_d, roughness)``, F0 = lerp(0.04,
        base_color, metallic), ``(A, B)`` from the LUT at ``(clamp(n.v, 0, 1), roughness)``, ``r_d`` the mirror
        direction of ``v`` leaned towards ``n`` by ``(1 - a) (sqrt(1 - a) + a)``, ``a = alpha`` (Frostbite).

    Raises:
        ValueError / TypeError: a tensor with the wrong last dim or dtype (named in the message).
    """
    for name, t, last in (("n", n, 3), ("v", v, 3), ("base_color", base_color, 3), ("roughness", roughness, 1),
                          ("metallic", metallic, 1)):
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point torch.Tensor, got {getattr(t, 'dtype', type(t))}")
        if t.ndim == 0 or t.shape[-1] != last:
            raise ValueError(f"{name} must have shape [..., {last}], got {tuple(t.shape)}")
    n_dot_v = (n * v).sum(-1, keepdim=True)
    # Frostbite's dominant direction (Lagarde & de Rousiers 2014, sec. 4.9.3): the real GGX lobe leans from the
    # mirror direction towards n as alpha grows. Measured on the sphere test: 5.6 % -> 4.2 % mean error vs MC.
    alpha = roughness_to_alpha(roughness)
    smooth = (1 - alpha).clamp(1e-6, 1)  # > 0: sqrt' is infinite at 0 (roughness 1 gave NaN gradients)
    lean = smooth * (torch.sqrt(smooth) + alpha)
    r = n + (2 * n_dot_v * n - v - n) * lean
    ab = _lut_lookup(light.lut, n_dot_v, roughness)
    f0 = 0.04 * (1 - metallic) + base_color * metallic
    specular = (f0 * ab[..., 0:1] + ab[..., 1:2]) * light.specular(r, roughness)
    if specular_occlusion is not None:
        specular = specular * specular_occlusion
    return (1 - metallic) * base_color * (light.diffuse(n) if diffuse is None else diffuse) + specular
