"""The tri-plane radiance field: ray-box clipping, the field renderer against closed forms, checkpoint states,
and `recon train triplane` end to end (train, resume, eval, render, export)."""

import json
import math

import numpy as np
import pytest
import torch

from recon.cameras import Cameras, look_at
from recon.cli import main
from recon.data.sample import ensure_sample_scene
from recon.renderers import RenderSettings, render
from recon.renderers.volume.field import ray_box, render_rays
from recon.scenes.triplane import TriPlaneField


def test_ray_box():
    lo, hi = torch.tensor([-1.0, -1.0, -1.0]), torch.tensor([1.0, 2.0, 1.0])
    o = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [-3.0, 5.0, 0.0], [0.0, -4.0, 0.5]])
    d = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t0, t1 = ray_box(o, d, lo, hi)
    torch.testing.assert_close(t0[[0, 1, 3]], torch.tensor([2.0, 0.0, 3.0]))  # inside: entry clamped to 0
    torch.testing.assert_close(t1[[0, 1, 3]], torch.tensor([4.0, 2.0, 6.0]))
    assert float(t1[2]) <= float(t0[2])  # misses (above the box, axis-parallel)


def constant_field(sigma: float, color: tuple[float, float, float]) -> TriPlaneField:
    """A field whose MLPs ignore their inputs: density sigma inside the box [-1, 1]^3, one color."""
    field = TriPlaneField(-torch.ones(3), torch.ones(3), resolutions=(4,), channels=2, hidden=8)
    with torch.no_grad():
        for net in (field.density_net, field.color_net):
            net[-1].weight.zero_()
        field.density_net[-1].bias.zero_()
        field.density_net[-1].bias[0] = math.log(sigma) + 1.0  # density = exp(h0 - 1)
        field.color_net[-1].bias.copy_(torch.logit(torch.tensor(color)))
    return field


@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_constant_field_closed_form(backend):
    """Through a box of constant density the opacity is 1 - exp(-sigma L) for the chord length L, whatever
    the number of samples (the per-interval integral is exact), and the color is c times that."""
    field = constant_field(0.8, (0.2, 0.6, 0.9))
    o = torch.tensor([[-4.0, 0.0, 0.0], [-4.0, 0.3, -0.2], [0.0, 0.0, -5.0], [-4.0, 3.0, 0.0]])
    d = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.1, 0.05], [0.1, 0.05, 1.0],
                                                    [1.0, 0.0, 0.0]]), dim=-1)
    t0, t1 = ray_box(o, d, field.lo, field.hi)
    chord = (t1 - t0).clamp_min(0)
    assert bool((chord[:3] > 1.5).all())
    with torch.no_grad():
        out = render_rays(field, o, d, samples=7, backend=backend)
    opacity = 1 - torch.exp(-0.8 * chord)
    torch.testing.assert_close(out["opacity"][:, 0], opacity, atol=1e-5, rtol=0)
    torch.testing.assert_close(out["rgb"], opacity[:, None] * torch.tensor([0.2, 0.6, 0.9]), atol=1e-5, rtol=0)
    assert float(out["opacity"][3]) == 0.0  # the ray that misses the box
    # Expected distance of a homogeneous slab entered at t0: t0 + 1/sigma - L e^{-sigma L} / (1 - e^{-sigma L}),
    # up to the midpoint quadrature's O(delta^2) with 7 samples.
    expected = t0 + 1 / 0.8 - chord * torch.exp(-0.8 * chord) / opacity
    torch.testing.assert_close(out["depth"][:3, 0], expected[:3], atol=2e-2, rtol=0)


def test_render_field_images_and_depth():
    """render() of a field: images over the background, alpha, and depth as camera-space z."""
    field = constant_field(50.0, (0.5, 0.5, 0.5))  # nearly opaque: depth ~ the box's front face
    w2c = look_at(torch.tensor([[0.0, -4.0, 0.0]]))
    K = torch.tensor([[[40.0, 0.0, 16.0], [0.0, 40.0, 12.0], [0.0, 0.0, 1.0]]])
    cams = Cameras(world_to_cam=w2c, K=K, width=32, height=24)
    with torch.no_grad():
        out = render(field, cams, RenderSettings(background=(1.0, 0.0, 0.0)))
    assert out.rgb.shape == (1, 24, 32, 3) and out.alpha.shape == (1, 24, 32, 1)
    center = out.rgb[0, 12, 16]
    torch.testing.assert_close(center, torch.tensor([0.5, 0.5, 0.5]), atol=1e-3, rtol=0)
    torch.testing.assert_close(out.rgb[0, 0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-6, rtol=0)  # misses
    # The front face is y = -1, the camera at y = -4: camera-space depth 3 (+ 1/sigma of the slab's mean).
    assert abs(float(out.depth[0, 12, 16]) - (3.0 + 1 / 50.0)) < 0.02
    # Off axis (15 degrees): still z (the distance along the ray is 3.13 there).
    assert abs(float(out.depth[0, 12, 27]) - (3.0 + 1 / 50.0)) < 5e-3
    assert abs(float(out.depth[0, 12, 16]) - (3.0 + 1 / 50.0)) < 5e-3


def test_state_roundtrip_and_bad_states():
    field = TriPlaneField(torch.tensor([-1.0, -2.0, -1.0]), torch.tensor([1.0, 1.0, 3.0]), resolutions=(8, 16),
                          channels=4, hidden=16, seed=3)
    x = torch.rand(100, 3) * 2 - 1
    d = torch.nn.functional.normalize(torch.randn(100, 3), dim=-1)
    back = TriPlaneField.from_state(field.to_state(), source="s.pt")
    with torch.no_grad():
        for a, b in zip(field(x, d), back(x, d)):
            assert torch.equal(a, b)
    state = field.to_state()
    state["tensors"]["planes.0"][0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"s.pt: tri-plane field tensor 'planes.0' contains NaN"):
        TriPlaneField.from_state(state, source="s.pt")
    with pytest.raises(ValueError, match="scene kind is 'mesh', expected 'triplane'"):
        TriPlaneField.from_state({"header": json.dumps({"kind": "mesh"}), "tensors": {}}, source="s.pt")
    with pytest.raises(ValueError, match="lo < hi"):
        TriPlaneField(torch.ones(3), torch.zeros(3))


def test_train_triplane_end_to_end(tmp_path, capsys):
    """`recon train triplane` on the sample scene: it learns (test PSNR), resumes, evaluates, renders, exports."""
    run = tmp_path / "tp"
    fast = ["--downscale", "2", "--no-progress", "--checkpoint-every", "60", "--model.resolutions", "32", "64",
            "--optim.rays-per-step", "1024"]
    assert main(["train", "triplane", "--data", str(ensure_sample_scene()), "--output", str(run),
                 "--max-steps", "60", *fast]) == 0
    first = json.loads((run / "eval.json").read_text())["psnr"]
    assert main(["train", "--resume", str(run), "--max-steps", "300", "--no-progress"]) == 0
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["step"] == 300
    final = json.loads((run / "eval.json").read_text())["psnr"]
    assert final > 21.0 and final > first + 1.0, (first, final)
    state = torch.load(run / "exports" / "field.pt", weights_only=True)
    assert json.loads(state["header"])["kind"] == "triplane"
    assert main(["eval", str(run)]) == 0
    assert abs(json.loads((run / "eval.json").read_text())["psnr"] - final) < 0.05
    out = tmp_path / "renders"
    assert main(["render", str(run), "--split", "test", "--out", str(out), "--channels", "rgb,alpha,depth"]) == 0
    assert len(list(out.glob("*.png"))) >= 8
    # Its mesh: marching cubes of the density, cleaned with the training cameras; a valid glTF near the scene's
    # true surface (the sample scene's exact SDF), in one piece (the objects stand on the base).
    from recon.data.sample import scene_sdf
    from recon.export.mesh_io import load_mesh
    from tests.test_gltf_validator import _validate

    glb = tmp_path / "m.glb"
    assert main(["export", str(run), "--format", "glb", "--out", str(glb), "--resolution", "96"]) == 0
    assert _validate(glb)["numErrors"] == 0
    mesh = load_mesh(glb)
    dist = np.abs(scene_sdf(mesh.vertices.detach().numpy()))
    assert np.median(dist) < 0.03 and np.percentile(dist, 90) < 0.1  # measured 0.018, 0.078
    assert main(["export", str(run), "--format", "ply", "--out", str(tmp_path / "m.ply"), "--level", "1e9"]) == 1
    assert "never crosses the level 1e+09" in capsys.readouterr().err
    # Without its checkpoints a run still evaluates from exports/field.pt; a corrupt one is a one-line error.
    import shutil

    shutil.rmtree(run / "checkpoints")
    assert main(["eval", str(run), "--out", str(tmp_path / "e.json")]) == 0
    assert abs(json.loads((tmp_path / "e.json").read_text())["psnr"] - final) < 0.05
    (run / "exports" / "field.pt").write_bytes(b"not a torch file")
    assert main(["eval", str(run), "--out", str(tmp_path / "e2.json")]) == 1
    assert "field.pt: not a recon field state" in capsys.readouterr().err


def test_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    """Checkpoints carry the field, Adam's moments, the data order and the random states (ray jitter, pixels,
    backgrounds): a run cut at step 12 and resumed ends with the same bits as one that was not."""
    from _resume import straight_and_resumed

    from recon.train.config import TriPlaneTrainConfig

    cfg = TriPlaneTrainConfig(data=ensure_sample_scene(), downscale=4, max_steps=24, checkpoint_every=1000,
                              progress=False)
    cfg.model.resolutions, cfg.model.samples, cfg.optim.rays_per_step = (16, 32), 16, 256
    straight, resumed = straight_and_resumed(cfg, tmp_path, cut=12)
    for (name, p), q in zip(straight.scene.named_parameters(), resumed.scene.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)
