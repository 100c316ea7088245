"""Read and write 3D Gaussians in the standard 3DGS PLY layout (the files of Kerbl et al. 2023 and its tools).

One ``vertex`` element, one float32 property per attribute, in this order::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..(3(K-1)-1)  opacity  scale_0..2  rot_0..3

* ``f_dc_*`` are the degree-0 SH coefficients of R, G, B; ``f_rest_*`` the higher bands stored *channel-major*:
  all K-1 coefficients of R, then of G, then of B (``f_rest_{c (K-1) + k}`` is band coefficient ``k + 1`` of
  channel ``c``), ``K = (degree + 1)^2``, so 0, 9, 24 or 45 ``f_rest`` properties for degrees 0..3.
* ``opacity`` is the logit (activation: sigmoid), ``scale_*`` the log scales (activation: exp), ``rot_*`` the
  quaternion (w, x, y, z), not necessarily normalized. Normals are written as 0 and ignored on read.

Relightable Gaussians (recon's extension; every other 3DGS tool ignores it and shows the radiance) append five
properties after ``rot_3``: ``base_color_0..2`` (linear base color in [0, 1]), ``roughness`` (glTF perceptual
roughness) and ``metallic``; ``nx ny nz`` then hold each Gaussian's normal (its shortest axis, on the side
that sees more of the sky: ``recon.renderers.gaussians.pbr.outward_normals``), informative only. A file with
some of the five but not all is an error.

The reader parses the header itself: ``binary_little_endian``, ``binary_big_endian`` and ``ascii``; any PLY scalar
type; properties in any order; extra properties and extra elements after ``vertex`` ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from recon.fileio import atomic_write_bytes
import torch
from torch import Tensor

__all__ = ["GaussianPly", "write_gaussian_ply", "read_gaussian_ply"]

_SCALAR_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}
_FORMATS = {"binary_little_endian": "<", "binary_big_endian": ">", "ascii": None}
_REST_COUNTS = {0: 0, 9: 1, 24: 2, 45: 3}  # number of f_rest_* properties -> SH degree
_REQUIRED = (["x", "y", "z"] + [f"f_dc_{i}" for i in range(3)] + ["opacity"] + [f"scale_{i}" for i in range(3)]
             + [f"rot_{i}" for i in range(4)])
MATERIAL_PROPS = ("base_color_0", "base_color_1", "base_color_2", "roughness", "metallic")


@dataclass
class GaussianPly:
    """Raw (pre-activation) Gaussian parameters as stored in a 3DGS PLY; float32 tensors.

    Attributes:
        means: ``[N, 3]`` centres.
        quats: ``[N, 4]`` rotations (w, x, y, z), as stored (need not be normalized).
        log_scales: ``[N, 3]`` log of the per-axis standard deviations.
        opacity_logits: ``[N]`` opacity before the sigmoid.
        sh_dc: ``[N, 3]`` degree-0 SH coefficients (``f_dc_0..2``).
        sh_rest: ``[N, K-1, 3]`` higher-band SH coefficients, ``K = (degree + 1)^2`` (``K - 1 = 0`` for degree 0).
    """

    means: Tensor
    quats: Tensor
    log_scales: Tensor
    opacity_logits: Tensor
    sh_dc: Tensor
    sh_rest: Tensor
    material: Tensor | None = None
    """``[N, 5]`` linear base color, roughness, metallic of relightable Gaussians (None: radiance only)."""
    normals: Tensor | None = None
    """``[N, 3]`` written to ``nx ny nz`` (informative; not read back)."""

    @property
    def sh_degree(self) -> int:
        """SH degree 0..3 implied by ``sh_rest``."""
        return int(round((self.sh_rest.shape[1] + 1) ** 0.5)) - 1

    def __len__(self) -> int:
        return self.means.shape[0]

    def validate(self) -> None:
        """Check shapes and finiteness; raises ``ValueError`` naming the field."""
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        shapes = {"means": (n, 3), "quats": (n, 4), "log_scales": (n, 3), "opacity_logits": (n,), "sh_dc": (n, 3)}
        for name, shape in shapes.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                want = "[N, " + ", ".join(str(s) for s in shape[1:]) + "]" if len(shape) > 1 else "[N]"
                raise ValueError(f"GaussianPly.{name} must have shape {want} with N={n}, got {got}")
        rest = tuple(self.sh_rest.shape)
        if len(rest) != 3 or rest[0] != n or rest[2] != 3 or rest[1] not in (0, 3, 8, 15):
            raise ValueError(f"GaussianPly.sh_rest must have shape [N={n}, K-1, 3] with K-1 in (0, 3, 8, 15) "
                             f"(SH degree 0..3), got {rest}")
        for name, width in (("material", 5), ("normals", 3)):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != (n, width):
                raise ValueError(f"GaussianPly.{name} must have shape [N, {width}] with N={n}, got "
                                 f"{tuple(value.shape)}")
        for name in (*shapes, "sh_rest", "material", "normals"):
            value = getattr(self, name)
            if value is not None and not torch.isfinite(value).all():
                raise ValueError(f"GaussianPly.{name} contains NaN or Inf")


def _columns(g: GaussianPly) -> tuple[list[str], np.ndarray]:
    """Property names in the standard order and the matching ``[N, P]`` float32 array."""
    n = len(g)
    rest = g.sh_rest.detach().cpu().float().permute(0, 2, 1).reshape(n, -1)  # channel-major: R..., G..., B...
    normals = g.normals if g.normals is not None else torch.zeros(n, 3)
    parts = [g.means, normals, g.sh_dc, rest, g.opacity_logits.reshape(n, 1), g.log_scales, g.quats]
    if g.material is not None:
        parts.append(g.material)
    data = torch.cat([p.detach().cpu().float().reshape(n, -1) for p in parts], dim=1).numpy()
    names = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
             + [f"f_rest_{i}" for i in range(rest.shape[1])] + ["opacity"] + [f"scale_{i}" for i in range(3)]
             + [f"rot_{i}" for i in range(4)] + (list(MATERIAL_PROPS) if g.material is not None else []))
    return names, np.ascontiguousarray(data, dtype="<f4")


def write_gaussian_ply(path: str | os.PathLike, g: GaussianPly) -> None:
    """Write ``g`` as a binary little-endian 3DGS PLY (standard property order, float32).

    The file is written to a temporary file in the same folder and moved into place with ``os.replace``, so
    readers never see a partial file. Raises ``ValueError`` on wrong shapes or non-finite values.
    """
    g.validate()
    path = Path(path)
    names, data = _columns(g)
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(g)}"]
    header += [f"property float {name}" for name in names] + ["end_header"]
    atomic_write_bytes(path, ("\n".join(header) + "\n").encode("ascii") + data.tobytes())


def _parse_header(path: Path, raw: bytes) -> tuple[str | None, list[dict], int]:
    """Returns (byte order or None for ascii, elements, offset of the body)."""
    if not raw.startswith(b"ply") or raw[3:4] not in (b"\n", b"\r"):
        raise ValueError(f"{path}: not a PLY file (expected the first line 'ply')")
    end = re.search(rb"end_header\r?\n", raw)
    if end is None:
        raise ValueError(f"{path}: PLY header has no 'end_header' line")
    fmt, elements = None, []
    for line in raw[: end.start()].decode("ascii", errors="replace").splitlines()[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format":
            if len(tok) < 2 or tok[1] not in _FORMATS:
                raise ValueError(f"{path}: unsupported PLY format {line.strip()!r}; expected one of {list(_FORMATS)}")
            fmt = tok[1]
        elif tok[0] == "element" and len(tok) == 3 and tok[2].isdigit():
            elements.append({"name": tok[1], "count": int(tok[2]), "props": []})
        elif tok[0] == "property" and elements:
            if tok[1] == "list":
                elements[-1]["props"].append((tok[-1], None))
            elif len(tok) == 3 and tok[1] in _SCALAR_TYPES:
                elements[-1]["props"].append((tok[2], _SCALAR_TYPES[tok[1]]))
            else:
                raise ValueError(f"{path}: unsupported PLY property line {line.strip()!r}")
        else:
            raise ValueError(f"{path}: malformed PLY header line {line.strip()!r}")
    if fmt is None:
        raise ValueError(f"{path}: PLY header has no 'format' line")
    return _FORMATS[fmt], elements, end.end()


def _read_vertices(path: Path, raw: bytes, order: str | None, elements: list[dict], offset: int) -> dict:
    """Vertex properties as a dict name -> float64 array [N]."""
    names = [e["name"] for e in elements]
    if "vertex" not in names:
        raise ValueError(f"{path}: PLY has no 'element vertex' (elements: {names})")
    k = names.index("vertex")
    vertex = elements[k]
    if any(t is None for _, t in vertex["props"]):
        raise ValueError(f"{path}: list properties in 'element vertex' are not supported in a 3DGS PLY")
    n, props = vertex["count"], vertex["props"]
    if order is None:
        lines = raw[offset:].decode("ascii", errors="replace").split("\n")
        lines = [ln for ln in lines if ln.strip()]
        skip = sum(e["count"] for e in elements[:k])
        rows = lines[skip: skip + n]
        if len(rows) < n:
            raise ValueError(f"{path}: truncated PLY: expected {n} ascii vertex lines, got {len(rows)}")
        try:
            values = np.array([[float(v) for v in row.split()[: len(props)]] for row in rows], dtype=np.float64)
        except ValueError as e:
            raise ValueError(f"{path}: malformed ascii vertex data ({e})") from None
        if values.shape != (n, len(props)):
            raise ValueError(f"{path}: ascii vertex lines must have {len(props)} values each")
        return {name: values[:, i] for i, (name, _) in enumerate(props)}
    for e in elements[:k]:
        if any(t is None for _, t in e["props"]):
            raise ValueError(f"{path}: cannot skip element {e['name']!r} with list properties before 'vertex'")
        offset += e["count"] * np.dtype([(f"p{i}", order + t) for i, (_, t) in enumerate(e["props"])]).itemsize
    dtype = np.dtype([(name, order + t) for name, t in props])
    have = max(0, len(raw) - offset)
    if have < n * dtype.itemsize:
        raise ValueError(f"{path}: truncated PLY: expected {n} x {dtype.itemsize} = {n * dtype.itemsize} bytes of "
                         f"vertex data, got {have}")
    arr = np.frombuffer(raw, dtype=dtype, count=n, offset=offset)
    return {name: arr[name].astype(np.float64) for name, _ in props}


def read_gaussian_ply(path: str | os.PathLike) -> GaussianPly:
    """Read a 3DGS PLY (any property order, extra properties ignored) into float32 tensors.

    Raises ``ValueError`` naming the file when it is not a PLY, has no vertex element, lacks a required property,
    has an f_rest count other than 0/9/24/45, is truncated, or holds NaN/Inf in a property that is used.
    """
    path = Path(path)
    raw = path.read_bytes()
    order, elements, offset = _parse_header(path, raw)
    cols = _read_vertices(path, raw, order, elements, offset)
    missing = [name for name in _REQUIRED if name not in cols]
    if missing:
        raise ValueError(f"{path}: missing required vertex property {missing[0]!r} (missing: {missing})")
    rest_names = [name for name in cols if re.fullmatch(r"f_rest_\d+", name)]
    if len(rest_names) not in _REST_COUNTS:
        raise ValueError(f"{path}: found {len(rest_names)} f_rest_* properties; expected 0, 9, 24 or 45 "
                         f"(SH degree 0..3)")
    expected_rest = [f"f_rest_{i}" for i in range(len(rest_names))]
    if sorted(rest_names) != sorted(expected_rest):
        raise ValueError(f"{path}: f_rest_* properties must be numbered 0..{len(rest_names) - 1}")
    present = [name for name in MATERIAL_PROPS if name in cols]
    if present and len(present) != len(MATERIAL_PROPS):
        missing_m = [name for name in MATERIAL_PROPS if name not in cols]
        raise ValueError(f"{path}: relightable Gaussian PLY has {present} but lacks {missing_m} (all of "
                         f"{list(MATERIAL_PROPS)} or none)")
    for name in _REQUIRED + expected_rest + present:
        if not np.isfinite(cols[name]).all():
            raise ValueError(f"{path}: property {name!r} contains NaN or Inf")

    def stack(names: list[str]) -> Tensor:
        n = len(cols["x"])
        out = np.stack([cols[m] for m in names], axis=1) if names else np.zeros((n, 0))
        return torch.from_numpy(out.astype(np.float32))

    n, m = len(cols["x"]), len(expected_rest) // 3
    rest = stack(expected_rest).reshape(n, 3, m).permute(0, 2, 1).contiguous()  # channel-major -> [N, K-1, 3]
    return GaussianPly(
        means=stack(["x", "y", "z"]),
        quats=stack([f"rot_{i}" for i in range(4)]),
        log_scales=stack([f"scale_{i}" for i in range(3)]),
        opacity_logits=stack(["opacity"])[:, 0].contiguous(),
        sh_dc=stack([f"f_dc_{i}" for i in range(3)]),
        sh_rest=rest,
        material=stack(list(MATERIAL_PROPS)) if present else None,
    )
