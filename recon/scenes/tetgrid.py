"""A deformable tetrahedral grid with a signed distance per vertex: the differentiable iso-surface (DMTet-style,
Shen et al. 2021) that mesh reconstruction optimizes to find topology.

The grid is generated here: a regular lattice of ``(N + 1)^3`` vertices over an axis-aligned box, each cube
split into 6 tetrahedra around its main diagonal (the Kuhn / Freudenthal subdivision, which conforms across
neighbouring cubes, so the extracted surface is watertight). Marching tetrahedra places one surface vertex on
every grid edge whose end points have opposite SDF signs, at the linear zero crossing; positions (and any
per-vertex attribute, e.g. color) are therefore differentiable functions of the SDF values and of the
per-vertex deformations.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn

SCHEMA_VERSION = 1

# Corner offsets of the Kuhn subdivision: tet = [0, e_a, e_a + e_b, 1] for every axis permutation (a, b, c).
_CUBE_TETS = [
    [(0, 0, 0), tuple(int(i == a) for i in range(3)), tuple(int(i in (a, b)) for i in range(3)), (1, 1, 1)]
    for a, b, _c in itertools.permutations(range(3))
]
# The 6 edges of a tetrahedron as pairs of local vertex indices.
_TET_EDGES = torch.tensor([[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]])


def _triangle_table() -> tuple[torch.Tensor, torch.Tensor]:
    """For every 4-bit inside-code: up to two triangles as local *edge* indices (-1 = none) and their count.

    Triangles are listed without regard to orientation; :meth:`TetGrid.extract` orients them by the SDF
    gradient direction (inside -> outside), which is cheaper to get right than a hand-written oriented table.
    """
    edge_of = {tuple(sorted(map(int, e))): k for k, e in enumerate(_TET_EDGES)}
    table = torch.full((16, 6), -1, dtype=torch.long)
    count = torch.zeros(16, dtype=torch.long)
    for code in range(16):
        inside = [i for i in range(4) if code >> i & 1]
        outside = [i for i in range(4) if not code >> i & 1]
        if len(inside) in (0, 4):
            continue
        if len(inside) in (1, 3):
            lone, others = (inside[0], outside) if len(inside) == 1 else (outside[0], inside)
            table[code, :3] = torch.tensor([edge_of[tuple(sorted((lone, o)))] for o in others])
            count[code] = 1
        else:
            (a, b), (c, d) = inside, outside
            # The quad a-c, a-d, b-d, b-c (a cycle around the crossing polygon), split into two triangles.
            ac, ad, bd, bc = (edge_of[tuple(sorted(p))] for p in ((a, c), (a, d), (b, d), (b, c)))
            table[code] = torch.tensor([ac, ad, bd, ac, bd, bc])
            count[code] = 2
    return table, count


_TRI_TABLE, _TRI_COUNT = _triangle_table()


def make_tet_grid(resolution: int, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Lattice vertices ``[(N+1)^3, 3]`` over the box ``[lo, hi]`` and tetrahedra ``[6 N^3, 4]`` (int64)."""
    if resolution < 1:
        raise ValueError(f"tet grid resolution must be >= 1, got {resolution}")
    n = resolution
    axis = torch.arange(n + 1)
    ii, jj, kk = torch.meshgrid(axis, axis, axis, indexing="ij")
    ijk = torch.stack([ii, jj, kk], dim=-1).reshape(-1, 3)
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    verts = lo + ijk.float() / n * (hi - lo)
    base = torch.stack(torch.meshgrid(torch.arange(n), torch.arange(n), torch.arange(n), indexing="ij"), -1)
    base = base.reshape(-1, 3)
    stride = torch.tensor([(n + 1) ** 2, n + 1, 1])
    tets = []
    for corners in _CUBE_TETS:
        tets.append(torch.stack([((base + torch.tensor(c)) * stride).sum(-1) for c in corners], dim=-1))
    return verts, torch.cat(tets)


class TetGrid(nn.Module):
    """SDF ``[P]``, deformation ``[P, 3]`` and color ``[P, 3]`` on the vertices of a generated tet grid.

    Attributes:
        base_vertices: ``[P, 3]`` lattice positions (buffer). tets: ``[T, 4]`` int64 (buffer).
        sdf: ``[P]`` parameter, negative inside. deform: ``[P, 3]`` parameter, offsets in units of the cell size,
        squashed by tanh to at most ``max_deform`` cells so tetrahedra never invert.
        color: ``[P, 3]`` parameter (display-space RGB, interpolated like the positions).
    """

    BAND_CELLS = 4.0

    def __init__(self, resolution: int, lo, hi, sdf: torch.Tensor | None = None, max_deform: float = 0.45):
        super().__init__()
        verts, tets = make_tet_grid(resolution, torch.as_tensor(lo), torch.as_tensor(hi))
        self.resolution = int(resolution)
        self.max_deform = float(max_deform)
        self.register_buffer("base_vertices", verts)
        self.register_buffer("tets", tets)
        self.register_buffer("lo", torch.as_tensor(lo, dtype=torch.float32).clone())
        self.register_buffer("hi", torch.as_tensor(hi, dtype=torch.float32).clone())
        if sdf is None:
            sdf = verts.norm(dim=-1) - 0.5 * (self.hi - self.lo).min() / 2
        if sdf.shape != (len(verts),):
            raise ValueError(f"sdf must have shape [{len(verts)}], got {tuple(sdf.shape)}")
        self.sdf = nn.Parameter(sdf.float().clone())
        self.deform = nn.Parameter(torch.zeros_like(verts))
        self.color = nn.Parameter(torch.full_like(verts, 0.5))

    @property
    def cell_size(self) -> torch.Tensor:
        """``[3]`` edge lengths of one lattice cube."""
        return (self.hi - self.lo) / self.resolution

    def vertices(self) -> torch.Tensor:
        """Deformed grid vertices ``[P, 3]``."""
        return self.base_vertices + self.max_deform * self.cell_size * torch.tanh(self.deform)

    def param_groups(self) -> dict[str, nn.Parameter]:
        return {"sdf": self.sdf, "deform": self.deform, "color": self.color}

    def surface_tets(self) -> torch.Tensor:
        """Indices (ascending) of tetrahedra whose vertices do not all share one SDF sign.

        Scanning all ``6 N^3`` tetrahedra every call dominated a training step, so the scan runs over a cached
        *band*: the tetrahedra with a vertex within ``BAND_CELLS`` cells of the zero level or with mixed signs.
        A tetrahedron outside the band needs an SDF change of more than ``BAND_CELLS`` cells at one vertex to
        reach the surface, so the band is rebuilt as soon as any SDF value has moved by half that since the last
        rebuild (an O(P) check). The result is therefore always the set a full scan gives, whatever the band's
        history (which keeps resumed runs identical to uninterrupted ones)."""
        s = self.sdf.detach()
        margin = self.BAND_CELLS * float(self.cell_size.max())
        band = getattr(self, "_band", None)
        if (band is None or band.device != s.device or self._band_sdf.shape != s.shape
                or (s - self._band_sdf).abs().max() >= 0.5 * margin):
            inside = (s < 0)[self.tets]
            n_in = inside.sum(-1)
            near = (s.abs() < margin)[self.tets].any(-1)
            band = torch.nonzero(near | ((n_in > 0) & (n_in < 4)))[:, 0]
            self._band, self._band_sdf = band, s.clone()
        n_in = (s < 0)[self.tets[band]].sum(-1)
        return band[(n_in > 0) & (n_in < 4)]

    def extract(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Marching tetrahedra. Returns ``vertices [V, 3]``, ``faces [F, 3]`` (int64, outward-facing) and
        ``colors [V, 3]``; differentiable w.r.t. ``sdf``, ``deform`` and ``color``. Empty tensors when the zero
        level set misses the grid."""
        sdf, pos, col = self.sdf, self.vertices(), self.color
        dev = sdf.device
        tets = self.tets[self.surface_tets()]
        if len(tets) == 0:
            return pos.new_zeros(0, 3), torch.zeros(0, 3, dtype=torch.long, device=dev), col.new_zeros(0, 3)
        # Unique grid edges that cross the surface -> one output vertex each.
        edges = tets[:, _TET_EDGES.to(dev)]  # [T, 6, 2]
        edges = torch.sort(edges, dim=-1).values
        s = sdf.detach()
        crossing = (s[edges[..., 0]] < 0) != (s[edges[..., 1]] < 0)  # [T, 6]
        n_pts = len(pos)
        keys = edges[..., 0] * n_pts + edges[..., 1]
        uniq, inv = torch.unique(keys[crossing], return_inverse=True)
        edge_vertex = torch.full(keys.shape, -1, dtype=torch.long, device=dev)
        edge_vertex[crossing] = inv
        a, b = uniq // n_pts, uniq % n_pts
        sa, sb = sdf[a], sdf[b]
        w = (sa / (sa - sb))[:, None]  # zero crossing of the linear interpolation, in (0, 1)
        verts = pos[a] + w * (pos[b] - pos[a])
        colors = col[a] + w * (col[b] - col[a])
        # Triangles from the table, as indices into the crossing-edge vertices.
        code = ((s[tets] < 0).long() * torch.tensor([1, 2, 4, 8], device=dev)).sum(-1)
        table, count = _TRI_TABLE.to(dev), _TRI_COUNT.to(dev)
        local = table[code]  # [T, 6]
        tri_local = local.reshape(-1, 2, 3)
        valid = torch.arange(2, device=dev)[None, :] < count[code][:, None]
        tet_idx = torch.arange(len(tets), device=dev)[:, None].expand(-1, 2)[valid]
        tri_local = tri_local[valid]  # [F, 3] local edge ids
        faces = torch.gather(edge_vertex[tet_idx], 1, tri_local)
        # Orient each triangle so its normal points from the inside vertex towards the outside (-> +SDF).
        v = verts.detach()
        normal = torch.cross(v[faces[:, 1]] - v[faces[:, 0]], v[faces[:, 2]] - v[faces[:, 0]], dim=-1)
        grid_p = pos.detach()[tets[tet_idx]]  # [F, 4, 3]
        inside = (s[tets[tet_idx]] < 0).float()[..., None]
        c_in = (grid_p * inside).sum(1) / inside.sum(1).clamp_min(1)
        c_out = (grid_p * (1 - inside)).sum(1) / (1 - inside).sum(1).clamp_min(1)
        flip = (normal * (c_out - c_in)).sum(-1) < 0
        faces = torch.where(flip[:, None], faces[:, [0, 2, 1]], faces)
        return verts, faces, colors

    def to_state(self) -> dict:
        return {"kind": "tetgrid", "version": SCHEMA_VERSION, "resolution": self.resolution,
                "max_deform": self.max_deform, "lo": self.lo.cpu(), "hi": self.hi.cpu(),
                "sdf": self.sdf.detach().cpu(), "deform": self.deform.detach().cpu(),
                "color": self.color.detach().cpu()}

    @classmethod
    def from_state(cls, state: dict, source: str = "state") -> TetGrid:
        if state.get("kind") != "tetgrid":
            raise ValueError(f"{source}: not a tet-grid state (kind={state.get('kind')!r})")
        if int(state.get("version", 0)) > SCHEMA_VERSION:
            raise ValueError(f"{source}: tet-grid state version {state.get('version')} is newer than {SCHEMA_VERSION}")
        try:
            grid = cls(int(state["resolution"]), state["lo"], state["hi"], sdf=state["sdf"],
                       max_deform=float(state["max_deform"]))
            for name in ("deform", "color"):
                if tuple(state[name].shape) != tuple(grid.base_vertices.shape):
                    raise ValueError(f"{name} must have shape {tuple(grid.base_vertices.shape)}, "
                                     f"got {tuple(state[name].shape)}")
        except (KeyError, ValueError) as err:
            raise ValueError(f"{source}: invalid tet-grid state: {err}") from err
        with torch.no_grad():
            grid.deform.copy_(state["deform"])
            grid.color.copy_(state["color"])
        return grid
