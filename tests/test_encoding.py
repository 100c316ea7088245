"""The tri-plane encoding (``recon.renderers.volume.encoding``): the C++ kernels against their torch twin
(``grid_sample``), forward, first and second derivatives; the twin's second derivatives by gradcheck; the fields
that use it give the same values, normals and gradients with either backend."""

import pytest
import torch

from recon.renderers.volume.encoding import triplane_sample, triplane_sample_vjp_u
from recon.scenes.sdf import NeuralSDF
from recon.scenes.triplane import TriPlaneField


def _planes(seed=0, levels=((5, 4), (9, 3), (17, 2)), dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(3, c, r, r, generator=g, dtype=dtype).requires_grad_(True) for r, c in levels]


def _points(n=3000, seed=1, spread=1.15, dtype=torch.float32):
    """Points in [-spread, spread]^3: some outside the planes' square, where coordinates clamp to the border."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(n, 3, generator=g, dtype=dtype) * 2 - 1) * spread).requires_grad_(True)


def _rel(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def test_kernel_forward_and_first_derivatives_match_grid_sample():
    planes, u = _planes(), _points()
    f_cpu = triplane_sample(planes, u, backend="cpu")
    f_ref = triplane_sample(planes, u, backend="torch")
    assert f_cpu.shape == (3000, 3 * (4 + 3 + 2))
    assert float((f_cpu - f_ref).detach().abs().max()) <= 1e-4
    g = torch.randn_like(f_ref)
    got = torch.autograd.grad(f_cpu, [u, *planes], g)
    want = torch.autograd.grad(f_ref, [u, *planes], g)
    for a, b in zip(got, want):
        assert _rel(a, b) <= 1e-3
    outside = (u.detach().abs() > 1).any(-1)  # clamped coordinates carry no gradient along their axis
    assert bool(outside.any()) and float(got[0][u.detach().abs() > 1].abs().max()) == 0.0


def test_the_normal_share_and_its_second_derivatives_match_grid_sample():
    planes, u = _planes(), _points(spread=0.98)
    K = 3 * (4 + 3 + 2)
    grad = torch.randn(len(u), K, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
    gu_cpu = triplane_sample_vjp_u(planes, u, grad, backend="cpu")
    gu_ref = triplane_sample_vjp_u(planes, u, grad, backend="torch")
    assert _rel(gu_cpu, gu_ref) <= 1e-4
    h = torch.randn_like(gu_ref)
    got = torch.autograd.grad(gu_cpu, [u, grad, *planes], h)
    want = torch.autograd.grad(gu_ref, [u, grad, *planes], h)
    for a, b in zip(got, want):
        assert _rel(a, b) <= 1e-3
    assert float(got[0].abs().max()) > 0  # bilinear interpolation's cross term d2f/dx dy reaches the points


def test_the_twin_second_derivatives_pass_gradcheck_in_float64():
    planes = _planes(levels=((4, 2), (6, 1)), dtype=torch.float64)
    u = _points(n=7, spread=0.9, dtype=torch.float64)
    grad = torch.randn(7, 9, dtype=torch.float64, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    fn = lambda u, grad, *planes: triplane_sample_vjp_u(planes, u, grad, backend="torch")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (u, grad, *planes), eps=1e-6, atol=1e-5)


def test_plane_gradients_are_deterministic():
    planes, u = _planes(), _points(n=20000)
    f = triplane_sample(planes, u, backend="cpu")
    g = torch.randn_like(f)
    a = torch.autograd.grad(f, planes, g, retain_graph=True)
    b = torch.autograd.grad(f, planes, g)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_nan_points_give_nan_features_and_bad_input_is_refused():
    planes, u = _planes(), _points(n=4)
    bad = u.detach().clone()
    bad[2, 1] = float("nan")
    bad.requires_grad_(True)
    f = triplane_sample(planes, bad, backend="cpu")
    assert bool(f[2].isnan().all()) and bool(f[[0, 1, 3]].isfinite().all())
    g_u, *g_p = torch.autograd.grad(f, [bad, *planes], torch.ones_like(f))  # the NaN point adds nothing to planes
    assert bool(g_u[2].isnan().all()) and bool(g_u[[0, 1, 3]].isfinite().all())
    f_good = triplane_sample(planes, bad[[0, 1, 3]], backend="cpu")
    good = torch.autograd.grad(f_good, planes, torch.ones_like(f_good))
    assert all(torch.equal(a, b) for a, b in zip(g_p, good))
    with pytest.raises(ValueError, match=r"u must be a tensor \[N, 3\]"):
        triplane_sample(planes, u[:, :2], backend="cpu")
    with pytest.raises(ValueError, match=r"planes\[1\] must have shape \[3, C, r, r\]"):
        triplane_sample([planes[0], torch.zeros(3, 2, 4, 5)], u, backend="cpu")
    with pytest.raises(ValueError, match="planes must hold at least one level"):
        triplane_sample([], u, backend="cpu")
    with pytest.raises(ValueError, match="grad must have shape"):
        triplane_sample_vjp_u(planes, u, torch.zeros(4, 5), backend="cpu")
    with pytest.raises(TypeError, match=r"planes\[0\] must match u's dtype"):
        triplane_sample([planes[0].double()], u, backend="cpu")


def _trained_looking_sdf():
    field = NeuralSDF(torch.tensor([-1.0, -2.0, -1.0]), torch.tensor([1.0, 1.5, 1.0]))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():  # planes and weights far from their initial values, so every term counts
        for p in field.planes:
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        for m in field.sdf_net:
            if hasattr(m, "weight"):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 0.3)
    return field


def test_neural_sdf_normals_and_eikonal_gradients_agree_across_encoding_backends():
    field = _trained_looking_sdf()
    x = torch.rand(800, 3, generator=torch.Generator().manual_seed(5)) * 2 - 1
    results = {}
    for backend in ("cpu", "torch"):
        field.encoding_backend = backend
        sdf, grad, geo = field.sdf_gradient(x, create_graph=True)
        loss = (grad.norm(dim=-1) - 1).square().mean() + sdf.square().mean() + 1e-3 * geo.sum()
        params = list(field.planes) + list(field.sdf_net.parameters())
        results[backend] = (sdf.detach(), grad.detach(), torch.autograd.grad(loss, params))
        # plain autograd through the encoding (a point that requires grad) gives the same gradient
        _, grad_plain, _ = field.sdf_gradient(x.clone().requires_grad_(True))
        assert _rel(grad_plain, grad.detach()) <= 1e-5
    (s_c, g_c, p_c), (s_t, g_t, p_t) = results["cpu"], results["torch"]
    assert float((s_c - s_t).abs().max()) <= 1e-4
    assert _rel(g_c, g_t) <= 1e-4
    for a, b in zip(p_c, p_t):
        assert _rel(a, b) <= 1e-3


def test_triplane_field_density_agrees_across_encoding_backends():
    field = TriPlaneField(-torch.ones(3), torch.ones(3), resolutions=(8, 16), channels=4)
    x = torch.rand(500, 3, generator=torch.Generator().manual_seed(6)) * 2 - 1
    out = {}
    for backend in ("cpu", "torch"):
        field.encoding_backend = backend
        sigma, geo = field.density(x)
        out[backend] = (sigma.detach(), torch.autograd.grad(sigma.sum() + geo.sum(), list(field.planes)))
    assert _rel(out["cpu"][0], out["torch"][0]) <= 1e-4
    for a, b in zip(out["cpu"][1], out["torch"][1]):
        assert _rel(a, b) <= 1e-3
