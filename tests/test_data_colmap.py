"""COLMAP reader/writer (.bin and .txt) and loader on a small synthetic model written by the writer."""

import numpy as np
import pytest
import torch

from recon.cameras import quat_wxyz_to_rotmat
from recon.data.colmap import (ColmapCamera, ColmapImage, ColmapModel, ColmapPoints, SUPPORTED_MODELS,
                               camera_intrinsics, read_colmap_model, write_colmap_model)
from recon.data.io import read_image, write_png
from recon.data.load import detect_format, load_dataset
from recon.data.undistort import Distortion, distort_points, undistort_points

W, H = 40, 30


def _rotmat_to_quat(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a rotation matrix (Shepperd's method)."""
    t = np.trace(R)
    if t > 0:
        s = 2 * np.sqrt(1 + t)
        q = [s / 4, (R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2 * np.sqrt(1 + R[i, i] - R[j, j] - R[k, k])
        q = np.zeros(4)
        q[0], q[1 + i] = (R[k, j] - R[j, k]) / s, s / 4
        q[1 + j], q[1 + k] = (R[j, i] + R[i, j]) / s, (R[k, i] + R[i, k]) / s
    return np.asarray(q, np.float64)


def _look_at(center: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera [4, 4] of a camera at ``center`` looking at the origin, world +z up."""
    f = -center / np.linalg.norm(center)
    right = np.cross(f, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(f, right)
    w2c = np.eye(4)
    w2c[:3, :3] = np.stack([right, down, f])
    w2c[:3, 3] = -w2c[:3, :3] @ center
    return w2c


def _params(model: str) -> tuple[float, ...]:
    return {
        "SIMPLE_PINHOLE": (35.0, 20.3, 14.8),
        "PINHOLE": (35.0, 33.0, 20.3, 14.8),
        "SIMPLE_RADIAL": (35.0, 20.3, 14.8, -0.05),
        "RADIAL": (35.0, 20.3, 14.8, -0.05, 0.01),
        "OPENCV": (35.0, 33.0, 20.3, 14.8, -0.05, 0.01, 0.001, -0.002),
        "OPENCV_FISHEYE": (35.0, 33.0, 20.3, 14.8, 0.02, -0.01, 0.003, -0.001),
        "FOV": (35.0, 33.0, 20.3, 14.8, 0.9),
    }[model]


def _project(cam: ColmapCamera, w2c: np.ndarray, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ground-truth COLMAP projection (with the model's distortion) of world points ``X [N, 3]``."""
    if cam.model in SUPPORTED_MODELS:
        K, dist = camera_intrinsics(cam, "test")
    else:  # e.g. FOV, only used to check that loading it fails: observations do not matter
        K, dist = torch.tensor([[cam.params[0], 0, cam.params[2]], [0, cam.params[1], cam.params[3]], [0, 0, 1]]), None
    p = X @ w2c[:3, :3].T + w2c[:3, 3]
    xy = torch.from_numpy(p[:, :2] / p[:, 2:])
    if dist is not None:
        xy = distort_points(xy, dist)
    K = K.numpy()
    uv = xy.numpy() * K[[0, 1], [0, 1]] + K[:2, 2]
    return uv, p[:, 2]


def _make_model(root, models=("PINHOLE", "PINHOLE"), n_images=6, n_points=25, seed=0) -> tuple[ColmapModel, dict]:
    """Six cameras on a ring looking at random points; camera ``i`` uses ``models[i % len(models)]`` (the second
    PINHOLE camera gets another focal length). Names sort in the reverse order of the image ids. The last image
    observes nothing (an empty POINTS2D line in images.txt). Writes the images into ``root/images``."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-0.8, 0.8, size=(n_points, 3))
    cams = {}
    for c, model in enumerate(models):
        params = list(_params(model))
        params[0] += 5.0 * c
        cams[c + 1] = ColmapCamera(c + 1, model, W, H, tuple(params))
    images, tracks, truth = {}, [[] for _ in range(n_points)], {}
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        ang = 2 * np.pi * i / n_images
        w2c = _look_at(np.array([4 * np.cos(ang), 4 * np.sin(ang), 1.0 + 0.2 * i]))
        cam = cams[1 + i % len(models)]
        name = f"view_{n_images - i:02d}.png"
        uv, z = _project(cam, w2c, X)
        vis = (z > 0) & (uv[:, 0] > 0) & (uv[:, 0] < W) & (uv[:, 1] > 0) & (uv[:, 1] < H)
        ids = np.nonzero(vis)[0] if i < n_images - 1 else np.zeros(0, np.int64)
        for k, pid in enumerate(ids):
            tracks[pid].append((i + 1, k))
        images[i + 1] = ColmapImage(i + 1, _rotmat_to_quat(w2c[:3, :3]), w2c[:3, 3].copy(), cam.id, name,
                                    uv[ids], ids.astype(np.int64) + 100)
        write_png(root / "images" / name, rng.random((H, W, 3)))
        truth[name.removesuffix(".png")] = w2c
    points = ColmapPoints(np.arange(n_points, dtype=np.int64) + 100, X, rng.integers(0, 256, (n_points, 3), np.uint8),
                          rng.random(n_points), [np.array(t, np.int32).reshape(-1, 2) for t in tracks])
    return ColmapModel(cams, images, points), truth


def test_quaternion_helper_matches_recon():
    w2c = _look_at(np.array([1.0, -3.0, 2.0]))
    q = _rotmat_to_quat(w2c[:3, :3])
    torch.testing.assert_close(quat_wxyz_to_rotmat(torch.from_numpy(q)), torch.from_numpy(w2c[:3, :3]))


@pytest.fixture()
def both(tmp_path):
    """The same model written as .bin (sparse/0) and .txt (sparse/, the fallback location)."""
    model, truth = _make_model(tmp_path / "bin")
    write_colmap_model(tmp_path / "bin" / "sparse" / "0", model, binary=True)
    _make_model(tmp_path / "txt")
    write_colmap_model(tmp_path / "txt" / "sparse", model, binary=False)
    return tmp_path / "bin", tmp_path / "txt", model, truth


def test_reader_roundtrip_bin_txt(both):
    root_bin, root_txt, model, _ = both
    for sparse in (root_bin / "sparse" / "0", root_txt / "sparse"):
        got = read_colmap_model(sparse)
        assert got.cameras == model.cameras
        assert got.images.keys() == model.images.keys()
        for k, im in model.images.items():
            g = got.images[k]
            assert (g.name, g.camera_id) == (im.name, im.camera_id)
            np.testing.assert_array_equal(g.qvec, im.qvec)
            np.testing.assert_array_equal(g.tvec, im.tvec)
            np.testing.assert_array_equal(g.xys, im.xys.reshape(-1, 2))
            np.testing.assert_array_equal(g.point3D_ids, im.point3D_ids)
        assert len(got.images[6].xys) == 0  # the empty POINTS2D line
        for field in ("ids", "xyz", "rgb", "errors"):
            np.testing.assert_array_equal(getattr(got.points, field), getattr(model.points, field))
        for a, b in zip(got.points.tracks, model.points.tracks):
            np.testing.assert_array_equal(a, b)


def test_load_bin_and_txt_identical(both):
    root_bin, root_txt, model, truth = both
    assert detect_format(root_bin) == "colmap" and detect_format(root_txt) == "colmap"
    a, b = load_dataset(root_bin, test_every=3), load_dataset(root_txt, test_every=3)
    assert a.format == "colmap"
    # names sorted: view_01 .. view_06; test = indices 0 and 3
    assert a.test.names == ["view_01", "view_04"] and a.train.names == ["view_02", "view_03", "view_05", "view_06"]
    for sa, sb in ((a.train, b.train), (a.test, b.test)):
        assert sa.names == sb.names
        torch.testing.assert_close(sa.cameras.world_to_cam, sb.cameras.world_to_cam, atol=0, rtol=0)
        torch.testing.assert_close(sa.cameras.K, sb.cameras.K, atol=0, rtol=0)
        torch.testing.assert_close(sa.images, sb.images, atol=0, rtol=0)
        for j, name in enumerate(sa.names):
            torch.testing.assert_close(sa.cameras.world_to_cam[j], torch.from_numpy(truth[name]).float(),
                                       atol=1e-6, rtol=0)
    torch.testing.assert_close(a.points, b.points)
    torch.testing.assert_close(a.points, torch.from_numpy(model.points.xyz).float())
    torch.testing.assert_close(a.point_colors, torch.from_numpy(model.points.rgb / 255.0).float())
    # two PINHOLE cameras alternate: view_06 is image 1 (camera 1), view_05 is image 2 (camera 2, fx + 5)
    K = {n: k for n, k in zip(a.train.names, a.train.cameras.K)}
    torch.testing.assert_close(K["view_06"], torch.tensor([[35.0, 0, 20.3], [0, 33.0, 14.8], [0, 0, 1]]))
    assert float(K["view_05"][0, 0]) == 40.0


def test_projection_matches_observations(both):
    root_bin, _, model, _ = both
    d = load_dataset(root_bin, test_every=3)
    by_name = {im.name.removesuffix(".png"): im for im in model.images.values()}
    pid_to_row = {int(p): r for r, p in enumerate(model.points.ids)}
    checked = 0
    for split in (d.train, d.test):
        for j, name in enumerate(split.names):
            im = by_name[name]
            if len(im.xys) == 0:
                continue
            rows = torch.tensor([pid_to_row[int(p)] for p in im.point3D_ids])
            uv, z = split.cameras[j].project(d.points[rows])
            assert torch.all(z > 0)
            torch.testing.assert_close(uv[0], torch.from_numpy(im.xys).float(), atol=2e-3, rtol=0)
            checked += len(rows)
    assert checked > 40


@pytest.mark.parametrize("model_name", SUPPORTED_MODELS)
def test_camera_models(tmp_path, model_name):
    model, _ = _make_model(tmp_path, models=(model_name,))
    write_colmap_model(tmp_path / "sparse" / "0", model, binary=True)
    d = load_dataset(tmp_path, test_every=3)
    p = _params(model_name)
    simple = model_name in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL")  # one focal length, then cx, cy
    fx, fy, cx, cy = (p[0], p[0], p[1], p[2]) if simple else p[:4]
    K = torch.tensor([[fx, 0, cx], [0, fy, cy], [0, 0, 1.0]])
    torch.testing.assert_close(d.train.cameras.K, K.expand(len(d.train), 3, 3))
    _, dist = camera_intrinsics(model.cameras[1], "test")
    expected = {"SIMPLE_PINHOLE": lambda: None, "PINHOLE": lambda: None,
                "SIMPLE_RADIAL": lambda: Distortion("OPENCV", k1=p[3]),
                "RADIAL": lambda: Distortion("OPENCV", k1=p[3], k2=p[4]),
                "OPENCV": lambda: Distortion("OPENCV", k1=p[4], k2=p[5], p1=p[6], p2=p[7]),
                "OPENCV_FISHEYE": lambda: Distortion("OPENCV_FISHEYE", k1=p[4], k2=p[5], k3=p[6], k4=p[7]),
                }[model_name]()
    assert dist == expected
    # the loaded (undistorted, pinhole) camera projects each point where the undistorted observation lies
    im = model.images[2]  # view_05, in train
    j = d.train.names.index("view_05")
    uv, _ = d.train.cameras[j].project(d.points[torch.from_numpy(im.point3D_ids - 100)])
    xy_d = (torch.from_numpy(im.xys) - torch.tensor([cx, cy], dtype=torch.float64)) / torch.tensor([fx, fy])
    xy = undistort_points(xy_d, dist) if dist is not None else xy_d
    obs_pinhole = xy * torch.tensor([fx, fy]) + torch.tensor([cx, cy])
    torch.testing.assert_close(uv[0], obs_pinhole.float(), atol=2e-3, rtol=0)
    if dist is None:  # pinhole images pass through untouched
        assert torch.all(d.train.images[..., 3] == 1)


@pytest.mark.parametrize("binary", [True, False])
def test_unsupported_model(tmp_path, binary):
    model, _ = _make_model(tmp_path, models=("FOV",))
    write_colmap_model(tmp_path / "sparse" / "0", model, binary=binary)
    name = "cameras.bin" if binary else "cameras.txt"
    with pytest.raises(ValueError, match=rf"{name}: camera 1 uses camera model 'FOV'.*supported models: "
                                         r"SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV"):
        load_dataset(tmp_path)


@pytest.mark.parametrize("stem,cut", [("cameras", 5), ("cameras", 40), ("images", 20), ("points3D", 3)])
def test_truncated_bin(tmp_path, stem, cut):
    model, _ = _make_model(tmp_path)
    write_colmap_model(tmp_path / "sparse" / "0", model, binary=True)
    path = tmp_path / "sparse" / "0" / f"{stem}.bin"
    path.write_bytes(path.read_bytes()[:-cut])
    with pytest.raises(ValueError, match=rf"{stem}\.bin: truncated or corrupt"):
        load_dataset(tmp_path)


def test_corrupt_count(tmp_path):
    model, _ = _make_model(tmp_path)
    write_colmap_model(tmp_path / "sparse" / "0", model, binary=True)
    path = tmp_path / "sparse" / "0" / "images.bin"
    path.write_bytes((10**12).to_bytes(8, "little") + path.read_bytes()[8:])
    with pytest.raises(ValueError, match=r"images\.bin: truncated or corrupt file: number of images"):
        load_dataset(tmp_path)


def test_malformed_txt(tmp_path):
    model, _ = _make_model(tmp_path)
    write_colmap_model(tmp_path / "sparse" / "0", model, binary=False)
    path = tmp_path / "sparse" / "0" / "cameras.txt"
    path.write_text(path.read_text().replace("PINHOLE 40", "PINHOLE forty", 1))
    with pytest.raises(ValueError, match=r"cameras\.txt:3: cannot parse camera id / width / height"):
        load_dataset(tmp_path)
    write_colmap_model(tmp_path / "sparse" / "0", model, binary=False)
    path.write_text(path.read_text().replace("PINHOLE 40 30 35.0", "PINHOLE 40 30", 1))
    with pytest.raises(ValueError, match=r"cameras\.txt:3: camera model PINHOLE takes 4 params, got 3"):
        load_dataset(tmp_path)


def test_missing_image_and_downscale(tmp_path):
    model, _ = _make_model(tmp_path)
    write_colmap_model(tmp_path / "sparse" / "0", model, binary=True)
    (tmp_path / "images" / "view_03.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"images/view_03\.png.*skip-missing-images"):
        load_dataset(tmp_path)
    with pytest.warns(UserWarning, match="dropping 1 of 6"):
        d = load_dataset(tmp_path, skip_missing_images=True, downscale=2, test_every=4)
    assert d.test.names == ["view_01", "view_06"]  # indices 0 and 4 of view_01, 02, 04, 05, 06
    assert d.train.images.shape == (3, 15, 20, 4)
    # view_06 is image 1 (camera 1: fx 35, fy 33, cx 20.3, cy 14.8), halved
    torch.testing.assert_close(d.test.cameras.K[1], torch.tensor([[17.5, 0, 10.15], [0, 16.5, 7.4], [0, 0, 1]]))


@pytest.mark.parametrize("models", [("SIMPLE_RADIAL",), ("RADIAL",), ("OPENCV",), ("OPENCV_FISHEYE",),
                                    ("PINHOLE", "OPENCV")])
def test_keep_distortion_projects_onto_raw_observations(tmp_path, models):
    """With distortion="keep" the cameras carry COLMAP's lens, so projecting the sparse points lands on the raw
    (distorted) observations, and the images are the stored files."""
    model, _ = _make_model(tmp_path, models=models)
    write_colmap_model(tmp_path / "sparse" / "0", model, binary=True)
    d = load_dataset(tmp_path, test_every=3, distortion="keep")
    expected_model = "fisheye" if models == ("OPENCV_FISHEYE",) else "opencv"  # PINHOLE frames: zero coefficients
    by_name = {im.name.removesuffix(".png"): im for im in model.images.values()}
    checked = 0
    for split in (d.train, d.test):
        assert split.cameras.model == expected_model
        for j, name in enumerate(split.names):
            stored = torch.from_numpy(read_image(tmp_path / "images" / f"{name}.png"))
            assert torch.equal(split.images[j, ..., :3], stored)
            assert torch.all(split.images[j, ..., 3] == 1)
            im = by_name[name]
            if model.cameras[im.camera_id].model == "PINHOLE":
                assert torch.all(split.cameras.distortion[j] == 0)
            if len(im.xys) == 0:
                continue
            uv, _ = split.cameras[j].project(d.points[torch.from_numpy(im.point3D_ids - 100)])
            torch.testing.assert_close(uv[0], torch.from_numpy(im.xys).float(), atol=2e-3, rtol=0)
            checked += len(im.xys)
    assert checked > 40
