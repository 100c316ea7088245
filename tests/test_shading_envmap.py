import json
import math

import numpy as np
import pytest
import torch

from recon.data.io import read_image, write_exr, write_hdr
from recon.shading import EnvLight, dir_to_uv, envmap_lookup, read_envmap, uv_to_dir
from recon.shading.envmap import LUMA_WEIGHTS, UNIFORM_FRACTION

LUMA = torch.tensor(LUMA_WEIGHTS, dtype=torch.float64)


def _uniform_sphere(n, gen):
    d = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return d / d.norm(dim=-1, keepdim=True)


def _smooth_map(H, gen, bright=True):
    """A positive test map with a bright lobe (so importance sampling has something to find)."""
    d = uv_to_dir(_centers(H))
    lobe = torch.exp(8.0 * (d @ torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64) - 1.0))
    noise = torch.rand(H, 2 * H, 3, generator=gen, dtype=torch.float64)
    return 0.2 + 0.3 * noise + (20.0 * lobe[..., None] if bright else 0.0)


def _centers(H):
    """[H, 2H, 2] uv of texel centers."""
    v = (torch.arange(H, dtype=torch.float64) + 0.5) / H
    u = (torch.arange(2 * H, dtype=torch.float64) + 0.5) / (2 * H)
    return torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1)


# ----------------------------------------------------------------------------------------------- mapping

def test_dir_to_uv_hand_computed():
    d = torch.tensor([[0, 0, 1], [0, 0, -1], [1, 0, 0], [0, 1, 0], [0, -1, 0], [-1, 0, 0]], dtype=torch.float64)
    uv = dir_to_uv(d)
    assert uv[0, 1] == pytest.approx(0.0, abs=1e-12)  # +Z: zenith, top row
    assert uv[1, 1] == pytest.approx(1.0, abs=1e-12)  # -Z: bottom row
    torch.testing.assert_close(uv[2], torch.tensor([0.5, 0.5], dtype=torch.float64))  # +X: center of the map
    torch.testing.assert_close(uv[3], torch.tensor([0.25, 0.5], dtype=torch.float64))  # +Y
    torch.testing.assert_close(uv[4], torch.tensor([0.75, 0.5], dtype=torch.float64))  # -Y
    assert uv[5, 0] == pytest.approx(0.0, abs=1e-12) and uv[5, 1] == pytest.approx(0.5)  # -X: the seam, wrapped
    # y = -0.0 gives atan2 = -pi, i.e. u = 1, which must wrap to 0 as well
    assert 0.0 <= float(dir_to_uv(torch.tensor([-1.0, -0.0, 0.0]))[0]) < 1.0
    # 45 deg elevation towards +X: v = 0.25; not-unit input is normalized
    torch.testing.assert_close(dir_to_uv(torch.tensor([2.0, 0.0, 2.0], dtype=torch.float64)),
                               torch.tensor([0.5, 0.25], dtype=torch.float64))


def test_uv_dir_round_trip():
    gen = torch.Generator().manual_seed(0)
    d = _uniform_sphere(1000, gen)
    uv = dir_to_uv(d)
    assert bool(((uv >= 0) & (uv <= 1)).all()) and bool((uv[:, 0] < 1).all())
    torch.testing.assert_close(uv_to_dir(uv), d, atol=1e-12, rtol=0)


# ----------------------------------------------------------------------------------------------- lookup

def test_lookup_hits_texel_centers():
    H = 6
    idx = torch.arange(H * 2 * H, dtype=torch.float64).reshape(H, 2 * H)
    rad = torch.stack([idx, idx // (2 * H), idx % (2 * H)], dim=-1)  # texel value = (flat index, row, column)
    out = envmap_lookup(rad, uv_to_dir(_centers(H)))
    torch.testing.assert_close(out, rad, atol=1e-9, rtol=0)
    light = EnvLight((rad + 1.0).float())  # through exp(log): exact up to float32 rounding
    torch.testing.assert_close(light.lookup(uv_to_dir(_centers(H)).float()), (rad + 1.0).float(), rtol=1e-5, atol=0)
    # halfway between columns 0 and 1 of row 2: the mean; across the seam: columns W-1 and 0; above row 0: clamped
    W = 2 * H
    mid = uv_to_dir(torch.tensor([[1.0 / W, 2.5 / H], [0.0, 2.5 / H], [0.5 / W, 0.1 / H]], dtype=torch.float64))
    got = envmap_lookup(rad, mid)[:, 0]
    torch.testing.assert_close(got, torch.tensor([2 * W + 0.5, 2 * W + (W - 1) / 2, 0.0], dtype=torch.float64))


def test_lookup_rotation():
    gen = torch.Generator().manual_seed(1)
    light = EnvLight(_smooth_map(8, gen))
    rot = light.rotated(90.0)
    assert rot.rotation_deg == 90.0 and rot.log_radiance is light.log_radiance
    d = _uniform_sphere(200, gen).float()
    Rd = torch.stack([-d[:, 1], d[:, 0], d[:, 2]], dim=-1)  # R_z(+90) d
    torch.testing.assert_close(rot.lookup(Rd), light.lookup(d), rtol=1e-5, atol=1e-6)
    # +90 deg moves the content a quarter turn towards smaller u: u_world = u_map - 0.25
    assert float(dir_to_uv(torch.tensor([0.0, 1.0, 0.0]))[0]) == pytest.approx(0.25)
    baked = EnvLight(rot.baked())  # a whole number of texels (16 columns / 4): no blur
    torch.testing.assert_close(baked.lookup(d), rot.lookup(d), rtol=1e-4, atol=1e-5)


def test_lookup_gradcheck():
    gen = torch.Generator().manual_seed(2)
    rad = torch.rand(4, 8, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    dirs = _uniform_sphere(7, gen)
    assert torch.autograd.gradcheck(lambda r: envmap_lookup(r, dirs, 30.0), (rad,))
    light = EnvLight(rad.detach() + 0.1, learnable=True)
    light.lookup(dirs).sum().backward()
    g = light.log_radiance.grad
    assert g is not None and g.abs().sum() > 0 and bool(torch.isfinite(g).all())


def test_shared_envmaps(test_data):
    root = test_data / "synthetic" / "bob_field" / "envmaps"
    hdr, exr = read_envmap(root / "field.hdr"), read_envmap(root / "field.exr")
    assert hdr.shape == exr.shape == (512, 1024, 3) and hdr.dtype == np.float32
    # the .hdr is the RGBE rounding of the .exr: within 1/128 of each pixel's largest channel
    peak = exr.max(axis=-1, keepdims=True)
    assert np.abs(hdr - exr).max() <= 1.0 / 128 * np.maximum(peak, 1e-30).max()
    assert (np.abs(hdr - exr) <= peak / 128 + 1e-30).all()
    light = EnvLight.from_file(root / "field.exr")
    assert 0.45 < light.mean_luminance() < 0.55  # the README scales every map to mean luminance 0.5


# ----------------------------------------------------------------------------------------------- sampling

def test_pdf_integrates_to_one():
    gen = torch.Generator().manual_seed(3)
    light = EnvLight(_smooth_map(16, gen), rotation_deg=33.0)
    d = _uniform_sphere(400_000, gen)
    integral = float(light.pdf(d).mean()) * 4 * math.pi
    assert integral == pytest.approx(1.0, rel=0.02)
    assert float(light.pdf(d).min()) > 0  # the uniform share leaves no hole


def test_sample_pdf_matches_and_estimates_the_integral():
    gen = torch.Generator().manual_seed(4)
    rad = _smooth_map(32, gen)
    light = EnvLight(rad, rotation_deg=-70.0)
    u = torch.rand(200_000, 2, generator=gen, dtype=torch.float64)
    dirs, pdf = light.sample(u)
    assert dirs.shape == (200_000, 3) and pdf.shape == (200_000,)
    torch.testing.assert_close(dirs.norm(dim=-1), torch.ones(200_000, dtype=torch.float64))
    torch.testing.assert_close(pdf, light.pdf(dirs), rtol=1e-4, atol=0)
    # integral of luminance over the sphere, by texel quadrature of the piecewise-bilinear map is close to the
    # piecewise-constant one on a smooth map: sum lum * solid angle of the texel
    H, W = 32, 64
    theta = torch.arange(H + 1, dtype=torch.float64) * math.pi / H
    omega = (torch.cos(theta[:-1]) - torch.cos(theta[1:])) * (2 * math.pi / W)  # [H] texel solid angles
    lum = light.radiance().double() @ LUMA
    exact = float((lum * omega[:, None]).sum())
    est = float(((light.lookup(dirs) @ LUMA) / pdf).mean())
    assert est == pytest.approx(exact, rel=0.02)
    # importance sampling pays off: samples concentrate in the bright lobe, rotated with the light
    lobe = torch.tensor([0.6, 0.0, 0.8], dtype=torch.float64)
    c, s = math.cos(math.radians(-70.0)), math.sin(math.radians(-70.0))
    lobe_world = torch.tensor([c * lobe[0] - s * lobe[1], s * lobe[0] + c * lobe[1], lobe[2]], dtype=torch.float64)
    assert float((dirs @ lobe_world > 0.9).double().mean()) > 0.3


def test_sample_histogram_matches_texel_masses():
    H, W = 4, 8
    rad = torch.ones(H, W, 3, dtype=torch.float64)
    rad[1, 5] = 50.0
    light = EnvLight(rad)
    dirs, _ = light.sample(torch.rand(100_000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64))
    uv = dir_to_uv(dirs)
    idx = (uv[:, 1] * H).long().clamp(max=H - 1) * W + (uv[:, 0] * W).long().clamp(max=W - 1)
    hist = torch.bincount(idx, minlength=H * W).double() / len(idx)
    s = torch.sin((torch.arange(H, dtype=torch.float64) + 0.5) * math.pi / H)[:, None].expand(H, W)
    w = (rad @ LUMA) * s
    expected = ((1 - UNIFORM_FRACTION) * w / w.sum() + UNIFORM_FRACTION * s / s.sum()).reshape(-1)
    torch.testing.assert_close(hist, expected, atol=4e-3, rtol=0)


def test_distribution_rebuilds_after_in_place_update():
    light = EnvLight(torch.ones(4, 8, 3), learnable=True)
    d = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    before = light.pdf(d)
    with torch.no_grad():
        light.log_radiance[2:] += 3.0  # brighten the lower half
    after = light.pdf(d)
    assert float(after[0]) < float(before[0]) * 0.5
    torch.testing.assert_close(after, light.rotated(0.0).pdf(d))


# ----------------------------------------------------------------------------------------------- construction

def test_constant_resized_state_and_save(tmp_path):
    light = EnvLight.constant((0.5, 1.0, 2.0), height=8)
    assert light.radiance().shape == (8, 16, 3)
    torch.testing.assert_close(light.lookup(torch.randn(10, 3)), torch.tensor([[0.5, 1.0, 2.0]]).expand(10, 3))
    gen = torch.Generator().manual_seed(6)
    big = EnvLight(_smooth_map(16, gen), rotation_deg=12.0)
    small = big.resized(4)
    assert small.radiance().shape == (4, 8, 3) and small.rotation_deg == 12.0
    # solid-angle-weighted area averaging keeps the integral of the radiance over the sphere
    def integral(lt):  # sum of radiance * exact texel solid angle
        cos = torch.cos(torch.arange(lt.height + 1, dtype=torch.float64) * math.pi / lt.height)
        omega = (cos[:-1] - cos[1:]) * (2 * math.pi / (2 * lt.height))
        return float((lt.radiance().double() * omega[:, None, None]).sum())
    assert integral(small) == pytest.approx(integral(big), rel=1e-5)
    assert big.resized(32).radiance().shape == (32, 64, 3)
    state = big.to_state()
    assert json.loads(state["header"])["kind"] == "envlight"
    back = EnvLight.from_state(state, "ck.pt")
    assert back.rotation_deg == 12.0 and not back.learnable
    torch.testing.assert_close(back.radiance(), big.radiance())
    with pytest.raises(ValueError, match="ck.pt.*kind"):
        EnvLight.from_state({"header": json.dumps({"kind": "mesh"}), "tensors": {}}, "ck.pt")
    with pytest.raises(ValueError, match="ck.pt.*shape"):
        EnvLight.from_state({"header": state["header"], "tensors": {"log_radiance": torch.zeros(4, 4, 3)}}, "ck.pt")
    for suffix, tol in ((".hdr", 1.0 / 128), (".exr", 1e-6)):
        big.save(tmp_path / f"env{suffix}")
        again = EnvLight.from_file(tmp_path / f"env{suffix}")
        torch.testing.assert_close(again.radiance().double(), big.radiance(), rtol=tol, atol=1e-4)
    with pytest.raises(ValueError, match=r"env\.png"):
        big.save(tmp_path / "env.png")


def test_bad_inputs(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.hdr"):
        read_envmap(tmp_path / "nope.hdr")
    (tmp_path / "env.png").write_bytes(b"\x89PNG")
    with pytest.raises(ValueError, match=r"env\.png is not HDR: expected a linear \.hdr or \.exr"):
        read_envmap(tmp_path / "env.png")
    (tmp_path / "junk.hdr").write_bytes(b"not an hdr")
    with pytest.raises(ValueError, match="cannot decode environment map .*junk.hdr"):
        read_envmap(tmp_path / "junk.hdr")
    # RGBE cannot store NaN (its largest value, 255 * 2^119, is a finite float32), so the NaN map is an .exr
    img = np.ones((4, 8, 3), np.float32)
    img[1, 2, 0] = np.nan
    img[2, 3] = np.inf
    write_exr(tmp_path / "nan.exr", img)
    with pytest.raises(ValueError, match=r"nan\.exr has 4 non-finite"):
        read_envmap(tmp_path / "nan.exr")
    img = np.ones((4, 8, 3), np.float32)
    img[0, 0, 1] = -1.0
    write_exr(tmp_path / "neg.exr", img)
    with pytest.raises(ValueError, match=r"neg\.exr has 1 negative"):
        read_envmap(tmp_path / "neg.exr")
    write_hdr(tmp_path / "square.hdr", np.ones((8, 8, 3), np.float32))
    with pytest.raises(ValueError, match=r"square\.hdr is 8x8 .*2:1"):
        read_envmap(tmp_path / "square.hdr")
    write_exr(tmp_path / "gray.exr", np.full((4, 8), 0.25, np.float32))  # gray is replicated
    np.testing.assert_array_equal(read_envmap(tmp_path / "gray.exr"), np.full((4, 8, 3), 0.25, np.float32))
    with pytest.raises(ValueError, match=r"radiance must have shape \[H, 2H, 3\]"):
        EnvLight(torch.ones(4, 4, 3))
    with pytest.raises(ValueError, match="radiance has 1 non-finite"):
        EnvLight(torch.tensor([[[1.0, 1.0, 1.0], [float("nan"), 1.0, 1.0]]]))
    with pytest.raises(ValueError, match="radiance has 1 negative"):
        EnvLight(torch.tensor([[[1.0, 1.0, 1.0], [-1.0, 1.0, 1.0]]]))


# ----------------------------------------------------------------------------------------------- writers

def test_write_hdr_round_trip(tmp_path):
    rng = np.random.default_rng(7)
    img = (rng.random((9, 40, 3)) ** 3 * 50).astype(np.float32)
    img[2, 5:30] = 0.75  # long runs exercise the RLE run packets
    img[0, 0] = 0.0
    for rle in (True, False):
        write_hdr(tmp_path / "a.hdr", img, rle=rle)
        back = read_image(tmp_path / "a.hdr")
        assert back.shape == img.shape
        # shared exponent, 8-bit mantissas rounded to nearest: error <= half a step of the pixel's largest channel
        assert (np.abs(back - img) <= img.max(axis=-1, keepdims=True) / 256 + 1e-12).all()
        np.testing.assert_array_equal(back[2, 5:30], 0.75)  # exactly representable
        assert (back[0, 0] == 0).all()
    rle_size = (tmp_path / "a.hdr").stat().st_size
    write_hdr(tmp_path / "a.hdr", img, rle=True)
    assert (tmp_path / "a.hdr").stat().st_size < rle_size  # runs compress
    with pytest.raises(ValueError, match=r"b\.hdr.*negative or non-finite"):
        write_hdr(tmp_path / "b.hdr", -img)
    assert not (tmp_path / "b.hdr").exists()


def test_write_exr_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    img = (rng.random((5, 10, 3)) * 100).astype(np.float32)
    write_exr(tmp_path / "a.exr", torch.from_numpy(img))
    np.testing.assert_array_equal(read_image(tmp_path / "a.exr"), img)
    write_exr(tmp_path / "h.exr", img, half=True)
    np.testing.assert_allclose(read_image(tmp_path / "h.exr"), img, rtol=1e-3)  # half: 11-bit mantissa
    with pytest.raises(ValueError, match="half"):
        write_exr(tmp_path / "h.exr", img * 1e4, half=True)
    with pytest.raises(ValueError, match=r"c\.exr.*\[H, W, 3\]"):
        write_exr(tmp_path / "c.exr", np.ones((2, 3, 5), np.float32))
