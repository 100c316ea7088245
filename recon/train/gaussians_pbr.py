"""Relightable 3D Gaussians (``recon train gaussians-pbr``): geometry, per-Gaussian glTF metallic-roughness
material and normal, and the environment light, from photos under one unknown environment.

1. **Geometry stage** (``pbr.geometry_steps``): the 3DGS recipe of ``recon train gaussians`` (radiance, SH,
   densification) plus a depth-normal consistency loss (2DGS / GS-IR): the rendered normal, each Gaussian's
   shortest axis facing the camera (:func:`~recon.scenes.gaussians_pbr.gaussian_normals`), should agree with
   the normal of the rendered depth; and a flatness prior (``pbr.lambda_flat``: shortest / middle axis), so
   that the shortest axis is a well-defined normal. No opacity reset in the stage's last half reset interval.
2. **Material stage**: the scene becomes a :class:`~recon.scenes.gaussians_pbr.PBRGaussianScene` (base color
   starting at the mean stage-1 color over the initial light, roughness-metallic constant) lit by a learnable
   :class:`~recon.shading.envmap.EnvLight`. Deferred shading of the rasterized G-buffer by the shared split-sum
   integrator (:mod:`recon.renderers.gaussians.pbr`), made self-shadowing by a per-Gaussian diffuse transfer
   baked through the Gaussian ray caster's BVH every ``pbr.transfer_every`` steps (R3DG's baked visibility);
   the geometry is frozen by default (``pbr.geometry_lr_scale``); the light warms up alone first; the light
   priors of mesh-pbr (neutral white, dielectric); densification (when its schedule reaches this stage) and the
   normal consistency continue.

The checkpoint's scene is a :class:`~recon.scenes.lit.LitScene` in the material stage, so ``recon eval`` (the
inverse-rendering metrics), ``recon render --channels ...albedo,roughness,metallic,normal`` and ``recon relight``
work on the run. They shade as training did: split-sum with the baked self-shadowing, which
:func:`~recon.renderers.gaussians.pbr.render_gaussians_pbr` bakes (and caches) for any relightable Gaussian scene;
``--integrator mc`` traces shadow rays through the Gaussian BVH instead.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import torch

from recon.color import srgb_to_linear
from recon.evaluate import composite, fill_invalid
from recon.metrics import psnr, ssim
from recon.renderers import GaussianSettings, RenderSettings, ShadingSettings
from recon.renderers.gaussians.rasterize import rasterize_gaussians
from recon.renderers.gaussians.render import GaussianAux, scene_colors
from recon.scenes.gaussians_pbr import PBRGaussianScene, gaussian_normals
from recon.scenes.lit import LitScene
from recon.shading.envmap import EnvLight
from recon.train.densify import DensifyStrategy
from recon.train.gaussians import GaussianMethod, build_optimizer, means_lr
from recon.train.mesh_pbr import light_white_prior

__all__ = ["GaussianPBRMethod", "depth_normal_loss", "edge_aware_tv", "evaluation_plan", "normals_from_depth"]

_GEOMETRY = ("means", "quats", "log_scales", "opacity_logits")


def normals_from_depth(depth: torch.Tensor, cam) -> torch.Tensor:
    """World normals ``[H, W, 3]`` of the surface of a camera-z ``depth [H, W, 1]`` map (central differences of
    the back-projected points, facing the camera; 0 on the border)."""
    H, W = depth.shape[:2]
    o, d = cam.rays()
    d = d[0].reshape(H, W, 3)
    fwd = cam.world_to_cam[0, 2, :3]
    pts = o[0, 0] + d * (depth / (d @ fwd)[..., None].clamp_min(1e-6))
    dx = pts[1:-1, 2:] - pts[1:-1, :-2]
    dy = pts[2:, 1:-1] - pts[:-2, 1:-1]
    n = torch.linalg.cross(dy, dx, dim=-1)
    n = n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    n = torch.where(((n * d[1:-1, 1:-1]).sum(-1, keepdim=True) > 0), -n, n)
    return torch.nn.functional.pad(n.permute(2, 0, 1), (1, 1, 1, 1)).permute(1, 2, 0)


def depth_normal_loss(depth: torch.Tensor, normal: torch.Tensor, alpha: torch.Tensor, cam) -> torch.Tensor:
    """Mean ``1 - cos`` between the rendered normals ``[H, W, 3]`` (normalized here) and the depth's normals,
    over pixels whose coverage and whose neighbours' coverage exceed 0.5. The depth side is detached (as 2DGS),
    so the loss turns the Gaussians rather than bending the depth."""
    nd = normals_from_depth(depth.detach(), cam)
    nr = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    solid = (alpha[..., 0] > 0.5).float()
    solid = -torch.nn.functional.max_pool2d(-solid[None, None], 3, 1, 1)[0, 0]  # all 3 x 3 neighbours covered
    w = solid * (nd.norm(dim=-1) > 0.5)
    return (w * (1 - (nd * nr).sum(-1))).sum() / w.sum().clamp_min(1.0)


def edge_aware_tv(value: torch.Tensor, image: torch.Tensor, alpha: torch.Tensor, sharpness: float = 10.0
                  ) -> torch.Tensor:
    """Mean absolute difference of neighbouring pixels of a G-buffer channel ``value [H, W, C]``, weighted by
    ``exp(-sharpness |grad image|)`` (the photo's own edges may carry material edges) and counted only between
    covered pixels (``alpha [H, W, 1] > 0.5``): the smoothness priors of R3DG / GS-IR on rendered materials."""
    solid = (alpha[..., 0] > 0.5).float()
    total = value.new_zeros(())
    for dim in (0, 1):
        n = value.shape[dim] - 1
        dv = (value.narrow(dim, 1, n) - value.narrow(dim, 0, n)).abs().mean(-1)
        di = (image.narrow(dim, 1, n) - image.narrow(dim, 0, n)).abs().mean(-1)
        w = torch.exp(-sharpness * di) * solid.narrow(dim, 1, n) * solid.narrow(dim, 0, n)
        total = total + (w * dv).sum() / w.sum().clamp_min(1.0)
    return total


def evaluation_plan(cfg) -> tuple[ShadingSettings, dict]:
    """How a gaussians-pbr run's own evaluation shades (the trainer's and ``recon eval RUN``'s defaults): split-sum
    with the baked self-shadowing, the model the material stage fits (see the module docstring), on
    ``eval_supersample`` x ``eval_supersample`` sub-pixels, for the novel views and the relit ones (keyword
    arguments of :func:`recon.evaluate_pbr.evaluate_inverse_rendering`)."""
    ss = cfg.eval_supersample
    shading = ShadingSettings(integrator="splitsum", shadows=cfg.pbr.shadow_samples > 0, supersample=ss)
    return shading, {"spp": cfg.relight_spp, "supersample": ss, "seed": cfg.seed, "integrator": "splitsum"}


class GaussianPBRMethod(GaussianMethod):
    """The 3DGS method with a depth-normal consistency, then a material stage (module docstring)."""

    name = "gaussians-pbr"
    state_keys = frozenset({"optimizer", "densify", "pbr"})

    def render_settings(self) -> RenderSettings:
        shading, _ = evaluation_plan(self.cfg)
        return RenderSettings(channels=("rgb", "alpha"), backend=self.cfg.backend, shading=shading,
                              gaussians=GaussianSettings())

    @property
    def material_stage(self) -> bool:
        return isinstance(self.scene, PBRGaussianScene)

    # --- state ---------------------------------------------------------------------------------------------
    def setup(self, state: dict | None, source: str) -> None:
        self.light = self.light_opt = self.transfer = None
        if state is not None and state["pbr"]["stage"] == "material":
            lit = LitScene.from_state(state["scene"], source=source)
            self.scene = lit.geometry.to(self.device)
            self._make_material_stage(lit.light.to(self.device))
            self.optimizer.load_state_dict(state["optimizer"])
            self._apply_geometry_lr()  # this run's scale, not the checkpoint's
            self.light_opt.load_state_dict(state["pbr"]["light_optimizer"])
            self.strategy.load_state_dict(state["densify"])
            self._bake()
            return
        super().setup(state, source)
        self._settle_opacities()

    @property
    def frozen(self) -> bool:
        """Whether the material stage keeps the stage-1 geometry fixed (``pbr.geometry_lr_scale`` 0)."""
        return self.material_stage and self.cfg.pbr.geometry_lr_scale == 0

    def _apply_geometry_lr(self) -> None:
        o, scale = self.cfg.optim, self.cfg.pbr.geometry_lr_scale
        base = {"quats": o.lr_quats, "log_scales": o.lr_scales, "opacity_logits": o.lr_opacity}
        for group in self.optimizer.param_groups:
            if group["name"] in base:
                group["lr"] = base[group["name"]] * scale  # means: means_lr(...) * scale every step

    def _settle_opacities(self) -> None:
        """No opacity reset in the last half reset interval of the geometry stage, nor in the material stage:
        the materials are fitted to (and the shadows baked from) opacities that have recovered."""
        p = self.cfg.pbr
        last = p.geometry_steps - self.cfg.densify.opacity_reset_interval // 2
        self.strategy.reset_until = min(self.strategy.reset_until, last if not self.material_stage else -1)

    def state(self) -> dict:
        st = super().state()
        st["pbr"] = {"stage": "material" if self.material_stage else "geometry"}
        if self.material_stage:
            st["scene"] = LitScene(self.scene, self.light).to_state()
            st["pbr"]["light_optimizer"] = self.light_opt.state_dict()
        return st

    def parameters(self) -> dict[str, torch.Tensor]:
        params = dict(self.scene.param_groups())
        if self.light is not None:
            params["light"] = self.light.log_radiance
        return params

    def _make_material_stage(self, light: EnvLight) -> None:
        cfg, p = self.cfg, self.cfg.pbr
        self.light = light
        self.optimizer = build_optimizer(self.scene, cfg, self.extent,
                                         extra={"base_color": p.lr_base_color, "roughness_metallic": p.lr_material})
        self.light_opt = torch.optim.Adam([self.light.log_radiance], lr=p.lr_light)
        self._apply_geometry_lr()
        self.strategy = DensifyStrategy(cfg.densify, self.scene, self.optimizer, self.extent, cfg.max_steps)
        self._settle_opacities()
        if self.frozen:
            # No gradients for the geometry (nor in-place Adam writes, so the baked transfer stays cached), and
            # no densification: clones and splits of frozen Gaussians could never move.
            for name in _GEOMETRY:
                getattr(self.scene, name).requires_grad_(False)
            self.strategy.stop = min(self.strategy.stop, p.geometry_steps)

    def _start_material_stage(self) -> None:
        p = self.cfg.pbr
        with torch.no_grad():
            mean = scene_colors(self.scene, self.scene.means.mean(0), 0).mean(0)
            base = (srgb_to_linear(mean.clamp(0, 1)) / p.init_light).clamp(0, 1).expand(len(self.scene), 3)
        self.scene = PBRGaussianScene.from_radiance(self.scene, base, p.init_roughness, p.init_metallic)
        self.scene.shadow_samples = p.shadow_samples  # eval / render / relight bake what training baked
        light = EnvLight.constant(p.init_light, height=p.light_height, learnable=True).to(self.device)
        self._make_material_stage(light)
        self._bake()

    def _bake(self) -> None:
        p = self.cfg.pbr
        if p.shadow_samples <= 0:
            self.transfer = None
            return
        from recon.renderers.gaussians.pbr import bake_transfer

        # The tracer copies what it needs to the CPU; the scene stays where it is.
        # Seed 0, as the renderer's own bake: evaluation shades with the very transfer training fitted.
        self.transfer = bake_transfer(self.scene, samples=p.shadow_samples).to(self.device)

    # --- one step ------------------------------------------------------------------------------------------
    def _render_geometry(self, cam, bg):
        """Radiance and normals in one rasterization pass (D = 6)."""
        gs = GaussianSettings()
        sc = self.scene
        center = cam.centers()[0]
        feats = torch.cat([scene_colors(sc, center, sc.active_sh_degree),
                           gaussian_normals(sc.means, sc.quats, sc.log_scales, center)], -1)
        out = rasterize_gaussians(sc.means, sc.quats, sc.scales, sc.opacities, feats, cam.world_to_cam[0],
                                  cam.K[0], cam.width, cam.height, torch.cat([bg, torch.zeros(3, device=bg.device)]),
                                  near=gs.near, eps2d=gs.eps2d, tile_size=gs.tile_size, backend=self.cfg.backend)
        depth = out.depth / out.alpha.clamp_min(1e-6)
        return (out.rgb[None, ..., :3], out.alpha[None], depth, out.rgb[..., 3:],
                GaussianAux(means2d=[out.means2d], radii=[out.radii]))

    def _render_material(self, cam, bg):
        from recon.renderers.gaussians.pbr import render_gaussians_pbr

        settings = RenderSettings(background=bg, backend=self.cfg.backend,
                                  shading=ShadingSettings(integrator="splitsum", shadows=self.transfer is not None))
        out = render_gaussians_pbr(self.scene, cam, settings, self.light, transfer=self.transfer)
        self._gbuffer = out.gbuffer
        return out.rgb, out.alpha, out.depth[0], out.normal[0], out.aux

    def step(self) -> dict:
        cfg, p = self.cfg, self.cfg.pbr
        step = self.step_index
        if not self.material_stage and step > p.geometry_steps:
            self._start_material_stage()
        elif self.material_stage and p.shadow_samples > 0 and (
                step % p.transfer_every == 0 or len(self.transfer) != len(self.scene)):
            self._bake()  # cached while the geometry is frozen; at once after densification changed N
        idx = self.next_index()
        cam = self.train_cams[idx]
        bg = torch.rand(3, generator=self.generator).to(self.device) if cfg.random_background else self.eval_background
        images = self.train_images[idx: idx + 1]
        gt = composite(images, bg)
        render = self._render_material if self.material_stage else self._render_geometry
        pred, alpha, depth, normal, aux = render(cam, bg)
        if self.mask:
            gt = fill_invalid(gt, pred, images)
        l1 = (pred - gt).abs().mean()
        loss = (1 - cfg.optim.lambda_dssim) * l1 + cfg.optim.lambda_dssim * (1 - ssim(pred, gt).mean())
        shaping = step >= p.normal_from and not self.frozen
        if p.lambda_normal > 0 and shaping:
            loss = loss + p.lambda_normal * depth_normal_loss(depth, normal, alpha[0], cam)
        if p.lambda_flat > 0 and shaping:
            s = self.scene.scales.sort(dim=-1).values
            loss = loss + p.lambda_flat * (s[:, 0] / s[:, 1].clamp_min(1e-12)).mean()
        if self.material_stage:
            rm = self.scene.roughness_metallic.clamp(0, 1)
            loss = loss + p.lambda_light_white * light_white_prior(self.light.radiance()) + p.lambda_metallic * rm[:, 1].mean()
            if p.lambda_albedo_smooth > 0 or p.lambda_roughness_smooth > 0:
                g = self._gbuffer
                loss = loss + p.lambda_albedo_smooth * edge_aware_tv(g["albedo"][0], gt[0], alpha[0])
                loss = loss + p.lambda_roughness_smooth * edge_aware_tv(g["roughness"][0], gt[0], alpha[0])
        self.check_loss(loss)

        out = SimpleNamespace(aux=aux)  # what the densification hooks read
        self.strategy.pre_backward(out)
        loss.backward()
        warm = self.material_stage and step <= p.geometry_steps + p.light_warmup
        if warm:
            for name in ("base_color", "roughness_metallic"):
                getattr(self.scene, name).grad = None
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.light_opt is not None:
            self.light_opt.step()
            self.light_opt.zero_grad(set_to_none=True)
        if self.material_stage:
            with torch.no_grad():
                self.scene.base_color.clamp_(0, 1)
                self.scene.roughness_metallic.clamp_(0, 1)
        if step % 50 == 0:
            self.check_finite()
        self.strategy.post_backward(step, out, cam.width, cam.height)
        for group in self.optimizer.param_groups:
            if group["name"] == "means":
                group["lr"] = means_lr(cfg, self.extent, step) * (p.geometry_lr_scale if self.material_stage else 1.0)
        if not self.material_stage and step % cfg.optim.sh_degree_interval == 0:
            self.scene.active_sh_degree = min(self.scene.active_sh_degree + 1, self.scene.max_sh_degree)
        return {"loss": loss.item(), "psnr": psnr(pred.detach().clamp(0, 1), gt).item()}

    # --- evaluation and exports ----------------------------------------------------------------------------
    @torch.no_grad()
    def eval_scene(self):
        if not self.material_stage:
            return self.scene
        return LitScene(self.scene, EnvLight(self.light.radiance().detach()))

    @torch.no_grad()
    def evaluate_extra(self, summary: dict, final: bool) -> None:
        scene = self.eval_scene()
        if not final or not isinstance(scene, LitScene):
            return
        from recon.evaluate_pbr import evaluate_inverse_rendering

        ir = evaluate_inverse_rendering(scene, self.data, self.eval_background, downscale=self.cfg.downscale,
                                        **evaluation_plan(self.cfg)[1])
        if ir is not None:
            summary["inverse_rendering"] = ir

    def export(self) -> Path:
        from recon.export.scenes import export_scene

        scene = self.eval_scene()
        if isinstance(scene, LitScene):
            scene = scene.cpu()
            export_scene(scene, "hdr", self.run_dir / "exports" / "light.hdr")
            # The standard 3DGS layout (the stage-1 radiance, what other viewers show) plus the material.
            return export_scene(scene, "ply", self.run_dir / "exports" / "scene.ply")
        return super().export()
