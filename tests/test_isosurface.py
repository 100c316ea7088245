"""Marching cubes (recon.renderers.volume.isosurface): the kernel against its torch twin, both against
scikit-image on analytic SDFs, and watertightness on every cube configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.spatial import cKDTree

from recon.renderers.volume.isosurface import marching_cubes


def _grid(n: int):
    g = torch.linspace(-1, 1, n)
    return torch.meshgrid(g, g, g, indexing="ij"), 2 / (n - 1)


_C = (0.013, 0.007, -0.011)  # off the grid's points: no sample exactly on the surface (conventions differ there)


def _sphere(n: int):
    (x, y, z), h = _grid(n)
    return ((x - _C[0]) ** 2 + (y - _C[1]) ** 2 + (z - _C[2]) ** 2).sqrt() - 0.7, h


def _torus(n: int):
    (x, y, z), h = _grid(n)
    x, y, z = x - _C[0], y - _C[1], z - _C[2]
    return (((x * x + y * y).sqrt() - 0.55) ** 2 + z * z).sqrt() - 0.2, h


def _directed_edges(faces: torch.Tensor) -> torch.Tensor:
    f = faces.long()
    return torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])


def assert_watertight(faces: torch.Tensor) -> None:
    """Every directed edge appears once and its reverse once: a closed, consistently oriented 2-manifold."""
    e = _directed_edges(faces)
    _, count = torch.unique(e, dim=0, return_counts=True)
    assert int(count.max()) == 1, "a directed edge is used twice (inconsistent winding)"
    _, pair = torch.unique(torch.cat([e, e.flip(1)]), dim=0, return_counts=True)
    assert bool((pair == 2).all()), f"{int((pair != 2).sum())} boundary edges"


def _euler(verts, faces) -> int:
    return len(verts) - len(_directed_edges(faces)) // 2 + len(faces)


@pytest.mark.parametrize("shape,genus", [(_sphere, 0), (_torus, 1)])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_matches_scikit_image_on_analytic_sdfs(shape, genus, backend):
    from skimage.measure import marching_cubes as skimage_mc

    sdf, h = shape(41)
    verts, faces = marching_cubes(sdf, 0.0, origin=(-1, -1, -1), spacing=(h, h, h), backend=backend)
    sk_verts, sk_faces, _, _ = skimage_mc(sdf.numpy(), 0.0, spacing=(h, h, h))
    sk_verts = sk_verts - 1
    # Same vertex set: each of ours within 1e-5 of one of scikit-image's and vice versa (float32 positions).
    assert len(verts) == len(sk_verts) and len(faces) == len(sk_faces)
    d_ours, _ = cKDTree(sk_verts).query(verts.numpy())
    d_theirs, _ = cKDTree(verts.numpy()).query(sk_verts)
    assert d_ours.max() < 1e-5 and d_theirs.max() < 1e-5
    assert_watertight(faces)
    assert _euler(verts, faces) == 2 - 2 * genus
    # Normals point out of the negative inside: along the SDF's gradient at each face's centroid.
    tri = verts[faces.long()]
    normal = torch.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], dim=-1)
    c = (tri.mean(1) - torch.tensor(_C)).requires_grad_(True)
    if shape is _sphere:
        grad = c.detach()
    else:
        q = torch.stack([(c[:, 0] ** 2 + c[:, 1] ** 2).sqrt() - 0.55, c[:, 2]], -1)
        (grad,) = torch.autograd.grad(q.norm(dim=-1).sum(), c)
    assert bool(((normal * grad).sum(-1) > 0).all())
    # The vertices lie on the surface up to the linear interpolation's error (h^2 / R scale).
    radius = (verts - torch.tensor(_C)).norm(dim=-1) if shape is _sphere else None
    if radius is not None:
        assert float((radius - 0.7).abs().max()) < 0.25 * h * h / 0.7


def test_kernel_equals_twin_on_noise_with_ambiguous_faces():
    g = torch.Generator().manual_seed(0)
    values = torch.randn(12, 11, 10, generator=g)
    values = torch.nn.functional.pad(values, (1, 1, 1, 1, 1, 1), value=1.0)  # closed: positive outside
    v_cpu, f_cpu = marching_cubes(values, 0.1, backend="cpu")
    v_ref, f_ref = marching_cubes(values, 0.1, backend="torch")
    torch.testing.assert_close(v_cpu, v_ref, rtol=0, atol=0)
    assert torch.equal(f_cpu, f_ref)
    assert_watertight(f_cpu)
    # The test covers ambiguous faces: count x-faces whose corners alternate around the level.
    n = values < 0.1
    alt = (n[:, :-1, :-1] == n[:, 1:, 1:]) & (n[:, 1:, :-1] == n[:, :-1, 1:]) & (n[:, :-1, :-1] != n[:, 1:, :-1])
    assert int(alt.sum()) > 20
    # Each vertex lies on a grid edge where the (trilinear = linear there) field equals the level.
    assert len(v_cpu) > 500
    # Vertices on grid edges (two integer coordinates) interpolate; the others are cycle centers, which the
    # noise must exercise too (cycles no fan can triangulate without an edge inside a face).
    on_edge = (v_cpu - v_cpu.round()).abs().lt(1e-6).sum(-1) >= 2
    assert 0 < int((~on_edge).sum()) < 0.05 * len(v_cpu)
    assert float(_trilinear(values, v_cpu[on_edge].double()).sub(0.1).abs().max()) < 1e-5


def _trilinear(values: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    lo = p.floor().long().clamp(max=torch.tensor(values.shape) - 2)
    t = p - lo
    out = torch.zeros(len(p), dtype=torch.float64)
    for c in range(8):
        d = torch.tensor([c & 1, c >> 1 & 1, c >> 2 & 1])
        w = torch.where(d.bool(), t, 1 - t).prod(-1)
        q = lo + d
        out += w * values.double()[q[:, 0], q[:, 1], q[:, 2]]
    return out


def test_every_cube_configuration_is_watertight_and_both_backends_agree():
    g = torch.Generator().manual_seed(1)
    for mask in range(1, 255):
        signs = torch.tensor([1.0 if mask >> c & 1 else -1.0 for c in range(8)])
        for trial in range(3):  # random magnitudes flip the asymptotic decider of ambiguous faces
            corner = -signs * (0.05 + torch.rand(8, generator=g))
            cube = corner.reshape(2, 2, 2).permute(2, 1, 0)  # corner c at (c & 1, c >> 1 & 1, c >> 2 & 1)
            values = torch.nn.functional.pad(cube.contiguous(), (1, 1, 1, 1, 1, 1), value=1.0)
            _, f_cpu = marching_cubes(values, 0.0, backend="cpu")
            _, f_ref = marching_cubes(values, 0.0, backend="torch")
            assert torch.equal(f_cpu, f_ref), (mask, trial)
            assert_watertight(f_cpu)


def test_single_negative_corner_is_one_triangle_facing_away():
    values = torch.ones(2, 2, 2)
    values[0, 0, 0] = -1.0
    verts, faces = marching_cubes(values, 0.0)
    assert faces.shape == (1, 3)
    expected = {(0.5, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.5)}
    assert {tuple(p) for p in verts.tolist()} == expected
    tri = verts[faces[0].long()]
    normal = torch.linalg.cross(tri[1] - tri[0], tri[2] - tri[0])
    assert bool((normal > 0).all())  # toward the positive corners, away from the origin


def test_empty_and_density_convention():
    verts, faces = marching_cubes(torch.ones(3, 3, 3), 0.0)
    assert verts.shape == (0, 3) and faces.shape == (0, 3) and faces.dtype == torch.int32
    # A density blob (high inside): pass -density and -level; normals then point outward.
    sdf, h = _sphere(21)
    density = torch.exp(-4 * (sdf + 0.7))
    verts, faces = marching_cubes(-density, -float(np.exp(-4 * 0.7)), origin=(-1, -1, -1), spacing=(h, h, h))
    tri = verts[faces.long()]
    normal = torch.linalg.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert bool(((normal * (tri.mean(1) - torch.tensor(_C))).sum(-1) > 0).all())
    assert float(((verts - torch.tensor(_C)).norm(dim=-1) - 0.7).abs().max()) < 0.02


def test_bad_input():
    with pytest.raises(ValueError, match=r"values must have shape \[X, Y, Z\]"):
        marching_cubes(torch.ones(4, 4))
    with pytest.raises(ValueError, match=r"every size >= 2"):
        marching_cubes(torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match="level must be finite"):
        marching_cubes(torch.ones(3, 3, 3), float("nan"))
    with pytest.raises(ValueError, match="backend must be one of"):
        marching_cubes(torch.ones(3, 3, 3), backend="cuda")
