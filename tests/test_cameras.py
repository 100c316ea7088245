"""Pins recon's camera conventions with hand-computed examples."""

import math

import pytest
import torch

from recon.cameras import (Cameras, colmap_to_world_to_cam, intrinsics_matrix, opengl_c2w_to_world_to_cam,
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
