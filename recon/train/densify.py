"""Adaptive density control for Gaussians (the 3DGS strategy): clone, split, prune, opacity reset.

A strategy object with explicit hooks, so the trainer has no densification branches:
``pre_backward(out)`` before ``loss.backward()``, ``post_backward(step, out, width, height)`` after
``optimizer.step()`` (it reads ``means2d.grad``, which is not an optimizer parameter, so the step leaves it
intact). It edits the scene's parameters and the Adam state together.
"""

from __future__ import annotations

import math

import torch

from recon.cameras import quat_wxyz_to_rotmat
from recon.scenes.gaussians import GaussianScene
from recon.train.config import DensifyConfig


class DensifyStrategy:
    """3DGS densification.

    Args:
        cfg: the schedule and thresholds.
        scene: the scene whose parameters are edited in place.
        optimizer: an Adam whose param groups are named like ``scene.param_groups()`` (``group["name"]``).
        extent: scene extent (world units) for the size thresholds.
        max_steps: run length; the schedule's stop step is clamped to 60% of it.
    """

    def __init__(self, cfg: DensifyConfig, scene: GaussianScene, optimizer: torch.optim.Optimizer,
                 extent: float, max_steps: int):
        self.cfg = cfg
        self.scene = scene
        self.optimizer = optimizer
        self.extent = extent
        self.stop = min(cfg.stop, int(0.6 * max_steps))
        self.reset_until = self.stop
        """Last step at which opacities may be reset (a trainer that needs them settled by a given step
        lowers it)."""
        self._reset_stats()

    def _reset_stats(self) -> None:
        n, dev = len(self.scene), self.scene.means.device
        self.grad_accum = torch.zeros(n, device=dev)
        self.count = torch.zeros(n, device=dev)
        self.max_radii = torch.zeros(n, device=dev)

    def state_dict(self) -> dict:
        return {"grad_accum": self.grad_accum, "count": self.count, "max_radii": self.max_radii}

    def load_state_dict(self, state: dict) -> None:
        for key in ("grad_accum", "count", "max_radii"):
            if state[key].shape[0] != len(self.scene):
                raise ValueError(f"densify state '{key}' has {state[key].shape[0]} rows, scene has {len(self.scene)}")
            setattr(self, key, state[key].to(self.scene.means.device))

    # --- hooks ---------------------------------------------------------------------------------------------
    def pre_backward(self, out) -> None:
        for m2d in out.aux.means2d:
            if m2d.requires_grad:
                m2d.retain_grad()

    @torch.no_grad()
    def post_backward(self, step: int, out, width: int, height: int) -> None:
        """Accumulate statistics and, on schedule, densify / prune / reset opacities."""
        if step > self.stop:
            return
        # 3DGS thresholds the gradient w.r.t. NDC coordinates: d/d(ndc) = d/d(pixel) * (W/2, H/2).
        scale = torch.tensor([0.5 * width, 0.5 * height], device=self.grad_accum.device)
        for m2d, radii in zip(out.aux.means2d, out.aux.radii):
            if m2d.grad is None:
                continue
            visible = radii > 0
            norms = (m2d.grad * scale).norm(dim=-1)
            self.grad_accum[visible] += norms[visible]
            self.count[visible] += 1
            self.max_radii[visible] = torch.maximum(self.max_radii[visible], radii[visible].float())
        cfg = self.cfg
        if step >= cfg.start and step % cfg.interval == 0:
            self._densify_and_prune(prune_big=cfg.opacity_reset_interval > 0 and step > cfg.opacity_reset_interval)
            self._reset_stats()
        if cfg.opacity_reset_interval > 0 and step % cfg.opacity_reset_interval == 0 and step <= self.reset_until:
            self._reset_opacity()

    # --- operations ----------------------------------------------------------------------------------------
    def _densify_and_prune(self, prune_big: bool) -> None:
        cfg, scene = self.cfg, self.scene
        grads = self.grad_accum / self.count.clamp_min(1)
        big_grad = grads >= cfg.grad_threshold
        max_scale = scene.scales.max(dim=-1).values
        room = cfg.max_gaussians - len(scene)
        clone = big_grad & (max_scale <= cfg.percent_dense * self.extent)
        split = big_grad & (max_scale > cfg.percent_dense * self.extent)
        if room <= 0:
            clone[:] = False
            split[:] = False
        elif int(clone.sum() + split.sum()) > room:  # keep the largest gradients within the cap
            order = torch.argsort(torch.where(big_grad, grads, -1.0), descending=True)
            keep = torch.zeros_like(big_grad)
            keep[order[:room]] = True
            clone &= keep
            split &= keep
        params = {k: v.detach() for k, v in scene.param_groups().items()}
        new = {k: [v, v[clone]] for k, v in params.items()}
        if split.any():
            samples = self._split_samples(params, split)
            for k in new:
                new[k].append(samples[k])
        grown = {k: torch.cat(v) for k, v in new.items()}
        n_old = params["means"].shape[0]
        n_added = grown["means"].shape[0] - n_old
        opac = torch.sigmoid(grown["opacity_logits"])
        prune = opac < cfg.prune_opacity
        prune[:n_old] |= split
        if prune_big:
            radii = torch.cat([self.max_radii, self.max_radii.new_zeros(n_added)])
            prune |= radii > cfg.max_screen_size
            prune |= torch.exp(grown["log_scales"]).max(dim=-1).values > 0.1 * self.extent
        keep = ~prune
        self._apply({k: v[keep] for k, v in grown.items()}, n_added, keep)

    def _split_samples(self, params: dict, split: torch.Tensor) -> dict:
        """Two samples per split Gaussian, drawn from it, with scales shrunk by 1.6 (as 3DGS)."""
        scales = torch.exp(params["log_scales"][split]).repeat(2, 1)
        rot = quat_wxyz_to_rotmat(params["quats"][split]).repeat(2, 1, 1)
        offsets = (rot @ (torch.randn_like(scales) * scales)[..., None])[..., 0]
        out = {k: v[split].repeat(2, *[1] * (v.ndim - 1)) for k, v in params.items()}
        out["means"] = out["means"] + offsets
        out["log_scales"] = torch.log(scales / 1.6)
        return out

    def _apply(self, tensors: dict, n_added: int, keep: torch.Tensor) -> None:
        """Swap parameters and carry the Adam moments of kept rows; rows born in this step start at zero."""
        old_params = self.scene.param_groups()
        self.scene.replace_params(tensors)
        new_params = self.scene.param_groups()
        for group in self.optimizer.param_groups:
            name = group["name"]
            old_p, new_p = old_params[name], new_params[name]
            state = self.optimizer.state.pop(old_p, None)
            group["params"][0] = new_p
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    pad = state[key].new_zeros(n_added, *state[key].shape[1:])
                    state[key] = torch.cat([state[key], pad])[keep]
                self.optimizer.state[new_p] = state
        for key in ("grad_accum", "count", "max_radii"):
            setattr(self, key, getattr(self, key).new_zeros(len(self.scene)))

    def _reset_opacity(self) -> None:
        logits = self.scene.opacity_logits.detach()
        cap = math.log(0.01 / 0.99)
        new = torch.minimum(logits, torch.full_like(logits, cap))
        with torch.no_grad():  # an in-place write autograd (and caches keyed on _version) can see
            self.scene.opacity_logits.copy_(new)
        for group in self.optimizer.param_groups:
            if group["name"] == "opacity_logits":
                state = self.optimizer.state.get(group["params"][0])
                if state:
                    state["exp_avg"].zero_()
                    state["exp_avg_sq"].zero_()
