"""``recon train sdf``: a neural SDF (:class:`recon.scenes.sdf.NeuralSDF`) fitted to posed images by NeuS volume
rendering (:mod:`recon.renderers.volume.sdf`).

Each step draws ``optim.rays_per_step`` rays from 8 training views (the tri-plane trainer's batches) and
minimizes

    L1(rgb) + lambda_eikonal * mean_samples (|grad f| - 1)^2 + lambda_mask * BCE(opacity, alpha)
            [+ lambda_curvature * curvature (off by default; :func:`curvature_loss`)]

the mask term only where the images' alpha is coverage (synthetic RGBA sets; the opacity is then the box's own,
``fg_opacity``). Photos without coverage alpha get a background field (``model.background``,
:mod:`recon.scenes.background`) for what lies outside the box. With ``model.occupancy_resolution``
> 0, after ``optim.grid_start`` of the steps an occupancy grid (rebuilt from the SDF every ``optim.grid_every``
steps) limits the samples to cells near the zero set, cut ``model.grid_samples`` to a chord instead of
``model.samples``. The NeuS cosine is annealed over
the first ``optim.anneal_fraction`` of the steps; learning rates warm up linearly over the first 2 % of the steps
and then follow a cosine to 5 % (NeuS). The box is the tri-plane trainer's (visual hull, else the cameras' look-at
cube) with a wider margin, so that the zero set never touches it. ``exports/field.pt`` holds the field;
``recon export RUN --format glb`` extracts its mesh.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from recon.renderers.volume.occupancy import sdf_occupancy
from recon.renderers.volume.sdf import render_sdf_rays
from recon.scenes.sdf import NeuralSDF
from recon.train.triplane import TriPlaneMethod

__all__ = ["SDFMethod", "curvature_loss"]


def curvature_loss(field: NeuralSDF, points: Tensor, gradient: Tensor, weights: Tensor, eps: float,
                   generator: torch.Generator | None = None) -> Tensor:
    """PermutoSDF's curvature loss with analytic normals: at each point the unit normal ``n`` (from ``gradient``)
    is compared with the normal a distance ``eps`` away along a random tangent ``t``,
    ``sum_i w_i (1 - n(x_i) . n(x_i + eps t_i)) / sum_i w_i``. Trains through both normals (the second one's
    second derivatives included). On a sphere of radius ``rho`` it is ``1 - rho / sqrt(rho^2 + eps^2)``."""
    n = torch.nn.functional.normalize(gradient, dim=-1)
    t = torch.randn(points.shape, generator=generator).to(points)
    nd = n.detach()
    t = torch.nn.functional.normalize(t - (t * nd).sum(-1, keepdim=True) * nd, dim=-1)
    _, g2, _ = field.sdf_gradient(points.detach() + eps * t, create_graph=True)
    cos = (n * torch.nn.functional.normalize(g2, dim=-1)).sum(-1)
    return (weights * (1 - cos)).sum() / weights.sum().clamp_min(1e-12)


class SDFMethod(TriPlaneMethod):
    """The neural SDF, its Adam optimizer and the NeuS step (module docstring). Batches, checkpoints and the
    field export are the tri-plane trainer's."""

    name = "sdf"

    field_class = NeuralSDF

    def new_field(self, lo: torch.Tensor, hi: torch.Tensor) -> NeuralSDF:
        m = self.cfg.model
        field = NeuralSDF(lo, hi, m.resolutions, m.channels, m.hidden, seed=self.cfg.seed, samples=m.samples,
                          init_radius=m.init_radius, grid_samples=m.grid_samples)
        if self.wants_background():
            from recon.scenes.background import Background

            field.set_background(Background((lo + hi) / 2, float((hi - lo).norm() / 2), m.background_resolutions,
                                            m.background_channels, m.hidden, samples=m.background_samples,
                                            seed=self.cfg.seed))
        return field

    def wants_background(self) -> bool:
        """Whether the field gets a background (``model.background``): `field` always, `none` never, `auto`
        unless the images carry coverage alpha (photos, and datasets whose alpha marks valid pixels, get one)."""
        from recon.train.init import _has_masks

        choice = self.cfg.model.background
        return choice == "field" or (choice == "auto" and (self.mask or not _has_masks(self.train_images)))

    def _update_grid(self) -> None:
        """Rebuild the occupancy grid from the SDF every ``optim.grid_every`` steps once ``optim.grid_start`` of
        the steps are done (deterministic from the field: a resumed run rebuilds it at the same steps)."""
        m, o = self.cfg.model, self.cfg.optim
        if not m.occupancy_resolution or self.step_index < o.grid_start * self.cfg.max_steps:
            return
        if self.field.occupancy.numel() == 0 or self.step_index % o.grid_every == 0:
            f = self.field
            f.occupancy = sdf_occupancy(f.sdf, f.lo, f.hi, m.occupancy_resolution, float(f.inv_s().detach()))

    def _curvature(self, out: dict) -> Tensor:
        """:func:`curvature_loss` at up to ``optim.curvature_samples`` of the step's samples with rendering
        weight above 1e-4 (drawn with the run's generator), eps ``optim.curvature_step`` texels of the finest
        plane along the box's longest side."""
        o, f = self.cfg.optim, self.field
        w = out["weights"].detach()
        idx = (w > 1e-4).nonzero()[:, 0]
        if len(idx) == 0:
            return w.new_zeros(())
        if len(idx) > o.curvature_samples:
            idx = idx[torch.randperm(len(idx), generator=self.generator)[:o.curvature_samples].to(idx.device)]
        eps = o.curvature_step * float(2 * f.half_extent) / (max(f.resolutions) - 1)
        return curvature_loss(f, out["points"][idx], out["gradient"][idx], w[idx], eps, self.generator)

    def _lr_factor(self) -> float:
        steps = self.cfg.max_steps
        warm = max(1, int(0.02 * steps))
        s = min(self.step_index, steps)
        if s < warm:
            return (s + 1) / warm
        progress = (s - warm) / max(1, steps - warm)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress))

    def step(self) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        factor = self._lr_factor()
        for group in self.optimizer.param_groups:
            group["lr"] = (o.lr_planes if group["name"] == "planes" else o.lr_mlp) * factor
        self._update_grid()
        origins, dirs, target = self._batch()
        anneal = min(1.0, self.step_index / max(1.0, o.anneal_fraction * cfg.max_steps))
        out = self.guarded(render_sdf_rays, self.field, origins, dirs, generator=self.generator, anneal=anneal,
                           train=True, backend=cfg.backend)
        R = len(origins)
        # A random background color keeps an object's opacity honest; a background field has to learn a fixed one.
        bg = torch.rand(R, 3, generator=self.generator).to(self.device) \
            if cfg.random_background and self.field.background is None else self.eval_background.expand(R, 3)
        rgb, a = target[:, :3], (target[:, 3:] if target.shape[-1] == 4 else torch.ones_like(target[:, :1]))
        gt = rgb * a + bg * (1 - a)
        valid = (a >= 0.5).float() if self.mask else torch.ones_like(a)
        pred = out["rgb"] + (1 - out["opacity"]) * bg
        l1 = ((pred - gt).abs() * valid).sum() / (3 * valid.sum().clamp_min(1))
        eikonal = (out["gradient"].norm(dim=-1) - 1).square().mean() if len(out["gradient"]) else pred.new_zeros(())
        loss = l1 + o.lambda_eikonal * eikonal
        curvature = pred.new_zeros(())
        if o.lambda_curvature > 0 and len(out["gradient"]):
            curvature = self._curvature(out)
            loss = loss + o.lambda_curvature * curvature
        if not self.mask and target.shape[-1] == 4 and o.lambda_mask > 0:
            opacity = out["fg_opacity"].clamp(1e-3, 1 - 1e-3)  # the object's, not its background's
            loss = loss + o.lambda_mask * F.binary_cross_entropy(opacity, a)
        self.check_loss(loss)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.step_index % 50 == 0:
            self.check_finite()
        with torch.no_grad():
            mse = ((pred - gt).square() * valid).sum() / (3 * valid.sum().clamp_min(1))
        stats = {"loss": loss.item(), "psnr": float(-10 * math.log10(max(mse.item(), 1e-10))),
                 "eikonal": float(eikonal.detach()), "inv_s": float(self.field.inv_s().detach())}
        if o.lambda_curvature > 0:
            stats["curvature"] = float(curvature.detach())
        return stats
