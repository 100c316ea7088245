"""Neural SDFs: the NeuS alpha's closed form, sphere tracing of analytic SDFs, the scene's initialization and
states, and `recon train sdf` end to end on the sample scene."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from recon.cli import main
from recon.data.sample import ensure_sample_scene, scene_sdf
from recon.renderers.volume import composite
from recon.renderers.volume.sdf import neus_alpha
from recon.renderers.volume.sphere_trace import sphere_trace
from recon.scenes.sdf import NeuralSDF


@pytest.mark.parametrize("inv_s", [20.0, 200.0])
def test_neus_alpha_telescopes_and_is_unbiased_on_a_plane(inv_s):
    """Along a ray into a plane (f(t) = t0 - t), the intervals' (1 - alpha) telescope to
    Phi(f(end)) / Phi(f(start)); the weights peak at the crossing and their mean sits on it; a jittered evaluation
    point gives the same alphas."""
    t0, S = 1.3, 400
    edges = torch.linspace(0.0, 3.0, S + 1, dtype=torch.float64)
    a, b = edges[:-1], edges[1:]
    mid = (a + b) / 2
    # Evaluated at a random point of each interval (as training jitters them): the same alphas.
    u = torch.rand(S, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    at = a + (b - a) * u
    s_ = torch.tensor(inv_s, dtype=torch.float64)
    jittered = neus_alpha(t0 - at, torch.full_like(at, -1.0), at - a, b - at, s_)
    alpha = neus_alpha(t0 - mid, torch.full_like(mid, -1.0), mid - a, b - mid, s_)
    torch.testing.assert_close(jittered, alpha, rtol=0, atol=1e-12)
    out = composite(alpha, torch.ones(S, 1, dtype=torch.float64), a, b, torch.tensor([0, S]), mode="alpha",
                    backend="torch", t_eps=0.0)
    phi = torch.sigmoid
    expected_transmittance = phi(torch.tensor(inv_s * (t0 - 3.0))) / phi(torch.tensor(inv_s * t0))
    # Each alpha carries +1e-5 / (Phi + 1e-5) of NeuS's guard: 400 intervals move the product by < 1e-3.
    assert abs((1 - out.opacity.item()) - expected_transmittance.item()) < 1e-3
    depth = out.depth.item() / out.opacity.item()
    assert abs(depth - t0) < 0.01
    assert abs(float(mid[out.weights.argmax()]) - t0) < 3.0 / S


def _rays(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g, dtype=torch.float64)
    o = o / o.norm(dim=-1, keepdim=True) * 3
    d = torch.nn.functional.normalize(-o + 0.5 * torch.randn(n, 3, generator=g, dtype=torch.float64), dim=-1)
    return o, d


def test_sphere_tracing_hits_analytic_surfaces_within_1e4():
    o, d = _rays(4000)
    c = torch.tensor([0.1, -0.2, 0.05], dtype=torch.float64)

    def sphere(x):
        return (x - c).norm(dim=-1) - 0.8

    t, hit = sphere_trace(sphere, o, d, torch.zeros(len(o), dtype=torch.float64), torch.full((len(o),), 10.0,
                                                                                             dtype=torch.float64))
    oc = o - c
    b = (oc * d).sum(-1)
    disc = b * b - ((oc * oc).sum(-1) - 0.64)
    t_true = -b - disc.clamp_min(0).sqrt()
    assert bool((hit <= (disc > 0)).all())  # no hit where the ray misses
    assert int(hit.sum()) >= int((disc > 1e-3).sum())  # every clear hit found
    assert float(sphere(o[hit] + d[hit] * t[hit, None]).abs().max()) < 1e-4
    cos = (disc.clamp_min(0).sqrt() / 0.8)[hit]  # |cos| between the ray and the normal at the hit
    assert float((t[hit] - t_true[hit])[cos > 0.2].abs().max()) < 1e-4

    def torus(x):  # float32, not a sphere: the marching must stop at the first of several roots
        q = torch.stack([(x[:, 0] ** 2 + x[:, 1] ** 2).sqrt() - 0.6, x[:, 2]], -1)
        return q.norm(dim=-1) - 0.25

    o32, d32 = o.float(), d.float()
    t, hit = sphere_trace(torus, o32, d32, torch.zeros(len(o)), torch.full((len(o),), 10.0))
    assert int(hit.sum()) > 1000
    assert float(torus(o32[hit] + d32[hit] * t[hit, None]).abs().max()) < 1e-4
    # The first root: nothing of the torus lies before the hit (dense check along each ray).
    s = torch.linspace(0, 1, 200)[None, :, None] * t[hit, None, None]
    before = torus((o32[hit, None] + d32[hit, None] * s).reshape(-1, 3)).reshape(-1, 200)[:, :-2]
    assert float(before.min()) > -1e-3


def test_neural_sdf_starts_as_an_exact_sphere_and_round_trips():
    field = NeuralSDF(torch.tensor([-1.0, -2.0, -1.0]), torch.tensor([1.0, 2.0, 1.0]), resolutions=(8, 16),
                      channels=2, hidden=16, init_radius=0.5)
    x = torch.randn(500, 3)
    torch.testing.assert_close(field.sdf(x), x.norm(dim=-1) - 1.0)  # half extent 2: radius 1 in the world
    _, grad, _ = field.sdf_gradient(x)
    torch.testing.assert_close(grad.norm(dim=-1), torch.ones(500))
    with torch.no_grad():
        for p in field.parameters():
            p.add_(0.01 * torch.randn_like(p))
    again = NeuralSDF.from_state(field.to_state())
    torch.testing.assert_close(again.sdf(x), field.sdf(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match="scene kind is 'triplane', expected 'sdf'"):
        NeuralSDF.from_state({"header": json.dumps({"kind": "triplane"}), "tensors": {}}, source="s.pt")
    bad = field.to_state()
    bad["tensors"]["variance"] = torch.tensor(float("nan"))
    with pytest.raises(ValueError, match="s.pt: neural SDF tensor 'variance' contains NaN"):
        NeuralSDF.from_state(bad, source="s.pt")
    with pytest.raises(ValueError, match=r"init_radius must be in \(0, 1\)"):
        NeuralSDF(-torch.ones(3), torch.ones(3), init_radius=1.5)


def _train_and_check_sdf(tmp_path, steps: int, downscale: int, resolution: int, volume_min: float,
                         dist_max: float, sphere_min: float):
    """`recon train sdf` on the sample scene, then export, sphere-traced eval and render of the run: it learns
    (test PSNR), its mesh lies on the scene's surface, sphere tracing renders the same surface."""
    run = tmp_path / "sdf"
    assert main(["train", "sdf", "--data", str(ensure_sample_scene()), "--output", str(run), "--max-steps",
                 str(steps), "--downscale", str(downscale), "--no-progress", "--eval-every", "0"]) == 0
    volume = json.loads((run / "eval.json").read_text())["psnr"]
    assert volume > volume_min, volume
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["eikonal"] < 0.1 and lines[-1]["inv_s"] > lines[0]["inv_s"]
    mesh_path = tmp_path / "m.ply"
    assert main(["export", str(run), "--format", "ply", "--out", str(mesh_path), "--resolution",
                 str(resolution)]) == 0
    from recon.export.mesh_io import load_mesh

    dist = np.abs(scene_sdf(load_mesh(mesh_path).vertices.detach().numpy()))
    assert np.median(dist) < dist_max, np.median(dist)
    assert main(["eval", str(run), "--field-method", "sphere", "--out", str(tmp_path / "s.json")]) == 0
    sphere = json.loads((tmp_path / "s.json").read_text())["psnr"]
    assert sphere > sphere_min, sphere
    out = tmp_path / "renders"
    assert main(["render", str(run), "--split", "test", "--out", str(out), "--field-method", "sphere",
                 "--channels", "rgb,alpha,depth,normal"]) == 0
    length = np.linalg.norm(np.load(out / "r_0_normal.npy"), axis=-1)  # 0 on the background
    assert (length > 0).mean() > 0.2 and np.allclose(length[length > 0], 1, atol=1e-3)
    return run


def test_train_sdf_cli_chain(tmp_path, capsys):
    """The default suite's short run: 150 steps at a quarter resolution (100 s here). Measured: test PSNR 19.67,
    eikonal 0.034, inv_s 15.1 -> 22.6, mesh median |sdf| 0.039 at 96^3, sphere-traced PSNR 17.99."""
    run = _train_and_check_sdf(tmp_path, 150, 4, 96, volume_min=18.5, dist_max=0.06, sphere_min=16.5)
    assert main(["train", "gaussians", "--init-from", str(run), "--data", str(ensure_sample_scene())]) == 1
    assert "--init-from RUN starts `recon train mesh`" in capsys.readouterr().err


@pytest.mark.slow
def test_train_sdf_end_to_end(tmp_path):
    """The full run (300 steps at half resolution), then `recon train mesh --init-from` refines its surface
    (420 s here). Measured: test PSNR 21.6, mesh median |sdf| 0.025 at 128^3, sphere-traced PSNR 20.2 (opaque
    hits of a 300-step surface)."""
    run = _train_and_check_sdf(tmp_path, 300, 2, 128, volume_min=20.0, dist_max=0.04, sphere_min=18.0)
    # The mesh trainer refines the field's surface (no iso-surface stage): textured, on the true surface.
    refined = tmp_path / "refined"
    assert main(["train", "mesh", "--init-from", str(run), "--data", str(ensure_sample_scene()), "--output",
                 str(refined), "--max-steps", "40", "--downscale", "2", "--model.texture-size", "256",
                 "--no-progress", "--eval-every", "0"]) == 0
    assert (refined / "init" / "field_mesh.ply").is_file()
    mesh_psnr = json.loads((refined / "eval.json").read_text())["psnr"]
    assert mesh_psnr > 17.0, mesh_psnr  # measured 18.0 (40 steps from a 300-step field; volume: 21.6)
    from recon.cli import load_run_scene

    refined_dist = np.abs(scene_sdf(load_run_scene(refined).vertices.detach().numpy()))
    assert np.median(refined_dist) < 0.04, np.median(refined_dist)


def test_resume_is_identical_to_an_uninterrupted_run(tmp_path):
    from _resume import straight_and_resumed

    from recon.train.config import SDFTrainConfig

    cfg = SDFTrainConfig(data=ensure_sample_scene(), downscale=4, max_steps=16, checkpoint_every=1000,
                         progress=False)
    cfg.model.resolutions, cfg.model.samples, cfg.optim.rays_per_step = (8, 16), 16, 128
    straight, resumed = straight_and_resumed(cfg, tmp_path, cut=8)
    for (name, p), q in zip(straight.scene.named_parameters(), resumed.scene.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=0, msg=name)


def test_nan_in_the_field_stops_training_and_keeps_the_last_checkpoint(tmp_path):
    from recon.train.config import SDFTrainConfig
    from recon.train.trainer import Trainer, TrainingError

    cfg = SDFTrainConfig(data=ensure_sample_scene(), downscale=4, max_steps=6, checkpoint_every=2, progress=False,
                         eval_every=0)
    cfg.model.resolutions, cfg.model.samples, cfg.optim.rays_per_step = (8, 16), 16, 128

    def poison(step, trainer):
        if step == 4:
            trainer.method.field.variance.data.fill_(float("nan"))

    trainer = Trainer(cfg, tmp_path / "run", hooks=[poison])
    with pytest.raises(TrainingError, match=r"parameter 'variance' became NaN/Inf at step 4.*step-0000002\.pt"):
        trainer.train()
    # The next step's samples are NaN: the compositing refuses them, and the loop names the parameter.
    with pytest.raises(TrainingError, match=r"parameter 'variance' became NaN/Inf at step 5.*step-0000002\.pt"):
        trainer.train_step()
    field = trainer.method.field
    field.variance.data.fill_(0.3)
    field.radiance = lambda geo, normal, d: torch.full_like(normal, float("nan"))  # finite parameters, NaN samples
    with pytest.raises(TrainingError, match=r"samples became non-finite at step 6 .*step-0000002\.pt"):
        trainer.train_step()
    assert [p.name for p in (tmp_path / "run" / "checkpoints").glob("*.pt")] == ["step-0000002.pt"]


def test_grid_sample_second_derivatives_are_exact():
    """The eikonal loss trains through d/d(planes, points) of the SDF's gradient: torch's grid_sample double
    backward, checked by gradcheck in float64 (both arguments)."""
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(1, 2, 5, 5, generator=g, dtype=torch.float64, requires_grad=True)
    points = (torch.rand(1, 7, 1, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8).requires_grad_(True)

    def gradient(planes, points):
        f = torch.nn.functional.grid_sample(planes, points, align_corners=True)
        (grad,) = torch.autograd.grad(f.square().sum(), points, create_graph=True)
        return grad

    assert torch.autograd.gradcheck(lambda p: gradient(p, points), (planes,))
    assert torch.autograd.gradcheck(lambda x: gradient(planes, x), (points,))


def test_occupancy_grid_keeps_the_samples_of_occupied_cells_only():
    from recon.renderers.volume.field import box_samples
    from recon.renderers.volume.occupancy import occupied_samples, sdf_occupancy
    from recon.renderers.volume.sdf import render_sdf_rays

    lo, hi = -torch.ones(3), torch.ones(3)
    o, d = (t.float() for t in _rays(300))
    full = torch.ones(8, 8, 8, dtype=torch.bool)
    ray, t0, t1, t, offsets = occupied_samples(o, d, lo, hi, full, 32)
    idx, b0, b1, bt, b_off = box_samples(o, d, lo, hi, 32)
    assert torch.equal(offsets, b_off) and torch.equal(t0, b0.reshape(-1)) and torch.equal(t, bt.reshape(-1))
    half = full.clone()
    half[4:] = False  # x > 0 is empty
    ray, t0, t1, t, offsets = occupied_samples(o, d, lo, hi, half, 32)
    x = o[ray] + d[ray] * t[:, None]
    assert bool((x[:, 0] <= 1e-6).all()) and 0 < len(t) < len(bt.reshape(-1))
    assert torch.equal(offsets[1:] - offsets[:-1], torch.bincount(ray, minlength=len(o)))
    # A sphere SDF: the grid holds its shell; rendering through it matches the dense sampler.
    field = NeuralSDF(lo, hi, resolutions=(8,), channels=2, hidden=8, samples=256, grid_samples=256)
    with torch.no_grad():
        field.variance.fill_(0.5)
    dense = render_sdf_rays(field, o, d)
    field.occupancy = sdf_occupancy(field.sdf, lo, hi, 32, float(field.inv_s().detach()))
    assert 0.02 < field.occupancy.float().mean() < 0.5
    sparse = render_sdf_rays(field, o, d)
    # The skipped intervals each carry NeuS's 1e-5 guard as opacity (256 of them: < 3e-3); nothing else differs.
    torch.testing.assert_close(sparse["opacity"], dense["opacity"], rtol=0, atol=3e-3)
    torch.testing.assert_close(sparse["rgb"], dense["rgb"], rtol=0, atol=3e-3)
    again = NeuralSDF.from_state(field.to_state())
    assert torch.equal(again.occupancy, field.occupancy)


def test_curvature_loss_has_the_closed_form_of_a_sphere_and_trains_the_field():
    """PermutoSDF's curvature loss on the exact initial sphere is ``1 - rho / sqrt(rho^2 + eps^2)`` at radius rho;
    on a perturbed field, steps on it alone lower it; `recon train sdf --optim.lambda-curvature` logs it."""
    from recon.train.sdf import curvature_loss

    field = NeuralSDF(-torch.ones(3), torch.ones(3))  # the sphere of radius 0.5
    g = torch.Generator().manual_seed(0)
    dirs = torch.nn.functional.normalize(torch.randn(400, 3, generator=g), dim=-1)
    eps = 0.05
    for rho in (0.4, 0.7):
        x = dirs * rho
        _, grad, _ = field.sdf_gradient(x, create_graph=True)
        loss = curvature_loss(field, x, grad, torch.ones(400), eps, g)
        loss = float(loss.detach())
        assert abs(loss - (1 - rho / (rho ** 2 + eps ** 2) ** 0.5)) < 2e-5, loss
    with torch.no_grad():  # a bumpy field: random planes that the (otherwise zero) residual output reads
        for p in field.planes:
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
        field.sdf_net[-1].weight.copy_(torch.randn(field.sdf_net[-1].weight.shape, generator=g) * 0.1)
    x = dirs * 0.5
    opt = torch.optim.Adam(field.parameters(), lr=0.003)
    losses = []
    for _ in range(30):
        _, grad, _ = field.sdf_gradient(x, create_graph=True)
        loss = curvature_loss(field, x, grad, torch.ones(400), eps, g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[0] > 0.1 and losses[-1] < 0.1 * losses[0], losses  # measured 0.33 -> 0.006


def test_sdf_training_step_with_the_curvature_loss(tmp_path):
    from recon.train.config import SDFTrainConfig
    from recon.train.trainer import Trainer

    cfg = SDFTrainConfig(data=ensure_sample_scene(), downscale=4, max_steps=4, progress=False, eval_every=0)
    cfg.model.resolutions, cfg.model.samples, cfg.optim.rays_per_step = (8, 16), 16, 128
    cfg.optim.lambda_curvature, cfg.optim.curvature_samples = 0.1, 64
    trainer = Trainer(cfg, tmp_path / "run")
    stats = [trainer.train_step() for _ in range(3)]
    assert all(0 < s["curvature"] < 2 and np.isfinite(s["loss"]) for s in stats), stats
