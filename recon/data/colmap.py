"""COLMAP sparse models: reader and writer for the ``.bin`` and ``.txt`` formats, and the dataset loader.

Layout: ``<root>/sparse/0/{cameras,images,points3D}.{bin,txt}`` (or ``<root>/sparse/``) and ``<root>/images/``.
Binary files are little-endian, as COLMAP writes them (see COLMAP's ``scripts/python/read_write_model.py``).

Pixel convention: COLMAP places the upper-left image *corner* at (0, 0) and the *center* of the upper-left pixel
at (0.5, 0.5) (COLMAP docs, "Database Format" -> keypoints, and the feature-import section of the tutorial; SIFT
keypoints get +0.5 on extraction and the default principal point is (W / 2, H / 2)). That is recon's convention,
so COLMAP's ``cx, cy`` go into ``K`` unchanged.

Poses: COLMAP stores world-to-camera ``qvec`` (qw, qx, qy, qz) and ``tvec`` in the OpenCV camera frame.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from recon.cameras import colmap_to_world_to_cam, intrinsics_matrix
from recon.data.dataset import SceneData
from recon.data.io import Frame, drop_missing, frames_to_split, holdout_every, resolve_background
from recon.data.undistort import Distortion

__all__ = ["ColmapCamera", "ColmapImage", "ColmapPoints", "ColmapModel", "read_colmap_model", "write_colmap_model",
           "find_sparse_dir", "load_colmap", "SUPPORTED_MODELS"]

# id -> (name, number of params), as in COLMAP's sensor/models.h
CAMERA_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5), 4: ("OPENCV", 8),
    5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5), 8: ("SIMPLE_RADIAL_FISHEYE", 4),
    9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12), 11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
MODEL_IDS = {name: (i, n) for i, (name, n) in CAMERA_MODELS.items()}
SUPPORTED_MODELS = ("SIMPLE_PINHOLE", "PINHOLE", "SIMPLE_RADIAL", "RADIAL", "OPENCV", "OPENCV_FISHEYE")


@dataclass
class ColmapCamera:
    """A COLMAP camera: ``params`` in COLMAP's order for ``model`` (e.g. OPENCV: fx, fy, cx, cy, k1, k2, p1, p2)."""

    id: int
    model: str
    width: int
    height: int
    params: tuple[float, ...]


@dataclass
class ColmapImage:
    """A registered image: world-to-camera ``qvec [4]`` (w, x, y, z), ``tvec [3]``; observations ``xys [N, 2]``
    (pixels, centers at +0.5) with ``point3D_ids [N]`` (-1 when unmatched)."""

    id: int
    qvec: np.ndarray
    tvec: np.ndarray
    camera_id: int
    name: str
    xys: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    point3D_ids: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))


@dataclass
class ColmapPoints:
    """Sparse points: ``ids [P]``, ``xyz [P, 3]`` float64, ``rgb [P, 3]`` uint8, ``errors [P]``, and per point a
    track ``[L, 2]`` int array of (image_id, point2D_idx)."""

    ids: np.ndarray
    xyz: np.ndarray
    rgb: np.ndarray
    errors: np.ndarray
    tracks: list[np.ndarray]


@dataclass
class ColmapModel:
    cameras: dict[int, ColmapCamera]
    images: dict[int, ColmapImage]
    points: ColmapPoints | None


# ----------------------------------------------------------------------------------------------- binary reading

class _Reader:
    """Bounds-checked little-endian reader; every short read raises naming the file, the field and the offset."""

    def __init__(self, path: Path):
        self.path, self.data, self.pos = path, path.read_bytes(), 0

    def fail(self, what: str, size: int):
        raise ValueError(f"{self.path}: truncated or corrupt file: needed {size} bytes for {what} at byte {self.pos}, "
                         f"file has {len(self.data)}")

    def unpack(self, fmt: str, what: str) -> tuple:
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.data):
            self.fail(what, size)
        out = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += size
        return out

    def array(self, dtype: np.dtype, count: int, what: str) -> np.ndarray:
        size = np.dtype(dtype).itemsize * count
        if count < 0 or self.pos + size > len(self.data):
            self.fail(what, size)
        out = np.frombuffer(self.data, dtype, count, self.pos)
        self.pos += size
        return out

    def cstring(self, what: str) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            self.fail(what, 1)
        out = self.data[self.pos:end].decode("utf-8")
        self.pos = end + 1
        return out

    def count(self, what: str, min_record: int) -> int:
        (n,) = self.unpack("Q", what)
        if n * min_record > len(self.data) - self.pos:
            raise ValueError(f"{self.path}: truncated or corrupt file: {what} = {n} needs at least {n * min_record} "
                             f"bytes, only {len(self.data) - self.pos} remain")
        return n


def _read_cameras_bin(path: Path) -> dict[int, ColmapCamera]:
    r, cams = _Reader(path), {}
    for _ in range(r.count("number of cameras", 24)):
        cam_id, model_id, width, height = r.unpack("iiQQ", "camera header (id, model, width, height)")
        if model_id not in CAMERA_MODELS:
            raise ValueError(f"{path}: camera {cam_id} has unknown camera model id {model_id}")
        name, n = CAMERA_MODELS[model_id]
        params = r.array(np.float64, n, f"the {n} params of camera {cam_id} ({name})")
        cams[cam_id] = ColmapCamera(cam_id, name, int(width), int(height), tuple(float(p) for p in params))
    return cams


_POINT2D = np.dtype([("xy", "<f8", 2), ("id", "<i8")])


def _read_images_bin(path: Path) -> dict[int, ColmapImage]:
    r, images = _Reader(path), {}
    for _ in range(r.count("number of images", 64)):
        vals = r.unpack("i7di", "image header (id, qvec, tvec, camera id)")
        name = r.cstring(f"the name of image {vals[0]}")
        (n,) = r.unpack("Q", f"the number of points2D of image {vals[0]} ({name})")
        pts = r.array(_POINT2D, n, f"the points2D of image {vals[0]} ({name})")
        images[vals[0]] = ColmapImage(vals[0], np.array(vals[1:5]), np.array(vals[5:8]), vals[8], name,
                                      pts["xy"].copy(), pts["id"].copy())
    return images


def _read_points_bin(path: Path) -> ColmapPoints:
    r = _Reader(path)
    n = r.count("number of points", 43)
    ids, xyz, rgb, err, tracks = np.empty(n, np.int64), np.empty((n, 3)), np.empty((n, 3), np.uint8), np.empty(n), []
    for i in range(n):
        vals = r.unpack("Q3d3BdQ", f"point record {i}")
        ids[i], xyz[i], rgb[i], err[i] = vals[0], vals[1:4], vals[4:7], vals[7]
        tracks.append(r.array(np.dtype("<i4"), 2 * vals[8], f"the track of point {vals[0]}").reshape(-1, 2).copy())
    return ColmapPoints(ids, xyz, rgb, err, tracks)


# ----------------------------------------------------------------------------------------------- text reading

def _text_lines(path: Path):
    """(line number, stripped line) for non-comment lines, keeping empty ones (images.txt needs them)."""
    with open(path, encoding="utf-8") as f:
        for num, line in enumerate(f, 1):
            if not line.lstrip().startswith("#"):
                yield num, line.strip()


def _parse(path: Path, num: int, what: str, fn, values):
    try:
        return [fn(v) for v in values]
    except ValueError as e:
        raise ValueError(f"{path}:{num}: cannot parse {what}: {e}") from None


def _read_cameras_txt(path: Path) -> dict[int, ColmapCamera]:
    cams = {}
    for num, line in _text_lines(path):
        if not line:
            continue
        parts = line.split()
        if len(parts) < 4:
            raise ValueError(f"{path}:{num}: expected 'CAMERA_ID MODEL WIDTH HEIGHT PARAMS...', got {line!r}")
        cam_id, width, height = _parse(path, num, "camera id / width / height", int, [parts[0], parts[2], parts[3]])
        model = parts[1]
        params = tuple(_parse(path, num, "camera params", float, parts[4:]))
        if model in MODEL_IDS and len(params) != MODEL_IDS[model][1]:
            raise ValueError(f"{path}:{num}: camera model {model} takes {MODEL_IDS[model][1]} params, "
                             f"got {len(params)}")
        cams[cam_id] = ColmapCamera(cam_id, model, width, height, params)
    return cams


def _read_images_txt(path: Path) -> dict[int, ColmapImage]:
    images, lines = {}, iter(list(_text_lines(path)))
    for num, line in lines:
        if not line:
            continue
        parts = line.split(maxsplit=9)
        if len(parts) != 10:
            raise ValueError(f"{path}:{num}: expected 'IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME', got {line!r}")
        vals = _parse(path, num, "image pose", float, parts[1:8])
        img_id, cam_id = _parse(path, num, "image id / camera id", int, [parts[0], parts[8]])
        num2, pts_line = next(lines, (num + 1, ""))
        pts = pts_line.split()
        if len(pts) % 3:
            raise ValueError(f"{path}:{num2}: POINTS2D must be triples (X, Y, POINT3D_ID), got {len(pts)} values")
        xy = np.array(_parse(path, num2, "POINTS2D", float, pts), dtype=np.float64).reshape(-1, 3)
        images[img_id] = ColmapImage(img_id, np.array(vals[:4]), np.array(vals[4:]), cam_id, parts[9],
                                     xy[:, :2].copy(), xy[:, 2].astype(np.int64))
    return images


def _read_points_txt(path: Path) -> ColmapPoints:
    ids, xyz, rgb, err, tracks = [], [], [], [], []
    for num, line in _text_lines(path):
        if not line:
            continue
        parts = line.split()
        if len(parts) < 8 or (len(parts) - 8) % 2:
            raise ValueError(f"{path}:{num}: expected 'POINT3D_ID X Y Z R G B ERROR TRACK[]', got {len(parts)} values")
        ids.append(_parse(path, num, "point id", int, parts[:1])[0])
        xyz.append(_parse(path, num, "X Y Z", float, parts[1:4]))
        rgb.append(_parse(path, num, "R G B", int, parts[4:7]))
        err.append(_parse(path, num, "ERROR", float, parts[7:8])[0])
        tracks.append(np.array(_parse(path, num, "TRACK", int, parts[8:]), np.int32).reshape(-1, 2))
    return ColmapPoints(np.array(ids, np.int64), np.array(xyz, np.float64).reshape(-1, 3),
                        np.array(rgb, np.uint8).reshape(-1, 3), np.array(err, np.float64), tracks)


def read_colmap_model(sparse_dir: str | Path) -> ColmapModel:
    """Read ``cameras``, ``images`` and (if present) ``points3D`` from ``sparse_dir``; ``.bin`` preferred over
    ``.txt``. Raises ``FileNotFoundError`` when cameras/images are missing, ``ValueError`` naming the file on
    truncated or malformed content."""
    d = Path(sparse_dir)

    def pick(stem: str) -> Path | None:
        for ext in (".bin", ".txt"):
            if (d / f"{stem}{ext}").is_file():
                return d / f"{stem}{ext}"
        return None

    cam_path, img_path, pts_path = pick("cameras"), pick("images"), pick("points3D")
    if cam_path is None or img_path is None:
        raise FileNotFoundError(f"{d}: expected cameras.bin|txt and images.bin|txt (a COLMAP sparse model)")
    cameras = (_read_cameras_bin if cam_path.suffix == ".bin" else _read_cameras_txt)(cam_path)
    images = (_read_images_bin if img_path.suffix == ".bin" else _read_images_txt)(img_path)
    points = None
    if pts_path is not None:
        points = (_read_points_bin if pts_path.suffix == ".bin" else _read_points_txt)(pts_path)
    return ColmapModel(cameras, images, points)


# ----------------------------------------------------------------------------------------------- writing

def write_colmap_model(sparse_dir: str | Path, model: ColmapModel, *, binary: bool) -> None:
    """Write ``model`` to ``sparse_dir`` as ``{cameras,images,points3D}.bin`` (``binary``) or ``.txt``."""
    d = Path(sparse_dir)
    d.mkdir(parents=True, exist_ok=True)
    cams, imgs, pts = model.cameras.values(), model.images.values(), model.points
    if pts is None:
        pts = ColmapPoints(np.zeros(0, np.int64), np.zeros((0, 3)), np.zeros((0, 3), np.uint8), np.zeros(0), [])
    if binary:
        out = [struct.pack("<Q", len(cams))]
        for c in cams:
            out.append(struct.pack("<iiQQ", c.id, MODEL_IDS[c.model][0], c.width, c.height))
            out.append(np.asarray(c.params, "<f8").tobytes())
        (d / "cameras.bin").write_bytes(b"".join(out))
        out = [struct.pack("<Q", len(imgs))]
        for im in imgs:
            out.append(struct.pack("<i7di", im.id, *im.qvec, *im.tvec, im.camera_id) + im.name.encode() + b"\0")
            pts2d = np.empty(len(im.xys), _POINT2D)
            pts2d["xy"], pts2d["id"] = im.xys, im.point3D_ids
            out.append(struct.pack("<Q", len(pts2d)) + pts2d.tobytes())
        (d / "images.bin").write_bytes(b"".join(out))
        out = [struct.pack("<Q", len(pts.ids))]
        for i in range(len(pts.ids)):
            track = np.asarray(pts.tracks[i], "<i4").reshape(-1, 2)
            out.append(struct.pack("<Q3d3BdQ", pts.ids[i], *pts.xyz[i], *pts.rgb[i], pts.errors[i], len(track)))
            out.append(track.tobytes())
        (d / "points3D.bin").write_bytes(b"".join(out))
        return
    lines = ["# Camera list with one line of data per camera:", "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]"]
    lines += [" ".join([str(c.id), c.model, str(c.width), str(c.height)] + [repr(float(p)) for p in c.params])
              for c in cams]
    (d / "cameras.txt").write_text("\n".join(lines) + "\n")
    lines = ["# IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME", "# POINTS2D[] as (X, Y, POINT3D_ID)"]
    for im in imgs:
        lines.append(" ".join([str(im.id)] + [repr(float(v)) for v in (*im.qvec, *im.tvec)] + [str(im.camera_id),
                                                                                             im.name]))
        lines.append(" ".join(f"{x!r} {y!r} {int(p)}" for (x, y), p in zip(im.xys.tolist(), im.point3D_ids)))
    (d / "images.txt").write_text("\n".join(lines) + "\n")
    lines = ["# POINT3D_ID, X, Y, Z, R, G, B, ERROR, TRACK[] as (IMAGE_ID, POINT2D_IDX)"]
    for i in range(len(pts.ids)):
        track = " ".join(str(int(v)) for v in np.asarray(pts.tracks[i]).reshape(-1))
        lines.append(" ".join([str(int(pts.ids[i]))] + [repr(float(v)) for v in pts.xyz[i]]
                              + [str(int(v)) for v in pts.rgb[i]] + [repr(float(pts.errors[i])), track]).rstrip())
    (d / "points3D.txt").write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------- loading

def find_sparse_dir(root: Path) -> Path | None:
    """``root/sparse/0`` or ``root/sparse`` when it holds ``cameras.bin`` or ``cameras.txt``, else None."""
    for d in (root / "sparse" / "0", root / "sparse"):
        if (d / "cameras.bin").is_file() or (d / "cameras.txt").is_file():
            return d
    return None


def camera_intrinsics(cam: ColmapCamera, source: str) -> tuple[torch.Tensor, Distortion | None]:
    """``K [3, 3]`` float64 and the distortion (None for pinholes) of a COLMAP camera.

    Raises ``ValueError`` naming the model, ``source`` and the supported list for any other model."""
    p = cam.params
    if cam.model not in SUPPORTED_MODELS:
        raise ValueError(f"{source}: camera {cam.id} uses camera model {cam.model!r}, which is not supported; "
                         f"supported models: {', '.join(SUPPORTED_MODELS)}")
    if not all(np.isfinite(p)):
        raise ValueError(f"{source}: camera {cam.id} ({cam.model}) has NaN/Inf params {p}")
    if len(p) != MODEL_IDS[cam.model][1]:
        raise ValueError(f"{source}: camera {cam.id} ({cam.model}) needs {MODEL_IDS[cam.model][1]} params, "
                         f"got {len(p)}")
    if cam.model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        K = intrinsics_matrix(p[0], p[0], p[1], p[2])
    else:
        K = intrinsics_matrix(p[0], p[1], p[2], p[3])
    dist = {
        "SIMPLE_PINHOLE": None, "PINHOLE": None,
        "SIMPLE_RADIAL": lambda: Distortion("OPENCV", k1=p[3]),
        "RADIAL": lambda: Distortion("OPENCV", k1=p[3], k2=p[4]),
        "OPENCV": lambda: Distortion("OPENCV", k1=p[4], k2=p[5], p1=p[6], p2=p[7]),
        "OPENCV_FISHEYE": lambda: Distortion("OPENCV_FISHEYE", k1=p[4], k2=p[5], k3=p[6], k4=p[7]),
    }[cam.model]
    return K, dist() if dist else None


def load_colmap(root: str | Path, *, downscale: int = 1, test_every: int = 8, skip_missing_images: bool = False,
                background=None, images_dir: str = "images", distortion: str = "undistort") -> SceneData:
    """Load a COLMAP dataset (``sparse/0`` or ``sparse`` + ``images/``).

    Frames are sorted by image name; indices 0, ``test_every``, 2 ``test_every``, ... go to test. Distorted
    cameras (SIMPLE_RADIAL, RADIAL, OPENCV, OPENCV_FISHEYE) are undistorted at load to a pinhole with the same K
    and size, or with ``distortion="keep"`` kept as stored with the lens in the cameras (SIMPLE_RADIAL, RADIAL
    and OPENCV as "opencv", OPENCV_FISHEYE as "fisheye"). ``points3D`` becomes ``SceneData.points`` /
    ``point_colors``.
    """
    root = Path(root).resolve()
    sparse = find_sparse_dir(root)
    if sparse is None:
        raise FileNotFoundError(f"{root}: no COLMAP model (looked for sparse/0/cameras.bin|txt and "
                                f"sparse/cameras.bin|txt)")
    model = read_colmap_model(sparse)
    cam_file = next(p for p in (sparse / "cameras.bin", sparse / "cameras.txt") if p.is_file())
    img_file = next(p for p in (sparse / "images.bin", sparse / "images.txt") if p.is_file())
    frames = []
    for im in sorted(model.images.values(), key=lambda im: im.name):
        if im.camera_id not in model.cameras:
            raise ValueError(f"{img_file}: image {im.id} ({im.name}) refers to camera {im.camera_id}, "
                             f"which {cam_file.name} does not define")
        cam = model.cameras[im.camera_id]
        K, dist = camera_intrinsics(cam, str(cam_file))
        if not (np.isfinite(im.qvec).all() and np.isfinite(im.tvec).all()):
            raise ValueError(f"{img_file}: image {im.id} ({im.name}) has a NaN/Inf pose")
        w2c = colmap_to_world_to_cam(torch.from_numpy(im.qvec), torch.from_numpy(im.tvec))
        frames.append(Frame(Path(im.name).with_suffix("").as_posix(), root / images_dir / im.name, w2c, K,
                            cam.width, cam.height, dist, f"{cam_file.name} camera {cam.id}"))
    frames = drop_missing(frames, skip=skip_missing_images, root=root, source=str(img_file))
    train, test = holdout_every(frames, test_every)
    points = colors = None
    if model.points is not None and len(model.points.ids):
        points = torch.from_numpy(model.points.xyz).float()
        colors = torch.from_numpy(model.points.rgb.astype(np.float32) / 255.0)
    grids: dict = {}  # undistortion grids shared by the two splits
    return SceneData(root=root, format="colmap", train=frames_to_split(train, downscale, root, grids, distortion),
                     test=frames_to_split(test, downscale, root, grids, distortion), points=points, point_colors=colors,
                     background=resolve_background(background, (1.0, 1.0, 1.0)))
