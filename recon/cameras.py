"""Batched cameras (pinhole, OpenCV and fisheye lenses) and the one place where recon's camera conventions live.

Conventions (pinned by ``tests/test_cameras.py`` with hand-computed examples):

* World frame: right-handed; datasets keep their own world frame, recon never re-orients it.
* Camera frame: OpenCV -- x right, y down, z forward (the camera looks along +z).
* ``world_to_cam [C, 4, 4]`` maps homogeneous world points to camera points: ``p_cam = R p_world + t``.
* ``K [C, 3, 3]`` in pixels. A camera point ``(x, y, z)`` lands at pixel coordinates
  ``u = fx x / z + cx``, ``v = fy y / z + cy``; the *center* of pixel ``(i, j)`` (column i, row j) is at
  ``(i + 0.5, j + 0.5)``, so a centered principal point of a ``W x H`` image is ``(W / 2, H / 2)``.
* Lens distortion (``Cameras.model``; OpenCV's definitions, coefficients act on normalized coordinates, and the
  distorted ``(x_d, y_d)`` goes through ``K`` like a pinhole point):

  - ``"opencv"`` ``(k1, k2, p1, p2, k3)`` on ``x = X / Z``, ``y = Y / Z`` with ``r2 = x^2 + y^2``:
    ``x_d = x (1 + k1 r2 + k2 r2^2 + k3 r2^3) + 2 p1 x y + p2 (r2 + 2 x^2)``, and
    ``y_d = y (...) + p1 (r2 + 2 y^2) + 2 p2 x y``.
  - ``"fisheye"`` ``(k1, k2, k3, k4)``, equidistant (Kannala-Brandt): ``theta = atan2(sqrt(X^2 + Y^2), Z)``,
    ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)``,
    ``(x_d, y_d) = theta_d (X, Y) / sqrt(X^2 + Y^2)``. Computed from the direction, so rays more than 90 degrees
    off the axis (``Z <= 0``) are valid (OpenCV's own ``fisheye.projectPoints`` uses ``atan(r / Z)`` and cannot).
* OpenGL / Blender camera-to-world matrices (NeRF synthetic, instant-ngp, nerfstudio) have camera axes
  x right, y up, z backward; :func:`opengl_c2w_to_world_to_cam` flips y and z.
* COLMAP stores world-to-camera rotations as quaternions ``(qw, qx, qy, qz)`` and translations, already in
  the OpenCV camera frame: :func:`colmap_to_world_to_cam`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

__all__ = [
    "Cameras",
    "opengl_c2w_to_world_to_cam",
    "colmap_to_world_to_cam",
    "quat_wxyz_to_rotmat",
    "intrinsics_matrix",
    "look_at",
]

_DISTORTION_SIZE = {"pinhole": 0, "opencv": 5, "fisheye": 4}  # coefficients per camera
_OPENGL_TO_OPENCV = torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))


def quat_wxyz_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """Rotation matrices from quaternions ``q [..., 4]`` ordered (w, x, y, z); normalized first.

    Returns ``[..., 3, 3]``. Raises ``ValueError`` on a wrong trailing dimension.
    """
    if q.shape[-1] != 4:
        raise ValueError(f"quaternions must have shape [..., 4] (w, x, y, z), got {tuple(q.shape)}")
    q = q / q.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    w, x, y, z = q.unbind(-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(*q.shape[:-1], 3, 3)


def opengl_c2w_to_world_to_cam(c2w: torch.Tensor) -> torch.Tensor:
    """OpenGL/Blender camera-to-world ``[..., 4, 4]`` (or ``[..., 3, 4]``) -> OpenCV world-to-camera ``[..., 4, 4]``."""
    if c2w.shape[-2:] not in ((4, 4), (3, 4)):
        raise ValueError(f"camera-to-world must have shape [..., 4, 4] or [..., 3, 4], got {tuple(c2w.shape)}")
    c2w = c2w.to(torch.float64)
    if c2w.shape[-2] == 3:
        bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype, device=c2w.device).expand(*c2w.shape[:-2], 1, 4)
        c2w = torch.cat([c2w, bottom], dim=-2)
    c2w_cv = c2w @ _OPENGL_TO_OPENCV.to(c2w.device)
    return torch.linalg.inv(c2w_cv)


def colmap_to_world_to_cam(qvec: torch.Tensor, tvec: torch.Tensor) -> torch.Tensor:
    """COLMAP image pose (``qvec [..., 4]`` as qw, qx, qy, qz; ``tvec [..., 3]``) -> world-to-camera ``[..., 4, 4]``."""
    rot = quat_wxyz_to_rotmat(qvec.to(torch.float64))
    out = torch.zeros(*rot.shape[:-2], 4, 4, dtype=torch.float64, device=rot.device)
    out[..., :3, :3] = rot
    out[..., :3, 3] = tvec.to(torch.float64)
    out[..., 3, 3] = 1.0
    return out


def look_at(eyes: torch.Tensor, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)) -> torch.Tensor:
    """OpenCV world-to-camera matrices ``[C, 4, 4]`` (float64) of cameras at ``eyes [C, 3]`` looking at ``target``
    with ``up`` pointing up in the image (image y = down = -up projected). Raises ``ValueError`` when a view
    direction is parallel to ``up`` or an eye sits on the target."""
    eyes = torch.as_tensor(eyes, dtype=torch.float64).reshape(-1, 3)
    target = torch.as_tensor(target, dtype=torch.float64)
    up = torch.as_tensor(up, dtype=torch.float64)
    fwd = target - eyes
    if (fwd.norm(dim=-1) < 1e-12).any():
        raise ValueError("look_at: an eye coincides with the target")
    fwd = fwd / fwd.norm(dim=-1, keepdim=True)
    right = torch.cross(fwd, up.expand_as(fwd), dim=-1)
    if (right.norm(dim=-1) < 1e-9).any():
        raise ValueError("look_at: a view direction is parallel to the up vector")
    right = right / right.norm(dim=-1, keepdim=True)
    down = torch.cross(fwd, right, dim=-1)
    rot = torch.stack([right, down, fwd], dim=1)  # rows: camera axes in world coordinates
    w2c = torch.eye(4, dtype=torch.float64).repeat(len(eyes), 1, 1)
    w2c[:, :3, :3] = rot
    w2c[:, :3, 3] = -(rot @ eyes[:, :, None])[..., 0]
    return w2c


def intrinsics_matrix(fx: float, fy: float, cx: float, cy: float) -> torch.Tensor:
    """A ``[3, 3]`` float64 pinhole matrix in pixels (pixel centers at +0.5, see module docstring)."""
    return torch.tensor([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=torch.float64)


def _opencv_distort(xy: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """OpenCV radial-tangential model on normalized ``xy [C, N, 2]`` with ``k [C, 5]`` (k1, k2, p1, p2, k3).

    Returns distorted ``x_d, y_d [C, N]`` and the Jacobian entries ``a = dx_d/dx``, ``b = dx_d/dy = dy_d/dx``,
    ``d = dy_d/dy`` (each ``[C, N]``) for Newton's method.
    """
    k1, k2, p1, p2, k3 = (k[:, i, None] for i in range(5))
    x, y = xy.unbind(-1)
    r2 = x * x + y * y
    radial = 1 + r2 * (k1 + r2 * (k2 + r2 * k3))
    dradial = k1 + r2 * (2 * k2 + r2 * 3 * k3)  # d radial / d r2
    xd = x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x)
    yd = y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y
    a = radial + 2 * x * x * dradial + 2 * p1 * y + 6 * p2 * x
    b = 2 * x * y * dradial + 2 * p1 * x + 2 * p2 * y
    d = radial + 2 * y * y * dradial + 6 * p1 * y + 2 * p2 * x
    return xd, yd, a, b, d


def _opencv_undistort(xy_d: torch.Tensor, k: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Invert :func:`_opencv_distort` for ``xy_d [C, P, 2]`` by Newton's method; returns ``xy [C, P, 2]``.

    Newton (2x2 Jacobian) converges in a few steps inside the monotonic region, where the fixed-point
    iteration of cv2.undistortPoints can converge slowly for strong barrel distortion near the image corners.
    """
    tol = 10 * torch.finfo(xy_d.dtype).eps
    xy = xy_d
    for _ in range(iterations):
        xd, yd, a, b, d = _opencv_distort(xy, k)
        ex, ey = xd - xy_d[..., 0], yd - xy_d[..., 1]
        det = a * d - b * b
        det = torch.where(det.abs() > 1e-12, det, torch.full_like(det, 1e-12))  # past the fold: no inverse
        step = torch.stack([d * ex - b * ey, a * ey - b * ex], dim=-1) / det[..., None]
        xy = xy - step
        if step.numel() == 0 or float(step.detach().abs().max()) < tol:
            break
    return xy


def _fisheye_poly(theta: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``theta_d(theta)`` and its derivative for ``theta [C, N]`` and ``k [C, 4]``."""
    k1, k2, k3, k4 = (k[:, i, None] for i in range(4))
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4))))
    dtheta_d = 1 + t2 * (3 * k1 + t2 * (5 * k2 + t2 * (7 * k3 + t2 * 9 * k4)))
    return theta_d, dtheta_d


def _fisheye_unproject(xy_d: torch.Tensor, k: torch.Tensor, iterations: int = 20) -> torch.Tensor:
    """Unit camera-space directions ``[C, P, 3]`` of distorted normalized ``xy_d [C, P, 2]`` (fisheye model).

    Solves ``theta_d(theta) = |xy_d|`` by Newton's method with theta clamped to ``[0, pi]``.
    """
    # The clamp keeps sqrt's gradient finite at the principal point (theta_d = 0).
    theta_d = xy_d.square().sum(-1).clamp_min(1e-24).sqrt()
    theta = theta_d.clamp(max=math.pi)
    tol = 10 * torch.finfo(xy_d.dtype).eps
    for _ in range(iterations):
        value, slope = _fisheye_poly(theta, k)
        step = (value - theta_d) / slope.clamp_min(1e-6)  # slope <= 0 only past the fold: no inverse there
        theta = (theta - step).clamp(0.0, math.pi)
        if step.numel() == 0 or float(step.detach().abs().max()) < tol:
            break
    s = torch.sin(theta) / theta_d
    return torch.stack([s * xy_d[..., 0], s * xy_d[..., 1], torch.cos(theta)], dim=-1)


@dataclass(frozen=True)
class Cameras:
    """A batch of ``C`` cameras sharing one image size and one lens model.

    Attributes:
        world_to_cam: ``[C, 4, 4]`` OpenCV world-to-camera matrices.
        K: ``[C, 3, 3]`` intrinsics in pixels.
        width, height: image size in pixels.
        model: ``"pinhole"`` (default), ``"opencv"`` or ``"fisheye"`` (see the module docstring).
        distortion: ``None`` for ``"pinhole"``; ``[C, 5]`` (k1, k2, p1, p2, k3) for ``"opencv"``; ``[C, 4]``
            (k1, k2, k3, k4) for ``"fisheye"``.

    Raises ``ValueError`` on wrong shapes, NaN/Inf, an unknown model or a distortion that does not fit the model.
    """

    world_to_cam: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    model: str = "pinhole"
    distortion: torch.Tensor | None = None

    def __post_init__(self) -> None:
        w2c, K, dist = self.world_to_cam, self.K, self.distortion
        if w2c.ndim != 3 or w2c.shape[-2:] != (4, 4):
            raise ValueError(f"world_to_cam must have shape [C, 4, 4], got {tuple(w2c.shape)}")
        if K.ndim != 3 or K.shape[-2:] != (3, 3) or K.shape[0] != w2c.shape[0]:
            raise ValueError(f"K must have shape [C, 3, 3] with C={w2c.shape[0]}, got {tuple(K.shape)}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")
        if not (torch.isfinite(w2c).all() and torch.isfinite(K).all()):
            raise ValueError("camera matrices contain NaN or Inf")
        if self.model not in _DISTORTION_SIZE:
            raise ValueError(f"model must be one of {', '.join(map(repr, _DISTORTION_SIZE))}, got {self.model!r}")
        if self.model == "pinhole":
            if dist is not None:
                raise ValueError(f"distortion must be None for model 'pinhole', got shape {tuple(dist.shape)}; "
                                 "pass model='opencv' or 'fisheye'")
            return
        n = _DISTORTION_SIZE[self.model]
        if not isinstance(dist, torch.Tensor) or dist.shape != (w2c.shape[0], n):
            got = tuple(dist.shape) if isinstance(dist, torch.Tensor) else type(dist).__name__
            raise ValueError(f"distortion must have shape [C={w2c.shape[0]}, {n}] for model {self.model!r}, got {got}")
        if not torch.isfinite(dist).all():
            raise ValueError(f"distortion contains NaN or Inf (model {self.model!r})")

    @property
    def is_pinhole(self) -> bool:
        """True for the undistorted pinhole model."""
        return self.model == "pinhole"

    def __len__(self) -> int:
        return self.world_to_cam.shape[0]

    def __getitem__(self, idx) -> "Cameras":
        """Index like a tensor; an integer index keeps the batch dimension (returns C = 1)."""
        if isinstance(idx, int):
            idx = slice(idx, idx + 1 if idx != -1 else None)
        dist = None if self.distortion is None else self.distortion[idx]
        return replace(self, world_to_cam=self.world_to_cam[idx], K=self.K[idx], distortion=dist)

    @property
    def device(self) -> torch.device:
        return self.world_to_cam.device

    def to(self, device=None, dtype=None) -> "Cameras":
        """Move/cast the matrices and distortion coefficients; ``dtype`` defaults to the current one."""
        dist = None if self.distortion is None else self.distortion.to(device=device, dtype=dtype)
        return replace(self, world_to_cam=self.world_to_cam.to(device=device, dtype=dtype),
                       K=self.K.to(device=device, dtype=dtype), distortion=dist)

    @staticmethod
    def cat(items: list["Cameras"]) -> "Cameras":
        """Concatenate batches that share an image size and a lens model."""
        sizes = {(c.width, c.height) for c in items}
        if len(sizes) != 1:
            raise ValueError(f"cannot concatenate cameras of different image sizes: {sorted(sizes)}")
        models = {c.model for c in items}
        if len(models) != 1:
            raise ValueError(f"cannot concatenate cameras of different models: {sorted(models)}")
        w, h = sizes.pop()
        model = models.pop()
        dist = None if model == "pinhole" else torch.cat([c.distortion for c in items])
        return Cameras(torch.cat([c.world_to_cam for c in items]), torch.cat([c.K for c in items]), w, h,
                       model, dist)

    def cam_to_world(self) -> torch.Tensor:
        """``[C, 4, 4]`` OpenCV camera-to-world matrices."""
        return torch.linalg.inv(self.world_to_cam)

    def centers(self) -> torch.Tensor:
        """Camera centers in world coordinates, ``[C, 3]``."""
        rot = self.world_to_cam[:, :3, :3]
        t = self.world_to_cam[:, :3, 3:]
        return -(rot.transpose(1, 2) @ t)[..., 0]

    def scaled(self, factor: float) -> "Cameras":
        """Cameras for images resized by ``factor`` (e.g. 0.25 for ``--downscale 4``).

        Pixel edges scale with the image, so with +0.5 centers ``K`` rows 0-1 simply scale:
        ``fx' = s fx``, ``cx' = s cx``. The new size is ``round(W * s)``; a non-integer ratio is absorbed
        by scaling x and y separately so that the image edges stay fixed. Model and distortion are kept.
        """
        new_w = max(1, int(round(self.width * factor)))
        new_h = max(1, int(round(self.height * factor)))
        sx, sy = new_w / self.width, new_h / self.height
        K = self.K.clone()
        K[:, 0, :] *= sx
        K[:, 1, :] *= sy
        # Distortion acts on normalized coordinates, so its coefficients do not change with the image size.
        return replace(self, K=K, width=new_w, height=new_h)

    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points ``[N, 3]`` into every camera, applying the lens distortion.

        Returns ``uv [C, N, 2]`` in pixel coordinates (pixel centers at +0.5) and camera-space ``z [C, N]``.
        For ``"pinhole"`` and ``"opencv"`` only points with ``z > 0`` have a meaningful ``uv``. For
        ``"fisheye"``, ``uv`` is meaningful for every direction except straight behind (``theta < pi``), so
        ``z <= 0`` does not mean invisible there: test ``uv`` against the image bounds (and the lens's field
        of view) instead.
        """
        if points.ndim != 2 or points.shape[-1] != 3:
            raise ValueError(f"points must have shape [N, 3], got {tuple(points.shape)}")
        w2c = self.world_to_cam.to(points.dtype)
        p_cam = torch.einsum("cij,nj->cni", w2c[:, :3, :3], points) + w2c[:, None, :3, 3]
        z = p_cam[..., 2]
        K = self.K.to(points.dtype)
        if self.is_pinhole:
            uv = torch.einsum("cij,cnj->cni", K[:, :2, :], p_cam / z[..., None])
            return uv, z
        k = self.distortion.to(points.dtype)
        if self.model == "opencv":
            xd, yd = _opencv_distort(p_cam[..., :2] / z[..., None], k)[:2]
        else:
            # The clamp keeps sqrt's gradient finite on the axis, where theta_d / r -> 1 / z anyway.
            r = p_cam[..., :2].square().sum(-1).clamp_min(1e-24).sqrt()
            theta_d = _fisheye_poly(torch.atan2(r, z), k)[0]
            xd, yd = (p_cam[..., :2] * (theta_d / r)[..., None]).unbind(-1)
        uv = torch.einsum("cij,cnj->cni", K[:, :2, :], torch.stack([xd, yd, torch.ones_like(xd)], dim=-1))
        return uv, z

    def clip_matrices(self, near: float = 0.01, far: float = 100.0) -> torch.Tensor:
        """World-to-clip matrices ``[C, 4, 4]`` for the mesh rasterizer (see ``docs/mesh.md``).

        ``clip = M @ [x, y, z, 1]_world`` with ``clip_w`` = camera-space z and
        ``ndc = clip[:3] / clip_w``: ``ndc_x = 2 u / W - 1``, ``ndc_y = 2 v / H - 1`` for the pixel coordinates
        ``(u, v)`` of :meth:`project` (so NDC -1 is the left / top image edge and row 0 is the top row, as in
        the rest of recon), and ``ndc_z`` maps camera z in ``[near, far]`` to ``[-1, 1]``.
        Raises ``ValueError`` unless ``0 < near < far``.
        """
        if not (0.0 < near < far):
            raise ValueError(f"clip planes must satisfy 0 < near < far, got near={near}, far={far}")
        K = self.K
        proj = torch.zeros(len(self), 4, 4, dtype=K.dtype, device=K.device)
        proj[:, 0, 0] = 2.0 * K[:, 0, 0] / self.width
        proj[:, 0, 1] = 2.0 * K[:, 0, 1] / self.width
        proj[:, 0, 2] = 2.0 * K[:, 0, 2] / self.width - 1.0
        proj[:, 1, 1] = 2.0 * K[:, 1, 1] / self.height
        proj[:, 1, 2] = 2.0 * K[:, 1, 2] / self.height - 1.0
        proj[:, 2, 2] = (far + near) / (far - near)
        proj[:, 2, 3] = -2.0 * far * near / (far - near)
        proj[:, 3, 2] = 1.0
        return proj @ self.world_to_cam.to(K.dtype)

    def rays(self, pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space rays through pixel centers.

        Args:
            pixels: optional ``[C, P, 2]`` pixel coordinates (continuous; a pixel center is ``i + 0.5``).
                Default: every pixel center, giving ``P = H * W`` in row-major order.
        Returns:
            ``origins [C, P, 3]`` and unit ``directions [C, P, 3]``. Note that the distance along a unit
            direction differs from camera-space z; ``z = t * (d . forward)``. Distortion is inverted by
            Newton's method (``"fisheye"`` directions may point more than 90 degrees off the axis).
        """
        C = len(self)
        K = self.K
        if pixels is None:
            ys, xs = torch.meshgrid(torch.arange(self.height, dtype=K.dtype, device=K.device) + 0.5,
                                    torch.arange(self.width, dtype=K.dtype, device=K.device) + 0.5, indexing="ij")
            pixels = torch.stack([xs, ys], dim=-1).reshape(1, -1, 2).expand(C, -1, -1)
        elif pixels.ndim != 3 or pixels.shape[0] != C or pixels.shape[-1] != 2:
            raise ValueError(f"pixels must have shape [C={C}, P, 2], got {tuple(pixels.shape)}")
        pixels = pixels.to(K.dtype)
        y = (pixels[..., 1] - K[:, None, 1, 2]) / K[:, None, 1, 1]
        x = (pixels[..., 0] - K[:, None, 0, 2] - K[:, None, 0, 1] * y) / K[:, None, 0, 0]  # skew, as in project
        if self.model == "fisheye":
            d_cam = _fisheye_unproject(torch.stack([x, y], dim=-1), self.distortion.to(K.dtype))
        else:
            if self.model == "opencv":
                x, y = _opencv_undistort(torch.stack([x, y], dim=-1), self.distortion.to(K.dtype)).unbind(-1)
            d_cam = torch.stack([x, y, torch.ones_like(x)], dim=-1)
        c2w = self.cam_to_world().to(K.dtype)
        d_world = torch.einsum("cij,cpj->cpi", c2w[:, :3, :3], d_cam)
        d_world = d_world / d_world.norm(dim=-1, keepdim=True)
        origins = c2w[:, None, :3, 3].expand_as(d_world)
        return origins, d_world
