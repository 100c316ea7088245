"""Inverse-rendering evaluation of a relightable scene against a dataset's ground truth (``recon eval``, the
mesh-pbr trainer, ``bench/ir.py``): renders the G-buffer and the relit test views, scores them with the
protocol of :mod:`recon.evaluate_ir` (both the foreground and the legacy full-image numbers)."""

from __future__ import annotations

import numpy as np
import torch

from recon.evaluate_ir import (
    PROTOCOL,
    albedo_metrics,
    albedo_scale,
    image_metrics,
    load_ir_ground_truth,
    normal_mae_deg,
    relight_targets,
    roughness_mae,
)
from recon.renderers import MeshSettings, RenderSettings, ShadingSettings, render

__all__ = ["evaluate_inverse_rendering", "render_gbuffers", "scaled_albedo"]


def relight_integrator(scene) -> str:
    """How a LitScene is relit by default: relightable Gaussians with split-sum and their baked self-shadowing
    (the model they were fitted with: :func:`recon.renderers.gaussians.pbr.bake_transfer`), meshes with the
    Monte Carlo integrator and shadow rays."""
    return "splitsum" if hasattr(getattr(scene, "geometry", None), "scaled_base_color") else "mc"


def scaled_albedo(scene, scale: torch.Tensor):
    """A copy of the LitScene ``scene`` whose base color is multiplied per channel by ``scale [3]`` (through the
    glTF base-color factor, so textures, vertex colors and factors all scale)."""
    from recon.scenes.lit import LitScene

    if hasattr(scene.geometry, "scaled_base_color"):  # relightable Gaussians
        return LitScene(scene.geometry.scaled_base_color(scale), scene.light)
    geometry = scene.geometry.detach_copy()
    with torch.no_grad():
        geometry.base_color_factor[:3] *= scale.to(geometry.base_color_factor)
    return LitScene(geometry, scene.light)


@torch.no_grad()
def _render_views(scene, split, settings: RenderSettings, device) -> dict[str, torch.Tensor]:
    outs: dict[str, list] = {}
    for i in range(len(split)):
        out = render(scene, split.cameras[i].to(device), settings)
        for key in ("rgb", "normal"):
            if getattr(out, key) is not None:
                outs.setdefault(key, []).append(getattr(out, key).cpu())
        for key, value in out.gbuffer.items():
            outs.setdefault(key, []).append(value.cpu())
    return {k: torch.cat(v) for k, v in outs.items()}


def render_gbuffers(scene, split, background: torch.Tensor, device) -> dict[str, torch.Tensor]:
    """The G-buffers the evaluation scores (``normal``, ``albedo``, ``roughness``, ``metallic``, plus ``rgb``),
    ``[C, H, W, D]`` on the CPU, for the cameras of ``split`` (anything with ``len`` and ``cameras[i]``, e.g. a
    dataset split): point samples at the pixel centers, as the
    ground-truth buffers -- textures are looked up bilinearly without mip-mapping (a mip level averages the
    texels of the pixel's footprint; on bob_field's exact asset that cost the albedo 57 dB, 26.2 against 83.3).
    With ``--downscale n`` the ground truth is the area average of the full-resolution samples and the prediction
    still one sample per (coarse) pixel."""
    settings = RenderSettings(background=background, channels=("rgb", "alpha", "normal", "albedo", "roughness",
                                                               "metallic"),
                              mesh=MeshSettings(texture_filter="linear"))
    return _render_views(scene, split, settings, device)


def evaluate_inverse_rendering(scene, data, background: torch.Tensor, downscale: int = 1, spp: int = 32,
                               supersample: int = 1, seed: int = 0, indirect: bool = False,
                               integrator: str | None = None) -> dict | None:
    """Albedo (aligned / unaligned), roughness, normal and relighting metrics of the LitScene ``scene`` on
    ``data``'s test split; None when the dataset carries no ground-truth G-buffers.

    Relit views are rendered with ``integrator`` (None: :func:`relight_integrator` of the scene; Monte Carlo:
    ``spp`` samples per strategy, shadows, one bounce of indirect light with ``indirect``) under each
    environment of ``transforms_relight.json``, with the albedo aligned by the per-channel median scale and
    without alignment. Returns a dict for ``eval.json`` (``protocol`` states how every number is computed).
    """
    gt = load_ir_ground_truth(data.root, list(data.test.names), downscale=downscale)
    if gt is None:
        return None
    device = background.device
    bg = background.cpu()
    gbuf = render_gbuffers(scene, data.test, background, device)
    scale = albedo_scale(gbuf["albedo"], gt.albedo, gt.mask)
    result: dict = {"protocol": dict(PROTOCOL)}
    result.update(albedo_metrics(gbuf["albedo"], gt, bg, scale))
    result["roughness_mae"] = roughness_mae(gbuf["roughness"], gt)
    result["normal_mae_deg"] = normal_mae_deg(gbuf["normal"], gt)
    m = gt.mask.bool()[..., 0]
    result["metallic_mean"] = float(gbuf["metallic"][..., 0][m].mean()) if m.any() else None
    integrator = integrator or relight_integrator(scene)
    indirect = indirect and integrator == "mc"
    mc = RenderSettings(background=background, channels=("rgb", "alpha"),
                        shading=ShadingSettings(integrator=integrator, spp=spp, seed=seed, supersample=supersample,
                                                indirect=indirect))
    relit: dict = {}
    from recon.data.io import read_image
    from recon.shading.envmap import EnvLight

    for env, (env_path, images) in relight_targets(data.root).items():
        gt_rgba = torch.stack([torch.as_tensor(read_image(images[n])) for n in data.test.names])
        if gt_rgba.shape[1:3] != gt.mask.shape[1:3]:
            gt_rgba = _resize_rgba(gt_rgba, gt.mask.shape[1:3])
        light = EnvLight.from_file(env_path).to(device)
        entry = {}
        for tag, sc in (("", scaled_albedo(scene, scale)), ("_unaligned", scene)):
            pred = _render_views(sc.with_light(light), data.test, mc, device)["rgb"]
            for key, value in image_metrics(pred, gt_rgba, bg, gt.mask).items():
                entry[f"{key}{tag}"] = value
        relit[env] = entry
    if relit:
        result["relight"] = relit
        for key in next(iter(relit.values())):
            values = [e[key] for e in relit.values() if e[key] is not None]
            result[f"relight_{key}"] = float(np.mean(values)) if values else None
    result["relight_integrator"] = {"integrator": integrator, "spp": spp, "supersample": supersample,
                                    "indirect": bool(indirect)}
    return _rounded(result)


def _resize_rgba(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    # Area average, as the loaders downscale the training images.
    x = images.permute(0, 3, 1, 2)
    return torch.nn.functional.interpolate(x, size=size, mode="area").permute(0, 2, 3, 1)


def _rounded(value):
    if isinstance(value, float):
        return round(value, 5)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    return value

