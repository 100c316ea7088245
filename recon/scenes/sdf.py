"""A neural signed distance field (``recon train sdf``), NeuS-style: the SDF is decoded from multi-resolution
tri-plane features by a small MLP, and the color by a second MLP conditioned on the surface normal and the view
direction (:mod:`recon.renderers.volume.sdf` renders it with the NeuS alpha).

Encoding (measured choice, docs/fields.md): at each level the three axis-aligned planes (xy, xz, yz) are sampled
bilinearly at the point's projections and their features are *concatenated* (an SDF needs smooth, independent
axes more than the Hadamard product's axis-aligned structure); the levels are concatenated too. The encoding
(:mod:`recon.renderers.volume.encoding`: a C++ kernel, or torch's ``grid_sample`` as its twin) provides the
second derivatives the eikonal loss needs (the gradient of the SDF is itself trained).

Initialization: the SDF is a sphere plus a learned residual, ``sdf(x) = h (|p| - r + g(p, features))`` with
``p = (x - c) / h`` (``c``, ``h``: the box's center and half extent, ``r``: ``init_radius``) and the residual
MLP ``g``'s SDF output starting at exactly 0, so training starts from an exact SDF (SAL / IGR's geometric
initialization reaches a sphere only approximately at these widths: median error 0.18 at width 64). Softplus
(beta 100) activations. The SDF is in world units, so the eikonal constraint is ``|grad sdf| = 1`` in the world.
``variance`` is NeuS's learned ``ln(inv_s) / 10``.
"""

from __future__ import annotations

import json

import torch
from torch import Tensor, nn

from recon.renderers.volume.encoding import triplane_sample, triplane_sample_vjp_u
from recon.scenes.triplane import sh_deg2

__all__ = ["NeuralSDF", "KIND"]

KIND = "sdf"
VERSION = 1
GEO_FEATURES = 15


class NeuralSDF(nn.Module):
    """Neural SDF over the box ``[lo, hi]`` (module docstring).

    Args:
        lo, hi: ``[3]`` corners of the box (the renderer samples rays inside it; the SDF is defined everywhere).
        resolutions: plane edge per level. channels: features per plane and level. hidden: MLP width.
        samples: intervals per ray across the box (stored with the field). init_radius: the initial sphere's
            radius as a fraction of the box's half extent. grid_samples: candidate intervals per ray once an
            occupancy grid is set (``occupancy``, a ``bool [G, G, G]`` buffer over the box; empty: no grid, the
            renderer samples ``samples`` intervals; see ``recon.renderers.volume.occupancy``).
    """

    def __init__(self, lo: Tensor, hi: Tensor, resolutions: tuple[int, ...] = (32, 64, 128), channels: int = 8,
                 hidden: int = 64, seed: int = 0, samples: int = 64, init_radius: float = 0.5,
                 grid_samples: int = 256) -> None:
        super().__init__()
        from recon.scenes.fields import init_field

        init_field(self, lo, hi, resolutions, channels, hidden, samples)
        if not 0 < init_radius < 1:
            raise ValueError(f"init_radius must be in (0, 1), got {init_radius}")
        self.init_radius, self.grid_samples = float(init_radius), int(grid_samples)
        self.encoding_backend = "auto"  # triplane_sample's backend: "auto", "cpu" or "torch" (tests compare them)
        self.register_buffer("occupancy", torch.zeros(0, 0, 0, dtype=torch.bool))
        self.register_module("background", None)  # a recon.scenes.background.Background (set_background)
        g = torch.Generator().manual_seed(seed)
        self.planes = nn.ParameterList(
            [nn.Parameter(torch.randn(3, channels, r, r, generator=g) * 0.1) for r in self.resolutions])
        self.variance = nn.Parameter(torch.tensor(0.3))
        feat = 3 * channels * len(self.resolutions)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.sdf_net = nn.Sequential(nn.Linear(3 + feat, hidden), nn.Softplus(beta=100),
                                         nn.Linear(hidden, hidden), nn.Softplus(beta=100),
                                         nn.Linear(hidden, 1 + GEO_FEATURES))
            self.color_net = nn.Sequential(nn.Linear(3 + 9 + GEO_FEATURES, hidden), nn.ReLU(),
                                           nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 3))
            self._geometric_init()

    @torch.no_grad()
    def _geometric_init(self) -> None:
        last = self.sdf_net[-1]
        last.weight[:1] = 0.0
        last.bias[:1] = 0.0

    # --- evaluation ------------------------------------------------------------------------------------------
    @property
    def half_extent(self) -> Tensor:
        return (self.hi - self.lo).max() / 2

    def features(self, x: Tensor) -> Tensor:
        """``[N, 3 C L]`` plane features at world points ``x [N, 3]`` (clamped to the box's border)."""
        return triplane_sample(self.planes, self.normalize(x), backend=self.encoding_backend)

    def normalize(self, x: Tensor) -> Tensor:
        """World points ``[N, 3]`` to the encoding's ``[-1, 1]^3`` over the box."""
        return 2 * (x - self.lo) / (self.hi - self.lo) - 1

    def sdf_features(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """SDF ``[N]`` (world units) and geometry features ``[N, 15]`` at world points ``x [N, 3]``."""
        return self._decode(x, self.features(x))

    def _decode(self, x: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        h = self.half_extent
        p = (x - (self.lo + self.hi) / 2) / h
        out = self.sdf_net(torch.cat([p, features], -1))
        return (p.norm(dim=-1) - self.init_radius + out[:, 0]) * h, out[:, 1:]

    def sdf(self, x: Tensor) -> Tensor:
        """SDF ``[N]`` at world points ``x [N, 3]``."""
        return self.sdf_features(x)[0]

    def sdf_gradient(self, x: Tensor, create_graph: bool = False) -> tuple[Tensor, Tensor, Tensor]:
        """SDF ``[N]``, its gradient ``[N, 3]`` (``create_graph`` to train through it) and the geometry features
        ``[N, 15]``, at world points ``x [N, 3]``. Works under ``torch.no_grad`` too.

        The gradient is the decoder's with respect to its point input plus the encoding's share,
        ``triplane_sample_vjp_u`` of the decoder's gradient with respect to the features: one pass through the
        encoding (autograd through the encoding's own backward would also scatter a gradient into the planes
        that nothing uses). A point ``x`` that requires grad keeps its graph through plain autograd."""
        with torch.enable_grad():
            if x.requires_grad:  # the caller differentiates with respect to x: plain autograd, x's graph kept
                sdf, geo = self.sdf_features(x)
                (grad,) = torch.autograd.grad(sdf, x, torch.ones_like(sdf), create_graph=create_graph)
                return sdf, grad, geo
            xp = x.detach().requires_grad_(True)  # the decoder's point input; the encoding reads x itself
            u = self.normalize(x.detach())
            feats = triplane_sample(self.planes, u, backend=self.encoding_backend)
            sdf, geo = self._decode(xp, feats)
            g_x, g_f = torch.autograd.grad(sdf, (xp, feats), torch.ones_like(sdf), create_graph=create_graph)
            with torch.set_grad_enabled(create_graph):  # no graph (nor the twin's double backward) unless asked
                g_u = triplane_sample_vjp_u(self.planes, u, g_f, backend=self.encoding_backend)
                grad = g_x + g_u * (2 / (self.hi - self.lo))
            if not create_graph:
                grad = grad.detach()
        return sdf, grad, geo

    def radiance(self, geo: Tensor, normal: Tensor, d: Tensor) -> Tensor:
        """RGB ``[N, 3]`` in [0, 1] from geometry features, unit normals and unit view directions (``[N, *]``)."""
        return torch.sigmoid(self.color_net(torch.cat([normal, sh_deg2(d), geo], -1)))

    def color(self, x: Tensor, d: Tensor) -> Tensor:
        """RGB ``[N, 3]`` at world points ``x [N, 3]`` seen along unit ``d [N, 3]`` (the exporter's query)."""
        _, grad, geo = self.sdf_gradient(x)
        return self.radiance(geo.detach(), torch.nn.functional.normalize(grad, dim=-1), d)

    def inv_s(self) -> Tensor:
        """NeuS's inverse standard deviation ``exp(10 variance)`` (sharpness of the surface's density)."""
        return torch.exp(10 * self.variance).clamp(1e-6, 1e6)

    def set_background(self, background) -> None:
        """Attach a :class:`~recon.scenes.background.Background` (what lies outside the box; the renderers
        composite its samples with the box's in depth order), or None."""
        self.background = background

    # --- optimization ------------------------------------------------------------------------------------------
    def param_groups(self) -> dict[str, list[Tensor]]:
        groups = {"planes": list(self.planes),
                  "mlp": list(self.sdf_net.parameters()) + list(self.color_net.parameters()) + [self.variance]}
        if self.background is not None:
            for name, params in self.background.param_groups().items():
                groups[name] = groups[name] + params
        return groups

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- checkpoints -----------------------------------------------------------------------------------------
    def header(self) -> str:
        return json.dumps({"kind": KIND, "version": VERSION, "resolutions": list(self.resolutions),
                           "channels": self.channels, "hidden": self.hidden, "samples": self.samples,
                           "init_radius": self.init_radius, "grid_samples": self.grid_samples,
                           "background": None if self.background is None else self.background.config()})

    def to_state(self) -> dict:
        """``{"header": json str, "tensors": {name: cpu tensor}}`` (tensors only: loads with weights_only)."""
        return {"header": self.header(), "tensors": {k: v.detach().cpu().clone() for k, v in self.state_dict().items()}}

    @classmethod
    def from_state(cls, state: dict, source: str = "<state>") -> NeuralSDF:
        """Inverse of :meth:`to_state`. Raises ``ValueError`` naming ``source`` for anything else."""
        from recon.scenes.fields import read_state, restore

        header, tensors = read_state(state, source, KIND, "neural SDF")
        def build() -> NeuralSDF:
            field = cls(tensors["lo"], tensors["hi"], tuple(header["resolutions"]), header["channels"],
                        header["hidden"], samples=header["samples"], init_radius=header["init_radius"],
                        grid_samples=header.get("grid_samples", 256))
            field.occupancy = torch.zeros_like(tensors["occupancy"], dtype=torch.bool)  # its grid's size
            if header.get("background") is not None:
                from recon.scenes.background import Background

                field.set_background(Background.from_config(header["background"], source))
            return field

        return restore(build, tensors, source, "neural SDF")
