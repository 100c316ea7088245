"""Mesh ``texture`` / ``build_mipmaps`` / ``antialias``: cpu kernels vs the torch twins, gradients, hand-computed
examples, conventions and errors (docs/mesh.md). ``rast`` inputs come from a tiny brute-force rasterizer below
(docs/mesh.md's format), so these tests do not depend on the rasterize op."""

import numpy as np
import pytest
import torch

from recon.renderers.mesh import _ref_texture as ref
from recon.renderers.mesh._backend import cpu_extension
from recon.renderers.mesh.antialias import antialias
from recon.renderers.mesh.texture import build_mipmaps, texture

TRILINEAR = "linear-mipmap-linear"


def rel_err(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# ----------------------------------------------------------------------------------------------------------------
# Texture
# ----------------------------------------------------------------------------------------------------------------


def tex_inputs(shared, D, seed=0, C=2, H=9, W=7, Ht=13, Wt=10):
    g = torch.Generator().manual_seed(seed)
    tex = torch.rand((Ht, Wt, D) if shared else (C, Ht, Wt, D), generator=g)
    uv = torch.rand(C, H, W, 2, generator=g) * 3 - 1  # beyond [0, 1]: exercises wrap and clamp
    # Footprints of 0.1 .. 8 texels -> LOD 0 .. 3 (the 13x10 pyramid has levels 0..4), plus anisotropy.
    uv_da = torch.randn(C, H, W, 4, generator=g) * torch.rand(C, H, W, 1, generator=g) * 0.6
    return tex, uv, uv_da


def tex_vjp(backend, tex, uv, uv_da, filter_mode, boundary_mode, seed=1, max_mip_level=None):
    t, u = tex.clone().requires_grad_(True), uv.clone().requires_grad_(True)
    out = texture(t, u, uv_da, filter_mode, boundary_mode, max_mip_level, backend=backend)
    v = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    g_tex, g_uv = torch.autograd.grad((out * v).sum(), (t, u), allow_unused=True)
    return out.detach(), g_tex, torch.zeros_like(uv) if g_uv is None else g_uv


@pytest.mark.parametrize("filter_mode", ["nearest", "linear", TRILINEAR])
@pytest.mark.parametrize("boundary_mode", ["wrap", "clamp"])
@pytest.mark.parametrize("shared,D", [(True, 3), (False, 1), (False, 5)])
def test_texture_cpu_matches_reference(filter_mode, boundary_mode, shared, D):
    tex, uv, uv_da = tex_inputs(shared, D, seed=D)
    da = uv_da if filter_mode == TRILINEAR else None
    out_t, gt_t, gu_t = tex_vjp("torch", tex, uv, da, filter_mode, boundary_mode)
    out_c, gt_c, gu_c = tex_vjp("cpu", tex, uv, da, filter_mode, boundary_mode)
    # Same float32 formulas, sums in another order: observed <= 5e-7 on values in [0, 1].
    torch.testing.assert_close(out_c, out_t, rtol=0, atol=1e-5)
    # VJPs as relative norm errors (entries are sums of many pixels' terms in different orders): observed
    # <= 3e-7, bound 1e-5.
    assert rel_err(gt_c, gt_t) < 1e-5
    if filter_mode == "nearest":
        assert torch.equal(gu_c, torch.zeros_like(uv)) and torch.equal(gu_t, torch.zeros_like(uv))
    else:
        assert rel_err(gu_c, gu_t) < 1e-5
    if filter_mode == TRILINEAR:  # the pyramid was used: coarse-level texels reach the base through autograd
        lod = ref.mip_level(uv_da, tex.shape[-3], tex.shape[-2], 4)
        assert (lod > 1).float().mean() > 0.2 and (lod == 0).any()


def test_texture_cpu_matches_reference_max_mip_level_and_broadcast_batch():
    tex, uv, uv_da = tex_inputs(True, 3, seed=7, Ht=16, Wt=16)
    for tex_in in (tex, tex[None]):  # [1, Ht, Wt, D] is shared as well
        out_t, gt_t, gu_t = tex_vjp("torch", tex_in, uv, uv_da * 4, TRILINEAR, "wrap", max_mip_level=2)
        out_c, gt_c, gu_c = tex_vjp("cpu", tex_in, uv, uv_da * 4, TRILINEAR, "wrap", max_mip_level=2)
        torch.testing.assert_close(out_c, out_t, rtol=0, atol=1e-5)
        assert rel_err(gt_c, gt_t) < 1e-5 and rel_err(gu_c, gu_t) < 1e-5


def test_texture_cpu_backward_multi_slot_deterministic():
    # >= 2 x 16384 pixels and >= 2 threads: the backward splits the pixels over per-slot gradient buffers and sums
    # them in slot order; the result matches the twin and is bitwise reproducible.
    tex, uv, uv_da = tex_inputs(True, 3, seed=9, C=2, H=128, W=160, Ht=32, Wt=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(2, threads))
    try:
        runs = [tex_vjp("cpu", tex, uv, uv_da, TRILINEAR, "wrap") for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    _, gt_t, gu_t = tex_vjp("torch", tex, uv, uv_da, TRILINEAR, "wrap")
    assert all(torch.equal(x, y) for x, y in zip(*runs))
    assert rel_err(runs[0][1], gt_t) < 1e-5 and rel_err(runs[0][2], gu_t) < 1e-5


def test_texture_cpu_partial_gradients():
    # Only uv (fixed texture) or only tex requires grad: the kernels skip the other half and agree with the twin.
    tex, uv, uv_da = tex_inputs(False, 3, seed=12)
    g_uv, g_tex = {}, {}
    for backend in ("torch", "cpu"):
        u = uv.clone().requires_grad_(True)
        (texture(tex, u, uv_da, backend=backend) ** 2).sum().backward()
        t = tex.clone().requires_grad_(True)
        (texture(t, uv, uv_da, backend=backend) ** 2).sum().backward()
        g_uv[backend], g_tex[backend] = u.grad, t.grad
    assert rel_err(g_uv["cpu"], g_uv["torch"]) < 1e-5 and rel_err(g_tex["cpu"], g_tex["torch"]) < 1e-5


def test_texture_hand_computed_2x2():
    a, b, c, d = 1.0, 2.0, 4.0, 8.0
    tex = torch.tensor([[[a], [b]], [[c], [d]]])  # row 0 = (a, b) = v in [0, 0.5)
    uv = torch.tensor([[[[0.25, 0.25], [0.75, 0.25], [0.25, 0.75], [0.75, 0.75],
                         [0.5, 0.5], [0.5, 0.25], [0.0, 0.25], [0.3, 0.8]]]])
    for backend in ("torch", "cpu"):
        for mode in ("wrap", "clamp"):
            out = texture(tex, uv, filter_mode="linear", boundary_mode=mode, backend=backend)[0, 0, :, 0]
            # Texel centers, the midpoint (mean of all four), the midpoint of the top row.
            assert out[:6].tolist() == [a, b, c, d, (a + b + c + d) / 4, (a + b) / 2]
            # u = 0 is half-way between the last and the first texel with wrap; the first texel's value with clamp.
            assert out[6].item() == ((a + b) / 2 if mode == "wrap" else a)
        near = texture(tex, uv, filter_mode="nearest", backend=backend)[0, 0, :, 0]
        assert near[7].item() == c  # u = 0.3 -> column 0, v = 0.8 -> row 1
        u = uv.clone().requires_grad_(True)
        texture(tex, u, filter_mode="linear", backend=backend)[0, 0, 5, 0].backward()
        # d/du = W (b - a); v sits on a row of texel centers, where bilinear has a kink: the derivative is the
        # one toward the next row (fy = 0), H ((c + d) - (a + b)) / 2.
        assert u.grad[0, 0, 5].tolist() == [2 * (b - a), (c + d) - (a + b)]


def test_texture_nonfinite_uv_and_empty_batch():
    tex = torch.rand(4, 4, 3)
    uv = torch.tensor([[[[float("nan"), 0.5], [0.5, float("inf")], [0.5, 0.5]]]])
    for backend in ("torch", "cpu"):
        out = texture(tex, uv, backend=backend)
        assert torch.equal(out[0, 0, :2], torch.zeros(2, 3)) and torch.isfinite(out).all()
        empty = texture(tex, torch.zeros(0, 5, 5, 2), torch.zeros(0, 5, 5, 4), backend=backend)
        assert empty.shape == (0, 5, 5, 3)


def test_texture_reference_gradcheck_float64():
    g = torch.Generator().manual_seed(3)
    tex = torch.rand(2, 5, 6, 2, generator=g, dtype=torch.float64)
    # Sample positions 0.1 .. 0.9 texels away from texel centers: the bilinear kinks are far from +-eps.
    ij = torch.randint(-6, 12, (2, 3, 3, 2), generator=g).double()
    frac = torch.rand(2, 3, 3, 2, generator=g, dtype=torch.float64) * 0.8 + 0.1
    uv = (ij + 0.5 + frac) / torch.tensor([6.0, 5.0], dtype=torch.float64)
    uv_da = torch.full((2, 3, 3, 4), 0.25, dtype=torch.float64) * torch.tensor([1.0, 0.2, 0.1, 1.3])
    uv_da[1] *= 0.3  # two LOD ranges (fractional levels between 0-1 and 1-2)
    for filter_mode, boundary_mode in (("linear", "wrap"), ("linear", "clamp"), (TRILINEAR, "wrap"),
                                       (TRILINEAR, "clamp")):
        def f(t, u, fm=filter_mode, bm=boundary_mode):
            return ref.texture(t, u, uv_da, fm, bm)

        assert torch.autograd.gradcheck(f, (tex.clone().requires_grad_(), uv.clone().requires_grad_()), eps=1e-6,
                                        atol=1e-6, rtol=1e-4)
    assert torch.autograd.gradcheck(lambda t: ref.texture(t, uv, None, "nearest", "wrap"),
                                    (tex.clone().requires_grad_(),), eps=1e-6, atol=1e-6)


def test_mipmap_pyramid():
    assert [tuple(x.shape) for x in build_mipmaps(torch.rand(5, 8, 2))] == [(5, 8, 2), (3, 4, 2), (2, 2, 2),
                                                                          (1, 1, 2)]
    assert [tuple(x.shape[1:3]) for x in build_mipmaps(torch.rand(3, 1, 4, 1))] == [(1, 4), (1, 2), (1, 1)]
    assert len(build_mipmaps(torch.rand(16, 16, 1), max_mip_level=2)) == 3
    assert len(build_mipmaps(torch.rand(16, 16, 1), max_mip_level=0)) == 1
    assert len(build_mipmaps(torch.rand(1, 1, 3))) == 1
    const = torch.full((7, 5, 3), 0.3)  # odd sizes: edge clamping keeps constants constant
    for lev in build_mipmaps(const):
        torch.testing.assert_close(lev, torch.full_like(lev, 0.3), rtol=0, atol=1e-7)
    t = torch.arange(16.0).view(4, 4, 1)
    assert build_mipmaps(t)[1][..., 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]  # 2x2 block means
    col = torch.tensor([[1.0], [3.0], [8.0]])[:, :, None]  # 3x1: rows {0, 1} and {2, 2 (clamped)}
    assert build_mipmaps(col)[1][:, 0, 0].tolist() == [2.0, 8.0]
    # Differentiable: the base texture receives the coarsest level's gradient, 1 / (h w) per texel.
    base = torch.rand(4, 8, 1, requires_grad=True)
    build_mipmaps(base)[-1].sum().backward()
    torch.testing.assert_close(base.grad, torch.full_like(base, 1 / 32))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_trilinear_levels(backend):
    tex, uv, _ = tex_inputs(True, 3, seed=11, Ht=16, Wt=32)
    levels = build_mipmaps(tex)

    def tri_at(lod):  # isotropic footprint of 2^lod base texels
        s = 2.0 ** lod
        uv_da = torch.zeros(*uv.shape[:3], 4)
        uv_da[..., 0], uv_da[..., 3] = s / 32, s / 16
        return texture(tex, uv, uv_da, TRILINEAR, backend=backend)

    def bil(level):
        return texture(level, uv, filter_mode="linear", backend=backend)

    torch.testing.assert_close(tri_at(-2.0), bil(tex), rtol=0, atol=1e-6)  # magnification: LOD clamped to 0
    torch.testing.assert_close(texture(tex, uv, torch.zeros(*uv.shape[:3], 4), backend=backend), bil(tex), rtol=0,
                               atol=1e-6)  # zero footprint (auto = trilinear): log2(0) = -inf -> 0
    torch.testing.assert_close(tri_at(1.0), bil(levels[1]), rtol=0, atol=1e-6)
    torch.testing.assert_close(tri_at(1.5), 0.5 * (bil(levels[1]) + bil(levels[2])), rtol=0, atol=1e-6)
    torch.testing.assert_close(tri_at(9.0), bil(levels[-1]), rtol=0, atol=1e-6)  # clamped to the 1x1 level


def test_texture_bad_inputs_raise():
    tex, uv, uv_da = tex_inputs(True, 3)
    with pytest.raises(ValueError, match=r"tex must have shape \[Ht, Wt, D\] or \[C, Ht, Wt, D\], got \(13, 10\)"):
        texture(tex[..., 0], uv)
    with pytest.raises(ValueError, match=r"uv must have shape \[C, H, W, 2\], got \(2, 9, 7, 3\)"):
        texture(tex, torch.zeros(2, 9, 7, 3))
    with pytest.raises(ValueError, match=r"tex must have shape .* with C=2"):
        texture(tex.expand(3, -1, -1, -1), uv)
    with pytest.raises(ValueError, match="filter_mode must be one of"):
        texture(tex, uv, filter_mode="cubic")
    with pytest.raises(ValueError, match="boundary_mode must be one of"):
        texture(tex, uv, boundary_mode="zero")
    with pytest.raises(ValueError, match="'linear-mipmap-linear' needs uv_da"):
        texture(tex, uv, filter_mode=TRILINEAR)
    with pytest.raises(ValueError, match=r"uv_da must have shape \[C, H, W, 4\]"):
        texture(tex, uv, uv_da[..., :2])
    with pytest.raises(ValueError, match="max_mip_level must be None or an int >= 0"):
        texture(tex, uv, uv_da, max_mip_level=-1)
    with pytest.raises(ValueError, match="uv must match tex's dtype"):
        texture(tex, uv.double())
    with pytest.raises(ValueError, match="backend 'cpu' needs float32"):
        texture(tex.double(), uv.double(), backend="cpu")
    with pytest.raises(ValueError, match="backend must be one of"):
        texture(tex, uv, backend="cuda")
    with pytest.raises(TypeError, match="uv must be a torch.Tensor"):
        texture(tex, uv.numpy())
    assert texture(tex.double(), uv.double()).dtype == torch.float64  # auto: the torch twin for float64


def test_texture_cpu_kernels_check_inputs():
    ext = cpu_extension("mesh_texture")
    tex, uv, uv_da = tex_inputs(False, 3)
    with pytest.raises(RuntimeError, match="uv must have shape"):
        ext.texture_forward([tex], uv[..., :1].contiguous(), uv_da, 1, 0)
    with pytest.raises(RuntimeError, match="uv_da must have shape"):
        ext.texture_forward([tex], uv, uv_da[:1].contiguous(), 2, 0)
    with pytest.raises(RuntimeError, match="tex must hold 1 or C=2"):
        ext.texture_forward([torch.cat([tex, tex])], uv, uv_da, 1, 0)
    with pytest.raises(RuntimeError, match="tex must be Float"):
        ext.texture_forward([tex.double()], uv, uv_da, 1, 0)


# ----------------------------------------------------------------------------------------------------------------
# Antialias
# ----------------------------------------------------------------------------------------------------------------


def brute_rasterize(pos, tri, H, W):
    """Brute-force reference rasterizer (all ``w > 0``) writing docs/mesh.md's ``rast (u, v, ndc_z, id + 1)``:
    pixel centers at +0.5, row 0 at NDC y = -1, perspective-correct barycentrics, smallest ndc_z in [-1, 1] wins."""
    p, t = pos.double(), tri.long()
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                            indexing="ij")
    X, Y = xs.reshape(-1, 1), ys.reshape(-1, 1)
    rast = torch.zeros(pos.shape[0], H, W, 4, dtype=pos.dtype)
    for c in range(pos.shape[0]):
        v = p[c][t]
        w = v[..., 3]
        sx, sy, zn = (v[..., 0] / w + 1) * 0.5 * W, (v[..., 1] / w + 1) * 0.5 * H, v[..., 2] / w

        def edge(i, j, sx=sx, sy=sy):
            return (sx[:, j] - sx[:, i]) * (Y - sy[:, i]) - (sy[:, j] - sy[:, i]) * (X - sx[:, i])

        e = torch.stack([edge(1, 2), edge(2, 0), edge(0, 1)])  # e[i] ~ screen barycentric of vertex i
        area = e.sum(0)
        inside = (((e >= 0).all(0)) | ((e <= 0).all(0))) & (area != 0)
        b = e / area
        z = (b * zn.T[:, None, :]).sum(0)
        ok = inside & (z >= -1) & (z <= 1)
        best = torch.where(ok, z, torch.full_like(z, float("inf"))).argmin(1)
        q = b / w.T[:, None, :]
        r = torch.arange(X.shape[0])
        uvz = torch.stack([q[0] / q.sum(0), q[1] / q.sum(0), z], -1)[r, best]
        out = torch.cat([uvz, (best + 1).double()[:, None]], -1)
        out[~ok.any(1)] = 0
        rast[c] = out.view(H, W, 4).to(pos.dtype)
    return rast


def grid_scene(C=2, H=24, W=28, n=5, seed=0):
    """A perturbed n x n vertex grid mesh (w in [1, 2]) plus a floating triangle in front, per camera."""
    g = torch.Generator().manual_seed(seed)
    ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    idx = ii * n + jj
    a, b, c, d = (idx[:-1, :-1].reshape(-1), idx[:-1, 1:].reshape(-1), idx[1:, :-1].reshape(-1),
                  idx[1:, 1:].reshape(-1))
    V = n * n
    tri = torch.cat([torch.stack([a, b, c], 1), torch.stack([b, d, c], 1), torch.tensor([[V, V + 1, V + 2]])]).int()
    xy = torch.stack(torch.meshgrid(torch.linspace(-0.7, 0.7, n), torch.linspace(-0.6, 0.8, n), indexing="ij"), -1)
    pos = []
    for _ in range(C):
        ndc = xy.reshape(-1, 2) + 0.05 * torch.randn(V, 2, generator=g)
        z = (0.3 * torch.randn(V, 1, generator=g)).clamp(-0.6, 0.6)
        w = 1 + torch.rand(V, 1, generator=g)
        extra = torch.tensor([[-0.2, -0.1, -0.7], [0.5, 0.0, -0.7], [0.1, 0.6, -0.7]]) + 0.1 * torch.rand(3, 3,
                                                                                                       generator=g)
        pos.append(torch.cat([torch.cat([ndc, z], 1) * w, w], 1))
        pos[-1] = torch.cat([pos[-1], torch.cat([extra, torch.ones(3, 1)], 1)])
    pos = torch.stack(pos)
    rast = brute_rasterize(pos, tri, H, W)
    color = torch.rand(C, H, W, 3, generator=g)
    return color, rast, pos, tri


def aa_vjp(backend, color, rast, pos, tri, seed=1):
    c, p = color.clone().requires_grad_(True), pos.clone().requires_grad_(True)
    out = antialias(c, rast, p, tri, backend=backend)
    v = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    g_c, g_p = torch.autograd.grad((out * v).sum(), (c, p))
    return out.detach(), g_c, g_p


@pytest.mark.parametrize("seed", [0, 1])
def test_antialias_cpu_matches_reference(seed):
    color, rast, pos, tri = grid_scene(seed=seed)
    if seed == 1:
        pos[1, 3, 3] = -0.2  # a vertex behind the camera: exercises the homogeneous edge crossings
    out_t, gc_t, gp_t = aa_vjp("torch", color, rast, pos, tri)
    out_c, gc_c, gp_c = aa_vjp("cpu", color, rast, pos, tri)
    changed = (out_t != color).any(-1)
    assert 40 < changed.sum() < 0.5 * changed.numel()  # silhouettes only (shared mesh edges are skipped)
    # Same float32 math; the deltas are summed in another order: observed <= 4e-7.
    torch.testing.assert_close(out_c, out_t, rtol=0, atol=1e-5)
    # Relative norm errors (observed ~1e-7): pos gradients sum many pairs' terms in different orders.
    assert rel_err(gc_c, gc_t) < 1e-5
    assert gp_t.norm() > 0 and rel_err(gp_c, gp_t) < 1e-5
    assert torch.equal(gp_c[..., 2], torch.zeros_like(gp_c[..., 2]))  # depth never moves an edge


def test_antialias_cpu_deterministic():
    color, rast, pos, tri = grid_scene(seed=2)
    a = aa_vjp("cpu", color, rast, pos, tri)
    b = aa_vjp("cpu", color, rast, pos, tri)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def edge_scene(xe, dtype=torch.float32, H=6, W=8):
    """One triangle whose only edge inside the image is vertical at pixel x = xe (w = 1)."""
    px = torch.tensor([[xe, -20.0], [xe, 40.0], [-20.0, 10.0]], dtype=dtype)
    ndc = torch.stack([2 * px[:, 0] / W - 1, 2 * px[:, 1] / H - 1], 1)
    pos = torch.cat([ndc, torch.zeros(3, 1, dtype=dtype), torch.ones(3, 1, dtype=dtype)], 1)[None]
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast = brute_rasterize(pos, tri, H, W)
    cov = (rast[..., 3:] > 0).to(dtype)
    c_tri, c_bg = torch.tensor([1.0, 0.2, 0.0], dtype=dtype), torch.tensor([0.0, 0.5, 1.0], dtype=dtype)
    return cov * c_tri + (1 - cov) * c_bg, rast, pos, tri


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("xe,pixel,coverage", [(3.8, 3, 0.8), (4.2, 4, 0.2), (3.55, 3, 0.55)])
def test_antialias_analytic_vertical_edge(backend, xe, pixel, coverage):
    # Pixel centers 3.5 and 4.5: an edge at x = xe cuts exactly one of the two pixels [3, 4] and [4, 5], which
    # then shows coverage * triangle + (1 - coverage) * background (a box filter); every other pixel is unchanged.
    color, rast, pos, tri = edge_scene(xe)
    out = antialias(color, rast, pos, tri, backend=backend)
    expect = color.clone()
    expect[0, :, pixel] = coverage * torch.tensor([1.0, 0.2, 0.0]) + (1 - coverage) * torch.tensor([0.0, 0.5, 1.0])
    torch.testing.assert_close(out, expect, rtol=0, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_antialias_no_change_where_ids_agree(backend):
    color, rast, pos, tri = grid_scene(C=1, seed=3)
    for r in (torch.zeros_like(rast), rast.clone().index_fill_(-1, torch.tensor([3]), 5.0)):  # empty / one id
        c, p = color.clone().requires_grad_(True), pos.clone().requires_grad_(True)
        out = antialias(c, r, p, tri, backend=backend)
        assert torch.equal(out, color)
        out.sum().backward()
        assert torch.equal(c.grad, torch.ones_like(color))
        assert p.grad is None or torch.equal(p.grad, torch.zeros_like(pos))  # the twin builds no graph to pos
    empty = antialias(color[:0], rast[:0], pos[:0], tri, backend=backend)
    assert empty.shape == (0, *color.shape[1:])


def tilted_sum(dx, weights, H=10, W=12):
    """sum(weights * antialias(image)) for a perspective triangle whose steep edge moves right by dx pixels;
    the other two edges are shallow and stay fixed. The image is flat colors by coverage (re-rasterized)."""
    px = torch.tensor([[3.3 + dx, -1.7, 0.1, 1.0], [5.9 + dx, 11.2, 0.3, 2.0], [-4.0, 4.0, -0.2, 1.5]],
                      dtype=torch.float64)
    w = px[:, 3:]
    pos = torch.cat([torch.stack([2 * px[:, 0] / W - 1, 2 * px[:, 1] / H - 1, px[:, 2]], 1) * w, w], 1)[None]
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    rast = brute_rasterize(pos, tri, H, W)
    cov = (rast[..., 3:] > 0).double()
    color = cov * torch.tensor([1.0, 0.2, 0.0], dtype=torch.float64) + (1 - cov) * torch.tensor([0.0, 0.5, 1.0],
                                                                                                dtype=torch.float64)
    return pos, rast, color, tri


@pytest.mark.parametrize("dx", [0.37, -0.81, 0.12])
def test_antialias_finite_differences_vertex_x(dx):
    # d/d(dx) of sum(weights * antialias) by central differences (the step crosses no pixel center, so the
    # coverage image is constant) vs the twin's gradient chained through d pos_x / d dx = 2 w / W for the two
    # moving vertices. The twin's 1e-3 pixel gradient regularizer (as nvdiffrast) biases the gradient by
    # ~1e-3 / (edge height ~13 px) relative: bound 1e-3.
    weights = torch.rand(1, 10, 12, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def S(d, grad=False):
        pos, rast, color, tri = tilted_sum(d, weights)
        p = pos.clone().requires_grad_(grad)
        s = (antialias(color, rast, p, tri, backend="torch") * weights).sum()
        return (s, p) if grad else s.item()

    h = 1e-5
    fd = (S(dx + h) - S(dx - h)) / (2 * h)
    s, p = S(dx, grad=True)
    (g,) = torch.autograd.grad(s, p)
    analytic = (g[0, 0, 0] * 2 / 12 * 1.0 + g[0, 1, 0] * 2 / 12 * 2.0).item()
    assert abs(fd) > 0.3 and abs(analytic - fd) < 1e-3 * abs(fd)
    # The float32 cpu kernels give the same gradient (float32 finite differences would be too noisy).
    pos, rast, color, tri = tilted_sum(dx, weights)
    p = pos.float().requires_grad_(True)
    (antialias(color.float(), rast.float(), p, tri, backend="cpu") * weights.float()).sum().backward()
    assert rel_err(p.grad.double(), g) < 1e-4


def test_antialias_continuous_as_an_edge_sweeps_across_pixel_centers():
    # Without antialiasing the sum jumps by ~0.5 (a whole pixel's color difference times its weight) whenever the
    # edge crosses a pixel center; with it, the sum is continuous (piecewise smooth) in the vertex position.
    weights = torch.rand(1, 6, 8, 3, generator=torch.Generator().manual_seed(1))
    xs = np.linspace(2.0, 5.0, 241)  # crosses the centers 2.5, 3.5, 4.5 (step 0.0125 px)
    sums, raw = [], []
    for xe in xs:
        color, rast, pos, tri = edge_scene(float(xe))
        sums.append((antialias(color, rast, pos, tri, backend="cpu") * weights).sum().item())
        raw.append((color * weights).sum().item())
    jump, raw_jump = np.abs(np.diff(sums)).max(), np.abs(np.diff(raw)).max()
    assert raw_jump > 0.5 and jump < 0.05, (jump, raw_jump)


def test_antialias_reference_gradcheck_float64():
    color, rast, pos, tri = grid_scene(C=1, H=10, W=12, n=3, seed=4)
    color, pos = color.double(), pos.double()
    opp = ref.edge_topology(tri, pos.shape[1])

    def f(c, p):  # exact derivative (no 1e-3 px regularizer); rast is an input, so ids stay fixed
        return ref._antialias(c, rast.double(), p, tri, opp, grad_eps=0.0)

    assert (f(color, pos) != color).any()
    assert torch.autograd.gradcheck(f, (color.requires_grad_(), pos.requires_grad_()), eps=1e-7, atol=1e-5,
                                    rtol=1e-4, fast_mode=True)


def test_edge_topology():
    # Two triangles sharing edge (1, 2); a degenerate triangle; a non-manifold edge (0, 1) with three faces.
    tri = torch.tensor([[0, 1, 2], [2, 1, 3], [4, 4, 5], [0, 1, 6], [1, 0, 7]], dtype=torch.int32)
    opp = ref.edge_topology(tri, 8)
    assert opp[0].tolist() == [3, -1, -1]  # edge 0 of [0, 1, 2] is (1, 2): across it lies vertex 3
    assert opp[1].tolist() == [-1, -1, 0]  # edge 2 of [2, 1, 3] is (2, 1)
    assert opp[2].tolist() == [-1, -1, -1]
    assert opp[3, 2] == -1 and opp[4, 2] == -1  # (0, 1) has three faces: non-manifold -> always a silhouette
    ext = cpu_extension("mesh_texture")
    assert torch.equal(ext.edge_topology(tri, 8), opp)
    soup = torch.randint(0, 40, (500, 3), generator=torch.Generator().manual_seed(0)).int()  # many shared edges
    assert torch.equal(ext.edge_topology(soup, 40), ref.edge_topology(soup, 40))
    _, _, _, grid_tri = grid_scene(C=1, H=4, W=4)
    assert torch.equal(ext.edge_topology(grid_tri, 28), ref.edge_topology(grid_tri, 28))
    # 4x4 quads with diagonals: 56 edges, 16 on the boundary; each interior edge is seen from both sides.
    assert (ref.edge_topology(grid_tri, 28) >= 0).sum() == 2 * (56 - 16)


def test_antialias_bad_inputs_raise():
    color, rast, pos, tri = grid_scene(C=1, H=8, W=8, n=3)
    with pytest.raises(ValueError, match=r"color must have shape \[C, H, W, D\], got \(8, 8, 3\)"):
        antialias(color[0], rast, pos, tri)
    with pytest.raises(ValueError, match=r"rast must have shape \[C, H, W, 4\]"):
        antialias(color, rast[..., :3], pos, tri)
    with pytest.raises(ValueError, match=r"pos must have shape \[C, V, 4\] with C=1"):
        antialias(color, rast, pos[..., :3], tri)
    with pytest.raises(ValueError, match=r"tri must be int32"):
        antialias(color, rast, pos, tri.float())
    with pytest.raises(ValueError, match=r"tri indices must lie in \[0, V\)"):
        antialias(color, rast, pos, tri + 100)
    with pytest.raises(ValueError, match=r"rast\[..., 3\] must hold triangle ids"):
        antialias(color, rast + 100, pos, tri)
    with pytest.raises(ValueError, match="pos must match color's dtype"):
        antialias(color, rast, pos.double(), tri)
    with pytest.raises(ValueError, match="backend 'cpu' needs float32"):
        antialias(color.double(), rast.double(), pos.double(), tri, backend="cpu")
    ext = cpu_extension("mesh_texture")
    opp = ref.edge_topology(tri, pos.shape[1])
    with pytest.raises(RuntimeError, match="opp must have shape"):
        ext.antialias_forward(color, rast, pos, tri, opp[:1].contiguous())
    assert antialias(color.double(), rast.double(), pos.double(), tri).dtype == torch.float64  # auto -> torch


# ----------------------------------------------------------------------------------------------------------------
# nvdiffrast adapter (CUDA machines with nvdiffrast only)
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.gpu
def test_nvdiffrast_adapter_matches_twins_on_cuda():
    pytest.importorskip("nvdiffrast.torch")
    from recon.renderers.mesh import _nvdiffrast

    assert _nvdiffrast.available()
    dev = torch.device("cuda")
    # Texture: power-of-two (nvdiffrast's pyramid) and odd sizes (adapter falls back to the twin).
    for Ht, Wt in ((16, 32), (13, 10)):
        tex, uv, uv_da = (t.to(dev) for t in tex_inputs(False, 3, seed=5, Ht=Ht, Wt=Wt))
        for fm in ("nearest", "linear", TRILINEAR):
            for bm in ("wrap", "clamp"):
                da = uv_da if fm == TRILINEAR else None
                out_n, gt_n, gu_n = tex_vjp("nvdiffrast", tex, uv, da, fm, bm)
                out_t, gt_t, gu_t = tex_vjp("torch", tex, uv, da, fm, bm)
                # GPU hardware-style float math and atomics: looser than the cpu/torch bounds.
                torch.testing.assert_close(out_n, out_t, rtol=0, atol=1e-4)
                assert rel_err(gt_n, gt_t) < 1e-3
                if fm != "nearest":
                    assert rel_err(gu_n, gu_t) < 1e-3
    # Rasterize through nvdiffrast; antialias both ways on the same rast (w > 0, manifold grid).
    color, _, pos, tri = grid_scene(seed=6)
    color, pos, tri = color.to(dev), pos.to(dev), tri.to(dev)
    rast, rast_db = _nvdiffrast.rasterize(pos, tri, (24, 28))
    assert rast.shape == (2, 24, 28, 4) and rast_db.shape == (2, 24, 28, 4)
    rast_ref = brute_rasterize(pos.cpu(), tri.cpu(), 24, 28).to(dev)
    assert (rast[..., 3] != rast_ref[..., 3]).float().mean() < 0.01  # ties on shared edges may differ
    out_n, gc_n, gp_n = aa_vjp("nvdiffrast", color, rast, pos, tri)
    out_t, gc_t, gp_t = aa_vjp("torch", color, rast, pos, tri)
    torch.testing.assert_close(out_n, out_t, rtol=0, atol=1e-4)
    assert rel_err(gc_n, gc_t) < 1e-4 and rel_err(gp_n, gp_t) < 1e-2
    attr = pos[..., :2].contiguous()
    out, da = _nvdiffrast.interpolate(attr, rast, tri, rast_db, "all")
    assert out.shape == (2, 24, 28, 2) and da.shape == (2, 24, 28, 4)
    assert _nvdiffrast.interpolate(attr, rast, tri)[1] is None
