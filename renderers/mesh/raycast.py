"""Ray casting against a triangle mesh: :class:`RayCaster` (closest hit and any hit) with ``cpu`` / ``torch`` backends.

* ``cpu``: a BVH built once in C++ (``cuda/mesh_bvh``): binned SAH (32 bins, leaves of at most 8 triangles),
  collapsed to four-wide nodes whose child boxes are tested with one SIMD slab test. The tree lives in a C++
  object (pybind11 class ``Bvh``) held by the :class:`RayCaster`; queries pass only the rays. Rays are traced in
  parallel on torch's intra-op threads (closest hit: nearest child first, farther subtrees culled; any hit: stops
  at the first hit).
* ``torch``: the reference twin, brute force over all triangles (Moller-Trumbore in float64, rays in chunks), on
  any device. Slow (``O(N F)``); meant for tests and small meshes.

Conventions (``docs/mesh.md``): ``t`` is in units of the given direction (directions need not be unit length);
barycentrics ``uv`` are such that the hit point is ``u p0 + v p1 + (1 - u - v) p2`` for
``(p0, p1, p2) = vertices[faces[tri_id]]``; both windings are hit. A hit counts when ``tmin <= t <= tmax``.

Numerics. The ``cpu`` backend uses the watertight test of Woop et al. (2013) in float64 on the float32 inputs, so
rays through shared edges and vertices never leak between two triangles; a ray that hits several triangles at the
same distance reports the lowest triangle id. Triangles whose height is below ``1e-7`` of their longest edge are
degenerate (zero area up to float32 rounding): they are never hit, in both backends. A zero direction misses.
Results are not differentiable (``t`` and ``uv`` carry no gradient); use the rasterizer for gradients.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from recon.renderers.mesh._backend import cpu_extension

__all__ = ["BACKENDS", "RayCaster", "RayHits"]

BACKENDS = ("auto", "torch", "cpu")
_FAMILY = "mesh_bvh"
# Same rule as kDegenerateRel in cuda/mesh_bvh/bvh.h: height <= 1e-7 * longest edge means zero area.
_DEGENERATE_REL = 1e-7
# Reference backend: rays x triangles per chunk (float64 temporaries of ~10 x this many elements).
_REF_CHUNK = 1 << 20


@dataclass(frozen=True)
class RayHits:
    """Closest hits of ``N`` rays.

    Attributes:
        t: ``[N]`` float32 distance in units of the ray direction; ``inf`` on a miss.
        tri_id: ``[N]`` int64 index into ``faces``; ``-1`` on a miss.
        uv: ``[N, 2]`` float32 barycentrics, hit point ``u p0 + v p1 + (1 - u - v) p2``; 0 on a miss.
    """

    t: Tensor
    tri_id: Tensor
    uv: Tensor

    @property
    def hit(self) -> Tensor:
        """``[N]`` bool, True where the ray hit a triangle."""
        return self.tri_id >= 0


def _check_tensor(name: str, x, spec: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {spec}, got {type(x).__name__}")
    if x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"{name} must have shape {spec}, got {tuple(x.shape)}")


def _check_finite(name: str, x: Tensor) -> None:
    # A finite sum implies finite entries (NaN / Inf propagate): one reduction instead of an elementwise test,
    # which would cost more than tracing a million rays through a small mesh. The full test runs only when the
    # sum is not finite (a bad entry, or float overflow of the sum).
    if x.numel() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf")


class RayCaster:
    """Closest-hit and any-hit ray queries against one triangle mesh; the acceleration structure is built once.

    Args:
        vertices: ``[V, 3]`` float32 or float64 positions (``cpu`` computes from their float32 values).
        faces: ``[F, 3]`` int32 or int64 vertex indices in ``[0, V)``. An empty mesh (``F = 0``) is allowed:
            every ray misses.
        backend: ``"auto"`` (the C++ BVH for CPU tensors when it builds, else ``"torch"``; one warning when the
            build fails), ``"cpu"`` or ``"torch"``.

    Attributes:
        backend: the backend in use (``"cpu"`` or ``"torch"``).
        build_seconds: wall time of the build (BVH for ``cpu``, per-triangle precomputation for ``torch``).
        num_nodes: four-wide BVH nodes (0 for ``torch`` and for a mesh without non-degenerate triangles).

    Raises:
        TypeError: non-tensor or wrongly typed inputs.
        ValueError: wrong shapes, NaN/Inf vertices, face indices out of range, an unknown or unavailable backend.
    """

    def __init__(self, vertices: Tensor, faces: Tensor, *, backend: str = "auto") -> None:
        _check_tensor("vertices", vertices, "[V, 3]")
        _check_tensor("faces", faces, "[F, 3]")
        if not vertices.is_floating_point():
            raise TypeError(f"vertices must be float32 or float64, got {vertices.dtype}")
        if faces.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"faces must be int32 or int64, got {faces.dtype}")
        if faces.device != vertices.device:
            raise ValueError(f"faces must be on the vertices' device {vertices.device}, got {faces.device}")
        _check_finite("vertices", vertices)
        V = vertices.shape[0]
        if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= V):
            raise ValueError(f"faces must index vertices in [0, {V}), got values in "
                             f"[{int(faces.min())}, {int(faces.max())}]")
        self.backend = self._resolve(backend, vertices.device)
        self.device = vertices.device
        self.num_faces = faces.shape[0]
        self.num_nodes = 0
        t0 = time.perf_counter()
        with torch.no_grad():
            if self.backend == "cpu":
                verts = vertices.detach().to(torch.float32).contiguous()
                self._bvh = cpu_extension(_FAMILY).Bvh(verts, faces.to(torch.int64).contiguous(), 32, 8)
                self.num_nodes = int(self._bvh.num_nodes)
            else:
                self._init_reference(vertices.detach(), faces.to(torch.int64))
        self.build_seconds = time.perf_counter() - t0

    @staticmethod
    def _resolve(backend: str, device: torch.device) -> str:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "torch":
            return backend
        if device.type != "cpu":
            if backend == "cpu":
                raise ValueError(f"backend 'cpu' needs CPU tensors, got vertices on {device}; use 'auto' or 'torch'")
            return "torch"
        if cpu_extension(_FAMILY) is None:  # warns once when the build failed
            if backend == "cpu":
                raise ValueError(f"backend 'cpu' is unavailable: the C++ extension cuda/{_FAMILY} could not be built")
            return "torch"
        return "cpu"

    def _init_reference(self, vertices: Tensor, faces: Tensor) -> None:
        # The reference computes from the float32 values as the C++ backend does, in float64.
        p = vertices.to(torch.float32).to(torch.float64)[faces]  # [F, 3, 3]
        e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0]
        longest2 = torch.stack([e1.square().sum(-1), e2.square().sum(-1),
                                (p[:, 2] - p[:, 1]).square().sum(-1)]).amax(0)
        cross2 = torch.linalg.cross(e1, e2).square().sum(-1)
        keep = cross2 > _DEGENERATE_REL**2 * longest2.square()
        self._ref_ids = torch.nonzero(keep).squeeze(1)
        self._ref_p0, self._ref_e1, self._ref_e2 = p[keep, 0], e1[keep], e2[keep]

    def _rays(self, origins, dirs, tmin, tmax) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        _check_tensor("origins", origins, "[N, 3]")
        _check_tensor("dirs", dirs, "[N, 3]")
        N = origins.shape[0]
        if dirs.shape[0] != N:
            raise ValueError(f"dirs must have shape [N, 3] with N={N} (the origins' N), got {tuple(dirs.shape)}")
        for name, x in (("origins", origins), ("dirs", dirs)):
            if not x.is_floating_point():
                raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
            if x.device != self.device:
                raise ValueError(f"{name} must be on the mesh's device {self.device}, got {x.device}")
            _check_finite(name, x)
        bounds = []
        for name, x in (("tmin", tmin), ("tmax", tmax)):
            if isinstance(x, Tensor):
                if x.shape not in ((N,), ()):
                    raise ValueError(f"{name} must be a float or a tensor of shape [N] with N={N}, got "
                                     f"{tuple(x.shape)}")
                x = x.detach().to(device=self.device, dtype=torch.float64).reshape(-1)
            elif isinstance(x, (int, float)) and not isinstance(x, bool):
                x = torch.tensor([float(x)], dtype=torch.float64, device=self.device)
            else:
                raise TypeError(f"{name} must be a float or a tensor of shape [N], got {type(x).__name__}")
            if bool(torch.isnan(x).any()):
                raise ValueError(f"{name} contains NaN")
            bounds.append(x)
        if bool((bounds[0] < 0).any()) or bool(torch.isinf(bounds[0]).any()):
            raise ValueError("tmin must be finite and >= 0 (hits behind the origin are not reported)")
        return origins.detach(), dirs.detach(), bounds[0], bounds[1]

    @torch.no_grad()
    def closest_hit(self, origins: Tensor, dirs: Tensor, tmin: float | Tensor = 0.0,
                    tmax: float | Tensor = math.inf) -> RayHits:
        """The nearest triangle along each ray with ``tmin <= t <= tmax``.

        Args:
            origins: ``[N, 3]`` ray origins (float32 or float64, finite, on the mesh's device).
            dirs: ``[N, 3]`` directions, any length (``t`` is in units of them); a zero direction misses.
            tmin: float or ``[N]``, finite and ``>= 0``.
            tmax: float or ``[N]``, may be ``inf``; ``tmax < tmin`` means an empty interval (a miss).
        Returns:
            :class:`RayHits` on the rays' device. Not differentiable.
        Raises:
            TypeError, ValueError: wrong shapes, dtypes, devices; NaN/Inf rays; NaN bounds or ``tmin < 0``.
        """
        origins, dirs, lo, hi = self._rays(origins, dirs, tmin, tmax)
        if self.backend == "cpu":
            t, tri_id, uv = self._bvh.closest_hit(origins.to(torch.float32).contiguous(),
                                                  dirs.to(torch.float32).contiguous(), lo, hi)
            return RayHits(t, tri_id, uv)
        return self._reference(origins, dirs, lo, hi, any_hit=False)

    @torch.no_grad()
    def any_hit(self, origins: Tensor, dirs: Tensor, tmin: float | Tensor = 0.0,
                tmax: float | Tensor = math.inf) -> Tensor:
        """``[N]`` bool: whether any triangle lies along the ray with ``tmin <= t <= tmax`` (occlusion / shadows).

        Same arguments and errors as :meth:`closest_hit`; equals ``closest_hit(...).tri_id >= 0`` but stops at
        the first hit found.
        """
        origins, dirs, lo, hi = self._rays(origins, dirs, tmin, tmax)
        if self.backend == "cpu":
            return self._bvh.any_hit(origins.to(torch.float32).contiguous(), dirs.to(torch.float32).contiguous(),
                                     lo, hi)
        return self._reference(origins, dirs, lo, hi, any_hit=True)

    def _reference(self, origins: Tensor, dirs: Tensor, lo: Tensor, hi: Tensor, any_hit: bool):
        """Brute-force Moller-Trumbore over all non-degenerate triangles in float64, rays in chunks."""
        N, dev = origins.shape[0], origins.device
        t_out = torch.full((N,), math.inf, dtype=torch.float64, device=dev)
        id_out = torch.full((N,), -1, dtype=torch.int64, device=dev)
        uv_out = torch.zeros(N, 2, dtype=torch.float64, device=dev)
        F = self._ref_ids.numel()
        lo, hi = lo.expand(N), hi.expand(N)
        chunk = max(1, _REF_CHUNK // max(F, 1))
        for s in range(0, N if F else 0, chunk):
            o = origins[s:s + chunk].to(torch.float32).to(torch.float64)[:, None]  # [n, 1, 3]
            d = dirs[s:s + chunk].to(torch.float32).to(torch.float64)[:, None]
            pvec = torch.linalg.cross(d.expand(-1, F, -1), self._ref_e2.expand(d.shape[0], -1, -1))  # [n, F, 3]
            det = (self._ref_e1 * pvec).sum(-1)
            ok = det != 0
            inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
            tvec = o - self._ref_p0
            b1 = (tvec * pvec).sum(-1) * inv
            qvec = torch.linalg.cross(tvec, self._ref_e1.expand_as(tvec))
            b2 = (d * qvec).sum(-1) * inv
            t = (self._ref_e2 * qvec).sum(-1) * inv
            ok &= (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1)
            ok &= (t >= lo[s:s + chunk, None]) & (t <= hi[s:s + chunk, None])
            t = torch.where(ok, t, torch.full_like(t, math.inf))
            best_t, best = t.min(dim=1)  # ties: the first (lowest id) minimum
            rows = torch.arange(best.shape[0], device=dev)
            hit = ok[rows, best]
            t_out[s:s + chunk] = torch.where(hit, best_t, t_out[s:s + chunk])
            id_out[s:s + chunk] = torch.where(hit, self._ref_ids[best], id_out[s:s + chunk])
            # Moller-Trumbore's (b1, b2) weight p1, p2; recon's (u, v) weight p0, p1.
            uv = torch.stack([1.0 - b1[rows, best] - b2[rows, best], b1[rows, best]], dim=-1)
            uv_out[s:s + chunk] = torch.where(hit[:, None], uv, uv_out[s:s + chunk])
        if any_hit:
            return id_out >= 0
        return RayHits(t_out.to(torch.float32), id_out, uv_out.to(torch.float32))
