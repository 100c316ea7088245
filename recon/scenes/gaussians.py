"""3D Gaussian scene: a parameter container (no rendering code)."""

from __future__ import annotations

import json
import math

import numpy as np
import torch
from torch import nn

from recon.sh import num_sh_bases, rgb_to_sh_dc

KIND = "gaussians"
VERSION = 1


class GaussianScene(nn.Module):
    """N anisotropic 3D Gaussians with view-dependent color.

    Parameters (activations in brackets): ``means [N, 3]``, ``quats [N, 4]`` (w, x, y, z) [normalize],
    ``log_scales [N, 3]`` [exp], ``opacity_logits [N]`` [sigmoid], ``sh_dc [N, 1, 3]``,
    ``sh_rest [N, K-1, 3]`` with ``K = (max_sh_degree + 1)^2``. ``active_sh_degree`` grows during training.
    """

    PARAM_NAMES = ("means", "quats", "log_scales", "opacity_logits", "sh_dc", "sh_rest")

    def __init__(self, means, quats, log_scales, opacity_logits, sh_dc, sh_rest, max_sh_degree: int):
        super().__init__()
        n = means.shape[0]
        k = num_sh_bases(max_sh_degree)
        expected = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,),
                    "sh_dc": (n, 1, 3), "sh_rest": (n, k - 1, 3)}
        given = dict(zip(self.PARAM_NAMES, (means, quats, log_scales, opacity_logits, sh_dc, sh_rest)))
        for name, shape in expected.items():
            if tuple(given[name].shape) != shape:
                raise ValueError(f"{name} must have shape {list(shape)}, got {tuple(given[name].shape)}")
            if not torch.isfinite(given[name]).all():
                raise ValueError(f"{name} contains NaN or Inf")
            setattr(self, name, nn.Parameter(given[name].detach().to(torch.float32).contiguous()))
        self.max_sh_degree = max_sh_degree
        self.active_sh_degree = max_sh_degree

    def __len__(self) -> int:
        return self.means.shape[0]

    # --- activated views -------------------------------------------------------------------------------
    @property
    def scales(self) -> torch.Tensor:
        return torch.exp(self.log_scales)

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def sh_coeffs(self) -> torch.Tensor:
        """``[N, K, 3]``."""
        return torch.cat([self.sh_dc, self.sh_rest], dim=1)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Axis-aligned bounds of the means, ``(min [3], max [3])``."""
        if len(self) == 0:
            z = torch.zeros(3, device=self.means.device)
            return z, z
        return self.means.detach().amin(0), self.means.detach().amax(0)

    def param_groups(self) -> dict[str, nn.Parameter]:
        """The optimizer's flat map of named parameters."""
        return {name: getattr(self, name) for name in self.PARAM_NAMES}

    def replace_params(self, tensors: dict[str, torch.Tensor]) -> None:
        """Swap every parameter for a new tensor (used by densification; shapes may change in N)."""
        for name in self.PARAM_NAMES:
            setattr(self, name, nn.Parameter(tensors[name].detach().contiguous()))

    # --- construction ----------------------------------------------------------------------------------
    @classmethod
    def from_points(cls, points: torch.Tensor, colors: torch.Tensor | None, *, max_sh_degree: int = 3,
                    init_opacity: float = 0.1, scale_factor: float = 1.0) -> "GaussianScene":
        """Isotropic Gaussians at ``points [N, 3]`` with ``colors [N, 3]`` in [0, 1] (gray when None).

        Initial scale: the root mean square distance to the 3 nearest neighbours (as 3DGS), times
        ``scale_factor``.
        """
        if points.ndim != 2 or points.shape[1] != 3 or points.shape[0] == 0:
            raise ValueError(f"points must have shape [N>0, 3], got {tuple(points.shape)}")
        points = points.to(torch.float32)
        n = points.shape[0]
        if colors is None:
            colors = torch.full((n, 3), 0.5)
        dist = _rms_knn_distance(points, k=3).clamp_min(math.sqrt(1e-7)) * scale_factor
        k = num_sh_bases(max_sh_degree)
        quats = torch.zeros(n, 4)
        quats[:, 0] = 1.0
        return cls(points, quats, torch.log(dist)[:, None].repeat(1, 3),
                   torch.full((n,), math.log(init_opacity / (1 - init_opacity))),
                   rgb_to_sh_dc(colors.to(torch.float32).clamp(0, 1))[:, None, :], torch.zeros(n, k - 1, 3),
                   max_sh_degree)

    # --- persistence (state dict + JSON header; loaded with weights_only=True) ---------------------------
    def header(self) -> str:
        return json.dumps({"kind": KIND, "version": VERSION, "max_sh_degree": self.max_sh_degree,
                           "active_sh_degree": self.active_sh_degree, "num_gaussians": len(self)})

    def to_state(self) -> dict:
        return {"header": self.header(), "params": {k: v.detach().cpu() for k, v in self.param_groups().items()}}

    STATE_KIND = KIND

    @classmethod
    def _read_state(cls, state: dict, source: str) -> tuple[dict, dict]:
        """``(header, params)`` of a state of this class's kind with every parameter present; ``ValueError``
        naming ``source`` otherwise."""
        try:
            header = json.loads(state["header"])
            params = state["params"]
        except (KeyError, TypeError, json.JSONDecodeError) as err:
            raise ValueError(f"{source}: not a recon {cls.STATE_KIND} scene state ({err})") from err
        if header.get("kind") != cls.STATE_KIND:
            raise ValueError(f"{source}: scene kind is {header.get('kind')!r}, expected {cls.STATE_KIND!r}")
        missing = [n for n in cls.PARAM_NAMES if n not in params]
        if missing:
            raise ValueError(f"{source}: missing parameters {missing}")
        return header, params

    @classmethod
    def from_state(cls, state: dict, source: str = "<state>") -> "GaussianScene":
        header, params = cls._read_state(state, source)
        scene = cls(*(params[n] for n in cls.PARAM_NAMES), max_sh_degree=int(header["max_sh_degree"]))
        scene.active_sh_degree = int(header.get("active_sh_degree", scene.max_sh_degree))
        return scene


def _rms_knn_distance(points: torch.Tensor, k: int) -> torch.Tensor:
    """Root mean square distance to the ``k`` nearest other points, ``[N]`` (KD-tree when scipy is present)."""
    n = points.shape[0]
    if n <= 1:
        return torch.full((n,), 0.01)
    k = min(k, n - 1)
    try:
        from scipy.spatial import cKDTree
    except ImportError:
        cKDTree = None
    if cKDTree is not None:
        pts = points.double().numpy()
        dist, _ = cKDTree(pts).query(pts, k=k + 1)
        return torch.from_numpy(np.sqrt((dist[:, 1:] ** 2).mean(1))).float()
    out = torch.empty(n)
    for start in range(0, n, 1024):
        d = torch.cdist(points[start : start + 1024], points)
        out[start : start + 1024] = d.topk(k + 1, largest=False).values[:, 1:].pow(2).mean(1).sqrt()
    return out
