"""Distortion models and image undistortion, pinned by hand-computed values and a synthetic round trip."""

import math

import pytest
import torch

from recon.cameras import intrinsics_matrix
from recon.data.undistort import Distortion, distort_points, undistort_image, undistort_points, undistortion_grid


def test_opencv_distortion_hand_computed():
    # x = 0.3, y = -0.2: r2 = 0.13, radial = 1 + 0.1 * 0.13 + 0.01 * 0.13^2 = 1.013169
    # x_d = 0.3 * 1.013169 + 2 * 0.001 * 0.3 * -0.2 + 0.002 * (0.13 + 2 * 0.09) = 0.3044507
    # y_d = -0.2 * 1.013169 + 0.001 * (0.13 + 2 * 0.04) + 2 * 0.002 * 0.3 * -0.2 = -0.2026638
    d = Distortion("OPENCV", k1=0.1, k2=0.01, p1=0.001, p2=0.002)
    out = distort_points(torch.tensor([0.3, -0.2], dtype=torch.float64), d)
    torch.testing.assert_close(out, torch.tensor([0.3044507, -0.2026638], dtype=torch.float64), atol=1e-9, rtol=0)


def test_fisheye_distortion_hand_computed():
    # r = 0.5, theta = atan(0.5), theta_d = theta (1 + 0.1 theta^2 - 0.02 theta^4); (x_d, y_d) = theta_d / r (x, y)
    theta = math.atan(0.5)
    theta_d = theta * (1 + 0.1 * theta**2 - 0.02 * theta**4)
    d = Distortion("OPENCV_FISHEYE", k1=0.1, k2=-0.02)
    out = distort_points(torch.tensor([0.3, 0.4], dtype=torch.float64), d)
    torch.testing.assert_close(out, torch.tensor([0.3, 0.4], dtype=torch.float64) * theta_d / 0.5, atol=1e-12, rtol=0)


@pytest.mark.parametrize("dist", [
    Distortion("OPENCV", k1=-0.2, k2=0.05, k3=0.01, p1=0.002, p2=-0.001),
    Distortion("OPENCV", k1=0.0578421, k2=-0.0805099, p1=-0.000980296, p2=0.00015575),  # the fox lens
    Distortion("OPENCV_FISHEYE", k1=0.05, k2=-0.01, k3=0.002, k4=-0.0005),
])
def test_undistort_points_inverts_distort_points(dist):
    g = torch.Generator().manual_seed(0)
    xy = (torch.rand(200, 2, generator=g, dtype=torch.float64) - 0.5) * 1.2
    torch.testing.assert_close(undistort_points(distort_points(xy, dist), dist), xy, atol=1e-9, rtol=0)


def test_identity_distortion_keeps_pixel_centers():
    # A zero distortion must map each pixel center onto itself (align_corners=False with +0.5 centers), so the
    # image comes back bit-exact: pins the half-pixel convention of the sampling grid.
    g = torch.Generator().manual_seed(1)
    img = torch.rand(13, 17, 4, generator=g)
    img[..., 3] = 1.0
    K = intrinsics_matrix(20.0, 21.0, 8.1, 6.3)
    out = undistort_image(img, K, Distortion("OPENCV"))
    torch.testing.assert_close(out, img, atol=1e-6, rtol=0)


def _pattern(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A smooth RGB test image as a function of continuous pixel coordinates."""
    return torch.stack([0.5 + 0.3 * torch.sin(2 * math.pi * u / 41.0) * torch.cos(2 * math.pi * v / 33.0),
                        0.5 + 0.3 * torch.cos(2 * math.pi * (u + v) / 57.0),
                        0.2 + 0.6 * (u / 160.0)], dim=-1)


@pytest.mark.parametrize("dist", [
    Distortion("OPENCV", k1=-0.25, k2=0.06, p1=0.003, p2=-0.002),
    Distortion("OPENCV_FISHEYE", k1=0.08, k2=-0.02),
])
def test_undistort_image_recovers_pinhole_image(dist):
    """Render the distorted image of a known pinhole image I (each distorted pixel center looks up I at its
    undistorted location, found by fixed-point iteration), undistort it, and compare to I."""
    W, H = 160, 120
    K = intrinsics_matrix(150.0, 148.0, 83.2, 57.9)
    v, u = torch.meshgrid(torch.arange(H, dtype=torch.float64) + 0.5, torch.arange(W, dtype=torch.float64) + 0.5,
                          indexing="ij")
    xy_d = torch.stack([(u - 83.2) / 150.0, (v - 57.9) / 148.0], dim=-1)
    xy = undistort_points(xy_d, dist)
    distorted = torch.ones(H, W, 4)
    distorted[..., :3] = _pattern(150.0 * xy[..., 0] + 83.2, 148.0 * xy[..., 1] + 57.9).float()

    out = undistort_image(distorted, K, dist)
    expected = _pattern(u, v).float()
    valid = out[..., 3] == 1
    # interior: valid pixels at least 2 px away from any invalid one (bilinear clamps near the edge)
    interior = -torch.nn.functional.max_pool2d(-valid[None, None].float(), 5, stride=1, padding=2)[0, 0] > 0.5
    interior[:2], interior[-2:], interior[:, :2], interior[:, -2:] = False, False, False, False
    assert interior.float().mean() > 0.7
    # Bilinear interpolation error of this pattern is <= h^2/8 |I''| ~ 0.3 (2 pi / 33)^2 / 8 ~ 1.4e-3 per unit
    # stretch^2; 4e-3 leaves room for the local magnification of the lens.
    err = (out[..., :3] - expected).abs()[interior]
    assert err.max() < 4e-3, float(err.max())
    # sanity: the distortion is strong enough that skipping undistortion would fail this tolerance
    assert (distorted[..., :3] - expected).abs()[interior].max() > 0.05


def test_pixels_mapping_outside_get_zero_alpha():
    # Pincushion (k1 > 0) pushes the corners' distorted locations outside the photo.
    W, H = 64, 48
    K = intrinsics_matrix(40.0, 40.0, 32.0, 24.0)
    dist = Distortion("OPENCV", k1=0.3)
    out = undistort_image(torch.ones(H, W, 4), K, dist)
    assert out[0, 0, 3] == 0 and out[-1, -1, 3] == 0
    assert out[H // 2, W // 2, 3] == 1
    _, valid = undistortion_grid(K, dist, W, H)
    assert torch.equal(out[..., 3] > 0, valid)
    assert torch.all(out[..., :3][~valid] == 0)


def test_transparent_source_does_not_bleed():
    # Straight alpha: a transparent red region next to opaque green must not tint the green after resampling.
    img = torch.zeros(20, 20, 4)
    img[:, :10] = torch.tensor([1.0, 0.0, 0.0, 0.0])
    img[:, 10:] = torch.tensor([0.0, 1.0, 0.0, 1.0])
    out = undistort_image(img, intrinsics_matrix(30.0, 30.0, 10.3, 10.0), Distortion("OPENCV", k1=-0.1))
    visible = out[..., 3] > 0.01
    assert torch.all(out[..., 0][visible] < 1e-5)


def test_distortion_validation():
    with pytest.raises(ValueError, match="unsupported distortion model 'FOV'"):
        Distortion("FOV")
    with pytest.raises(ValueError, match="k4"):
        Distortion("OPENCV", k4=0.1)
    with pytest.raises(ValueError, match=r"\[H, W, 4\]"):
        undistort_image(torch.zeros(4, 4, 3), intrinsics_matrix(1, 1, 2, 2), Distortion())
