"""The embedded sample scene: its ray tracer, its Blender-format output, and the committed copy in data/sample."""

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from recon.cameras import Cameras, intrinsics_matrix, opengl_c2w_to_world_to_cam
from recon.data.sample import (
    CAMERA_ANGLE_X,
    SAMPLE_SCENE_DIR,
    Box,
    Cylinder,
    Sphere,
    _frame_rng,
    _transforms,
    ensure_sample_scene,
    make_sample_scene,
    render_view,
    sample_cameras,
)


def _tiny(out):
    return make_sample_scene(out, width=24, height=24, n_train=3, n_test=2, seed=7)


def _files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_scene_is_deterministic_and_blender_format(tmp_path):
    a, b = _tiny(tmp_path / "a"), _tiny(tmp_path / "b")
    files_a = _files(a)
    assert files_a == _files(b)
    assert {"transforms_train.json", "transforms_test.json", "meta.json", "README.md"} <= set(files_a)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp folders left behind
    alphas = []
    for split, n in (("train", 3), ("test", 2)):
        meta = json.loads(files_a[f"transforms_{split}.json"])
        assert meta["camera_angle_x"] == pytest.approx(CAMERA_ANGLE_X)
        assert [f["file_path"] for f in meta["frames"]] == [f"./{split}/r_{i}" for i in range(n)]
        for frame in meta["frames"]:
            c2w = np.array(frame["transform_matrix"])
            assert c2w.shape == (4, 4)
            np.testing.assert_allclose(c2w[:3, :3] @ c2w[:3, :3].T, np.eye(3), atol=1e-8)
            assert np.linalg.norm(c2w[:3, 3]) == pytest.approx(4.0, abs=1e-8)
            # OpenGL: the camera looks along -z, i.e. at the origin.
            np.testing.assert_allclose(-c2w[:3, 2], -c2w[:3, 3] / 4.0, atol=1e-8)
            img = Image.open(a / (frame["file_path"] + ".png"))
            assert img.mode == "RGBA" and img.size == (24, 24)
            alphas.append(np.asarray(img)[..., 3] / 255.0)
    alpha = np.stack(alphas)
    assert alpha.min() == 0.0 and alpha.max() == 1.0
    assert ((alpha > 0) & (alpha < 1)).any()  # antialiased edges
    train = json.loads(files_a["transforms_train.json"])["frames"]
    test = json.loads(files_a["transforms_test.json"])["frames"]
    assert all(t["transform_matrix"] != f["transform_matrix"] for t in test for f in train)


def test_replaces_existing_dataset(tmp_path):
    out = tmp_path / "scene"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    _tiny(out)
    assert not (out / "stale.txt").exists() and (out / "train" / "r_0.png").is_file()


def test_bad_arguments_raise(tmp_path):
    with pytest.raises(ValueError, match="n_test must be a positive integer"):
        make_sample_scene(tmp_path / "x", n_test=0)
    with pytest.raises(ValueError, match="split must be"):
        sample_cameras(2, 0, "val")
    with pytest.raises(ValueError, match=r"c2w_opengl must have shape \[4, 4\] or \[3, 4\], got \(3, 3\)"):
        render_view(np.eye(3), 8, 8)


def test_ensure_sample_scene_regenerates_when_missing(tmp_path, monkeypatch):
    import recon.data.sample as sample

    target = tmp_path / "data" / "sample"
    monkeypatch.setattr(sample, "SAMPLE_SCENE_DIR", target)
    monkeypatch.setattr(sample, "make_sample_scene", lambda out: _tiny(out))
    assert ensure_sample_scene() == target and (target / "meta.json").is_file()
    (target / "train" / "r_0.png").unlink()  # present metadata: returned as is, not regenerated
    assert ensure_sample_scene() == target and not (target / "train" / "r_0.png").exists()


def _c2w_on_plus_x(distance):
    # OpenGL camera at (d, 0, 0) looking at the origin, world +Z up: x_cam = +y, y_cam = +z, z_cam (back) = +x.
    return np.array([[0.0, 0.0, 1.0, distance], [1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])


def test_sphere_depth_at_center_pixel():
    # Odd size: pixel (12, 12) has its centre at (12.5, 12.5) = (W/2, H/2), the optical axis.
    rgba, depth = render_view(_c2w_on_plus_x(4.0), 25, 25, 0.5, primitives=[Sphere(radius=0.7)], spp=1)
    assert rgba[12, 12, 3] == 1.0 and rgba[0, 0, 3] == 0.0
    assert depth[12, 12] == pytest.approx(4.0 - 0.7, abs=1e-12)
    assert np.isinf(depth[0, 0])


def test_box_and_cylinder_depth_at_center_pixel():
    c2w = _c2w_on_plus_x(3.0)
    _, depth = render_view(c2w, 25, 25, 0.5, primitives=[Box(half_size=(0.2, 0.5, 0.5))], spp=1)
    assert depth[12, 12] == pytest.approx(3.0 - 0.2, abs=1e-12)
    _, depth = render_view(c2w, 25, 25, 0.5, primitives=[Cylinder(radius=0.25, half_height=1.0)], spp=1)
    assert depth[12, 12] == pytest.approx(3.0 - 0.25, abs=1e-12)
    # The cylinder seen from above along its axis hits the cap.
    top = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 3.0], [0.0, 0.0, 0.0, 1.0]])
    _, depth = render_view(top, 25, 25, 0.5, primitives=[Cylinder(radius=0.25, half_height=1.0)], spp=1)
    assert depth[12, 12] == pytest.approx(2.0, abs=1e-12)


def test_tracer_agrees_with_recon_cameras():
    # Depth of an off-centre sphere per pixel, analytically along recon.cameras' rays: pins the pixel-centre,
    # focal-length and OpenGL->OpenCV conventions of the tracer to recon's.
    W, H, center, radius = 20, 16, np.array([0.3, -0.2, 0.25]), 0.5
    c2w = sample_cameras(1, 3, "test")[0]
    _, depth = render_view(c2w, W, H, CAMERA_ANGLE_X, primitives=[Sphere(center=tuple(center), radius=radius)], spp=1)
    f = 0.5 * W / math.tan(0.5 * CAMERA_ANGLE_X)
    cams = Cameras(opengl_c2w_to_world_to_cam(torch.tensor(c2w))[None], intrinsics_matrix(f, f, W / 2, H / 2)[None],
                   W, H)
    o, d = (x[0].numpy() for x in cams.rays())
    oc = o - center
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - radius**2)
    t = -b - np.sqrt(np.maximum(disc, 0))
    forward = cams.cam_to_world()[0, :3, 2].numpy()
    expected = np.where(disc >= 0, t * (d @ forward), np.inf).reshape(H, W)
    assert np.isfinite(expected).sum() > 20 and np.isinf(expected).sum() > 20
    hit = np.isfinite(expected) & np.isfinite(depth)
    assert (np.isfinite(expected) == np.isfinite(depth)).mean() > 0.98  # exact-tangent pixels may flip
    np.testing.assert_allclose(depth[hit], expected[hit], rtol=1e-9)


@pytest.mark.skipif(not (SAMPLE_SCENE_DIR / "meta.json").is_file(), reason="data/sample not generated")
def test_committed_sample_matches_generator():
    meta = json.loads((SAMPLE_SCENE_DIR / "meta.json").read_text())
    assert (meta["width"], meta["height"], meta["n_train"], meta["n_test"], meta["seed"]) == (128, 128, 48, 8, 0)
    for split, n in (("train", 48), ("test", 8)):
        stored = json.loads((SAMPLE_SCENE_DIR / f"transforms_{split}.json").read_text())
        assert stored == _transforms(sample_cameras(n, 0, split), split)
        assert len(list((SAMPLE_SCENE_DIR / split).glob("r_*.png"))) == n
    # Re-render two views exactly as the generator does (same jitter streams) and compare pixel values; bytes
    # could differ across zlib/numpy builds, values within one 8-bit step must not.
    for split, i in (("train", 5), ("test", 1)):
        c2w = sample_cameras(48 if split == "train" else 8, 0, split)[i]
        rgba, _ = render_view(c2w, 128, 128, CAMERA_ANGLE_X, rng=_frame_rng(0, split, i))
        ours = np.round(rgba * 255.0)
        stored = np.asarray(Image.open(SAMPLE_SCENE_DIR / split / f"r_{i}.png")).astype(np.float64)
        assert np.abs(ours - stored).max() <= 1.0
