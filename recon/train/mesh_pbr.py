"""Inverse rendering of a textured mesh (``recon train mesh-pbr``): geometry, glTF metallic-roughness material
and the environment light, from photos under one unknown environment.

1. **Iso-surface stage**: exactly the topology stage of ``recon train mesh`` (radiance vertex colors, unlit).
2. **Material stage**: the extracted, UV-mapped mesh gets a base-color texture (one color, the mean stage-1
   color, while the light warms up alone; ``model.init_albedo``, ``optim.light_warmup``), a roughness-metallic
   texture and a learnable equirectangular light (:class:`~recon.shading.envmap.EnvLight`, positive through
   exp). The mesh is shaded by the shared split-sum integrator made self-shadowing by a per-vertex transfer,
   with one bounce of interreflection (deferred: rasterize -> G-buffer -> shade) and compared with the images
   in sRGB (the images are stored sRGB; the shading is linear and encoded once at the output, as nvdiffrec's
   tonemapped loss). After the last step the roughness is shifted as a whole to what Monte Carlo renders of a
   few training views prefer (:func:`search_roughness`).
   Priors nvdiffrec(-mc) found necessary: total variation of the base-color and roughness-metallic textures,
   a neutral-white light prior, and a weak dielectric prior on metallic; vertex offsets keep the Laplacian and
   normal-consistency regularizers of the mesh trainer.

The checkpoint's scene is a :class:`~recon.scenes.lit.LitScene` (mesh + light), so ``recon eval/render/relight``
and exports work on the run directly.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import torch

from recon.renderers import FieldSettings, RenderSettings, ShadingSettings
from recon.renderers.mesh.render import DEFAULT_GRAY, MeshArrays, render_mesh_arrays
from recon.scenes.lit import LitScene
from recon.scenes.mesh import MeshMaterial, MeshScene
from recon.shading.envmap import EnvLight
from recon.shading.prt import TRANSFER_CHANNELS
from recon.train.mesh import GEOMETRY, MeshMethod

__all__ = ["MeshPBRMethod", "SDFPBRMethod", "albedo_normal_correlation", "evaluation_plan",
           "explains_interreflection", "explains_shadows", "light_white_prior", "monochrome_shading_loss",
           "search_roughness", "shrink_small", "total_variation", "vertex_indirect"]


def explains_shadows(cfg) -> bool:
    """Whether a run config's training explained self-shadowing by its geometry (``optim.shadow_samples`` or
    ``optim.mc_steps``); its evaluation then shades with the Monte Carlo integrator."""
    optim = getattr(cfg, "optim", None)  # gaussians-pbr bakes its shadows: split-sum (recon.evaluate_pbr)
    return getattr(optim, "shadow_samples", 0) > 0 or getattr(optim, "mc_steps", 0) > 0


def explains_interreflection(cfg) -> bool:
    """Whether a run config's training modelled one bounce of interreflection (``optim.interreflection`` with
    self-shadowing); its Monte Carlo evaluation then traces the indirect bounce too."""
    optim = getattr(cfg, "optim", None)
    return getattr(optim, "shadow_samples", 0) > 0 and bool(getattr(optim, "interreflection", False))


def total_variation(tex: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference of horizontally and vertically adjacent texels of ``tex [H, W, C]``."""
    return (tex[1:] - tex[:-1]).abs().mean() + (tex[:, 1:] - tex[:, :-1]).abs().mean()


def monochrome_shading_loss(shading: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """nvdiffrec-mc's monochrome shading regularizer: the luminance (channel mean) of the demodulated shading
    ``[C, H, W, 3]`` (linear radiance of a base color of 1) should match the brightest channel of the linearized
    ``images [C, H, W, 4]`` (sRGB, straight alpha) on the object, compared as ``srgb(log(1 + x))``: shading
    explains the brightness, so the base color keeps the chroma instead of painting in shadows."""
    from recon.color import linear_to_srgb, srgb_to_linear

    def tonemap(x: torch.Tensor) -> torch.Tensor:
        return linear_to_srgb(torch.log1p(x.clamp(0, 65535)))

    ref = srgb_to_linear(images[..., :3]).amax(-1, keepdim=True)
    pred = shading.mean(-1, keepdim=True)
    return ((tonemap(pred) - tonemap(ref)) * images[..., 3:]).abs().mean()


def albedo_normal_correlation(albedo: torch.Tensor, normal: torch.Tensor, weight: torch.Tensor,
                              floor: float = 0.02) -> torch.Tensor:
    """How much of the base color's brightness is a function of the surface orientation: the weighted
    least-squares fit of ``log(mean_c albedo_c)`` by the real spherical harmonics of the normal up to band 3
    (:func:`recon.shading.prt.sh_basis`) with a free constant, and the weighted mean square of the fitted part
    without that constant.

    ``albedo [..., 3]`` linear, ``normal [..., 3]`` unit world normals, ``weight [..., 1]`` (0 off the object).
    Pixels whose brightness is under ``floor`` do not count (a log of ~0 says nothing about shading). Gradients
    reach the albedo only (the normals and the weights are constants).

    Why: with a free base color per texel, a light whose irradiance is off by a factor ``f(n)`` of the normal
    and a base color times ``f(n)`` render the same diffuse images; what breaks the tie (specular, shadows,
    interreflection) is weak, so the base color takes up part of the light's error (bob_field: its learned
    light 8 times too bright from below, the base color of the downward faces as much too dark, 85 % of the
    albedo error on 7.6 % of the pixels; scripts/light_error.py). The true base color of an object is not, in general, a function of
    where its surface faces; penalizing that part hands it to the light. Brightness only: a fit per channel
    also lets a constant tint into the base color (light and base color then trade their colors, which no
    function of the normal shows), measured in docs/inverse_rendering.md."""
    from recon.shading.prt import sh_basis

    keep = weight.detach().reshape(-1) > 0
    a = albedo.reshape(-1, 3)[keep].mean(-1, keepdim=True)
    w = weight.detach().reshape(-1, 1)[keep].double() * (a.detach() > floor)
    basis = sh_basis(normal.detach().reshape(-1, 3)[keep].double())[:, 1:]  # [P, 15]: bands 1..3
    mass = float(w.sum())
    if int((w > 0).sum()) < 10 * (basis.shape[1] + 1):  # too few samples to say what the normal explains
        return albedo.new_zeros(())
    y = torch.log(a.clamp_min(floor)).double()
    # An unpenalized intercept: center by the weighted means, so no share of a constant leaks into bands 1..3
    # (normals that cover only part of the sphere make them far from orthogonal to it).
    bc = basis - (w * basis).sum(0, keepdim=True) / mass
    yc = y - (w * y).sum() / mass
    gram = bc.T @ (w * bc)
    gram = gram + 1e-6 * float(gram.diagonal().mean().clamp_min(1e-12)) * torch.eye(
        gram.shape[0], dtype=gram.dtype, device=gram.device)
    fitted = bc @ torch.linalg.solve(gram, bc.T @ (w * yc))
    return ((w * fitted * fitted).sum() / mass).to(albedo.dtype)


def vertex_indirect(arrays: MeshArrays, bounce_matrix: torch.Tensor, light, backend: str = "auto") -> torch.Tensor:
    """Per-vertex irradiance ``[V, 3]`` of one bounce of diffuse interreflection (the split-sum integrator's
    ``MeshArrays.indirect``): the direct irradiance at each vertex from its self-shadowed transfer
    (``arrays.transfer``) under ``light``, times the diffuse reflectance there, carried by the sparse
    ``bounce_matrix`` (:func:`recon.shading.prt.bounce_matrix`) to the vertices that see it. The reflectance at
    a vertex is the mean over its face corners of the base color times (1 - metallic) (texture lookups, or
    the vertex colors of a mesh without texture coordinates, or the renderer's gray without either): the
    bounce is smooth, and this keeps a training step's cost at one sparse product. Differentiable w.r.t. the light and the base color."""
    from recon.renderers.mesh.texture import texture
    from recon.shading.prt import SH_COEFFS, light_sh

    faces = arrays.faces.long()
    V = len(arrays.vertices)
    dev = arrays.vertices.device
    direct = (arrays.transfer[:, :SH_COEFFS] @ light_sh(light)).clamp_min(0)  # [V, 3] at the vertices
    factor = arrays.color_factor if arrays.color_factor is not None else torch.ones(3, device=dev)
    if arrays.uvs is not None and arrays.base_color is not None:
        uv = arrays.uvs[arrays.uv_faces.long()].reshape(1, 1, -1, 2).contiguous()  # every face corner
        base = texture(arrays.base_color.clamp(0, 1), uv, filter_mode="linear", backend=backend).reshape(-1, 3)
        if arrays.roughness_metallic is not None:
            rm = texture(arrays.roughness_metallic.clamp(0, 1), uv, filter_mode="linear",
                         backend=backend).reshape(-1, 2)
            metallic = rm[:, 1:2] * arrays.metallic_factor
        else:
            metallic = torch.as_tensor(arrays.metallic_factor, device=dev).reshape(1, 1).float()
        rho = base * factor * (1 - metallic)
    else:
        colors = (arrays.vertex_colors if arrays.vertex_colors is not None
                  else torch.full((V, 3), DEFAULT_GRAY, device=dev))  # the renderer's color for such meshes
        rho = colors[faces.reshape(-1)] * factor * (1 - torch.as_tensor(arrays.metallic_factor, device=dev))
    idx = faces.reshape(-1)
    count = torch.zeros(V, 1, device=dev).index_add_(0, idx, torch.ones(len(idx), 1, device=dev)).clamp_min(1)
    rho_v = torch.zeros(V, 3, device=dev, dtype=rho.dtype).index_add(0, idx, rho) / count
    return torch.sparse.mm(bounce_matrix, rho_v * direct)


def light_white_prior(radiance: torch.Tensor) -> torch.Tensor:
    """``mean |L_c - mean_c L| / mean L`` over ``radiance [H, W, 3]``: zero for a gray (white-balanced) light."""
    gray = radiance.mean(-1, keepdim=True)
    return (radiance - gray).abs().mean() / gray.mean().clamp_min(1e-6)


@torch.no_grad()
def shrink_small(values: torch.Tensor, below, amount: float) -> torch.Tensor:
    """Proximal L1 step on the small entries only, in place: entries under ``below`` (a number, or a tensor
    broadcast against ``values``) move ``amount`` towards 0 (not past it); the others are untouched. Returns
    ``values``."""
    small = values < below
    return values.sub_(small * amount).clamp_(min=0)


def evaluation_plan(cfg) -> tuple[ShadingSettings, dict]:
    """How a mesh-pbr / sdf-pbr run's own evaluation shades (the trainer's and ``recon eval RUN``'s defaults):
    the novel views' shading, and the keyword arguments of
    :func:`recon.evaluate_pbr.evaluate_inverse_rendering` for the relit views.

    Novel views: with self-shadowing (shadow_samples or mc_steps) the Monte Carlo integrator (16 samples per
    pixel in all, shadow rays, the indirect bounce when training modelled it), else split-sum; both on
    ``eval_supersample`` x ``eval_supersample`` sub-pixels under the datasets' Gaussian pixel filter. Relit
    views: ``relight_spp`` samples per sub-pixel and strategy on the same sub-pixels."""
    ss = cfg.eval_supersample
    indirect = explains_interreflection(cfg)
    shading = (ShadingSettings(integrator="mc", spp=max(1, 16 // (ss * ss)), supersample=ss, indirect=indirect)
               if explains_shadows(cfg) else ShadingSettings(integrator="splitsum", supersample=ss))
    return shading, {"spp": cfg.relight_spp, "supersample": ss, "seed": cfg.seed, "indirect": indirect}


def _search_downscale(size) -> int:
    """Half resolution for the roughness search when the images are at least 128 px and of even size."""
    h, w = int(size[0]), int(size[1])
    return 2 if min(h, w) >= 128 and h % 2 == 0 and w % 2 == 0 else 1


@torch.no_grad()
def search_roughness(arrays: MeshArrays, light, cams, images: torch.Tensor, background: torch.Tensor,
                     candidates, shading: ShadingSettings, backend: str = "auto",
                     downscale: int = 1) -> tuple[float, dict]:
    """Shift the roughness channel of ``arrays.roughness_metallic`` as a whole (in place) to the mean value that
    best explains ``images [C, H, W, 4]`` (sRGB, straight alpha) seen by ``cams``: L1 over the object between
    the images and renders shaded with ``shading`` (Monte Carlo; every candidate gets the same samples, so their
    comparison is nearly free of noise), first at each mean in ``candidates``, then 0.05 either side of the
    best. Returns the chosen mean and ``{mean: L1}`` of every candidate tried.

    Split-sum hardly sees the roughness of a dielectric (F0 = 0.04) and is biased low where it does; Monte Carlo
    against the path-traced images peaks at the true roughness (docs/inverse_rendering.md)."""
    from recon.evaluate import composite

    settings = RenderSettings(channels=("rgb", "alpha"), backend=backend, background=background, shading=shading)
    target_rgb = composite(images, background)
    weight = images[..., 3:]
    if downscale > 1:
        h, w = images.shape[1:3]
        if h % downscale or w % downscale:
            raise ValueError(f"downscale {downscale} must divide the image size {w} x {h}")
        cams = cams.scaled(1.0 / downscale)
        def pool(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.avg_pool2d(x.permute(0, 3, 1, 2), downscale).permute(0, 2, 3, 1)

        target_rgb, weight = pool(target_rgb), pool(weight)
    base = arrays.roughness_metallic.detach().clone()
    mean = float(base[..., 0].mean())

    def shifted(target: float) -> torch.Tensor:
        rm = base.clone()
        rm[..., 0] = (base[..., 0] + (target - mean)).clamp(0.02, 1.0)
        return rm

    def error(target: float) -> float:
        arrays.roughness_metallic = shifted(target)
        total = 0.0
        for v in range(len(images)):
            out = render_mesh_arrays(arrays, cams[[v]], settings, shading="pbr", light=light)
            total += float(((out.rgb - target_rgb[v:v + 1]).abs() * weight[v:v + 1]).mean())
        return total / max(1, len(images))

    tried = {float(t): error(float(t)) for t in candidates}
    best = min(tried, key=tried.get)
    for t in (round(best - 0.05, 4), round(best + 0.05, 4)):
        if 0.02 <= t <= 1.0 and t not in tried:
            tried[t] = error(t)
    best = min(tried, key=tried.get)
    arrays.roughness_metallic = shifted(best)
    return best, tried


class MeshPBRMethod(MeshMethod):
    """The mesh method's two stages, with a PBR material and a learned light in the second (module docstring)."""

    name = "mesh-pbr"

    def render_settings(self) -> RenderSettings:
        shading, _ = evaluation_plan(self.cfg)
        return RenderSettings(channels=("rgb", "alpha"), backend=self.cfg.backend, shading=shading,
                              fields=FieldSettings(method="sphere"))  # an SDF topology stage (sdf-pbr)

    # --- material stage state ------------------------------------------------------------------------------
    def _start_texture_stage(self) -> None:
        super()._start_texture_stage()
        m = self.cfg.model
        if m.envmap is not None:  # a known (or initial) light from a file (model.envmap)
            light = EnvLight.from_file(m.envmap).resized(m.light_height, learnable=True)
            scale = light.mean_luminance()
        else:
            light = EnvLight.constant(m.init_light, height=m.light_height, learnable=True)
            scale = m.init_light
        with torch.no_grad():
            if m.init_albedo == "constant":  # the mean stage-1 color: shading left for the light to explain
                self.texture.copy_(self.texture.mean((0, 1), keepdim=True).expand_as(self.texture))
            self.texture.div_(scale).clamp_(0, 1)
        size = self.texture.shape[0]
        rm = torch.tensor([m.init_roughness, m.init_metallic], device=self.device).expand(size, size, 2)
        self.material = torch.nn.Parameter(rm.contiguous().clone())
        self.light = light.to(self.device)
        self.transfer = self.bounce = None
        self._update_transfer()

    @torch.no_grad()
    def _update_transfer(self) -> None:
        """The self-shadowed diffuse transfer of the current vertices (:mod:`recon.shading.prt`), shadow rays
        through the mesh's BVH; None when ``optim.shadow_samples`` is 0."""
        o = self.cfg.optim
        self.bounce = self.bounce_matrix = None
        if o.shadow_samples <= 0:
            self.transfer = None
            return
        from recon.renderers.mesh.raycast import RayCaster
        from recon.scenes.mesh import vertex_normals
        from recon.shading.prt import diffuse_transfer

        verts = (self.base_vertices + self.offsets).detach().float().cpu()
        faces = self.faces.cpu()
        caster = RayCaster(verts.contiguous(), faces)
        if caster.backend != "cpu":
            print("recon: warning: the C++ BVH is unavailable; the self-shadowing transfer uses the brute-force "
                  "ray caster (slow for large meshes; --optim.shadow-samples 0 turns it off)", file=sys.stderr)
        t = diffuse_transfer(verts, vertex_normals(verts, faces), caster, samples=o.shadow_samples,
                             seed=self.cfg.seed, bounce_mesh=(verts, faces) if o.interreflection else None)
        if o.interreflection:
            t, bounce = t
            self._set_bounce(bounce)
        self.transfer = t.to(self.device)

    def _set_bounce(self, bounce) -> None:
        from recon.shading.prt import bounce_matrix

        self.bounce = bounce.to(self.device)
        self.bounce_matrix = bounce_matrix(self.bounce, self.faces, len(self.base_vertices))

    def _indirect(self, arrays: MeshArrays) -> torch.Tensor | None:
        """Per-vertex irradiance of one bounce of interreflection under the current light and base color
        (:func:`vertex_indirect`), differentiable w.r.t. both; None without ``optim.interreflection``."""
        if self.bounce is None or self.transfer is None:
            return None
        backend = self.cfg.backend if self.cfg.backend in ("torch", "cpu") else "auto"
        return vertex_indirect(arrays, self.bounce_matrix, self.light, backend=backend)

    def state(self) -> dict:
        state = super().state()
        if self.stage != GEOMETRY:
            state["model"]["material"] = self.material.detach().cpu()
            state["model"]["light"] = self.light.to_state()
            if self.transfer is not None:
                state["model"]["transfer"] = self.transfer.cpu()
            if self.bounce is not None:
                state["model"]["bounce"] = self.bounce.to_state()
        return state

    def _load_texture_state(self, st: dict, source: str) -> None:
        super()._load_texture_state(st, source)
        try:
            self.material = torch.nn.Parameter(st["material"].float().to(self.device).clone())
            self.light = EnvLight.from_state(st["light"], source=source).to(self.device)
        except KeyError as err:
            raise ValueError(f"{source}: mesh-pbr checkpoint lacks {err}") from err
        self.light.log_radiance.requires_grad_(True)
        self.transfer = self.bounce = self.bounce_matrix = None
        o = self.cfg.optim
        if o.shadow_samples > 0:
            if "transfer" in st and ("bounce" in st or not o.interreflection):
                self.transfer = st["transfer"].float().to(self.device)
                if self.transfer.shape != (len(self.base_vertices), TRANSFER_CHANNELS):
                    raise ValueError(f"{source}: transfer must be [{len(self.base_vertices)}, {TRANSFER_CHANNELS}] "
                                     f"(one row per vertex), got {tuple(self.transfer.shape)}")
                if o.interreflection:
                    from recon.shading.prt import Bounce

                    self._set_bounce(Bounce.from_state(st["bounce"], source=source,
                                                       num_points=len(self.base_vertices), num_faces=len(self.faces)))
            else:  # a checkpoint from before self-shadowing (or interreflection): compute it for the vertices
                self._update_transfer()

    def _make_optimizer(self) -> None:
        super()._make_optimizer()
        if self.stage == GEOMETRY:
            return
        o = self.cfg.optim
        for params, lr in (([self.material], o.lr_material), ([self.light.log_radiance], o.lr_light)):
            self.optimizer.add_param_group({"params": params, "lr": lr, "base_lr": lr})

    def _decay_lr(self) -> None:
        super()._decay_lr()
        o = self.cfg.optim
        if o.lr_light > 0 and self.step_index - o.geometry_steps <= o.light_warmup:
            # Light warm-up (optim.light_warmup): base color and roughness-metallic hold still while the light
            # (and the vertices, which need these high-rate steps: docs/inverse_rendering.md) learn. A function
            # of the step, so a resumed run gets the same rates.
            for g in self.optimizer.param_groups:
                if g["params"][0] is self.texture or g["params"][0] is self.material:
                    g["lr"] = 0.0

    def parameters(self) -> dict[str, torch.Tensor]:
        params = super().parameters()
        if self.stage != GEOMETRY:
            params.update(material=self.material, light=self.light.log_radiance)
        return params

    # --- rendering -------------------------------------------------------------------------------------------
    def _arrays(self) -> MeshArrays:
        arrays = super()._arrays()
        if self.stage != GEOMETRY:
            arrays.base_color = self.texture.clamp(0, 1)
            arrays.roughness_metallic = self.material.clamp(0, 1)
            arrays.roughness_factor, arrays.metallic_factor = 1.0, 1.0
            arrays.transfer = self.transfer
        return arrays

    def _render(self, arrays: MeshArrays, cams, settings: RenderSettings):
        if self.stage == GEOMETRY:
            return super()._render(arrays, cams, settings)
        o = self.cfg.optim
        if o.mc_steps > 0 and self.step_index > self.cfg.max_steps - o.mc_steps:
            # A fresh, step-determined sample pattern each step: unbiased gradients, exact resume.
            shading = ShadingSettings(integrator="mc", spp=o.mc_spp, seed=self.step_index,
                                      indirect=explains_interreflection(self.cfg))
        else:
            shading = ShadingSettings(integrator="splitsum")  # the loop's settings may be the evaluation's MC
            arrays.indirect = self._indirect(arrays)  # only split-sum reads it (Monte Carlo traces its own bounce)
        settings = replace(settings, shading=shading)
        if o.lambda_shading > 0:
            settings = replace(settings, channels=(*settings.channels, "shading"))
        return render_mesh_arrays(arrays, cams, settings, shading="pbr", light=self.light)

    def _image_regularizers(self, out, images: torch.Tensor) -> torch.Tensor:
        o = self.cfg.optim
        loss = torch.zeros((), device=self.device)
        if o.lambda_shading > 0:
            # On the object only: in photo mode the images' alpha marks valid pixels, not coverage.
            covered = images[..., 3:] * out.alpha.detach()
            loss = loss + o.lambda_shading * monochrome_shading_loss(out.gbuffer["shading"],
                                                                     torch.cat([images[..., :3], covered], -1))
        if o.lambda_albedo_normal > 0 and out.normal is not None:
            # Pixel centers the mesh covers (the G-buffer's samples) that the images count as object.
            covered = (out.aux.rast[..., 3:4] > 0).float() * (images[..., 3:] > 0.5).float()
            loss = loss + o.lambda_albedo_normal * albedo_normal_correlation(out.gbuffer["albedo"], out.normal,
                                                                              covered)
        return loss

    def step(self) -> dict:
        o = self.cfg.optim
        in_mc_tail = o.mc_steps > 0 and self.step_index > self.cfg.max_steps - o.mc_steps
        if (self.stage != GEOMETRY and o.shadow_samples > 0 and o.lr_vertices > 0 and not in_mc_tail
                and self.step_index % o.transfer_every == 0):
            self._update_transfer()  # the vertices moved: shadows follow (a function of the step: exact resume)
        stats = super().step()
        if self.stage != GEOMETRY:
            # Projected gradient steps: texels stay in the valid range (a clamp in the render alone would leave
            # texels outside it without gradient, stuck).
            with torch.no_grad():
                self._shrink_small_albedo()
                self.texture.clamp_(0, 1)
                self.material.clamp_(0, 1)
            if o.roughness_search > 0 and explains_shadows(self.cfg) and self.step_index == self.cfg.max_steps:
                stats["roughness"] = self._search_roughness()
        return stats

    def _shrink_small_albedo(self) -> None:
        """``optim.albedo_zero_shrink``: a proximal L1 step on the base-color channels below
        ``optim.albedo_zero_below`` times their texel's brightest channel, by that fraction of the texture's
        current learning rate (0 during the light warm-up), so that the weak channels of saturated colors that
        the images do not hold up reach exact zeros."""
        o = self.cfg.optim
        if o.albedo_zero_shrink <= 0:
            return
        lr = next((g["lr"] for g in self.optimizer.param_groups if g["params"][0] is self.texture), 0.0)
        if lr <= 0:
            return
        # Relative to the texel's brightest channel: base color and light share an unknown scale, and a dark
        # but neutral texel has no channel to zero.
        limit = o.albedo_zero_below * self.texture.amax(-1, keepdim=True)
        shrink_small(self.texture, limit, o.albedo_zero_shrink * lr)

    @torch.no_grad()
    def _search_roughness(self) -> float:
        """``optim.roughness_search`` (:func:`search_roughness` on evenly spaced training views); returns the
        chosen mean roughness."""
        o = self.cfg.optim
        k = min(o.roughness_search, len(self.data.train))
        views = torch.linspace(0, len(self.data.train) - 1, k).round().long()
        shading = ShadingSettings(integrator="mc", spp=o.roughness_search_spp, seed=self.cfg.seed,
                                  indirect=explains_interreflection(self.cfg))
        arrays = self._arrays()
        mean = float(self.material[..., 0].mean())
        best, tried = search_roughness(arrays, self.light, self.train_cams[views], self.train_images[views],
                                       self.eval_background, o.roughness_candidates, shading, self.cfg.backend,
                                       downscale=_search_downscale(self.train_images.shape[1:3]))
        self.material.copy_(arrays.roughness_metallic)
        print(f"recon: roughness search: mean {mean:.3f} -> {best:.3f} (L1 "
              + ", ".join(f"{t:.2f}: {e:.5f}" for t, e in sorted(tried.items())) + ")", file=sys.stderr)
        return best

    def _texture_regularizers(self) -> torch.Tensor:
        o = self.cfg.optim
        mat = self.material.clamp(0, 1)
        return (o.lambda_albedo_smooth * total_variation(self.texture)
                + o.lambda_material_smooth * total_variation(mat)
                + o.lambda_light_white * light_white_prior(self.light.radiance())
                + o.lambda_metallic * mat[..., 1].mean())

    @torch.no_grad()
    def eval_scene(self):
        if self.stage == GEOMETRY:
            return super().eval_scene()
        a = self._arrays()
        mesh = MeshScene(a.vertices.detach(), a.faces, uvs=a.uvs, uv_faces=a.uv_faces,
                         material=MeshMaterial(base_color=a.base_color.detach(),
                                               roughness_metallic=a.roughness_metallic.detach(),
                                               roughness_factor=1.0, metallic_factor=1.0))
        light = EnvLight(self.light.radiance().detach())
        return LitScene(mesh, light)

    @torch.no_grad()
    def evaluate_extra(self, summary: dict, final: bool) -> None:
        """At the end of a run on a dataset with ground truth: the inverse-rendering metrics
        (:func:`recon.evaluate_pbr.evaluate_inverse_rendering`) under ``summary["inverse_rendering"]``."""
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

        if self._sdf_stage:  # the run ended in its SDF stage: exports/field.pt
            return super().export()
        scene = self.eval_scene().cpu()
        if isinstance(scene, LitScene):
            export_scene(scene, "hdr", self.run_dir / "exports" / "light.hdr")
        return export_scene(scene, "glb", self.run_dir / "exports" / "mesh.glb")


class SDFPBRMethod(MeshPBRMethod):
    """``recon train sdf-pbr``: mesh-pbr whose topology stage is a neural SDF (``model.geometry sdf``): NeuS
    volume rendering for ``optim.geometry_steps``, marching cubes of its zero set, then the material stage."""

    name = "sdf-pbr"
