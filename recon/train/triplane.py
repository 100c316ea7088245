"""``recon train triplane``: a tri-plane radiance field (:class:`recon.scenes.triplane.TriPlaneField`) fitted to
posed images by volume rendering (:mod:`recon.renderers.volume.field`).

Each step draws ``optim.rays_per_step`` rays from 8 training views (in the loop's data order), renders them
through the field's box and minimizes the squared error against the images (composited over a random
background on RGBA datasets, as the other methods do), plus K-Planes' total variation of the planes. The box:
the visual hull's when the images carry coverage alpha (as ``recon train mesh`` finds it), else a cube around
the point the cameras look at, half the median camera distance on a side.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import torch

from recon.renderers import RenderSettings
from recon.renderers.volume.field import render_rays
from recon.scenes.triplane import TriPlaneField
from recon.train.method import Method

__all__ = ["TriPlaneMethod"]

VIEWS_PER_STEP = 8


class TriPlaneMethod(Method):
    """The tri-plane field, its Adam optimizer and the ray-batch step (module docstring)."""

    name = "triplane"
    state_keys = frozenset({"optimizer"})

    def render_settings(self) -> RenderSettings:
        return RenderSettings(backend=self.cfg.backend)

    field_class = TriPlaneField

    def new_field(self, lo: torch.Tensor, hi: torch.Tensor):
        """A fresh field over the box ``[lo, hi]`` from the run's model config."""
        m = self.cfg.model
        return TriPlaneField(lo, hi, m.resolutions, m.channels, m.hidden, seed=self.cfg.seed, samples=m.samples)

    def setup(self, state: dict | None, source: str) -> None:
        # Trained MLPs carry denormal floats, on which x86 GEMMs slow down ~5x: a NeuS step went from 0.38 to
        # 0.65 s over 1,750 steps on bob_field (aten::mm 22 -> 131 ms on a 256-ray probe); flushing them to zero
        # keeps it flat. Process-wide, harmless (values below 1e-38).
        torch.set_flush_denormal(True)
        m = self.cfg.model
        if state is not None:
            self.field = self.field_class.from_state(state["scene"], source=source).to(self.device)
        else:
            from recon.train.init import _has_masks
            from recon.train.mesh import object_box

            lo, hi = object_box(self.data, hull=not self.mask and _has_masks(self.train_images))
            lo, hi = lo - m.bounds_margin * (hi - lo), hi + m.bounds_margin * (hi - lo)
            self.field = self.new_field(lo, hi).to(self.device)
        groups = self.field.param_groups()
        o = self.cfg.optim
        self.optimizer = torch.optim.Adam([{"params": groups["planes"], "lr": o.lr_planes, "name": "planes"},
                                           {"params": groups["mlp"], "lr": o.lr_mlp, "name": "mlp"}],
                                          betas=(0.9, 0.99), eps=1e-15)
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])

    def state(self) -> dict:
        return {"scene": self.field.to_state(), "optimizer": self.optimizer.state_dict()}

    def parameters(self) -> dict[str, torch.Tensor]:
        return dict(self.field.named_parameters())

    def size_stats(self) -> dict:
        return {"num_params": self.field.num_params}

    def eval_scene(self):
        return self.field

    def export(self) -> Path:
        """``exports/field.pt``: the field's state (tensors and a JSON header; ``torch.load(...,
        weights_only=True)`` reads it), written atomically; ``recon export RUN --format glb`` extracts its
        mesh."""
        path = self.run_dir / "exports" / "field.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(self.field.to_state(), tmp)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return path

    def _batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rays and their target pixels (RGBA): ``rays_per_step`` rays over :data:`VIEWS_PER_STEP` views."""
        views = torch.tensor([self.next_index() for _ in range(VIEWS_PER_STEP)], device=self.device)
        per = self.cfg.optim.rays_per_step // VIEWS_PER_STEP
        H, W = self.train_images.shape[1:3]
        g = self.generator
        px = (torch.rand(VIEWS_PER_STEP, per, 2, generator=g) * torch.tensor([W, H])).to(self.device)
        origins, dirs = self.train_cams[views].rays(px)
        ix, iy = px[..., 0].long().clamp_max(W - 1), px[..., 1].long().clamp_max(H - 1)
        target = self.train_images[views[:, None], iy, ix]  # [V, per, 4]
        return origins.reshape(-1, 3), dirs.reshape(-1, 3), target.reshape(-1, target.shape[-1])

    def guarded(self, render, *args, **kwargs) -> dict:
        """``render(*args, **kwargs)``, turning the compositing's refusal of non-finite samples into the loop's
        stop with the last good checkpoint (a NaN parameter is named; otherwise the field overflowed)."""
        try:
            return render(*args, **kwargs)
        except ValueError as err:
            if "finite" not in str(err) and "NaN" not in str(err):
                raise
            self.check_finite()
            from recon.train.checkpoint import latest_checkpoint
            from recon.train.trainer import TrainingError

            last = latest_checkpoint(self.run_dir)
            raise TrainingError(f"the field's samples became non-finite at step {self.step_index} ({err}); training "
                                f"stopped. Last good checkpoint: {last or 'none written yet'} (unchanged). Lower the "
                                "learning rates.") from err

    def step(self) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        origins, dirs, target = self._batch()
        out = self.guarded(render_rays, self.field, origins, dirs, generator=self.generator, backend=cfg.backend)
        R = len(origins)
        bg = torch.rand(R, 3, generator=self.generator).to(self.device) if cfg.random_background \
            else self.eval_background.expand(R, 3)
        rgb, a = target[:, :3], (target[:, 3:] if target.shape[-1] == 4 else torch.ones_like(target[:, :1]))
        gt = rgb * a + bg * (1 - a)  # as evaluation composites the images
        # Photos (alpha as a validity mask): pixels with alpha < 0.5 are left out, as by the other methods.
        valid = (a >= 0.5).float() if self.mask else torch.ones_like(a)
        pred = out["rgb"] + (1 - out["opacity"]) * bg
        mse = ((pred - gt).square() * valid).sum() / (3 * valid.sum().clamp_min(1))
        loss = mse + o.lambda_tv * self.field.plane_tv()
        self.check_loss(loss)
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        decay = 0.1 ** (min(self.step_index, cfg.max_steps) / cfg.max_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = (o.lr_planes if group["name"] == "planes" else o.lr_mlp) * decay
        if self.step_index % 50 == 0:
            self.check_finite()
        return {"loss": loss.item(), "psnr": float(-10 * math.log10(max(mse.item(), 1e-10)))}

