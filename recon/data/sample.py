"""The embedded sample scene: a small analytic numpy ray tracer and a Blender-format dataset writer.

``recon train`` with no arguments trains on ``data/sample`` (made by :func:`make_sample_scene`). The images
come from this module's own ray tracer -- exact ray/primitive intersections, procedural textures, Lambertian
shading with a directional light, hard shadows, ambient and a mild specular -- so they are independent of every
recon renderer that is trained or tested on them.

Conventions (the same as :mod:`recon.cameras`): world +Z up; the dataset stores OpenGL/Blender camera-to-world
matrices; rays are generated in the OpenCV camera frame with ``fx = fy = 0.5 W / tan(0.5 camera_angle_x)``,
``cx = W / 2``, ``cy = H / 2`` and the centre of pixel ``(i, j)`` at ``(i + 0.5, j + 0.5)``.

Antialiasing: ``spp x spp`` stratified jittered samples per pixel. Each sample's color is encoded to sRGB first,
then the pixel stores ``alpha = coverage`` and straight (un-premultiplied) sRGB color, so compositing the PNG over
any background in sRGB space (as the Blender loaders and 3DGS trainers do) reproduces the box-filtered image.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

__all__ = [
    "SAMPLE_SCENE_DIR",
    "make_sample_scene",
    "ensure_sample_scene",
    "render_view",
    "sample_cameras",
    "default_primitives",
    "scene_sdf",
    "Sphere",
    "Box",
    "Cylinder",
]

SAMPLE_SCENE_DIR: Path = Path(__file__).resolve().parents[2] / "data" / "sample"
"""``<repo>/data/sample``, the committed sample scene."""

CAMERA_ANGLE_X = 0.55  # ~31.5 deg: the unit sphere (half-angle asin(1/4) = 14.5 deg) just fits
CAMERA_RADIUS = 4.0
ELEVATION_DEG = (-15.0, 70.0)
SPP = 4  # 4 x 4 stratified samples per pixel
_LIGHT_DIR = np.array([0.5, 0.35, 0.8]) / np.linalg.norm([0.5, 0.35, 0.8])  # towards the light
_AMBIENT, _DIFFUSE, _SPECULAR, _SHININESS = 0.28, 0.8, 0.12, 40.0
_EPS = 1e-6

Texture = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (local points [P,3], local normals [P,3]) -> albedo [P,3]


# ----------------------------------------------------------------------------------------------------- primitives
def _rot_z(deg: float) -> np.ndarray:
    a = np.deg2rad(deg)
    return np.array([[np.cos(a), -np.sin(a), 0.0], [np.sin(a), np.cos(a), 0.0], [0.0, 0.0, 1.0]])


def _flat(color) -> Texture:
    c = np.asarray(color, dtype=np.float64)
    return lambda p, n: np.broadcast_to(c, p.shape).copy()


@dataclass(frozen=True)
class _Primitive:
    """A solid in a local frame: ``p_world = rotation @ p_local + center``."""

    center: tuple[float, float, float] = (0.0, 0.0, 0.0)
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))
    texture: Texture = field(default_factory=lambda: _flat((0.7, 0.7, 0.7)))

    def intersect(self, o: np.ndarray, d: np.ndarray, t_min: float = _EPS) -> tuple[np.ndarray, np.ndarray]:
        """Nearest hit of rays ``o, d [P, 3]`` with ``t > t_min``.

        Returns ``t [P]`` (distance along ``d``, inf on a miss) and world normals ``[P, 3]``.
        """
        o_l = (o - np.asarray(self.center)) @ self.rotation  # R^T (o - c), row-vector form
        d_l = d @ self.rotation
        t, n_l = self._hit_local(o_l, d_l, t_min)
        return t, n_l @ self.rotation.T

    def albedo(self, p: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Linear albedo ``[P, 3]`` at world points and normals ``[P, 3]``."""
        return self.texture((p - np.asarray(self.center)) @ self.rotation, n @ self.rotation)

    def sdf(self, p: np.ndarray) -> np.ndarray:
        """Exact signed distance ``[P]`` of world points ``p [P, 3]`` to the solid (negative inside)."""
        return self._sdf_local((p - np.asarray(self.center)) @ self.rotation)

    def _hit_local(self, o, d, t_min):  # pragma: no cover - abstract
        raise NotImplementedError

    def _sdf_local(self, p):  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class Sphere(_Primitive):
    radius: float = 0.5

    def _hit_local(self, o, d, t_min):
        a = np.einsum("pi,pi->p", d, d)
        b = np.einsum("pi,pi->p", o, d)
        c = np.einsum("pi,pi->p", o, o) - self.radius**2
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        t0, t1 = (-b - root) / a, (-b + root) / a
        t = np.where(t0 > t_min, t0, np.where(t1 > t_min, t1, np.inf))
        t = np.where(disc >= 0.0, t, np.inf)
        p = o + d * np.where(np.isfinite(t), t, 0.0)[:, None]
        return t, p / self.radius

    def _sdf_local(self, p):
        return np.linalg.norm(p, axis=1) - self.radius


@dataclass(frozen=True)
class Box(_Primitive):
    half_size: tuple[float, float, float] = (0.5, 0.5, 0.5)

    def _hit_local(self, o, d, t_min):
        h = np.asarray(self.half_size)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = 1.0 / np.where(d == 0.0, 1e-300, d)
            ta, tb = (-h - o) * inv, (h - o) * inv
        t_near, t_far = np.minimum(ta, tb), np.maximum(ta, tb)
        t_enter, t_exit = t_near.max(axis=1), t_far.min(axis=1)
        hit = (t_enter <= t_exit) & (t_exit > t_min)
        entering = t_enter > t_min
        t = np.where(hit, np.where(entering, t_enter, t_exit), np.inf)
        axis = np.where(entering, t_near.argmax(axis=1), t_far.argmin(axis=1))
        n = np.zeros_like(o)
        sign = np.where(entering, -np.sign(d[np.arange(len(d)), axis]), np.sign(d[np.arange(len(d)), axis]))
        n[np.arange(len(d)), axis] = sign
        return t, n

    def _sdf_local(self, p):
        q = np.abs(p) - np.asarray(self.half_size)
        return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)


@dataclass(frozen=True)
class Cylinder(_Primitive):
    """A capped cylinder along the local z axis, ``|z| <= half_height``."""

    radius: float = 0.5
    half_height: float = 0.5

    def _hit_local(self, o, d, t_min):
        r, h = self.radius, self.half_height
        a = d[:, 0] ** 2 + d[:, 1] ** 2
        b = o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1]
        c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
        disc = b * b - a * c
        root = np.sqrt(np.maximum(disc, 0.0))
        with np.errstate(divide="ignore", invalid="ignore"):
            cands = [(-b - root) / a, (-b + root) / a, (h - o[:, 2]) / d[:, 2], (-h - o[:, 2]) / d[:, 2]]
        ts = []
        for k, tk in enumerate(cands):
            tk = np.where(np.isfinite(tk), tk, np.inf)
            p = o + d * np.where(np.isfinite(tk), tk, 0.0)[:, None]
            ok = tk > t_min
            if k < 2:  # side wall: a real root within the height
                ok &= (disc >= 0.0) & (a > 0.0) & (np.abs(p[:, 2]) <= h)
            else:  # caps: inside the radius
                ok &= p[:, 0] ** 2 + p[:, 1] ** 2 <= r * r
            ts.append(np.where(ok, tk, np.inf))
        ts = np.stack(ts, axis=1)
        k = ts.argmin(axis=1)
        t = ts[np.arange(len(o)), k]
        p = o + d * np.where(np.isfinite(t), t, 0.0)[:, None]
        n = np.where((k < 2)[:, None], np.stack([p[:, 0] / r, p[:, 1] / r, np.zeros(len(o))], 1),
                     np.stack([np.zeros(len(o)), np.zeros(len(o)), np.where(k == 2, 1.0, -1.0)], 1))
        return t, n

    def _sdf_local(self, p):
        q = np.stack([np.hypot(p[:, 0], p[:, 1]) - self.radius, np.abs(p[:, 2]) - self.half_height], 1)
        return np.linalg.norm(np.maximum(q, 0.0), axis=1) + np.minimum(q.max(axis=1), 0.0)


# ------------------------------------------------------------------------------------------------------- textures
def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    s = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return s * s * (3.0 - 2.0 * s)


def _mix(a, b, s: np.ndarray) -> np.ndarray:
    return np.asarray(a) * (1.0 - s[:, None]) + np.asarray(b) * s[:, None]


def _box_checker(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    # A checker of 0.2-unit cells (~9 px at 128 px) over the two in-face coordinates only: the face-normal
    # coordinate sits exactly on a cell boundary, where floor() would flip with rounding noise.
    cells = np.floor((p + 0.3) / 0.2)
    parity = (np.where(np.abs(n) < 0.5, cells, 0.0).sum(axis=1) % 2).astype(np.float64)
    return _mix((0.85, 0.32, 0.06), (0.92, 0.85, 0.65), parity)


def _sphere_stripes(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    # A vertical red-to-yellow gradient with 8 soft dark meridian stripes (~7 px wide at 128 px).
    lat = n[:, 2]
    base = _mix((0.75, 0.08, 0.10), (0.95, 0.75, 0.10), 0.5 - 0.5 * lat)
    stripe = _smoothstep(-0.25, 0.25, np.sin(8.0 * np.arctan2(n[:, 1], n[:, 0])))
    return _mix(base, base * np.array([0.25, 0.3, 0.6]), stripe)


def _cylinder_rings(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    # Horizontal blue/white rings (period 0.18) on the side; a radial gradient on the caps.
    side = np.abs(n[:, 2]) < 0.5
    ring = _smoothstep(-0.3, 0.3, np.sin(2.0 * np.pi * p[:, 2] / 0.18))
    side_col = _mix((0.08, 0.22, 0.70), (0.90, 0.92, 0.95), ring)
    rad = np.sqrt(p[:, 0] ** 2 + p[:, 1] ** 2) / 0.16
    cap_col = _mix((0.95, 0.95, 0.90), (0.10, 0.50, 0.35), np.clip(rad, 0.0, 1.0))
    return np.where(side[:, None], side_col, cap_col)


def _base_texture(p: np.ndarray, n: np.ndarray) -> np.ndarray:
    # Top: a soft 0.25-unit checker modulating a smooth teal-to-purple gradient; side and bottom: dark grey.
    top = n[:, 2] > 0.5
    grad = _mix((0.10, 0.55, 0.55), (0.45, 0.20, 0.60), np.clip(0.5 + 0.6 * p[:, 0], 0.0, 1.0))
    parity = ((np.floor(p[:, 0] / 0.25) + np.floor(p[:, 1] / 0.25)) % 2).astype(np.float64)
    top_col = grad * (0.65 + 0.35 * parity)[:, None]
    return np.where(top[:, None], top_col, np.array([0.18, 0.18, 0.2]))


def default_primitives() -> list[_Primitive]:
    """The sample scene: a checkered box, a striped sphere and a ringed cylinder on a round base, all inside the
    unit sphere, world +Z up."""
    return [
        Cylinder(center=(0.0, 0.0, -0.5), radius=0.82, half_height=0.05, texture=_base_texture),
        Box(center=(-0.3, -0.2, -0.15), rotation=_rot_z(35.0), half_size=(0.3, 0.3, 0.3), texture=_box_checker),
        Sphere(center=(0.35, 0.3, -0.13), radius=0.32, texture=_sphere_stripes),
        Cylinder(center=(0.3, -0.4, 0.0), radius=0.16, half_height=0.45, texture=_cylinder_rings),
    ]


def scene_sdf(points: np.ndarray, primitives: list[_Primitive] | None = None) -> np.ndarray:
    """Signed distance ``[P]`` of points ``[P, 3]`` to the union of the scene's solids (exact outside each solid;
    the union's minimum is exact outside and a bound inside): the geometric ground truth of the sample scene."""
    prims = default_primitives() if primitives is None else primitives
    return np.min(np.stack([prim.sdf(np.asarray(points, dtype=np.float64)) for prim in prims]), axis=0)


# -------------------------------------------------------------------------------------------------------- tracing
def _nearest(prims, o, d):
    t = np.full(len(o), np.inf)
    n = np.zeros_like(o)
    idx = np.full(len(o), -1)
    for k, prim in enumerate(prims):
        tk, nk = prim.intersect(o, d)
        closer = tk < t
        t, idx = np.where(closer, tk, t), np.where(closer, k, idx)
        n = np.where(closer[:, None], nk, n)
    return t, n, idx


def _shade(prims, p, n, d, idx) -> np.ndarray:
    """Linear radiance ``[P, 3]`` at hit points: ambient + Lambert + Blinn-Phong, hard shadows."""
    albedo = np.zeros_like(p)
    for k, prim in enumerate(prims):
        m = idx == k
        if m.any():
            albedo[m] = prim.albedo(p[m], n[m])
    light = np.broadcast_to(_LIGHT_DIR, p.shape)
    t_shadow, _, _ = _nearest(prims, p + 1e-5 * n, light)
    visible = np.isinf(t_shadow).astype(np.float64)
    n_dot_l = np.clip(n @ _LIGHT_DIR, 0.0, None) * visible
    half = _LIGHT_DIR - d
    half /= np.linalg.norm(half, axis=1, keepdims=True)
    spec = _SPECULAR * np.clip(np.einsum("pi,pi->p", n, half), 0.0, None) ** _SHININESS * (n_dot_l > 0)
    ambient = _AMBIENT * (0.8 + 0.2 * n[:, 2])  # a faint sky/ground gradient so shadowed sides keep their shape
    return albedo * (ambient + _DIFFUSE * n_dot_l)[:, None] + spec[:, None]


def _linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def render_view(c2w_opengl: np.ndarray, width: int, height: int, camera_angle_x: float = CAMERA_ANGLE_X, *,
                primitives: list[_Primitive] | None = None, spp: int = SPP,
                rng: np.random.Generator | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Ray trace one view.

    Args:
        c2w_opengl: ``[4, 4]`` (or ``[3, 4]``) OpenGL/Blender camera-to-world matrix.
        width, height: image size in pixels; ``fx = fy = 0.5 W / tan(0.5 camera_angle_x)``, ``(cx, cy) = (W/2, H/2)``.
        primitives: the scene (default :func:`default_primitives`).
        spp: ``spp x spp`` stratified samples per pixel; ``spp=1`` without ``rng`` samples exact pixel centres.
        rng: jitters the samples inside their strata; ``None`` puts them at the strata centres.
    Returns:
        ``rgba [H, W, 4]`` float64 in [0, 1] (straight sRGB color, alpha = coverage) and ``depth [H, W]``: the mean
        OpenCV camera-space z over the covered samples (``inf`` where nothing is hit).
    Raises ``ValueError`` on a wrong matrix shape or non-positive sizes.
    """
    if np.shape(c2w_opengl) not in ((4, 4), (3, 4)):
        raise ValueError(f"c2w_opengl must have shape [4, 4] or [3, 4], got {np.shape(c2w_opengl)}")
    if int(width) <= 0 or int(height) <= 0 or int(spp) <= 0:
        raise ValueError(f"width, height and spp must be positive, got {width}, {height}, {spp}")
    prims = default_primitives() if primitives is None else primitives
    c2w = np.asarray(c2w_opengl, dtype=np.float64)[:3, :4] @ np.diag([1.0, -1.0, -1.0, 1.0])  # -> OpenCV axes
    f = 0.5 * width / np.tan(0.5 * camera_angle_x)
    jit = rng.random((height, width, spp, spp, 2)) if rng is not None else np.full((height, width, spp, spp, 2), 0.5)
    sub = (np.arange(spp)[:, None, None] * np.array([0.0, 1.0]) + np.arange(spp)[None, :, None] * np.array([1.0, 0.0]))
    offs = (sub[None, None] + jit) / spp  # [H, W, sy, sx, (x, y)] in [0, 1)
    u = np.arange(width)[None, :, None, None] + offs[..., 0]
    v = np.arange(height)[:, None, None, None] + offs[..., 1]
    d_cam = np.stack([(u - 0.5 * width) / f, (v - 0.5 * height) / f, np.ones_like(u)], axis=-1).reshape(-1, 3)
    d = d_cam @ c2w[:, :3].T
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    o = np.broadcast_to(c2w[:, 3], d.shape)
    t, n, idx = _nearest(prims, o, d)
    hit = np.isfinite(t)
    color = np.zeros_like(d)
    p = o[hit] + d[hit] * t[hit, None]
    color[hit] = _linear_to_srgb(_shade(prims, p, n[hit], d[hit], idx[hit]))
    z = np.where(hit, t * (d @ c2w[:, 2]), 0.0)
    s = spp * spp
    cov = hit.reshape(height, width, s).astype(np.float64)
    alpha = cov.mean(axis=-1)
    premul = color.reshape(height, width, s, 3).mean(axis=2)
    with np.errstate(divide="ignore", invalid="ignore"):
        rgb = np.where(alpha[..., None] > 0, premul / alpha[..., None], 0.0)
        depth = np.where(alpha > 0, z.reshape(height, width, s).sum(-1) / cov.sum(-1), np.inf)
    return np.concatenate([np.clip(rgb, 0.0, 1.0), alpha[..., None]], axis=-1), depth


# ------------------------------------------------------------------------------------------------------- cameras
def _look_at_origin_opengl(eye: np.ndarray) -> np.ndarray:
    """OpenGL camera-to-world ``[4, 4]`` at ``eye`` looking at the origin, world +Z up (x right, y up, z back)."""
    back = eye / np.linalg.norm(eye)
    right = np.cross(np.array([0.0, 0.0, 1.0]), back)
    right /= np.linalg.norm(right)
    up = np.cross(back, right)
    c2w = np.eye(4)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, up, back, eye
    return c2w


def sample_cameras(n: int, seed: int, split: str) -> np.ndarray:
    """Seeded OpenGL camera-to-world matrices ``[n, 4, 4]`` on a sphere of radius 4 looking at the origin.

    Elevations lie in [-15, 70] degrees (uniform in area). ``"train"`` views follow a jittered golden-angle spiral
    for even coverage; ``"test"`` views are drawn independently from another random stream, so they differ from
    the training views. Entries are rounded to 9 decimals so the JSON is stable across numpy builds.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    s_lo, s_hi = np.sin(np.deg2rad(ELEVATION_DEG))
    if split == "train":
        s = s_lo + (np.arange(n) + rng.uniform(0.1, 0.9, n)) / n * (s_hi - s_lo)
        az = np.arange(n) * np.pi * (3.0 - np.sqrt(5.0)) + rng.uniform(0.0, 2.0 * np.pi)
    else:
        s = rng.uniform(s_lo, s_hi, n)
        az = rng.uniform(0.0, 2.0 * np.pi, n)
    c = np.sqrt(1.0 - s * s)
    eyes = CAMERA_RADIUS * np.stack([c * np.cos(az), c * np.sin(az), s], axis=1)
    return np.round(np.stack([_look_at_origin_opengl(e) for e in eyes]), 9) + 0.0  # + 0.0 turns -0.0 into 0.0


def _transforms(c2ws: np.ndarray, split: str) -> dict:
    return {"camera_angle_x": CAMERA_ANGLE_X,
            "frames": [{"file_path": f"./{split}/r_{i}", "transform_matrix": m.tolist()} for i, m in enumerate(c2ws)]}


# ------------------------------------------------------------------------------------------------------- dataset
_README = """# recon sample scene

Generated by `python scripts/make_sample_scene.py` (deterministic: fixed seeds; see `meta.json`) with
`recon.data.sample.make_sample_scene`, an analytic numpy ray tracer independent of recon's renderers.

A checkered box, a striped sphere and a ringed cylinder on a round base, inside the unit sphere, world +Z up.
Lambertian shading with one directional light, hard shadows, ambient and a mild specular; transparent background.

Blender / NeRF-synthetic format: `transforms_{train,test}.json` (`camera_angle_x`, OpenGL camera-to-world
`transform_matrix`), RGBA 8-bit sRGB PNGs with straight alpha = pixel coverage (4x4 stratified jittered samples).
Cameras on a sphere of radius 4 looking at the origin, elevations -15..70 degrees; test views differ from train.
"""


def _frame_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The sample jitter stream of one frame (independent of the camera streams of :func:`sample_cameras`)."""
    return np.random.default_rng([seed, 2 if split == "train" else 3, index])


def _write_png(path: Path, rgba: np.ndarray) -> None:
    img = np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)
    Image.fromarray(img, "RGBA").save(path, format="PNG", compress_level=9)


def _write_dataset(out: Path, width: int, height: int, n_train: int, n_test: int, seed: int) -> None:
    for split, n in (("train", n_train), ("test", n_test)):
        c2ws = sample_cameras(n, seed, split)
        (out / split).mkdir()
        for i, c2w in enumerate(c2ws):
            rgba, _ = render_view(c2w, width, height, CAMERA_ANGLE_X, rng=_frame_rng(seed, split, i))
            _write_png(out / split / f"r_{i}.png", rgba)
        (out / f"transforms_{split}.json").write_text(json.dumps(_transforms(c2ws, split), indent=2) + "\n")
    meta = {"generator": "recon.data.sample.make_sample_scene", "version": 1, "seed": seed, "width": width,
            "height": height, "n_train": n_train, "n_test": n_test, "samples_per_pixel": SPP * SPP,
            "camera_angle_x": CAMERA_ANGLE_X, "camera_radius": CAMERA_RADIUS, "elevation_deg": list(ELEVATION_DEG),
            "world_up": "+z", "color": "sRGB, straight alpha = coverage", "background": "transparent"}
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (out / "README.md").write_text(_README)


def make_sample_scene(out_dir: str | os.PathLike, *, width: int = 128, height: int = 128, n_train: int = 48,
                      n_test: int = 8, seed: int = 0) -> Path:
    """Render the sample scene into a Blender-format dataset at ``out_dir`` (replaced if it exists).

    Writes ``transforms_train.json``, ``transforms_test.json``, ``train/r_<i>.png``, ``test/r_<i>.png`` (RGBA,
    8-bit sRGB, ``width x height``), ``meta.json`` and ``README.md``. Deterministic for given arguments. The
    dataset is written into a temporary sibling folder and renamed into place, so an interrupted run leaves the
    previous dataset (or nothing) behind, never a half-written one. Returns ``Path(out_dir)``.
    Raises ``ValueError`` on non-positive sizes or counts.
    """
    for name, value in (("width", width), ("height", height), ("n_train", n_train), ("n_test", n_test)):
        if int(value) <= 0:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        _write_dataset(tmp, int(width), int(height), int(n_train), int(n_test), int(seed))
        old = None
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def ensure_sample_scene() -> Path:
    """Return :data:`SAMPLE_SCENE_DIR`, generating it with the default arguments first if it is missing."""
    needed = ("transforms_train.json", "transforms_test.json", "meta.json")
    if not all((SAMPLE_SCENE_DIR / name).is_file() for name in needed):
        make_sample_scene(SAMPLE_SCENE_DIR)
    return SAMPLE_SCENE_DIR
