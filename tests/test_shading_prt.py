"""Precomputed diffuse transfer (recon.shading.prt): the SH basis, unshadowed transfer against the split-sum
irradiance map, shadowed split-sum against Monte Carlo with shadow rays, and gradients to the light."""

from __future__ import annotations

import math

import torch

from recon.renderers import ShadingSettings
from recon.renderers.mesh.raycast import RayCaster
from recon.shading.envmap import EnvLight, _texel_dirs, uv_to_dir
from recon.shading.mc import shade_mc
from recon.shading.prt import SH_COEFFS, diffuse_transfer, light_sh, sh_basis
from recon.shading.shade import GBuffer, shade, to_light_frame
from recon.shading.splitsum import SplitSumLight


class _Open:
    """A caster with nothing in the way."""

    def any_hit(self, origins, dirs, tmin, tmax):
        return torch.zeros(len(origins), dtype=torch.bool)


def _sky(h: int = 16) -> EnvLight:
    """Bright and warm overhead and towards +X, dark below the horizon (smooth: no feature sharper than the map)."""
    i, j = torch.arange(h), torch.arange(2 * h)
    uv = torch.stack(torch.meshgrid((j + 0.5) / (2 * h), (i + 0.5) / h, indexing="xy"), -1)
    d = uv_to_dir(uv)
    base = 0.6 + 0.6 * d[..., 2:3] + 0.3 * d[..., 0:1]
    return EnvLight((base * torch.tensor([1.0, 0.9, 0.7])).clamp_min(0.02))


def test_sh_basis_is_orthonormal_on_the_sphere():
    H = 128
    d = _texel_dirs(H, torch.float64, "cpu")
    cos = torch.cos(torch.arange(H + 1, dtype=torch.float64) * (math.pi / H))
    w = ((cos[:-1] - cos[1:]) * (math.pi / H))[:, None].expand(H, 2 * H).reshape(-1, 1)
    y = sh_basis(d).reshape(-1, SH_COEFFS)
    torch.testing.assert_close((y * w).T @ y, torch.eye(SH_COEFFS, dtype=torch.float64), atol=2e-4, rtol=0)
    # Y_00 is the constant 1 / (2 sqrt(pi)); Y_10 = sqrt(3 / 4pi) z.
    z = torch.tensor([[0.0, 0.0, 1.0]])
    assert abs(sh_basis(z)[0, 0].item() - 0.5 / math.sqrt(math.pi)) < 1e-7
    assert abs(sh_basis(z)[0, 2].item() - math.sqrt(3 / (4 * math.pi))) < 1e-6


def test_unshadowed_transfer_matches_the_irradiance_map():
    """With nothing in the way, T . L_sh / pi is the split-sum irradiance map (measured 0.31 % mean difference on
    this sky, 1.1 % on the shared field map; bands 0..3 carry all of the cosine lobe but a few per mille), rotation
    included."""
    light = _sky()
    n = torch.nn.functional.normalize(torch.randn(300, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    t = diffuse_transfer(torch.zeros(300, 3), n, _Open(), samples=1024)
    assert torch.allclose(t[:, SH_COEFFS], torch.ones(300))
    for rot in (0.0, 70.0):
        light.rotation_deg = rot
        e = t[:, :SH_COEFFS] @ light_sh(light) / math.pi
        ref = SplitSumLight(light.radiance()).diffuse(to_light_frame(light, n))
        assert ((e - ref).abs().mean() / ref.mean()).item() < 0.01, rot


def _floor_and_roof():
    floor = torch.tensor([[-2.0, -2, 0], [2, -2, 0], [2, 2, 0], [-2, 2, 0]])
    roof = torch.tensor([[-0.6, -0.6, 0.3], [0.6, -0.6, 0.3], [0.6, 0.6, 0.3], [-0.6, 0.6, 0.3]])
    quad = torch.tensor([[0, 1, 2], [0, 2, 3]])
    return torch.cat([floor, roof]), torch.cat([quad, quad + 4])


def test_shadowed_splitsum_matches_monte_carlo_under_a_roof():
    """Points on a floor under a small roof: split-sum with the transfer follows the Monte Carlo integrator with
    shadow rays (a rough white dielectric, where diffuse dominates; measured 0.8 % mean difference), and both are
    far darker than open sky."""
    verts, faces = _floor_and_roof()
    caster = RayCaster(verts, faces)
    light = _sky()
    x = torch.linspace(-0.3, 0.3, 7)
    pos = torch.stack([x, torch.zeros(7), torch.zeros(7)], -1)
    up = torch.tensor([0.0, 0.0, 1.0]).expand(7, 3).clone()
    view = torch.nn.functional.normalize(torch.tensor([0.0, -1.0, 2.0]), dim=0).expand(7, 3).clone()
    t = diffuse_transfer(pos, up, caster, samples=4096)
    assert (t[:, SH_COEFFS] < 0.6).all()  # the roof hides most of the cosine-weighted sky
    gb = GBuffer(position=pos, normal=up, geo_normal=up.clone(), view=view, base_color=torch.ones(7, 3),
                 roughness=torch.ones(7, 1), metallic=torch.zeros(7, 1), transfer=t)
    prt = shade(gb, light, ShadingSettings(integrator="splitsum"))
    mc = shade_mc(gb, light, ShadingSettings(integrator="mc", spp=2048, seed=1), caster)
    open_sky = shade(GBuffer(**{**gb.__dict__, "transfer": None}), light, ShadingSettings(integrator="splitsum"))
    assert (mc < 0.7 * open_sky).all()
    rel = ((prt - mc).abs() / mc).mean().item()
    assert rel < 0.02, rel


def test_transfer_shading_gradients_reach_the_light():
    verts, faces = _floor_and_roof()
    pos = torch.tensor([[0.2, 0.1, 0.0], [1.2, -0.5, 0.0]])
    up = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    t = diffuse_transfer(pos, up, RayCaster(verts, faces), samples=256)
    light = EnvLight(_sky().radiance(), learnable=True)
    gb = GBuffer(position=pos, normal=up, geo_normal=up.clone(), view=up.clone(), base_color=torch.full((2, 3), 0.5),
                 roughness=torch.full((2, 1), 0.7), metallic=torch.zeros(2, 1), transfer=t)
    out = shade(gb, light, ShadingSettings(integrator="splitsum"))
    out.sum().backward()
    grad = light.log_radiance.grad
    assert torch.isfinite(grad).all()
    # Light from above the horizon reaches the floor; the lower hemisphere (rows below the horizon) only through
    # the SH truncation, far less.
    H = grad.shape[0]
    assert grad[: H // 2].abs().sum() > 20 * grad[H // 2 + 2:].abs().sum()


def _grid(origin, du, dv, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """An n x n-cell grid ``origin + s du + t dv`` (s, t in [0, 1]), front side along ``du x dv``."""
    s = torch.linspace(0, 1, n + 1)
    ss, tt = torch.meshgrid(s, s, indexing="ij")
    v = torch.tensor(origin) + ss.reshape(-1, 1) * torch.tensor(du) + tt.reshape(-1, 1) * torch.tensor(dv)
    i = torch.arange(n)[:, None] * (n + 1) + torch.arange(n)[None, :]
    a, b, c, d = i, i + (n + 1), i + (n + 1) + 1, i + 1
    faces = torch.cat([torch.stack([a, b, c], -1).reshape(-1, 3), torch.stack([a, c, d], -1).reshape(-1, 3)])
    return v, faces


def test_one_bounce_matches_monte_carlo_indirect_beside_a_wall():
    """Floor points beside a wall: the interreflection of the transfer rays (bounce_matrix) adds what the Monte
    Carlo integrator's indirect bounce adds (a rough white dielectric, diffuse-dominated; measured 7 % mean
    difference), and a front-face-only bounce ignores rays that leave from behind a surface."""
    from recon.renderers.mesh.material import MeshTracer
    from recon.renderers.mesh.render import MeshArrays
    from recon.scenes.mesh import vertex_normals
    from recon.shading.prt import bounce_matrix

    floor = _grid((-1.0, -1.0, 0.0), (2.0, 0.0, 0.0), (0.0, 2.0, 0.0), 24)  # faces up
    wall = _grid((0.4, -1.0, 0.0), (0.0, 0.0, 1.2), (0.0, 2.0, 0.0), 24)  # faces -X, towards the floor points
    verts = torch.cat([floor[0], wall[0]])
    faces = torch.cat([floor[1], wall[1] + len(floor[0])])
    normals = vertex_normals(verts, faces)
    assert normals[len(floor[0]):, 0].max() < -0.99 and normals[: len(floor[0]), 2].min() > 0.99
    caster = RayCaster(verts, faces)
    light = _sky()
    t, bounce = diffuse_transfer(verts, normals, caster, samples=1024, bounce_mesh=(verts, faces))
    assert len(bounce.source) > 0
    albedo = 0.8
    direct = (t[:, :SH_COEFFS] @ light_sh(light)).clamp_min(0)
    indirect = bounce_matrix(bounce, faces, len(verts)) @ (albedo * direct)
    # floor vertices on the line y = 0 between x = -0.4 and 0.3 (the wall stands at x = 0.4)
    fv = floor[0]
    pick = torch.nonzero((fv[:, 1].abs() < 1e-6) & (fv[:, 0] > -0.45) & (fv[:, 0] < 0.35)).squeeze(1)
    n = len(pick)
    up = torch.tensor([0.0, 0.0, 1.0]).expand(n, 3).clone()
    view = torch.nn.functional.normalize(torch.tensor([-1.0, 0.0, 1.0]), dim=0).expand(n, 3).clone()
    gb = GBuffer(position=verts[pick], normal=up, geo_normal=up.clone(), view=view,
                 base_color=torch.full((n, 3), albedo), roughness=torch.ones(n, 1), metallic=torch.zeros(n, 1),
                 transfer=t[pick])
    prt_direct = shade(gb, light, ShadingSettings(integrator="splitsum"))
    prt_both = shade(GBuffer(**{**gb.__dict__, "indirect": indirect[pick]}), light,
                     ShadingSettings(integrator="splitsum"))
    tracer = MeshTracer(MeshArrays(vertices=verts, faces=faces, vertex_colors=torch.full_like(verts, albedo),
                                   roughness_factor=1.0, metallic_factor=0.0))
    mc_direct = shade_mc(gb, light, ShadingSettings(integrator="mc", spp=2048, seed=3), tracer)
    mc_both = shade_mc(gb, light, ShadingSettings(integrator="mc", spp=2048, seed=3, indirect=True), tracer)
    prt_gain, mc_gain = prt_both - prt_direct, mc_both - mc_direct
    assert (mc_gain > 0.05 * mc_direct).all()  # the wall's bounce is a visible share of the light here
    rel = ((prt_gain - mc_gain).abs().sum() / mc_gain.abs().sum()).item()
    assert rel < 0.12, rel
    # Behind the wall (x > 0.4) the floor's rays meet only the wall's back: nothing comes back.
    behind = torch.nonzero(fv[:, 0] > 0.45).squeeze(1)
    assert len(behind) > 0 and indirect[behind].abs().max() == 0
    assert indirect[pick].min() > 0


def test_bounce_matrix_interpolates_like_the_hits_and_its_state_round_trips():
    """bounce_matrix @ r equals bounce_irradiance of r interpolated at every hit (u p0 + v p1 + (1-u-v) p2, the
    ray caster's convention) for an arbitrary per-vertex r; the state round-trips and malformed state is a
    ValueError naming its source."""
    import pytest

    from recon.shading.prt import Bounce, bounce_irradiance, bounce_matrix
    from recon.scenes.mesh import vertex_normals

    floor = _grid((-1.0, -1.0, 0.0), (2.0, 0.0, 0.0), (0.0, 2.0, 0.0), 6)
    wall = _grid((0.4, -1.0, 0.0), (0.0, 0.0, 1.2), (0.0, 2.0, 0.0), 6)
    verts = torch.cat([floor[0], wall[0]])
    faces = torch.cat([floor[1], wall[1] + len(floor[0])])
    _, bounce = diffuse_transfer(verts, vertex_normals(verts, faces), RayCaster(verts, faces), samples=64,
                                 bounce_mesh=(verts, faces))
    assert len(bounce.source) > 100
    r = torch.rand(len(verts), 3, generator=torch.Generator().manual_seed(0)) ** 3
    f = faces.long()[bounce.tri_id]
    u, v = bounce.bary[:, :1], bounce.bary[:, 1:]
    at_hits = u * r[f[:, 0]] + v * r[f[:, 1]] + (1 - u - v) * r[f[:, 2]]
    want = bounce_irradiance(bounce, len(verts), at_hits)
    got = bounce_matrix(bounce, faces, len(verts)) @ r
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    # Hits rebuilt from the barycentrics lie on the other plane: floor rays end on the wall (x = 0.4) and back.
    p = _barycentric_points(verts, f, bounce.bary)
    from_floor = bounce.source < len(floor[0])
    assert torch.allclose(p[from_floor, 0], torch.tensor(0.4), atol=1e-5)
    assert torch.allclose(p[~from_floor, 2], torch.tensor(0.0), atol=1e-5)

    back = Bounce.from_state(bounce.to_state(), num_points=len(verts), num_faces=len(faces))
    assert torch.equal(back.source, bounce.source) and torch.equal(back.bary, bounce.bary) and back.samples == 64
    bad = {**bounce.to_state(), "tri_id": bounce.tri_id + len(faces)}
    with pytest.raises(ValueError, match=r"ckpt\.pt: interreflection tri_id must index \[0, "):
        Bounce.from_state(bad, source="ckpt.pt", num_points=len(verts), num_faces=len(faces))
    with pytest.raises(ValueError, match=r"ckpt\.pt: interreflection state needs source \[M\]"):
        Bounce.from_state({**bounce.to_state(), "bary": bounce.bary[:-1]}, source="ckpt.pt")
    with pytest.raises(ValueError, match=r"ckpt\.pt: malformed interreflection state"):
        Bounce.from_state({"source": bounce.source}, source="ckpt.pt")


def _barycentric_points(verts: torch.Tensor, f: torch.Tensor, bary: torch.Tensor) -> torch.Tensor:
    u, v = bary[:, :1], bary[:, 1:]
    return u * verts[f[:, 0]] + v * verts[f[:, 1]] + (1 - u - v) * verts[f[:, 2]]
