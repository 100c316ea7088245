"""Monte Carlo shading (recon.shading.mc): unbiasedness against quadrature, determinism, shadows, one bounce of
indirect light, and gradients against finite differences."""

import math
from dataclasses import replace

import pytest
import torch

from recon.renderers import ShadingSettings
from recon.renderers.mesh.material import MeshTracer, surface_at_hits
from recon.renderers.mesh.render import MeshArrays
from recon.shading.brdf import principled_brdf
from recon.shading.envmap import EnvLight, uv_to_dir
from recon.shading.mc import shade_mc
from recon.shading.shade import GBuffer


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def _smooth_env(h: int = 16) -> torch.Tensor:
    """A smooth sky (bright, warm towards +X, dark below the horizon): no feature sharper than the map."""
    i, j = torch.arange(h), torch.arange(2 * h)
    uv = torch.stack(torch.meshgrid((j + 0.5) / (2 * h), (i + 0.5) / h, indexing="xy"), -1)
    d = uv_to_dir(uv)
    base = 0.6 + 0.5 * d[..., 2:3] + 0.3 * d[..., 0:1]
    return (base * torch.tensor([1.0, 0.9, 0.7])).clamp_min(0.02)


def _sphere_gbuffer(n: int = 6, rough: float = 0.4, metal: float = 0.0, seed: int = 1) -> GBuffer:
    g = torch.Generator().manual_seed(seed)
    normal = _unit(torch.randn(n, 3, generator=g))
    cam = torch.tensor([0.3, -0.5, 3.0])
    view = _unit(cam - normal)  # unit sphere seen from cam: the points are their own normals
    keep = (normal * view).sum(-1) > 0.2
    normal, view = normal[keep], view[keep]
    P = normal.shape[0]
    base = torch.rand(P, 3, generator=g) * 0.6 + 0.2
    return GBuffer(position=normal.clone(), normal=normal, geo_normal=normal.clone(), view=view, base_color=base,
                   roughness=torch.full((P, 1), rough), metallic=torch.full((P, 1), metal))


def _quadrature(gb: GBuffer, light: EnvLight, res: int = 384) -> torch.Tensor:
    """Midpoint rule over the sphere of directions: sum f cos L dOmega (no visibility)."""
    i, j = torch.arange(res), torch.arange(2 * res)
    uv = torch.stack(torch.meshgrid((j + 0.5) / (2 * res), (i + 0.5) / res, indexing="xy"), -1)
    d = uv_to_dir(uv).reshape(-1, 3)
    theta = math.pi * (i + 0.5) / res
    d_omega = ((2 * math.pi / (2 * res)) * (math.pi / res) * torch.sin(theta))[:, None].expand(res, 2 * res)
    d_omega = d_omega.reshape(-1, 1)
    radiance = light.lookup(d)
    out = []
    for p in range(len(gb)):
        f = principled_brdf(gb.normal[p].expand_as(d), gb.view[p].expand_as(d), d, gb.base_color[p].expand_as(d),
                            gb.roughness[p].expand(d.shape[0], 1), gb.metallic[p].expand(d.shape[0], 1))
        cos = (d * gb.normal[p]).sum(-1, keepdim=True).clamp_min(0.0)
        out.append((f * cos * radiance * d_omega).sum(0))
    return torch.stack(out)


def _mc(spp: int, **kw) -> ShadingSettings:
    return ShadingSettings(integrator="mc", spp=spp, **kw)


@pytest.mark.parametrize("rough, metal", [(0.5, 0.0), (0.3, 1.0)])
def test_mis_estimator_matches_quadrature_on_an_unshadowed_sphere(rough, metal):
    gb = _sphere_gbuffer(rough=rough, metal=metal)
    light = EnvLight(_smooth_env())
    with torch.no_grad():
        ref = _quadrature(gb, light)
        est = shade_mc(gb, light, _mc(4096, shadows=False))
    # 4096 stratified samples per strategy: the estimate is within ~0.5 % of the integral; the midpoint rule on a
    # 384 x 768 grid resolves a roughness-0.3 lobe to well under that. 2 % leaves room for both.
    torch.testing.assert_close(est, ref, rtol=0.02, atol=1e-3)


def test_fixed_seed_is_deterministic_and_seeds_differ():
    gb = _sphere_gbuffer(n=12)
    light = EnvLight(_smooth_env())
    a = shade_mc(gb, light, _mc(8, shadows=False, seed=3))
    b = shade_mc(gb, light, _mc(8, shadows=False, seed=3))
    c = shade_mc(gb, light, _mc(8, shadows=False, seed=4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def _quad(z: float, half: float) -> tuple[torch.Tensor, torch.Tensor]:
    v = torch.tensor([[-half, -half, z], [half, -half, z], [half, half, z], [-half, half, z]])
    return v, torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)


def _mesh(*parts: tuple[torch.Tensor, torch.Tensor], color=(0.8, 0.8, 0.8)) -> MeshArrays:
    verts, faces, off = [], [], 0
    for v, f in parts:
        verts.append(v)
        faces.append(f + off)
        off += v.shape[0]
    v = torch.cat(verts)
    return MeshArrays(vertices=v, faces=torch.cat(faces), vertex_colors=torch.tensor(color).expand_as(v).clone(),
                      roughness_factor=0.6, metallic_factor=0.0)


def _floor_gbuffer(n: int = 5) -> GBuffer:
    x = torch.linspace(-0.2, 0.2, n)
    pos = torch.stack([x, torch.zeros(n), torch.zeros(n)], -1)
    up = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3).clone()
    view = _unit(torch.tensor([0.0, -1.0, 2.0])).expand(n, 3).clone()
    return GBuffer(position=pos, normal=up, geo_normal=up.clone(), view=view, base_color=torch.full((n, 3), 0.5),
                   roughness=torch.full((n, 1), 0.6), metallic=torch.zeros(n, 1))


def test_an_occluder_casts_a_shadow():
    light = EnvLight.constant(1.0, height=8)
    gb = _floor_gbuffer()
    open_sky = MeshTracer(_mesh(_quad(0.0, 1.0)))  # the floor alone: rays leave its upper side freely
    covered = MeshTracer(_mesh(_quad(0.0, 1.0), _quad(0.3, 0.6)))
    st = _mc(64)
    lit = shade_mc(gb, light, st, open_sky)
    shadowed = shade_mc(gb, light, st, covered)
    torch.testing.assert_close(lit, shade_mc(gb, light, replace(st, shadows=False)), rtol=0, atol=0)
    # the occluder at height 0.3 with half-width 0.6 hides the sky above ~63 deg from the zenith's ~80 % of the
    # cosine-weighted hemisphere; far less than half of the light is left
    assert (shadowed < 0.5 * lit).all()


def test_indirect_light_adds_energy_in_a_concavity():
    light = EnvLight.constant(1.0, height=8)
    gb = _floor_gbuffer()
    walls = []
    for axis in (0, 1):
        for s in (-1.0, 1.0):
            v = torch.tensor([[-1.0, -1.0, 0.0], [1.0, -1.0, 0.0], [1.0, -1.0, 1.0], [-1.0, -1.0, 1.0]])
            v[:, 1] *= -s
            if axis == 0:
                v = v[:, [1, 0, 2]]
            f = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
            inward = -v[:2].mean(0) * torch.tensor([1.0, 1.0, 0.0])
            if float(torch.linalg.cross(v[1] - v[0], v[2] - v[0], dim=-1) @ inward) < 0:
                f = f[:, [0, 2, 1]]  # shading normals face into the box (the BRDF is one-sided)
            walls.append((v, f))
    box = MeshTracer(_mesh(_quad(0.0, 1.0), *walls))
    direct = shade_mc(gb, light, _mc(64), box)
    both = shade_mc(gb, light, _mc(64, indirect=True), box)
    assert (both > direct * 1.1).all()
    assert (both < direct + 0.8 * 0.5 * 1.0).all()  # a bounce off walls of albedo 0.8 cannot exceed that
    floor = MeshTracer(_mesh(_quad(0.0, 1.0)))
    assert torch.equal(shade_mc(gb, light, _mc(16, indirect=True), floor), shade_mc(gb, light, _mc(16), floor))


def test_surface_at_hits_reads_the_material():
    mesh = _mesh(_quad(0.5, 1.0), color=(0.2, 0.4, 0.6))
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.1, 0.0, 1.0]])
    hits = MeshTracer(mesh).caster.closest_hit(torch.zeros(2, 3), dirs)
    gb = surface_at_hits(mesh, hits.tri_id, hits.uv, dirs)
    torch.testing.assert_close(gb.position[:, 2], torch.full((2,), 0.5))
    torch.testing.assert_close(gb.base_color, torch.tensor([[0.2, 0.4, 0.6]] * 2))
    torch.testing.assert_close(gb.roughness, torch.full((2, 1), 0.6))
    torch.testing.assert_close(gb.normal.abs(), torch.tensor([[0.0, 0.0, 1.0]] * 2))


def test_errors_name_the_problem():
    gb = _floor_gbuffer()
    light = EnvLight.constant(1.0, height=4)
    with pytest.raises(ValueError, match="spp"):
        shade_mc(gb, light, _mc(0, shadows=False))
    with pytest.raises(ValueError, match="ray caster"):
        shade_mc(gb, light, _mc(4))
    with pytest.raises(ValueError, match="shadows"):
        shade_mc(gb, light, _mc(4, shadows=False, indirect=True))

    class AnyHitOnly:
        def any_hit(self, o, d, tmin, tmax):
            return torch.zeros(o.shape[0], dtype=torch.bool)

    with pytest.raises(ValueError, match="surface_at"):
        shade_mc(gb, light, _mc(4, indirect=True), AnyHitOnly())


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    gb = _sphere_gbuffer(n=8, rough=0.5)
    light = EnvLight(_smooth_env(8), learnable=True)
    st = _mc(2048, shadows=False, seed=7)
    base = gb.base_color.clone().requires_grad_(True)
    rough = gb.roughness.clone().requires_grad_(True)
    out = shade_mc(replace(gb, base_color=base, roughness=rough), light, st).sum()
    g_base, g_rough, g_light = torch.autograd.grad(out, [base, rough, light.log_radiance])

    def value(b=None, r=None, shift=0.0) -> float:
        lt = EnvLight(light.radiance().detach() * math.exp(shift))
        with torch.no_grad():
            return float(shade_mc(replace(gb, base_color=b if b is not None else base.detach(),
                                          roughness=r if r is not None else rough.detach()), lt, st).sum())

    h = 1e-2
    fd_base = (value(b=base.detach() + h) - value(b=base.detach() - h)) / (2 * h)
    fd_rough = (value(r=rough.detach() + h) - value(r=rough.detach() - h)) / (2 * h)
    fd_light = (value(shift=h) - value(shift=-h)) / (2 * h)
    # The sampled directions depend on the material, so the fixed-seed finite difference is only close to the
    # derivative of the integral; 2048 stratified samples bring both within a few percent.
    assert float(g_base.sum()) == pytest.approx(fd_base, rel=0.03)
    assert float(g_rough.sum()) == pytest.approx(fd_rough, rel=0.1, abs=0.02)
    # A global light scale leaves the light's sampling density unchanged: the estimate is exactly linear in it.
    assert float(g_light.sum()) == pytest.approx(fd_light, rel=1e-3)


def test_supersampling_pixel_filter_is_mitsubas_gaussian():
    from recon.renderers.lit import _filter_taps, _gaussian_resample

    # n = 1: taps at -2..2 px; exp(-2 d^2) - exp(-8), normalized (hand-computed: 0.7873 / 0.1063 / ~0)
    torch.testing.assert_close(_filter_taps(1, torch.zeros(1)),
                               torch.tensor([0.0, 0.10634, 0.78732, 0.10634, 0.0]), atol=1e-4, rtol=0)
    x = torch.rand(2, 12, 18, 3)
    assert _gaussian_resample(torch.ones(2, 12, 18, 3), 3).shape == (2, 4, 6, 3)
    torch.testing.assert_close(_gaussian_resample(torch.ones_like(x), 3), torch.ones(2, 4, 6, 3))
    # a single bright sub-sample spreads over the pixel holding it and, less, its neighbours, preserving energy
    y = torch.zeros(1, 12, 12, 1)
    y[0, 4, 4] = 1.0
    out = _gaussian_resample(y, 2)
    assert out[0, 2, 2, 0] == out.max() and out[0, 1, 1, 0] > 0
    torch.testing.assert_close(out.sum(), torch.tensor(0.25))
