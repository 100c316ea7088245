"""Blender-format loader against the shared synthetic dataset and tiny generated folders."""

import json
import math

import numpy as np
import pytest
import torch

from recon.data.io import read_image, write_png
from recon.data.load import detect_format, load_dataset


@pytest.fixture(scope="module")
def bob(test_data):
    return load_dataset(test_data / "synthetic" / "bob_field")


def test_bob_field_splits_and_intrinsics(bob, test_data):
    root = test_data / "synthetic" / "bob_field"
    meta = json.loads((root / "transforms_train.json").read_text())
    assert bob.format == "blender" and detect_format(root) == "blender"
    assert len(bob.train) == 100 and len(bob.test) == 20
    assert bob.train.images.shape == (100, 256, 256, 4) and bob.train.images.dtype == torch.float32
    assert bob.test.images.shape == (20, 256, 256, 4)
    assert bob.train.names[:3] == ["r_0", "r_1", "r_2"]  # file order kept
    cams = bob.train.cameras
    assert (cams.width, cams.height) == (256, 256) and cams.K.dtype == torch.float32
    f = 0.5 * 256 / math.tan(0.5 * meta["camera_angle_x"])
    expected_K = torch.tensor([[f, 0, 128.0], [0, f, 128.0], [0, 0, 1]])
    torch.testing.assert_close(cams.K, expected_K.expand(100, 3, 3), atol=1e-4, rtol=0)
    assert bob.points is None and bob.background == (1.0, 1.0, 1.0)


def test_bob_field_pose_convention(bob, test_data):
    meta = json.loads((test_data / "synthetic" / "bob_field" / "transforms_train.json").read_text())
    c2w = torch.tensor(meta["frames"][0]["transform_matrix"])
    cam = bob.train.cameras[0]
    torch.testing.assert_close(cam.centers()[0], c2w[:3, 3], atol=1e-5, rtol=0)
    # cameras on a sphere of radius 4 look at the origin: it projects to the image center at depth 4
    uv, z = bob.train.cameras.project(torch.zeros(1, 3))
    torch.testing.assert_close(uv[:, 0], torch.full((100, 2), 128.0), atol=0.05, rtol=0)
    torch.testing.assert_close(z[:, 0], torch.full((100,), 4.0), atol=1e-3, rtol=0)
    # OpenGL -> OpenCV: image "up" (-y_cv) is the OpenGL camera's +y column of the c2w
    up_cv = -cam.cam_to_world()[0, :3, 1]
    torch.testing.assert_close(up_cv, c2w[:3, 1], atol=1e-5, rtol=0)


def test_bob_field_pixels_and_alpha(bob, test_data):
    raw = read_image(test_data / "synthetic" / "bob_field" / "train" / "r_0.png")
    assert raw.shape == (256, 256, 4)
    np.testing.assert_array_equal(bob.train.images[0].numpy(), raw)  # sRGB as stored, straight alpha
    alpha = bob.train.images[..., 3]
    assert (alpha == 0).any() and (alpha == 1).any() and ((alpha > 0) & (alpha < 1)).any()


def test_bob_field_downscale_and_background(test_data):
    d = load_dataset(test_data / "synthetic" / "bob_field", downscale=4, background="black")
    assert d.train.images.shape == (100, 64, 64, 4)
    assert d.background == (0.0, 0.0, 0.0)
    f = 0.5 * 256 / math.tan(0.5 * 0.6911112070083618) / 4
    torch.testing.assert_close(d.test.cameras.K[0], torch.tensor([[f, 0, 32.0], [0, f, 32.0], [0, 0, 1]]),
                               atol=1e-4, rtol=0)
    # area averaging keeps the mean coverage
    full = read_image(test_data / "synthetic" / "bob_field" / "train" / "r_0.png")
    assert abs(float(d.train.images[0, ..., 3].mean()) - float(full[..., 3].mean())) < 1e-5


def _tiny_blender(root, splits=("train",), n=10, size=(6, 4), **top):
    rng = np.random.default_rng(0)
    for split in splits:
        (root / split).mkdir(parents=True, exist_ok=True)
        frames = []
        for i in range(n):
            write_png(root / split / f"r_{i}.png", rng.random((size[1], size[0], 4)))
            c2w = np.eye(4)
            c2w[:3, 3] = [0.0, 0.0, 4.0 + i]
            frames.append({"file_path": f"./{split}/r_{i}", "transform_matrix": c2w.tolist()})
        meta = {"camera_angle_x": 0.5, **top, "frames": frames}
        (root / f"transforms_{split}.json").write_text(json.dumps(meta))


def test_blender_val_fallback_and_every_nth(tmp_path):
    _tiny_blender(tmp_path / "a", splits=("train", "val"), n=3)
    d = load_dataset(tmp_path / "a")
    assert len(d.train) == 3 and len(d.test) == 3  # transforms_val.json used when there is no test json
    _tiny_blender(tmp_path / "b", splits=("train",), n=10)
    d = load_dataset(tmp_path / "b", test_every=8)
    assert d.test.names == ["r_0", "r_8"]
    assert d.train.names == ["r_1", "r_2", "r_3", "r_4", "r_5", "r_6", "r_7", "r_9"]
    # camera at (0, 0, 4 + i) looking down -z (OpenGL) -> OpenCV w2c translation (0, 0, 4 + i)
    torch.testing.assert_close(d.test.cameras.world_to_cam[1, :3, 3], torch.tensor([0.0, 0.0, 12.0]))


def test_blender_top_level_intrinsics(tmp_path):
    _tiny_blender(tmp_path, n=2, fl_x=7.0, fl_y=8.0, cx=3.2, cy=2.1, w=6, h=4)
    d = load_dataset(tmp_path, test_every=2)
    torch.testing.assert_close(d.train.cameras.K[0], torch.tensor([[7.0, 0, 3.2], [0, 8.0, 2.1], [0, 0, 1]]))
