"""Mesh reconstruction from posed images, in two stages on the shared training loop.

1. **Iso-surface** (``optim.geometry_steps``): SDF, deformation and color on the vertices of a generated
   tetrahedral grid (:class:`~recon.scenes.tetgrid.TetGrid`); marching tetrahedra extracts a mesh every step,
   which is rendered through the mesh raster ops; photometric + silhouette losses reach the SDF through the
   interpolated vertex positions and colors and through the antialiased silhouettes, so the topology is found
   by optimization. The SDF starts from the visual hull of the alpha masks when the dataset has coverage alpha.
2. **Textured refinement**: the final surface is extracted once, cleaned of small components and UV-mapped
   with xatlas; the base-color texture (initialized by rasterizing the stage-1 colors in UV space) and the vertex
   positions are optimized with a uniform Laplacian of the displacements and normal consistency.

Colors (grid colors, texels) are linear; the renderer encodes to sRGB, so losses compare with the images as
stored.
"""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recon.evaluate import composite, fill_invalid
from recon.metrics import psnr
from recon.renderers import FieldSettings, MeshSettings, RenderSettings
from recon.renderers.mesh.render import MeshArrays, render_mesh_arrays
from recon.scenes.mesh import MeshMaterial, MeshScene
from recon.scenes.tetgrid import TetGrid
from recon.train.init import _has_masks, look_at_center, sample_views
from recon.train.method import Method
from recon.train.trainer import TrainingError

GEOMETRY, TEXTURE = "geometry", "texture"


def visual_hull_occupancy(points: torch.Tensor, cameras, images: torch.Tensor, chunk: int = 65536,
                          min_seen: float = 0.25) -> torch.Tensor:
    """``[P]`` bool: points that project inside the alpha mask (alpha > 0.5) of every view that sees them and
    are seen by at least ``min_seen`` of the views (space that few cameras look at is not object)."""
    alpha = images[..., 3:]
    out = torch.empty(len(points), dtype=torch.bool)
    for s in range(0, len(points), chunk):
        a, seen = sample_views(points[s : s + chunk], cameras, alpha)
        out[s : s + chunk] = ((a[..., 0] > 0.5) | ~seen).all(0) & (seen.sum(0) >= max(1.0, min_seen * len(cameras)))
    return out


def object_box(data, hull: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """``lo, hi [3]`` around the object: a cube around the point the cameras look at, half the median camera
    distance on a side; with ``hull``, the box of the visual hull carved at 32^3 inside it (plus one cell).
    Raises ``ValueError`` naming the dataset when the hull is empty."""
    cams, images = data.train.cameras, data.train.images
    center = look_at_center(cams).float()
    dist = (cams.centers().float() - center).norm(dim=-1).median().item()
    lo, hi = center - 0.5 * dist, center + 0.5 * dist
    if hull:
        coarse = TetGrid(32, lo, hi).base_vertices
        occ = visual_hull_occupancy(coarse, cams, images)
        if not occ.any():
            raise ValueError(f"the visual hull of {data.root} is empty: no point lies inside every alpha mask")
        cell = (hi - lo) / 32
        lo, hi = coarse[occ].min(0).values - cell, coarse[occ].max(0).values + cell
    return lo, hi


def initial_grid(cfg, data, mask_alpha: bool) -> TetGrid:
    """The tet grid and its initial SDF: visual hull (signed distance to the carved occupancy) or a sphere."""
    from scipy import ndimage

    m = cfg.model
    cams, images = data.train.cameras, data.train.images
    hull = m.init == "visual_hull" or (m.init == "auto" and not mask_alpha and _has_masks(images))
    if m.init == "visual_hull" and (mask_alpha or not _has_masks(images)):
        raise ValueError("model.init = 'visual_hull' needs a dataset with coverage alpha (RGBA object masks)")
    lo, hi = object_box(data, hull)
    if hull:  # the grid covers the hull's box with a margin
        size = (hi - lo).max()
        mid = 0.5 * (lo + hi)
        lo, hi = mid - 0.5 * size * (1 + 2 * m.bounds_margin), mid + 0.5 * size * (1 + 2 * m.bounds_margin)
    grid = TetGrid(m.grid_resolution, lo, hi)
    n = m.grid_resolution + 1
    cell = float((hi - lo).max()) / m.grid_resolution
    if hull:
        occ = visual_hull_occupancy(grid.base_vertices, cams, images).reshape(n, n, n).numpy()
        d_out = ndimage.distance_transform_edt(~occ) * cell
        d_in = ndimage.distance_transform_edt(occ) * cell
        sdf = np.where(occ, 0.5 * cell - d_in, d_out - 0.5 * cell)
    else:
        sdf = (grid.base_vertices - 0.5 * (lo + hi)).norm(dim=-1).numpy() - 0.25 * float((hi - lo).min())
    with torch.no_grad():
        grid.sdf.copy_(torch.as_tensor(sdf, dtype=torch.float32).reshape(-1))
    return grid


def sdf_sign_loss(grid: TetGrid) -> torch.Tensor:
    """nvdiffrec's regularizer: binary cross-entropy pushing each end of a surface-crossing grid edge towards the
    sign of the other end (few, clean crossings; suppresses floaters and noisy surfaces)."""
    tets = grid.tets[grid.surface_tets()]
    if len(tets) == 0:
        return grid.sdf.sum() * 0
    edges = tets[:, [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]].reshape(-1, 2)
    sa, sb = grid.sdf[edges[:, 0]], grid.sdf[edges[:, 1]]
    cross = (sa < 0) != (sb < 0)  # the same sign test as marching tetrahedra
    sa, sb = sa[cross], sb[cross]
    if len(sa) == 0:
        return grid.sdf.sum() * 0
    return 0.5 * (F.binary_cross_entropy_with_logits(sa, (sb >= 0).float())
                  + F.binary_cross_entropy_with_logits(sb, (sa >= 0).float()))


def _component_labels(n: int, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``[n]`` connected-component label of each of ``n`` nodes linked by the (undirected) pairs rows-cols."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def keep_large_components(verts: torch.Tensor, faces: torch.Tensor, min_faces: int, min_fraction: float = 0.0):
    """Drop connected components with fewer than ``min_faces`` faces or than ``min_fraction`` times the largest
    one's (the largest one is always kept). Returns ``(vertices [V', 3], faces [F', 3], kept [V'])`` where
    ``kept`` indexes the input vertices."""
    f = faces.cpu().numpy()
    n = len(verts)
    label = _component_labels(n, np.concatenate([f[:, 0], f[:, 1], f[:, 2]]),
                              np.concatenate([f[:, 1], f[:, 2], f[:, 0]]))
    face_label = label[f[:, 0]]
    counts = np.bincount(face_label)
    keep_f = counts[face_label] >= min(max(min_faces, min_fraction * counts.max()), counts.max())
    f = f[keep_f]
    used = np.unique(f)
    remap = np.full(n, -1)
    remap[used] = np.arange(len(used))
    kept = torch.as_tensor(used, dtype=torch.long)
    return verts[kept], torch.as_tensor(remap[f], dtype=torch.long), kept


@torch.no_grad()
def visible_faces(verts: torch.Tensor, faces: torch.Tensor, cameras, supersample: int = 2,
                  batch: int = 8) -> torch.Tensor:
    """``[F]`` bool: faces that cover at least one sample of at least one camera (rasterized at ``supersample``
    times the camera resolution, so that faces smaller than a pixel are still found)."""
    from recon.renderers.mesh.rasterize import rasterize
    from recon.renderers.mesh.render import clip_positions

    seen = torch.zeros(len(faces), dtype=torch.bool)
    v = verts.detach().float().cpu()
    tri = faces.cpu().to(torch.int32)
    cams = cameras.to(device="cpu", dtype=torch.float32)
    cams = cams.scaled(supersample) if supersample != 1 else cams
    for start in range(0, len(cams), batch):
        cc = cams[list(range(start, min(start + batch, len(cams))))]
        rast, _ = rasterize(clip_positions(v, cc), tri, (cc.height, cc.width), grad_db=False, backend="auto")
        ids = rast[..., 3].reshape(-1).long()
        seen[ids[ids > 0] - 1] = True
    return seen


def hidden_regions(faces: torch.Tensor, seen: torch.Tensor, min_faces: int = 20) -> torch.Tensor:
    """``[F]`` bool: the faces to cull, the unseen faces (``~seen``) in edge-connected regions of at least
    ``min_faces`` unseen faces. Smaller unseen regions are slivers between seen faces that no sample happened to
    hit; cutting them out would open pinholes that smoothing widens."""
    hidden = ~seen.cpu()
    _, pairs = mesh_adjacency(faces.cpu())
    pairs = pairs[hidden[pairs[:, 0]] & hidden[pairs[:, 1]]].numpy()
    n = len(faces)
    label = torch.as_tensor(_component_labels(n, pairs[:, 0], pairs[:, 1]))
    size = torch.bincount(label[hidden], minlength=n)
    return hidden & (size[label] >= min_faces)


def taubin_smooth(verts: torch.Tensor, faces: torch.Tensor, iterations: int, lam: float = 0.5,
                  mu: float = -0.53) -> torch.Tensor:
    """Taubin's lambda|mu smoothing (uniform weights): removes the staircase of a marching-tetrahedra surface
    without the shrinkage of plain Laplacian smoothing. ``verts [V, 3]``, ``faces [F, 3]`` -> ``[V, 3]``."""
    neighbors, _ = mesh_adjacency(faces)
    src, dst = neighbors[:, 0], neighbors[:, 1]
    deg = torch.zeros(len(verts), dtype=verts.dtype).index_add_(0, src, torch.ones(len(src), dtype=verts.dtype))
    deg = deg.clamp_min(1)[:, None]
    v = verts.clone()
    for _ in range(iterations):
        for factor in (lam, mu):
            mean = torch.zeros_like(v).index_add_(0, src, v[dst]) / deg
            v = v + factor * (mean - v)
    return v


def uv_atlas(verts: torch.Tensor, faces: torch.Tensor, texture_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """xatlas UV atlas: ``uvs [T, 2]`` (docs/mesh.md convention) and ``uv_faces [F, 3]`` matching ``faces``."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(verts.detach().cpu().numpy().astype(np.float32), faces.cpu().numpy().astype(np.uint32))
    chart = xatlas.ChartOptions()
    chart.max_iterations = 1
    pack = xatlas.PackOptions()
    pack.resolution = texture_size
    pack.padding = 2
    pack.bilinear = True
    atlas.generate(chart, pack)
    vmapping, indices, uvs = atlas[0]
    if not np.array_equal(vmapping[indices], faces.cpu().numpy()):
        raise RuntimeError("xatlas changed the face order; cannot map UV faces onto the mesh")
    return torch.as_tensor(uvs, dtype=torch.float32), torch.as_tensor(indices.astype(np.int64))


def bake_vertex_colors(uvs: torch.Tensor, uv_faces: torch.Tensor, colors: torch.Tensor, faces: torch.Tensor,
                       size: int, backend: str) -> torch.Tensor:
    """Rasterize the mesh in UV space and interpolate ``colors [V, 3]``: a ``[size, size, 3]`` texture; texels
    outside every chart take the nearest chart color (dilation), so bilinear lookups at seams stay clean."""
    from scipy import ndimage

    from recon.renderers.mesh.rasterize import interpolate, rasterize

    # uv (0..1) -> NDC (-1..1); w = 1, z = 0: an orthographic "camera" looking at the atlas.
    pos = torch.cat([uvs * 2 - 1, torch.zeros_like(uvs[:, :1]), torch.ones_like(uvs[:, :1])], -1)[None]
    # Per-corner colors: the UV vertices of a corner take the color of the position vertex of that corner.
    corner_colors = torch.zeros(len(uvs), 3)
    corner_colors[uv_faces.reshape(-1)] = colors.detach().cpu()[faces.reshape(-1)]
    rast, _ = rasterize(pos.contiguous(), uv_faces.to(torch.int32), (size, size), grad_db=False, backend=backend)
    tex = interpolate(corner_colors, rast, uv_faces.to(torch.int32), backend=backend)[0][0]
    covered = (rast[0, ..., 3] > 0).numpy()
    if covered.any():
        idx = ndimage.distance_transform_edt(~covered, return_distances=False, return_indices=True)
        tex = tex[torch.as_tensor(idx[0]), torch.as_tensor(idx[1])]
    return tex.clamp(0, 1).contiguous()


def _load_init_mesh(path: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``model.init_mesh``: vertices, faces and vertex colors (linear; 0.5 gray without COLOR_0) of a mesh file."""
    from recon.export.mesh_io import load_mesh

    scene = load_mesh(path)
    verts = scene.vertices.detach().float()
    colors = (scene.vertex_colors.detach().float().clamp(0, 1) if scene.vertex_colors is not None
              else torch.full_like(verts, 0.5))
    return verts, scene.faces.long(), colors


def uniform_laplacian(values: torch.Tensor, neighbors: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of each row of ``values [V, D]`` to the mean of its neighbours (``neighbors [E, 2]``
    directed vertex pairs)."""
    src, dst = neighbors[:, 0], neighbors[:, 1]
    deg = torch.zeros(len(values), device=values.device).index_add_(0, src, torch.ones(len(src), device=values.device))
    mean = torch.zeros_like(values).index_add_(0, src, values[dst]) / deg.clamp_min(1)[:, None]
    return ((values - mean) ** 2).sum(-1).mean()


def normal_consistency(verts: torch.Tensor, faces: torch.Tensor, face_pairs: torch.Tensor) -> torch.Tensor:
    """Mean ``1 - cos`` between the normals of the ``[P, 2]`` pairs of faces that share an edge."""
    if len(face_pairs) == 0:
        return verts.sum() * 0
    a, b, c = verts[faces[:, 0]], verts[faces[:, 1]], verts[faces[:, 2]]
    n = F.normalize(torch.cross(b - a, c - a, dim=-1), dim=-1, eps=1e-20)
    return (1 - (n[face_pairs[:, 0]] * n[face_pairs[:, 1]]).sum(-1)).mean()


def mesh_adjacency(faces: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Directed vertex neighbours ``[E, 2]`` and pairs of faces sharing an edge ``[P, 2]`` (manifold edges)."""
    f = faces.long()
    e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
    n = int(f.max()) + 1 if len(f) else 1
    both = torch.cat([e, e.flip(1)])
    # unique of int64 keys: the same rows, sorted alike, ~50x faster than unique(dim=0) on a million faces
    flat = torch.unique(both[:, 0] * n + both[:, 1])
    neighbors = torch.stack([flat // n, flat % n], 1)
    key = torch.sort(e, dim=1).values
    face_id = torch.arange(len(f)).repeat(3)
    order = torch.argsort(key[:, 0] * n + key[:, 1])
    k, fid = key[order], face_id[order]
    same = (k[1:] == k[:-1]).all(1)
    pairs = torch.stack([fid[:-1][same], fid[1:][same]], 1)
    return neighbors, pairs


class _FieldStageLoop:
    """The training loop as the neural-SDF stage of a mesh run sees it: everything is the run's loop except the
    config, which is a ``recon train sdf`` config built from the run's shared options and its ``field`` section
    (``max_steps`` = ``optim.geometry_steps``, so the SDF's schedules end where the stage does)."""

    def __init__(self, loop, cfg) -> None:
        self._loop = loop
        self.cfg = cfg

    def __getattr__(self, name: str):
        return getattr(self._loop, name)


def field_stage_config(cfg):
    """The ``recon train sdf`` config of a mesh run's ``geometry sdf`` stage."""
    import dataclasses

    from recon.train.config import SDFTrainConfig, TrainConfigBase

    shared = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(TrainConfigBase)}
    shared["max_steps"] = cfg.optim.geometry_steps
    backend = cfg.backend if cfg.backend in ("torch", "cpu") else "auto"
    return SDFTrainConfig(**shared, backend=backend, model=cfg.field.model, optim=cfg.field.optim)


class MeshMethod(Method):
    """Two-stage textured mesh reconstruction (``recon train mesh``; see the module docstring)."""

    name = "mesh"
    state_keys = frozenset({"stage", "model", "optimizer"})

    def render_settings(self) -> RenderSettings:
        # Training and evaluation only compare colors; depth and normals would cost two more interpolations.
        # An SDF topology stage is evaluated by sphere tracing (exact hits, ~6x faster than volume rendering).
        return RenderSettings(channels=("rgb", "alpha"), backend=self.cfg.backend, mesh=MeshSettings(shading="unlit"),
                              fields=FieldSettings(method="sphere"))

    # --- building ----------------------------------------------------------------------------------------
    @property
    def _sdf_stage(self) -> bool:
        """Whether the run is in a ``model.geometry sdf`` topology stage (the neural SDF trains)."""
        return self.stage == GEOMETRY and self.cfg.model.geometry == "sdf"

    def _new_field_stage(self, state: dict | None, source: str) -> None:
        from recon.train.sdf import SDFMethod

        self.field_stage = SDFMethod(_FieldStageLoop(self.loop, field_stage_config(self.cfg)))
        self.field_stage.setup(state, source)

    def setup(self, state: dict | None, source: str) -> None:
        self._last_faces = 0  # faces of the latest marching-tets mesh (for logs)
        self.field_stage = None
        if self.cfg.model.geometry == "sdf":
            # As the SDF trainer does (recon/train/triplane.py), and in every stage, so that a run resumed in its
            # material stage computes as the uninterrupted one did.
            torch.set_flush_denormal(True)
        if state is None:
            o = self.cfg.optim
            if 0 < o.geometry_steps and self.cfg.max_steps <= o.geometry_steps:
                ends = ("the run ends as the neural SDF (exports/field.pt; `recon export RUN` extracts its mesh)"
                        if self.cfg.model.geometry == "sdf" else "the mesh keeps vertex colors")
                print(f"recon: warning: max_steps ({self.cfg.max_steps}) <= optim.geometry_steps ({o.geometry_steps}): "
                      f"the run ends in the iso-surface stage, so the textured refinement stage is skipped and {ends}",
                      file=sys.stderr)
            self.stage = GEOMETRY if self.cfg.optim.geometry_steps > 0 else TEXTURE
            if self._sdf_stage:
                self._new_field_stage(None, source)
                return
            if self.cfg.model.init_mesh is None:
                self.grid = initial_grid(self.cfg, self.data, self.mask).to(self.device)
            if self.stage == TEXTURE:
                self._start_texture_stage()
            self._make_optimizer()
            return
        self.stage = state["stage"]
        if self._sdf_stage:
            if state["model"].get("geometry") != "sdf":
                raise ValueError(f"{source}: not a checkpoint of a model.geometry sdf stage")
            self._new_field_stage({"scene": state["scene"], "optimizer": state["optimizer"]}, source)
            return
        if self.stage == GEOMETRY:
            if state["model"].get("geometry") == "sdf":
                raise ValueError(f"{source}: a checkpoint of a model.geometry sdf stage, but the config says "
                                 f"{self.cfg.model.geometry!r}")
            self.grid = TetGrid.from_state(state["model"], source=source).to(self.device)
        else:
            self._load_texture_state(state["model"], source)
        self._make_optimizer()
        self.optimizer.load_state_dict(state["optimizer"])

    def _make_optimizer(self) -> None:
        o = self.cfg.optim
        if self.stage == GEOMETRY:
            groups = [{"params": [self.grid.sdf], "lr": o.lr_sdf}, {"params": [self.grid.deform], "lr": o.lr_deform},
                      {"params": [self.grid.color], "lr": o.lr_color}]
        else:
            size = float((self.base_vertices.max(0).values - self.base_vertices.min(0).values).max())
            groups = [{"params": [self.offsets], "lr": o.lr_vertices * size},
                      {"params": [self.texture], "lr": o.lr_texture}]
        for g in groups:
            g["base_lr"] = g["lr"]
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)

    def _decay_lr(self) -> None:
        """Refinement stage: exponential decay to optim.lr_final_fraction at max_steps (a function of the step, so a
        resumed run gets the same rates)."""
        o = self.cfg.optim
        span = max(1, self.cfg.max_steps - o.geometry_steps)
        progress = min(1.0, max(0.0, (self.step_index - o.geometry_steps) / span))
        for g in self.optimizer.param_groups:
            g["lr"] = g["base_lr"] * o.lr_final_fraction ** progress

    def _start_texture_stage(self) -> None:
        """Extract the surface once, clean it, UV-map it and bake the stage-1 colors into the texture."""
        m = self.cfg.model
        cleaned = False
        if m.init_mesh is not None:
            verts, faces, colors = _load_init_mesh(m.init_mesh)
        elif self.field_stage is not None:  # already cleaned by field_to_mesh (components, unseen regions)
            verts, faces, colors = self._field_surface()
            cleaned = True
        else:
            with torch.no_grad():
                verts, faces, colors = self.grid.extract()
        if len(faces) == 0:
            raise TrainingError(f"the {'mesh of model.init_mesh' if m.init_mesh else 'iso-surface'} is empty: "
                                "nothing to texture (check the masks / model.init)")
        # A given mesh keeps all its parts; an iso-surface loses its floaters.
        min_faces = 0 if m.init_mesh is not None or cleaned else m.min_component_faces
        verts, faces_c, kept = keep_large_components(verts.cpu(), faces.cpu(), min_faces)
        if m.cull_hidden and not cleaned:
            # Faces no training camera sees (walls of pockets inside the object that the photometric loss never
            # reaches) only add error: bob_field's stage-1 surface had 24 % of them in regions of 20 faces or
            # more (bench/train.py chamfer 0.0124 -> 0.0092, docs/mesh.md).
            seen = visible_faces(verts, faces_c, self.data.train.cameras)
            if seen.any():
                keep = ~hidden_regions(faces_c, seen)
                verts, faces_c, kept2 = keep_large_components(verts, faces_c[keep], min_faces)
                kept = kept[kept2]
        if m.smooth_iterations > 0:
            verts = taubin_smooth(verts, faces_c, m.smooth_iterations)
        uvs, uv_faces = uv_atlas(verts, faces_c, m.texture_size)
        # The bake runs on CPU tensors, so it picks its own backend (the run's may be a CUDA-only one).
        tex = bake_vertex_colors(uvs, uv_faces, colors.cpu()[kept], faces_c, m.texture_size, "auto")
        self._set_texture_state(verts, faces_c, uvs, uv_faces, tex, torch.zeros_like(verts))
        self.stage = TEXTURE

    @torch.no_grad()
    def _field_surface(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The SDF stage's zero set at ``model.field_resolution`` (largest components, unseen regions cut, head-on
        colors: :func:`recon.export.field_mesh.field_to_mesh`); the field is released."""
        from recon.export.field_mesh import FieldMeshOptions, field_to_mesh

        field = self.field_stage.field
        opts = FieldMeshOptions(resolution=self.cfg.model.field_resolution)
        try:
            cams = self.data.train.cameras if self.cfg.model.cull_hidden else None  # None: no culling
            mesh = field_to_mesh(field, opts, cams, source="the SDF stage")
        except ValueError as err:
            raise TrainingError(f"{err} (at the end of the SDF stage: check the masks, give it more "
                                "optim.geometry_steps, or lower model.field_resolution)") from err
        self.field_stage = None
        colors = mesh.vertex_colors if mesh.vertex_colors is not None else torch.full_like(mesh.vertices, 0.5)
        return mesh.vertices.detach().float().cpu(), mesh.faces.long().cpu(), colors.detach().float().cpu()

    def _set_texture_state(self, verts, faces, uvs, uv_faces, tex, offsets) -> None:
        dev = self.device
        self.base_vertices = verts.detach().float().to(dev)
        self.faces = faces.long().to(dev)
        self.uvs, self.uv_faces = uvs.float().to(dev), uv_faces.long().to(dev)
        self.offsets = torch.nn.Parameter(offsets.float().to(dev).clone())
        self.texture = torch.nn.Parameter(tex.float().to(dev).clone())
        self.neighbors, self.face_pairs = (t.to(dev) for t in mesh_adjacency(self.faces.cpu()))

    def _load_texture_state(self, st: dict, source: str) -> None:
        try:
            self._set_texture_state(st["base_vertices"], st["faces"], st["uvs"], st["uv_faces"], st["texture"],
                                    st["offsets"])
        except KeyError as err:
            raise ValueError(f"{source}: mesh checkpoint lacks {err}") from err

    # --- state -------------------------------------------------------------------------------------------
    def state(self) -> dict:
        if self._sdf_stage:
            inner = self.field_stage.state()
            return {"scene": inner["scene"], "stage": self.stage, "model": {"geometry": "sdf"},
                    "optimizer": inner["optimizer"]}
        if self.stage == GEOMETRY:
            model = self.grid.to_state()
        else:
            model = {"base_vertices": self.base_vertices.cpu(), "faces": self.faces.cpu(), "uvs": self.uvs.cpu(),
                     "uv_faces": self.uv_faces.cpu(), "texture": self.texture.detach().cpu(),
                     "offsets": self.offsets.detach().cpu()}
        return {"scene": self.eval_scene().to_state(), "stage": self.stage, "model": model,
                "optimizer": self.optimizer.state_dict()}

    def parameters(self) -> dict[str, torch.Tensor]:
        if self._sdf_stage:
            return self.field_stage.parameters()
        if self.stage == GEOMETRY:
            return self.grid.param_groups()
        return {"offsets": self.offsets, "texture": self.texture}

    def size_stats(self) -> dict:
        if self._sdf_stage:
            return self.field_stage.size_stats()
        if self.stage == GEOMETRY:
            return {"num_faces": int(self._last_faces)}
        return {"num_faces": len(self.faces)}

    def _arrays(self) -> MeshArrays:
        if self.stage == GEOMETRY:
            verts, faces, colors = self.grid.extract()
            self._last_faces = len(faces)
            return MeshArrays(vertices=verts, faces=faces, vertex_colors=colors)
        return MeshArrays(vertices=self.base_vertices + self.offsets, faces=self.faces, uvs=self.uvs,
                          uv_faces=self.uv_faces, base_color=self.texture)

    @torch.no_grad()
    def eval_scene(self):
        if self._sdf_stage:
            return self.field_stage.eval_scene()  # the neural SDF (rendered by volume rendering)
        a = self._arrays()
        if self.stage == GEOMETRY:
            return MeshScene(a.vertices.detach(), a.faces, vertex_colors=a.vertex_colors.clamp(0, 1))
        return MeshScene(a.vertices.detach(), a.faces, uvs=a.uvs, uv_faces=a.uv_faces,
                         material=MeshMaterial(base_color=a.base_color.detach().clamp(0, 1)))

    def export(self) -> Path:
        from recon.export.scenes import export_scene

        if self._sdf_stage:  # the run ended in its SDF stage: the field (recon export RUN extracts a mesh)
            return self.field_stage.export()
        return export_scene(self.eval_scene().cpu(), "glb", self.run_dir / "exports" / "mesh.glb")

    # --- one step ----------------------------------------------------------------------------------------
    def _render(self, arrays: MeshArrays, cams, settings: RenderSettings):
        """Render the current mesh for the loss (method hook: mesh-pbr shades it)."""
        return render_mesh_arrays(arrays, cams, settings, shading="unlit")

    def _texture_regularizers(self) -> torch.Tensor:
        """Extra loss terms of the refinement stage (method hook)."""
        return torch.zeros((), device=self.device)

    def _image_regularizers(self, out, images: torch.Tensor) -> torch.Tensor:
        """Extra loss terms of the refinement stage on the render ``out`` of the training ``images`` (RGBA,
        sRGB, straight alpha) (method hook)."""
        return torch.zeros((), device=self.device)

    def step(self) -> dict:
        cfg, o = self.cfg, self.cfg.optim
        if self.stage == GEOMETRY and self.step_index > o.geometry_steps:
            self._start_texture_stage()
            self._make_optimizer()
        if self._sdf_stage:
            return self.field_stage.step()
        idx = [self.next_index() for _ in range(min(o.views_per_step, len(self.data.train)))]
        cams = self.train_cams[idx]
        bg = torch.rand(3, generator=self.generator).to(self.device) if cfg.random_background else self.eval_background
        images = self.train_images[idx]
        gt = composite(images, bg)
        arrays = self._arrays()
        if len(arrays.faces) == 0:
            raise TrainingError(f"the iso-surface became empty at step {self.step_index}; lower optim.lr_sdf or check "
                                "the masks / model.init")
        out = self._render(arrays, cams, replace(self.settings, background=bg))
        pred = out.rgb
        if self.mask:
            gt = fill_invalid(gt, pred, images)
        loss = (pred - gt).abs().mean()
        stats = {}
        if not self.mask and o.lambda_mask > 0:
            loss = loss + o.lambda_mask * ((out.alpha - images[..., 3:]) ** 2).mean()
        if self.stage == GEOMETRY:
            if o.lambda_sdf > 0:
                loss = loss + o.lambda_sdf * sdf_sign_loss(self.grid)
        else:
            # Laplacian of the displacements (not of the positions, which would shrink the extracted surface),
            # scale-normalized so its weight does not depend on the object's size.
            lap = uniform_laplacian(self.offsets, self.neighbors)
            cons = normal_consistency(arrays.vertices, self.faces, self.face_pairs)
            size = float((self.base_vertices.max(0).values - self.base_vertices.min(0).values).max())
            loss = loss + o.lambda_laplacian * lap / (size * size) * 1e4 + o.lambda_normal * cons
            loss = loss + self._texture_regularizers() + self._image_regularizers(out, images)
        self.check_loss(loss)
        loss.backward()
        if self.stage != GEOMETRY:
            self._decay_lr()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.step_index % 50 == 0:
            self.check_finite()
        stats.update(loss=loss.item(), psnr=psnr(pred.detach().clamp(0, 1), gt).mean().item())
        return stats

