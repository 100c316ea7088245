"""The Gaussian rasterization op: cpu kernels vs the torch reference, gradients, edge cases, conventions."""

import math

import pytest
import torch

from recon.renderers.gaussians import rasterize as rz
from recon.renderers.gaussians._ref import rasterize_gaussians_ref
from recon.renderers.gaussians.rasterize import RasterOutput, rasterize_gaussians

W = H = 64
K64 = torch.tensor([[50.0, 0.0, 32.0], [0.0, 50.0, 32.0], [0.0, 0.0, 1.0]])
GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors")


def random_scene(N=300, D=3, seed=0, dtype=torch.float32):
    """Gaussians mostly in front of the camera, with varied scales/opacities, 10 behind the camera and many
    projecting outside the 64x64 image (|x/z| up to 3 while the image spans |x/z| < 0.64)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.cat([torch.rand(N, 2, generator=g) * 3 - 1.5, torch.rand(N, 1, generator=g) * 4 + 0.5], 1)
    means[:10, 2] = -1.0
    quats = torch.randn(N, 4, generator=g)
    scales = torch.rand(N, 3, generator=g) * 0.15 + 0.01
    opacities = torch.rand(N, generator=g) * 0.98 + 0.01
    colors = torch.rand(N, D, generator=g)
    return [t.to(dtype) for t in (means, quats, scales, opacities, colors)]


def render_and_vjp(backend, params, background=None, K=K64, w2c=None, seed=1, tile_size=16):
    """Forward + vector-Jacobian products with fixed random cotangents for rgb, alpha and depth."""
    leaves = [p.clone().requires_grad_(True) for p in params]
    w2c = torch.eye(4, dtype=params[0].dtype) if w2c is None else w2c
    out = rasterize_gaussians(*leaves, w2c, K.to(params[0].dtype), W, H, background, tile_size=tile_size,
                              backend=backend)
    out.means2d.retain_grad()
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (out.rgb, out.alpha, out.depth)]
    loss = (out.rgb * vs[0]).sum() + (out.alpha * vs[1]).sum() + (out.depth * vs[2]).sum()
    loss.backward()
    grads = {n: p.grad for n, p in zip(GRAD_NAMES, leaves)}
    grads["means2d"] = out.means2d.grad
    return out, grads


# D = 2 runs the generic-channel loops; tile 12 leaves partial 8-pixel vector groups (lane masks).
@pytest.mark.parametrize("seed,D,tile", [(0, 3, 16), (1, 3, 16), (2, 2, 16), (3, 3, 12)])
def test_cpu_matches_reference(seed, D, tile):
    params = random_scene(seed=seed, D=D)
    bg = torch.linspace(0.1, 0.3, D)
    ref, g_ref = render_and_vjp("torch", params, bg, tile_size=tile)
    cpu, g_cpu = render_and_vjp("cpu", params, bg, tile_size=tile)
    assert (ref.radii > 0).sum() > 100 and (ref.radii == 0).sum() >= 10  # visible and culled ones exercised
    assert torch.equal(ref.radii, cpu.radii)
    # Forward: same float32 math in a different order (and a polynomial exp in C++): 1e-4 absolute is ~1000x
    # the observed differences (~1e-6) yet far below one skipped Gaussian (>= 1/255).
    for name in ("rgb", "alpha", "depth"):
        torch.testing.assert_close(getattr(cpu, name), getattr(ref, name), rtol=0, atol=1e-4)
    vis = ref.radii > 0  # means2d is only meaningful for visible Gaussians
    torch.testing.assert_close(cpu.means2d[vis], ref.means2d[vis], rtol=1e-5, atol=1e-4)
    # Gradients: measure ||g_cpu - g_ref|| / ||g_ref|| per tensor (elementwise checks are dominated by entries
    # that are sums of many cancelling terms); observed ~1e-6, bound 1e-3.
    for name, gr in g_ref.items():
        rel = ((g_cpu[name] - gr).norm() / gr.norm()).item()
        assert gr.norm() > 0 and rel < 1e-3, f"{name}: relative error {rel:.2e}"


def test_reference_gradcheck_float64():
    # Three large Gaussians on an 8x8 image: every pixel gets alpha far above 1/255, opacities below 0.99 and
    # T stays far above 1e-4, so the op is smooth around these inputs.
    K = torch.tensor([[8.0, 0.0, 4.0], [0.0, 8.0, 4.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    g = torch.Generator().manual_seed(3)
    means = torch.tensor([[0.1, -0.2, 2.0], [-0.3, 0.1, 2.5], [0.2, 0.3, 3.0]], dtype=torch.float64)
    quats = torch.randn(3, 4, generator=g, dtype=torch.float64)
    scales = torch.tensor([[1.0, 0.8, 0.9], [0.9, 1.2, 1.0], [1.1, 1.0, 0.7]], dtype=torch.float64)
    opac = torch.tensor([0.5, 0.6, 0.4], dtype=torch.float64)
    colors = torch.rand(3, 3, generator=g, dtype=torch.float64)
    bg = torch.tensor([0.2, 0.1, 0.3], dtype=torch.float64)
    w2c = torch.eye(4, dtype=torch.float64)

    def f(m, q, s, o, c):
        rgb, alpha, depth, *_ = rasterize_gaussians_ref(m, q, s, o, c, w2c, K, 8, 8, bg)
        return rgb, alpha, depth

    inputs = [t.requires_grad_(True) for t in (means, quats, scales, opac, colors)]
    # fast_mode checks random projections of the Jacobian (the full one needs ~400 backward passes).
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_no_gaussians_returns_background(backend):
    params = [t[:0] for t in random_scene()]
    bg = torch.tensor([0.2, 0.4, 0.6])
    out, grads = render_and_vjp(backend, params, bg)
    assert isinstance(out, RasterOutput)
    assert torch.equal(out.rgb, bg.expand(H, W, 3))
    assert torch.equal(out.alpha, torch.zeros(H, W, 1)) and torch.equal(out.depth, torch.zeros(H, W, 1))
    assert out.means2d.shape == (0, 2) and out.radii.shape == (0,) and out.radii.dtype == torch.int32
    assert grads["means"].shape == (0, 3)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_all_behind_camera(backend):
    params = random_scene(N=20)
    params[0][:, 2] = -torch.rand(20) - 0.005  # z in (-1.005, -0.005): all <= near
    out, grads = render_and_vjp(backend, params)
    assert (out.radii == 0).all()
    assert torch.equal(out.rgb, torch.zeros(H, W, 3)) and torch.equal(out.alpha, torch.zeros(H, W, 1))
    for name in GRAD_NAMES:
        assert torch.equal(grads[name], torch.zeros_like(grads[name]))


def test_one_gaussian_and_degenerate_scale_match_reference():
    params = random_scene(N=3, seed=4)
    params[0] = torch.tensor([[0.0, 0.0, 2.0], [0.1, 0.05, 1.5], [-0.2, 0.1, 3.0]])
    params[2][1] = 0.0  # zero scale: the 2D covariance is just the eps2d dilation
    for sl in (slice(0, 1), slice(0, 3)):
        sub = [t[sl] for t in params]
        ref, g_ref = render_and_vjp("torch", sub)
        cpu, g_cpu = render_and_vjp("cpu", sub)
        assert (cpu.radii > 0).all()
        torch.testing.assert_close(cpu.rgb, ref.rgb, rtol=0, atol=1e-4)
        for name, gr in g_ref.items():
            assert torch.isfinite(g_cpu[name]).all()
            assert ((g_cpu[name] - gr).norm() / gr.norm().clamp_min(1e-12)).item() < 1e-3, name


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_empty_image_region_is_background(backend):
    params = random_scene(N=100)
    params[0][:, 0] = -params[0][:, 0].abs() * 0.3 - 0.2 * params[0][:, 2].abs()  # all left of x/z = -0.2
    params[2] = params[2] * 0.1
    bg = torch.tensor([0.5, 0.25, 0.125])
    out, _ = render_and_vjp(backend, params, bg)
    right = slice(50, None)  # x/z >= 0.36 there, far beyond every Gaussian's 3-sigma footprint
    assert torch.equal(out.rgb[:, right], bg.expand(H, W - 50, 3))
    assert torch.equal(out.alpha[:, right], torch.zeros(H, W - 50, 1))
    assert out.alpha[:, :20].max() > 0.5


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_hand_computed_isotropic_gaussian(backend):
    # Camera point (0, 0, 2), fx = fy = 100, cx = cy = 32.5: mean2d = (32.5, 32.5), the center of pixel (32, 32)
    # with pixel centers at +0.5. The sample there has power 0, so alpha = opacity and
    # rgb = o c + (1 - o) bg (up to one float rounding).
    K = torch.tensor([[100.0, 0.0, 32.5], [0.0, 100.0, 32.5], [0.0, 0.0, 1.0]])
    o, s, z = 0.7, 0.02, 2.0
    color, bg = torch.tensor([[0.9, 0.5, 0.1]]), torch.tensor([0.2, 0.3, 0.4])
    out = rasterize_gaussians(torch.tensor([[0.0, 0.0, z]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
                              torch.full((1, 3), s), torch.tensor([o]), color, torch.eye(4), K, W, H, bg,
                              backend=backend)
    assert out.means2d.tolist() == [[32.5, 32.5]]
    torch.testing.assert_close(out.rgb[32, 32], o * color[0] + (1 - o) * bg, rtol=0, atol=1e-6)
    torch.testing.assert_close(out.alpha[32, 32, 0], torch.tensor(o), rtol=0, atol=1e-6)
    torch.testing.assert_close(out.depth[32, 32, 0], torch.tensor(o * z), rtol=0, atol=1e-6)
    # One pixel to the right: dx = 1 px, 2D variance (f s / z)^2 + eps2d.
    var = (100 * s / z) ** 2 + 0.3
    a = o * math.exp(-0.5 / var)
    torch.testing.assert_close(out.rgb[32, 33], a * color[0] + (1 - a) * bg, rtol=0, atol=1e-6)
    r = math.ceil(3 * math.sqrt(var + math.sqrt(0.1)))  # isotropic: mid^2 - det = 0 -> clamped to 0.1
    assert out.radii.tolist() == [r]


def test_bad_inputs_raise():
    p = random_scene(N=5)
    args = (torch.eye(4), K64, W, H)
    with pytest.raises(ValueError, match=r"means must have shape \[N, 3\], got \(5, 2\)"):
        rasterize_gaussians(p[0][:, :2], *p[1:], *args)
    with pytest.raises(ValueError, match=r"quats must have shape \[N, 4\] with N=5"):
        rasterize_gaussians(p[0], p[1][:4], *p[2:], *args)
    with pytest.raises(ValueError, match=r"opacities must have shape \[N\]"):
        rasterize_gaussians(*p[:3], p[3][:, None], p[4], *args)
    with pytest.raises(ValueError, match=r"world_to_cam must have shape \[4, 4\], got \(3, 4\)"):
        rasterize_gaussians(*p, torch.eye(4)[:3], K64, W, H)
    with pytest.raises(ValueError, match=r"background must have shape \[D\] with D=3"):
        rasterize_gaussians(*p, *args, torch.zeros(4))
    bad = p[2].clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="scales contains NaN or Inf"):
        rasterize_gaussians(p[0], p[1], bad, *p[3:], *args)
    with pytest.raises(ValueError, match="backend must be one of"):
        rasterize_gaussians(*p, *args, backend="cuda")
    with pytest.raises(ValueError, match="width must be a positive int"):
        rasterize_gaussians(*p, torch.eye(4), K64, 0, H)


def test_cpu_kernels_check_inputs():
    ext = rz._ext()
    p = random_scene(N=5)
    with pytest.raises(RuntimeError, match="quats must have shape"):
        ext.project_forward(p[0], p[1][:4].contiguous(), p[2], torch.eye(4), K64, W, H, 0.01, 0.3)
    with pytest.raises(RuntimeError, match="means must be float32"):
        ext.project_forward(p[0].double(), p[1], p[2], torch.eye(4), K64, W, H, 0.01, 0.3)


def test_auto_falls_back_to_torch_with_one_warning(monkeypatch):
    def broken():
        raise rz.ExtensionBuildError("no compiler (test)")

    monkeypatch.setattr(rz, "_ext", broken)
    p = random_scene(N=20)
    with pytest.warns(RuntimeWarning, match="falls back to the slow torch reference.*no compiler"):
        out = rasterize_gaussians(*p, torch.eye(4), K64, W, H)
    assert out.rgb.shape == (H, W, 3)


@pytest.mark.gpu
def test_gsplat_matches_reference_on_cuda():
    pytest.importorskip("gsplat")
    params = [t.cuda() for t in random_scene(seed=5)]
    K, w2c, bg = K64.cuda(), torch.eye(4, device="cuda"), torch.tensor([0.1, 0.2, 0.3], device="cuda")
    ref, g_ref = render_and_vjp_device("torch", params, bg, K, w2c)
    gs, g_gs = render_and_vjp_device("gsplat", params, bg, K, w2c)
    # gsplat clamps alpha at 0.999 (we: 0.99) and may size radii slightly differently: looser bounds.
    for name in ("rgb", "alpha", "depth"):
        assert (getattr(gs, name) - getattr(ref, name)).abs().mean() < 1e-3
    for name, gr in g_ref.items():
        assert ((g_gs[name] - gr).norm() / gr.norm()).item() < 5e-2, name


def render_and_vjp_device(backend, params, bg, K, w2c):
    leaves = [p.clone().requires_grad_(True) for p in params]
    out = rasterize_gaussians(*leaves, w2c, K, W, H, bg, backend=backend)
    out.means2d.retain_grad()
    g = torch.Generator(device=params[0].device).manual_seed(1)
    loss = sum((t * torch.randn(t.shape, generator=g, device=t.device)).sum() for t in (out.rgb, out.alpha, out.depth))
    loss.backward()
    grads = {n: p.grad for n, p in zip(GRAD_NAMES, leaves)}
    grads["means2d"] = out.means2d.grad
    return out, grads
