"""Mesh ``rasterize`` / ``interpolate``: open3d agreement, cpu kernels vs the torch twin, gradients, edge cases."""

import numpy as np
import pytest
import torch

from recon.cameras import Cameras, intrinsics_matrix
from recon.renderers.mesh import _ref
from recon.renderers.mesh import rasterize as rz
from recon.renderers.mesh.rasterize import interpolate, rasterize


def load_obj(path) -> tuple[torch.Tensor, torch.Tensor]:
    """Vertices [V, 3] float64 and faces [F, 3] int64 of a triangle OBJ (positions and faces only)."""
    verts, faces = [], []
    with open(path) as fh:
        for line in fh:
            if line.startswith("v "):
                verts.append([float(x) for x in line.split()[1:4]])
            elif line.startswith("f "):
                faces.append([int(x.split("/")[0]) - 1 for x in line.split()[1:4]])
    return torch.tensor(verts, dtype=torch.float64), torch.tensor(faces, dtype=torch.int64)


def look_at_origin(eye: np.ndarray) -> np.ndarray:
    """OpenCV world-to-camera matrix of a camera at ``eye`` looking at the origin (world y up)."""
    z = -eye / np.linalg.norm(eye)
    y = -(np.array([0.0, 1.0, 0.0]) - z[1] * z)  # image y points down
    y /= np.linalg.norm(y)
    R = np.stack([np.cross(y, z), y, z])
    M = np.eye(4)
    M[:3, :3], M[:3, 3] = R, -R @ eye
    return M


def orbit_cameras(C: int, size: tuple[int, int], f: float, radius: float = 3.0) -> Cameras:
    """``C`` cameras on a sphere around the origin (varying azimuth and elevation), principal point centered."""
    H, W = size
    az = np.linspace(0, 2 * np.pi, C, endpoint=False) + 0.3
    el = np.linspace(-0.6, 0.6, C)
    eyes = radius * np.stack([np.cos(az) * np.cos(el), np.sin(el), np.sin(az) * np.cos(el)], 1)
    w2c = torch.tensor(np.stack([look_at_origin(e) for e in eyes]))
    return Cameras(w2c, intrinsics_matrix(f, f, W / 2, H / 2)[None].repeat(C, 1, 1), W, H)


def to_clip(verts: torch.Tensor, cams: Cameras, near=0.1, far=10.0) -> torch.Tensor:
    """World vertices [V, 3] -> clip positions [C, V, 4] float32 (matrices applied in float64)."""
    vh = torch.cat([verts.double(), torch.ones(len(verts), 1, dtype=torch.float64)], 1)
    return torch.einsum("cij,vj->cvi", cams.clip_matrices(near, far), vh).float().contiguous()


def random_mesh(seed: int, F: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    """A soup of ``F`` random triangles in world space around the origin (overlapping and interpenetrating),
    plus special ones appended: 3 degenerate (repeated vertex, collinear, zero-size), 2 crossing the plane of
    camera 0 (one vertex behind it) and 1 beyond the far plane."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(F, 1, 3, generator=g, dtype=torch.float64) * 1.6 - 0.8
    verts = (centers + (torch.rand(F, 3, 3, generator=g, dtype=torch.float64) - 0.5) * 1.2).reshape(-1, 3)
    extra = torch.tensor([
        [0.1, 0.1, 0.0], [0.5, 0.2, 0.1], [0.1, 0.1, 0.0],   # repeated vertex
        [0.0, 0.0, 0.0], [0.2, 0.1, 0.1], [0.4, 0.2, 0.2],   # collinear
        [0.3, 0.3, 0.3], [0.3, 0.3, 0.3], [0.3, 0.3, 0.3],   # a point
        [0.2, 0.1, 0.3], [0.5, -0.3, 0.0], [6.0, 0.5, 2.5],  # crosses camera 0's plane (see camera_rig)
        [-0.2, 0.3, 0.0], [0.1, -0.2, 0.4], [5.0, -1.0, -3.0],
        [40.0, 40.0, 40.0], [41.0, 40.0, 40.0], [40.0, 41.0, 40.5],  # beyond far
    ], dtype=torch.float64)
    verts = torch.cat([verts, extra])
    return verts, torch.arange(len(verts)).reshape(-1, 3)


def camera_rig(size=(40, 56)) -> Cameras:
    # Camera 0 sits at ~(2.37, -1.69, 0.73) looking at the origin: the appended "crossing" triangles reach behind it.
    return orbit_cameras(3, size, f=0.8 * max(size), radius=3.0)


def vjp(fn, inputs, seed=0):
    """Gradients of sum(out * v) w.r.t. ``inputs`` for fixed random cotangents v of every output tensor."""
    leaves = [x.detach().clone().requires_grad_(True) for x in inputs]
    outs = fn(*leaves)
    g = torch.Generator().manual_seed(seed)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs if o is not None)
    return outs, torch.autograd.grad(loss, leaves, allow_unused=True)


def rel_err(a, b) -> float:
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


# --------------------------------------------------------------------------------------------------------------
# 1. Agreement with open3d's ray caster on a real scan.


def test_matches_open3d_on_bunny(test_data):
    o3d = pytest.importorskip("open3d")
    verts, faces = load_obj(test_data / "meshes" / "bunny.obj")
    verts = verts - (verts.amax(0) + verts.amin(0)) / 2
    verts = verts / verts.norm(dim=1).max()
    cams = orbit_cameras(8, (512, 512), f=600.0)
    pos = to_clip(verts, cams)
    rast, _ = rasterize(pos, faces, (512, 512), backend="cpu")
    cam_z, _ = interpolate(pos[..., 3:4].contiguous(), rast, faces, backend="cpu")  # clip w = camera z

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts.float().numpy()), o3d.core.Tensor(faces.numpy().astype(np.uint32)))
    origins, dirs = cams.rays()
    hits = scene.cast_rays(o3d.core.Tensor(torch.cat([origins, dirs], -1).reshape(-1, 6).float().numpy()))
    o3d_id = torch.from_numpy(hits["primitive_ids"].numpy().astype(np.int64)).reshape(8, 512, 512)
    o3d_id[o3d_id == scene.INVALID_ID] = -1
    forward = cams.world_to_cam[:, None, 2, :3]  # camera z axis in world coordinates
    t_hit = torch.from_numpy(hits["t_hit"].numpy()).double().reshape(8, -1)
    o3d_z = (t_hit * (dirs * forward).sum(-1)).reshape(8, 512, 512)

    ids = rast[..., 3].long() - 1
    either = (ids >= 0) | (o3d_id >= 0)
    agree = (ids == o3d_id) & (ids >= 0)
    agreement = (agree.sum() / either.sum()).item()
    depth_err = ((cam_z[..., 0].double() - o3d_z).abs() / o3d_z)[agree]
    print(f"\nopen3d agreement: ids equal on {agreement:.6f} of {int(either.sum())} covered pixels "
          f"({int((either & ~agree).sum())} differ); depth relative error max {depth_err.max():.2e}, "
          f"mean {depth_err.mean():.2e}")
    assert either.sum() > 8 * 20000  # the bunny fills a good part of every view
    assert agreement >= 0.999
    # open3d's t_hit is float32 along a unit ray (~1e-7 relative); our z interpolates float32 camera z with
    # float32 barycentrics. Grazing hits amplify both; 1e-5 is the contract, the mean is ~1e-7.
    assert depth_err.max() < 1e-5


# --------------------------------------------------------------------------------------------------------------
# 2. cpu kernels vs the torch twin, forward.


def compare_rasters(rc, rt, dbc, dbt):
    """Asserts that two rasterizations agree; returns the mask of pixels where both picked the same triangle."""
    idc, idt = rc[..., 3].long() - 1, rt[..., 3].long() - 1
    differ = idc != idt
    # The only accepted difference: a depth tie (two triangles at the same ndc_z within float32 rounding of the
    # cpu kernels' tile-relative evaluation, ~1e-6), resolved differently. Coverage itself must agree.
    assert torch.equal(idc >= 0, idt >= 0), "coverage differs"
    assert ((rc[..., 2] - rt[..., 2]).abs()[differ] < 1e-5).all(), "ids differ where depths do not tie"
    assert differ.float().mean() < 1e-3
    same = ~differ & (idc >= 0)
    # u, v: the cpu kernels evaluate float32 edge functions relative to each triangle's first pixel in a tile
    # (~1e-7 relative rounding), so ~1e-6 absolute (observed <= 1.5e-6 here; slivers reach ~1e-5). ndc_z: same.
    torch.testing.assert_close(rc[..., :3][same], rt[..., :3][same], rtol=0, atol=2e-5)
    assert (rc[~(idc >= 0)] == 0).all() and (dbc[~(idc >= 0)] == 0).all()
    # rast_db scales like 1 / triangle size in pixels; relative tolerance for the same rounding reasons.
    torch.testing.assert_close(dbc[same], dbt[same], rtol=1e-3, atol=1e-5)
    return same


# (160, 300) spans 2 x 3 of the kernels' 128-pixel tiles: triangles split over several tiles.
@pytest.mark.parametrize("seed,size", [(0, (40, 56)), (1, (64, 64)), (2, (32, 33)), (6, (160, 300))])
def test_cpu_matches_reference_random_meshes(seed, size):
    verts, faces = random_mesh(seed)
    cams = camera_rig(size)
    pos = to_clip(verts, cams)
    assert (pos[0, faces[-3:-1].flatten(), 3] <= 0).any()  # the crossing triangles really cross w = 0
    rc, dbc = rasterize(pos, faces, size, backend="cpu")
    rt, dbt = rasterize(pos, faces, size, backend="torch")
    same = compare_rasters(rc, rt, dbc, dbt)
    ids = rc[..., 3].long() - 1
    assert same.sum() > 0.1 * ids.numel() and len(ids.unique()) > 20  # many triangles visible
    F = len(faces)
    assert not ((ids >= F - 6) & (ids < F - 3)).any()  # degenerate triangles cover nothing
    assert not (ids == F - 1).any()  # beyond the far plane
    assert ((ids == F - 3) | (ids == F - 2))[0].any()  # the crossing triangles are drawn in camera 0


def test_cpu_matches_reference_raw_clip_space():
    # Random clip-space positions, many with w <= 0 and |z| > w: exercises the homogeneous edge tests and
    # the per-pixel near / far rejection without a camera model.
    g = torch.Generator().manual_seed(5)
    pos = torch.randn(2, 60, 4, generator=g)
    pos[..., 3] = pos[..., 3] * 0.8 + 0.6
    tri = torch.randint(0, 60, (50, 3), generator=g)
    rc, dbc = rasterize(pos, tri, (48, 48), backend="cpu")
    rt, dbt = rasterize(pos, tri, (48, 48), backend="torch")
    compare_rasters(rc, rt, dbc, dbt)


def test_results_do_not_depend_on_thread_count():
    verts, faces = load_like_sphere(3000)
    cams = orbit_cameras(2, (96, 80), f=90.0)
    pos = to_clip(verts, cams)
    attr = torch.randn(len(verts), 3, generator=torch.Generator().manual_seed(0))
    n = torch.get_num_threads()

    def run():
        (r, db), grads = vjp(lambda p: rasterize(p, faces, (96, 80), backend="cpu"), [pos])
        (out, _), ga = vjp(lambda a, r_: interpolate(a, r_, faces, backend="cpu"), [attr, r])
        return r, db, grads[0], out, ga[0], ga[1]

    try:
        torch.set_num_threads(1)
        one = run()
        torch.set_num_threads(max(2, n))
        many = run()
    finally:
        torch.set_num_threads(n)
    for a, b in zip(one, many):
        assert torch.equal(a, b)


def load_like_sphere(F: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A closed, finely tessellated unit sphere with about ``F`` faces (random vertex order)."""
    n = int(np.sqrt(F / 2))
    th, ph = torch.meshgrid(torch.linspace(0.05, np.pi - 0.05, n), torch.linspace(0, 2 * np.pi, n + 1)[:-1],
                            indexing="ij")
    verts = torch.stack([th.sin() * ph.cos(), th.cos(), th.sin() * ph.sin()], -1).reshape(-1, 3).double()
    i, j = torch.meshgrid(torch.arange(n - 1), torch.arange(n), indexing="ij")
    a, b = i * n + j, i * n + (j + 1) % n
    c, d = a + n, b + n
    faces = torch.cat([torch.stack([a, b, c], -1), torch.stack([b, d, c], -1)]).reshape(-1, 3)
    perm = torch.randperm(len(verts), generator=torch.Generator().manual_seed(1))
    return verts[perm], torch.argsort(perm)[faces]


# --------------------------------------------------------------------------------------------------------------
# 3. Vector-Jacobian products, cpu vs torch.


def test_rasterize_vjp_matches_reference():
    verts, faces = random_mesh(3)
    cams = camera_rig((48, 40))
    pos = to_clip(verts, cams)
    (rc,), (gc,) = vjp(lambda p: rasterize(p, faces, (48, 40), backend="cpu")[:1], [pos])
    (rt,), (gt,) = vjp(lambda p: rasterize(p, faces, (48, 40), backend="torch")[:1], [pos])
    assert torch.equal(rc[..., 3], rt[..., 3])  # same pixels -> the same terms are summed
    # Same per-pixel formulas (double in C++, float64 in torch) summed in different orders; observed ~1e-7.
    assert gt.norm() > 0 and rel_err(gc, gt) < 1e-4


# Widths 1-4 take the C++ kernel's compile-time paths, 5 its generic loop; 40 x 48 pixels are not a whole number of
# its 256-pixel blocks, so blocks end at camera boundaries.
@pytest.mark.parametrize("per_camera,width", [(False, 5), (True, 5), (False, 1), (True, 2), (False, 3), (True, 4)])
def test_interpolate_vjp_matches_reference(per_camera, width):
    verts, faces = random_mesh(4)
    cams = camera_rig((40, 48))
    pos = to_clip(verts, cams)
    g = torch.Generator().manual_seed(2)
    attr = torch.randn(*((3,) if per_camera else ()), len(verts), width, generator=g)

    def chain(backend):
        def fn(p, a):
            rast, _ = rasterize(p, faces, (40, 48), backend=backend)
            out, _ = interpolate(a, rast, faces, backend=backend)
            return (out, rast)  # rast's own cotangent checks u, v, z together with the interpolated chain
        return vjp(fn, [pos, attr])

    (outc, rc), (gpc, gac) = chain("cpu")
    (outt, rt), (gpt, gat) = chain("torch")
    assert torch.equal(rc[..., 3], rt[..., 3])
    torch.testing.assert_close(outc, outt, rtol=0, atol=1e-4)
    # observed ~1e-7 for attr, ~1e-6 for pos (float32 barycentrics feed the chain in both backends)
    assert rel_err(gac, gat) < 1e-4
    assert gpt.norm() > 0 and rel_err(gpc, gpt) < 1e-4


# --------------------------------------------------------------------------------------------------------------
# 4. float64 gradcheck of the torch twin.


def test_reference_gradcheck_float64():
    # Two triangles on a 6x7 image (found by a seeded search): no pixel center lies within 0.14 pixel of a
    # triangle's boundary, so coverage is constant under the finite-difference steps.
    pos = torch.tensor([[[0.44, 0.59, 0.34, 0.93], [-0.75, 0.62, -0.33, 1.03], [-0.69, -0.77, -0.22, 0.96],
                         [-0.81, -0.32, -0.26, 1.08], [0.79, -0.28, -0.28, 0.93], [0.33, 0.12, 0.44, 1.16]]],
                       dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]])
    attr = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ys, xs = torch.meshgrid(torch.arange(6) + 0.5, torch.arange(7) + 0.5, indexing="ij")
    centers = torch.stack([xs, ys], -1).reshape(-1, 2).double()
    screen = (pos[0, :, :2] / pos[0, :, 3:] + 1) * torch.tensor([7 / 2, 6 / 2], dtype=torch.float64)
    for a, b in tri[:, [[0, 1], [1, 2], [2, 0]]].reshape(-1, 2):
        ab = screen[b] - screen[a]
        t = (((centers - screen[a]) @ ab) / (ab @ ab)).clamp(0, 1)
        assert (centers - screen[a] - t[:, None] * ab).norm(dim=1).min() > 0.14

    def f(p, a):
        rast, _ = _ref.rasterize(p, tri, (6, 7))
        out, _ = _ref.interpolate(a, rast, tri)
        return rast[..., :3], out

    rast, _ = _ref.rasterize(pos, tri, (6, 7))
    assert set((rast[..., 3].unique().long()).tolist()) == {0, 1, 2}
    assert torch.autograd.gradcheck(f, (pos.requires_grad_(True), attr.requires_grad_(True)), eps=1e-6,
                                    atol=1e-6, rtol=1e-4)


# --------------------------------------------------------------------------------------------------------------
# 5. Edge cases.

BACKENDS = ["torch", "cpu"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_triangle_hand_computed(backend):
    # Screen-space vertices (w = 1) at pixels (2, 2), (6, 2), (4, 6) of an 8x8 image. At the center (4.5, 4.5)
    # of pixel (row 4, col 4): 2u + 6v + 4(1-u-v) = 4.5 and 2u + 2v + 6(1-u-v) = 4.5 -> u = 1/16, v = 5/16.
    pos = torch.tensor([[[-0.5, -0.5, 0.25, 1.0], [0.5, -0.5, 0.25, 1.0], [0.0, 0.5, 0.25, 1.0]]])
    rast, db = rasterize(pos, torch.tensor([[0, 1, 2]], dtype=torch.int32), (8, 8), backend=backend)
    torch.testing.assert_close(rast[0, 4, 4], torch.tensor([1 / 16, 5 / 16, 0.25, 1.0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(db[0, 4, 4], torch.tensor([-0.25, -0.125, 0.25, -0.125]), rtol=0, atol=1e-6)
    covered = (rast[0, ..., 3] > 0).int()
    expected = torch.zeros(8, 8, dtype=torch.int32)
    expected[2, 2:6] = 1
    expected[3:5, 3:5] = 1
    assert torch.equal(covered, expected)
    out, da = interpolate(torch.tensor([[1.0], [2.0], [3.0]]), rast, torch.tensor([[0, 1, 2]]), db, "all",
                          backend=backend)
    torch.testing.assert_close(out[0, 4, 4, 0], torch.tensor(1 / 16 + 2 * 5 / 16 + 3 * 10 / 16))
    torch.testing.assert_close(da[0, 4, 4], torch.tensor([-2 * -0.25 - 0.25, -2 * -0.125 - -0.125]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_nothing_visible_and_no_triangles(backend):
    verts, faces = random_mesh(0, F=10)
    cams = camera_rig((16, 16))
    pos = to_clip(verts, cams)
    cases = {
        "behind": (pos * torch.tensor([1.0, 1.0, 1.0, -1.0]), faces),  # every w < 0
        "empty": (pos, faces[:0]),
        "off-screen": (pos + torch.tensor([30.0, 0, 0, 0]) * pos[..., 3:], faces),
    }
    for name, (p, f) in cases.items():
        (rast, db), (g,) = vjp(lambda p_, f=f: rasterize(p_, f, (16, 16), backend=backend), [p])
        assert rast.shape == (3, 16, 16, 4) and (rast == 0).all() and (db == 0).all(), name
        out, _ = interpolate(torch.ones(len(verts), 2), rast, f, backend=backend)
        assert out.shape == (3, 16, 16, 2) and (out == 0).all(), name
        assert g is None or (g == 0).all(), name


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_triangles_only(backend):
    verts, faces = random_mesh(0, F=0)
    cams = camera_rig((16, 16))
    pos = to_clip(verts, cams)
    deg = faces[:3]
    (rast, db), (g,) = vjp(lambda p: rasterize(p, deg, (16, 16), backend=backend), [pos])
    assert (rast == 0).all() and (db == 0).all()
    assert g is None or ((g == 0).all() and torch.isfinite(g).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_triangle_crossing_the_camera_plane_is_perspective_correct(backend):
    # A large triangle with one vertex behind the camera: every covered pixel's interpolated world point must
    # project back onto that pixel's center (no wrap-around, perspective-correct barycentrics), with z > near.
    cams = Cameras(torch.eye(4, dtype=torch.float64)[None], intrinsics_matrix(30.0, 30.0, 16, 12)[None], 32, 24)
    verts = torch.tensor([[-1.0, -0.5, 2.0], [1.5, 0.2, 3.0], [0.3, 0.4, -1.0]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]])
    pos = to_clip(verts, cams)
    assert pos[0, 2, 3] < 0
    rast, _ = rasterize(pos, tri, (24, 32), backend=backend)
    covered = rast[0, ..., 3] > 0
    assert 20 < covered.sum() < 24 * 32
    world, _ = interpolate(verts.float(), rast, tri, backend=backend)
    uv, z = cams.project(world[0][covered].double())
    ys, xs = torch.nonzero(covered, as_tuple=True)
    centers = torch.stack([xs + 0.5, ys + 0.5], -1).double()
    torch.testing.assert_close(uv[0], centers, rtol=0, atol=2e-3)
    assert (z > 0.1).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_screen_space_derivatives_match_finite_differences(backend):
    # A smooth, strongly perspective triangle; attributes = world position (a rational function of the pixel).
    cams = Cameras(torch.eye(4, dtype=torch.float64)[None], intrinsics_matrix(40.0, 40.0, 20, 16)[None], 40, 32)
    verts = torch.tensor([[-2.0, -1.5, 2.0], [2.5, -1.0, 6.0], [0.0, 2.5, 3.0]], dtype=torch.float64)
    tri = torch.tensor([[0, 1, 2]])
    rast, db = rasterize(to_clip(verts, cams), tri, (32, 40), backend=backend)
    attr = verts.float()
    out, da = interpolate(attr, rast, tri, db, [0, 2], backend=backend)
    assert da.shape == (1, 32, 40, 4)
    _, da_all = interpolate(attr, rast, tri, db, "all", backend=backend)
    torch.testing.assert_close(da_all[..., [0, 1, 4, 5]], da)
    inner = (rast[0, ..., 3] > 0).clone()  # pixels whose 4 neighbours are covered too
    inner[1:-1, 1:-1] &= inner[:-2, 1:-1] & inner[2:, 1:-1] & inner[1:-1, :-2] & inner[1:-1, 2:]
    inner[[0, -1], :] = False
    inner[:, [0, -1]] = False
    assert inner.sum() > 100
    o = out[0].double()
    fd_x = torch.zeros_like(o)
    fd_y = torch.zeros_like(o)
    fd_x[:, 1:-1] = (o[:, 2:] - o[:, :-2]) / 2
    fd_y[1:-1] = (o[2:] - o[:-2]) / 2
    fd = torch.stack([fd_x[..., 0], fd_y[..., 0], fd_x[..., 2], fd_y[..., 2]], -1)[inner]
    # Central differences of a rational function: O(h^2) error relative to the derivative's scale.
    assert rel_err(da[0][inner].double(), fd) < 2e-3
    assert interpolate(attr, rast, tri, db, None, backend=backend)[1] is None
    assert interpolate(attr, rast, tri, None, "all", backend=backend)[1] is None


def test_bad_inputs_raise():
    pos = torch.rand(2, 5, 4) + torch.tensor([0, 0, 0, 1.0])
    tri = torch.tensor([[0, 1, 2], [2, 3, 4]])
    with pytest.raises(ValueError, match=r"pos must have shape \[C, V, 4\].*got \(5, 4\)"):
        rasterize(pos[0], tri, (8, 8))
    with pytest.raises(ValueError, match=r"tri must have shape \[F, 3\], got \(2, 2\)"):
        rasterize(pos, tri[:, :2], (8, 8))
    with pytest.raises(ValueError, match=r"tri indices must lie in \[0, 5\)"):
        rasterize(pos, tri + 1, (8, 8))
    with pytest.raises(ValueError, match=r"tri indices must lie in \[0, 5\)"):
        rasterize(pos, tri - 1, (8, 8), backend="torch")
    with pytest.raises(ValueError, match="tri must be int32"):
        rasterize(pos, tri.float(), (8, 8))
    bad = pos.clone()
    bad[1, 3, 0] = float("nan")
    with pytest.raises(ValueError, match="pos contains NaN or Inf"):
        rasterize(bad, tri, (8, 8))
    with pytest.raises(ValueError, match="resolution must be"):
        rasterize(pos, tri, (8, 0))
    with pytest.raises(ValueError, match="resolution must be"):
        rasterize(pos, tri, 8)
    with pytest.raises(ValueError, match="backend must be one of"):
        rasterize(pos, tri, (8, 8), backend="cuda")
    with pytest.raises(ValueError, match="backend 'cpu' needs float32"):
        rasterize(pos.double(), tri, (8, 8), backend="cpu")
    rast, db = rasterize(pos, tri, (8, 8))
    with pytest.raises(ValueError, match=r"attr must have shape \[V, A\] or \[C, V, A\] with C=2, got \(3, 5, 1\)"):
        interpolate(torch.rand(3, 5, 1), rast, tri)
    with pytest.raises(ValueError, match=r"rast must have shape \[C, H, W, 4\]"):
        interpolate(torch.rand(5, 1), rast[..., :3], tri)
    with pytest.raises(ValueError, match=r"tri indices must lie in \[0, 4\)"):
        interpolate(torch.rand(4, 1), rast, tri)
    with pytest.raises(ValueError, match=r"rast_db must have shape"):
        interpolate(torch.rand(5, 1), rast, tri, db[:1], "all")
    with pytest.raises(ValueError, match=r"diff_attrs indices must lie in \[0, 2\)"):
        interpolate(torch.rand(5, 2), rast, tri, db, [2])
    with pytest.raises(ValueError, match="diff_attrs must be 'all'"):
        interpolate(torch.rand(5, 2), rast, tri, db, "some")


def test_int64_tri_and_auto_backend():
    verts, faces = random_mesh(0, F=8)
    pos = to_clip(verts, camera_rig((16, 16)))
    r_auto, _ = rasterize(pos, faces.long(), (16, 16))  # auto -> cpu for float32 CPU tensors
    r_cpu, _ = rasterize(pos, faces.int(), (16, 16), backend="cpu")
    assert torch.equal(r_auto, r_cpu)
    r64, _ = rasterize(pos.double(), faces, (16, 16))  # auto -> torch for float64
    assert r64.dtype == torch.float64


def test_cpu_kernels_check_inputs():
    ext = rz._ext()
    pos = torch.rand(1, 4, 4)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="pos must be"):
        ext.rasterize_forward(pos.double(), tri, 8, 8)
    with pytest.raises(RuntimeError, match="tri must be"):
        ext.rasterize_forward(pos, tri.long(), 8, 8)
    with pytest.raises(RuntimeError, match=r"tri holds vertex indices in \[0, 7\] outside \[0, 4\)"):
        ext.rasterize_forward(pos, torch.tensor([[0, 1, 7]], dtype=torch.int32), 8, 8)
    with pytest.raises(RuntimeError, match="pos must be contiguous"):
        ext.rasterize_forward(torch.rand(1, 4, 8)[..., ::2], tri, 8, 8)
    rast = torch.zeros(1, 8, 8, 4)
    rast[0, 0, 0, 3] = 5.0  # triangle id 4 does not exist
    with pytest.raises(RuntimeError, match="rast holds triangle ids outside"):
        ext.interpolate_forward(torch.rand(1, 4, 2), rast, tri, None, [])


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_grad_db_false_skips_rast_db_only(backend):
    verts, tri = random_mesh(3)
    pos = to_clip(verts, camera_rig())
    rast, db = rasterize(pos, tri, (40, 56), backend=backend)
    rast2, db2 = rasterize(pos, tri, (40, 56), grad_db=False, backend=backend)
    assert db is not None and db2 is None
    torch.testing.assert_close(rast2, rast, rtol=0, atol=0)
