"""The Gaussian ray caster: cpu kernels vs the torch twin, gradients, analytic cases, packets, the renderer."""

import math

import pytest
import torch

from recon.cameras import Cameras, look_at
from recon.renderers import GaussianSettings, RenderSettings, render
from recon.renderers.gaussians._ref_raycast import raycast_ref
from recon.renderers.gaussians.raycast import GaussianRayCaster, raycast_gaussians
from recon.renderers.gaussians.raycast_render import _tile_order
from recon.scenes.gaussians import GaussianScene
from recon.sh import SH_C0

GRAD_NAMES = ("means", "quats", "scales", "opacities", "colors")


def random_gaussians(N=250, D=3, seed=0, dtype=torch.float32):
    """Overlapping anisotropic Gaussians around the origin (radius ~1), varied opacities (some below 1/255)."""
    g = torch.Generator().manual_seed(seed)
    means = torch.randn(N, 3, generator=g, dtype=torch.float64) * 0.5
    quats = torch.randn(N, 4, generator=g, dtype=torch.float64)
    scales = torch.rand(N, 3, generator=g, dtype=torch.float64) * 0.15 + 0.01
    opacities = torch.rand(N, generator=g, dtype=torch.float64) * 0.98 + 0.001
    colors = torch.rand(N, D, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (means, quats, scales, opacities, colors)]


def camera_rays(width=32, height=24, tiled=True):
    """Rays of a pinhole camera at distance 4 looking at the origin, pixel centers in 8 x 8 tile order."""
    w2c = look_at(torch.tensor([[3.0, -2.0, 1.5]], dtype=torch.float64))
    K = torch.tensor([[[30.0, 0, width / 2], [0, 30.0, height / 2], [0, 0, 1]]], dtype=torch.float64)
    cams = Cameras(world_to_cam=w2c.float(), K=K.float(), width=width, height=height)
    pix = _tile_order(width, height, "cpu")[0] if tiled else None
    o, d = cams.rays(None if pix is None else pix[None])
    return o[0].contiguous(), d[0].contiguous()


def random_rays(R=300, seed=3):
    """Rays with different origins and directions, not unit length (t is in their units)."""
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(R, 3, generator=g) * 0.3 + torch.tensor([0.0, 0.0, -3.0])
    d = torch.randn(R, 3, generator=g) * 0.2 + torch.tensor([0.0, 0.0, 1.0])
    return o, d * (0.5 + torch.rand(R, 1, generator=g))


def trace_and_vjp(backend, params, rays, order="center", packet=1, tmin=0.01, seed=1):
    leaves = [p.clone().requires_grad_(True) for p in params]
    caster = GaussianRayCaster(*leaves[:4], backend=backend)
    out = caster.trace(*rays, leaves[4], tmin=tmin, order=order, packet=packet)
    g = torch.Generator().manual_seed(seed)
    vs = [torch.randn(t.shape, generator=g, dtype=t.dtype) for t in (out.features, out.alpha, out.depth)]
    loss = (out.features * vs[0]).sum() + (out.alpha * vs[1]).sum() + (out.depth * vs[2]).sum()
    loss.backward()
    return out, [p.grad for p in leaves]


@pytest.mark.parametrize("order", ["center", "hit"])
@pytest.mark.parametrize("rays,packet", [("camera", 64), ("camera", 1), ("random", 1), ("random", 64)])
def test_cpu_matches_torch_twin(order, rays, packet):
    params = random_gaussians()
    ray_set = camera_rays() if rays == "camera" else random_rays()
    cpu, g_cpu = trace_and_vjp("cpu", params, ray_set, order, packet)
    ref, g_ref = trace_and_vjp("torch", params, ray_set, order, packet)
    assert float(ref.n_hits.float().mean()) > 2 and int(ref.n_hits.max()) > 10  # many overlapping hits
    # float32 sums of ~20 terms of O(1): 1e-4 absolute is ~100 ulp of headroom.
    for a, b in ((cpu.features, ref.features), (cpu.alpha, ref.alpha), (cpu.depth, ref.depth)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert torch.equal(cpu.n_hits.long(), ref.n_hits.long())
    for name, a, b in zip(GRAD_NAMES, g_cpu, g_ref):
        rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
        assert rel < 1e-3, f"{name}: relative VJP error {rel:.2e}"


def test_packets_give_the_same_result_as_single_rays():
    params = random_gaussians(N=400, seed=5)
    rays = camera_rays(40, 32)
    leaves = params[:4]
    caster = GaussianRayCaster(*leaves)
    one = caster.trace(*rays, params[4], packet=1)
    many = caster.trace(*rays, params[4], packet=64)
    assert torch.equal(one.features, many.features) and torch.equal(one.n_hits, many.n_hits)


def test_twin_gradcheck_float64():
    params = random_gaussians(N=4, seed=2, dtype=torch.float64)
    params[0] = params[0] * 0.2  # keep the four Gaussians on the rays' path
    params[3] = torch.full((4,), 0.7, dtype=torch.float64)
    o = torch.tensor([[0.0, 0.0, -3.0], [0.05, -0.02, -3.0], [-0.03, 0.04, -3.0]], dtype=torch.float64)
    d = torch.tensor([[0.0, 0.0, 1.0], [0.01, 0.0, 1.0], [0.0, -0.01, 1.1]], dtype=torch.float64)

    def fn(means, quats, scales, opacities, colors):
        f, a, z, _ = raycast_ref(means, quats, scales, opacities, colors, o, d, 0.0, math.inf, "hit")
        return f, a, z

    leaves = [p.clone().requires_grad_(True) for p in params]
    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-5)


def test_single_gaussian_analytic():
    """An isotropic Gaussian (sigma 0.1, opacity 0.8) on the z axis: the response at offset b is exp(-b^2/2s^2)."""
    s, o_ = 0.1, 0.8
    params = [torch.tensor([[0.0, 0.0, 2.0]]), torch.tensor([[1.0, 0.0, 0.0, 0.0]]), torch.full((1, 3), s),
              torch.tensor([o_]), torch.tensor([[0.2, 0.5, 1.0]])]
    b = torch.tensor([0.0, 0.05, 0.25, 0.4])  # 0.4 = 4 sigma: alpha 2.7e-4 < 1/255, no hit
    o = torch.stack([b, torch.zeros(4), torch.zeros(4)], -1)
    d = torch.tensor([[0.0, 0.0, 2.0]]).expand(4, 3)  # non-unit: t = 1 at the center
    for backend in ("cpu", "torch"):
        out = raycast_gaussians(*params, o, d, backend=backend, order="hit")
        alpha = o_ * torch.exp(-0.5 * b**2 / s**2)
        alpha = torch.where(alpha >= 1 / 255, alpha, torch.zeros_like(alpha))
        torch.testing.assert_close(out.alpha[:, 0], alpha, atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.features, alpha[:, None] * params[4], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(out.depth[:, 0], alpha * 1.0, atol=1e-6, rtol=1e-5)  # t* = 1
        assert out.n_hits.tolist() == [1, 1, 1, 0]


def test_empty_faint_and_behind():
    rays = random_rays(20)
    empty = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3)]
    for backend in ("cpu", "torch"):
        out = raycast_gaussians(*empty, *rays, backend=backend)
        assert out.features.shape == (20, 3) and float(out.alpha.abs().max()) == 0
        params = random_gaussians(N=50)
        params[3] = torch.full((50,), 1.0 / 256)  # below 1/255: never hit
        out = raycast_gaussians(*params, *rays, backend=backend)
        assert float(out.alpha.max()) == 0 and int(out.n_hits.sum()) == 0
        # Everything behind the origins (tmin = 0): nothing hit.
        params = random_gaussians(N=50)
        out = raycast_gaussians(*params, rays[0], -rays[1], backend=backend)
        assert float(out.alpha.max()) == 0
    leaves = [p.clone().requires_grad_(True) for p in random_gaussians(N=10)]
    out = raycast_gaussians(*leaves, rays[0], -rays[1])
    (out.features.sum() + out.alpha.sum()).backward()
    assert all(float(p.grad.abs().max()) == 0 for p in leaves)


def test_transmittance():
    params = random_gaussians(N=300, seed=4)
    o, d = random_rays(200, seed=6)
    cpu = GaussianRayCaster(*params[:4], backend="cpu").transmittance(o, d, tmin=0.5, tmax=6.0)
    ref = GaussianRayCaster(*params[:4], backend="torch").transmittance(o, d, tmin=0.5, tmax=6.0)
    torch.testing.assert_close(cpu, ref, atol=2e-5, rtol=0)
    assert 0.05 < float(cpu.mean()) < 0.95
    # Where the ordered compositing did not stop early, T = 1 - alpha exactly (the product does not depend
    # on the order).
    out = GaussianRayCaster(*params[:4]).trace(o, d, params[4], tmin=0.5, tmax=6.0)
    keep = cpu > 1e-3
    torch.testing.assert_close(cpu[keep], 1 - out.alpha[keep, 0], atol=1e-5, rtol=0)


def dense_cloud_rays(N=3000, R=1500, seed=7):
    """Many overlapping Gaussians (a tree several eight-wide levels deep) and rays that start inside the cloud,
    as shadow rays do, some of them axis-parallel (zero direction components) and some from a Gaussian's mean."""
    params = random_gaussians(N=N, seed=seed)[:4]
    g = torch.Generator().manual_seed(seed + 1)
    o = torch.randn(R, 3, generator=g) * 0.4
    d = torch.randn(R, 3, generator=g)
    d[:100] = torch.eye(3).repeat(34, 1)[:100] * torch.where(torch.rand(100, 1, generator=g) < 0.5, -1.0, 1.0)
    o[100:200] = params[0][:100]
    return params, o.contiguous(), d.contiguous()


def test_transmittance_from_inside_a_dense_cloud():
    """The eight-wide visibility tree (cuda/gaussians_rt) against the torch twin where its cost and its corner
    cases are: origins inside thousands of overlapping Gaussians, axis-parallel rays, rays from a mean."""
    params, o, d = dense_cloud_rays()
    cpu = GaussianRayCaster(*params, backend="cpu").transmittance(o, d, tmin=1e-3)
    ref = GaussianRayCaster(*params, backend="torch").transmittance(o, d, tmin=1e-3)
    torch.testing.assert_close(cpu, ref, atol=2e-5, rtol=0)
    assert 0.2 < float((cpu == 0).float().mean()) < 0.8 and float(cpu.max()) > 0.5  # blocked and open rays
    # The same rays queried again, in another order and with a tmax: the same values (the traversal sorts the
    # rays by origin internally).
    caster = GaussianRayCaster(*params, backend="cpu")
    perm = torch.randperm(len(o), generator=torch.Generator().manual_seed(0))
    again = caster.transmittance(o[perm], d[perm], tmin=1e-3)
    assert torch.equal(again, cpu[perm])
    short = caster.transmittance(o, d, tmin=1e-3, tmax=0.3)
    torch.testing.assert_close(short, GaussianRayCaster(*params, backend="torch").transmittance(
        o, d, tmin=1e-3, tmax=0.3), atol=2e-5, rtol=0)
    assert bool((short >= cpu).all())


def test_transmittance_many_rays_and_tiny_scenes():
    """Enough rays that the ray sort is split into parts (one per thread, 65,536 rays each at least): the same
    values as the rays sent in small slices; and scenes whose whole tree is one leaf or a few."""
    params, o, d = dense_cloud_rays(N=300, R=200)
    g = torch.Generator().manual_seed(9)
    o = (torch.randn(140_000, 3, generator=g) * 0.5).contiguous()
    d = torch.randn(140_000, 3, generator=g).contiguous()
    caster = GaussianRayCaster(*params, backend="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        whole = caster.transmittance(o, d, tmin=1e-3)
    finally:
        torch.set_num_threads(threads)
    sliced = torch.cat([caster.transmittance(o[i:i + 20_000], d[i:i + 20_000], tmin=1e-3)
                        for i in range(0, len(o), 20_000)])
    assert torch.equal(whole, sliced)
    for n in (1, 3, 8, 9, 17):
        small = [p[:n].contiguous() for p in params]
        cpu = GaussianRayCaster(*small, backend="cpu").transmittance(o[:500], d[:500], tmin=1e-3)
        ref = GaussianRayCaster(*small, backend="torch").transmittance(o[:500], d[:500], tmin=1e-3)
        torch.testing.assert_close(cpu, ref, atol=2e-5, rtol=0)
        assert n < 8 or float((cpu < 1).float().mean()) > 0.01  # the rays meet the small scenes too


def test_backward_is_deterministic():
    """The backward pass's per-thread sums cover the same rays in the same order every call: equal bits."""
    params = random_gaussians(N=600, seed=8)
    rays = camera_rays(64, 48)
    _, first = trace_and_vjp("cpu", params, rays, packet=64)
    for _ in range(3):
        _, again = trace_and_vjp("cpu", params, rays, packet=64)
        assert all(torch.equal(a, b) for a, b in zip(first, again))


@pytest.mark.slow
def test_transmittance_portable_build(tmp_path):
    """The kernels without AVX2 (RECON_NO_AVX2: the scalar slab and ellipsoid tests, as on ARM laptops) give
    the transmittance of the AVX2 build."""
    import os
    import subprocess
    import sys

    params, o, d = dense_cloud_rays(N=1000, R=600)
    torch.save({"params": params, "o": o, "d": d}, tmp_path / "in.pt")
    code = ("import torch, sys; from recon.renderers.gaussians.raycast import GaussianRayCaster; "
            "x = torch.load(sys.argv[1], weights_only=True); "
            "torch.save(GaussianRayCaster(*x['params'], backend='cpu').transmittance(x['o'], x['d'], tmin=1e-3), "
            "sys.argv[2])")
    env = {**os.environ, "RECON_NO_AVX2": "1", "RECON_EXT_CACHE": str(tmp_path / "ext")}
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "in.pt"), str(tmp_path / "out.pt")], env=env,
                   check=True, capture_output=True, timeout=600)
    portable = torch.load(tmp_path / "out.pt", weights_only=True)
    native = GaussianRayCaster(*params, backend="cpu").transmittance(o, d, tmin=1e-3)
    torch.testing.assert_close(portable, native, atol=1e-5, rtol=0)


def test_bad_input():
    params = random_gaussians(N=5)
    rays = random_rays(3)
    with pytest.raises(ValueError, match=r"quats must have shape \[N, 4\]"):
        GaussianRayCaster(params[0], params[1][:4], params[2], params[3])
    bad = params[0].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="means contains NaN"):
        GaussianRayCaster(bad, *params[1:4])
    caster = GaussianRayCaster(*params[:4])
    with pytest.raises(ValueError, match=r"dirs must have shape \[R, 3\]"):
        caster.trace(rays[0], rays[1][:2], params[4])
    with pytest.raises(ValueError, match="order must be one of"):
        caster.trace(*rays, params[4], order="depth")
    with pytest.raises(ValueError, match="packet must be a positive int"):
        caster.trace(*rays, params[4], packet=0)
    with pytest.raises(ValueError, match="tmin < tmax"):
        caster.trace(*rays, params[4], tmin=2.0, tmax=1.0)
    with pytest.raises(ValueError, match=r"colors must have shape \[N, D\]"):
        caster.trace(*rays, params[4][:3])
    with pytest.raises(ValueError, match="backend must be one of"):
        GaussianRayCaster(*params[:4], backend="gsplat")


def scene_from(params) -> GaussianScene:
    means, quats, scales, opacities, colors = params
    N = len(means)
    return GaussianScene(means, quats, scales.log(), torch.logit(opacities.clamp(1e-4, 1 - 1e-4)),
                         ((colors - 0.5) / SH_C0)[:, None], torch.zeros(N, 0, 3), 0)


def orbit_cameras(width=64, height=48, model="pinhole", distortion=None, f=55.0):
    eyes = torch.tensor([[3.5, 0.5, 1.0], [-1.0, 3.2, 1.5]])
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]]).expand(2, 3, 3)
    return Cameras(world_to_cam=look_at(eyes), K=K.clone(), width=width, height=height, model=model,
                   distortion=distortion)


def test_render_matches_rasterizer():
    """Same scene, same cameras: the ray-cast image agrees with the rasterized one. What differs: the
    rasterizer's affine (EWA) approximation of the projection, its per-tile center-depth order vs per-ray,
    and the dilation (2D there, its 3D equivalent here). Measured 38.6 dB on this scene."""
    params = random_gaussians(N=400, seed=7)
    params[2] = params[2] * 0.5
    scene = scene_from(params)
    cams = orbit_cameras()
    outs = {m: render(scene, cams, RenderSettings(background=(1.0, 1.0, 1.0), gaussians=GaussianSettings(method=m)))
            for m in ("raster", "raycast")}
    mse = ((outs["raster"].rgb - outs["raycast"].rgb) ** 2).mean().detach()
    assert float(-10 * torch.log10(mse)) > 35.0
    assert float(outs["raycast"].alpha.mean()) > 0.1
    both = (outs["raster"].alpha > 0.9) & (outs["raycast"].alpha > 0.9)
    rel = ((outs["raster"].depth - outs["raycast"].depth).abs() / outs["raster"].depth)[both]
    assert float(rel.median()) < 0.01


def test_render_raycast_densification_gradients_match_rasterizer():
    """aux.means2d.grad (dL/d pixel, what densification thresholds) agrees with the rasterizer's."""
    params = random_gaussians(N=300, seed=8)
    params[2] = params[2] * 0.5
    grads = {}
    for m in ("raster", "raycast"):
        scene = scene_from(params)
        out = render(scene, orbit_cameras()[:1], RenderSettings(gaussians=GaussianSettings(method=m)))
        for m2d in out.aux.means2d:
            m2d.retain_grad()
        out.rgb.square().sum().backward()
        vis = out.aux.radii[0] > 0
        grads[m] = torch.where(vis[:, None], out.aux.means2d[0].grad, torch.zeros(1)).norm(dim=-1)
    a, b = grads["raster"], grads["raycast"]
    strong = a > a.quantile(0.5)
    assert float(strong.sum()) > 30
    ratio = b[strong].sum() / a[strong].sum()
    assert 0.8 < float(ratio) < 1.25
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.8


def test_fisheye_render():
    """A fisheye camera sees a Gaussian where Cameras.project puts it, including beyond 90 degrees off axis;
    the rasterizer refuses the camera."""
    # Three bright Gaussians: in front, 60 degrees and 100 degrees off the camera axis.
    cam = orbit_cameras(64, 64, "fisheye", torch.zeros(2, 4), f=16.0)[:1]
    c2w = cam.cam_to_world()[0].float()
    center = c2w[:3, 3]
    dirs_cam = torch.tensor([[0.0, 0.0, 1.0], [math.sin(math.radians(60)), 0, math.cos(math.radians(60))],
                             [0.0, math.sin(math.radians(100)), math.cos(math.radians(100))]])
    means = center + 2.0 * dirs_cam @ c2w[:3, :3].T
    params = [means, torch.tensor([[1.0, 0, 0, 0]]).repeat(3, 1), torch.full((3, 3), 0.25), torch.full((3,), 0.9),
              torch.eye(3)]
    out = render(scene_from(params), cam, RenderSettings(gaussians=GaussianSettings(method="raycast", eps2d=0.0)))
    uv = cam.project(means)[0][0]
    for i in range(3):
        x, y = int(uv[i, 0]), int(uv[i, 1])
        assert 0 <= x < 64 and 0 <= y < 64
        assert float(out.alpha[0, y, x, 0]) > 0.8
        assert int(out.rgb[0, y, x].argmax()) == i
    with pytest.raises(ValueError, match="cannot be rasterized"):
        render(scene_from(params), cam, RenderSettings())
    with pytest.raises(ValueError, match="cannot ray-cast"):
        render(scene_from(params), cam, RenderSettings(backend="gsplat", gaussians=GaussianSettings(method="raycast")))


@pytest.mark.parametrize("order", ["center", "hit"])
def test_single_rays_and_packets_agree_far_from_the_origin(order):
    """Keys are differences of large coordinates here; the traversal bounds' rounding margins keep the
    single-ray and packet paths (and the twin) in the same order."""
    params = random_gaussians(N=300, seed=11)
    offset = torch.tensor([3000.0, -2000.0, 1000.0])
    params[0] = params[0] + offset
    o, d = camera_rays(40, 32)
    caster = GaussianRayCaster(*params[:4])
    one = caster.trace(o + offset, d, params[4], packet=1, order=order)
    many = caster.trace(o + offset, d, params[4], packet=64, order=order)
    assert torch.equal(one.n_hits, many.n_hits)
    torch.testing.assert_close(one.features, many.features, atol=1e-6, rtol=0)
