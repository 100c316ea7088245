"""The principled BRDF and its samplers: energy, reciprocity, pdf normalization and consistency, gradients."""

import math

import pytest
import torch

from recon.shading.brdf import (
    pdf_brdf, pdf_cosine, pdf_ggx, principled_brdf, principled_brdf_parts, roughness_to_alpha, sample_brdf,
    sample_cosine, sample_ggx_vndf,
)

F64 = torch.float64
Z = torch.tensor([0.0, 0.0, 1.0], dtype=F64)


def _view(theta_deg: float) -> torch.Tensor:
    t = math.radians(theta_deg)
    return torch.tensor([math.sin(t), 0.0, math.cos(t)], dtype=F64)


def _axis_frame(axis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormal ``(t, b, a)`` with ``a`` along ``axis`` (float64)."""
    a = axis / axis.norm()
    helper = torch.tensor([1.0, 0.0, 0.0], dtype=F64) if abs(float(a[0])) < 0.9 else torch.tensor([0.0, 1.0, 0.0],
                                                                                                    dtype=F64)
    t = torch.linalg.cross(helper, a, dim=-1)
    t = t / t.norm()
    return t, torch.linalg.cross(a, t, dim=-1), a


def _polar_quadrature(axis: torch.Tensor, n_s: int = 500, n_phi: int = 256):
    """Directions over the whole sphere and their solid angles, clustered around ``axis``.

    theta = pi s^2 with midpoint nodes in s, so narrow lobes centred on ``axis`` are resolved; dOmega = sin(theta)
    dtheta dphi with dtheta = 2 pi s ds. Returns ``dirs [M, 3]``, ``w [M]`` (w sums to 4 pi to ~1e-5).
    """
    s = (torch.arange(n_s, dtype=F64) + 0.5) / n_s
    theta = math.pi * s * s
    phi = (torch.arange(n_phi, dtype=F64) + 0.5) * (2 * math.pi / n_phi)
    th, ph = torch.meshgrid(theta, phi, indexing="ij")
    local = torch.stack([th.sin() * ph.cos(), th.sin() * ph.sin(), th.cos()], -1).reshape(-1, 3)
    w = (torch.sin(th) * (2 * math.pi * s[:, None] / n_s) * (2 * math.pi / n_phi)).reshape(-1)
    t, b, a = _axis_frame(axis)
    return local[:, :1] * t + local[:, 1:2] * b + local[:, 2:] * a, w


def _reflect(v: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    return 2 * (v * n).sum(-1, keepdim=True) * n - v


def _hemisphere_integral(f_fn, v: torch.Tensor, axis: torch.Tensor) -> torch.Tensor:
    dirs, w = _polar_quadrature(axis)
    cos = dirs[:, 2:].clamp_min(0)
    return ((f_fn(dirs) * cos) * w[:, None]).sum(0)


def _mat(m: int, base: float, rough: float, metal: float):
    return (torch.full((m, 3), base, dtype=F64), torch.full((m, 1), rough, dtype=F64),
            torch.full((m, 1), metal, dtype=F64))


def test_white_lambert_furnace():
    v = _view(40.0)

    def diffuse(l):
        base, rough, metal = _mat(len(l), 1.0, 0.5, 0.0)
        return principled_brdf_parts(Z.expand_as(l), v.expand_as(l), l, base, rough, metal)[0]

    albedo = _hemisphere_integral(diffuse, v, Z)
    torch.testing.assert_close(albedo, torch.ones(3, dtype=F64), rtol=0, atol=1e-2)


@pytest.mark.parametrize("rough", [0.1, 0.3, 0.6, 1.0])
def test_ggx_specular_never_gains_energy(rough):
    """F = 1 (metallic 1, base 1): the directional albedo of D V alone is <= 1 (single scattering loses energy)."""
    for theta in (0.0, 30.0, 60.0, 80.0):
        v = _view(theta)

        def spec(l):
            base, r, metal = _mat(len(l), 1.0, rough, 1.0)
            return principled_brdf(Z.expand_as(l), v.expand_as(l), l, base, r, metal)

        albedo = float(_hemisphere_integral(spec, v, _reflect(v, Z))[0])
        # Quadrature error is < 1e-3 here; the tolerance is for it, not for the model.
        assert albedo <= 1.0 + 2e-3, (rough, theta, albedo)
        if rough == 0.1 and theta == 0.0:
            assert albedo > 0.9, albedo  # measured 0.99: a smooth conductor at normal incidence loses ~nothing


def test_reciprocity():
    g = torch.Generator().manual_seed(0)
    m = 256
    n = torch.nn.functional.normalize(torch.randn(m, 3, generator=g, dtype=F64), dim=-1)
    v = torch.nn.functional.normalize(torch.randn(m, 3, generator=g, dtype=F64), dim=-1)
    l = torch.nn.functional.normalize(torch.randn(m, 3, generator=g, dtype=F64), dim=-1)
    base = torch.rand(m, 3, generator=g, dtype=F64)
    rough = torch.rand(m, 1, generator=g, dtype=F64)
    metal = torch.rand(m, 1, generator=g, dtype=F64)
    f_vl = principled_brdf(n, v, l, base, rough, metal)
    f_lv = principled_brdf(n, l, v, base, rough, metal)
    torch.testing.assert_close(f_vl, f_lv, rtol=1e-12, atol=1e-12)
    assert (f_vl > 0).any() and (f_vl == 0).any()  # both front- and back-facing pairs were exercised


@pytest.mark.parametrize("rough,theta", [(0.1, 0.0), (0.1, 70.0), (0.3, 45.0), (1.0, 80.0)])
def test_pdfs_integrate_to_one(rough, theta):
    v = _view(theta)
    dirs, w = _polar_quadrature(_reflect(v, Z))
    nn, vv = Z.expand_as(dirs), v.expand_as(dirs)
    alpha = roughness_to_alpha(torch.full((len(dirs), 1), rough, dtype=F64))
    assert abs(float((pdf_ggx(nn, vv, dirs, alpha) * w).sum()) - 1.0) < 2e-3
    assert abs(float((pdf_cosine(nn, dirs) * w).sum()) - 1.0) < 2e-3
    base, r, metal = _mat(len(dirs), 0.7, rough, 0.3)
    assert abs(float((pdf_brdf(nn, vv, dirs, base, r, metal) * w).sum()) - 1.0) < 2e-3


def _histogram_check(samples: torch.Tensor, pdf_fn, axis: torch.Tensor, n_bins: int = 8) -> float:
    """Largest |empirical - predicted| bin probability over (s, phi) bins of the polar grid around ``axis``."""
    dirs, w = _polar_quadrature(axis, n_s=400, n_phi=256)
    predicted = (pdf_fn(dirs) * w).reshape(n_bins, 400 // n_bins, n_bins, 256 // n_bins).sum((1, 3))
    t, b, a = _axis_frame(axis)
    cos_t = (samples @ a).clamp(-1, 1)
    s = torch.sqrt(torch.acos(cos_t) / math.pi)
    phi = torch.atan2(samples @ b, samples @ t) % (2 * math.pi)
    i = (s * n_bins).long().clamp(max=n_bins - 1)
    j = (phi / (2 * math.pi) * n_bins).long().clamp(max=n_bins - 1)
    counts = torch.bincount(i * n_bins + j, minlength=n_bins * n_bins).to(F64).reshape(n_bins, n_bins)
    return float((counts / len(samples) - predicted).abs().max())


@pytest.mark.parametrize("rough,theta", [(0.2, 30.0), (0.7, 75.0)])
def test_sampled_directions_follow_their_pdf(rough, theta):
    """Bin 2e5 samples and compare with the pdf integrated over each bin (binomial std <= 7e-4 per bin; measured max
    deviation 1.0e-3, while sampling h from D cos instead of the visible normals already shows 2.8e-3 and 4.4e-2)."""
    g = torch.Generator().manual_seed(1)
    m = 200_000
    v = _view(theta)
    u = torch.rand(m, 3, generator=g, dtype=F64)
    nn, vv = Z.expand(m, 3), v.expand(m, 3)
    alpha = roughness_to_alpha(torch.full((m, 1), rough, dtype=F64))
    r = _reflect(v, Z)
    l_ggx = sample_ggx_vndf(nn, vv, alpha, u[:, :2])
    torch.testing.assert_close(l_ggx.norm(dim=-1), torch.ones(m, dtype=F64))
    assert _histogram_check(l_ggx, lambda d: pdf_ggx(Z.expand_as(d), v.expand_as(d), d, alpha[:1]), r) < 2.5e-3
    l_cos = sample_cosine(nn, u[:, :2])
    assert _histogram_check(l_cos, lambda d: pdf_cosine(Z.expand_as(d), d), Z) < 2.5e-3
    base, ro, metal = _mat(m, 0.5, rough, 0.5)
    l_mix, pdf_mix = sample_brdf(nn, vv, base, ro, metal, u)
    torch.testing.assert_close(pdf_mix, pdf_brdf(nn, vv, l_mix, base, ro, metal))
    mix_pdf = lambda d: pdf_brdf(Z.expand_as(d), v.expand_as(d), d, *_mat(len(d), 0.5, rough, 0.5))  # noqa: E731
    assert _histogram_check(l_mix, mix_pdf, r) < 2.5e-3


@pytest.mark.parametrize("base,rough,metal,theta", [(0.8, 0.3, 0.0, 20.0), (0.6, 0.5, 1.0, 60.0),
                                                     (0.9, 0.15, 0.4, 45.0)])
def test_mc_with_sample_brdf_matches_quadrature(base, rough, metal, theta):
    v = _view(theta)

    def f(l):
        return principled_brdf(Z.expand_as(l), v.expand_as(l), l, *_mat(len(l), base, rough, metal))

    reference = _hemisphere_integral(f, v, _reflect(v, Z))
    g = torch.Generator().manual_seed(2)
    m = 100_000
    mat = _mat(m, base, rough, metal)
    nn, vv = Z.expand(m, 3), v.expand(m, 3)
    l, pdf = sample_brdf(nn, vv, *mat, torch.rand(m, 3, generator=g, dtype=F64))
    est = (principled_brdf(nn, vv, l, *mat) * l[:, 2:].clamp_min(0) / pdf[:, None]).mean(0)
    torch.testing.assert_close(est, reference, rtol=2e-2, atol=0)


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    m = 4
    n = torch.nn.functional.normalize(torch.tensor([[0.1, 0.2, 1.0]], dtype=F64) + 0.1 * torch.randn(m, 3, generator=g,
                                                                                                     dtype=F64), dim=-1)
    v = torch.nn.functional.normalize(torch.tensor([[0.3, -0.2, 1.0]], dtype=F64).expand(m, 3), dim=-1)
    l = torch.nn.functional.normalize(torch.tensor([[-0.4, 0.1, 1.0]], dtype=F64).expand(m, 3), dim=-1)
    base = (0.2 + 0.6 * torch.rand(m, 3, generator=g, dtype=F64)).requires_grad_()
    rough = (0.3 + 0.5 * torch.rand(m, 1, generator=g, dtype=F64)).requires_grad_()
    metal = torch.rand(m, 1, generator=g, dtype=F64)
    n.requires_grad_()
    assert torch.autograd.gradcheck(lambda nn, b, r: principled_brdf(nn, v, l, b, r, metal), (n, base, rough))


def test_gradients_finite_at_degenerate_inputs():
    n = torch.tensor([[0.0, 0.0, 1.0]] * 3, requires_grad=True)
    v = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.6, -0.8]], requires_grad=True)
    l = torch.tensor([[0.0, 0.0, -1.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)  # v = -l, grazing
    base = torch.full((3, 3), 0.5, requires_grad=True)
    rough = torch.tensor([[0.0], [0.5], [1.0]], requires_grad=True)
    out = principled_brdf(n, v, l, base, rough, torch.zeros(3, 1))
    assert torch.equal(out, torch.zeros_like(out))
    out.sum().backward()
    for t in (n, v, l, base, rough):
        assert torch.isfinite(t.grad).all()


def test_shape_errors_name_the_field():
    n = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="roughness"):
        principled_brdf(n, n, n, n, torch.zeros(2, 3), torch.zeros(2, 1))
    with pytest.raises(TypeError, match="base_color"):
        principled_brdf(n, n, n, torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 1), torch.zeros(2, 1))
