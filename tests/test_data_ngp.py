"""instant-ngp transforms.json loader against the real fox photos (with OpenCV distortion)."""

import json
import math
import struct

import numpy as np
import pytest
import torch

from recon.cameras import opengl_c2w_to_world_to_cam
from recon.data.io import write_png
from recon.data.load import detect_format, load_dataset
from recon.data.ngp import read_ply_points
from recon.data.undistort import Distortion, distort_points, undistort_image
from recon.cameras import intrinsics_matrix

FOX = dict(fl_x=1375.52, fl_y=1374.49, cx=554.558, cy=965.268, k1=0.0578421, k2=-0.0805099, p1=-0.000980296,
           p2=0.00015575)


@pytest.fixture(scope="module")
def fox(test_data):
    with pytest.warns(UserWarning, match="dropping 17 of 67 frames"):
        return load_dataset(test_data / "fox", skip_missing_images=True, downscale=8)


def test_fox_splits(fox, test_data):
    assert fox.format == "ngp" and detect_format(test_data / "fox") == "ngp"
    assert len(fox.train) == 43 and len(fox.test) == 7
    existing = sorted(p.stem for p in (test_data / "fox" / "images").glob("*.jpg"))
    assert len(existing) == 50
    assert fox.test.names == existing[::8]  # indices 0, 8, ..., 48 of the sorted list
    assert fox.train.names == [n for i, n in enumerate(existing) if i % 8]
    assert fox.train.images.shape == (43, 240, 135, 4)  # 1080x1920 / 8


def test_fox_intrinsics_scaled(fox):
    # K is the file's K (undistortion keeps it), scaled by 1/8: 1080 / 8 and 1920 / 8 are exact
    K = torch.tensor([[FOX["fl_x"] / 8, 0, FOX["cx"] / 8], [0, FOX["fl_y"] / 8, FOX["cy"] / 8], [0, 0, 1]])
    torch.testing.assert_close(fox.train.cameras.K, K.expand(43, 3, 3), atol=1e-4, rtol=0)
    assert (fox.test.cameras.width, fox.test.cameras.height) == (135, 240)


def test_fox_poses(fox, test_data):
    meta = json.loads((test_data / "fox" / "transforms.json").read_text())
    frame = next(f for f in meta["frames"] if f["file_path"].endswith(f"{fox.test.names[1]}.jpg"))
    expected = opengl_c2w_to_world_to_cam(torch.tensor(frame["transform_matrix"], dtype=torch.float64)).float()
    torch.testing.assert_close(fox.test.cameras.world_to_cam[1], expected, atol=1e-5, rtol=0)


def test_fox_undistorted_alpha(fox):
    alpha = fox.train.images[..., 3]
    # the fox lens is mildly pincushion at the edges (radial > 1): a thin border has no source pixel
    assert (alpha == 0).any()
    assert torch.all(alpha[:, 40:-40, 20:-20] == 1)
    assert set(alpha.unique().tolist()) <= {0.0, 1.0} | set((torch.arange(65) / 64).tolist())


def test_fox_distortion_direction():
    """A dot drawn in a distorted photo at the hand-computed distorted position of a normalized point must land,
    after undistortion, at the pinhole projection of that point."""
    x, y = -0.33, -0.62  # near the top-left corner of the fox frame
    # hand computation of the OpenCV model with the fox coefficients
    r2 = x * x + y * y
    radial = 1 + FOX["k1"] * r2 + FOX["k2"] * r2 * r2
    xd = x * radial + 2 * FOX["p1"] * x * y + FOX["p2"] * (r2 + 2 * x * x)
    yd = y * radial + FOX["p1"] * (r2 + 2 * y * y) + 2 * FOX["p2"] * x * y
    dist = Distortion("OPENCV", k1=FOX["k1"], k2=FOX["k2"], p1=FOX["p1"], p2=FOX["p2"])
    torch.testing.assert_close(distort_points(torch.tensor([x, y], dtype=torch.float64), dist),
                               torch.tensor([xd, yd], dtype=torch.float64), atol=1e-12, rtol=0)
    # full-resolution fox camera; pixel coordinates with +0.5 centers
    W, H = 1080, 1920
    ud, vd = FOX["fl_x"] * xd + FOX["cx"], FOX["fl_y"] * yd + FOX["cy"]
    u, v = FOX["fl_x"] * x + FOX["cx"], FOX["fl_y"] * y + FOX["cy"]
    assert math.hypot(u - ud, v - vd) > 3  # the test would not notice a missing or inverted distortion otherwise
    vv, uu = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    img = torch.zeros(H, W, 4)
    img[..., 3] = 1
    img[..., 0] = torch.exp(-((uu - ud) ** 2 + (vv - vd) ** 2) / (2 * 2.0**2))
    out = undistort_image(img, intrinsics_matrix(FOX["fl_x"], FOX["fl_y"], FOX["cx"], FOX["cy"]), dist)
    wgt = out[..., 0]
    cu, cv = float((wgt * uu).sum() / wgt.sum()), float((wgt * vv).sum() / wgt.sum())
    assert math.hypot(cu - u, cv - v) < 0.1, (cu, cv, u, v, ud, vd)


def test_fox_missing_images_raise(test_data):
    with pytest.raises(FileNotFoundError, match=r"17 of 67 images.*images/0005\.jpg.*skip-missing-images"):
        load_dataset(test_data / "fox")


def _write_ply(path, xyz, rgb, binary):
    header = ["ply", f"format {'binary_little_endian' if binary else 'ascii'} 1.0", f"element vertex {len(xyz)}",
              "property float x", "property float y", "property float z", "property uchar red",
              "property uchar green", "property uchar blue", "element face 0",
              "property list uchar int vertex_indices", "end_header"]
    body = b"".join(struct.pack("<3f3B", *p, *c) for p, c in zip(xyz, rgb)) if binary else \
        "".join(f"{p[0]} {p[1]} {p[2]} {c[0]} {c[1]} {c[2]}\n" for p, c in zip(xyz, rgb)).encode()
    path.write_bytes(("\n".join(header) + "\n").encode() + body)


@pytest.mark.parametrize("binary", [False, True])
def test_ply_points(tmp_path, binary):
    rng = np.random.default_rng(0)
    xyz = rng.normal(size=(5, 3)).astype(np.float32)
    rgb = rng.integers(0, 256, size=(5, 3))
    _write_ply(tmp_path / "p.ply", xyz, rgb, binary)
    pts, cols = read_ply_points(tmp_path / "p.ply")
    np.testing.assert_allclose(pts.numpy(), xyz, rtol=1e-6)
    np.testing.assert_allclose(cols.numpy(), rgb / 255.0, rtol=1e-6)


def test_ngp_per_frame_overrides_and_ply(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "img").mkdir()
    frames = []
    for i in range(3):
        write_png(tmp_path / "img" / f"{i}.png", rng.random((8, 10, 3)))
        frames.append({"file_path": f"img/{i}.png", "transform_matrix": np.eye(4).tolist()})
    frames[2]["fl_x"] = 20.0  # per-frame override
    _write_ply(tmp_path / "pts.ply", np.zeros((4, 3)), np.full((4, 3), 255), binary=True)
    meta = {"fl_x": 10.0, "cx": 5.0, "cy": 4.0, "w": 10, "h": 8, "aabb_scale": 16, "ply_file_path": "pts.ply",
            "frames": frames}
    (tmp_path / "transforms.json").write_text(json.dumps(meta))
    d = load_dataset(tmp_path, test_every=2)
    assert d.test.names == ["0", "2"] and d.train.names == ["1"]
    torch.testing.assert_close(d.test.cameras.K[:, 0, 0], torch.tensor([10.0, 20.0]))
    torch.testing.assert_close(d.test.cameras.K[:, 1, 1], torch.tensor([10.0, 20.0]))  # fl_y defaults to fl_x
    assert d.points.shape == (4, 3) and torch.all(d.point_colors == 1)
    assert torch.all(d.train.images[..., 3] == 1)  # opaque, no distortion
