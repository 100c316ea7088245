"""Pins recon's camera conventions with hand-computed examples."""

import math

import pytest
import torch

from recon.cameras import (Cameras, colmap_to_world_to_cam, intrinsics_matrix, look_at, opengl_c2w_to_world_to_cam,
                           quat_wxyz_to_rotmat)


def _cam(w2c, K=None, w=100, h=80):
    K = intrinsics_matrix(50.0, 50.0, 50.0, 40.0) if K is None else K
    return Cameras(w2c[None].float(), K[None].float(), w, h)


def test_identity_camera_projects_with_half_pixel_centers():
    # OpenCV: +z forward, +x right, +y down. A point on the optical axis lands on the principal point
    # (50, 40), i.e. the corner shared by pixels (49..50, 39..40) of a 100x80 image: the image center.
    cams = _cam(torch.eye(4, dtype=torch.float64))
    uv, z = cams.project(torch.tensor([[0.0, 0.0, 2.0], [1.0, 0.5, 2.0]]))
    assert torch.allclose(uv[0, 0], torch.tensor([50.0, 40.0]))
    # x = 1, z = 2 -> u = 50 * 0.5 + 50 = 75; y = 0.5 -> v = 50 * 0.25 + 40 = 52.5 (below the center: y down)
    assert torch.allclose(uv[0, 1], torch.tensor([75.0, 52.5]))
    assert torch.allclose(z[0], torch.tensor([2.0, 2.0]))


def test_rays_go_through_pixel_centers():
    cams = _cam(torch.eye(4, dtype=torch.float64))
    origins, dirs = cams.rays()
    assert dirs.shape == (1, 80 * 100, 3)
    # Pixel (0, 0) has its center at (0.5, 0.5): direction ((0.5 - 50) / 50, (0.5 - 40) / 50, 1), normalized.
    expected = torch.tensor([(0.5 - 50) / 50, (0.5 - 40) / 50, 1.0])
    assert torch.allclose(dirs[0, 0], expected / expected.norm(), atol=1e-6)
    # Round trip: a point along the ray of pixel (i, j) projects back to (i + 0.5, j + 0.5).
    p = origins[0, 123] + 3.0 * dirs[0, 123]
    uv, _ = cams.project(p[None].float())
    assert torch.allclose(uv[0, 0], torch.tensor([123 % 100 + 0.5, 123 // 100 + 0.5]), atol=1e-4)


def test_opengl_c2w_conversion():
    # A Blender camera at (0, -4, 0) looking at the origin along +y with +z up: its OpenGL axes are
    # x_cam = (1,0,0), y_cam (up) = (0,0,1), z_cam (backward) = (0,-1,0).
    c2w = torch.tensor([[1.0, 0, 0, 0], [0, 0, -1, -4], [0, 1, 0, 0], [0, 0, 0, 1]], dtype=torch.float64)
    w2c = opengl_c2w_to_world_to_cam(c2w)
    cams = _cam(w2c)
    assert torch.allclose(cams.centers()[0], torch.tensor([0.0, -4.0, 0.0]), atol=1e-6)
    uv, z = cams.project(torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert torch.allclose(z[0, 0], torch.tensor(4.0))  # the origin is 4 units in front
    assert torch.allclose(uv[0, 0], torch.tensor([50.0, 40.0]))
    assert uv[0, 1, 1] < 40.0  # world up (+z) appears above the center (smaller row)
    assert uv[0, 2, 0] > 50.0  # world +x appears to the right


def test_colmap_pose_and_quaternion():
    # 90 degrees about z: q = (cos 45, 0, 0, sin 45); R maps x -> y.
    q = torch.tensor([math.cos(math.pi / 4), 0.0, 0.0, math.sin(math.pi / 4)], dtype=torch.float64)
    R = quat_wxyz_to_rotmat(q)
    assert torch.allclose(R @ torch.tensor([1.0, 0, 0], dtype=torch.float64),
                          torch.tensor([0.0, 1, 0], dtype=torch.float64), atol=1e-12)
    w2c = colmap_to_world_to_cam(q, torch.tensor([0.0, 0.0, 5.0]))
    cams = _cam(w2c)
    # camera center = -R^T t = -(R^T)(0, 0, 5) = (0, 0, -5)
    assert torch.allclose(cams.centers()[0], torch.tensor([0.0, 0.0, -5.0]), atol=1e-6)


def test_scaled_intrinsics_keep_pixel_edges():
    cams = _cam(torch.eye(4, dtype=torch.float64), K=intrinsics_matrix(100.0, 100.0, 50.0, 40.0))
    half = cams.scaled(0.5)
    assert (half.width, half.height) == (50, 40)
    assert torch.allclose(half.K[0], torch.tensor([[50.0, 0, 25], [0, 50, 20], [0, 0, 1]]))


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"world_to_cam must have shape \[C, 4, 4\]"):
        Cameras(torch.eye(3)[None], torch.eye(3)[None], 4, 4)
    with pytest.raises(ValueError, match="NaN"):
        Cameras(torch.full((1, 4, 4), float("nan")), torch.eye(3)[None], 4, 4)
    with pytest.raises(ValueError, match="quaternions"):
        quat_wxyz_to_rotmat(torch.zeros(3))


OPENCV_K = (-0.3, 0.1, 1e-3, -1e-3, 0.0)  # k1, k2, p1, p2, k3
FISHEYE_K = (0.05, -0.01, 0.002, 0.0)  # k1..k4


def _lens(model, dist, f, w=64, h=48, eye=(0.3, -2.0, 0.5)):
    """One float64 camera looking at the origin from ``eye`` with focal length ``f`` and a centered principal point."""
    K = intrinsics_matrix(f, 1.1 * f, w / 2, h / 2)[None]
    return Cameras(look_at(torch.tensor([eye])), K, w, h, model, torch.tensor([dist], dtype=torch.float64))


def _round_trip(cams):
    """Pixel centers -> rays -> points 2.5 units along them -> pixels. Returns (error [P] px, camera-space dirs)."""
    o, d = cams.rays()
    ys, xs = torch.meshgrid(torch.arange(cams.height) + 0.5, torch.arange(cams.width) + 0.5, indexing="ij")
    pixels = torch.stack([xs, ys], dim=-1).reshape(-1, 2).double()
    uv, _ = cams.project(o[0] + 2.5 * d[0])
    assert torch.allclose(d.norm(dim=-1), torch.ones(1, dtype=torch.float64), atol=1e-12)
    return (uv[0] - pixels).norm(dim=-1), d[0] @ cams.world_to_cam[0, :3, :3].T


def test_opencv_and_fisheye_round_trip():
    cams = _lens("opencv", OPENCV_K, f=50.0)
    err, _ = _round_trip(cams)
    # 1e-3 px is the brief's bound; the Newton solve reaches < 1e-6 in normalized units (f = 50 px).
    assert err.max() < 1e-3 and err.max() < 50.0 * 1e-6
    # Sanity: the distortion is strong enough that a pinhole inverse would miss by pixels at the corners.
    pin = Cameras(cams.world_to_cam, cams.K, cams.width, cams.height)
    o, d = pin.rays()
    assert (cams.project(o[0] + 2.5 * d[0])[0][0] - pin.project(o[0] + 2.5 * d[0])[0][0]).norm(dim=-1).max() > 3

    # f = 20 px: the image corner (40 px from the center) has theta_d ~ 2.0 rad, i.e. theta ~ 1.79 rad (~103 deg).
    cams = _lens("fisheye", FISHEYE_K, f=20.0)
    err, d_cam = _round_trip(cams)
    assert err.max() < 1e-3
    theta = torch.atan2(d_cam[:, :2].norm(dim=-1), d_cam[:, 2])
    assert (d_cam[:, 2] < 0).any() and theta.max() > math.radians(95)  # rays behind the image plane exist
    # ...and they project correctly, although their camera-space z is negative.
    o, d = cams.rays()
    uv, z = cams.project(o[0] + 2.5 * d[0])
    assert (z[0] < 0).any() and err[z[0] < 0].max() < 1e-3


def test_distortion_hand_computed():
    # OpenCV: camera point (0.4, -0.2, 2) -> x = 0.2, y = -0.1, r2 = 0.05; k1..k3 = -0.3, 0.1, 0.01,
    # p1 = 1e-3, p2 = -1e-3. radial = 1 - 0.3 * 0.05 + 0.1 * 0.0025 + 0.01 * 0.000125 = 0.98525125.
    # x_d = 0.2 * radial + 2 p1 x y + p2 (r2 + 2 x^2) = 0.19705025 - 0.00004 - 0.00013 = 0.19688025
    # y_d = -0.1 * radial + p1 (r2 + 2 y^2) + 2 p2 x y = -0.098525125 + 0.00007 + 0.00004 = -0.098415125
    # u = 100 x_d + 32 = 51.688025, v = 120 y_d + 24 = 12.190185
    K = intrinsics_matrix(100.0, 120.0, 32.0, 24.0)[None]
    eye = torch.eye(4, dtype=torch.float64)[None]
    cams = Cameras(eye, K, 64, 48, "opencv", torch.tensor([[-0.3, 0.1, 1e-3, -1e-3, 0.01]], dtype=torch.float64))
    uv, z = cams.project(torch.tensor([[0.4, -0.2, 2.0]], dtype=torch.float64))
    assert torch.allclose(uv[0, 0], torch.tensor([51.688025, 12.190185], dtype=torch.float64), atol=1e-9)
    assert z[0, 0] == 2.0

    # Fisheye, k = (0.05, -0.01, 0.002, 0.0005), fx = 80, fy = 90, c = (32, 24). Three camera points:
    # (1, 1, sqrt 2): theta = pi/4 along (1, 1)/sqrt 2; (0, 2, -2): theta = 3 pi/4 (behind!) along (0, 1);
    # (0, 0, 3): on the axis -> the principal point.
    k = (0.05, -0.01, 0.002, 0.0005)
    cams = Cameras(eye, intrinsics_matrix(80.0, 90.0, 32.0, 24.0)[None], 64, 48, "fisheye",
                   torch.tensor([k], dtype=torch.float64))
    pts = torch.tensor([[1.0, 1.0, math.sqrt(2)], [0.0, 2.0, -2.0], [0.0, 0.0, 3.0]], dtype=torch.float64,
                       requires_grad=True)
    uv, z = cams.project(pts)

    def theta_d(t):
        return t * (1 + k[0] * t**2 + k[1] * t**4 + k[2] * t**6 + k[3] * t**8)

    a, b = theta_d(math.pi / 4), theta_d(3 * math.pi / 4)  # 0.80705888..., 4.20945847...
    expected = torch.tensor([[80 * a / math.sqrt(2) + 32, 90 * a / math.sqrt(2) + 24], [32.0, 90 * b + 24],
                             [32.0, 24.0]], dtype=torch.float64)
    assert torch.allclose(uv[0], expected, atol=1e-9)
    assert torch.allclose(z[0], torch.tensor([math.sqrt(2), -2.0, 3.0], dtype=torch.float64))
    # On the axis the projection is smooth: d u / d X = fx / z (the pinhole limit), no NaN from r = 0.
    (grad,) = torch.autograd.grad(uv[0, 2, 0], pts)
    assert torch.isfinite(grad).all() and math.isclose(grad[2, 0].item(), 80.0 / 3.0, rel_tol=1e-9)


def test_distortion_matches_opencv():
    cv2 = pytest.importorskip("cv2")
    np = pytest.importorskip("numpy")
    gen = torch.Generator().manual_seed(0)
    rvec, tvec = np.array([0.1, -0.2, 0.05]), np.array([0.2, -0.1, 0.3])
    w2c = torch.eye(4, dtype=torch.float64)
    w2c[:3, :3] = torch.from_numpy(cv2.Rodrigues(rvec)[0])
    w2c[:3, 3] = torch.from_numpy(tvec)
    K = intrinsics_matrix(60.0, 55.0, 33.0, 23.0)
    # Points in front of the camera, up to ~50 degrees off axis (cv2.fisheye uses atan(r / z): z > 0 only).
    cam_pts = torch.rand(200, 3, generator=gen, dtype=torch.float64) * torch.tensor([2.4, 2.4, 2.0]) \
        - torch.tensor([1.2, 1.2, -1.0])
    pts = (cam_pts - w2c[:3, 3]) @ w2c[:3, :3]  # world = R^T (cam - t)
    for model, dist, project in (("opencv", OPENCV_K, cv2.projectPoints),
                                 ("fisheye", (0.05, -0.01, 0.002, 0.001), cv2.fisheye.projectPoints)):
        cams = Cameras(w2c[None], K[None], 64, 48, model, torch.tensor([dist], dtype=torch.float64))
        uv, _ = cams.project(pts)
        ref = project(pts.numpy()[None], rvec, tvec, K.numpy(), np.array(dist))[0].reshape(-1, 2)
        assert np.abs(uv[0].numpy() - ref).max() < 1e-4, model


def test_pinhole_unchanged():
    cams = Cameras(look_at(torch.tensor([[1.0, -3.0, 0.7], [0.5, 2.0, 1.0]])),
                   torch.stack([intrinsics_matrix(40.0, 42.0, 15.0, 13.0), intrinsics_matrix(30.0, 30.0, 16.0, 12.0)]),
                   32, 24)
    assert cams.model == "pinhole" and cams.distortion is None and cams.is_pinhole
    R, t, K = cams.world_to_cam[:, :3, :3], cams.world_to_cam[:, :3, 3], cams.K
    pixels = torch.tensor([[[0.5, 0.5], [31.5, 23.5], [7.25, 19.0]]] * 2, dtype=torch.float64)
    o, d = cams.rays(pixels)
    # d = R^T K^-1 (u, v, 1), normalized; origins = camera centers -R^T t.
    d_ref = torch.einsum("cji,cjk,cpk->cpi", R, torch.linalg.inv(K), torch.cat([pixels, torch.ones(2, 3, 1)], -1))
    assert torch.allclose(d, d_ref / d_ref.norm(dim=-1, keepdim=True), atol=1e-12)
    assert torch.allclose(o, (-R.transpose(1, 2) @ t[..., None])[:, None, :, 0].expand(-1, 3, -1), atol=1e-12)
    pts = torch.tensor([[0.1, 0.2, 0.3], [-0.5, 0.0, 0.4]], dtype=torch.float64)
    uv, z = cams.project(pts)
    p_cam = torch.einsum("cij,nj->cni", R, pts) + t[:, None]
    assert torch.allclose(z, p_cam[..., 2], atol=1e-12)
    assert torch.allclose(uv, torch.einsum("cij,cnj->cni", K, p_cam / p_cam[..., 2:])[..., :2], atol=1e-12)


def test_distortion_is_carried():
    cams = Cameras.cat([_lens("opencv", OPENCV_K, f=50.0), _lens("opencv", (0.1, 0, 0, 0, 0), f=50.0)])
    assert cams.distortion.shape == (2, 5)
    for derived in (cams[1], cams[1:], cams.to(dtype=torch.float32), cams.scaled(0.5)):
        assert derived.model == "opencv" and not derived.is_pinhole
    assert torch.equal(cams[1].distortion, cams.distortion[1:])
    assert cams.to(dtype=torch.float32).distortion.dtype == torch.float32
    half = cams.scaled(0.5)
    assert torch.equal(half.distortion, cams.distortion) and torch.allclose(half.K[:, :2], cams.K[:, :2] / 2)


def test_distortion_errors():
    w2c, K = torch.eye(4)[None], torch.eye(3)[None]
    with pytest.raises(ValueError, match="model must be one of 'pinhole', 'opencv', 'fisheye', got 'radial'"):
        Cameras(w2c, K, 4, 4, "radial")
    with pytest.raises(ValueError, match="distortion must be None for model 'pinhole'"):
        Cameras(w2c, K, 4, 4, distortion=torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"distortion must have shape \[C=1, 4\] for model 'fisheye', got \(1, 5\)"):
        Cameras(w2c, K, 4, 4, "fisheye", torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"distortion must have shape \[C=1, 5\] for model 'opencv', got NoneType"):
        Cameras(w2c, K, 4, 4, "opencv")
    with pytest.raises(ValueError, match="distortion contains NaN"):
        Cameras(w2c, K, 4, 4, "opencv", torch.tensor([[float("nan"), 0, 0, 0, 0]]))
    with pytest.raises(ValueError, match="cannot concatenate cameras of different models"):
        Cameras.cat([Cameras(w2c, K, 4, 4), Cameras(w2c, K, 4, 4, "fisheye", torch.zeros(1, 4))])
