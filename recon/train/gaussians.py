"""3D Gaussian splatting as a training method (the 3DGS recipe): L1 + D-SSIM, per-parameter Adam with an
exponentially decaying position learning rate, SH degree schedule, densification (clone / split / prune,
opacity reset) through :class:`~recon.train.densify.DensifyStrategy`."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch

from recon.evaluate import composite, fill_invalid
from recon.metrics import psnr, ssim
from recon.renderers import GaussianSettings, RenderSettings, render
from recon.scenes.gaussians import GaussianScene
from recon.train.config import GaussianTrainConfig
from recon.train.densify import DensifyStrategy
from recon.train.init import build_gaussian_scene
from recon.train.method import Method

__all__ = ["GaussianMethod", "build_optimizer", "means_lr"]


def build_optimizer(scene: GaussianScene, cfg: GaussianTrainConfig, extent: float,
                    extra: dict[str, float] | None = None) -> torch.optim.Adam:
    """Adam with one named group per scene parameter (3DGS learning rates; ``extra`` maps further parameter
    names, e.g. a relightable scene's material, to theirs)."""
    o = cfg.optim
    lrs = {"means": o.lr_means * extent, "quats": o.lr_quats, "log_scales": o.lr_scales,
           "opacity_logits": o.lr_opacity, "sh_dc": o.lr_sh_dc, "sh_rest": o.lr_sh_rest, **(extra or {})}
    groups = [{"params": [p], "lr": lrs[name], "name": name} for name, p in scene.param_groups().items()]
    return torch.optim.Adam(groups, eps=1e-15)


def means_lr(cfg: GaussianTrainConfig, extent: float, step: int) -> float:
    """Exponential (log-linear) decay from lr_means to lr_means_final over max_steps, times the extent."""
    t = min(max(step / cfg.max_steps, 0.0), 1.0)
    o = cfg.optim
    return extent * math.exp((1 - t) * math.log(o.lr_means) + t * math.log(max(o.lr_means_final, 1e-20)))


class GaussianMethod(Method):
    """Trains a :class:`GaussianScene` (``recon train gaussians``)."""

    name = "gaussians"
    state_keys = frozenset({"optimizer", "densify"})

    def render_settings(self) -> RenderSettings:
        return RenderSettings(backend=self.cfg.backend, gaussians=GaussianSettings(method=self.cfg.render_method))

    def setup(self, state: dict | None, source: str) -> None:
        cfg = self.cfg
        if state is not None:
            self.scene = GaussianScene.from_state(state["scene"], source=source).to(self.device)
        else:
            self.scene = build_gaussian_scene(cfg.model, self.data, seed=cfg.seed,
                                              alpha_is_coverage=not self.mask).to(self.device)
            self.scene.active_sh_degree = 0
        self.optimizer = build_optimizer(self.scene, cfg, self.extent)
        self.strategy = DensifyStrategy(cfg.densify, self.scene, self.optimizer, self.extent, cfg.max_steps)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            self.strategy.load_state_dict(state["densify"])

    def state(self) -> dict:
        return {"scene": self.scene.to_state(), "optimizer": self.optimizer.state_dict(),
                "densify": {k: v.cpu() for k, v in self.strategy.state_dict().items()}}

    def parameters(self) -> dict[str, torch.Tensor]:
        return self.scene.param_groups()

    def size_stats(self) -> dict:
        return {"num_gaussians": len(self.scene)}

    def eval_scene(self):
        return self.scene

    def export(self) -> Path:
        from recon.export.scenes import export_scene

        return export_scene(self.scene, "ply", self.run_dir / "exports" / "scene.ply")

    def step(self) -> dict:
        cfg = self.cfg
        step = self.step_index
        idx = self.next_index()
        cam = self.train_cams[idx]
        bg = torch.rand(3, generator=self.generator).to(self.device) if cfg.random_background else self.eval_background
        images = self.train_images[idx : idx + 1]
        gt = composite(images, bg)
        out = render(self.scene, cam, replace(self.settings, background=bg))
        pred = out.rgb
        if self.mask:
            gt = fill_invalid(gt, pred, images)
        l1 = (pred - gt).abs().mean()
        ssim_val = ssim(pred, gt).mean()
        loss = (1 - cfg.optim.lambda_dssim) * l1 + cfg.optim.lambda_dssim * (1 - ssim_val)
        self.check_loss(loss)
        self.strategy.pre_backward(out)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if step % 50 == 0:  # cheap enough: one reduction per parameter group every 50 steps
            self.check_finite()
        self.strategy.post_backward(step, out, cam.width, cam.height)
        for group in self.optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = means_lr(cfg, self.extent, step)
        if step % cfg.optim.sh_degree_interval == 0:
            self.scene.active_sh_degree = min(self.scene.active_sh_degree + 1, self.scene.max_sh_degree)
        return {"loss": loss.item(), "psnr": psnr(pred.detach().clamp(0, 1), gt).item()}
