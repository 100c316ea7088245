"""Mesh reconstruction end to end: the tet-grid iso-surface, chamfer, the mesh renderer, and the CLI
(train mesh -> eval -> render -> export, resume, rendering mesh files as scenes)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recon.cli import main
from recon.metrics import chamfer_l1
from recon.scenes.tetgrid import TetGrid

FAST = ["--max-steps", "80", "--optim.geometry-steps", "40", "--model.grid-resolution", "32",
        "--model.texture-size", "256", "--no-progress", "--checkpoint-every", "40"]


def _sphere_grid(res: int, radius: float) -> TetGrid:
    grid = TetGrid(res, [-1.0] * 3, [1.0] * 3)
    with torch.no_grad():
        grid.sdf.copy_(grid.base_vertices.norm(dim=-1) - radius)
    return grid


def test_tet_grid_sphere_is_watertight_outward_and_accurate():
    grid = _sphere_grid(24, 0.6)
    verts, faces, colors = grid.extract()
    assert len(faces) > 1000 and colors.shape == verts.shape
    # Every undirected edge is shared by exactly two faces, and each directed edge appears once (consistent
    # orientation), so the surface is a closed 2-manifold.
    directed = torch.cat([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    assert len(torch.unique(directed, dim=0)) == len(directed)
    _, counts = torch.unique(torch.sort(directed, dim=1).values, dim=0, return_counts=True)
    assert set(counts.tolist()) == {2}
    # Outward: the signed volume is positive and close to the sphere's (linear interpolation of |p| - r
    # along grid edges places vertices within a small fraction of a cell of the sphere).
    v = verts.detach().double()
    vol = (torch.cross(v[faces[:, 0]], v[faces[:, 1]], dim=-1) * v[faces[:, 2]]).sum() / 6
    assert abs(vol.item() / (4 / 3 * np.pi * 0.6**3) - 1) < 0.02
    assert (v.norm(dim=-1) - 0.6).abs().max() < 0.1 * (2 / 24)


def test_tet_grid_gradients_reach_sdf_and_color():
    grid = _sphere_grid(12, 0.5)
    verts, faces, colors = grid.extract()
    (verts.norm(dim=-1).sum() + colors.sum()).backward()
    assert grid.sdf.grad.abs().sum() > 0 and grid.color.grad.abs().sum() > 0 and grid.deform.grad.abs().sum() > 0
    # Raising the SDF everywhere shrinks the surface: d(sum |v|)/d(sdf) is negative on crossing edges.
    assert grid.sdf.grad.sum() < 0


def test_surface_band_matches_a_full_scan():
    """The cached band of candidate tetrahedra never misses a surface tetrahedron under optimizer-sized steps."""
    grid = _sphere_grid(16, 0.5)
    gen = torch.Generator().manual_seed(0)
    for _ in range(45):  # crosses two band rebuilds
        with torch.no_grad():
            grid.sdf.add_(torch.randn(grid.sdf.shape, generator=gen) * 0.01)  # 8% of a cell, per vertex
        n_in = (grid.sdf.detach() < 0)[grid.tets].sum(-1)
        full = torch.nonzero((n_in > 0) & (n_in < 4))[:, 0]
        assert torch.equal(grid.surface_tets(), full)


def test_tet_grid_empty_and_state_round_trip():
    grid = _sphere_grid(8, 5.0)  # the sphere encloses the whole grid: no crossing
    v, f, c = grid.extract()
    assert v.shape == (0, 3) and f.shape == (0, 3)
    grid = _sphere_grid(8, 0.5)
    again = TetGrid.from_state(grid.to_state())
    assert torch.equal(again.extract()[1], grid.extract()[1])
    with pytest.raises(ValueError, match="tet-grid"):
        TetGrid.from_state({"kind": "mesh"})


def test_chamfer_l1_of_shifted_and_identical_meshes():
    grid = _sphere_grid(16, 0.5)
    v, f, _ = grid.extract()
    same = chamfer_l1(v, f, v, f, samples=20000)
    assert same["chamfer"] < 0.01  # only the sampling distance between two independent point sets
    shifted = chamfer_l1(v, f, v * (0.55 / 0.5), f, samples=20000)
    assert 0.04 < shifted["chamfer"] < 0.06  # concentric spheres 0.05 apart
    with pytest.raises(ValueError, match="zero total area"):
        chamfer_l1(v, f[:0], v, f)


@pytest.fixture(scope="module")
def mesh_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("mesh") / "run"
    assert main(["train", "mesh", "--output", str(run), *FAST]) == 0
    return run


def test_train_mesh_on_sample_scene(mesh_run):
    summary = json.loads((mesh_run / "eval.json").read_text())
    # 80 steps on the 128x128 sample scene (40 iso-surface + 40 texture): the scene's test PSNR starts ~12 dB
    # (empty white) and a fitted textured mesh reaches > 20 dB.
    assert summary["psnr"] > 20.0, summary["psnr"]
    assert summary["num_faces"] > 500
    assert summary["step"] == 80
    lines = [json.loads(x) for x in (mesh_run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [50] and lines[0]["num_faces"] > 500
    assert (mesh_run / "exports" / "mesh.glb").is_file()
    # The refinement stage's learning rates end at optim.lr_final_fraction (0.1) of their start.
    state = torch.load(mesh_run / "checkpoints" / "step-0000080.pt", weights_only=True)
    groups = state["optimizer"]["param_groups"]
    assert len(groups) == 2 and all(g["lr"] == pytest.approx(0.1 * g["base_lr"]) for g in groups)


def test_mesh_run_eval_render_export(mesh_run, tmp_path):
    import trimesh

    from recon.cli import load_run_scene
    from recon.export.mesh_io import export_vertex_count

    assert main(["eval", str(mesh_run), "--out", str(tmp_path / "eval.json")]) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    first = json.loads((mesh_run / "eval.json").read_text())
    assert abs(again["psnr"] - first["psnr"]) < 1e-3

    out = tmp_path / "renders"
    assert main(["render", str(mesh_run), "--split", "test", "--channels", "rgb,depth,alpha",
                 "--out", str(out)]) == 0
    depth = np.load(next(out.glob("*_depth.npy")))
    assert depth.dtype == np.float32 and depth.max() > 0 and (depth == 0).any()

    scene = load_run_scene(mesh_run)
    for fmt in ("obj", "ply", "glb"):
        path = tmp_path / f"mesh.{fmt}"
        assert main(["export", str(mesh_run), "--format", fmt, "--out", str(path)]) == 0
        loaded = trimesh.load(path, process=False, force="mesh")
        assert len(loaded.vertices) == export_vertex_count(scene, fmt)
        if fmt == "glb":
            assert loaded.visual.material.baseColorTexture.size == (256, 256)
        elif fmt == "obj":
            assert loaded.visual.material.image.size == (256, 256)
    assert (tmp_path / "mesh.mtl").is_file()


def test_mesh_resume_matches_uninterrupted(mesh_run, tmp_path):
    """Stop after the first checkpoint (step 40, the stage boundary), resume, and reach the same result."""
    run = tmp_path / "run"
    assert main(["train", "mesh", "--output", str(run), *FAST, "--max-steps", "40"]) == 0
    cfg = run / "config.yaml"
    cfg.write_text(cfg.read_text().replace("max_steps: 40", "max_steps: 80"))
    assert main(["train", "--resume", str(run)]) == 0
    a = json.loads((run / "eval.json").read_text())["psnr"]
    b = json.loads((mesh_run / "eval.json").read_text())["psnr"]
    assert abs(a - b) < 1e-3, (a, b)


def test_render_mesh_file_as_scene(test_data, tmp_path):
    """Any mesh file renders from dataset cameras; an untextured one is gray, a textured one uses its texture."""
    import trimesh

    from recon.data.io import read_image

    bunny = trimesh.load(test_data / "meshes" / "bunny.obj", process=False)
    bunny.vertices = (bunny.vertices - bunny.bounds.mean(0)) / np.linalg.norm(bunny.extents) * 1.6
    bunny.export(tmp_path / "bunny.ply")
    sample = "data/sample"
    out = tmp_path / "bunny"
    assert main(["render", "--scene", str(tmp_path / "bunny.ply"), "--data", sample,
                 "--channels", "rgb,depth,alpha,normal", "--out", str(out)]) == 0
    depth = np.load(out / "r_0_depth.npy")
    alpha = read_image(out / "r_0_alpha.png")[..., 0]
    assert ((depth > 0) == (alpha > 0.5)).mean() > 0.98 and (alpha > 0.99).sum() > 500
    rgb = read_image(out / "r_0.png")[..., :3]
    normal = read_image(out / "r_0_normal.png")[..., :3] * 2 - 1
    covered = alpha > 0.99
    assert np.abs(np.linalg.norm(normal[covered], axis=-1) - 1).mean() < 0.02
    # Headlight-shaded default gray: no color cast, never brighter than the gray itself (sRGB of 0.5).
    assert np.abs(rgb[covered][:, 0] - rgb[covered][:, 2]).max() < 1e-2
    assert rgb[covered].max() < 0.74 and rgb[covered].min() > 0.1

    out = tmp_path / "spot"
    assert main(["render", "--scene", str(test_data / "meshes" / "spot" / "spot.obj"), "--data", sample,
                 "--out", str(out)]) == 0
    spot = read_image(out / "r_0.png")[..., :3]
    assert spot.std(axis=(0, 1)).max() > 0.05  # the texture shows (not a flat gray)


def test_mesh_config_errors(tmp_path):
    from recon.train.config import MeshTrainConfig, validate

    with pytest.raises(ValueError, match="model.grid_resolution"):
        validate(MeshTrainConfig(model=MeshTrainConfig().model.__class__(grid_resolution=2)))
    assert main(["train", "mesh", "--output", str(tmp_path / "r"), "--optim.views-per-step", "0"]) == 1


def test_taubin_smoothing_removes_noise_without_shrinking():
    """A noisy icosphere: Taubin lambda|mu smoothing cuts the radial noise by more than half and keeps the mean
    radius within 1 % (plain Laplacian smoothing would shrink it)."""
    from recon.train.mesh import taubin_smooth

    from _mesh_util import icosphere

    verts, faces = icosphere(3)
    verts = torch.as_tensor(verts, dtype=torch.float32)
    faces = torch.as_tensor(faces, dtype=torch.long)
    noisy = verts + 0.02 * torch.randn(verts.shape, generator=torch.Generator().manual_seed(0))
    smooth = taubin_smooth(noisy, faces, 10)
    assert smooth.norm(dim=1).std() < 0.5 * noisy.norm(dim=1).std()
    assert abs(smooth.norm(dim=1).mean().item() - 1.0) < 0.01
    assert torch.equal(taubin_smooth(noisy, faces, 0), noisy)


def test_visible_faces_drops_a_hidden_inner_shell_only():
    """An icosphere with a smaller one inside it (the walls of a pocket no camera can see): every face of the
    outer sphere is seen from eight orbiting cameras, none of the inner one."""
    from recon.train.mesh import visible_faces

    from _mesh_util import cameras_at, icosphere

    angles = np.linspace(0, 2 * np.pi, 8, endpoint=False)
    eyes = 3.0 * np.stack([np.cos(angles), np.sin(angles), 0.6 * np.sin(3 * angles)], 1)
    verts, faces = icosphere(3)
    verts = torch.as_tensor(verts, dtype=torch.float32)
    faces = torch.as_tensor(faces, dtype=torch.long)
    both_v = torch.cat([verts, 0.5 * verts])
    both_f = torch.cat([faces, faces + len(verts)])
    seen = visible_faces(both_v, both_f, cameras_at(eyes, (64, 64), 80.0))
    assert seen.dtype == torch.bool and seen.shape == (2 * len(faces),)
    assert seen[: len(faces)].all()  # 1280 outer faces, each a few pixels wide at 2x supersampling
    assert not seen[len(faces):].any()


def test_hidden_regions_keep_unseen_slivers_between_seen_faces():
    """Only connected unseen regions of at least min_faces faces are culled: single unseen faces scattered among
    seen ones (slivers no raster sample hit) stay, so culling opens no pinholes."""
    from recon.train.mesh import hidden_regions, mesh_adjacency

    from _mesh_util import icosphere

    verts, faces = icosphere(3)
    faces = torch.as_tensor(faces, dtype=torch.long)
    verts = torch.as_tensor(verts, dtype=torch.float32)
    centers = verts[faces].mean(1)
    seen = torch.ones(len(faces), dtype=torch.bool)
    cap = centers[:, 2] > 0.8  # a connected cap of unseen faces
    seen[cap] = False
    _, pairs = mesh_adjacency(faces)
    lonely = torch.nonzero((centers[:, 2] < -0.2) & (centers[:, 2] > -0.5))[:, 0][::7][:5]
    assert not torch.isin(pairs[torch.isin(pairs[:, 0], lonely), 1], lonely).any()  # not adjacent to each other
    seen[lonely] = False
    culled = hidden_regions(faces, seen, min_faces=20)
    assert cap.sum() >= 20 and torch.equal(culled, cap)
    assert not hidden_regions(faces, seen, min_faces=int(cap.sum()) + 1).any()
