"""Lens distortion models and image undistortion (pure torch, vectorized).

Models (the OpenCV / COLMAP definitions), on normalized camera coordinates ``x = X / Z``, ``y = Y / Z``:

* ``OPENCV`` (k1, k2, k3, p1, p2)::

      r2 = x^2 + y^2,   radial = 1 + k1 r2 + k2 r2^2 + k3 r2^3
      x_d = x radial + 2 p1 x y + p2 (r2 + 2 x^2)
      y_d = y radial + p1 (r2 + 2 y^2) + 2 p2 x y

  COLMAP's SIMPLE_RADIAL (k) and RADIAL (k1, k2) are special cases (the other coefficients zero).
* ``OPENCV_FISHEYE`` (k1..k4, equidistant)::

      r = sqrt(x^2 + y^2),  theta = atan(r),  theta_d = theta (1 + k1 t^2 + k2 t^4 + k3 t^6 + k4 t^8)  (t = theta)
      (x_d, y_d) = (theta_d / r) (x, y)

Distorted pixels are ``u_d = fx x_d + cx``, ``v_d = fy y_d + cy`` with the same ``K`` as the pinhole.

Loaders either undistort at load (``distortion="undistort"``, below) or keep the images and hand the lens to
:class:`~recon.cameras.Cameras` (``distortion="keep"``, :meth:`Distortion.camera_model`).

Undistortion at load (:func:`undistort_image`) resamples an image to a *pinhole camera with the same K and the
same size*: for every output pixel center ``(i + 0.5, j + 0.5)`` it takes the pinhole ray, applies the forward
distortion and samples the source bilinearly there. Output pixels whose distorted location falls outside the
source image (or beyond the radius where the polynomial stops being monotonic, i.e. folds back) get alpha 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["Distortion", "distort_points", "undistort_points", "undistortion_grid", "undistort_image",
           "undistort_planar"]

_MODELS = ("OPENCV", "OPENCV_FISHEYE")


@dataclass(frozen=True)
class Distortion:
    """Distortion coefficients of one camera (unused coefficients are 0).

    Attributes:
        model: "OPENCV" (k1, k2, k3, p1, p2) or "OPENCV_FISHEYE" (k1..k4).
    """

    model: str = "OPENCV"
    k1: float = 0.0
    k2: float = 0.0
    k3: float = 0.0
    k4: float = 0.0
    p1: float = 0.0
    p2: float = 0.0

    def __post_init__(self) -> None:
        if self.model not in _MODELS:
            raise ValueError(f"unsupported distortion model {self.model!r}; supported: {', '.join(_MODELS)}")
        if self.model == "OPENCV" and self.k4 != 0.0:
            raise ValueError("the OPENCV model has no k4 (got k4 != 0); use OPENCV_FISHEYE or drop k4")
        if self.model == "OPENCV_FISHEYE" and (self.p1 != 0.0 or self.p2 != 0.0):
            raise ValueError("the OPENCV_FISHEYE model has no tangential terms p1, p2")

    @property
    def is_identity(self) -> bool:
        """True for the OPENCV model with all coefficients 0 (a plain pinhole)."""
        return self.model == "OPENCV" and not any((self.k1, self.k2, self.k3, self.k4, self.p1, self.p2))

    def camera_model(self) -> tuple[str, tuple[float, ...]]:
        """The :class:`~recon.cameras.Cameras` lens model and coefficients of this distortion.

        ``("pinhole", ())`` for the identity; OPENCV -> ``("opencv", (k1, k2, p1, p2, k3))`` (OpenCV's
        ``distCoeffs`` order; note the field order here is k1, k2, k3, p1, p2); OPENCV_FISHEYE ->
        ``("fisheye", (k1, k2, k3, k4))``, which stays fisheye even with all-zero coefficients (the equidistant
        lens, not a pinhole).
        """
        if self.is_identity:
            return "pinhole", ()
        if self.model == "OPENCV":
            return "opencv", (self.k1, self.k2, self.p1, self.p2, self.k3)
        return "fisheye", (self.k1, self.k2, self.k3, self.k4)


def distort_points(xy: torch.Tensor, dist: Distortion) -> torch.Tensor:
    """Apply the forward distortion to normalized points ``xy [..., 2]`` -> distorted ``[..., 2]``."""
    x, y = xy[..., 0], xy[..., 1]
    r2 = x * x + y * y
    if dist.model == "OPENCV":
        radial = 1 + r2 * (dist.k1 + r2 * (dist.k2 + r2 * dist.k3))
        xd = x * radial + 2 * dist.p1 * x * y + dist.p2 * (r2 + 2 * x * x)
        yd = y * radial + dist.p1 * (r2 + 2 * y * y) + 2 * dist.p2 * x * y
        return torch.stack([xd, yd], dim=-1)
    r = r2.sqrt()
    theta = torch.atan(r)
    t2 = theta * theta
    theta_d = theta * (1 + t2 * (dist.k1 + t2 * (dist.k2 + t2 * (dist.k3 + t2 * dist.k4))))
    # theta_d / r -> 1 as r -> 0; guard the division (where() alone would still produce NaN gradients).
    scale = torch.where(r > 1e-12, theta_d / r.clamp_min(1e-12), torch.ones_like(r))
    return xy * scale[..., None]


def undistort_points(xy_d: torch.Tensor, dist: Distortion, iterations: int = 50) -> torch.Tensor:
    """Invert :func:`distort_points` for ``xy_d [..., 2]`` by fixed-point iteration (as OpenCV's undistortPoints).

    ``x <- (x_d - tangential(x)) / radial(x)`` for OPENCV; ``theta <- theta_d / poly(theta)`` for the fisheye.
    Converges for the mild distortion of real lenses (inside the monotonic region); not differentiable-exact.
    """
    if dist.model == "OPENCV":
        xd, yd = xy_d[..., 0], xy_d[..., 1]
        x, y = xd.clone(), yd.clone()
        for _ in range(iterations):
            r2 = x * x + y * y
            radial = 1 + r2 * (dist.k1 + r2 * (dist.k2 + r2 * dist.k3))
            dx = 2 * dist.p1 * x * y + dist.p2 * (r2 + 2 * x * x)
            dy = dist.p1 * (r2 + 2 * y * y) + 2 * dist.p2 * x * y
            x, y = (xd - dx) / radial, (yd - dy) / radial
        return torch.stack([x, y], dim=-1)
    theta_d = xy_d.norm(dim=-1)
    theta = theta_d.clone()
    for _ in range(iterations):
        t2 = theta * theta
        theta = theta_d / (1 + t2 * (dist.k1 + t2 * (dist.k2 + t2 * (dist.k3 + t2 * dist.k4))))
    r = torch.tan(theta.clamp(max=math.pi / 2 - 1e-6))
    scale = torch.where(theta_d > 1e-12, r / theta_d.clamp_min(1e-12), torch.ones_like(r))
    return xy_d * scale[..., None]


def _fold_radius(dist: Distortion, r_max: float) -> float:
    """Smallest normalized radius in [0, r_max] where the radial map stops increasing (inf if it never does)."""
    r = torch.linspace(0.0, max(r_max, 1e-6), 4097, dtype=torch.float64)
    if dist.model == "OPENCV":
        r2 = r * r
        deriv = 1 + r2 * (3 * dist.k1 + r2 * (5 * dist.k2 + r2 * 7 * dist.k3))  # d/dr [r radial(r)]
    else:
        t2 = torch.atan(r) ** 2
        deriv = 1 + t2 * (3 * dist.k1 + t2 * (5 * dist.k2 + t2 * (7 * dist.k3 + t2 * 9 * dist.k4)))
    bad = (deriv <= 0).nonzero()
    return float(r[bad[0, 0]]) if len(bad) else math.inf


def undistortion_grid(K: torch.Tensor, dist: Distortion, width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampling grid that undistorts a ``width x height`` image to a pinhole camera with the same ``K [3, 3]``.

    Returns ``grid [H, W, 2]`` (float32, for ``grid_sample(..., align_corners=False)``: -1 and +1 are the outer
    *edges* of the border pixels, so a continuous pixel coordinate ``u`` maps to ``2 u / W - 1``) and
    ``valid [H, W]`` (bool: the distorted location lies inside the source image and inside the monotonic region).
    """
    K = K.to(torch.float64)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float64) + 0.5,
                          torch.arange(width, dtype=torch.float64) + 0.5, indexing="ij")
    xy = torch.stack([(u - cx) / fx, (v - cy) / fy], dim=-1)
    xy_d = distort_points(xy, dist)
    ud = fx * xy_d[..., 0] + cx
    vd = fy * xy_d[..., 1] + cy
    r = xy.norm(dim=-1)
    valid = (ud >= 0) & (ud <= width) & (vd >= 0) & (vd <= height) & (r < _fold_radius(dist, float(r.max())))
    grid = torch.stack([2 * ud / width - 1, 2 * vd / height - 1], dim=-1)
    return grid.to(torch.float32), valid


def undistort_image(image: torch.Tensor, K: torch.Tensor, dist: Distortion,
                    grid: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Undistort ``image [H, W, 4]`` (straight alpha in channel 3) to the pinhole camera with the same ``K``.

    Colors are resampled premultiplied (so transparent source pixels do not bleed) and un-premultiplied after;
    output alpha is 0 where the distorted location falls outside the source. ``grid`` optionally passes a
    precomputed :func:`undistortion_grid` result (reused across images that share a camera).
    Returns ``[H, W, 4]`` float32.
    """
    if image.ndim != 3 or image.shape[-1] != 4:
        raise ValueError(f"image must have shape [H, W, 4], got {tuple(image.shape)}")
    H, W = image.shape[:2]
    g = grid if grid is not None else undistortion_grid(K, dist, W, H)
    return undistort_planar(image.permute(2, 0, 1).float(), g).permute(1, 2, 0)


def undistort_planar(image: torch.Tensor, grid: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """:func:`undistort_image` on a channel-first ``[4, H, W]`` float32 image with a precomputed grid (the fast
    path for large photos: every op runs on contiguous planes). Returns ``[4, H, W]``."""
    g, valid = grid
    g = g[None].to(image.device)
    valid = valid.to(device=image.device, dtype=image.dtype)  # a no-op when the caller cached a float mask
    alpha = image[3]
    # "border" padding: samples within half a pixel of the edge clamp to the edge pixel instead of fading to 0;
    # samples truly outside are removed by `valid`.
    if bool((alpha == 1).all()):  # opaque: no premultiplication needed, alpha is the validity mask
        rgb = F.grid_sample(image[None, :3], g, mode="bilinear", padding_mode="border", align_corners=False)[0]
        out = torch.empty_like(image)
        torch.mul(rgb, valid, out=out[:3])
        out[3] = valid
        return out
    premul = torch.cat([image[:3] * alpha, alpha[None]], dim=0)
    out = F.grid_sample(premul[None], g, mode="bilinear", padding_mode="border", align_corners=False)[0]
    a = out[3] * valid
    rgb = torch.where(out[3] > 1e-6, out[:3] / out[3].clamp_min(1e-6), torch.zeros_like(out[:3]))
    return torch.cat([rgb * (a > 0), a[None]], dim=0)
