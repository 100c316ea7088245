"""`recon train mesh-pbr` end to end on a tiny setting of bob_field: the run directory, the inverse-rendering
evaluation, the exports (GLB with a roughness-metallic texture, the light as HDR / EXR), relighting the run and
its GLB, exact resume across the stage boundary, and a NaN in the light stopping training."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from recon.cli import main
from recon.data.io import read_image
from recon.train.checkpoint import load_checkpoint

# 20 iso-surface + 20 material steps at 64x64: about half a minute of training on 2 cores.
TINY = ["--downscale", "4", "--max-steps", "40", "--optim.geometry-steps", "20", "--model.grid-resolution", "24",
        "--model.texture-size", "64", "--model.light-height", "8", "--relight-spp", "2", "--no-progress",
        "--checkpoint-every", "20", "--optim.transfer-every", "15", "--optim.light-warmup", "5",
        "--model.init-albedo", "stage1"]


@pytest.fixture(scope="module")
def bob(test_data) -> Path:
    return test_data / "synthetic" / "bob_field"


@pytest.fixture(scope="module")
def pbr_run(bob, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("pbr") / "run"
    assert main(["train", "mesh-pbr", "--data", str(bob), "--output", str(run), *TINY]) == 0
    return run


def _config(run: Path, **changes):
    from recon.train.config import load_config_file

    method, cfg = load_config_file(run / "config.yaml")
    assert method == "mesh-pbr"
    return replace(cfg, **changes)


def test_train_mesh_pbr_writes_run_and_inverse_rendering_metrics(pbr_run):
    summary = json.loads((pbr_run / "eval.json").read_text())
    assert summary["step"] == 40 and summary["num_faces"] > 1000
    # Measured 22.1 dB on the 20 test views over white; an empty (all-white) render scores ~12 dB there.
    assert summary["psnr"] > 20.0, summary["psnr"]
    ir = summary["inverse_rendering"]
    for key in ("albedo_psnr", "roughness_mae", "normal_mae_deg", "relight_psnr"):
        assert isinstance(ir[key], float) and math.isfinite(ir[key]), (key, ir[key])
    assert set(ir["relight"]) == {"pisa", "doge2"}
    for env, entry in ir["relight"].items():
        assert math.isfinite(entry["psnr"]) and math.isfinite(entry["psnr_full"]), (env, entry)
    assert ir["relight_integrator"] == {"integrator": "mc", "spp": 2, "supersample": 2, "indirect": True}
    # Loose sanity after 40 steps (measured: albedo 15.7 dB, roughness MAE 0.35: the roughness search at the
    # last step, on a 20-step iso-surface at 64 x 64, shifts the roughness far from the true 0.5; normals
    # 14.7 degrees, relighting 13.8 dB over the object).
    assert ir["albedo_psnr"] > 12 and ir["roughness_mae"] < 0.5 and ir["normal_mae_deg"] < 30
    # The search ran: the final roughness texture's mean sits on a candidate (multiples of 0.05 from 0.15 to 0.85;
    # clamping to [0.02, 1] moves it by less than 0.01 here).
    mean = float(load_checkpoint(pbr_run / "checkpoints" / "step-0000040.pt")["model"]["material"][..., 0].mean())
    assert 0.14 <= mean <= 0.86 and abs(mean * 20 - round(mean * 20)) < 0.2, mean
    assert ir["relight_psnr"] > 10
    assert sorted(p.name for p in (pbr_run / "checkpoints").glob("*.pt")) == ["step-0000020.pt", "step-0000040.pt"]
    assert len(list((pbr_run / "renders" / "test").glob("*.png"))) == 20


def test_recon_eval_of_a_run_repeats_its_final_evaluation(pbr_run, tmp_path):
    """`recon eval RUN` shades as the run's final evaluation did (its eval_supersample, relight_spp and indirect
    bounce), so it reproduces eval.json; a shading option given on the command line overrides that one only."""
    trained = json.loads((pbr_run / "eval.json").read_text())
    assert main(["eval", str(pbr_run), "--out", str(tmp_path / "again.json")]) == 0
    again = json.loads((tmp_path / "again.json").read_text())
    assert again["inverse_rendering"]["relight_integrator"] == trained["inverse_rendering"]["relight_integrator"]
    assert abs(again["psnr"] - trained["psnr"]) < 0.05, (again["psnr"], trained["psnr"])
    for key in ("albedo_psnr", "roughness_mae", "normal_mae_deg", "relight_psnr", "relight_psnr_unaligned"):
        assert abs(again["inverse_rendering"][key] - trained["inverse_rendering"][key]) < 0.05, key
    assert main(["eval", str(pbr_run), "--out", str(tmp_path / "other.json"), "--supersample", "1",
                 "--indirect", "off"]) == 0
    other = json.loads((tmp_path / "other.json").read_text())
    assert other["inverse_rendering"]["relight_integrator"] == {"integrator": "mc", "spp": 2, "supersample": 1,
                                                                "indirect": False}
    assert other["psnr"] != again["psnr"]


def test_mesh_pbr_exports(pbr_run, tmp_path):
    from recon.export.mesh_io import load_mesh
    from recon.scenes.lit import LitScene

    glb, hdr = pbr_run / "exports" / "mesh.glb", pbr_run / "exports" / "light.hdr"
    assert glb.is_file() and hdr.is_file()
    state = load_checkpoint(pbr_run / "checkpoints" / "step-0000040.pt")
    scene = LitScene.from_state(state["scene"], source="ckpt")
    mesh = load_mesh(glb)
    rm = mesh.material.roughness_metallic
    assert rm is not None and tuple(rm.shape) == (64, 64, 2)
    # The GLB stores the learned roughness-metallic texture in 8 bits (glTF G = roughness, B = metallic).
    learned = scene.geometry.material.roughness_metallic.detach().clamp(0, 1)
    torch.testing.assert_close(rm.detach().float(), learned, rtol=0, atol=0.5 / 255 + 1e-6)
    assert len(mesh.faces) == len(scene.geometry.faces)

    exr = tmp_path / "light.exr"
    assert main(["export", str(pbr_run), "--format", "exr", "--out", str(exr)]) == 0
    a, b = read_image(exr)[..., :3], read_image(hdr)[..., :3]
    assert a.shape == b.shape == (8, 16, 3)
    # The EXR is the float32 map itself; RGBE rounds each channel to within 1/256 of the pixel's largest channel.
    np.testing.assert_allclose(a, scene.light.radiance().detach().numpy(), rtol=1e-6, atol=0)
    assert np.all(np.abs(a - b) <= a.max(-1, keepdims=True) / 256 + 1e-7)


def test_relight_run_and_its_glb_agree(pbr_run, bob, tmp_path):
    env = bob / "envmaps" / "pisa.hdr"
    common = ["--envmap", str(env), "--integrator", "mc", "--spp", "2"]
    assert main(["relight", str(pbr_run), *common, "--out", str(tmp_path / "run")]) == 0
    assert main(["relight", "--scene", str(pbr_run / "exports" / "mesh.glb"), "--data", str(bob), "--downscale", "4",
                 *common, "--out", str(tmp_path / "glb")]) == 0
    names = sorted(p.name for p in (tmp_path / "run").glob("*.png"))
    assert len(names) == 20 and names == sorted(p.name for p in (tmp_path / "glb").glob("*.png"))
    a = np.stack([read_image(tmp_path / "run" / n)[..., :3] for n in names])
    b = np.stack([read_image(tmp_path / "glb" / n)[..., :3] for n in names])
    # Only the GLB's 8-bit textures differ. Measured 60.9 dB (mean over views); acceptance: >= 40 dB.
    value = float(np.mean([-10 * np.log10(max(((x - y) ** 2).mean(), 1e-10)) for x, y in zip(a, b)]))
    assert value >= 40.0, value


def _same(a, b, where: str, diffs: dict) -> None:
    """Discrete state (indices, random states, steps) must be identical; float tensors are collected in
    ``diffs`` (path -> (a, b))."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        if a.is_floating_point():
            diffs[where] = (a, b)
        else:
            assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), where
        for k in a:
            _same(a[k], b[k], f"{where}.{k}", diffs)
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _same(x, y, f"{where}[{i}]", diffs)
    else:
        assert a == b, (where, a, b)


def test_mesh_pbr_resume_matches_uninterrupted_across_the_stage_boundary(pbr_run, tmp_path):
    """Resume from the last iso-surface checkpoint (step 20) through the stage change, checkpoint in the material
    stage (step 30), resume again (light and material from the checkpoint), and reach the uninterrupted run's
    step-40 state (discrete state identical, floats up to summation order)."""
    from recon.train.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(pbr_run / "checkpoints", run / "checkpoints")
    (run / "checkpoints" / "step-0000040.pt").unlink()
    cfg = _config(pbr_run)
    first = Trainer(cfg, run, resume=True)
    assert first.step == 20 and first.method.stage == "geometry"
    while first.step < 30:
        first.train_step()
    assert first.method.stage == "texture"
    first.save()
    mid = load_checkpoint(run / "checkpoints" / "step-0000030.pt")
    assert tuple(mid["model"]["material"].shape) == (64, 64, 2)
    assert tuple(mid["model"]["light"]["tensors"]["log_radiance"].shape) == (8, 16, 3)

    second = Trainer(cfg, run, resume=True)
    assert second.step == 30
    torch.testing.assert_close(second.method.light.log_radiance.detach(), first.method.light.log_radiance.detach(), rtol=0, atol=0)
    while second.step < 40:
        second.train_step()
    second.save()
    got = load_checkpoint(run / "checkpoints" / "step-0000040.pt")
    want = load_checkpoint(pbr_run / "checkpoints" / "step-0000040.pt")
    diffs: dict = {}
    for key in ("stage", "model", "optimizer", "scene", "order", "generator", "torch_rng"):
        _same(got[key], want[key], key, diffs)
    # Bit-exact except for floating-point summation order: with 2 threads the CPU backward of the PBR path
    # (vertex-offset gradients) differs run to run by ~1e-11, which 20 Adam steps grow to at most 2.7e-7
    # (measured, texture). A lost or misloaded state (Adam moments, light, material, data order) moves the
    # parameters by ~the learning rate (1e-2).
    assert {"model.material", "model.light.tensors.log_radiance", "model.texture", "model.offsets"} <= set(diffs)
    for where, (a, b) in diffs.items():
        if where.startswith("optimizer"):  # moments: relative, their scale is the gradients'
            torch.testing.assert_close(a, b, rtol=1e-2, atol=1e-9, msg=where)
        else:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=where)
    assert set(got["model"]) >= {"texture", "offsets", "material", "light"}


def test_nan_in_the_light_stops_training_and_keeps_the_last_checkpoint(pbr_run, tmp_path):
    from recon.train.trainer import Trainer, TrainingError

    run = tmp_path / "run"
    shutil.copytree(pbr_run / "checkpoints", run / "checkpoints")
    last = run / "checkpoints" / "step-0000040.pt"
    digest = hashlib.sha256(last.read_bytes()).hexdigest()
    cfg = _config(pbr_run, max_steps=50, checkpoint_every=1)

    def poison(step, trainer):
        if step == 41:
            trainer.method.light.log_radiance.data[0, 0, 0] = float("nan")

    # The hook runs before the step-41 checkpoint: saving refuses the NaN parameter.
    trainer = Trainer(cfg, run, resume=True, hooks=[poison])
    with pytest.raises(TrainingError, match=r"parameter 'light' became NaN/Inf at step 41.*step-0000040\.pt"):
        trainer.train()
    # A NaN light makes the next loss NaN as well.
    with pytest.raises(TrainingError, match=r"loss became nan at step 42.*step-0000040\.pt"):
        trainer.train_step()
    assert sorted(p.name for p in (run / "checkpoints").glob("*.pt")) == ["step-0000020.pt", "step-0000040.pt"]
    assert hashlib.sha256(last.read_bytes()).hexdigest() == digest
    state = load_checkpoint(last)
    assert torch.isfinite(state["model"]["light"]["tensors"]["log_radiance"]).all()


def test_mesh_run_ending_in_the_iso_surface_stage_warns(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "mesh", "--downscale", "4", "--max-steps", "10", "--optim.geometry-steps", "20",
                 "--model.grid-resolution", "16", "--no-progress", "--output", str(run)]) == 0
    err = capsys.readouterr().err
    assert "max_steps (10) <= optim.geometry_steps (20)" in err and "refinement stage is skipped" in err
    assert json.loads((run / "eval.json").read_text())["step"] == 10
    assert (run / "exports" / "mesh.glb").is_file()


def test_mesh_pbr_from_the_ground_truth_mesh(bob, tmp_path, capsys):
    """`model.init_mesh`: the refinement stage starts from a mesh file. On bob_field's gt_asset.glb with frozen
    vertices the run keeps its exact geometry, so the normal error is that of vertex-normal interpolation
    alone (measured 0.84 deg at this size, vs 14.7 deg from the 20-step iso-surface of the fixture)."""
    from recon.export.mesh_io import load_mesh

    gt = bob / "gt_asset.glb"
    run = tmp_path / "run"
    args = ["train", "mesh-pbr", "--data", str(bob), "--output", str(run), *TINY, "--optim.geometry-steps", "0",
            "--model.init-mesh", str(gt), "--optim.lr-vertices", "0", "--model.smooth-iterations", "0",
            "--model.no-cull-hidden", "--max-steps", "10"]
    assert main(args) == 0
    ir = json.loads((run / "eval.json").read_text())["inverse_rendering"]
    assert ir["normal_mae_deg"] < 3.0, ir["normal_mae_deg"]
    mesh, ref = load_mesh(run / "exports" / "mesh.glb"), load_mesh(gt)
    assert len(mesh.faces) == len(ref.faces)
    # The GLB welds vertices by position + UV; every vertex lies on a ground-truth vertex.
    d = torch.cdist(mesh.vertices.double(), ref.vertices.double()).min(1).values
    assert d.max() < 1e-5, d.max()
    capsys.readouterr()
    assert main(["train", "mesh-pbr", "--data", str(bob), "--output", str(tmp_path / "bad"),
                 "--model.init-mesh", str(gt)]) == 1
    err = capsys.readouterr().err
    assert "'model.init_mesh'" in err and "needs optim.geometry_steps 0, got 600" in err, err
    assert main(["train", "mesh-pbr", "--data", str(bob), "--output", str(tmp_path / "bad2"),
                 "--optim.geometry-steps", "0", "--model.init-mesh", str(tmp_path / "missing.glb")]) == 1
    err = capsys.readouterr().err
    assert "'model.init_mesh' must be an existing mesh file" in err and "missing.glb" in err, err


def test_light_warmup_holds_the_base_color_and_material(bob, tmp_path, monkeypatch):
    """`model.init_albedo constant` + `optim.light_warmup`: the material stage starts from one base color (the
    mean of the initial colors) and, for the warm-up steps, base color and roughness-metallic hold still while
    the light (and the vertices) learn, so the light, not the base color, takes up the shading first. The
    zero shrink of the base color (`optim.albedo_zero_shrink`) waits for the warm-up too, then acts every step
    by the texture's learning rate under 0.02 of each texel's brightest channel."""
    import recon.train.mesh_pbr as mesh_pbr

    calls = []
    original = mesh_pbr.shrink_small

    def spy(values, below, amount):
        calls.append((values.detach().clone(), below.detach().clone(), amount))
        return original(values, below, amount)

    monkeypatch.setattr(mesh_pbr, "shrink_small", spy)
    run = tmp_path / "run"
    args = ["train", "mesh-pbr", "--data", str(bob), "--output", str(run), *TINY, "--optim.geometry-steps", "0",
            "--model.init-mesh", str(bob / "gt_asset.glb"), "--model.no-cull-hidden", "--max-steps", "6",
            "--optim.light-warmup", "3", "--model.init-albedo", "constant", "--optim.roughness-search", "0",
            "--checkpoint-every", "3"]
    assert main(args) == 0
    warm = load_checkpoint(run / "checkpoints" / "step-0000003.pt")["model"]
    tex = warm["texture"]
    assert float((tex - tex[:1, :1]).abs().max()) == 0.0  # one color everywhere
    assert torch.equal(warm["material"], torch.tensor([0.6, 0.05]).expand(64, 64, 2))
    assert float(warm["offsets"].abs().max()) > 0.0  # the vertices learn from the first step
    log_l = warm["light"]["tensors"]["log_radiance"]
    assert float(log_l.std()) > 0.03  # started constant; three steps at lr 3e-2 spread it
    assert "bounce" in warm and len(warm["bounce"]["source"]) > 0
    after = load_checkpoint(run / "checkpoints" / "step-0000006.pt")["model"]
    assert float((after["texture"] - tex).abs().max()) > 1e-3  # the base color learns after the warm-up
    assert float((after["material"] - warm["material"]).abs().max()) > 0.001
    assert len(calls) == 3  # steps 4..6, none in the warm-up
    for values, below, amount in calls:
        torch.testing.assert_close(below, 0.02 * values.amax(-1, keepdim=True))
        assert 1e-3 < amount <= 0.02  # optim.lr_texture (2e-2) on its decay


def test_known_light_from_a_file(bob, tmp_path, capsys, monkeypatch):
    """`model.envmap` starts the light from an HDR file (resampled to `model.light_height` rows) and, with
    `optim.lr_light 0`, keeps it: inverse rendering under a known light (the light warm-up is skipped). The base
    color starts at the mean initial color over the map's mean luminance, as a constant light of that radiance
    would start it; the path is stored absolute, and a missing or unreadable map stops training at once."""
    from recon.shading.envmap import EnvLight

    env = bob / "envmaps" / "field.hdr"
    base = ["train", "mesh-pbr", "--data", str(bob), *TINY, "--optim.geometry-steps", "0",
            "--model.init-mesh", str(bob / "gt_asset.glb"), "--model.no-cull-hidden", "--max-steps", "4",
            "--optim.light-warmup", "3", "--model.init-albedo", "constant", "--optim.roughness-search", "0",
            "--checkpoint-every", "2"]
    monkeypatch.chdir(bob)
    assert main([*base, "--output", str(tmp_path / "run"), "--model.envmap", "envmaps/field.hdr",
                 "--optim.lr-light", "0"]) == 0
    expected = EnvLight.from_file(env).resized(8)
    first = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000002.pt")["model"]
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000004.pt")["model"]
    for st in (first, last):
        torch.testing.assert_close(st["light"]["tensors"]["log_radiance"], expected.log_radiance.detach(),
                                   rtol=0, atol=1e-6)
    # No warm-up under a fixed light: the base color learns from the first step.
    assert float((first["texture"] - first["texture"][:1, :1]).abs().max()) > 1e-3
    assert float((last["texture"] - first["texture"]).abs().max()) > 1e-3
    from recon.train.config import load_config_file

    _, cfg = load_config_file(tmp_path / "run" / "config.yaml")
    assert cfg.model.envmap == str(env.resolve())
    # The start: with the light learning and a warm-up, the base color holds still for 3 steps, so step 2 shows
    # it; a constant light of the map's mean luminance starts from the same base color.
    mean = expected.mean_luminance()
    runs = {}
    for name, extra in (("file", ["--model.envmap", str(env)]), ("constant", ["--model.init-light", str(mean)])):
        assert main([*base, "--output", str(tmp_path / name), "--max-steps", "2", *extra]) == 0
        runs[name] = load_checkpoint(tmp_path / name / "checkpoints" / "step-0000002.pt")["model"]["texture"]
    torch.testing.assert_close(runs["file"], runs["constant"], rtol=0, atol=1e-6)
    assert float(runs["file"].mean()) > 0.02  # not clamped away
    capsys.readouterr()
    bad = [*base, "--output", str(tmp_path / "bad"), "--model.envmap", str(tmp_path / "missing.hdr")]
    assert main(bad) == 1
    err = capsys.readouterr().err
    assert "'model.envmap' must be an existing .hdr or .exr file" in err and "missing.hdr" in err, err
    corrupt = tmp_path / "corrupt.hdr"
    corrupt.write_bytes(b"not a radiance file")
    bad[-1] = str(corrupt)
    assert main(bad) == 1  # refused before any training step
    err = capsys.readouterr().err
    assert "model.envmap" in err and "corrupt.hdr" in err and not (tmp_path / "bad" / "checkpoints").exists(), err


@pytest.mark.parametrize("integrator", ["splitsum", "mc"])
def test_demodulated_shading_channel(integrator):
    """The "shading" channel is the shading of a base color of 1: it does not depend on the base color, and for
    a white dielectric it is the rendered radiance itself."""
    from _mesh_util import cameras_at, icosphere

    from recon.color import linear_to_srgb
    from recon.renderers import MeshSettings, RenderSettings, ShadingSettings
    from recon.renderers.mesh.render import MeshArrays, render_mesh_arrays
    from recon.shading.envmap import EnvLight

    verts, faces = icosphere(3)
    verts, faces = torch.as_tensor(verts, dtype=torch.float32), torch.as_tensor(faces, dtype=torch.long)
    sky = torch.linspace(1.6, 0.2, 8)[:, None, None].expand(8, 16, 3) * torch.tensor([1.0, 0.9, 0.8])
    light = EnvLight(sky.contiguous())
    cams = cameras_at(np.array([[3.0, 0.5, 1.0]]), (32, 32), 40.0)
    settings = RenderSettings(channels=("rgb", "alpha", "shading"), mesh=MeshSettings(antialias=False),
                              shading=ShadingSettings(integrator=integrator, spp=4, seed=3))
    outs = {}
    for gray in (1.0, 0.4):
        arrays = MeshArrays(vertices=verts, faces=faces, vertex_colors=torch.full_like(verts, gray),
                            roughness_factor=0.5, metallic_factor=0.0)
        outs[gray] = render_mesh_arrays(arrays, cams, settings, shading="pbr", light=light)
    covered = outs[1.0].alpha[..., 0] > 0
    assert covered.sum() > 100
    shading = outs[1.0].gbuffer["shading"]
    torch.testing.assert_close(outs[0.4].gbuffer["shading"], shading)
    assert (shading[covered] > 0.05).all() and (shading[~covered] == 0).all()
    torch.testing.assert_close(linear_to_srgb(shading.clamp(0, 1))[covered], outs[1.0].rgb[covered])
    # A darker base color darkens the radiance but not the shading.
    assert (outs[0.4].rgb[covered] < outs[1.0].rgb[covered]).all()


def test_monochrome_shading_loss():
    """Zero where the shading's luminance equals the image's brightest linear channel on the object; the
    background (alpha 0) does not count; otherwise positive and differentiable."""
    from recon.color import linear_to_srgb
    from recon.train.mesh_pbr import monochrome_shading_loss

    g = torch.Generator().manual_seed(0)
    linear = torch.rand(2, 8, 8, 3, generator=g) * 0.9 + 0.05
    alpha = (torch.rand(2, 8, 8, 1, generator=g) > 0.3).float()
    images = torch.cat([linear_to_srgb(linear), alpha], -1)
    match = linear.amax(-1, keepdim=True).expand(-1, -1, -1, 3).clone()
    assert monochrome_shading_loss(match, images).item() < 1e-6
    off_object = match + 5.0 * (1 - alpha)
    assert monochrome_shading_loss(off_object, images).item() < 1e-6
    darker = (0.5 * match).requires_grad_(True)
    loss = monochrome_shading_loss(darker, images)
    assert loss.item() > 0.01
    loss.backward()
    assert torch.isfinite(darker.grad).all() and (darker.grad[alpha[..., 0] > 0] < 0).all()


def test_shrink_small_reaches_exact_zeros_where_the_data_is_indifferent():
    """`optim.albedo_zero_shrink`: the proximal step moves only entries under the threshold, by the amount and
    not past 0. Inside Adam at the default strength, channels whose data hovers near 0 (image noise plus a small
    bias, as bob_field's body blue) end exactly at 0, which plain Adam never reaches, while a bright channel
    keeps its value."""
    from recon.train.mesh_pbr import shrink_small

    v = torch.tensor([-0.01, 0.0, 0.005, 0.019, 0.02, 0.5])
    shrink_small(v, 0.02, 0.01)
    assert v.tolist() == pytest.approx([0.0, 0.0, 0.0, 0.009, 0.02, 0.5])

    def fit(target: float, shrink: float) -> torch.Tensor:
        g = torch.Generator().manual_seed(0)
        x = torch.nn.Parameter(torch.full((500,), 0.1))
        opt = torch.optim.Adam([x], lr=0.01)
        for step in range(600):
            lr = 0.01 * 0.1 ** (step / 600)  # the material stage's decay to lr_final_fraction 0.1
            opt.param_groups[0]["lr"] = lr
            noisy = target + 0.02 * torch.randn(500, generator=g)
            loss = (x - noisy).abs().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                shrink_small(x, 0.02, shrink * lr)
                x.clamp_(0, 1)
        return x.detach()

    plain, zeroed = fit(0.002, 0.0), fit(0.002, 1.0)
    assert float((plain == 0).float().mean()) < 0.5 and float(plain.median()) > 5e-4
    assert bool((zeroed == 0).all())
    bright = fit(0.4, 1.0)
    assert float((bright - 0.4).abs().median()) < 0.01


def test_albedo_normal_correlation_sees_shading_in_the_base_color():
    """`optim.lambda_albedo_normal`: zero for a base color that does not depend on the normal (a constant, also
    where the normals cover only part of the sphere, or too few pixels to tell) and for a tint that follows
    the normal at constant brightness; about the variance of a shading factor painted in (log(1 + 0.3 n_z):
    mean square ~0.03), small for colors unrelated to the normal; pixels under the floor and of weight 0 do
    not count, and the gradient lowers the painted-in part."""
    from recon.train.mesh_pbr import albedo_normal_correlation

    g = torch.Generator().manual_seed(0)
    n = torch.nn.functional.normalize(torch.randn(4000, 3, generator=g), dim=-1)
    w = torch.ones(4000, 1)
    const = torch.full((4000, 3), 0.5)
    assert albedo_normal_correlation(const, n, w).item() < 1e-9
    # Normals that cover part of the sphere only (one direction, a narrow cone, a hemisphere): a constant color
    # is still not a function of them.
    up = torch.tensor([0.0, 0.0, 1.0])
    cone = torch.nn.functional.normalize(up + 0.05 * torch.randn(4000, 3, generator=g), dim=-1)
    for partial in (up.expand(4000, 3), cone, n.abs()):
        assert albedo_normal_correlation(const, partial, w).item() < 1e-9
    assert albedo_normal_correlation(torch.rand(100, 3, generator=g), n[:100], w[:100]).item() == 0.0  # too few
    # Brightness only: a tint that follows the normal is not the light's business.
    tint = torch.cat([0.5 + 0.2 * n[:, 2:3], 0.5 - 0.2 * n[:, 2:3], torch.full((4000, 1), 0.5)], -1)
    assert albedo_normal_correlation(tint, n, w).item() < 1e-9
    unrelated = torch.rand(4000, 3, generator=g) * 0.5 + 0.2
    assert albedo_normal_correlation(unrelated, n, w).item() < 2e-3
    factor = 1 + 0.3 * n[:, 2:3]
    painted = (torch.tensor([0.8, 0.5, 0.3]) * factor).requires_grad_(True)
    loss = albedo_normal_correlation(painted, n, w)
    expected = float(torch.log(factor).var())
    assert loss.item() == pytest.approx(expected, rel=0.05)
    loss.backward()
    up = n[:, 2] > 0.5
    assert (painted.grad[up] > 0).all() and (painted.grad[n[:, 2] < -0.5] < 0).all()
    # Pixels darker than the floor and weight-0 pixels change nothing.
    dark = painted.detach().clone()
    dark[:2000] = 0.001
    assert albedo_normal_correlation(dark, n, w).item() == pytest.approx(
        albedo_normal_correlation(painted.detach()[2000:], n[2000:], w[2000:]).item(), rel=1e-4)
    half = torch.cat([torch.ones(2000, 1), torch.zeros(2000, 1)])
    mixed = torch.cat([painted.detach()[:2000], unrelated[2000:] * 5], 0)
    assert albedo_normal_correlation(mixed, n, half).item() == pytest.approx(
        albedo_normal_correlation(painted.detach()[:2000], n[:2000], w[:2000]).item(), rel=1e-4)


def test_vertex_indirect_reflectance_from_textures_or_vertex_colors():
    """The per-vertex bounce (split-sum's interreflection): a constant base color c reflects c times the bounced
    direct irradiance, whether it comes from a texture or from vertex colors (with the glTF color factor);
    a metallic surface reflects no diffuse light."""
    from recon.renderers.mesh.render import MeshArrays
    from recon.shading.envmap import EnvLight
    from recon.train.mesh_pbr import vertex_indirect

    g = torch.Generator().manual_seed(0)
    V = 6
    verts = torch.randn(V, 3, generator=g)
    faces = torch.tensor([[0, 1, 2], [2, 3, 0], [3, 4, 5], [5, 1, 3]])
    uvs = torch.rand(V, 2, generator=g)
    transfer = torch.rand(V, 17, generator=g)
    dense = torch.rand(V, V, generator=g) * (torch.rand(V, V, generator=g) > 0.5)
    bounce = dense.to_sparse().coalesce()
    light = EnvLight.constant((1.0, 0.5, 0.25), height=8)
    color, factor = torch.tensor([0.6, 0.4, 0.2]), torch.tensor([0.5, 1.0, 1.0])
    textured = MeshArrays(vertices=verts, faces=faces, uvs=uvs, uv_faces=faces,
                          base_color=color.expand(4, 4, 3).clone(), roughness_metallic=torch.zeros(4, 4, 2),
                          color_factor=factor, metallic_factor=1.0, transfer=transfer)
    colored = MeshArrays(vertices=verts, faces=faces, vertex_colors=color.expand(V, 3).clone(),
                         color_factor=factor, metallic_factor=0.0, transfer=transfer)
    gray = MeshArrays(vertices=verts, faces=faces, transfer=transfer)  # the renderer's DEFAULT_GRAY, 0.5
    with torch.no_grad():
        a, b, w = (vertex_indirect(x, bounce, light, backend="torch") for x in (textured, colored, gray))
    assert w.abs().sum() > 0
    torch.testing.assert_close(a, w / 0.5 * color * factor, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    textured.roughness_metallic = torch.ones(4, 4, 2)
    with torch.no_grad():
        assert vertex_indirect(textured, bounce, light, backend="torch").abs().max() == 0


def test_light_error_script(pbr_run):
    """scripts/light_error.py: a constant light of radiance L gives irradiance pi L along every axis (the
    cosine lobe of the SH projection); on a run it prints the true and learned irradiance along the six axes and
    the base color's error split by the normal's z, whose shares of pixels and of error each sum to 100 %."""
    import importlib.util
    import re
    import subprocess
    import sys

    from recon.shading.envmap import EnvLight

    path = Path(__file__).resolve().parents[1] / "scripts" / "light_error.py"
    spec = importlib.util.spec_from_file_location("light_error", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dirs = torch.tensor(list(module.AXES.values()), dtype=torch.float64)
    e = module.irradiance(EnvLight.constant((1.0, 0.5, 0.25), height=16), dirs)
    torch.testing.assert_close(e, math.pi * torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64).expand(6, 3),
                               rtol=5e-3, atol=0)  # texel quadrature at 16 rows: 0.2 %
    run = subprocess.run([sys.executable, str(path), str(pbr_run)], capture_output=True, text=True, check=True)
    lines = run.stdout.splitlines()
    assert sum(line.lstrip().startswith(("+", "-")) and "true" in line for line in lines) == 6, run.stdout
    # The synthetic sets' field light is nearly black from below.
    below = next(line for line in lines if line.lstrip().startswith("-Z"))
    assert all(float(v) < 0.1 for v in below.split("true")[1].split("learned")[0].split()), below
    shares = [re.findall(r"([\d.]+)% of the", line) for line in lines if line.lstrip().startswith("n_z")]
    assert len(shares) == 4
    for k in range(2):
        assert abs(sum(float(s[k]) for s in shares) - 100.0) < 0.5, shares
