"""Volume compositing (renderers/volume): cpu kernels vs the torch twin, gradients, closed forms, bad input."""

import math

import pytest
import torch

from recon.renderers.volume import composite


def packed_samples(R=60, max_count=24, mode="density", seed=0, dtype=torch.float32):
    """Random rays with 0..max_count sorted samples each (some rays empty), dense enough that many rays stop
    early (transmittance below 1e-4) and many do not."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_count + 1, (R,), generator=g)
    counts[:3] = torch.tensor([0, 1, max_count])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
    S = int(offsets[-1])
    deltas = torch.rand(S, generator=g, dtype=torch.float64) * 0.2 + 0.01
    ray = torch.repeat_interleave(torch.arange(R), counts)
    t_ends = torch.zeros(S, dtype=torch.float64)
    for r in range(R):  # contiguous intervals along each ray
        seg = slice(int(offsets[r]), int(offsets[r + 1]))
        t_ends[seg] = 1.0 + deltas[seg].cumsum(0)
    t_starts = t_ends - deltas
    scale = (torch.rand(R, generator=g, dtype=torch.float64) * 40)[ray]  # per-ray density scale: some rays opaque
    values = torch.rand(S, generator=g, dtype=torch.float64) * (scale if mode == "density" else scale / 40)
    colors = torch.rand(S, 3, generator=g, dtype=torch.float64)
    return [x.to(dtype) for x in (values, colors, t_starts, t_ends)], offsets


def run(backend, params, offsets, mode, seed=1):
    leaves = [p.clone().requires_grad_(True) for p in params]
    out = composite(*leaves, offsets, mode=mode, backend=backend)
    g = torch.Generator().manual_seed(seed)
    parts = (out.rgb, out.opacity, out.depth, out.weights)
    loss = sum((x * torch.randn(x.shape, generator=g, dtype=x.dtype)).sum() for x in parts)
    loss.backward()
    return out, [p.grad for p in leaves]


@pytest.mark.parametrize("mode", ["density", "alpha"])
def test_cpu_matches_torch_twin(mode):
    params, offsets = packed_samples(mode=mode)
    cpu, g_cpu = run("cpu", params, offsets, mode)
    ref, g_ref = run("torch", params, offsets, mode)
    counts = offsets[1:] - offsets[:-1]
    stopped = ref.count < counts
    assert 5 < int(stopped.sum()) < len(counts) - 5  # early stops and full rays both covered
    for a, b in ((cpu.rgb, ref.rgb), (cpu.opacity, ref.opacity), (cpu.depth, ref.depth),
                 (cpu.weights, ref.weights)):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    assert cpu.count.dtype == ref.count.dtype == torch.int32 and torch.equal(cpu.count, ref.count)
    for name, a, b in zip(("values", "colors", "t_starts", "t_ends"), g_cpu, g_ref):
        rel = float((a - b).norm() / b.norm().clamp_min(1e-12))
        assert rel < 1e-3, f"{name}: relative VJP error {rel:.2e}"


@pytest.mark.parametrize("mode", ["density", "alpha"])
def test_twin_gradcheck_float64(mode):
    params, offsets = packed_samples(R=6, max_count=5, mode=mode, seed=3, dtype=torch.float64)
    if mode == "density":
        params[0] = params[0].clamp_max(3.0)  # stay away from the early-stop threshold (a step in the function)

    def fn(*p):
        out = composite(*p, offsets, mode=mode, backend="torch")
        return out.rgb, out.opacity, out.depth, out.weights

    assert torch.autograd.gradcheck(fn, [p.clone().requires_grad_(True) for p in params], eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_constant_density_slab_closed_form(backend):
    """A slab of density sigma between depths a and b (zero elsewhere) along a ray sampled uniformly from 0 to
    4: opacity 1 - exp(-sigma L) exactly (the per-interval integral is exact for a piecewise constant
    density), color c times that, and the expected depth a + 1/sigma - L exp(-sigma L) / (1 - exp(-sigma L))."""
    sigma, a, b, n = 1.7, 1.25, 2.5, 4096
    edges = torch.linspace(0.0, 4.0, n + 1, dtype=torch.float64)
    mid = 0.5 * (edges[:-1] + edges[1:])
    values = ((mid > a) & (mid < b)).double() * sigma
    colors = torch.tensor([0.2, 0.5, 0.9], dtype=torch.float64).expand(n, 3)
    dtype = torch.float32 if backend == "cpu" else torch.float64
    out = composite(*(x.to(dtype).contiguous() for x in (values, colors, edges[:-1], edges[1:])),
                    torch.tensor([0, n]), backend=backend)
    L = b - a
    opacity = 1 - math.exp(-sigma * L)
    tol = 2e-6 if dtype == torch.float32 else 1e-12
    assert abs(float(out.opacity) - opacity) < tol * 5
    torch.testing.assert_close(out.rgb[0].double(), colors[0] * opacity, atol=tol * 5, rtol=0)
    expected = a + 1 / sigma - L * math.exp(-sigma * L) / opacity
    # Midpoint quadrature of the depth integral: error O(delta^2), delta = 1e-3.
    assert abs(float(out.depth) / float(out.opacity) - expected) < 1e-5


def test_early_stop_and_opaque_samples():
    """Behind an opaque sample nothing is composited; with t_eps = 0 every sample is."""
    values = torch.tensor([0.5, 1.0, 0.3, 0.8])
    colors = torch.eye(4)[:, :3].contiguous()
    t0 = torch.tensor([0.0, 1.0, 2.0, 3.0])
    offsets = torch.tensor([0, 4])
    for backend in ("cpu", "torch"):
        out = composite(values, colors, t0, t0 + 1, offsets, mode="alpha", backend=backend)
        torch.testing.assert_close(out.weights, torch.tensor([0.5, 0.5, 0.0, 0.0]))
        assert int(out.count[0]) == 2 and float(out.opacity) == 1.0
        leaves = [values.clone().requires_grad_(True), colors.clone().requires_grad_(True)]
        out = composite(leaves[0], leaves[1], t0, t0 + 1, offsets, mode="alpha", backend=backend)
        out.rgb[0, 0].backward()  # d rgb_r / d a_0 = c_0r - c_1r a_1 = 1 (the opaque sample's red is 0)
        torch.testing.assert_close(leaves[0].grad, torch.tensor([1.0, 0.0, 0.0, 0.0]))
    out = composite(values * 0.5, colors, t0, t0 + 1, offsets, mode="alpha", t_eps=0.0)
    assert int(out.count[0]) == 4


@pytest.mark.parametrize("mode", ["alpha", "density"])
def test_opaque_sample_without_early_stop_matches_twin(mode):
    """t_eps = 0: samples behind a fully opaque one are composited with weight 0, and the gradient w.r.t. the
    samples in front of it still sees them (the twin's cumprod is exact there)."""
    if mode == "alpha":
        values = torch.tensor([0.5, 1.0, 0.3, 0.6, 0.2, 0.4])
    else:
        values = torch.tensor([0.7, 80.0, 0.3, 2.0, 0.2, 0.4])  # exp(-80) is 0 in float32
    colors = torch.rand(6, 3, generator=torch.Generator().manual_seed(0))
    t0 = torch.arange(6.0)
    params = [values, colors, t0, t0 + 1]
    offsets = torch.tensor([0, 3, 6])
    outs = {}
    for backend in ("cpu", "torch"):
        leaves = [p.clone().requires_grad_(True) for p in params]
        out = composite(*leaves, offsets, mode=mode, t_eps=0.0, backend=backend)
        assert out.count.tolist() == [3, 3]
        (out.rgb.sum() + 0.5 * out.depth.sum() + out.opacity.sum()).backward()
        outs[backend] = [p.grad for p in leaves]
    for name, a, b in zip(("values", "colors", "t_starts", "t_ends"), outs["cpu"], outs["torch"]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4, msg=name)
    assert float(outs["cpu"][0][0].abs()) > 0.01  # the sample in front of the opaque one has a gradient


def test_bad_input():
    (values, colors, t0, t1), offsets = packed_samples(R=4, max_count=3)
    S = len(values)
    with pytest.raises(ValueError, match=r"colors must have shape \[S, D\]"):
        composite(values, colors[:-1], t0, t1, offsets)
    with pytest.raises(ValueError, match="offsets must be non-decreasing from 0 to the sample count"):
        composite(values, colors, t0, t1, torch.tensor([0, S + 1]))
    with pytest.raises(ValueError, match="offsets must be an int64"):
        composite(values, colors, t0, t1, offsets.int())
    for backend in ("cpu", "torch"):  # the cpu kernel checks the samples itself, with the same messages
        bad = values.clone()
        bad[0] = float("nan")
        with pytest.raises(ValueError, match=r"values must be finite and >= 0 \(densities\)"):
            composite(bad, colors, t0, t1, offsets, backend=backend)
        with pytest.raises(ValueError, match=r"values must be finite and >= 0 \(densities\)"):
            composite(-values - 1, colors, t0, t1, offsets, backend=backend)
        with pytest.raises(ValueError, match=r"values must be finite and in \[0, 1\] \(alphas\)"):
            composite(values + 2, colors, t0, t1, offsets, mode="alpha", backend=backend)
        bad = colors.clone()
        bad[-1, 2] = float("inf")
        with pytest.raises(ValueError, match="colors contains NaN or Inf"):
            composite(values, bad, t0, t1, offsets, backend=backend)
        with pytest.raises(ValueError, match="t_ends must be >= t_starts"):
            composite(values, colors, t1, t0, offsets, backend=backend)
    with pytest.raises(ValueError, match="mode must be one of"):
        composite(values, colors, t0, t1, offsets, mode="sdf")
