"""Split-sum image-based lighting: conventions, constant maps, furnace, accuracy against Monte Carlo, gradients."""

import math

import pytest
import torch

from recon.shading.brdf import principled_brdf, sample_brdf
from recon.shading.splitsum import (
    SplitSumConfig, SplitSumLight, _bilinear, _dir_to_uv, _uv_to_dir, brdf_lut, shade_splitsum,
)

F64 = torch.float64


def _unit(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def _texel_dirs(h: int, dtype=F64) -> torch.Tensor:
    i, j = torch.arange(h, dtype=dtype), torch.arange(2 * h, dtype=dtype)
    return _uv_to_dir(((j + 0.5) / (2 * h))[None].expand(h, -1), ((i + 0.5) / h)[:, None].expand(-1, 2 * h))


def _sky_and_sun(h: int) -> torch.Tensor:
    """Smooth synthetic map ``[h, 2h, 3]``: blue sky gradient, brown ground, a ~10 degree sun 6x brighter."""
    d = _texel_dirs(h)
    up, down = d[..., 2:].clamp_min(0), (-d[..., 2:]).clamp_min(0)
    sky = torch.tensor([0.2, 0.3, 0.5], dtype=F64) * (1 + up) + torch.tensor([0.15, 0.1, 0.05], dtype=F64) * down
    sun_dir = _unit(torch.tensor([0.5, -0.3, 0.6], dtype=F64))
    sun = 6.0 * torch.exp((d @ sun_dir - 1) / 0.03)[..., None] * torch.tensor([1.0, 0.9, 0.7], dtype=F64)
    return sky + sun


def test_equirect_convention_hand_computed():
    d = torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [-1.0, 0, 0], [0, 0, 1.0], [0, -1.0, 0]])
    u, v = _dir_to_uv(d)
    torch.testing.assert_close(u[[0, 1, 2, 4]], torch.tensor([0.5, 0.25, 0.0, 0.75]))
    torch.testing.assert_close(v, torch.tensor([0.5, 0.5, 0.5, 0.0, 0.5]), atol=1e-3, rtol=0)
    g = torch.Generator().manual_seed(0)
    dirs = _unit(torch.randn(100, 3, generator=g, dtype=F64))
    torch.testing.assert_close(_uv_to_dir(*_dir_to_uv(dirs)), dirs)
    # A texel center looks up exactly that texel; the +Z zenith row is row 0.
    tex = torch.arange(4 * 8 * 1, dtype=F64).reshape(4, 8, 1)
    torch.testing.assert_close(_bilinear(tex, _texel_dirs(4)), tex)


def test_constant_environment_is_reproduced():
    radiance = torch.tensor([0.3, 1.2, 2.0]).expand(32, 64, 3).contiguous()
    light = SplitSumLight(radiance)
    g = torch.Generator().manual_seed(1)
    dirs = _unit(torch.randn(500, 3, generator=g))
    torch.testing.assert_close(light.diffuse(dirs), radiance[0, :1].expand(500, 3), rtol=1e-3, atol=0)
    for rough in (0.0, 0.1, 0.2, 0.5, 0.73, 1.0):
        spec = light.specular(dirs, torch.full((500, 1), rough))
        torch.testing.assert_close(spec, radiance[0, :1].expand(500, 3), rtol=1e-3, atol=0)


def _directional_albedo(v, base, rough, metal, n_s=400, n_phi=256):
    """Quadrature of ``int f(v, l) n.l dl`` over the upper hemisphere (n = +Z), float64 ``[3]``."""
    s = (torch.arange(n_s, dtype=F64) + 0.5) / n_s
    theta = 0.5 * math.pi * s * s  # clustered at the pole and fine everywhere for roughness >= 0.3
    phi = (torch.arange(n_phi, dtype=F64) + 0.5) * (2 * math.pi / n_phi)
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    l = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1).reshape(-1, 3)
    w = (th.sin() * th.cos() * (math.pi * s[:, None] / n_s) * (2 * math.pi / n_phi)).reshape(-1, 1)
    m = len(l)
    f = principled_brdf(torch.tensor([0.0, 0, 1], dtype=F64).expand(m, 3), v.expand(m, 3), l,
                        torch.full((m, 3), base, dtype=F64), torch.full((m, 1), rough, dtype=F64),
                        torch.full((m, 1), metal, dtype=F64))
    return (f * w).sum(0)


def test_brdf_lut_matches_quadrature():
    lut = brdf_lut(64, 512)
    assert lut.shape == (64, 64, 2) and lut.dtype == torch.float32
    for i, j in ((63, 63), (63, 20), (32, 45), (20, 63), (40, 10)):
        rough, nv = i / 63, j / 63
        v = torch.tensor([math.sqrt(1 - nv * nv), 0.0, nv], dtype=F64)
        e1 = float(_directional_albedo(v, 1.0, rough, 1.0)[0])  # F0 = 1: A + B
        base0 = _directional_albedo(v, 0.0, rough, 1.0)[0]  # F0 = 0: B
        a, b = lut[i, j].double().tolist()
        assert abs(a + b - e1) < 5e-3 and abs(b - float(base0)) < 2e-3, (i, j, a, b, e1, float(base0))


def test_white_furnace():
    """L = 1, white dielectric, roughness 1: Lambert gives exactly 1 and the specular lobe adds its albedo on top
    (the glTF diffuse has no (1 - F) factor), so the result equals the BRDF's own albedo: 1.01 at normal
    incidence, 1.03 at n.v = 0.2 (measured), never above 1.05 for n.v >= 0.2."""
    light = SplitSumLight(torch.ones(32, 64, 3, dtype=F64))
    for nv in (1.0, 0.7, 0.4, 0.2):
        v = torch.tensor([[math.sqrt(1 - nv * nv), 0.0, nv]], dtype=F64)
        out = shade_splitsum(torch.tensor([[0.0, 0, 1]], dtype=F64), v, torch.ones(1, 3, dtype=F64),
                             torch.ones(1, 1, dtype=F64), torch.zeros(1, 1, dtype=F64), light)
        assert float(out.max()) <= 1.05, (nv, out)
        torch.testing.assert_close(out[0], _directional_albedo(v[0], 1.0, 1.0, 0.0), rtol=5e-3, atol=0)


def _sphere_pixels(res: int):
    """Normals and view directions of a unit sphere's pixels under an orthographic camera (``res x res`` grid)."""
    c = _unit(torch.tensor([0.8, -0.5, 0.35], dtype=F64))
    e1 = _unit(torch.linalg.cross(torch.tensor([0.0, 0, 1], dtype=F64), c, dim=-1))
    e2 = torch.linalg.cross(c, e1, dim=-1)
    t = (torch.arange(res, dtype=F64) + 0.5) / res * 2 - 1
    x, y = torch.meshgrid(t, t, indexing="xy")
    inside = x * x + y * y < 1
    x, y = x[inside], y[inside]
    n = x[:, None] * e1 + y[:, None] * e2 + torch.sqrt(1 - x * x - y * y)[:, None] * c
    return n, c.expand_as(n), x, y


def test_splitsum_matches_monte_carlo_on_a_sphere():
    """The same BRDF integrated by brute-force MC (4096 BRDF samples per pixel, radiance looked up bilinearly in
    the same 32 x 64 map) vs split-sum. Measured mean |error| / mean = 4.4 %, bias +0.5 % (4.2 % at 24 x 24
    pixels and 8192 samples; 5.6 % there without the dominant-direction lean). That is the split-sum
    approximation: 1.0 % on the dielectric half, 7.3 % on the rough metal half, worst at grazing angles; MC noise
    is far below it. On 512 random (n, v) pairs with n.v >= 0.1 it is 3.0 %."""
    radiance = _sky_and_sun(32)
    light = SplitSumLight(radiance)
    n, v, x, y = _sphere_pixels(20)
    m = len(n)
    base = torch.stack([0.8 + 0 * x, 0.5 + 0.2 * y, 0.3 + 0.1 * x], -1)
    rough = (0.2 + 0.35 * (x + 1))[:, None]
    metal = (y > 0).to(F64)[:, None]
    approx = shade_splitsum(n, v, base, rough, metal, light)
    g = torch.Generator().manual_seed(4)
    acc = torch.zeros(m, 3, dtype=F64)
    samples, chunk = 4096, 256
    expand = [t[:, None].expand(m, chunk, t.shape[-1]) for t in (n, v, base, rough, metal)]
    for _ in range(samples // chunk):
        l, pdf = sample_brdf(*expand, torch.rand(m, chunk, 3, generator=g, dtype=F64))
        f = principled_brdf(expand[0], expand[1], l, *expand[2:])
        cos = (expand[0] * l).sum(-1, keepdim=True).clamp_min(0)
        acc += (f * cos * _bilinear(radiance, l) / pdf.clamp_min(1e-12)[..., None]).sum(1)
    reference = acc / samples
    rel = float((approx - reference).abs().mean() / reference.mean())
    assert rel < 0.05, rel
    assert abs(float((approx - reference).mean() / reference.mean())) < 0.02  # no overall bias


def test_gradient_wrt_light_texels_matches_finite_differences():
    g = torch.Generator().manual_seed(5)
    radiance = (0.5 + torch.rand(8, 16, 3, generator=g, dtype=F64)).requires_grad_()
    n = _unit(torch.randn(20, 3, generator=g, dtype=F64))
    v = _unit(n + 0.7 * _unit(torch.randn(20, 3, generator=g, dtype=F64)))
    base = torch.rand(20, 3, generator=g, dtype=F64)
    rough = torch.rand(20, 1, generator=g, dtype=F64)
    metal = torch.rand(20, 1, generator=g, dtype=F64)
    weights = torch.randn(20, 3, generator=g, dtype=F64)

    def loss(rad):
        return (shade_splitsum(n, v, base, rough, metal, SplitSumLight(rad)) * weights).sum()

    (grad,) = torch.autograd.grad(loss(radiance), radiance)
    assert grad.abs().sum() > 0
    eps = 1e-6
    for i, j, c in ((0, 0, 0), (3, 7, 1), (4, 15, 2), (7, 9, 0), (2, 3, 1)):
        bump = torch.zeros_like(radiance)
        bump[i, j, c] = eps
        with torch.no_grad():
            fd = (loss(radiance + bump) - loss(radiance - bump)) / (2 * eps)
        torch.testing.assert_close(grad[i, j, c], fd, rtol=1e-6, atol=1e-9)


def test_gradients_reach_material_inputs_and_float32_matches_float64():
    radiance = _sky_and_sun(16)
    n, v, x, _ = _sphere_pixels(8)
    base = torch.full((len(n), 3), 0.6, dtype=F64, requires_grad=True)
    rough = (0.1 + 0.4 * (x + 1))[:, None].requires_grad_()
    metal = torch.full((len(n), 1), 0.5, dtype=F64, requires_grad=True)
    out64 = shade_splitsum(n, v, base, rough, metal, SplitSumLight(radiance))
    out64.sum().backward()
    for t in (base, rough, metal):
        assert torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0
    out32 = shade_splitsum(n.float(), v.float(), base.detach().float(), rough.detach().float(),
                           metal.detach().float(), SplitSumLight(radiance.float()))
    torch.testing.assert_close(out32, out64.detach().float(), rtol=1e-4, atol=1e-5)


def test_errors_name_the_field():
    with pytest.raises(ValueError, match="radiance"):
        SplitSumLight(torch.ones(8, 8, 3))
    with pytest.raises(ValueError, match="roughness_levels"):
        SplitSumLight(torch.ones(8, 16, 3), SplitSumConfig(roughness_levels=(0.0, 0.5, 0.4, 1.0),
                                                           level_heights=(8, 8, 8, 8)))
    with pytest.raises(ValueError, match="too sharp"):
        SplitSumLight(torch.ones(8, 16, 3), SplitSumConfig(roughness_levels=(0.0, 0.05, 1.0),
                                                           level_heights=(64, 64, 8)))
    light = SplitSumLight(torch.ones(8, 16, 3))
    z = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="metallic"):
        shade_splitsum(z, z, z, torch.zeros(4, 1), torch.zeros(4, 3), light)
    with pytest.raises(ValueError, match="size"):
        brdf_lut(1, 8)
