"""`recon train sdf-pbr` and `recon train mesh[-pbr] --model.geometry sdf`: a neural SDF (NeuS, the `recon train
sdf` field and step) as the topology stage of the mesh trainers, its zero set extracted by marching cubes and
handed to the refinement / material stage. Tiny settings of bob_field (64x64): the run directory and its
inverse-rendering evaluation, the checkpoints of both stages, exact resume across the stage change, a run that
ends in the SDF stage, and bad configs."""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from recon.cli import main
from recon.train.checkpoint import load_checkpoint

# 60 SDF steps + 20 material steps at 64x64, a 48^3 marching-cubes grid: ~20 s of training on 2 cores.
TINY = ["--downscale", "4", "--max-steps", "80", "--optim.geometry-steps", "60",
        "--field.model.resolutions", "16", "32", "--field.model.samples", "32", "--field.optim.rays-per-step", "512",
        "--model.field-resolution", "48", "--model.texture-size", "64", "--model.light-height", "8",
        "--relight-spp", "2", "--no-progress", "--checkpoint-every", "60", "--optim.transfer-every", "10",
        "--optim.light-warmup", "4", "--eval-every", "40", "--log-every", "10"]


@pytest.fixture(scope="module")
def bob(test_data) -> Path:
    return test_data / "synthetic" / "bob_field"


@pytest.fixture(scope="module")
def sdf_pbr_run(bob, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("sdfpbr") / "run"
    assert main(["train", "sdf-pbr", "--data", str(bob), "--output", str(run), *TINY]) == 0
    return run


def _config(run: Path):
    from recon.train.config import load_config_file

    method, cfg = load_config_file(run / "config.yaml")
    assert method == "sdf-pbr"
    return cfg


def test_sdf_pbr_run_trains_the_sdf_then_the_material_stage(sdf_pbr_run):
    from recon.scenes.fields import field_from_state
    from recon.scenes.sdf import NeuralSDF

    cfg = _config(sdf_pbr_run)
    assert cfg.model.geometry == "sdf" and cfg.optim.geometry_steps == 60
    assert cfg.field.model.resolutions == (16, 32)
    lines = [json.loads(x) for x in (sdf_pbr_run / "metrics.jsonl").read_text().splitlines()]
    # The SDF stage logs NeuS's statistics; the evaluation at step 40 rendered the field (sphere tracing).
    sdf_steps = [x for x in lines if "loss" in x and x["step"] <= 60]
    material_steps = [x for x in lines if "loss" in x and x["step"] > 60]
    assert len(sdf_steps) == 6 and len(material_steps) == 2
    assert all("inv_s" in x for x in sdf_steps)
    assert all("num_faces" in x and "inv_s" not in x for x in material_steps)
    evals = {x["step"]: x for x in lines if "eval_psnr" in x}
    assert set(evals) == {40}
    assert evals[40]["eval_psnr"] > 14.0, evals
    # The stage-end checkpoint holds the field, the last one the lit mesh.
    first = load_checkpoint(sdf_pbr_run / "checkpoints" / "step-0000060.pt")
    assert first["stage"] == "geometry" and first["model"] == {"geometry": "sdf"}
    field = field_from_state(first["scene"], "step 60")
    assert isinstance(field, NeuralSDF)
    with torch.no_grad():  # the SDF is negative inside the duck's body and positive at the box corners
        assert float(field.sdf(torch.zeros(1, 3))) < 0 < float(field.sdf(field.hi[None] * 0.99))
    last = load_checkpoint(sdf_pbr_run / "checkpoints" / "step-0000080.pt")
    assert last["stage"] == "texture" and "light" in last["model"]
    summary = json.loads((sdf_pbr_run / "eval.json").read_text())
    assert summary["step"] == 80 and summary["num_faces"] > 1000
    # The mesh of 60 SDF steps at 64x64 is a rough duck; above an empty render's ~12 dB, every metric finite.
    assert summary["psnr"] > 16.0, summary["psnr"]
    ir = summary["inverse_rendering"]
    for key in ("albedo_psnr", "roughness_mae", "normal_mae_deg", "relight_psnr"):
        assert isinstance(ir[key], float) and math.isfinite(ir[key]), (key, ir[key])
    assert ir["normal_mae_deg"] < 45, ir["normal_mae_deg"]  # measured 31 deg
    assert (sdf_pbr_run / "exports" / "mesh.glb").is_file() and (sdf_pbr_run / "exports" / "light.hdr").is_file()


def _close(got, want, where: str, atol: float) -> None:
    if isinstance(want, dict):
        assert set(got) == set(want), where
        for k in want:
            _close(got[k], want[k], f"{where}.{k}", atol)
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            _close(g, w, f"{where}[{i}]", atol)
    elif isinstance(want, torch.Tensor):
        assert got.shape == want.shape and got.dtype == want.dtype, where
        if want.dtype.is_floating_point:
            torch.testing.assert_close(got, want, rtol=0, atol=atol, msg=where)
        else:
            assert torch.equal(got, want), where
    else:
        assert got == want, where


def test_sdf_pbr_resumes_across_the_stage_change(sdf_pbr_run, tmp_path):
    """Resume from the SDF stage's last checkpoint (step 60) through the marching cubes into the material stage:
    the same mesh (faces identical), texture, light and optimizer state as the uninterrupted run at step 80."""
    from recon.train.trainer import Trainer

    run = tmp_path / "run"
    shutil.copytree(sdf_pbr_run / "checkpoints", run / "checkpoints")
    (run / "checkpoints" / "step-0000080.pt").unlink()
    cfg = replace(_config(sdf_pbr_run), eval_every=0)
    resumed = Trainer(cfg, run, resume=True)
    assert resumed.step == 60 and resumed.method.stage == "geometry" and resumed.method.field_stage is not None
    while resumed.step < 80:
        resumed.train_step()
    assert resumed.method.stage == "texture" and resumed.method.field_stage is None
    resumed.save()
    got = load_checkpoint(run / "checkpoints" / "step-0000080.pt")
    want = load_checkpoint(sdf_pbr_run / "checkpoints" / "step-0000080.pt")
    assert torch.equal(got["model"]["faces"], want["model"]["faces"])
    # floats up to the CPU backward's summation order (as tests/test_mesh_pbr_train.py)
    for key in ("stage", "model", "optimizer", "order", "generator"):
        _close(got[key], want[key], key, atol=1e-5)


@pytest.mark.parametrize("method", ["mesh", "sdf-pbr"])
def test_run_ending_in_its_sdf_stage_exports_the_field(bob, tmp_path, capsys, method):
    run = tmp_path / "run"
    args = ["train", method, "--data", str(bob), "--output", str(run), "--downscale", "4", "--max-steps", "6",
            "--model.geometry", "sdf", "--optim.geometry-steps", "6", "--field.model.resolutions", "16",
            "--field.model.samples", "16", "--field.optim.rays-per-step", "64", "--no-progress"]
    assert main(args) == 0
    assert "the run ends as the neural SDF" in capsys.readouterr().err
    assert (run / "exports" / "field.pt").is_file()
    assert main(["export", str(run), "--format", "ply", "--resolution", "32", "--out", str(tmp_path / "m.ply")]) == 0
    assert (tmp_path / "m.ply").stat().st_size > 1000


@pytest.mark.parametrize("extra, field", [
    (["--optim.geometry-steps", "0"], "model.geometry"),
    (["--field.model.resolutions", "1"], "field.model.resolutions"),
    (["--field.optim.rays-per-step", "12"], "field.optim.rays_per_step"),
    (["--model.field-resolution", "8"], "model.field_resolution"),
])
def test_bad_sdf_stage_configs_name_the_field(bob, tmp_path, capsys, extra, field):
    assert main(["train", "sdf-pbr", "--data", str(bob), "--output", str(tmp_path / "r"), *extra]) == 1
    err = capsys.readouterr().err
    assert f"'{field}'" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_a_tetgrid_checkpoint_does_not_resume_as_an_sdf_stage(tmp_path):
    from recon.train.mesh import MeshMethod

    method = MeshMethod.__new__(MeshMethod)
    method.cfg = type("C", (), {"model": type("M", (), {"geometry": "sdf"})()})()
    with pytest.raises(ValueError, match="not a checkpoint of a model.geometry sdf stage"):
        method.setup({"stage": "geometry", "model": {"sdf": torch.zeros(3)}}, "ck.pt")
