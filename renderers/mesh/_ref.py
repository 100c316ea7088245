"""Pure-PyTorch reference twins of the mesh ``rasterize`` and ``interpolate`` ops (readable; autograd gradients).

The math is the one of the C++ kernels (``cuda/mesh_raster/raster_math.h``), see ``docs/mesh.md``:

* Pixel-homogeneous vertices. A clip-space vertex ``(x, y, z, w)`` becomes ``q = ((x + w) W / 2, (y + w) H / 2, w)``,
  so that ``q.xy / q.w`` is its position in pixels (pixel centers at +0.5, row 0 on top).
* 2D homogeneous rasterization (Olano & Greer 1997). For a pixel center ``p = (X, Y, 1)`` the edge functions
  ``e_i = (q_j x q_k) . p`` (``(i, j, k)`` cyclic) are the rows of ``adj([q0 q1 q2]) p``; the perspective-correct
  barycentrics are ``b = e / sum(e)`` and the point's clip ``w`` is ``det / sum(e)``. A pixel is covered when all
  ``e_i`` have the sign of ``det`` (inside and in front of the camera, whatever the winding and even when some
  ``w <= 0``); ``det = 0`` (zero area, or seen edge-on) covers nothing.
* ``ndc_z = sum(e_i z_i) / sum(e_i w_i)`` (``sum(e_i w_i) = det``: ``ndc_z`` is affine in the pixel position);
  pixels with ``ndc_z`` outside ``[-1, 1]`` are empty; the smallest ``ndc_z`` wins, ties by the smaller id.
* ``rast = (u, v, ndc_z, id + 1) = (b_0, b_1, ndc_z, id + 1)``; ``rast_db = (du/dX, du/dY, dv/dX, dv/dY)`` with
  ``db_i/dX = (A_i - b_i sum(A)) / sum(e)`` where ``A_i = de_i/dX`` (and likewise for Y).

Coverage and the depth test run without gradients in float64 (float32 on devices without it), chunk by chunk
over the triangles' pixel bounding boxes; then ``(u, v, ndc_z)`` of each pixel's winning triangle are recomputed
from ``pos`` with autograd.
"""

from __future__ import annotations

import torch
from torch import Tensor

# Candidate (triangle, pixel) pairs tested per chunk: bounds the temporaries to ~100 MB.
_CHUNK_PAIRS = 1 << 20
# Bounding boxes are widened by this many pixels; the edge and depth tests decide coverage exactly.
_BBOX_MARGIN = 1e-3


def _wide(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def _pixel_homogeneous(p: Tensor, H: int, W: int) -> Tensor:
    """Clip ``[..., 4]`` -> pixel-homogeneous ``[..., 3]`` ``((x + w) W / 2, (y + w) H / 2, w)``."""
    x, y, _, w = p.unbind(-1)
    return torch.stack([(x + w) * (0.5 * W), (y + w) * (0.5 * H), w], -1)


def _edge_coeffs(q: Tensor) -> Tensor:
    """``q [..., 3 vertices, 3]`` -> ``[..., 3 edges, 3]``: row i is ``q_j x q_k`` ((i, j, k) cyclic), so
    ``e_i(X, Y) = row_i . (X, Y, 1)``."""
    q0, q1, q2 = q.unbind(-2)
    return torch.stack([torch.linalg.cross(q1, q2), torch.linalg.cross(q2, q0), torch.linalg.cross(q0, q1)], -2)


def _pixel_bboxes(q: Tensor, z: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """Inclusive pixel ranges ``lo, hi [F, 2]`` (x, y) that can hold covered pixels; ``hi < lo`` when empty.

    Triangles entirely behind the camera or beyond one depth plane are empty; triangles with some ``w <= 0``
    get the whole image (their visible part projects to an unbounded region).
    """
    w = q[..., 2]
    front = (w > 0).all(-1)
    ws = torch.where(front[:, None], w, torch.ones_like(w))
    xy = q[..., :2] / ws[..., None]
    lo = torch.ceil(xy.amin(1) - 0.5 - _BBOX_MARGIN)
    hi = torch.floor(xy.amax(1) - 0.5 + _BBOX_MARGIN)
    size = torch.tensor([W - 1, H - 1], dtype=q.dtype, device=q.device)
    lo = torch.where(front[:, None], lo, torch.zeros_like(lo)).clamp(min=0).minimum(size + 1)
    hi = torch.where(front[:, None], hi, size).clamp(max=size).maximum(torch.full_like(hi, -1))
    culled = ~(w > 0).any(-1) | (z > w).all(-1) | (z < -w).all(-1)
    hi = torch.where(culled[:, None], torch.full_like(hi, -1), hi)
    lo = torch.where(culled[:, None], torch.zeros_like(lo), lo)
    return lo.long(), hi.long()


@torch.no_grad()
def _visibility(pos_c: Tensor, tri: Tensor, H: int, W: int) -> Tensor:
    """Winning triangle per pixel ``[H * W]`` int64 (-1 = empty) for one camera's clip positions ``[V, 4]``."""
    dev = pos_c.device
    best_z = torch.full((H * W,), float("inf"), dtype=_wide(dev), device=dev)
    best_id = torch.full((H * W,), -1, dtype=torch.long, device=dev)
    if tri.shape[0] == 0:
        return best_id
    v = pos_c.to(_wide(dev))[tri]  # [F, 3, 4]
    q = _pixel_homogeneous(v, H, W)
    E = _edge_coeffs(q)  # [F, 3, 3]
    det = (E[:, 0] * q[:, 0]).sum(-1)
    sgn = torch.where(det < 0, -1.0, 1.0).to(det.dtype)
    E, det = E * sgn[:, None, None], det * sgn
    ok = (det > 0) & torch.isfinite(det)
    dets = torch.where(ok, det, torch.ones_like(det))
    zplane = (E * v[..., 2:3]).sum(1) / dets[:, None]  # [F, 3]: ndc_z = zplane . (X, Y, 1)
    lo, hi = _pixel_bboxes(q, v[..., 2], H, W)
    ext = (hi - lo + 1).clamp(min=0)
    area = torch.where(ok, ext[:, 0] * ext[:, 1], torch.zeros_like(ext[:, 0]))
    ends = torch.cumsum(area, 0)
    start = 0
    while start < tri.shape[0]:
        # The chunk's triangles [start, stop) hold about _CHUNK_PAIRS candidate pixels (at least one triangle).
        base = ends[start - 1] if start > 0 else ends.new_zeros(())
        stop = int(torch.searchsorted(ends, base + _CHUNK_PAIRS, right=True))
        stop = max(stop, start + 1)
        t = torch.repeat_interleave(torch.arange(start, stop, device=dev), area[start:stop])
        if t.numel():
            k = torch.arange(t.numel(), device=dev) - (ends[t] - area[t] - base)
            px = lo[t, 0] + k % ext[t, 0]
            py = lo[t, 1] + k // ext[t, 0]
            p = torch.stack([px.to(E.dtype) + 0.5, py.to(E.dtype) + 0.5, torch.ones_like(px, dtype=E.dtype)], -1)
            e = (E[t] * p[:, None, :]).sum(-1)
            z = (zplane[t] * p).sum(-1)
            keep = (e >= 0).all(-1) & (z >= -1) & (z <= 1)
            t, pix, z = t[keep], (py * W + px)[keep], z[keep]
            cz = torch.full_like(best_z, float("inf")).scatter_reduce(0, pix, z, "amin")
            tie = z == cz[pix]
            cid = torch.full_like(best_id, tri.shape[0]).scatter_reduce(0, pix[tie], t[tie], "amin")
            better = (cz < best_z) | ((cz == best_z) & (cid < best_id))
            best_z = torch.where(better, cz, best_z)
            best_id = torch.where(better, cid, best_id)
        start = stop
    return best_id


def _barycentrics(q: Tensor, zw: Tensor, p: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per pixel: ``q [P, 3, 3]`` pixel-homogeneous vertices, ``zw [P, 3, 2]`` clip (z, w), ``p [P, 3]``.

    Returns ``u, v, ndc_z [P]`` and ``db [P, 4] = (du/dX, du/dY, dv/dX, dv/dY)`` (the latter detached)."""
    E = _edge_coeffs(q)
    e = (E * p[:, None, :]).sum(-1)  # [P, 3]
    S = e.sum(-1)
    u, v = e[:, 0] / S, e[:, 1] / S
    z = (e * zw[..., 0]).sum(-1) / (e * zw[..., 1]).sum(-1)
    with torch.no_grad():
        Ed, Sd, ud, vd = E.detach(), S.detach(), u.detach(), v.detach()
        sa, sb = Ed[:, :, 0].sum(-1), Ed[:, :, 1].sum(-1)
        db = torch.stack([Ed[:, 0, 0] - ud * sa, Ed[:, 0, 1] - ud * sb,
                          Ed[:, 1, 0] - vd * sa, Ed[:, 1, 1] - vd * sb], -1) / Sd[:, None]
    return u, v, z, db


def rasterize(pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Reference of :func:`recon.renderers.mesh.rasterize.rasterize` (no input validation).

    Args: ``pos [C, V, 4]`` clip-space positions, ``tri [F, 3]`` integer vertex indices, ``resolution (H, W)``.
    Returns ``rast [C, H, W, 4]`` (u, v, ndc_z, id + 1; differentiable w.r.t. ``pos`` through u, v, ndc_z) and
    ``rast_db [C, H, W, 4]`` (du/dX, du/dY, dv/dX, dv/dY in pixels; detached), both in ``pos.dtype``.
    """
    H, W = int(resolution[0]), int(resolution[1])
    tri = tri.long()
    wide = _wide(pos.device)
    rasts, dbs = [], []
    for c in range(pos.shape[0]):
        best = _visibility(pos[c].detach(), tri, H, W)
        pix = torch.nonzero(best >= 0)[:, 0]
        f = best[pix]
        px, py = (pix % W).to(wide) + 0.5, (pix // W).to(wide) + 0.5
        p = torch.stack([px, py, torch.ones_like(px)], -1)
        verts = pos[c].to(wide)[tri[f]]  # [P, 3, 4], differentiable
        u, v, z, db = _barycentrics(_pixel_homogeneous(verts, H, W), verts[..., 2:], p)
        vals = torch.stack([u, v, z, (f + 1).to(wide)], -1).to(pos.dtype)
        rasts.append(pos.new_zeros(H * W, 4).index_put((pix,), vals).reshape(H, W, 4))
        dbs.append(pos.new_zeros(H * W, 4).index_put((pix,), db.to(pos.dtype)).reshape(H, W, 4))
    if not rasts:
        empty = pos.new_zeros(0, H, W, 4)
        return empty + 0 * pos.sum(), empty
    return torch.stack(rasts), torch.stack(dbs)


def _gather_corners(attr: Tensor, vidx: Tensor) -> Tensor:
    """``attr [V, A] | [C, V, A]``, ``vidx [C, H, W, 3]`` -> ``[C, H, W, 3, A]``."""
    if attr.ndim == 2:
        return attr[vidx]
    cam = torch.arange(vidx.shape[0], device=vidx.device)[:, None, None, None]
    return attr[cam, vidx]


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor, rast_db: Tensor | None = None,
                diff_attrs: str | list[int] | None = None) -> tuple[Tensor, Tensor | None]:
    """Reference of :func:`recon.renderers.mesh.rasterize.interpolate` (no input validation).

    Args: ``attr [V, A] | [C, V, A]``, ``rast [C, H, W, 4]``, ``tri [F, 3]``, optional ``rast_db [C, H, W, 4]`` and
    ``diff_attrs`` ("all" or attribute indices).
    Returns ``out [C, H, W, A]`` = ``u a0 + v a1 + (1 - u - v) a2`` (0 on empty pixels; differentiable w.r.t.
    ``attr`` and ``rast[..., :2]``) and ``out_da [C, H, W, 2 n]`` (detached) or None.
    """
    C, H, W, _ = rast.shape
    A = attr.shape[-1]
    ids = rast[..., 3].detach().round().long() - 1
    covered = ids >= 0
    if tri.shape[0] == 0 or attr.shape[-2] == 0:
        # Nothing can be covered; keep the graph connected so that autograd.grad w.r.t. attr/rast works.
        out = rast.new_zeros(C, H, W, A) + 0 * (attr.sum() + rast[..., :2].sum())
        da = None if rast_db is None or diff_attrs is None else rast.new_zeros(C, H, W, 2 * _n_diff(diff_attrs, A))
        return out, da
    vidx = tri.long()[ids.clamp(min=0)]  # [C, H, W, 3]
    a = _gather_corners(attr, vidx)  # [C, H, W, 3, A]
    u, v = rast[..., 0:1], rast[..., 1:2]
    out = u * a[..., 0, :] + v * a[..., 1, :] + (1 - u - v) * a[..., 2, :]
    out = torch.where(covered[..., None], out, torch.zeros_like(out))
    if rast_db is None or diff_attrs is None:
        return out, None
    with torch.no_grad():
        idx = list(range(A)) if diff_attrs == "all" else [int(i) for i in diff_attrs]
        ad = a.detach()[..., idx]  # [C, H, W, 3, n]
        d0, d1 = ad[..., 0, :] - ad[..., 2, :], ad[..., 1, :] - ad[..., 2, :]
        db = rast_db.detach().to(ad.dtype)
        dx = d0 * db[..., 0:1] + d1 * db[..., 2:3]
        dy = d0 * db[..., 1:2] + d1 * db[..., 3:4]
        da = torch.stack([dx, dy], -1).reshape(C, H, W, 2 * len(idx))
        da = torch.where(covered[..., None], da, torch.zeros_like(da))
    return out, da


def _n_diff(diff_attrs: str | list[int], A: int) -> int:
    return A if diff_attrs == "all" else len(list(diff_attrs))
