"""Deferred shading: a G-buffer of covered pixels plus a light -> linear outgoing radiance.

Every representation's renderer fills a :class:`GBuffer` (at pixel centers, only where the geometry covers the
pixel) and calls :func:`shade`; the integrator is chosen by
:class:`~recon.renderers.interface.ShadingSettings`. Colors are linear here; the sRGB encode happens once, in
the renderer's output.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GBuffer", "shade", "to_light_frame"]


@dataclass
class GBuffer:
    """Surface samples of ``P`` covered pixels, world space.

    position ``[P, 3]``; normal ``[P, 3]`` unit shading normal; geo_normal ``[P, 3]`` unit geometric normal
    (offsets shadow-ray origins off the surface); view ``[P, 3]`` unit direction from the surface to the camera;
    base_color ``[P, 3]`` linear; roughness ``[P, 1]`` (glTF perceptual roughness, alpha = roughness^2);
    metallic ``[P, 1]``; transfer ``[P, 17]`` or None: the self-shadowed diffuse transfer of
    :mod:`recon.shading.prt` (split-sum then shades with shadowed irradiance and occluded specular; the Monte
    Carlo integrator traces its own shadow rays and ignores it); indirect ``[P, 3]`` or None: irradiance of one
    bounce of diffuse interreflection (:func:`recon.shading.prt.bounce_irradiance`) added to the transfer's in
    split-sum (needs ``transfer``; the Monte Carlo integrator has its own, ``ShadingSettings.indirect``).
    """

    position: Tensor
    normal: Tensor
    geo_normal: Tensor
    view: Tensor
    base_color: Tensor
    roughness: Tensor
    metallic: Tensor
    transfer: Tensor | None = None
    indirect: Tensor | None = None

    def __len__(self) -> int:
        return self.position.shape[0]


def to_light_frame(light, dirs: Tensor) -> Tensor:
    """World directions ``[..., 3]`` expressed in the frame of ``light``'s stored (unrotated) map: the inverse of
    its rotation about +Z (a light rotated by +deg shows at ``R_z(deg) d`` what the stored map holds at ``d``)."""
    from recon.shading.envmap import rotate_z

    return rotate_z(dirs, -float(getattr(light, "rotation_deg", 0.0)))


def _cached_splitsum(light, build):
    """The split-sum light of ``light``: built anew while gradients flow to the light (training), otherwise
    cached on the light and rebuilt only when its map changes (rendering many frames under one light)."""
    param = light.log_radiance
    if torch.is_grad_enabled() and param.requires_grad:
        return build(light.radiance())
    key = (param.data_ptr(), param._version, tuple(param.shape), param.device)
    cached = getattr(light, "_splitsum_cache", None)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, build(light.radiance()))
        light._splitsum_cache = cached
    return cached[1]


def shade(gb: GBuffer, light, settings, caster=None, splitsum_light=None) -> Tensor:
    """Outgoing linear radiance ``[P, 3]`` towards the camera for every G-buffer sample.

    Args:
        gb: the covered pixels' surface samples.
        light: an :class:`~recon.shading.envmap.EnvLight`.
        settings: :class:`~recon.renderers.interface.ShadingSettings`.
        caster: ``any_hit(origins, dirs, tmin, tmax)`` provider (a :class:`~recon.renderers.mesh.RayCaster`) for
            shadow rays; required by the Monte Carlo integrator when ``settings.shadows``.
        splitsum_light: a prebuilt :class:`~recon.shading.splitsum.SplitSumLight` of ``light`` (built here when
            None; a trainer that shades several batches per step may reuse one).
    """
    if len(gb) == 0:
        return gb.base_color.new_zeros(0, 3)
    if settings.integrator == "splitsum":
        from recon.shading.splitsum import SplitSumLight, shade_splitsum

        sl = splitsum_light if splitsum_light is not None else _cached_splitsum(light, SplitSumLight)
        n, v = to_light_frame(light, gb.normal), to_light_frame(light, gb.view)
        if gb.transfer is None:
            if gb.indirect is not None:
                raise ValueError("GBuffer.indirect (interreflected irradiance) needs GBuffer.transfer in split-sum")
            return shade_splitsum(n, v, gb.base_color, gb.roughness, gb.metallic, sl)
        from recon.shading.prt import SH_COEFFS, light_sh

        irradiance = gb.transfer[:, :SH_COEFFS] @ light_sh(light)
        if gb.indirect is not None:
            irradiance = irradiance + gb.indirect
        irradiance = irradiance * (1.0 / math.pi)
        return shade_splitsum(n, v, gb.base_color, gb.roughness, gb.metallic, sl, diffuse=irradiance.clamp_min(0),
                              specular_occlusion=gb.transfer[:, SH_COEFFS:])
    if settings.integrator == "mc":
        from recon.shading.mc import shade_mc

        return shade_mc(gb, light, settings, caster)
    raise ValueError(f"ShadingSettings.integrator must be 'splitsum' or 'mc', got {settings.integrator!r}")
