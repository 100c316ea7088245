"""``load_dataset(distortion="keep")``: distorted instant-ngp frames stay as stored and the cameras carry the lens."""

import json

import numpy as np
import pytest
import torch

from recon.data.io import read_image, write_png
from recon.data.load import load_dataset
from recon.data.undistort import Distortion

W, H = 12, 10
INTRINSICS = dict(fl_x=9.0, fl_y=8.5, cx=6.2, cy=4.9, w=W, h=H)
FISHEYE = dict(camera_model="OPENCV_FISHEYE", k1=0.05, k2=-0.01, k3=0.002, k4=-0.0005)
OPENCV = dict(camera_model="OPENCV", k1=-0.12, k2=0.03, p1=0.004, p2=-0.002)


def _c2w(i: int) -> list:
    """An OpenGL camera-to-world matrix, slightly different per frame."""
    c2w = np.eye(4)
    c2w[:3, 3] = [0.1 * i, -0.2, 3.0 + 0.05 * i]
    return c2w.tolist()


def _write_ngp(root, lens: dict, n: int = 4, per_frame: dict | None = None) -> list:
    """A tiny transforms.json dataset with ``n`` random RGBA PNGs; returns the image paths in sorted order."""
    rng = np.random.default_rng(0)
    (root / "img").mkdir(parents=True)
    frames, paths = [], []
    for i in range(n):
        path = root / "img" / f"{i}.png"
        rgba = rng.random((H, W, 4))
        rgba[..., 3] = np.where(rng.random((H, W)) < 0.2, 0.5, 1.0)  # some partial alpha that must survive
        write_png(path, rgba)
        frames.append({"file_path": f"img/{i}.png", "transform_matrix": _c2w(i), **(per_frame or {}).get(i, {})})
        paths.append(path)
    (root / "transforms.json").write_text(json.dumps({**INTRINSICS, **lens, "frames": frames}))
    return paths


def _stored(path) -> torch.Tensor:
    return torch.from_numpy(read_image(path))


@pytest.mark.parametrize("lens, model, coeffs", [
    (FISHEYE, "fisheye", [0.05, -0.01, 0.002, -0.0005]),  # k1, k2, k3, k4
    (OPENCV, "opencv", [-0.12, 0.03, 0.004, -0.002, 0.0]),  # k1, k2, p1, p2, k3 (OpenCV's distCoeffs order)
])
def test_keep_distortion(tmp_path, lens, model, coeffs):
    paths = _write_ngp(tmp_path, lens)
    d = load_dataset(tmp_path, test_every=2, distortion="keep")
    assert d.test.names == ["0", "2"] and d.train.names == ["1", "3"]
    for split, idx in ((d.test, [0, 2]), (d.train, [1, 3])):
        # no resampling: the pixels (alpha included) are exactly the files' values
        assert torch.equal(split.images, torch.stack([_stored(paths[i]) for i in idx]))
        cams = split.cameras
        assert cams.model == model and cams.K.dtype == torch.float32
        torch.testing.assert_close(cams.distortion, torch.tensor([coeffs, coeffs]), atol=0, rtol=0)
        torch.testing.assert_close(cams.K[:, 0], torch.tensor([[9.0, 0.0, 6.2]] * 2), atol=1e-6, rtol=0)
        torch.testing.assert_close(cams.K[:, 1], torch.tensor([[0.0, 8.5, 4.9]] * 2), atol=1e-6, rtol=0)


@pytest.mark.parametrize("lens", [FISHEYE, OPENCV])
def test_keep_ray_reprojects_to_its_pixel(tmp_path, lens):
    _write_ngp(tmp_path, lens)
    cams = load_dataset(tmp_path, test_every=2, distortion="keep").train.cameras.to(dtype=torch.float64)
    pixels = torch.tensor([[[0.5, 0.5], [11.5, 9.5], [3.5, 7.5]]], dtype=torch.float64).expand(len(cams), -1, -1)
    origins, dirs = cams.rays(pixels)
    for c in range(len(cams)):
        uv, z = cams[c].project(origins[c] + 2.0 * dirs[c])
        assert (z > 0).all()
        torch.testing.assert_close(uv[0], pixels[c], atol=1e-6, rtol=0)
    # the lens matters: the corner ray differs from the pinhole ray through the same pixel
    pin_dirs = type(cams)(cams.world_to_cam, cams.K, cams.width, cams.height).rays(pixels)[1]
    assert (dirs[:, 0] - pin_dirs[:, 0]).norm(dim=-1).min() > 1e-3


@pytest.mark.parametrize("lens", [FISHEYE, OPENCV])
def test_default_undistorts_to_pinhole(tmp_path, lens):
    paths = _write_ngp(tmp_path, lens)
    d = load_dataset(tmp_path, test_every=2)
    assert d.train.cameras.model == "pinhole" and d.train.cameras.distortion is None
    assert d.test.cameras.model == "pinhole"
    torch.testing.assert_close(d.test.cameras.K[0, 0], torch.tensor([9.0, 0.0, 6.2]), atol=1e-6, rtol=0)
    assert not torch.equal(d.test.images[0], _stored(paths[0]))  # resampled


@pytest.mark.parametrize("lens", [FISHEYE, OPENCV])
def test_keep_downscale(tmp_path, lens):
    _write_ngp(tmp_path, lens)
    full = load_dataset(tmp_path, test_every=2, distortion="keep")
    half = load_dataset(tmp_path, test_every=2, distortion="keep", downscale=2)
    cams = half.train.cameras
    assert (cams.width, cams.height) == (W // 2, H // 2) and cams.model == full.train.cameras.model
    torch.testing.assert_close(cams.K[:, :2], full.train.cameras.K[:, :2] / 2, atol=1e-6, rtol=0)
    torch.testing.assert_close(cams.distortion, full.train.cameras.distortion, atol=0, rtol=0)
    # area average of the stored pixels (premultiplied by alpha): check the opaque-average alpha channel
    alpha = full.train.images[..., 3].reshape(2, H // 2, 2, W // 2, 2).mean(dim=(2, 4))
    torch.testing.assert_close(half.train.images[..., 3], alpha, atol=1e-6, rtol=0)


def test_keep_opencv_split_gives_pinhole_frames_zero_coefficients(tmp_path):
    # frame 1 is a pinhole among OpenCV frames: zero OpenCV coefficients are exactly a pinhole
    _write_ngp(tmp_path, OPENCV, per_frame={1: {"camera_model": "PINHOLE"}})
    d = load_dataset(tmp_path, test_every=2, distortion="keep")
    cams = d.train.cameras  # frames 1 and 3
    assert cams.model == "opencv"
    torch.testing.assert_close(cams.distortion, torch.tensor([[0.0] * 5, [-0.12, 0.03, 0.004, -0.002, 0.0]]),
                               atol=0, rtol=0)


@pytest.mark.parametrize("other", [{"camera_model": "PINHOLE"}, {"camera_model": "OPENCV", "k1": 0.1, "k4": 0.0}])
def test_keep_fisheye_mixed_raises(tmp_path, other):
    _write_ngp(tmp_path, FISHEYE, per_frame={1: other})
    with pytest.raises(ValueError, match=r"one lens model per split.*fisheye.*frame 1.*distortion='undistort'"):
        load_dataset(tmp_path, test_every=2, distortion="keep")
    load_dataset(tmp_path, test_every=2)  # undistorting mixes fine


def test_keep_without_distortion_stays_pinhole(tmp_path):
    _write_ngp(tmp_path, {"camera_model": "PINHOLE"})
    d = load_dataset(tmp_path, test_every=2, distortion="keep")
    assert d.train.cameras.model == "pinhole" and d.train.cameras.distortion is None


def test_camera_model_mapping():
    assert Distortion("OPENCV").camera_model() == ("pinhole", ())
    assert Distortion("OPENCV", k1=1, k2=2, k3=3, p1=4, p2=5).camera_model() == ("opencv", (1, 2, 4, 5, 3))
    assert Distortion("OPENCV_FISHEYE", k1=1, k2=2, k3=3, k4=4).camera_model() == ("fisheye", (1, 2, 3, 4))
    assert Distortion("OPENCV_FISHEYE").camera_model() == ("fisheye", (0, 0, 0, 0))  # equidistant, not pinhole


@pytest.mark.parametrize("bad", ["none", "Keep", None, 1])
def test_bad_distortion_value(tmp_path, bad):
    _write_ngp(tmp_path, OPENCV, n=2)
    with pytest.raises(ValueError, match=r"distortion must be 'undistort' or 'keep', got"):
        load_dataset(tmp_path, distortion=bad)
