"""Equirectangular HDR environment light: direction <-> texture mapping, lookup, importance sampling, file I/O.

Convention (the synthetic datasets' README, Blender's mapping): a unit direction ``d`` pointing from the scene
towards the environment has ``u = 0.5 - atan2(d_y, d_x) / (2 pi)`` wrapped into [0, 1) and
``v = acos(d_z) / pi``; ``v = 0`` is the top row (+Z zenith), ``u`` grows to the right: -X at u = 0 (the seam),
+Y at u = 0.25, +X at u = 0.5, -Y at u = 0.75. Texel (row i, column j) of an ``H x W`` map has its
center at ``u = (j + 0.5) / W``, ``v = (i + 0.5) / H`` (pixel centers). Mitsuba samples rows at ``y = v (H - 1)``
instead of ``y = v H - 0.5``: under half a texel apart, zero at the horizon.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from recon.data.io import read_image, write_exr, write_hdr

__all__ = ["LUMA_WEIGHTS", "dir_to_uv", "uv_to_dir", "rotate_z", "envmap_lookup", "read_envmap", "EnvLight"]

LUMA_WEIGHTS = (0.2126, 0.7152, 0.0722)
"""Rec.709 luminance weights of linear RGB."""

KIND, VERSION = "envlight", 1
UNIFORM_FRACTION = 0.01
"""Share of the sampling distribution spread over the sphere uniformly in solid angle, so every pdf is > 0."""


# ----------------------------------------------------------------------------------------------- mapping

def dir_to_uv(d: Tensor) -> Tensor:
    """Directions ``d [..., 3]`` (need not be unit) -> equirectangular ``uv [..., 2]``, u in [0, 1), v in [0, 1].

    ``u = 0.5 - atan2(d_y, d_x) / (2 pi)`` wrapped into [0, 1), ``v = acos(d_z / |d|) / pi`` (v = 0 at +Z).
    """
    x, y, z = d.unbind(-1)
    u = torch.remainder(0.5 - torch.atan2(y, x) / (2.0 * math.pi), 1.0)
    u = torch.where(u >= 1.0, u - 1.0, u)  # remainder of a tiny negative number can round up to 1.0
    v = torch.atan2(torch.hypot(x, y), z) / math.pi  # = acos(z / |d|), well conditioned at the poles
    return torch.stack([u, v], dim=-1)


def uv_to_dir(uv: Tensor) -> Tensor:
    """Equirectangular ``uv [..., 2]`` -> unit directions ``[..., 3]`` (inverse of :func:`dir_to_uv`)."""
    phi = (0.5 - uv[..., 0]) * (2.0 * math.pi)
    theta = uv[..., 1] * math.pi
    s = torch.sin(theta)
    return torch.stack([s * torch.cos(phi), s * torch.sin(phi), torch.cos(theta)], dim=-1)


def rotate_z(d: Tensor, deg: float) -> Tensor:
    """Rotate ``d [..., 3]`` by ``deg`` degrees about +Z (counter-clockwise seen from +Z)."""
    if deg % 360.0 == 0.0:
        return d
    c, s = math.cos(math.radians(deg)), math.sin(math.radians(deg))
    x, y, z = d.unbind(-1)
    return torch.stack([c * x - s * y, s * x + c * y, z], dim=-1)


def envmap_lookup(radiance: Tensor, dirs: Tensor, rotation_deg: float = 0.0) -> Tensor:
    """Bilinear lookup of an equirectangular map ``radiance [H, W, C]`` at directions ``dirs [..., 3]`` ->
    ``[..., C]``.

    Texel centers at ``((j + 0.5) / W, (i + 0.5) / H)``; wraps around in u, clamps to the edge rows in v. The map is
    rotated by ``rotation_deg`` about +Z (see :class:`EnvLight`). Differentiable with respect to ``radiance`` (and
    ``dirs``) through plain gather arithmetic.
    """
    H, W = radiance.shape[:2]
    uv = dir_to_uv(rotate_z(dirs, -rotation_deg)).to(radiance.dtype)
    x = uv[..., 0] * W - 0.5
    y = uv[..., 1] * H - 0.5
    x0, y0 = torch.floor(x), torch.floor(y)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    x0, y0 = x0.long(), y0.long()
    cols = (torch.remainder(x0, W), torch.remainder(x0 + 1, W))
    rows = (y0.clamp(0, H - 1), (y0 + 1).clamp(0, H - 1))
    flat = radiance.reshape(H * W, -1)

    def tap(r: Tensor, c: Tensor) -> Tensor:
        return flat[(r * W + c).reshape(-1)].reshape(*r.shape, -1)

    top = tap(rows[0], cols[0]) * (1 - fx) + tap(rows[0], cols[1]) * fx
    bottom = tap(rows[1], cols[0]) * (1 - fx) + tap(rows[1], cols[1]) * fx
    return top * (1 - fy) + bottom * fy


# ----------------------------------------------------------------------------------------------- files

def read_envmap(path: str | os.PathLike) -> np.ndarray:
    """Read a linear HDR equirectangular map (``.hdr`` or ``.exr``) as float32 ``[H, W, 3]`` (gray replicated,
    alpha dropped).

    Raises ``FileNotFoundError`` for a missing file and a one-line ``ValueError`` naming the file for another
    suffix, a decode failure, fewer than 3 channels (other than gray), non-finite or negative values, or a
    shape that is not 2:1 (W == 2 H). ``RuntimeError`` when ``.exr`` needs the missing ``OpenEXR`` package.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"environment map not found: {path}")
    if path.suffix.lower() not in (".hdr", ".exr"):
        raise ValueError(f"environment map {path} is not HDR: expected a linear .hdr or .exr, got "
                         f"'{path.suffix or '(no suffix)'}'")
    try:
        arr = read_image(path)
    except ValueError as e:
        raise ValueError(f"cannot decode environment map {path}: {e}") from e
    C = arr.shape[-1]
    if C == 1:
        arr = np.repeat(arr, 3, axis=-1)
    elif C == 2:
        raise ValueError(f"environment map {path} has {C} channels; expected RGB (3), RGBA (4) or gray (1)")
    arr = np.ascontiguousarray(arr[..., :3], dtype=np.float32)
    bad = int((~np.isfinite(arr)).sum())
    if bad:
        raise ValueError(f"environment map {path} has {bad} non-finite values (NaN / Inf)")
    neg = int((arr < 0).sum())
    if neg:
        raise ValueError(f"environment map {path} has {neg} negative values (min {arr.min():.4g}); radiance is >= 0")
    H, W = arr.shape[:2]
    if W != 2 * H:
        raise ValueError(f"environment map {path} is {W}x{H} (w x h); an equirectangular map must be 2:1 (W == 2 H)")
    return arr


# ----------------------------------------------------------------------------------------------- the light

def _as_radiance(radiance, name: str = "radiance") -> Tensor:
    """Validate a ``[H, 2H, 3]`` (or ``[H, 2H, 1]``) map of finite values >= 0 and return it as a float tensor."""
    t = torch.as_tensor(radiance)
    if not t.is_floating_point():
        t = t.to(torch.float32)
    if t.ndim != 3 or t.shape[-1] not in (1, 3) or t.shape[0] < 1 or t.shape[1] != 2 * t.shape[0]:
        raise ValueError(f"{name} must have shape [H, 2H, 3] (equirectangular), got {tuple(t.shape)}")
    t = t.detach()
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} has {int((~torch.isfinite(t)).sum())} non-finite values")
    if bool((t < 0).any()):
        raise ValueError(f"{name} has {int((t < 0).sum())} negative values (min {float(t.min()):.4g}); "
                         "radiance is >= 0")
    return t.expand(*t.shape[:2], 3) if t.shape[-1] == 1 else t


def _sin_rows(H: int, dtype, device) -> Tensor:
    """``[H]`` sin(theta) at the row centers."""
    return torch.sin((torch.arange(H, dtype=dtype, device=device) + 0.5) * (math.pi / H))


def _area_resample(radiance: Tensor, height: int) -> Tensor:
    """Downsample ``[H, 2H, C]`` to ``[height, 2 height, C]`` by solid-angle-weighted area averaging (exact
    block averages, preserving the integral over the sphere, when ``height`` divides ``H``)."""
    H = radiance.shape[0]
    cos = torch.cos(torch.arange(H + 1, dtype=radiance.dtype, device=radiance.device) * (math.pi / H))
    w = (cos[:-1] - cos[1:])[None, :, None]  # [1, H, 1] exact row solid angles (up to a constant)
    x = radiance.permute(2, 0, 1)  # [C, H, W]
    size = (height, 2 * height)
    num = F.interpolate((x * w)[None], size=size, mode="area")[0]
    den = F.interpolate(w.expand(1, H, 2 * H)[None], size=size, mode="area")[0]
    return (num / den).permute(1, 2, 0)


def _texel_dirs(height: int, dtype, device) -> Tensor:
    """``[height, 2 height, 3]`` directions of the texel centers."""
    v = (torch.arange(height, dtype=dtype, device=device) + 0.5) / height
    u = (torch.arange(2 * height, dtype=dtype, device=device) + 0.5) / (2 * height)
    return uv_to_dir(torch.stack(torch.meshgrid(u, v, indexing="xy"), dim=-1))


class EnvLight(nn.Module):
    """A linear HDR equirectangular environment light (distant, radiance ``L(d)`` arriving from direction ``d``).

    The map is stored as ``log_radiance [H, 2H, 3]`` (an ``nn.Parameter``, trainable when ``learnable``), so
    ``radiance() = exp(log_radiance)`` stays positive under optimization.

    Rotation: ``rotation_deg`` turns the environment about +Z, counter-clockwise seen from above: a light rotated
    by +90 deg shows at world direction ``R_z(+90) d`` what the unrotated map shows at ``d``. Rotating moves
    features towards smaller u (u_world = u_map - deg / 360). Lookup, sampling and pdf all respect it; the stored
    map (and :meth:`save`) stays unrotated, :meth:`baked` resamples the rotated map.

    Args:
        radiance: ``[H, 2H, 3]`` (or ``[H, 2H, 1]``) linear radiance >= 0, tensor or ndarray.
        learnable: whether ``log_radiance`` requires grad.
        rotation_deg: rotation about +Z in degrees.
        min_value: radiance is clamped to at least this before the log (log 0 is -inf).

    Raises ``ValueError`` naming ``radiance`` for a bad shape, non-finite or negative values.
    """

    def __init__(self, radiance, *, learnable: bool = False, rotation_deg: float = 0.0, min_value: float = 1e-4):
        super().__init__()
        if not (float(min_value) > 0.0):
            raise ValueError(f"min_value must be > 0, got {min_value}")
        t = _as_radiance(radiance)
        self.log_radiance = nn.Parameter(torch.log(t.clamp_min(float(min_value))), requires_grad=bool(learnable))
        self.rotation_deg = float(rotation_deg)
        self.min_value = float(min_value)
        self._dist: tuple | None = None

    @classmethod
    def _sharing(cls, log_radiance: nn.Parameter, rotation_deg: float, min_value: float) -> EnvLight:
        light = cls.__new__(cls)
        nn.Module.__init__(light)
        light.log_radiance = log_radiance
        light.rotation_deg, light.min_value, light._dist = float(rotation_deg), float(min_value), None
        return light

    # --- basics ----------------------------------------------------------------------------------------------
    @property
    def height(self) -> int:
        """Rows H of the stored map (width is 2H)."""
        return self.log_radiance.shape[0]

    @property
    def learnable(self) -> bool:
        return self.log_radiance.requires_grad

    def radiance(self) -> Tensor:
        """``[H, 2H, 3]`` the stored (unrotated) map, ``exp(log_radiance)``, differentiable."""
        return torch.exp(self.log_radiance)

    def lookup(self, dirs: Tensor) -> Tensor:
        """Radiance ``[..., 3]`` arriving from world directions ``dirs [..., 3]`` (bilinear, see
        :func:`envmap_lookup`); differentiable with respect to the map."""
        if dirs.shape[-1:] != (3,):
            raise ValueError(f"dirs must have shape [..., 3], got {tuple(dirs.shape)}")
        return envmap_lookup(self.radiance(), dirs, self.rotation_deg)

    def forward(self, dirs: Tensor) -> Tensor:
        """Same as :meth:`lookup`."""
        return self.lookup(dirs)

    def rotated(self, deg: float) -> EnvLight:
        """A new light sharing this one's ``log_radiance`` parameter, rotated by a further ``deg`` degrees."""
        return type(self)._sharing(self.log_radiance, self.rotation_deg + float(deg), self.min_value)

    def mean_luminance(self) -> float:
        """Mean Rec.709 luminance over the texels (per pixel, not weighted by solid angle, as the datasets'
        README measures its maps)."""
        with torch.no_grad():
            lum = self.radiance() @ self.log_radiance.new_tensor(LUMA_WEIGHTS)
            return float(lum.mean())

    # --- importance sampling ----------------------------------------------------------------------------------
    def invalidate(self) -> None:
        """Drop the cached sampling distribution (it also rebuilds by itself when the map changes in place)."""
        self._dist = None

    def _distribution(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(p_texel [H*W], cdf_flat [H*W + 1], cdf_rows [H + 1])`` float64, built from the detached map:
        p proportional to luminance * sin(theta), mixed with :data:`UNIFORM_FRACTION` of sin(theta) alone."""
        p = self.log_radiance
        key = (p.data_ptr(), p._version, p.device, p.shape)
        if self._dist is not None and self._dist[0] == key:
            return self._dist[1]
        H, W = p.shape[:2]
        with torch.no_grad():
            lum = torch.exp(p.detach().double()) @ p.new_tensor(LUMA_WEIGHTS, dtype=torch.float64)
            s = _sin_rows(H, torch.float64, p.device)[:, None].expand(H, W)
            w = lum * s
            uniform = s / s.sum()
            total = float(w.sum())
            pt = uniform if not total > 0 else (1 - UNIFORM_FRACTION) * w / total + UNIFORM_FRACTION * uniform
            pt = (pt / pt.sum()).reshape(-1)
            cdf = torch.cat([pt.new_zeros(1), torch.cumsum(pt, 0)])
            cdf = cdf / cdf[-1]
            cdf_rows = cdf[::W].contiguous()  # row i starts at flat index i * W; the last entry is the total, 1
        self._dist = (key, (pt, cdf, cdf_rows))
        return pt, cdf, cdf_rows

    def sample(self, u: Tensor) -> tuple[Tensor, Tensor]:
        """Importance-sample world directions from uniform ``u [N, 2]`` in [0, 1).

        ``u[:, 1]`` picks a row from the marginal, ``u[:, 0]`` a column from that row's conditional (piecewise
        constant in texels, proportional to luminance * sin(theta) plus a 1 % uniform share); the position within
        the texel is uniform in (u, v), reusing the remainders. Returns ``(dirs [N, 3], pdf [N])`` with ``pdf``
        the solid-angle density, equal to :meth:`pdf` at ``dirs``. Not differentiable.
        """
        if u.ndim != 2 or u.shape[-1] != 2:
            raise ValueError(f"u must have shape [N, 2], got {tuple(u.shape)}")
        pt, cdf, cdf_rows = self._distribution()
        H = self.height
        W = 2 * H
        u64 = u.detach().to(device=pt.device, dtype=torch.float64).clamp(0.0, 1.0 - 1e-12)
        u0, u1 = u64[:, 0].contiguous(), u64[:, 1].contiguous()
        row = (torch.searchsorted(cdf_rows, u1, right=True) - 1).clamp(0, H - 1)
        row_mass = cdf_rows[row + 1] - cdf_rows[row]
        fy = ((u1 - cdf_rows[row]) / row_mass).clamp(0.0, 1.0 - 1e-9)
        target = cdf_rows[row] + u0 * row_mass  # the conditional CDF is the flat CDF within the row
        idx = torch.searchsorted(cdf, target, right=True) - 1
        idx = torch.minimum(torch.maximum(idx, row * W), row * W + W - 1)
        fx = ((target - cdf[idx]) / pt[idx]).clamp(0.0, 1.0 - 1e-9)
        col = idx - row * W
        uv = torch.stack([(col + fx) / W, (row + fy) / H], dim=-1)
        dirs = rotate_z(uv_to_dir(uv), self.rotation_deg)
        out_dtype = u.dtype if u.is_floating_point() else torch.float32
        dirs = dirs.to(out_dtype)
        return dirs, self.pdf(dirs)

    def pdf(self, dirs: Tensor) -> Tensor:
        """Solid-angle pdf ``[...]`` of :meth:`sample` at world directions ``dirs [..., 3]``:
        ``p_texel * H W / (2 pi^2 sin(theta))``. Not differentiable."""
        if dirs.shape[-1:] != (3,):
            raise ValueError(f"dirs must have shape [..., 3], got {tuple(dirs.shape)}")
        pt, _, _ = self._distribution()
        H = self.height
        W = 2 * H
        d = rotate_z(dirs.detach().to(device=pt.device, dtype=torch.float64), -self.rotation_deg)
        uv = dir_to_uv(d)
        col = (uv[..., 0] * W).long().clamp(0, W - 1)
        row = (uv[..., 1] * H).long().clamp(0, H - 1)
        sin_theta = torch.hypot(d[..., 0], d[..., 1]) / d.norm(dim=-1)
        pdf = pt[row * W + col] * (H * W / (2.0 * math.pi ** 2)) / sin_theta.clamp_min(1e-12)
        return pdf.to(dirs.dtype if dirs.is_floating_point() else torch.float32)

    # --- construction, resampling, files -----------------------------------------------------------------------
    @classmethod
    def from_file(cls, path: str | os.PathLike, *, learnable: bool = False, rotation_deg: float = 0.0,
                  min_value: float = 1e-4) -> EnvLight:
        """A light from an ``.hdr`` / ``.exr`` file (see :func:`read_envmap` for the checks and errors)."""
        return cls(torch.from_numpy(read_envmap(path)), learnable=learnable, rotation_deg=rotation_deg,
                   min_value=min_value)

    @classmethod
    def constant(cls, value: float | tuple[float, float, float], height: int = 32, *,
                 learnable: bool = False) -> EnvLight:
        """A uniform light of radiance ``value`` (gray float or RGB triple) on a ``[height, 2 height]`` map."""
        rgb = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
        if rgb.numel() not in (1, 3):
            raise ValueError(f"value must be a float or 3 floats, got {value!r}")
        if int(height) < 1:
            raise ValueError(f"height must be >= 1, got {height}")
        return cls(rgb.expand(int(height), 2 * int(height), 3).clone(), learnable=learnable)

    def resized(self, height: int, *, learnable: bool | None = None) -> EnvLight:
        """A new light (own, detached parameter; same rotation) with a ``[height, 2 height]`` map: solid-angle
        weighted area average when shrinking (e.g. to start a learnable light coarse), bilinear when growing.
        ``learnable`` defaults to this light's."""
        if int(height) < 1:
            raise ValueError(f"height must be >= 1, got {height}")
        height = int(height)
        with torch.no_grad():
            src = self.radiance()
            if height <= self.height:
                out = _area_resample(src, height)
            else:
                out = envmap_lookup(src, _texel_dirs(height, src.dtype, src.device))
        return type(self)(out, learnable=self.learnable if learnable is None else learnable,
                          rotation_deg=self.rotation_deg, min_value=self.min_value)

    def baked(self, height: int | None = None) -> Tensor:
        """``[h, 2h, 3]`` the rotated map resampled at texel centers (``h = height`` or H), differentiable: an
        unrotated light made of it (or a file saved from it) looks like this one. Bilinear, so a rotation that is
        not a whole number of texels blurs slightly; shrinking area-averages first."""
        h = self.height if height is None else int(height)
        src = self.radiance()
        if h == self.height and self.rotation_deg % 360.0 == 0.0:
            return src
        if h < self.height:
            src = _area_resample(src, h)
        return envmap_lookup(src, _texel_dirs(h, src.dtype, src.device), self.rotation_deg)

    def save(self, path: str | os.PathLike) -> None:
        """Write the stored map, **unrotated**, to ``.hdr`` (RGBE) or ``.exr`` (float32) by suffix; write
        ``baked()`` with :func:`recon.data.io.write_hdr` to keep a rotation. ``ValueError`` for another suffix."""
        suffix = Path(path).suffix.lower()
        image = self.radiance().detach().cpu().float().numpy()
        if suffix == ".hdr":
            write_hdr(path, image)
        elif suffix == ".exr":
            write_exr(path, image)
        else:
            raise ValueError(f"cannot save environment light to {path}: expected a .hdr or .exr suffix")

    def to_state(self) -> dict:
        """``{"header": json str (kind "envlight", version, rotation_deg, learnable, min_value),
        "tensors": {"log_radiance": cpu tensor [H, 2H, 3]}}``."""
        header = {"kind": KIND, "version": VERSION, "rotation_deg": self.rotation_deg, "learnable": self.learnable,
                  "min_value": self.min_value}
        return {"header": json.dumps(header), "tensors": {"log_radiance": self.log_radiance.detach().cpu().clone()}}

    @classmethod
    def from_state(cls, state: dict, source: str = "<state>") -> EnvLight:
        """Inverse of :meth:`to_state` (on the CPU). Raises ``ValueError`` naming ``source`` for a state that is
        not an environment light or has invalid fields."""
        try:
            header = json.loads(state["header"])
            kind = header.get("kind")
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise ValueError(f"{source}: not a recon environment light state ({type(err).__name__}: {err})") from err
        if kind != KIND:
            raise ValueError(f"{source}: state kind is {kind!r}, expected {KIND!r}")
        try:
            log_radiance = state["tensors"]["log_radiance"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source}: environment light state without a log_radiance tensor") from err
        if int(header.get("version", 0)) > VERSION:
            raise ValueError(f"{source}: envlight version {header.get('version')} is newer than supported {VERSION}")
        if not isinstance(log_radiance, Tensor) or not log_radiance.is_floating_point():
            raise ValueError(f"{source}: log_radiance must be a float tensor, got {type(log_radiance).__name__}")
        t = log_radiance.detach()
        if t.ndim != 3 or t.shape[-1] != 3 or t.shape[1] != 2 * t.shape[0] or t.shape[0] < 1:
            raise ValueError(f"{source}: log_radiance must have shape [H, 2H, 3], got {tuple(t.shape)}")
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{source}: log_radiance has {int((~torch.isfinite(t)).sum())} non-finite values")
        try:
            rotation, min_value = float(header.get("rotation_deg", 0.0)), float(header.get("min_value", 1e-4))
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: bad rotation_deg / min_value in header: {err}") from err
        param = nn.Parameter(t.clone(), requires_grad=bool(header.get("learnable", False)))
        return cls._sharing(param, rotation, min_value)

    def extra_repr(self) -> str:
        return f"height={self.height}, rotation_deg={self.rotation_deg}, learnable={self.learnable}"
