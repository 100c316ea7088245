"""3DGS PLY I/O (recon.export.gaussian_ply) and the independent numpy splatting helper (tests/_splat_numpy.py)."""

import math

import numpy as np
import pytest
import torch
from _splat_numpy import SH_C0, SH_C1, render_numpy

from recon.export.gaussian_ply import GaussianPly, read_gaussian_ply, write_gaussian_ply

REQUIRED = (["x", "y", "z"] + [f"f_dc_{i}" for i in range(3)] + ["opacity"] + [f"scale_{i}" for i in range(3)]
            + [f"rot_{i}" for i in range(4)])


def _random_gaussians(n: int, degree: int, seed: int = 0) -> GaussianPly:
    g = torch.Generator().manual_seed(seed)
    k = (degree + 1) ** 2
    return GaussianPly(
        means=torch.randn(n, 3, generator=g), quats=torch.randn(n, 4, generator=g),
        log_scales=torch.randn(n, 3, generator=g) - 3.0, opacity_logits=torch.randn(n, generator=g),
        sh_dc=torch.randn(n, 3, generator=g), sh_rest=torch.randn(n, k - 1, 3, generator=g) * 0.1,
    )


def _assert_same(a: GaussianPly, b: GaussianPly) -> None:
    for name in ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype == torch.float32 and x.shape == y.shape, name
        assert torch.equal(x, y), name


def _header(props, n, fmt="binary_little_endian", types=None, extra=""):
    types = types or ["float"] * len(props)
    lines = ["ply", f"format {fmt} 1.0", "comment made by a test", f"element vertex {n}"]
    lines += [f"property {t} {p}" for t, p in zip(types, props)]
    return ("\n".join(lines) + "\n" + extra + "end_header\n").encode()


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip_exact(tmp_path, degree):
    g = _random_gaussians(17, degree, seed=degree)
    path = tmp_path / "g.ply"
    write_gaussian_ply(path, g)
    back = read_gaussian_ply(path)
    _assert_same(g, back)
    assert back.sh_degree == degree and len(back) == 17
    assert [p.name for p in tmp_path.iterdir()] == ["g.ply"]  # no temp file left


def test_standard_layout_and_channel_major_rest(tmp_path):
    # Degree 1: K - 1 = 3 bands per channel. sh_rest[0, k, c] = 100 c + k + 1, so the channel-major file order
    # f_rest_0..8 must read R1 R2 R3 G1 G2 G3 B1 B2 B3 = 1 2 3 101 102 103 201 202 203.
    rest = torch.tensor([[[100.0 * c + k + 1 for c in range(3)] for k in range(3)]])
    g = GaussianPly(means=torch.tensor([[1.0, 2.0, 3.0]]), quats=torch.tensor([[0.5, 0.1, 0.2, 0.3]]),
                    log_scales=torch.tensor([[-1.0, -2.0, -3.0]]), opacity_logits=torch.tensor([0.25]),
                    sh_dc=torch.tensor([[7.0, 8.0, 9.0]]), sh_rest=rest)
    path = tmp_path / "one.ply"
    write_gaussian_ply(path, g)
    raw = path.read_bytes()
    head, body = raw.split(b"end_header\n")
    names = [line.split()[-1] for line in head.decode().splitlines() if line.startswith("property float")]
    assert head.decode().splitlines()[:3] == ["ply", "format binary_little_endian 1.0", "element vertex 1"]
    assert names == (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
                     + [f"f_rest_{i}" for i in range(9)]
                     + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    values = np.frombuffer(body, dtype="<f4")
    np.testing.assert_array_equal(values, np.array(
        [1, 2, 3, 0, 0, 0, 7, 8, 9, 1, 2, 3, 101, 102, 103, 201, 202, 203, 0.25, -1, -2, -3, 0.5, 0.1, 0.2, 0.3],
        dtype="<f4"))
    _assert_same(g, read_gaussian_ply(path))


def _standard_columns(g: GaussianPly) -> dict[str, np.ndarray]:
    cols = {n: g.means[:, i].numpy() for i, n in enumerate("xyz")}
    cols.update({f"f_dc_{i}": g.sh_dc[:, i].numpy() for i in range(3)})
    m = g.sh_rest.shape[1]
    cols.update({f"f_rest_{c * m + k}": g.sh_rest[:, k, c].numpy() for c in range(3) for k in range(m)})
    cols["opacity"] = g.opacity_logits.numpy()
    cols.update({f"scale_{i}": g.log_scales[:, i].numpy() for i in range(3)})
    cols.update({f"rot_{i}": g.quats[:, i].numpy() for i in range(4)})
    return cols


def test_extra_properties_shuffled_order_and_types(tmp_path):
    g = _random_gaussians(5, 2, seed=3)
    cols = _standard_columns(g)
    cols["red"] = np.arange(5) % 256
    cols["label"] = np.arange(5) * 1000
    names = list(cols)
    np.random.default_rng(0).shuffle(names)
    types = {"red": ("uchar", "u1"), "label": ("int", "<i4")}
    fields = [(n, types.get(n, ("double", "<f8"))[1]) for n in names]  # float64 storage reads back exactly
    arr = np.zeros(5, dtype=fields)
    for n in names:
        arr[n] = cols[n]
    header = _header(names, 5, types=[types.get(n, ("double",))[0] for n in names])
    face = b"element face 1\nproperty list uchar int vertex_indices\n"  # an element after vertex is ignored
    header = header.replace(b"end_header\n", face + b"end_header\n")
    path = tmp_path / "extra.ply"
    path.write_bytes(header + arr.tobytes() + bytes([3]) + np.array([0, 1, 2], "<i4").tobytes())
    _assert_same(g, read_gaussian_ply(path))


def test_big_endian(tmp_path):
    g = _random_gaussians(4, 1, seed=4)
    cols = _standard_columns(g)
    arr = np.zeros(4, dtype=[(n, ">f4") for n in cols])
    for n, v in cols.items():
        arr[n] = v
    path = tmp_path / "be.ply"
    path.write_bytes(_header(list(cols), 4, fmt="binary_big_endian") + arr.tobytes())
    _assert_same(g, read_gaussian_ply(path))


def test_ascii(tmp_path):
    g = _random_gaussians(3, 1, seed=5)
    cols = _standard_columns(g)
    rows = "\n".join(" ".join(repr(float(cols[n][i])) for n in cols) for i in range(3))
    path = tmp_path / "a.ply"
    path.write_bytes(_header(list(cols), 3, fmt="ascii") + rows.encode() + b"\n")
    _assert_same(g, read_gaussian_ply(path))


def _write_minimal(tmp_path, drop=None, nan=None, n=2, cut=0):
    props = [p for p in REQUIRED if p != drop]
    arr = np.ones((n, len(props)), dtype="<f4")
    if nan is not None:
        arr[1, props.index(nan)] = np.nan
    path = tmp_path / "bad.ply"
    body = arr.tobytes()
    path.write_bytes(_header(props, n) + body[: len(body) - cut])
    return path


def test_minimal_file_reads_as_degree_0(tmp_path):
    g = read_gaussian_ply(_write_minimal(tmp_path))
    assert g.sh_degree == 0 and g.sh_rest.shape == (2, 0, 3) and g.opacity_logits.shape == (2,)


def test_truncated_file(tmp_path):
    path = _write_minimal(tmp_path, cut=5)
    # 14 float32 properties: stride 56 bytes.
    with pytest.raises(ValueError, match=r"bad\.ply: truncated PLY: expected 2 x 56 = 112 bytes of vertex data, "
                                         r"got 107"):
        read_gaussian_ply(path)


def test_missing_property(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.ply: missing required vertex property 'scale_1'"):
        read_gaussian_ply(_write_minimal(tmp_path, drop="scale_1"))


def test_nan_value(tmp_path):
    with pytest.raises(ValueError, match=r"bad\.ply: property 'rot_2' contains NaN or Inf"):
        read_gaussian_ply(_write_minimal(tmp_path, nan="rot_2"))


def test_not_a_ply(tmp_path):
    path = tmp_path / "x.ply"
    path.write_bytes(b"solid cube\nfacet normal 0 0 1\n")
    with pytest.raises(ValueError, match=r"x\.ply: not a PLY file"):
        read_gaussian_ply(path)


def test_no_vertex_element(tmp_path):
    path = tmp_path / "nv.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\nelement face 0\nproperty list uchar int vertex_indices\nend_header\n")
    with pytest.raises(ValueError, match=r"nv\.ply: PLY has no 'element vertex'"):
        read_gaussian_ply(path)


def test_unsupported_format_and_bad_rest_count(tmp_path):
    path = tmp_path / "f.ply"
    path.write_bytes(b"ply\nformat binary_middle_endian 1.0\nelement vertex 0\nend_header\n")
    with pytest.raises(ValueError, match=r"f\.ply: unsupported PLY format"):
        read_gaussian_ply(path)
    props = REQUIRED + [f"f_rest_{i}" for i in range(6)]
    path.write_bytes(_header(props, 1) + np.zeros(len(props), "<f4").tobytes())
    with pytest.raises(ValueError, match=r"f\.ply: found 6 f_rest_\* properties; expected 0, 9, 24 or 45"):
        read_gaussian_ply(path)


def test_write_validates(tmp_path):
    g = _random_gaussians(3, 1)
    g.sh_rest = torch.zeros(3, 5, 3)
    with pytest.raises(ValueError, match=r"sh_rest must have shape \[N=3, K-1, 3\]"):
        write_gaussian_ply(tmp_path / "w.ply", g)
    g = _random_gaussians(3, 1)
    g.opacity_logits = torch.zeros(3, 1)
    with pytest.raises(ValueError, match=r"opacity_logits must have shape \[N\]"):
        write_gaussian_ply(tmp_path / "w.ply", g)
    g = _random_gaussians(3, 0)
    g.means[1, 0] = float("inf")
    with pytest.raises(ValueError, match="means contains NaN or Inf"):
        write_gaussian_ply(tmp_path / "w.ply", g)
    assert not list(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------- numpy splatting helper
def _camera(width=33, height=33, f=40.0):
    # Odd size: the centre of pixel (16, 16) is at (16.5, 16.5) = (cx, cy), on the optical axis.
    return np.eye(4), np.array([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])


def _one_gaussian(mean, logit, sh_dc, sh_rest=None, log_scale=-2.5):
    return GaussianPly(means=torch.tensor([mean]), quats=torch.tensor([[1.0, 0.0, 0.0, 0.0]]),
                       log_scales=torch.full((1, 3), log_scale), opacity_logits=torch.tensor([logit]),
                       sh_dc=torch.tensor([sh_dc]),
                       sh_rest=torch.zeros(1, 0, 3) if sh_rest is None else torch.tensor([sh_rest]))


def test_splat_numpy_single_gaussian_at_pixel_center():
    # The mean projects exactly onto the centre of pixel (16, 16) (power = 0).
    w2c, K = _camera()
    mean = [0.0, 0.0, 5.0]
    g = _one_gaussian(mean, logit=0.4, sh_dc=[0.3, -0.2, 1.0])
    bg = np.array([0.1, 0.6, 0.9])
    img = render_numpy(g, w2c, K, 33, 33, bg)
    # Expected values from the float32-stored parameters.
    o = 1.0 / (1.0 + math.exp(-float(g.opacity_logits[0])))
    color = np.maximum(SH_C0 * g.sh_dc[0].double().numpy() + 0.5, 0.0)
    assert color[1] > 0 and o < 0.99
    np.testing.assert_allclose(img[16, 16], o * color + (1 - o) * bg, rtol=1e-12)
    np.testing.assert_allclose(img[0, 0], bg, rtol=1e-12)  # far outside: alpha < 1/255, skipped
    assert np.abs(img[16, 17] - bg).max() < np.abs(img[16, 16] - bg).max()


def test_splat_numpy_sh_degree_1_and_occlusion():
    # Camera at the origin looking along +z, Gaussian straight ahead: direction (0, 0, 1), so of the degree-1
    # band only coefficient 2 (the z term, +C1 z) contributes.
    w2c, K = _camera()
    rest = [[5.0, 5.0, 5.0], [0.2, 0.1, -0.3], [7.0, 7.0, 7.0]]
    mean = [0.0, 0.0, 4.0]
    g = _one_gaussian(mean, logit=10.0, sh_dc=[0.0, 0.0, 0.0], sh_rest=rest)
    img = render_numpy(g, w2c, K, 33, 33, np.zeros(3))
    expected = np.maximum(0.5 + SH_C1 * g.sh_rest[0, 1].double().numpy(), 0.0) * 0.99  # alpha clamped at 0.99
    np.testing.assert_allclose(img[16, 16], expected, rtol=1e-9)
    # A second, farther Gaussian (opacity 0.5) behind it only shows through the remaining 1%.
    both = GaussianPly(*(torch.cat([a, b]) for a, b in zip(
        (g.means, g.quats, g.log_scales, g.opacity_logits, g.sh_dc, g.sh_rest),
        (torch.tensor([[m * 2 for m in mean]]), g.quats, g.log_scales, torch.zeros(1), torch.ones(1, 3),
         torch.zeros(1, 3, 3)))))
    img2 = render_numpy(both, w2c, K, 33, 33, np.zeros(3))
    far = (SH_C0 + 0.5) * 0.5
    np.testing.assert_allclose(img2[16, 16], expected + 0.01 * far, rtol=1e-9)


def test_splat_numpy_reads_written_ply(tmp_path):
    g = _random_gaussians(50, 3, seed=9)
    g.means = g.means * 0.5 + torch.tensor([0.0, 0.0, 4.0])
    write_gaussian_ply(tmp_path / "s.ply", g)
    w2c, K = _camera()
    img = render_numpy(read_gaussian_ply(tmp_path / "s.ply"), w2c, K, 33, 33, np.ones(3))
    assert img.shape == (33, 33, 3) and np.isfinite(img).all()
    np.testing.assert_allclose(img, render_numpy(g, w2c, K, 33, 33, np.ones(3)))
    assert np.abs(img - 1.0).max() > 0.1
