"""Relightable 3D Gaussians: a :class:`~recon.scenes.gaussians.GaussianScene` with a per-Gaussian glTF
metallic-roughness material.

Parameters beyond the radiance Gaussians' (which stay, so the scene still renders as ordinary 3DGS under its
training light): ``base_color [N, 3]`` linear in [0, 1] and ``roughness_metallic [N, 2]`` in [0, 1] (glTF
perceptual roughness, metallic), both stored as values and kept in range by the trainer's projected steps.
The normal is not a parameter: it is each Gaussian's shortest axis, oriented toward the viewer
(:func:`gaussian_normals`), as GS-IR and 3DGS-DR do.
"""

from __future__ import annotations

import json

import torch
from torch import nn

from recon.cameras import quat_wxyz_to_rotmat
from recon.scenes.gaussians import GaussianScene

__all__ = ["PBRGaussianScene", "gaussian_normals"]

KIND = "gaussians-pbr"
VERSION = 1


def gaussian_normals(means: torch.Tensor, quats: torch.Tensor, log_scales: torch.Tensor,
                     toward: torch.Tensor | None = None) -> torch.Tensor:
    """Unit normals ``[N, 3]``: the axis of each Gaussian's smallest scale, flipped to face ``toward`` (a point
    ``[3]``, e.g. the camera center, or per-Gaussian points ``[N, 3]``; None leaves the sign of the axis).
    Differentiable w.r.t. the quaternions (the choice of axis is not)."""
    R = quat_wxyz_to_rotmat(quats)  # columns are the axes
    axis = log_scales.detach().argmin(dim=-1)
    n = torch.gather(R, 2, axis[:, None, None].expand(-1, 3, 1))[..., 0]
    if toward is not None:
        sign = torch.where(((toward - means.detach()) * n.detach()).sum(-1, keepdim=True) < 0, -1.0, 1.0)
        n = n * sign
    return n


class PBRGaussianScene(GaussianScene):
    """Gaussians with a base color and roughness-metallic per Gaussian (module docstring)."""

    PARAM_NAMES = GaussianScene.PARAM_NAMES + ("base_color", "roughness_metallic")

    def __init__(self, means, quats, log_scales, opacity_logits, sh_dc, sh_rest, max_sh_degree: int,
                 base_color: torch.Tensor | None = None, roughness_metallic: torch.Tensor | None = None):
        super().__init__(means, quats, log_scales, opacity_logits, sh_dc, sh_rest, max_sh_degree)
        n = len(self)
        base_color = torch.full((n, 3), 0.5) if base_color is None else base_color
        roughness_metallic = (torch.tensor([0.5, 0.0]).expand(n, 2) if roughness_metallic is None
                              else roughness_metallic)
        for name, value, width in (("base_color", base_color, 3), ("roughness_metallic", roughness_metallic, 2)):
            if tuple(value.shape) != (n, width):
                raise ValueError(f"{name} must have shape [{n}, {width}], got {tuple(value.shape)}")
            if not torch.isfinite(value).all():
                raise ValueError(f"{name} contains NaN or Inf")
            setattr(self, name, nn.Parameter(value.detach().to(torch.float32).contiguous().clone()))

    @classmethod
    def from_radiance(cls, scene: GaussianScene, base_color: torch.Tensor | None = None,
                      roughness: float = 0.5, metallic: float = 0.0) -> PBRGaussianScene:
        """A relightable copy of ``scene`` (same Gaussians) with the given material."""
        n = len(scene)
        dev = scene.means.device
        rm = torch.tensor([roughness, metallic], device=dev).expand(n, 2)
        out = cls(*(getattr(scene, p).detach() for p in GaussianScene.PARAM_NAMES),
                  max_sh_degree=scene.max_sh_degree, base_color=base_color, roughness_metallic=rm)
        out.active_sh_degree = scene.active_sh_degree
        return out.to(dev)

    def scaled_base_color(self, scale: torch.Tensor) -> PBRGaussianScene:
        """A detached copy whose base colors are multiplied per channel by ``scale [3]`` (albedo alignment)."""
        out = PBRGaussianScene.from_state(self.to_state()).to(self.means.device)
        with torch.no_grad():
            out.base_color.mul_(scale.to(out.base_color))
        out.shadow_samples = self.shadow_samples
        cached = getattr(self, "_transfer_cache", None)  # same geometry: a valid baked visibility carries over
        if cached is not None:
            from recon.renderers.gaussians.pbr import _key

            samples, seed, offset = cached[0][1], cached[0][2], cached[0][-1]
            if cached[0] == (*_key(self, samples, seed), offset):
                out._transfer_cache = ((*_key(out, samples, seed), offset), cached[1])
        return out

    def normals(self, toward: torch.Tensor | None = None) -> torch.Tensor:
        """:func:`gaussian_normals` of this scene."""
        return gaussian_normals(self.means, self.quats, self.log_scales, toward)

    shadow_samples: int = 32
    """Rays per Gaussian of the baked self-shadowing that shading uses (0: unshadowed split-sum); a trainer sets
    what it trained with, and the scene's state keeps it."""

    def header(self) -> str:
        h = json.loads(super().header())
        h.update(kind=KIND, version=VERSION, shadow_samples=int(self.shadow_samples))
        return json.dumps(h)

    STATE_KIND = KIND

    @classmethod
    def from_state(cls, state: dict, source: str = "<state>") -> PBRGaussianScene:
        header, params = cls._read_state(state, source)
        scene = cls(*(params[n] for n in GaussianScene.PARAM_NAMES), max_sh_degree=int(header["max_sh_degree"]),
                    base_color=params["base_color"], roughness_metallic=params["roughness_metallic"])
        scene.active_sh_degree = int(header.get("active_sh_degree", scene.max_sh_degree))
        scene.shadow_samples = int(header.get("shadow_samples", PBRGaussianScene.shadow_samples))
        return scene
