"""Load and save triangle meshes (:class:`~recon.scenes.mesh.MeshScene`) as OBJ (+ MTL + PNG), PLY and GLB.

Reading goes through trimesh (``process=False``; a ``trimesh.Scene`` is flattened with its node transforms
applied), framed by recon's own checks, because trimesh silently ignores or crashes on several broken inputs.

**Topology on load.** File formats split vertices at UV seams (and normal creases); :func:`load_mesh` merges
vertices with bit-identical float32 positions back, so ``faces`` index unique positions (watertight where the
surface is) while ``uv_faces`` keep the seams. UVs are deduplicated by value and ordered by first use in
``uv_faces``; positions keep the file's order of first occurrence. Vertices no face uses are dropped.

**Shading normals.** Normals the file stores (glTF ``NORMAL``, OBJ ``vn`` used as ``f v/vt/vn``, PLY
``nx ny nz``) are kept face-varying in ``normals`` / ``normal_faces``, deduplicated by value and ordered by first
use like the uvs (rotated by the inverse transpose of a glTF node transform). A file without stored normals (or an
OBJ where only some faces name one) loads with ``normals`` None: recon never invents them.

**Repairs on load** (each reported by one :class:`MeshWarning` with its count):

* degenerate faces (a repeated vertex after merging, or zero area, see
  :func:`~recon.scenes.mesh.degenerate_face_mask`) are removed;
* duplicate faces (the same three vertices in any order) are removed, keeping the first;
* non-manifold edges (shared by more than two faces) are *kept* (the rasterizer does not need manifoldness)
  and only reported; :func:`~recon.scenes.mesh.mesh_report` gives all the counts.

**Errors.** Missing file: ``FileNotFoundError``. Unparseable file, no triangles, NaN/Inf positions (with their
count), face indices out of range (checked on the raw OBJ face lines and on the arrays trimesh returns), a missing
``mtllib`` or a missing texture named in an MTL (``map_Kd``, ``map_Pr``, ``map_Pm``, ``norm``), several textured
materials, a glTF ``metallicRoughnessTexture`` with fewer than 3 channels (glTF reads roughness from G and
metallic from B), zero-length stored normals: ``ValueError`` naming the file.

**Writing** (atomic, :mod:`recon.fileio`). OBJ and GLB store one uv and one normal per vertex, so
:func:`save_mesh` splits the mesh at UV seams and normal creases (:func:`split_at_seams`): one written vertex
per distinct (vertex, uv, normal) corner, ordered by vertex, then uv, then normal (without normals this is
:func:`split_at_uv_seams`'s (vertex, uv) layout); :func:`export_vertex_count` gives that count, which trimesh
finds again on reload. OBJ writes normals as ``vn`` with ``f v/vt/vn``, GLB as ``NORMAL``. PLY keeps the
unsplit topology and drops the normals (one warning). Only vertices used by a face are written.

**Colors.** recon stores linear values. Base-color textures and OBJ / PLY vertex colors are sRGB in files; glTF
``COLOR_0`` is linear by the glTF spec (written and read back as float32); roughness, metallic and normal maps
are linear. A textured mesh's vertex colors are not written (one warning). OBJ maps *replace* the MTL scalars (``Kd``, ``Pr``, ``Pm``) on load, so on OBJ export
non-unit factors are baked into the maps. A textured mesh written as PLY gets per-vertex colors: the bilinear
(wrapping) sample of ``base_color * factor`` at the vertex's uvs, averaged over its seam copies.
"""

from __future__ import annotations

import io
import json
import re
import struct
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from recon.color import linear_to_srgb, srgb_to_linear
from recon.data.io import read_image
from recon.fileio import atomic_write_bytes, atomic_write_text
from recon.scenes.mesh import MeshMaterial, MeshScene, degenerate_face_mask, mesh_report

__all__ = ["MESH_FORMATS", "MeshWarning", "export_vertex_count", "load_mesh", "save_mesh", "split_at_seams",
           "split_at_uv_seams"]

MESH_FORMATS = ("obj", "ply", "glb")
READ_SUFFIXES = (".obj", ".ply", ".glb", ".gltf")
_MAPS = ("map_kd", "map_pr", "map_pm", "norm")  # MTL texture statements recon reads
_MAP_OPTIONS = {"-blendu": 1, "-blendv": 1, "-bm": 1, "-boost": 1, "-cc": 1, "-clamp": 1, "-imfchan": 1,
                "-mm": 2, "-o": 3, "-s": 3, "-t": 3, "-texres": 1, "-type": 1}
_NUMBER = re.compile(r"[-+]?[\d.]+(e[-+]?\d+)?", re.IGNORECASE)


class MeshWarning(UserWarning):
    """A repair or a loss of information while loading or saving a mesh."""


# =============================================================================================== loading

def load_mesh(path, *, name: str | None = None) -> MeshScene:
    """Load ``.obj`` / ``.ply`` / ``.glb`` / ``.gltf`` as a :class:`MeshScene` (CPU) named ``name`` or the stem.

    See the module docstring for merging, repairs and errors. Raises ``FileNotFoundError`` / ``ValueError``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mesh file not found: {path}")
    suffix = path.suffix.lower()
    if suffix not in READ_SUFFIXES:
        raise ValueError(f"{path}: unsupported mesh file type {suffix!r}; expected one of {list(READ_SUFFIXES)}")
    obj = _check_obj(path) if suffix == ".obj" else None
    stores_normals = obj["normals"] if obj is not None else _file_stores_normals(path)
    parts = [_part(path, g, t, None if obj is None else obj["materials"], stores_normals)
             for g, t in _read_trimesh(path)]
    pos = np.concatenate([p["pos"] for p in parts])
    bad = int((~np.isfinite(pos).all(1)).sum())
    if bad:
        raise ValueError(f"{path}: {bad} of {len(pos)} vertices have NaN or Inf coordinates")
    material, uv, colors, nrm = _merge_parts(path, parts)
    offsets = np.cumsum([0] + [len(p["pos"]) for p in parts])[:-1]
    split_faces = np.concatenate([p["faces"] + o for p, o in zip(parts, offsets)])

    keep, vmap = _unique_rows(pos.astype(np.float32))  # merge the format's seam splits back
    faces, positions = vmap[split_faces], pos[keep].astype(np.float32)
    colors = None if colors is None else colors[keep]
    if obj is not None and obj["colors"] is not None:  # trimesh drops them beside a material, else keeps 8 bits
        raw = _lookup_rows(positions, *obj["colors"])
        colors = colors if raw is None else raw
    uv_faces, uvs = _face_varying(split_faces, None if uv is None else
                                  np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1))  # trimesh's v-up -> recon's v-down
    normal_faces, normals = _face_varying(split_faces, nrm)
    faces, (uv_faces, normal_faces) = _repair(path, positions, faces, (uv_faces, normal_faces))
    used = np.unique(faces)  # ascending: keeps the order of first occurrence
    remap = np.zeros(len(positions), np.int64)
    remap[used] = np.arange(len(used))
    faces, positions = remap[faces], positions[used]
    colors = None if colors is None else colors[used]
    uv_faces, uvs = _by_first_use(uv_faces, uvs)
    normal_faces, normals = _by_first_use(normal_faces, normals)
    try:
        scene = MeshScene(positions, faces, uvs=uvs, uv_faces=uv_faces, vertex_colors=colors, material=material,
                          name=path.stem if name is None else name, normals=normals, normal_faces=normal_faces)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    report = mesh_report(scene)
    if report.non_manifold_edges:
        warnings.warn(f"{path}: {report.non_manifold_edges} non-manifold edges (shared by more than 2 faces); "
                      "kept as they are", MeshWarning, stacklevel=2)
    return scene


def _face_varying(split_faces: np.ndarray, values: np.ndarray | None):
    """``(index_faces [F, 3], unique float32 values)`` of per-split-vertex ``values``, deduplicated by value."""
    if values is None:
        return None, None
    v32 = np.asarray(values, np.float32)
    keep, inverse = _unique_rows(v32)
    return inverse[split_faces], v32[keep]


def _by_first_use(index_faces: np.ndarray | None, values: np.ndarray | None):
    """Drop the values no face uses and order the rest by first use in ``index_faces``."""
    if index_faces is None:
        return None, None
    ids, first = np.unique(index_faces.reshape(-1), return_index=True)
    order = ids[np.argsort(first)]
    remap = np.zeros(len(values), np.int64)
    remap[order] = np.arange(len(order))
    return remap[index_faces], values[order]


def _read_trimesh(path: Path) -> list:
    import trimesh

    try:
        loaded = trimesh.load(str(path), process=False)
        if isinstance(loaded, trimesh.Scene):  # not Scene.dump(): its copies lose glTF vertex attributes
            geoms = [(loaded.geometry[g], t) for t, g in (loaded.graph[n] for n in loaded.graph.nodes_geometry)]
        else:
            geoms = [(loaded, None)]
    except Exception as err:  # trimesh raises many exception types on malformed input
        raise ValueError(f"{path}: cannot parse mesh file ({type(err).__name__}: {err})") from err
    meshes = [(g, t) for g, t in geoms if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    if not meshes:
        raise ValueError(f"{path}: no triangles found (empty or unparseable file, or a point cloud such as a 3DGS "
                         "PLY; load those with recon.export.scenes.load_scene_file)")
    return meshes


def _part(path: Path, geom, transform: np.ndarray | None, mtl: dict | None, stores_normals: bool) -> dict:
    """One trimesh geometry (placed by its scene ``transform [4, 4]``) as plain arrays: positions, faces, trimesh
    uvs, linear vertex colors, the file's normals (or None), material."""
    pos = np.asarray(geom.vertices, np.float64)
    faces = np.asarray(geom.faces, np.int64)
    normals = _stored_normals(geom, len(pos)) if stores_normals else None
    if transform is not None:
        transform = np.asarray(transform, np.float64)
        pos = pos @ transform[:3, :3].T + transform[:3, 3]
        if normals is not None and not np.array_equal(transform[:3, :3], np.eye(3)):
            normals = normals @ np.linalg.inv(transform[:3, :3])  # n' = M^-T n (rows: n @ M^-1); MeshScene renormalizes
        if np.linalg.det(transform[:3, :3]) < 0:  # a mirroring transform flips the winding: flip it back
            faces = faces[:, ::-1].copy()
    if faces.size and (faces.min() < 0 or faces.max() >= len(pos)):
        n_bad = int(((faces < 0) | (faces >= len(pos))).any(1).sum())
        raise ValueError(f"{path}: {n_bad} faces index vertices out of range [0, {len(pos)}) "
                         f"(indices span [{faces.min()}, {faces.max()}])")
    visual = geom.visual
    uv = getattr(visual, "uv", None)
    colors = None
    attrs = getattr(visual, "vertex_attributes", None)  # trimesh keeps glTF COLOR_0 here beside a material
    gltf_colors = attrs["color"] if attrs is not None and "color" in attrs else None
    if gltf_colors is not None and len(gltf_colors) == len(pos):
        colors = np.asarray(gltf_colors)[:, :3]
        colors = colors / np.iinfo(colors.dtype).max if colors.dtype.kind in "ui" else colors
    elif getattr(visual, "kind", None) == "vertex":
        colors = np.asarray(visual.vertex_colors)[:, :3] / 255.0
        if path.suffix.lower() not in (".glb", ".gltf"):  # glTF COLOR_0 is linear; OBJ / PLY colors are sRGB
            colors = srgb_to_linear(colors)
    elif getattr(visual, "kind", None) == "face":
        warnings.warn(f"{path}: face colors are not supported and were dropped", MeshWarning, stacklevel=3)
    colors = None if colors is None else np.asarray(colors, np.float32)
    tm_mat = getattr(visual, "material", None)
    if mtl is not None:
        material = _obj_material(mtl.get(getattr(tm_mat, "name", None), {}))
    else:
        material = _trimesh_material(tm_mat, path)
    return {"pos": pos, "faces": faces, "uv": None if uv is None else np.asarray(uv, np.float64),
            "colors": colors, "normals": normals, "material": material}


def _stored_normals(geom, count: int) -> np.ndarray | None:
    """``[count, 3]`` float64 normals trimesh read from the file, or None.

    With ``process=False`` trimesh passes a file's normals to the constructor, which keeps them in the geometry's
    cache; ``geom.vertex_normals`` would *compute* them when absent, so only the cache is consulted (``in``
    verifies the cache against the current vertices and faces first). The caller also checks that the file
    declares normals at all (:func:`_file_stores_normals`), so a trimesh that fills the cache on load could not
    make recon invent normals either.
    """
    cache = geom._cache
    if "vertex_normals" not in cache:
        return None
    normals = np.asarray(cache["vertex_normals"], np.float64)
    return normals if normals.shape == (count, 3) else None


def _file_stores_normals(path: Path) -> bool:
    """Whether a glTF / PLY file declares vertex normals (a primitive's ``NORMAL``; a vertex property ``nx``)."""
    if path.suffix.lower() in (".glb", ".gltf"):
        try:
            return any("NORMAL" in prim.get("attributes", {}) for mesh in (_gltf_json(path) or {}).get("meshes", [])
                       for prim in mesh.get("primitives", []))
        except (AttributeError, TypeError):  # malformed JSON structure: trimesh's parse reports it
            return False
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    return end >= 0 and re.search(rb"^property\s+\S+\s+nx\s*$", head[:end], re.MULTILINE) is not None


def _merge_parts(path: Path, parts: list[dict]):
    """One material, uv array, color array and normal array for all parts (recon meshes have one material)."""
    normals = None
    if all(p["normals"] is not None for p in parts):
        normals = np.concatenate([p["normals"] for p in parts])
    elif any(p["normals"] is not None for p in parts):
        warnings.warn(f"{path}: only some parts have normals; normals dropped", MeshWarning, stacklevel=3)
    if len(parts) == 1:
        p = parts[0]
        uv = p["uv"] if p["uv"] is not None and len(p["uv"]) == len(p["pos"]) else None
        if uv is None and p["material"].base_color is not None:
            raise ValueError(f"{path}: the material has a texture but the mesh has no texture coordinates")
        return p["material"], uv, p["colors"], normals
    textured = {_material_key(p["material"]) for p in parts if p["material"].base_color is not None}
    if len(textured) > 1:
        raise ValueError(f"{path}: {len(textured)} different textured materials; a recon mesh has one material "
                         "(bake them into one texture atlas first)")
    with_tex = [p for p in parts if p["material"].base_color is not None]
    material = (with_tex or parts)[0]["material"]
    if len({_material_key(p["material"]) for p in parts}) > 1 and not with_tex:
        warnings.warn(f"{path}: several untextured materials; using the first one's factors", MeshWarning,
                      stacklevel=3)
    has_uv = [p["uv"] is not None and len(p["uv"]) == len(p["pos"]) for p in parts]
    uv = None
    if all(has_uv):
        uv = np.concatenate([p["uv"] for p in parts])
    elif any(has_uv):
        if with_tex:
            raise ValueError(f"{path}: some parts of the textured mesh have no texture coordinates")
        warnings.warn(f"{path}: only some parts have texture coordinates; uvs dropped", MeshWarning, stacklevel=3)
    if uv is None and material.base_color is not None:
        raise ValueError(f"{path}: the material has a texture but the mesh has no texture coordinates")
    colors = None
    if all(p["colors"] is not None for p in parts):
        colors = np.concatenate([p["colors"] for p in parts])
    elif any(p["colors"] is not None for p in parts):
        warnings.warn(f"{path}: only some parts have vertex colors; vertex colors dropped", MeshWarning, stacklevel=3)
    return material, uv, colors, normals


def _material_key(m: MeshMaterial) -> tuple:
    tex = tuple(None if t is None else hash(t.numpy().tobytes()) for t in (m.base_color, m.roughness_metallic,
                                                                           m.normal_map))
    return (tex, m.base_color_factor, m.roughness_factor, m.metallic_factor)


def _repair(path: Path, positions: np.ndarray, faces: np.ndarray, extra: tuple):
    """Remove degenerate and duplicate faces (and the same rows of the ``extra`` face arrays, each ``[F, 3]`` or
    None), one warning per kind. Returns ``(faces, extra)``."""
    degenerate = degenerate_face_mask(positions, faces)
    if degenerate.any():
        warnings.warn(f"{path}: removed {int(degenerate.sum())} degenerate faces (repeated vertex or zero area)",
                      MeshWarning, stacklevel=3)
        faces = faces[~degenerate]
        extra = tuple(None if x is None else x[~degenerate] for x in extra)
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    if len(first) < len(faces):
        keep = np.sort(first)
        warnings.warn(f"{path}: removed {len(faces) - len(keep)} duplicate faces (same three vertices as an "
                      "earlier face)", MeshWarning, stacklevel=3)
        faces = faces[keep]
        extra = tuple(None if x is None else x[keep] for x in extra)
    return faces, extra


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(keep, inverse)``: the first index of each distinct row in order of first occurrence, and for every row
    the position of its distinct row in ``keep``. ``-0.0`` and ``0.0`` are the same row."""
    _, first, inverse = np.unique(rows + 0.0, axis=0, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return first[order], rank[inverse.reshape(-1)]


def _lookup_rows(keys: np.ndarray, table_keys: np.ndarray, table_values: np.ndarray) -> np.ndarray | None:
    """``table_values`` at the rows of ``table_keys`` equal to each row of ``keys``; None if one is missing."""
    _, inverse = _unique_rows(np.concatenate([table_keys, keys]))
    table = np.full((inverse.max() + 1, table_values.shape[1]), np.nan, np.float32)
    table[inverse[: len(table_keys)]] = table_values
    out = table[inverse[len(table_keys):]]
    return None if np.isnan(out).any() else out


# ----------------------------------------------------------------------------------------------- materials

def _trimesh_material(mat, path: Path) -> MeshMaterial:
    """A trimesh material (glTF PBR, or a simple material from PLY / OBJ-like sources) as a MeshMaterial."""
    from trimesh.visual.material import PBRMaterial

    if mat is None:
        return MeshMaterial()
    if not isinstance(mat, PBRMaterial):  # SimpleMaterial: only its image is meaningful (diffuse is a default)
        img = getattr(mat, "image", None)
        return MeshMaterial(base_color=None if img is None else _tensor(srgb_to_linear(_rgb(_pil_float(img)))))
    base = None if mat.baseColorTexture is None else srgb_to_linear(_rgb(_pil_float(mat.baseColorTexture)))
    rm = None
    if mat.metallicRoughnessTexture is not None:
        rm = _pil_float(mat.metallicRoughnessTexture)
        if rm.shape[-1] < 3:
            raise ValueError(f"{path}: metallicRoughnessTexture has {rm.shape[-1]} channel(s) "
                             f"({mat.metallicRoughnessTexture.mode} image); glTF reads roughness from G and metallic "
                             "from B, so it needs an RGB or RGBA image")
        rm = rm[..., 1:3]
    normal = None if mat.normalTexture is None else _rgb(_pil_float(mat.normalTexture)) * 2.0 - 1.0
    factor = (1.0, 1.0, 1.0, 1.0) if mat.baseColorFactor is None else tuple(np.asarray(mat.baseColorFactor) / 255)
    rough = 1.0 if mat.roughnessFactor is None else float(mat.roughnessFactor)
    metal = 1.0 if mat.metallicFactor is None else float(mat.metallicFactor)  # glTF defaults
    exact = _gltf_single_material(path)  # trimesh keeps baseColorFactor in 8 bits; the file has floats
    if exact is not None:
        factor = tuple(exact.get("baseColorFactor", (1.0, 1.0, 1.0, 1.0)))
        rough, metal = exact.get("roughnessFactor", 1.0), exact.get("metallicFactor", 1.0)
    return MeshMaterial(base_color=_tensor(base), roughness_metallic=_tensor(rm), normal_map=_tensor(normal),
                        base_color_factor=tuple(float(x) for x in factor), roughness_factor=float(rough),
                        metallic_factor=float(metal))


def _gltf_single_material(path: Path) -> dict | None:
    """``pbrMetallicRoughness`` of a glTF file's only material, or None (several materials, or unreadable)."""
    materials = (_gltf_json(path) or {}).get("materials", [])
    return materials[0].get("pbrMetallicRoughness", {}) if len(materials) == 1 else None


def _gltf_json(path: Path) -> dict | None:
    """The JSON of a ``.gltf`` / ``.glb`` file (the GLB's first chunk), or None when unreadable."""
    try:
        raw = path.read_bytes()
        if path.suffix.lower() == ".glb":
            raw = raw[20:20 + struct.unpack_from("<I", raw, 12)[0]]
        gltf = json.loads(raw)
    except (OSError, ValueError, struct.error):
        return None
    return gltf if isinstance(gltf, dict) else None


def _obj_material(m: dict) -> MeshMaterial:
    """A material parsed by :func:`_parse_mtl`. Maps replace the scalars (Kd, Pr, Pm), as most OBJ readers do."""
    base = None if "map_kd" not in m else srgb_to_linear(_rgb(read_image(m["map_kd"])))
    rgb = (1.0, 1.0, 1.0) if base is not None else tuple(m.get("kd", (1.0, 1.0, 1.0)))
    rough = None if "map_pr" not in m else read_image(m["map_pr"])[..., 0]
    metal = None if "map_pm" not in m else read_image(m["map_pm"])[..., 0]
    rm = None
    if rough is not None or metal is not None:
        shape = (rough if rough is not None else metal).shape
        if rough is not None and metal is not None and metal.shape != shape:
            metal = np.asarray(Image.fromarray(metal.astype(np.float32)).resize(shape[::-1], Image.BILINEAR))
        rm = np.stack([np.ones(shape) if rough is None else rough, np.ones(shape) if metal is None else metal], -1)
    normal = None if "norm" not in m else _rgb(read_image(m["norm"])) * 2.0 - 1.0
    return MeshMaterial(base_color=_tensor(base), roughness_metallic=_tensor(rm), normal_map=_tensor(normal),
                        base_color_factor=(*(float(x) for x in rgb), float(m.get("d", 1.0))),
                        roughness_factor=1.0 if rough is not None else float(m.get("pr", 1.0)),
                        metallic_factor=1.0 if metal is not None else float(m.get("pm", 0.0)))


def _pil_float(img: Image.Image) -> np.ndarray:
    """``[H, W, C]`` float32 in [0, 1], as stored (8 or 16 bits)."""
    if img.mode.startswith("I"):  # 16-bit (or 32-bit integer) gray
        return (np.asarray(img).astype(np.float64) / 65535.0).clip(0, 1).astype(np.float32)[..., None]
    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        img = img.convert("RGBA")
    arr = np.asarray(img).astype(np.float32) / 255.0
    return arr[..., None] if arr.ndim == 2 else arr


def _rgb(arr: np.ndarray) -> np.ndarray:
    """The color channels of ``[H, W, C]``: gray is repeated, alpha dropped."""
    return np.repeat(arr[..., :1], 3, -1) if arr.shape[-1] < 3 else arr[..., :3]


def _tensor(arr) -> torch.Tensor | None:
    return None if arr is None else torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))


# ----------------------------------------------------------------------------------------------- OBJ checks

def _check_obj(path: Path) -> dict:
    """Check the raw face indices and the MTL files of an OBJ. Returns ``{"materials": {name: statements},
    "colors": (positions [n, 3], linear colors [n, 3]) of ``v x y z r g b`` lines, or None, "normals": whether a
    face names a ``vn``}``."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    counts, largest = [0, 0, 0], [0, 0, 0]  # v, vt, vn: defined so far, largest 1-based reference
    kinds = ("vertex", "texture coordinate", "normal")
    mtllibs, colored = [], []
    for line_no, line in enumerate(text.splitlines(), 1):
        tok = line.split()
        if not tok:
            continue
        if tok[0] in ("v", "vt", "vn"):
            counts[("v", "vt", "vn").index(tok[0])] += 1
            if tok[0] == "v" and len(tok) >= 7:
                colored.append(tok[1:7])
        elif tok[0] == "f":
            try:
                refs = [[int(x) if x else None for x in t.split("/")[:3]] for t in tok[1:]]
            except ValueError:
                raise ValueError(f"{path}:{line_no}: malformed face line {line.strip()!r}") from None
            for k, (count, what) in enumerate(zip(counts, kinds)):
                for ref in (r[k] for r in refs if len(r) > k and r[k] is not None):
                    if ref == 0 or count + ref < 0:
                        raise ValueError(f"{path}:{line_no}: face references {what} {ref}, out of range "
                                         f"(1-based; {count} defined so far)")
                    largest[k] = max(largest[k], ref, 1)
        elif tok[0] == "mtllib":
            mtllibs.append(line.strip()[6:].strip())
    for ref, count, what in zip(largest, counts, kinds):
        if ref > count:
            raise ValueError(f"{path}: face indices out of range: a face references {what} {ref} but the file "
                             f"defines {count}")
    materials: dict[str, dict] = {}
    for lib in mtllibs:
        candidates = [lib] if (path.parent / lib).is_file() else lib.split()
        for name in candidates:
            mtl_path = path.parent / name.replace("\\", "/")
            if not mtl_path.is_file():
                raise ValueError(f"{path}: mtllib {name!r} not found (looked for {mtl_path})")
            materials.update(_parse_mtl(mtl_path))
    colors = None
    if colored and len(colored) == counts[0]:
        try:
            raw = np.array(colored, dtype=np.float64)
            colors = (raw[:, :3].astype(np.float32), srgb_to_linear(np.clip(raw[:, 3:], 0, 1)).astype(np.float32))
        except ValueError:
            colors = None  # unparseable numbers: trimesh's own reading decides
    return {"materials": materials, "colors": colors, "normals": largest[2] > 0}


def _parse_mtl(mtl_path: Path) -> dict[str, dict]:
    """The statements recon uses from an MTL file; every texture it names must exist."""
    materials: dict[str, dict] = {}
    current = None
    for line_no, line in enumerate(mtl_path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tok = line.split()
        if not tok or tok[0].startswith("#"):
            continue
        key = tok[0].lower()
        if key == "newmtl":
            current = materials.setdefault(" ".join(tok[1:]), {})
            continue
        if current is None or key not in ("kd", "d", "tr", "pr", "pm", *_MAPS):
            continue
        if key in _MAPS:
            image = mtl_path.parent / _map_file(tok[1:])
            if not image.is_file():
                raise ValueError(f"{mtl_path}: {tok[0]} references a missing image {image}")
            current[key] = image
            continue
        try:
            values = [float(x) for x in tok[1:4 if key == "kd" else 2]]
        except ValueError:
            raise ValueError(f"{mtl_path}:{line_no}: malformed line {line.strip()!r}") from None
        if key == "kd":
            current["kd"] = (values * 3)[:3] if len(values) == 1 else values
        elif values:
            current["d" if key == "tr" else key] = 1.0 - values[0] if key == "tr" else values[0]
    return materials


def _map_file(tokens: list[str]) -> str:
    """The file name of a ``map_*`` statement, after its options (``-s 1 1 1``, ``-bm 0.5``, ``-clamp on``)."""
    i = 0
    while i < len(tokens) - 1 and tokens[i].lower() in _MAP_OPTIONS:
        n, i = _MAP_OPTIONS[tokens[i].lower()], i + 1
        for _ in range(n):  # -o / -s / -t take 1 to 3 numbers; one-argument options take any token
            if i < len(tokens) - 1 and (n == 1 or _NUMBER.fullmatch(tokens[i])):
                i += 1
    return " ".join(tokens[i:]).replace("\\", "/")


# =============================================================================================== saving

def split_at_uv_seams(faces: np.ndarray, uv_faces: np.ndarray | None):
    """The per-vertex layout OBJ and GLB need for a mesh without normals: one written vertex per distinct
    (vertex, uv) corner pair (:func:`split_at_seams` without ``normal_faces``).

    Args: ``faces [F, 3]``, ``uv_faces [F, 3]`` or None (then the written vertices are the used vertices).
    Returns ``(vertex_index [N], uv_index [N] or None, tri [F, 3])`` (int64 numpy): written vertex ``i`` is
    vertex ``vertex_index[i]`` with uv ``uv_index[i]``; ``tri`` indexes the written vertices. Ordered by vertex,
    then uv.
    """
    vi, ui, _, tri = split_at_seams(faces, uv_faces)
    return vi, ui, tri


def split_at_seams(faces: np.ndarray, uv_faces: np.ndarray | None = None, normal_faces: np.ndarray | None = None):
    """The per-vertex layout OBJ and GLB need: one written vertex per distinct (vertex, uv, normal) corner.

    Args: ``faces [F, 3]``; ``uv_faces [F, 3]`` and ``normal_faces [F, 3]``, each or both None (then the
    written vertices are the used vertices). Returns ``(vertex_index [N], uv_index [N] or None,
    normal_index [N] or None, tri [F, 3])`` (int64 numpy): written vertex ``i`` is vertex ``vertex_index[i]``
    with uv ``uv_index[i]`` and normal ``normal_index[i]``; ``tri`` indexes the written vertices. Ordered by
    vertex, then uv, then normal.
    """
    faces = np.asarray(faces, np.int64)
    columns = [faces] + [np.asarray(x, np.int64) for x in (uv_faces, normal_faces) if x is not None]
    strides = [int(c.max()) + 1 if c.size else 1 for c in columns]
    if int(np.prod(np.array(strides, dtype=np.float64))) < 2**62:  # one int64 key per corner: a fast 1-D unique
        key = columns[0]
        for c, s in zip(columns[1:], strides[1:]):
            key = key * s + c
        keys, tri = np.unique(key, return_inverse=True)
        rows = []
        for s in reversed(strides[1:]):
            rows.append(keys % s)
            keys = keys // s
        rows = np.stack([keys, *reversed(rows)], 1)
    else:
        rows, tri = np.unique(np.stack([c.reshape(-1) for c in columns], 1), axis=0, return_inverse=True)
    rest = iter(rows.T[1:])
    ui = next(rest) if uv_faces is not None else None
    ni = next(rest) if normal_faces is not None else None
    return rows[:, 0], ui, ni, tri.reshape(faces.shape)


def export_vertex_count(scene: MeshScene, fmt: str = "obj") -> int:
    """How many vertices :func:`save_mesh` writes for ``fmt`` (and trimesh reads back with ``process=False``):
    the used vertices for PLY, one per distinct (vertex, uv, normal) corner for OBJ and GLB."""
    faces = scene.faces.cpu().numpy()
    if _check_fmt(fmt) == "ply":
        return len(np.unique(faces))
    extra = (None if t is None else t.cpu().numpy() for t in (scene.uv_faces, scene.normal_faces))
    return len(split_at_seams(faces, *extra)[0])


def save_mesh(scene: MeshScene, path, fmt: str | None = None) -> Path:
    """Write ``scene`` as ``fmt`` (``obj`` / ``ply`` / ``glb``; default: the suffix of ``path``), atomically.

    OBJ also writes ``<stem>.mtl`` and ``<stem>_basecolor.png`` / ``_roughness.png`` / ``_metallic.png`` /
    ``_normal.png`` for the textures present, beside ``path``. Returns ``path``. Raises ``ValueError`` for an
    unknown format or a scene without faces, ``TypeError`` for something that is not a MeshScene.
    """
    path = Path(path)
    fmt = _check_fmt(fmt or path.suffix.lstrip("."))
    if not isinstance(scene, MeshScene):
        raise TypeError(f"save_mesh needs a MeshScene, got {type(scene).__name__}")
    scene.validate()
    if scene.num_faces == 0:
        raise ValueError(f"cannot save {path}: the mesh has no faces")
    a = {k: v.detach().cpu().numpy() for k, v in scene.to_state()["tensors"].items()}
    a["name"] = re.sub(r"\s+", "_", scene.name.strip()) or "mesh"
    if "base_color" in a and a.pop("vertex_colors", None) is not None:
        warnings.warn(f"{path}: the mesh has a texture; its vertex colors are not written", MeshWarning, stacklevel=2)
    {"obj": _save_obj, "ply": _save_ply, "glb": _save_glb}[fmt](a, path)
    return path


def _check_fmt(fmt: str) -> str:
    fmt = str(fmt).lower().lstrip(".")
    if fmt not in MESH_FORMATS:
        raise ValueError(f"mesh format must be one of {list(MESH_FORMATS)}, got {fmt!r}")
    return fmt


def _save_obj(a: dict, path: Path) -> None:
    vi, ui, ni, tri = split_at_seams(a["faces"], a.get("uv_faces"), a.get("normal_faces"))
    factor = a["base_color_factor"]
    stem, mtl_lines = path.stem, [f"newmtl {a['name']}"]
    maps = {}
    if "base_color" in a:
        maps["map_Kd"] = ("basecolor", _srgb8(a["base_color"] * factor[:3]))
        mtl_lines.append("Kd 1 1 1")
    else:
        mtl_lines.append("Kd " + " ".join(f"{x:.9g}" for x in factor[:3]))
    mtl_lines.append(f"d {factor[3]:.9g}")
    if "roughness_metallic" in a:
        rm = a["roughness_metallic"] * np.array([a["roughness_factor"], a["metallic_factor"]])
        maps["map_Pr"], maps["map_Pm"] = ("roughness", _unorm8(rm[..., 0])), ("metallic", _unorm8(rm[..., 1]))
        mtl_lines += ["Pr 1", "Pm 1"]
    else:
        mtl_lines += [f"Pr {float(a['roughness_factor']):.9g}", f"Pm {float(a['metallic_factor']):.9g}"]
    if "normal_map" in a:
        maps["norm"] = ("normal", _unorm8((a["normal_map"] + 1.0) / 2.0))
    for key, (suffix, pixels) in maps.items():
        atomic_write_bytes(path.with_name(f"{stem}_{suffix}.png"), _png(pixels))
        mtl_lines.append(f"{key} {stem}_{suffix}.png")
    atomic_write_text(path.with_name(f"{stem}.mtl"), "# recon mesh material\n" + "\n".join(mtl_lines) + "\n")

    buf = io.BytesIO()
    buf.write(f"# recon mesh: {len(vi)} vertices, {len(tri)} faces\nmtllib {stem}.mtl\no {a['name']}\n".encode())
    pos = a["vertices"][vi].astype(np.float64)
    if "vertex_colors" in a:  # the common "v x y z r g b" extension, sRGB
        colors = linear_to_srgb(np.clip(a["vertex_colors"][vi].astype(np.float64), 0, 1))
        np.savetxt(buf, np.concatenate([pos, colors], 1), fmt="v %.9g %.9g %.9g %.6f %.6f %.6f")
    else:
        np.savetxt(buf, pos, fmt="v %.9g %.9g %.9g")  # 9 significant digits round-trip float32 exactly
    if ui is not None:
        uv = a["uvs"][ui].astype(np.float64)
        np.savetxt(buf, np.stack([uv[:, 0], 1.0 - uv[:, 1]], 1), fmt="vt %.17g %.17g")  # OBJ's v is up
    if ni is not None:
        np.savetxt(buf, a["normals"][ni].astype(np.float64), fmt="vn %.9g %.9g %.9g")
    buf.write(f"usemtl {a['name']}\n".encode())
    corner = {(False, False): "%d", (True, False): "%d/%d", (False, True): "%d//%d", (True, True): "%d/%d/%d"}
    corner = corner[(ui is not None, ni is not None)]
    np.savetxt(buf, np.repeat(tri + 1, corner.count("%"), axis=1), fmt=f"f {corner} {corner} {corner}")
    atomic_write_bytes(path, buf.getvalue())  # last, so a reader never sees an OBJ without its MTL


def _save_ply(a: dict, path: Path) -> None:
    import trimesh

    if "normals" in a:
        warnings.warn(f"{path}: PLY stores no face-varying normals; the shading normals are not written",
                      MeshWarning, stacklevel=3)
    used, tri = np.unique(a["faces"], return_inverse=True)
    factor = a["base_color_factor"][:3]
    colors = None
    if "base_color" in a:
        corner = _sample_bilinear(a["base_color"], a["uvs"][a["uv_faces"].reshape(-1)])
        total = np.zeros((len(a["vertices"]), 3))
        np.add.at(total, a["faces"].reshape(-1), corner)
        counts = np.bincount(a["faces"].reshape(-1), minlength=len(a["vertices"]))
        colors = (total / np.maximum(counts, 1)[:, None])[used] * factor
    elif "vertex_colors" in a:
        colors = a["vertex_colors"][used] * factor
    rgba = None if colors is None else np.concatenate([_srgb8(colors), np.full((len(used), 1), 255, np.uint8)], 1)
    mesh = trimesh.Trimesh(vertices=a["vertices"][used], faces=tri.reshape(-1, 3), vertex_colors=rgba, process=False)
    atomic_write_bytes(path, mesh.export(file_type="ply", encoding="binary"))


def _save_glb(a: dict, path: Path) -> None:
    vi, ui, ni, tri = split_at_seams(a["faces"], a.get("uv_faces"), a.get("normal_faces"))
    pbr = {"baseColorFactor": [float(x) for x in a["base_color_factor"]],
           "roughnessFactor": float(a["roughness_factor"]), "metallicFactor": float(a["metallic_factor"])}
    images = []
    material = {"name": a["name"], "pbrMetallicRoughness": pbr, "doubleSided": True}  # no culling in recon
    if "base_color" in a:
        pbr["baseColorTexture"] = {"index": len(images)}
        images.append(_png(_srgb8(a["base_color"])))
    if "roughness_metallic" in a:  # glTF: G = roughness, B = metallic (R unused; 255 reads as "no occlusion")
        pbr["metallicRoughnessTexture"] = {"index": len(images)}
        rm = _unorm8(a["roughness_metallic"])
        images.append(_png(np.concatenate([np.full_like(rm[..., :1], 255), rm], -1)))
    if "normal_map" in a:
        material["normalTexture"] = {"index": len(images)}
        images.append(_png(_unorm8((a["normal_map"] + 1.0) / 2.0)))
    attributes = {"POSITION": a["vertices"][vi]}
    if ni is not None:
        attributes["NORMAL"] = a["normals"][ni]  # unit length (MeshScene renormalizes), as glTF requires
    if ui is not None:
        attributes["TEXCOORD_0"] = a["uvs"][ui]  # recon's uv convention is glTF's: no flip
    if "vertex_colors" in a:
        attributes["COLOR_0"] = a["vertex_colors"][vi]  # linear, as glTF specifies
    atomic_write_bytes(path, _glb_bytes(a["name"], attributes, tri, material, images))


def _glb_bytes(name: str, attributes: dict, tri: np.ndarray, material: dict, images: list[bytes]) -> bytes:
    """A minimal glTF 2.0 binary: one mesh, one primitive, one material, PNG images in the binary chunk."""
    blobs, views, accessors = [], [], []

    def view(data: bytes, target: int | None = None) -> int:
        offset = sum(len(b) for b in blobs)
        blobs.append(data + b"\0" * (-len(data) % 4))
        entry = {"buffer": 0, "byteOffset": offset, "byteLength": len(data)}
        views.append(entry if target is None else entry | {"target": target})
        return len(views) - 1

    def accessor(arr: np.ndarray, kind: str, component: int, target: int, bounds: bool = False) -> int:
        acc = {"bufferView": view(arr.tobytes(), target), "componentType": component, "count": len(arr), "type": kind}
        if bounds:
            acc |= {"min": arr.min(0).tolist(), "max": arr.max(0).tolist()}
        accessors.append(acc)
        return len(accessors) - 1

    indices = accessor(tri.reshape(-1).astype("<u4"), "SCALAR", 5125, 34963)
    attrs = {key: accessor(arr.astype("<f4"), f"VEC{arr.shape[1]}", 5126, 34962, bounds=key == "POSITION")
             for key, arr in attributes.items()}
    image_json = [{"bufferView": view(png), "mimeType": "image/png"} for png in images]
    gltf = {"asset": {"version": "2.0", "generator": "recon"}, "scene": 0, "scenes": [{"nodes": [0]}],
            "nodes": [{"mesh": 0, "name": name}],
            "meshes": [{"name": name, "primitives": [{"attributes": attrs, "indices": indices, "material": 0,
                                                      "mode": 4}]}],
            "materials": [material], "accessors": accessors, "bufferViews": views,
            "buffers": [{"byteLength": sum(len(b) for b in blobs)}]}
    if images:  # linear filtering with mipmaps, repeat wrapping (recon's default boundary mode)
        gltf |= {"images": image_json, "textures": [{"source": i, "sampler": 0} for i in range(len(images))],
                 "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 10497, "wrapT": 10497}]}
    js = json.dumps(gltf, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    binary = b"".join(blobs)
    total = 12 + 8 + len(js) + 8 + len(binary)
    return (struct.pack("<III", 0x46546C67, 2, total) + struct.pack("<II", len(js), 0x4E4F534A) + js
            + struct.pack("<II", len(binary), 0x004E4942) + binary)


# ----------------------------------------------------------------------------------------------- pixels

def _srgb8(linear: np.ndarray) -> np.ndarray:
    """8-bit sRGB codes of linear values (float32 math: fast on large textures, and 8-bit codes decoded to
    linear float32 encode back to the same code)."""
    return _unorm8(linear_to_srgb(np.clip(np.asarray(linear, np.float32), 0.0, 1.0)))


def _unorm8(x: np.ndarray) -> np.ndarray:
    return np.round(np.clip(np.asarray(x, np.float32), 0.0, 1.0) * 255.0).astype(np.uint8)


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def _sample_bilinear(tex: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup ``[N, C]`` at ``uv [N, 2]`` (texel centers at (j + 0.5) / W, wrap boundary)."""
    h, w = tex.shape[:2]
    x, y = uv[:, 0].astype(np.float64) * w - 0.5, uv[:, 1].astype(np.float64) * h - 0.5
    x0, y0 = np.floor(x), np.floor(y)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    x0, y0 = x0.astype(np.int64) % w, y0.astype(np.int64) % h
    x1, y1 = (x0 + 1) % w, (y0 + 1) % h
    return ((tex[y0, x0] * (1 - fx) + tex[y0, x1] * fx) * (1 - fy) + (tex[y1, x0] * (1 - fx) + tex[y1, x1] * fx) * fy)
