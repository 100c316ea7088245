"""Malformed inputs fail at once, naming the file and field (transforms.json datasets, format detection, options)."""

import json
import math

import numpy as np
import pytest

from recon.data.io import write_png
from recon.data.load import load_dataset


def _ngp(root, n=3, size=(10, 8), write_images=True, **top):
    """A tiny transforms.json dataset: ``n`` PNGs of ``size`` (w, h); returns the metadata dict it wrote."""
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        if write_images:
            write_png(root / "images" / f"{i:04d}.png", rng.random((size[1], size[0], 3)))
        c2w = np.eye(4)
        c2w[2, 3] = 3.0
        frames.append({"file_path": f"images/{i:04d}.png", "transform_matrix": c2w.tolist()})
    meta = {"fl_x": 12.0, "fl_y": 12.0, "cx": 5.0, "cy": 4.0, "w": size[0], "h": size[1], **top, "frames": frames}
    _dump(root, meta)
    return meta


def _dump(root, meta):
    (root / "transforms.json").write_text(json.dumps(meta))


def test_tiny_ngp_loads(tmp_path):
    _ngp(tmp_path)
    d = load_dataset(tmp_path, test_every=2)
    assert len(d.train) == 1 and len(d.test) == 2


def test_missing_image(tmp_path):
    _ngp(tmp_path)
    (tmp_path / "images" / "0001.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"1 of 3 images .*images/0001\.png.*skip-missing-images"):
        load_dataset(tmp_path)
    with pytest.warns(UserWarning, match=r"dropping 1 of 3 frames.*images/0001\.png"):
        d = load_dataset(tmp_path, skip_missing_images=True, test_every=2)
    assert d.test.names == ["0000"] and d.train.names == ["0002"]


def test_missing_transform_matrix(tmp_path):
    meta = _ngp(tmp_path)
    del meta["frames"][1]["transform_matrix"]
    _dump(tmp_path, meta)
    with pytest.raises(ValueError, match=r"transforms\.json: frame 1 \(images/0001\.png\) has no 'transform_matrix'"):
        load_dataset(tmp_path)


def test_missing_focal(tmp_path):
    meta = _ngp(tmp_path)
    del meta["fl_x"], meta["fl_y"]
    _dump(tmp_path, meta)
    with pytest.raises(ValueError, match=r"transforms\.json: no focal length .*'fl_x'.*'camera_angle_x'"):
        load_dataset(tmp_path)
    meta["camera_angle_x"] = 2 * math.atan(0.5 * 10 / 12.0)  # -> fl_x = 12, fl_y = fl_x
    _dump(tmp_path, meta)
    d = load_dataset(tmp_path)
    assert abs(float(d.train.cameras.K[0, 0, 0]) - 12.0) < 1e-4
    assert abs(float(d.train.cameras.K[0, 1, 1]) - 12.0) < 1e-4


def test_malformed_json(tmp_path):
    _ngp(tmp_path)
    (tmp_path / "transforms.json").write_text('{"fl_x": 12, "frames": [')
    with pytest.raises(ValueError, match=r"transforms\.json: malformed JSON"):
        load_dataset(tmp_path)
    (tmp_path / "transforms.json").write_text('[1, 2]')
    with pytest.raises(ValueError, match=r"transforms\.json: expected a JSON object with a 'frames' list"):
        load_dataset(tmp_path)


def test_nan_and_bad_shape_matrix(tmp_path):
    meta = _ngp(tmp_path)
    meta["frames"][2]["transform_matrix"][0][3] = float("nan")
    _dump(tmp_path, meta)
    with pytest.raises(ValueError, match=r"frame 2 \(images/0002\.png\) field 'transform_matrix' contains NaN"):
        load_dataset(tmp_path)
    meta["frames"][2]["transform_matrix"] = [[1, 0, 0], [0, 1, 0]]
    _dump(tmp_path, meta)
    with pytest.raises(ValueError, match=r"frame 2 .*'transform_matrix' must be a 4x4"):
        load_dataset(tmp_path)


def test_bad_number_field(tmp_path):
    _ngp(tmp_path, cx="middle")
    with pytest.raises(ValueError, match=r"transforms\.json: frame 0 .*field 'cx' must be a number"):
        load_dataset(tmp_path)


def test_image_size_mismatch(tmp_path):
    _ngp(tmp_path, w=11)
    with pytest.raises(ValueError, match=r"image images/000(\d)\.png is 10x8 but transforms\.json frame \1 .* 11x8"):
        load_dataset(tmp_path)


def test_undecodable_image(tmp_path):
    _ngp(tmp_path)
    (tmp_path / "images" / "0002.png").write_bytes(b"definitely not a png")
    with pytest.raises(ValueError, match=r"cannot decode image .*0002\.png"):
        load_dataset(tmp_path)


def test_unsupported_camera_model(tmp_path):
    _ngp(tmp_path, camera_model="EQUIRECTANGULAR")
    with pytest.raises(ValueError, match=r"unsupported camera_model 'EQUIRECTANGULAR'.*OPENCV_FISHEYE"):
        load_dataset(tmp_path)


def test_fisheye_camera_model_loads(tmp_path):
    _ngp(tmp_path, camera_model="OPENCV_FISHEYE", k1=0.01, k2=-0.001)
    d = load_dataset(tmp_path)
    assert d.train.images.shape == (2, 8, 10, 4)


def test_options_validated(tmp_path):
    _ngp(tmp_path)
    with pytest.raises(ValueError, match="downscale must be an integer >= 1, got 0"):
        load_dataset(tmp_path, downscale=0)
    with pytest.raises(ValueError, match="downscale"):
        load_dataset(tmp_path, downscale=1.5)
    with pytest.raises(ValueError, match="background"):
        load_dataset(tmp_path, background="grey")
    with pytest.raises(ValueError, match="unknown dataset format 'nerf'"):
        load_dataset(tmp_path, format="nerf")


def test_detect_format_failure(tmp_path):
    with pytest.raises(ValueError, match=r"cannot detect the dataset format .*transforms_train\.json.*sparse/0"):
        load_dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        load_dataset(tmp_path / "nope")


def test_format_override(tmp_path):
    _ngp(tmp_path)
    with pytest.raises(FileNotFoundError, match="no transforms_train.json"):
        load_dataset(tmp_path, format="blender")
    with pytest.raises(FileNotFoundError, match="no COLMAP model"):
        load_dataset(tmp_path, format="colmap")
    assert load_dataset(tmp_path, format="ngp").format == "ngp"


def _blender(root, n=2, size=(6, 4), **top):
    """A tiny Blender dataset (``transforms_train.json`` + RGBA PNGs); ``top`` overrides the top-level keys."""
    rng = np.random.default_rng(0)
    (root / "train").mkdir(parents=True, exist_ok=True)
    frames = []
    for i in range(n):
        write_png(root / "train" / f"r_{i}.png", rng.random((size[1], size[0], 4)))
        c2w = np.eye(4)
        c2w[2, 3] = 4.0
        frames.append({"file_path": f"./train/r_{i}", "transform_matrix": c2w.tolist()})
    (root / "transforms_train.json").write_text(json.dumps({"camera_angle_x": 0.5, **top, "frames": frames}))


@pytest.mark.parametrize("angle", [0.0, -0.5, math.pi, 4.0, float("nan"), float("inf"), "wide", None, True])
def test_blender_camera_angle_out_of_range(tmp_path, angle):
    _blender(tmp_path, camera_angle_x=angle)
    with pytest.raises(ValueError, match=r"transforms_train\.json: top level field 'camera_angle_x' must be a finite "
                                         r"number in \(0, pi\) radians, got "):
        load_dataset(tmp_path, test_every=2)


def test_blender_camera_angle_edges_load(tmp_path):
    for angle in (1e-3, math.pi - 1e-3):
        _blender(tmp_path, camera_angle_x=angle)
        d = load_dataset(tmp_path, test_every=2)
        f = 0.5 * 6 / math.tan(0.5 * angle)
        assert float(d.train.cameras.K[0, 0, 0]) == pytest.approx(f, rel=1e-6) and f > 0


def test_blender_frame_camera_angle_names_the_frame(tmp_path):
    _blender(tmp_path)
    meta = json.loads((tmp_path / "transforms_train.json").read_text())
    meta["frames"][1]["camera_angle_x"] = -0.6911
    (tmp_path / "transforms_train.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=r"transforms_train\.json: frame 1 \(\./train/r_1\) field 'camera_angle_x' "
                                         r"must be a finite number in \(0, pi\) radians, got -0\.6911"):
        load_dataset(tmp_path)


@pytest.mark.parametrize(("key", "value"), [("fl_x", 0.0), ("fl_x", -12.0), ("fl_y", -1.0), ("fl_x", float("nan")),
                                            ("fl_y", float("inf")), ("fl_x", "long"), ("fl_y", [12.0])])
def test_ngp_bad_focal_length(tmp_path, key, value):
    _ngp(tmp_path, **{key: value})
    with pytest.raises(ValueError, match=rf"transforms\.json: top level field '{key}' must be a finite number > 0 "
                                         r"\(pixels\), got "):
        load_dataset(tmp_path)


@pytest.mark.parametrize(("key", "value"), [("camera_angle_x", 0.0), ("camera_angle_x", -0.7),
                                            ("camera_angle_y", math.pi), ("camera_angle_y", float("nan"))])
def test_ngp_bad_camera_angle(tmp_path, key, value):
    meta = _ngp(tmp_path)
    del meta["fl_x"], meta["fl_y"]
    meta["camera_angle_x"] = 0.8
    meta[key] = value
    _dump(tmp_path, meta)
    with pytest.raises(ValueError, match=rf"transforms\.json: top level field '{key}' must be a finite number in "
                                         r"\(0, pi\) radians"):
        load_dataset(tmp_path)


def test_ngp_frame_focal_names_the_frame(tmp_path):
    meta = _ngp(tmp_path)
    meta["frames"][2]["fl_x"] = -12.0  # a per-frame override
    _dump(tmp_path, meta)
    with pytest.raises(ValueError, match=r"transforms\.json: frame 2 \(images/0002\.png\) field 'fl_x' must be a "
                                         r"finite number > 0 \(pixels\), got -12\.0"):
        load_dataset(tmp_path)
