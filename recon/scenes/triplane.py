"""A tri-plane radiance field (``recon train triplane``): three axis-aligned feature planes at several
resolutions and two small MLPs, volume-rendered (``recon.renderers.volume.field``).

A point ``x`` of the box ``[lo, hi]`` maps to ``u = 2 (x - lo) / (hi - lo) - 1`` in ``[-1, 1]^3``. At each level
the planes (xy, xz, yz) are sampled bilinearly at the point's projections and multiplied channel by channel
(K-Planes' Hadamard product: an axis-aligned structure needs all three planes to agree); the levels' features
are concatenated. The density MLP maps them to a density (``exp`` of its first output, the gradient clamped as
instant-ngp's truncated exponential) and 15 geometry features; the color MLP maps those and the view direction
(real spherical harmonics of degree 2) to RGB (sigmoid). Planes start uniform in [0.1, 0.5] (K-Planes).
"""

from __future__ import annotations

import json

import torch
from torch import Tensor, nn

from recon.renderers.volume.encoding import triplane_sample

__all__ = ["TriPlaneField", "KIND"]

KIND = "triplane"
VERSION = 1


class _TruncExp(torch.autograd.Function):
    """exp with its gradient clamped at exp(15) (instant-ngp): large densities do not blow up the step."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return torch.exp(x.clamp_max(30.0))  # e^30: opaque over any interval; never Inf

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * torch.exp(x.clamp(-15, 15))


def sh_deg2(d: Tensor) -> Tensor:
    """``[N, 9]`` real spherical harmonics of degree <= 2 of unit directions ``d [N, 3]``."""
    x, y, z = d.unbind(-1)
    return torch.stack([torch.full_like(x, 0.28209479), 0.48860251 * y, 0.48860251 * z, 0.48860251 * x,
                        1.09254843 * x * y, 1.09254843 * y * z, 0.31539157 * (3 * z * z - 1),
                        1.09254843 * x * z, 0.54627421 * (x * x - y * y)], -1)


class TriPlaneField(nn.Module):
    """Tri-plane radiance field over the box ``[lo, hi]`` (module docstring).

    Args:
        lo, hi: ``[3]`` corners of the box the field covers (nothing outside it: density 0).
        resolutions: plane edge per level. channels: features per plane and level.
        hidden: width of both MLPs. samples: intervals per ray the renderer cuts the box's chord into (stored with
            the field, so evaluation renders as training did).
    """

    def __init__(self, lo: Tensor, hi: Tensor, resolutions: tuple[int, ...] = (64, 128, 256), channels: int = 16,
                 hidden: int = 64, seed: int = 0, samples: int = 64) -> None:
        super().__init__()
        from recon.scenes.fields import init_field

        init_field(self, lo, hi, resolutions, channels, hidden, samples)
        self.encoding_backend = "auto"  # triplane_sample's backend: "auto", "cpu" or "torch" (tests compare them)
        g = torch.Generator().manual_seed(seed)
        self.planes = nn.ParameterList(
            [nn.Parameter(torch.rand(3, channels, r, r, generator=g) * 0.4 + 0.1) for r in self.resolutions])
        feat = channels * len(self.resolutions)
        with torch.random.fork_rng(devices=[]):  # the MLPs' default initialization, reproducibly, global RNG kept
            torch.manual_seed(seed)
            self.density_net = nn.Sequential(nn.Linear(feat, hidden), nn.ReLU(), nn.Linear(hidden, 16))
            self.color_net = nn.Sequential(nn.Linear(15 + 9, hidden), nn.ReLU(), nn.Linear(hidden, hidden),
                                           nn.ReLU(), nn.Linear(hidden, 3))

    # --- evaluation ------------------------------------------------------------------------------------------
    def normalize(self, x: Tensor) -> Tensor:
        return 2 * (x - self.lo) / (self.hi - self.lo) - 1

    def features(self, u: Tensor) -> Tensor:
        """``[N, C L]`` plane features at normalized points ``u [N, 3]`` in [-1, 1]^3: per level the product of
        the three planes' bilinear samples (:func:`~recon.renderers.volume.encoding.triplane_sample`)."""
        feats = triplane_sample(self.planes, u, backend=self.encoding_backend)  # [N, sum_l 3 C_l]
        out, col = [], 0
        for planes in self.planes:
            C = planes.shape[1]
            f = feats[:, col:col + 3 * C].view(-1, 3, C)
            out.append(f[:, 0] * f[:, 1] * f[:, 2])
            col += 3 * C
        return torch.cat(out, -1)

    def density(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Density ``[N]`` (0 outside the box) and geometry features ``[N, 15]`` at world points ``x [N, 3]``."""
        u = self.normalize(x)
        h = self.density_net(self.features(u))
        sigma = _TruncExp.apply(h[:, 0] - 1.0)
        inside = (u.abs() <= 1).all(-1)
        return torch.where(inside, sigma, torch.zeros_like(sigma)), h[:, 1:]

    def forward(self, x: Tensor, d: Tensor) -> tuple[Tensor, Tensor]:
        """Density ``[N]`` and RGB ``[N, 3]`` in [0, 1] at points ``x [N, 3]`` seen along unit ``d [N, 3]``."""
        sigma, geo = self.density(x)
        rgb = torch.sigmoid(self.color_net(torch.cat([geo, sh_deg2(d)], -1)))
        return sigma, rgb

    # --- optimization ------------------------------------------------------------------------------------------
    def param_groups(self) -> dict[str, list[Tensor]]:
        return {"planes": list(self.planes), "mlp": list(self.density_net.parameters()) +
                list(self.color_net.parameters())}

    def plane_tv(self) -> Tensor:
        """Mean squared difference of neighbouring texels over every plane (K-Planes' spatial smoothness)."""
        total = 0.0
        for p in self.planes:
            total = total + (p[..., 1:, :] - p[..., :-1, :]).square().mean() + (p[..., 1:] - p[..., :-1]).square().mean()
        return total / len(self.planes)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- checkpoints -----------------------------------------------------------------------------------------
    def header(self) -> str:
        return json.dumps({"kind": KIND, "version": VERSION, "resolutions": list(self.resolutions),
                           "channels": self.channels, "hidden": self.hidden, "samples": self.samples})

    def to_state(self) -> dict:
        """``{"header": json str, "tensors": {name: cpu tensor}}`` (tensors only: loads with weights_only)."""
        return {"header": self.header(), "tensors": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict, source: str = "<state>") -> TriPlaneField:
        """Inverse of :meth:`to_state`. Raises ``ValueError`` naming ``source`` for anything else."""
        from recon.scenes.fields import read_state, restore

        header, tensors = read_state(state, source, KIND, "tri-plane field")
        return restore(lambda: cls(tensors["lo"], tensors["hi"], tuple(header["resolutions"]), header["channels"],
                                   header["hidden"], samples=header.get("samples", 64)),
                       tensors, source, "tri-plane field")
