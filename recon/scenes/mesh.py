"""Triangle mesh scene: a parameter container (no rendering code), plus topology statistics.

Conventions (``docs/mesh.md``): ``faces [F, 3]`` index *unique* positions, so the topology is watertight where the
surface is (regularizers, antialiasing and the edge statistics below rely on it); texture coordinates are
face-varying, ``uvs [T, 2]`` indexed by ``uv_faces [F, 3]``, so UV seams live only in ``uv_faces``. ``uv (0, 0)`` is
the top-left of a texture as stored in memory, ``v`` goes down (glTF's convention). Colors are linear RGB.
Optional shading normals are face-varying the same way, ``normals [Nn, 3]`` indexed by ``normal_faces [F, 3]``,
so creases live only in ``normal_faces``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["MeshMaterial", "MeshReport", "MeshScene", "mesh_report"]

KIND = "mesh"
VERSION = 1

_TEXTURES = {"base_color": 3, "roughness_metallic": 2, "normal_map": 3}  # name -> channels
_MIN_NORMAL_LENGTH = 1e-12  # shorter shading normals have no direction (float32 underflow territory)


@dataclass(frozen=True)
class MeshMaterial:
    """glTF-style metallic-roughness material. The effective value of a channel is ``factor * texture`` (the
    texture is 1 where absent), exactly as glTF 2.0 defines it.

    Attributes:
        base_color: ``[Ht, Wt, 3]`` linear RGB texture, or None.
        roughness_metallic: ``[Hr, Wr, 2]`` linear (roughness, metallic) texture, or None. Its size may differ
            from ``base_color``'s: every texture is sampled at the same ``uv`` with its own resolution.
        normal_map: ``[Hn, Wn, 3]`` tangent-space normals, decoded to ``[-1, 1]`` (file value ``2 x - 1``; glTF
            / OpenGL orientation, +y up), or None.
        base_color_factor: linear RGBA multiplier.
        roughness_factor: roughness multiplier (glTF default 1).
        metallic_factor: metallic multiplier. Default 0 (a dielectric): recon's default for files that say
            nothing (OBJ, PLY); glTF files without a ``metallicFactor`` get glTF's default 1 at load.
    """

    base_color: Tensor | None = None
    roughness_metallic: Tensor | None = None
    normal_map: Tensor | None = None
    base_color_factor: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
    roughness_factor: float = 1.0
    metallic_factor: float = 0.0


class MeshScene(nn.Module):
    """A triangle mesh with optional UVs, vertex colors and a PBR material.

    Parameters (``nn.Parameter``, returned by :meth:`param_groups`): ``vertices [V, 3]``, and when present
    ``vertex_colors [V, 3]`` (linear RGB, the color source of an untextured mesh; a Parameter so a trainer may
    optimize it, or freeze it by leaving it out of its optimizer; exporters drop it beside a texture), ``base_color [Ht, Wt, 3]``, ``roughness_metallic [Hr, Wr, 2]``, ``normal_map [Hn, Wn, 3]``
    (see :class:`MeshMaterial`). Buffers: ``faces [F, 3]`` int64, ``uvs [T, 2]`` float32 + ``uv_faces [F, 3]``
    int64 (both or neither), ``normals [Nn, 3]`` float32 + ``normal_faces [F, 3]`` int64 (both or neither), and
    the material factors ``base_color_factor [4]``, ``roughness_factor []``,
    ``metallic_factor []`` (float32; not optimized: bake them into a texture to optimize them). Absent fields are
    None. Textures require UVs.

    **Shading normals.** ``normals`` are face-varying unit shading normals (e.g. a file's glTF ``NORMAL`` / OBJ
    ``vn``: the normals an asset was authored or rendered with); corner ``k`` of face ``f`` has normal
    ``normals[normal_faces[f, k]]``. They are renormalized to unit length on construction (a zero-length row is a
    ``ValueError``). When present, the renderer interpolates them instead of computing area-weighted vertex normals
    from ``vertices``. They are *not* updated when ``vertices`` change: a trainer that optimizes ``vertices`` must
    drop them (:meth:`without_normals`, or set ``scene.normals = scene.normal_faces = None`` in place).

    Inputs may be tensors or numpy arrays of any float (vertices, uvs, colors, textures) or integer (faces)
    dtype; they are copied to float32 / int64. Raises ``ValueError`` naming the field (see :meth:`validate`).
    """

    def __init__(self, vertices, faces, *, uvs=None, uv_faces=None, vertex_colors=None,
                 material: MeshMaterial | None = None, name: str = "mesh", normals=None, normal_faces=None):
        super().__init__()
        material = material or MeshMaterial()
        self.name = str(name)
        self.vertices = nn.Parameter(_float_tensor("vertices", vertices))
        self.register_buffer("faces", _index_tensor("faces", faces))
        self.register_buffer("uvs", None if uvs is None else _float_tensor("uvs", uvs))
        self.register_buffer("uv_faces", None if uv_faces is None else _index_tensor("uv_faces", uv_faces))
        self.register_buffer("normals", None if normals is None else _unit_rows(_float_tensor("normals", normals)))
        self.register_buffer("normal_faces", None if normal_faces is None else
                             _index_tensor("normal_faces", normal_faces))
        self._set_param("vertex_colors", vertex_colors)
        for key in _TEXTURES:
            self._set_param(key, getattr(material, key))
        for key in ("base_color_factor", "roughness_factor", "metallic_factor"):
            value = torch.as_tensor(getattr(material, key), dtype=torch.float32, device=self.vertices.device)
            self.register_buffer(key, value.clone())
        self.validate()

    def _set_param(self, name: str, value) -> None:
        self.register_parameter(name, None if value is None else nn.Parameter(_float_tensor(name, value)))

    # --- checks ----------------------------------------------------------------------------------------
    def validate(self) -> None:
        """Check shapes, dtypes, index ranges and finiteness of every field; ``ValueError`` names the field.

        Called by the constructor; call it again after assigning a field directly.
        """
        v, f = self.vertices, self.faces
        _check_shape("vertices", v, "[V, 3]", v.ndim == 2 and v.shape[1] == 3)
        n = v.shape[0]
        _check_float("vertices", v)
        _check_indices("faces", f, n, "V")
        if (self.uvs is None) != (self.uv_faces is None):
            raise ValueError("MeshScene.uvs and MeshScene.uv_faces must be given together (face-varying UVs), "
                             f"got uvs={_shape(self.uvs)}, uv_faces={_shape(self.uv_faces)}")
        if self.uvs is not None:
            _check_shape("uvs", self.uvs, "[T, 2]", self.uvs.ndim == 2 and self.uvs.shape[1] == 2)
            _check_float("uvs", self.uvs)
            _check_indices("uv_faces", self.uv_faces, self.uvs.shape[0], "T")
            if self.uv_faces.shape[0] != f.shape[0]:
                raise ValueError(f"MeshScene.uv_faces must have shape [F={f.shape[0]}, 3] like faces, "
                                 f"got {tuple(self.uv_faces.shape)}")
        self._validate_normals()
        if self.vertex_colors is not None:
            c = self.vertex_colors
            _check_shape("vertex_colors", c, f"[V={n}, 3]", tuple(c.shape) == (n, 3))
            _check_float("vertex_colors", c)
        for key, channels in _TEXTURES.items():
            t = getattr(self, key)
            if t is None:
                continue
            ok = t.ndim == 3 and t.shape[0] > 0 and t.shape[1] > 0 and t.shape[2] == channels
            _check_shape(key, t, f"[H>0, W>0, {channels}]", ok)
            _check_float(key, t)
            if self.uvs is None:
                raise ValueError(f"MeshScene.{key} is a texture and needs uvs/uv_faces; got no uvs "
                                 "(hint: unwrap the mesh first, e.g. with xatlas)")
        for key, shape in (("base_color_factor", (4,)), ("roughness_factor", ()), ("metallic_factor", ())):
            t = getattr(self, key)
            _check_shape(key, t, str(list(shape)), tuple(t.shape) == shape)
            _check_float(key, t)
        for key, t in self._tensors(lambda t: t).items():
            if t.device != v.device:
                raise ValueError(f"MeshScene.{key} is on {t.device} but vertices are on {v.device}; "
                                 "every field must be on one device")
        if not isinstance(self.name, str):
            raise TypeError(f"MeshScene.name must be a str, got {type(self.name).__name__}")

    def _validate_normals(self) -> None:
        nrm, f = self.normals, self.faces
        if (nrm is None) != (self.normal_faces is None):
            raise ValueError("MeshScene.normals and MeshScene.normal_faces must be given together (face-varying "
                             f"normals), got normals={_shape(nrm)}, normal_faces={_shape(self.normal_faces)}")
        if nrm is None:
            return
        _check_shape("normals", nrm, "[Nn, 3]", nrm.ndim == 2 and nrm.shape[1] == 3)
        _check_float("normals", nrm)
        length = torch.linalg.vector_norm(nrm.detach(), dim=1)
        zero = length < _MIN_NORMAL_LENGTH
        if zero.any():
            raise ValueError(f"MeshScene.normals has {int(zero.sum())} zero-length rows (first: row "
                             f"{int(zero.nonzero()[0, 0])}); shading normals must be nonzero")
        if length.numel() and float((length - 1).abs().max()) > 1e-4:
            raise ValueError(f"MeshScene.normals must be unit length, got lengths in [{float(length.min()):.6g}, "
                             f"{float(length.max()):.6g}] (hint: normalize them; the constructor does)")
        _check_indices("normal_faces", self.normal_faces, nrm.shape[0], "Nn")
        if self.normal_faces.shape[0] != f.shape[0]:
            raise ValueError(f"MeshScene.normal_faces must have shape [F={f.shape[0]}, 3] like faces, "
                             f"got {tuple(self.normal_faces.shape)}")

    # --- queries ---------------------------------------------------------------------------------------
    @property
    def num_vertices(self) -> int:
        return self.vertices.shape[0]

    @property
    def num_faces(self) -> int:
        return self.faces.shape[0]

    @property
    def has_normals(self) -> bool:
        """True when face-varying shading normals are present."""
        return self.normals is not None

    @property
    def has_texture(self) -> bool:
        """True when a base-color texture is present."""
        return self.base_color is not None

    @property
    def material(self) -> MeshMaterial:
        """The current material (the live texture tensors, factors as floats)."""
        return MeshMaterial(base_color=self.base_color, roughness_metallic=self.roughness_metallic,
                            normal_map=self.normal_map,
                            base_color_factor=tuple(float(x) for x in self.base_color_factor.tolist()),
                            roughness_factor=float(self.roughness_factor), metallic_factor=float(self.metallic_factor))

    def bounds(self) -> Tensor:
        """Axis-aligned bounds ``[2, 3]`` (min row, max row) of the vertices, detached; zeros for no vertices."""
        v = self.vertices.detach()
        if v.shape[0] == 0:
            return torch.zeros(2, 3, device=v.device)
        return torch.stack([v.amin(0), v.amax(0)])

    def face_normals(self) -> Tensor:
        """Unit face normals ``[F, 3]`` (right-hand rule on ``faces``), differentiable; 0 for zero-area faces."""
        return _normalize(self._face_cross())

    def vertex_normals(self) -> Tensor:
        """Area-weighted unit vertex normals ``[V, 3]``, differentiable; 0 for vertices without faces."""
        return vertex_normals(self.vertices, self.faces)

    def _face_cross(self) -> Tensor:
        p = self.vertices[self.faces]  # [F, 3, 3]
        return torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1)

    def edges(self) -> Tensor:
        """Unique undirected edges ``[E, 2]`` int64, each row sorted (``a < b``), rows sorted."""
        f = self.faces
        e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]).sort(dim=1).values
        return torch.unique(e, dim=0) if e.shape[0] else e

    def param_groups(self) -> dict[str, nn.Parameter]:
        """The optimizer's flat map of named parameters that are present (``vertices`` always)."""
        names = ("vertices", "vertex_colors", *_TEXTURES)
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def detach_copy(self) -> MeshScene:
        """A new scene with detached copies of every tensor (same device)."""
        return type(self).from_state({"header": self.header(), "tensors": self._tensors(lambda t: t.detach().clone())})

    def without_normals(self) -> MeshScene:
        """A detached copy (like :meth:`detach_copy`) without shading normals: what a trainer that optimizes
        ``vertices`` should start from, since stored normals go stale when the vertices move."""
        tensors = self._tensors(lambda t: t.detach().clone())
        tensors.pop("normals", None)
        tensors.pop("normal_faces", None)
        return type(self).from_state({"header": self.header(), "tensors": tensors})

    # --- persistence (tensors + JSON header; loads with torch.load(weights_only=True)) --------------------
    def header(self) -> str:
        return json.dumps({"kind": KIND, "version": VERSION, "name": self.name, "num_vertices": self.num_vertices,
                           "num_faces": self.num_faces})

    def _tensors(self, fn) -> dict[str, Tensor]:
        names = ("vertices", "faces", "uvs", "uv_faces", "normals", "normal_faces", "vertex_colors", *_TEXTURES,
                 "base_color_factor", "roughness_factor", "metallic_factor")
        return {n: fn(getattr(self, n)) for n in names if getattr(self, n) is not None}

    def to_state(self) -> dict:
        """``{"header": json str, "tensors": {name: cpu tensor}}`` (absent fields are left out)."""
        return {"header": self.header(), "tensors": self._tensors(lambda t: t.detach().cpu().clone())}

    @classmethod
    def from_state(cls, state: dict, source: str = "<state>") -> MeshScene:
        """Inverse of :meth:`to_state` (the scene lands on the device of the stored ``vertices``). States written
        before shading normals existed (no ``normals`` / ``normal_faces`` tensors) load without them.

        Raises ``ValueError`` naming ``source`` for a state that is not a mesh scene or has invalid fields.
        """
        try:
            header = json.loads(state["header"])
            kind = header.get("kind")
        except (KeyError, TypeError, AttributeError, json.JSONDecodeError) as err:
            raise ValueError(f"{source}: not a recon mesh scene state ({type(err).__name__}: {err})") from err
        if kind != KIND:
            raise ValueError(f"{source}: scene kind is {kind!r}, expected {KIND!r}")
        try:
            tensors = state["tensors"]
            vertices, faces = tensors["vertices"], tensors["faces"]
        except (KeyError, TypeError) as err:
            raise ValueError(f"{source}: mesh scene state without {err} tensors") from err
        if int(header.get("version", 0)) > VERSION:
            raise ValueError(f"{source}: mesh scene version {header.get('version')} is newer than supported {VERSION}")
        g = tensors.get
        fac = {k: g(k) for k in ("base_color_factor", "roughness_factor", "metallic_factor") if g(k) is not None}
        material = MeshMaterial(base_color=g("base_color"), roughness_metallic=g("roughness_metallic"),
                                normal_map=g("normal_map"), **{k: _as_factor(v) for k, v in fac.items()})
        try:
            scene = cls(vertices, faces, uvs=g("uvs"), uv_faces=g("uv_faces"), vertex_colors=g("vertex_colors"),
                        material=material, name=str(header.get("name", "mesh")), normals=g("normals"),
                        normal_faces=g("normal_faces"))
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from err
        return scene.to(vertices.device)


# ----------------------------------------------------------------------------------------------- topology

@dataclass(frozen=True)
class MeshReport:
    """Topology statistics of a mesh (see :func:`mesh_report`)."""

    num_vertices: int
    num_faces: int
    num_edges: int
    boundary_edges: int  # edges used by exactly one face
    non_manifold_edges: int  # edges used by more than two faces
    degenerate_faces: int  # repeated vertex index or zero area
    duplicate_faces: int  # faces on the same vertex set as an earlier face (any order)
    components: int  # connected components of the faces (sharing a vertex connects)
    unreferenced_vertices: int

    @property
    def is_edge_manifold(self) -> bool:
        return self.non_manifold_edges == 0

    @property
    def is_watertight(self) -> bool:
        return self.boundary_edges == 0 and self.non_manifold_edges == 0


def mesh_report(scene: MeshScene) -> MeshReport:
    """Count boundary / non-manifold edges, degenerate and duplicate faces, components of ``scene``."""
    v = scene.vertices.detach().cpu().double().numpy()
    f = scene.faces.cpu().numpy()
    edges = np.sort(np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]]), axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True) if len(edges) else (None, np.zeros(0, np.int64))
    dup = len(f) - len(np.unique(np.sort(f, axis=1), axis=0)) if len(f) else 0
    used = np.zeros(len(v), bool)
    used[f.reshape(-1)] = True
    return MeshReport(num_vertices=len(v), num_faces=len(f), num_edges=len(counts),
                      boundary_edges=int((counts == 1).sum()), non_manifold_edges=int((counts > 2).sum()),
                      degenerate_faces=int(degenerate_face_mask(v, f).sum()), duplicate_faces=int(dup),
                      components=_count_components(len(v), f), unreferenced_vertices=int((~used).sum()))


def degenerate_face_mask(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """``[F]`` bool: faces with a repeated vertex index or zero area.

    Zero area means ``|cross| <= 1e-12 * (longest edge)^2`` in float64 (sine of the largest angle's
    complement below 1e-12): only faces that are degenerate up to rounding, never thin but valid slivers.
    """
    if len(faces) == 0:
        return np.zeros(0, bool)
    repeated = (faces[:, 0] == faces[:, 1]) | (faces[:, 1] == faces[:, 2]) | (faces[:, 2] == faces[:, 0])
    p = np.asarray(vertices, np.float64)[faces]
    e0, e1, e2 = p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], p[:, 2] - p[:, 1]
    cross = np.linalg.norm(np.cross(e0, e1), axis=1)
    longest = np.max([np.einsum("ij,ij->i", e, e) for e in (e0, e1, e2)], axis=0)
    return repeated | (cross <= 1e-12 * longest)


def _count_components(num_vertices: int, faces: np.ndarray) -> int:
    """Connected components of the faces: union-find by min-label hooking and pointer jumping (numpy)."""
    if len(faces) == 0:
        return 0
    parent = np.arange(num_vertices)
    a = np.concatenate([faces[:, 0], faces[:, 1]])
    b = np.concatenate([faces[:, 1], faces[:, 2]])
    while True:
        pa, pb = parent[a], parent[b]
        diff = pa != pb
        if not diff.any():
            break
        np.minimum.at(parent, np.maximum(pa, pb)[diff], np.minimum(pa, pb)[diff])
        while True:  # compress until every vertex points at its root
            nxt = parent[parent]
            if np.array_equal(nxt, parent):
                break
            parent = nxt
    return len(np.unique(parent[faces.reshape(-1)]))


# ----------------------------------------------------------------------------------------------- helpers

def _shape(t) -> str:
    return "None" if t is None else str(tuple(t.shape))


def _float_tensor(name: str, value) -> Tensor:
    t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    if not t.is_floating_point():
        raise ValueError(f"MeshScene.{name} must be a floating point tensor, got dtype {t.dtype}")
    return t.to(torch.float32).clone().contiguous()


def _index_tensor(name: str, value) -> Tensor:
    t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"MeshScene.{name} must be an integer tensor [F, 3], got dtype {t.dtype}")
    return t.to(torch.int64).clone().contiguous()


def _unit_rows(t: Tensor) -> Tensor:
    """Rows of ``[N, 3]`` scaled to unit length; rows shorter than ``_MIN_NORMAL_LENGTH`` (and any other shape)
    are left as they are for :meth:`MeshScene.validate` to report.

    Rows already unit to float32 rounding (``|length - 1| <= 2e-7``; a float32-rounded unit vector is within
    ``sqrt(3) 2^-24 ~ 1.03e-7``) are kept bit for bit: renormalizing one can move it by an ulp, and a save / load
    or state round trip must be exact.
    """
    if t.ndim != 2 or t.shape[1] != 3:
        return t
    t64 = t.double()  # float64 division: unit length to float32 rounding
    length = torch.linalg.vector_norm(t64, dim=1, keepdim=True)
    redo = (length >= _MIN_NORMAL_LENGTH) & ((length - 1).abs() > 2e-7)
    return torch.where(redo, t64 / length.clamp_min(_MIN_NORMAL_LENGTH), t64).to(torch.float32).contiguous()


def _as_factor(t):
    return tuple(float(x) for x in t.reshape(-1).tolist()) if t.ndim else float(t)


def _check_shape(name: str, t: Tensor, expected: str, ok: bool) -> None:
    if not ok:
        raise ValueError(f"MeshScene.{name} must have shape {expected}, got {tuple(t.shape)}")


def _check_float(name: str, t: Tensor) -> None:
    if t.dtype != torch.float32:
        raise ValueError(f"MeshScene.{name} must be float32, got {t.dtype}")
    bad = int((~torch.isfinite(t.detach())).sum())
    if bad:
        raise ValueError(f"MeshScene.{name} must be finite, got {bad} NaN/Inf values")


def _check_indices(name: str, t: Tensor, n: int, letter: str) -> None:
    _check_shape(name, t, "[F, 3]", t.ndim == 2 and t.shape[1] == 3)
    if t.dtype != torch.int64:
        raise ValueError(f"MeshScene.{name} must be int64, got {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= n):
        raise ValueError(f"MeshScene.{name} must index [0, {letter}={n}), got values in "
                         f"[{int(t.min())}, {int(t.max())}]")


def vertex_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Area-weighted unit vertex normals ``[V, 3]`` of ``vertices [V, 3]``, ``faces [F, 3]`` (any int dtype);
    differentiable, 0 for vertices without faces."""
    f = faces.long()
    p = vertices[f]  # [F, 3, 3]
    cross = torch.linalg.cross(p[:, 1] - p[:, 0], p[:, 2] - p[:, 0], dim=-1)  # |cross| = 2 area: area weights
    acc = torch.zeros_like(vertices)
    for k in range(3):
        acc = acc.index_add(0, f[:, k], cross)
    return _normalize(acc)


def _normalize(x: Tensor) -> Tensor:
    # rsqrt of a clamped squared norm: finite values and gradients even for zero vectors. The floor must keep
    # rsqrt's own derivative (-0.5 s^-1.5) finite in float32: 1e-30 gave 1e45 = inf, and inf * 0 = NaN.
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True).clamp_min(1e-20))
