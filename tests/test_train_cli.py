"""End to end through the CLI on the embedded sample scene: train, eval, render, export, resume, bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from _resume import straight_and_resumed

from recon.cli import main
from recon.data.sample import ensure_sample_scene
from recon.train.checkpoint import load_checkpoint
from recon.train.config import GaussianTrainConfig
from recon.train.trainer import Trainer, TrainingError

# Small but real: the sample scene at 64x64, a few hundred steps; the quality bound is far above what an
# untrained or broken pipeline gives (the initial carved point cloud renders at ~14 dB).
FAST = ["--downscale", "2", "--max-steps", "400", "--densify.start", "100", "--densify.interval", "50",
        "--densify.opacity-reset-interval", "0", "--no-progress", "--checkpoint-every", "200"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "sample"
    assert main(["train", "gaussians", "--data", str(ensure_sample_scene()), "--output", str(run), *FAST]) == 0
    return run


def test_train_writes_run_and_reaches_quality(run_dir):
    summary = json.loads((run_dir / "eval.json").read_text())
    assert set(summary) >= {"psnr", "ssim", "num_gaussians", "train_seconds", "views"}
    assert summary["psnr"] > 25.0, summary["psnr"]
    assert summary["ssim"] > 0.8
    assert len(summary["views"]) == 8 and {"name", "psnr", "ssim"} <= set(summary["views"][0])
    assert (run_dir / "config.yaml").is_file() and (run_dir / "exports" / "scene.ply").is_file()
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 400
    assert len(list((run_dir / "renders" / "test").glob("*.png"))) == 8


def test_eval_matches_training_eval(run_dir, tmp_path):
    out = tmp_path / "eval.json"
    assert main(["eval", str(run_dir), "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    first = json.loads((run_dir / "eval.json").read_text())
    assert again["psnr"] == pytest.approx(first["psnr"], abs=1e-3)


def test_render_channels(run_dir, tmp_path):
    out = tmp_path / "frames"
    assert main(["render", str(run_dir), "--split", "test", "--channels", "rgb,depth,alpha", "--out", str(out)]) == 0
    depth = np.load(out / "r_0_depth.npy")
    assert depth.dtype == np.float32 and depth.shape == (64, 64)
    from recon.data.io import read_image

    alpha = read_image(out / "r_0_alpha.png")[..., 0]
    # Object pixels sit ~3-5 units from the camera (radius-4 orbit around a unit-sphere object); background is 0.
    assert np.all(depth[alpha > 0.9] > 2.0) and np.all(depth[alpha > 0.9] < 6.0)
    assert np.all(depth[alpha < 1e-3] == 0)


def test_export_and_render_scene_file(run_dir, tmp_path):
    ply = tmp_path / "scene.ply"
    assert main(["export", str(run_dir), "--format", "ply", "--out", str(ply)]) == 0
    out = tmp_path / "from_ply"
    assert main(["render", "--scene", str(ply), "--data", str(ensure_sample_scene()), "--downscale", "2",
                 "--out", str(out)]) == 0
    from recon.data.io import read_image

    a = read_image(out / "r_0.png")[..., :3]
    b = read_image(run_dir / "renders" / "test" / "r_0.png")[..., :3]
    assert np.abs(a - b).max() <= 1.5 / 255


def test_resume_continues_from_checkpoint(run_dir, tmp_path):
    import shutil

    run = tmp_path / "resumed"
    shutil.copytree(run_dir, run)
    assert main(["train", "--resume", str(run), "--max-steps", "450", "--no-progress"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 450
    assert json.loads((run / "eval.json").read_text())["psnr"] > 25.0


def test_bad_config_value_fails_at_once(tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path / "r"), "--max-steps", "0"]) == 1
    assert "'max_steps' must be an integer >= 1, got 0" in capsys.readouterr().err
    assert main(["train", "--config", str(tmp_path / "nope.yaml")]) == 1
    assert "config file not found" in capsys.readouterr().err


def test_nan_loss_stops_with_last_good_checkpoint(tmp_path):
    cfg = GaussianTrainConfig(data=ensure_sample_scene(), downscale=4, max_steps=30, checkpoint_every=10,
                              progress=False)

    def poison(step, trainer):
        if step == 15:
            trainer.scene.sh_dc.data[:] = float("nan")

    trainer = Trainer(cfg, tmp_path / "run", hooks=[poison])
    with pytest.raises(TrainingError, match=r"loss became nan at step 16.*step-0000010\.pt"):
        trainer.train()
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-0000010.pt")
    assert all(torch.isfinite(v).all() for v in state["scene"]["params"].values())


def test_render_orbit(run_dir, tmp_path):
    out = tmp_path / "orbit"
    assert main(["render", str(run_dir), "--path", "orbit", "--frames", "4", "--out", str(out)]) == 0
    frames = sorted(out.glob("orbit_*.png"))
    assert len(frames) == 4
    from recon.data.io import read_image

    img = read_image(frames[0])[..., :3]
    # the object is in view: a good share of pixels differ from the white background
    assert (np.abs(img - 1.0).max(axis=-1) > 0.1).mean() > 0.05
    try:
        import imageio_ffmpeg  # noqa: F401
    except ImportError:
        return
    assert (out / "orbit.mp4").stat().st_size > 0


def test_sigterm_checkpoints_and_resume_finishes(tmp_path):
    import os
    import signal

    cfg = GaussianTrainConfig(data=ensure_sample_scene(), downscale=4, max_steps=40, checkpoint_every=1000,
                              progress=False)

    def kill(step, trainer):
        if step == 15:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(KeyboardInterrupt):
        Trainer(cfg, tmp_path / "run", hooks=[kill]).train()
    assert (tmp_path / "run" / "checkpoints" / "step-0000015.pt").is_file()
    resumed = Trainer(cfg, tmp_path / "run", resume=True)
    assert resumed.step == 15 and len(resumed.scene) > 0
    summary = resumed.train()
    assert summary["step"] == 40
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_fresh_run_refuses_a_directory_with_checkpoints(run_dir, capsys):
    assert main(["train", "--output", str(run_dir), "--max-steps", "5", "--no-progress"]) == 1
    assert "already holds checkpoints" in capsys.readouterr().err


@pytest.mark.slow
def test_default_main_job_reaches_25_db(tmp_path):
    """`recon train` with the defaults on the sample scene (about 2 minutes on 2 cores)."""
    assert main(["train", "--output", str(tmp_path / "run"), "--no-progress"]) == 0
    summary = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert summary["psnr"] >= 25.0, summary["psnr"]


def test_eval_scene_file_with_dataset(run_dir, tmp_path):
    """A 3DGS PLY from anywhere evaluates against a dataset's test cameras like the run it came from."""
    out = tmp_path / "eval.json"
    assert main(["eval", "--scene", str(run_dir / "exports" / "scene.ply"), "--data", str(ensure_sample_scene()),
                 "--downscale", "2", "--out", str(out)]) == 0
    summary = json.loads(out.read_text())
    assert summary["psnr"] == pytest.approx(json.loads((run_dir / "eval.json").read_text())["psnr"], abs=0.05)


def test_bad_sources_fail_clearly(tmp_path, capsys):
    assert main(["eval", str(tmp_path)]) == 1
    assert "config file not found" in capsys.readouterr().err
    assert main(["render", "--scene", str(tmp_path / "missing.ply"), "--data", str(ensure_sample_scene())]) == 1
    assert "scene file not found" in capsys.readouterr().err
    bad = tmp_path / "bad.ply"
    bad.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n")
    assert main(["export", "--scene", str(bad), "--out", str(tmp_path / "o.ply")]) == 1
    assert str(bad) in capsys.readouterr().err


def test_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    """Checkpoints carry the data order, the random states, Adam moments and densification statistics."""
    cfg = GaussianTrainConfig(data=ensure_sample_scene(), downscale=4, max_steps=60, checkpoint_every=1000,
                              progress=False)
    cfg.densify.start, cfg.densify.interval = 10, 10  # densify (with random split samples) across the cut
    straight, resumed = straight_and_resumed(cfg, tmp_path, cut=25)
    assert len(resumed.scene) == len(straight.scene)
    for name, p in straight.scene.param_groups().items():
        torch.testing.assert_close(resumed.scene.param_groups()[name], p, rtol=0, atol=0, msg=name)
    steps = [json.loads(x)["step"] for x in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def test_bad_device_and_frames_fail_clearly(run_dir, tmp_path, capsys):
    assert main(["train", "--output", str(tmp_path / "r"), "--device", "tpu", "--no-progress"]) == 1
    assert "device must be" in capsys.readouterr().err
    assert main(["render", str(run_dir), "--path", "orbit", "--frames", "0"]) == 1
    assert "--frames and --fps must be >= 1" in capsys.readouterr().err
    assert main(["train", "--resume", str(run_dir), "--config", "configs/gaussians-sample.yaml"]) == 1
    assert "cannot be combined" in capsys.readouterr().err
