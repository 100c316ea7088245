"""instant-ngp / nerfstudio ``transforms.json`` loader (and a small PLY point reader for ``ply_file_path``).

Keys (top level, each overridable per frame): ``fl_x``, ``fl_y`` (or ``camera_angle_x`` / ``camera_angle_y``),
``cx``, ``cy`` (default: image center), ``w``, ``h`` (default: the first image's size), ``k1 k2 k3 k4 p1 p2``,
``camera_model`` ("OPENCV" default, "OPENCV_FISHEYE", or the distortion-free "PINHOLE" / "SIMPLE_PINHOLE";
instant-ngp's ``is_fisheye: true`` means OPENCV_FISHEYE). ``transform_matrix`` is an OpenGL camera-to-world.
Focal lengths must be finite and > 0, fields of view in (0, pi) radians (else ``ValueError`` naming the file and
field). ``aabb_scale`` and other keys are ignored. ``cx, cy`` are used as given: instant-ngp / nerfstudio copy them from
COLMAP, whose pixel centers sit at +0.5 like recon's.

Distorted images are undistorted at load to a pinhole camera with the **same K and size**; the returned K is the
file's K (scaled by ``downscale``). Pixels whose distorted source lies outside the photo get alpha 0. With
``distortion="keep"`` the images stay as stored and the cameras carry the lens ("opencv" / "fisheye").
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from recon.cameras import intrinsics_matrix, opengl_c2w_to_world_to_cam
from recon.data.dataset import SceneData
from recon.data.io import Frame, drop_missing, frames_to_split, holdout_every, image_size, resolve_background, \
    resolve_image_path
from recon.data.undistort import Distortion

__all__ = ["load_ngp", "read_transforms", "read_frames", "parse_c2w", "read_ply_points"]

_INTRINSIC_KEYS = ("fl_x", "fl_y", "camera_angle_x", "camera_angle_y", "cx", "cy", "w", "h",
                   "k1", "k2", "k3", "k4", "p1", "p2", "camera_model", "is_fisheye")
_CAMERA_MODELS = ("OPENCV", "OPENCV_FISHEYE", "PINHOLE", "SIMPLE_PINHOLE")


def read_transforms(path: Path) -> dict:
    """Parse a transforms JSON file; malformed JSON or a missing/empty ``frames`` list raises ``ValueError``
    naming the file."""
    import json

    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON: {e}") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list):
        raise ValueError(f"{path}: expected a JSON object with a 'frames' list")
    for i, fr in enumerate(meta["frames"]):
        if not isinstance(fr, dict) or "file_path" not in fr:
            raise ValueError(f"{path}: frame {i} has no 'file_path'")
        if "transform_matrix" not in fr:
            raise ValueError(f"{path}: frame {i} ({fr['file_path']}) has no 'transform_matrix' "
                             "(expected a 4x4 camera-to-world matrix)")
    return meta


def parse_c2w(value, path: Path, where: str) -> torch.Tensor:
    """A ``transform_matrix`` (OpenGL camera-to-world, 4x4 or 3x4) -> OpenCV world-to-camera ``[4, 4]`` float64."""
    try:
        m = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        m = None
    if m is None or m.shape not in ((4, 4), (3, 4)):
        raise ValueError(f"{path}: {where} field 'transform_matrix' must be a 4x4 (or 3x4) list of numbers, "
                         f"got {value!r:.80}")
    if not np.isfinite(m).all():
        raise ValueError(f"{path}: {where} field 'transform_matrix' contains NaN or Inf")
    return opengl_c2w_to_world_to_cam(torch.from_numpy(m))


def _number(cam: dict, key: str, path: Path, where: str, default=None) -> float | None:
    if key not in cam:
        return default
    try:
        value = float(cam[key])
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {where} field {key!r} must be a number, got {cam[key]!r}") from None
    if not math.isfinite(value):
        raise ValueError(f"{path}: {where} field {key!r} is {value}")
    return value


def _check_focal(cam: dict, path: Path, where: str) -> None:
    """Focal lengths ``fl_x``, ``fl_y`` must be finite and > 0 (pixels); fields of view ``camera_angle_x``,
    ``camera_angle_y`` finite in (0, pi) radians (outside it, ``tan`` gives a negative or infinite focal: a
    mirrored camera). Checks the keys present, used or not; raises ``ValueError`` naming the file and field."""
    for key, expected in (("fl_x", "> 0 (pixels)"), ("fl_y", "> 0 (pixels)"),
                          ("camera_angle_x", "in (0, pi) radians"), ("camera_angle_y", "in (0, pi) radians")):
        if key not in cam:
            continue
        raw = cam[key]
        value = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else None
        if isinstance(raw, str):
            try:
                value = float(raw)
            except ValueError:
                value = None
        ok = value is not None and math.isfinite(value) and value > 0 and (key.startswith("fl_") or value < math.pi)
        if not ok:
            raise ValueError(f"{path}: {where} field {key!r} must be a finite number {expected}, got {raw!r}")


def _intrinsics(cam: dict, path: Path, where: str, size_of_image) -> tuple[torch.Tensor, int, int, Distortion]:
    """K, w, h and distortion from the merged (top level + frame) keys."""
    _check_focal(cam, path, where)
    w, h = _number(cam, "w", path, where), _number(cam, "h", path, where)
    if w is None or h is None:
        w, h = size_of_image()
    fx, fy = _number(cam, "fl_x", path, where), _number(cam, "fl_y", path, where)
    ax, ay = _number(cam, "camera_angle_x", path, where), _number(cam, "camera_angle_y", path, where)
    if fx is None and ax is not None:
        fx = 0.5 * w / math.tan(0.5 * ax)
    if fy is None and ay is not None:
        fy = 0.5 * h / math.tan(0.5 * ay)
    fx, fy = (fx if fx is not None else fy), (fy if fy is not None else fx)
    if fx is None:
        raise ValueError(f"{path}: no focal length for {where}: expected 'fl_x' (and optionally 'fl_y') or "
                         "'camera_angle_x' at the top level or in the frame")
    cx, cy = _number(cam, "cx", path, where, w / 2), _number(cam, "cy", path, where, h / 2)
    model = str(cam.get("camera_model", "OPENCV_FISHEYE" if cam.get("is_fisheye") else "OPENCV")).upper()
    if model not in _CAMERA_MODELS:
        raise ValueError(f"{path}: {where}: unsupported camera_model {model!r}; supported: {', '.join(_CAMERA_MODELS)}")
    k = {key: _number(cam, key, path, where, 0.0) for key in ("k1", "k2", "k3", "k4", "p1", "p2")}
    if model == "OPENCV_FISHEYE":
        dist = Distortion("OPENCV_FISHEYE", k1=k["k1"], k2=k["k2"], k3=k["k3"], k4=k["k4"])
    elif model == "OPENCV":
        if k["k4"]:
            raise ValueError(f"{path}: {where}: 'k4' is only valid with camera_model OPENCV_FISHEYE")
        dist = Distortion("OPENCV", k1=k["k1"], k2=k["k2"], k3=k["k3"], p1=k["p1"], p2=k["p2"])
    else:
        dist = Distortion("OPENCV")
    if w != int(w) or h != int(h) or w <= 0 or h <= 0:
        raise ValueError(f"{path}: {where}: 'w' and 'h' must be positive integers, got {w} x {h}")
    return intrinsics_matrix(fx, fy, cx, cy), int(w), int(h), dist


def read_frames(path: Path, meta: dict, extensions: tuple[str, ...] = (".png", ".jpg", ".jpeg")) -> list[Frame]:
    """:class:`Frame` s of a transforms file in file order (intrinsics merged from the top level and the frame)."""
    base = path.parent
    top = {k: meta[k] for k in _INTRINSIC_KEYS if k in meta}
    _check_focal(top, path, "top level")  # before the frames: an error names where the bad value is
    paths = [resolve_image_path(base, str(fr["file_path"]), extensions) for fr in meta["frames"]]
    first_size: dict = {}

    def size_of_image():  # only consulted when 'w' / 'h' are not given: the first existing image's size
        if "size" not in first_size:
            existing = next((p for p in paths if p.is_file()), None)
            if existing is None:
                raise ValueError(f"{path}: no 'w'/'h' given and no image exists to read the size from")
            first_size["size"] = image_size(existing)
        return first_size["size"]

    frames = []
    for i, (fr, image_path) in enumerate(zip(meta["frames"], paths)):
        where = f"frame {i} ({fr['file_path']})"
        K, w, h, dist = _intrinsics({**top, **{k: fr[k] for k in _INTRINSIC_KEYS if k in fr}}, path, where,
                                    size_of_image)
        w2c = parse_c2w(fr["transform_matrix"], path, where)
        frames.append(Frame(image_path.stem, image_path, w2c, K, w, h, dist, f"{path.name} {where}"))
    _unique_names(frames, base)
    return frames


def _unique_names(frames: list[Frame], base: Path) -> None:
    if len({f.name for f in frames}) != len(frames):
        for f in frames:
            try:
                f.name = f.image_path.relative_to(base.resolve()).with_suffix("").as_posix()
            except ValueError:
                f.name = f.image_path.with_suffix("").as_posix()


def load_ngp(root: str | Path, *, downscale: int = 1, test_every: int = 8, skip_missing_images: bool = False,
             background=None, distortion: str = "undistort") -> SceneData:
    """Load an instant-ngp / nerfstudio ``transforms.json`` dataset (``root`` is the folder or the json file).

    Frames are sorted by ``file_path``; indices 0, ``test_every``, 2 ``test_every``, ... of the sorted list
    (after dropping frames without images when ``skip_missing_images``) go to test, the rest to train.
    Images are undistorted at load (K unchanged), or with ``distortion="keep"`` kept as stored with the lens in
    the cameras (see :func:`~recon.data.io.frames_to_split`). ``ply_file_path``, if present, fills ``points``.
    """
    root = Path(root).resolve()
    path = root if root.is_file() else root / "transforms.json"
    root = path.parent
    meta = read_transforms(path)
    frames = sorted(read_frames(path, meta), key=lambda f: f.image_path.as_posix())
    frames = drop_missing(frames, skip=skip_missing_images, root=root, source=str(path))
    train, test = holdout_every(frames, test_every)
    points = colors = None
    if meta.get("ply_file_path"):
        points, colors = read_ply_points(root / meta["ply_file_path"])
    grids: dict = {}  # undistortion grids shared by the two splits
    return SceneData(root=root, format="ngp", train=frames_to_split(train, downscale, root, grids, distortion),
                     test=frames_to_split(test, downscale, root, grids, distortion), points=points, point_colors=colors,
                     background=resolve_background(background, (1.0, 1.0, 1.0)))


_PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
              "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
              "float": "f4", "float32": "f4", "double": "f8", "float64": "f8"}


def read_ply_points(path: str | Path) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Vertices of a PLY file (ascii or binary): ``points [P, 3]`` float32 and ``colors [P, 3]`` in [0, 1] (from
    ``red green blue``; None when absent). The vertex element must come first and have no list properties."""
    path = Path(path)
    data = path.read_bytes()
    end = data.find(b"end_header")
    if not data.startswith(b"ply") or end < 0:
        raise ValueError(f"{path}: not a PLY file (missing 'ply' / 'end_header')")
    body = data.index(b"\n", end) + 1
    fmt, count, props, element = None, 0, [], None
    for line in data[:end].decode("ascii", "replace").splitlines():
        parts = line.split()
        if parts[:1] == ["format"]:
            fmt = parts[1]
        elif parts[:1] == ["element"]:
            element = parts[1]
            if element == "vertex":
                count = int(parts[2])
            elif not props:
                raise ValueError(f"{path}: the 'vertex' element must come first, found {element!r} before it")
        elif parts[:1] == ["property"] and element == "vertex":
            if parts[1] == "list" or parts[1] not in _PLY_TYPES:
                raise ValueError(f"{path}: unsupported vertex property {' '.join(parts[1:])!r}")
            props.append((parts[2], _PLY_TYPES[parts[1]]))
    names = [n for n, _ in props]
    if not all(n in names for n in "xyz"):
        raise ValueError(f"{path}: the vertex element needs x, y, z properties, got {names}")
    if fmt == "ascii":
        rows = data[body:].decode("ascii").split("\n")[:count]
        table = np.array([r.split()[:len(props)] for r in rows], dtype=np.float64).reshape(count, len(props))
        cols = {n: table[:, j] for j, n in enumerate(names)}
    elif fmt in ("binary_little_endian", "binary_big_endian"):
        order = "<" if fmt == "binary_little_endian" else ">"
        dtype = np.dtype([(n, order + t) for n, t in props])
        if len(data) - body < dtype.itemsize * count:
            raise ValueError(f"{path}: truncated: {count} vertices need {dtype.itemsize * count} bytes")
        table = np.frombuffer(data, dtype, count, body)
        cols = {n: table[n] for n in names}
    else:
        raise ValueError(f"{path}: unsupported PLY format {fmt!r}")
    points = torch.from_numpy(np.stack([cols["x"], cols["y"], cols["z"]], -1).astype(np.float32))
    colors = None
    if all(c in cols for c in ("red", "green", "blue")):
        rgb = np.stack([cols["red"], cols["green"], cols["blue"]], -1).astype(np.float32)
        kind = dict(props)["red"]
        colors = torch.from_numpy(rgb / 255.0 if kind in ("u1", "i1") else rgb / 65535.0 if kind == "u2" else rgb)
    return points, colors
