"""Fused Monte Carlo shading kernels (recon.shading._kernels, cuda/shading) against their torch twins, and the
``cpu`` backend of shade_mc against the ``torch`` one."""

import pytest
import torch

from recon.renderers import ShadingSettings
from recon.renderers.mesh.material import MeshTracer
from recon.renderers.mesh.render import MeshArrays
from recon.shading import _kernels as K
from recon.shading import brdf
from recon.shading.envmap import EnvLight, uv_to_dir
from recon.shading.mc import shade_mc
from recon.shading.shade import GBuffer

def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _inputs(P: int = 300, S: int = 6, seed: int = 0, dtype=torch.float32) -> dict:
    """Random shading inputs with the edge cases: back-facing l and v, roughness 0 / 1, metallic 0 / 1."""
    g = torch.Generator().manual_seed(seed)
    n = _unit(torch.randn(P, 3, generator=g, dtype=dtype))
    v = _unit(torch.randn(P, 3, generator=g, dtype=dtype) + n)  # mostly n.v > 0, some n.v < 0
    l = _unit(torch.randn(P, S, 3, generator=g, dtype=dtype) + 0.5 * n[:, None])  # both sides of the horizon
    rough = torch.rand(P, 1, generator=g, dtype=dtype)
    metal = torch.rand(P, 1, generator=g, dtype=dtype)
    q = P // 8
    rough[:q], rough[q:2 * q], metal[2 * q:3 * q], metal[3 * q:4 * q] = 0.0, 1.0, 0.0, 1.0
    v[4 * q:4 * q + 4] = -v[4 * q:4 * q + 4] * torch.sign((n[4 * q:4 * q + 4] * v[4 * q:4 * q + 4]).sum(-1))[:, None]
    return dict(n=n, v=v, l=l, base=torch.rand(P, 3, generator=g, dtype=dtype), rough=rough, metal=metal,
                radiance=torch.rand(P, S, 3, generator=g, dtype=dtype) * 3, weight=torch.rand(P, S, generator=g,
                                                                                             dtype=dtype),
                bounce=torch.rand(P, S, 3, generator=g, dtype=dtype) * 0.2)


def _shade(x: dict, backend: str, bounce: bool = True) -> torch.Tensor:
    return K.brdf_shade(x["n"], x["v"], x["l"], x["base"], x["rough"], x["metal"], x["radiance"], x["weight"],
                        x["bounce"] if bounce else None, backend=backend)


def test_edge_cases_are_present():
    x = _inputs()
    nl, nv = (x["n"][:, None] * x["l"]).sum(-1), (x["n"] * x["v"]).sum(-1)
    assert (nl < 0).any() and (nl > 0).any() and (nv < 0).any()


@pytest.mark.parametrize("bounce", [False, True])
def test_brdf_shade_forward_matches_the_twin(bounce):
    x = _inputs()
    ref, out = _shade(x, "torch", bounce), _shade(x, "cpu", bounce)
    # Same float32 operation order (no FMA contraction in the kernel); only the order of the sum over the S
    # samples differs. Roughness 0 makes D ~ 3e5, so the absolute tolerance scales with the output.
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6 * float(ref.abs().max()))
    # S = 1 given as [P, 3] rows is the per-sample (unreduced) product
    row = {k: (t[:, 0] if k in ("l", "radiance", "weight", "bounce") else t) for k, t in x.items()}
    torch.testing.assert_close(_shade(row, "cpu", bounce), _shade(row, "torch", bounce), rtol=1e-5,
                               atol=1e-6 * float(ref.abs().max()))


def test_brdf_shade_matches_principled_brdf_per_row():
    x = _inputs(S=1)
    row = {k: (t[:, 0] if k in ("l", "radiance", "weight", "bounce") else t) for k, t in x.items()}
    f = brdf.principled_brdf(row["n"], row["v"], row["l"], row["base"], row["rough"], row["metal"])
    cos = (row["n"] * row["l"]).sum(-1, keepdim=True).clamp_min(0.0)
    want = f * cos * row["radiance"] * row["weight"][:, None]
    got = _shade(row, "cpu", bounce=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6 * float(want.abs().max()))
    assert (got[(row["n"] * row["v"]).sum(-1) <= 0] == 0).all()


@pytest.mark.parametrize("bounce", [False, True])
def test_brdf_shade_vjp_matches_autograd_of_the_twin(bounce):
    x = _inputs(seed=1)
    names = ("n", "base", "rough", "metal", "radiance")
    grads = {}
    for backend in ("torch", "cpu"):
        y = {k: (t.clone().requires_grad_(True) if k in names else t) for k, t in x.items()}
        out = _shade(y, backend, bounce)
        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(5))
        grads[backend] = torch.autograd.grad((out * cot).sum(), [y[k] for k in names])
    for name, got, want in zip(names, grads["cpu"], grads["torch"]):
        # float32: the hand-written chain rule groups products differently from autograd; near the roughness-0
        # GGX peak the terms reach ~1e5, so the absolute tolerance is relative to the largest gradient
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()), msg=name)


def test_twin_gradcheck_float64():
    x = _inputs(P=6, S=2, seed=2, dtype=torch.float64)
    x["rough"] = x["rough"].clamp(0.2, 0.9)  # away from the clamp kinks, where finite differences are one-sided
    names = ("n", "base", "rough", "metal", "radiance")

    def fn(*args):
        y = dict(x, **dict(zip(names, args)))
        return K.brdf_shade(y["n"], y["v"], y["l"], y["base"], y["rough"], y["metal"], y["radiance"], y["weight"],
                            y["bounce"], backend="torch")

    assert torch.autograd.gradcheck(fn, [x[k].clone().requires_grad_(True) for k in names])


def test_sample_and_pdf_match_the_twins():
    x = _inputs(P=400, S=4, seed=3)
    mat = (x["n"], x["v"], x["base"], x["rough"], x["metal"])
    u = torch.rand(400, 4, 3, generator=torch.Generator().manual_seed(7))
    l_cpu, pdf_cpu = K.sample_brdf(*mat, u, backend="cpu")
    l_ref, pdf_ref = K.sample_brdf(*mat, u, backend="torch")
    # the same sample for the same u: only sin / cos differ in the last bits (libm vs torch's vectorized ones)
    torch.testing.assert_close(l_cpu, l_ref, rtol=0, atol=1e-5)
    # at a fixed l the pdf is the twin's to rounding (the GGX peak at roughness 0 makes the scale ~1e5)
    want = K.pdf_brdf(*mat[:2], l_cpu, *mat[2:], backend="torch")
    torch.testing.assert_close(pdf_cpu, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(K.pdf_brdf(*mat[:2], x["l"], *mat[2:], backend="cpu"),
                               K.pdf_brdf(*mat[:2], x["l"], *mat[2:], backend="torch"), rtol=1e-5, atol=1e-6)
    # [P, 3] rows are the flat samplers of recon.shading.brdf
    l1, p1 = K.sample_brdf(*mat, u[:, 0], backend="cpu")
    l2, p2 = brdf.sample_brdf(*mat, u[:, 0])
    assert l1.shape == (400, 3) and p1.shape == (400,)
    torch.testing.assert_close(l1, l2, rtol=0, atol=1e-5)


def test_empty_batch_and_errors():
    x = _inputs(P=0, S=3)
    assert _shade(x, "cpu").shape == (0, 3)
    x = _inputs(P=4, S=3)
    with pytest.raises(ValueError, match="radiance must have S = l.shape"):
        K.brdf_shade(x["n"], x["v"], x["l"], x["base"], x["rough"], x["metal"], x["radiance"][:, :1],
                     x["weight"], backend="cpu")
    with pytest.raises(ValueError, match=r"rough must have shape \[P, 1\]"):
        K.brdf_shade(x["n"], x["v"], x["l"], x["base"], x["rough"][:, 0], x["metal"], x["radiance"], x["weight"])
    with pytest.raises(ValueError, match="float32"):
        _shade({k: t.double() for k, t in x.items()}, "cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        _shade(x, "cuda")
    with pytest.raises(RuntimeError, match="l must have shape"):  # the C++ repeats the checks
        K.extension().pdf_brdf(x["n"], x["v"], x["l"][:2], x["base"], x["rough"], x["metal"])


def test_auto_falls_back_to_the_twin_without_the_extension(monkeypatch):
    x = _inputs(P=4, S=2)
    monkeypatch.setattr(K, "extension", lambda: None)
    assert K.resolve_backend("auto", x["n"]) == "torch"
    with pytest.raises(ValueError, match="could not be built"):
        K.resolve_backend("cpu", x["n"])
    torch.testing.assert_close(_shade(x, "auto"), _shade(x, "torch"), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------- shade_mc


def _quad(z: float, half: float, flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    return v, (f[:, [0, 2, 1]] if flip else f)


def _scene() -> tuple[GBuffer, EnvLight, MeshTracer]:
    """A floor under a tilted occluder (facing down, so light bounces back) and a smooth colored sky."""
    (v0, f0), (v1, f1) = _quad(0.0, 1.0), _quad(0.3, 0.5, flip=True)
    v1 = v1 + torch.tensor([0.2, 0.0, 0.0]) + v1[:, :1] * torch.tensor([0.0, 0.0, 0.2])
    verts = torch.cat([v0, v1])
    mesh = MeshArrays(vertices=verts, faces=torch.cat([f0, f1 + 4]), vertex_colors=torch.full_like(verts, 0.7),
                      roughness_factor=0.4, metallic_factor=0.0)
    g = torch.Generator().manual_seed(0)
    P = 40
    pos = torch.cat([torch.rand(P, 2, generator=g) * 1.2 - 0.6, torch.zeros(P, 1)], -1)
    up = torch.tensor([0.0, 0.0, 1.0]).expand(P, 3).clone()
    view = _unit(torch.tensor([0.3, -1.0, 1.5]) - pos)
    gb = GBuffer(position=pos, normal=_unit(up + 0.1 * torch.randn(P, 3, generator=g)), geo_normal=up, view=view,
                 base_color=torch.rand(P, 3, generator=g) * 0.8 + 0.1,
                 roughness=torch.cat([torch.rand(P - 4, 1, generator=g), torch.tensor([[0.0], [1.0], [0.05], [1.0]])]),
                 metallic=torch.cat([torch.rand(P - 4, 1, generator=g), torch.tensor([[1.0], [0.0], [0.0], [1.0]])]))
    i, j = torch.arange(16), torch.arange(32)
    d = uv_to_dir(torch.stack(torch.meshgrid((j + 0.5) / 32, (i + 0.5) / 16, indexing="xy"), -1))
    sky = ((0.6 + 0.5 * d[..., 2:3] + 0.4 * d[..., 0:1]) * torch.tensor([1.0, 0.9, 0.7])).clamp_min(0.02)
    return gb, EnvLight(sky, learnable=True), MeshTracer(mesh)


@pytest.mark.parametrize("indirect", [False, True])
def test_shade_mc_backends_agree(indirect):
    gb, light, tracer = _scene()
    st = ShadingSettings(integrator="mc", spp=8, seed=3, indirect=indirect)
    with torch.no_grad():
        ref = shade_mc(gb, light, st, tracer, backend="torch")
        out = shade_mc(gb, light, st, tracer, backend="cpu")
    # identical random numbers and float32 math to rounding; values are O(1)
    assert float((out - ref).abs().max()) < 1e-4
    assert float(ref.abs().max()) > 0.05


def test_shade_mc_gradients_agree_between_backends():
    gb, light, tracer = _scene()
    st = ShadingSettings(integrator="mc", spp=4, seed=1, indirect=True)
    names = ("normal", "base_color", "roughness", "metallic")
    grads = {}
    for backend in ("torch", "cpu"):
        leaves = {k: getattr(gb, k).clone().requires_grad_(True) for k in names}
        out = shade_mc(GBuffer(**{**gb.__dict__, **leaves}), light, st, tracer, backend=backend)
        cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        grads[backend] = torch.autograd.grad((out * cot).sum(), [*leaves.values(), light.log_radiance])
    # rtol 1e-3, the bound for twin VJPs: a sample near grazing (normal gradients up to 4e5) amplifies
    # float32 rounding, and on an AMD EPYC one roughness entry of 40 differed by 3.7e-4 relative (2026-12-07).
    for name, got, want in zip((*names, "log_radiance"), grads["cpu"], grads["torch"]):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()), msg=name)


def test_shade_mc_cpu_is_deterministic_across_thread_counts():
    gb, light, tracer = _scene()
    st = ShadingSettings(integrator="mc", spp=8, seed=5, indirect=True)
    threads = torch.get_num_threads()
    try:
        with torch.no_grad():
            a = shade_mc(gb, light, st, tracer, backend="cpu")
            b = shade_mc(gb, light, st, tracer, backend="cpu")
            torch.set_num_threads(1)
            c = shade_mc(gb, light, st, tracer, backend="cpu")
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(a, b) and torch.equal(a, c)


def test_shade_mc_backend_from_the_environment(monkeypatch):
    gb, light, tracer = _scene()
    st = ShadingSettings(integrator="mc", spp=2, shadows=False)
    monkeypatch.setenv("RECON_SHADING_BACKEND", "bogus")
    with pytest.raises(ValueError, match="backend must be one of"):
        shade_mc(gb, light, st)
    monkeypatch.setenv("RECON_SHADING_BACKEND", "torch")
    with torch.no_grad():
        assert torch.equal(shade_mc(gb, light, st), shade_mc(gb, light, st, backend="torch"))
