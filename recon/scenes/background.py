"""A background radiance field for scenes that extend beyond a field's box (photos of a scene such as fox):
what NeRF++ and NeuS put outside their foreground sphere, here as a tri-plane field over mip-NeRF 360's
contracted space.

A world point ``x`` maps to ``p = (x - center) / radius`` and is contracted as

    contract(p) = p                          if |p| <= 1
                  (2 - 1 / |p|) p / |p|      otherwise

so the whole of space fits in the ball of radius 2; a :class:`~recon.scenes.triplane.TriPlaneField` over the cube
``[-2, 2]^3`` gives density and view-dependent color there. ``center`` and ``radius`` are the foreground box's
center and half diagonal (the box's bounding sphere is where the contraction starts). Densities are per unit of
*contracted* length (:mod:`recon.renderers.volume.background` measures intervals there), so the far field's
unbounded intervals stay finite, as in mip-NeRF 360 / nerfacto.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor, nn

from recon.scenes.triplane import TriPlaneField

__all__ = ["Background", "contract"]

KIND = "background"
VERSION = 1


def contract(p: Tensor) -> Tensor:
    """mip-NeRF 360's contraction of points ``p [N, 3]`` (identity in the unit ball, into the ball of radius 2)."""
    r = p.norm(dim=-1, keepdim=True)
    return torch.where(r <= 1, p, (2 - 1 / r.clamp_min(1)) * p / r.clamp_min(1e-12))


class Background(nn.Module):
    """Background field around the sphere ``(center, radius)`` (module docstring).

    Args:
        center: ``[3]`` world center. radius: world radius where the contraction starts (> 0).
        resolutions, channels, hidden: the tri-plane field's. samples: intervals per ray (stored, so evaluation
        renders as training did). far: rays are sampled out to ``far * radius`` from their origin (uniform in
        inverse distance beyond ``radius``; NeuS goes to 1000 times its sphere).
    """

    def __init__(self, center: Tensor, radius: float, resolutions: tuple[int, ...] = (64, 128, 256), channels: int = 8,
                 hidden: int = 64, samples: int = 32, far: float = 1000.0, seed: int = 0) -> None:
        super().__init__()
        center = torch.as_tensor(center, dtype=torch.float32)
        if center.shape != (3,) or not bool(torch.isfinite(center).all()):
            raise ValueError(f"the background's center must be 3 finite numbers, got {center.tolist()}")
        if not radius > 0 or samples < 1 or not far > 1:
            raise ValueError(f"the background needs radius > 0, samples >= 1 and far > 1, got {radius}, {samples}, "
                             f"{far}")
        self.register_buffer("center", center.clone())
        self.radius, self.samples, self.far = float(radius), int(samples), float(far)
        self.field = TriPlaneField(torch.full((3,), -2.0), torch.full((3,), 2.0), resolutions, channels, hidden,
                                   seed=seed + 1, samples=samples)

    def contract(self, x: Tensor) -> Tensor:
        """Contracted coordinates ``[N, 3]`` (in the ball of radius 2) of world points ``x [N, 3]``."""
        return contract((x - self.center) / self.radius)

    def forward(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """Density per contracted length ``[N]`` and RGB ``[N, 3]`` at world points ``x`` seen along unit ``d``."""
        return self.field(self.contract(x), d)

    def param_groups(self) -> dict[str, list[Tensor]]:
        return self.field.param_groups()

    def config(self) -> dict:
        return {"kind": KIND, "version": VERSION, "radius": self.radius, "resolutions": list(self.field.resolutions),
                "channels": self.field.channels, "hidden": self.field.hidden, "samples": self.samples,
                "far": self.far}

    @classmethod
    def from_config(cls, config: dict, source: str = "<state>") -> Background:
        """An untrained background of a :meth:`config` (its tensors are loaded by the owner's state)."""
        try:
            if config.get("kind") != KIND:
                raise ValueError(f"kind {config.get('kind')!r}")
            if int(config.get("version", 0)) > VERSION:
                raise ValueError(f"version {config.get('version')} is newer than this recon's {VERSION}")
            return cls(torch.zeros(3), config["radius"], tuple(config["resolutions"]), config["channels"],
                       config["hidden"], samples=config["samples"], far=config["far"])
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: invalid background header {json.dumps(config)[:200]} ({err})") from err
