"""Densification edits parameters and Adam moments consistently."""

from types import SimpleNamespace

import torch

from recon.scenes.gaussians import GaussianScene
from recon.train.config import DensifyConfig, GaussianTrainConfig
from recon.train.densify import DensifyStrategy
from recon.train.gaussians import build_optimizer


def _scene(n=6, scale=0.001):
    torch.manual_seed(0)
    s = GaussianScene.from_points(torch.randn(n, 3), torch.rand(n, 3), max_sh_degree=1)
    s.log_scales.data[:] = torch.log(torch.tensor(scale))
    return s


def _fake_out(scene, grads, radii):
    m2d = torch.zeros(len(scene), 2, requires_grad=True)
    m2d.grad = grads
    return SimpleNamespace(aux=SimpleNamespace(means2d=[m2d], radii=[radii]))


def test_clone_split_prune_counts_and_adam_state():
    scene = _scene()
    scene.log_scales.data[3:] = torch.log(torch.tensor(1.0))  # big: split candidates
    scene.opacity_logits.data[5] = -10.0  # transparent: pruned
    opt = build_optimizer(scene, GaussianTrainConfig(), extent=1.0)
    loss = sum(p.sum() for p in scene.parameters())
    loss.backward()
    opt.step()
    cfg = DensifyConfig(start=1, interval=1, grad_threshold=1e-3, percent_dense=0.01, opacity_reset_interval=0)
    strat = DensifyStrategy(cfg, scene, opt, extent=1.0, max_steps=100)
    # d/d(pixel) * (W/2, H/2) = NDC gradient: 0.01 * 50 = 0.5 >> threshold for rows 0, 3, 5; zero otherwise.
    g = torch.zeros(6, 2)
    g[[0, 3, 5], 0] = 0.01
    strat.post_backward(1, _fake_out(scene, g, torch.ones(6, dtype=torch.int32)), 100, 100)
    # 6 + 1 clone (row 0) + 2x2 split samples (rows 3, 5) - 2 split parents - pruned row 5 and its 2 samples
    # (a sample inherits the parent's opacity) = 6 + 1 + 4 - 2 - 2 = 7
    assert len(scene) == 7
    for group in opt.param_groups:
        p = group["params"][0]
        assert p is scene.param_groups()[group["name"]]
        st = opt.state[p]
        assert st["exp_avg"].shape == p.shape
        assert torch.all(st["exp_avg"][-1] == 0)  # born this step
        assert torch.any(st["exp_avg"][0] != 0)  # carried over
    assert strat.grad_accum.shape == (7,)


def test_opacity_reset_caps_opacity():
    scene = _scene()
    scene.opacity_logits.data[:] = 5.0
    opt = build_optimizer(scene, GaussianTrainConfig(), extent=1.0)
    cfg = DensifyConfig(start=1000, interval=100, opacity_reset_interval=10)
    strat = DensifyStrategy(cfg, scene, opt, extent=1.0, max_steps=100)
    strat.post_backward(10, _fake_out(scene, torch.zeros(6, 2), torch.ones(6, dtype=torch.int32)), 10, 10)
    assert torch.allclose(scene.opacities, torch.full((6,), 0.01), atol=1e-6)
