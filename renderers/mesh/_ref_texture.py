"""Pure-PyTorch reference twins of the mesh ``texture`` and ``antialias`` ops (readable; autograd gradients).

The C++ kernels of ``cuda/mesh_texture`` implement the same math (``texture_math.h``); see ``docs/mesh.md``.

Texture sampling (nvdiffrast's conventions)
    * ``uv (0, 0)`` is the top-left corner of the texture as stored; texel ``(i, j)`` of a level of size
      ``h x w`` has its center at ``((j + 0.5) / w, (i + 0.5) / h)``, so the continuous texel coordinate is
      ``x = u w - 0.5`` (``y = v h - 0.5``), bilinear between texels ``floor(x)`` and ``floor(x) + 1``.
    * ``wrap`` first takes the fractional part ``u - floor(u)`` (as nvdiffrast, which keeps precision for large
      ``|u|``) and wraps texel indices modulo the level size; ``clamp`` clamps texel indices to the edge texels
      (the sample saturates at the edge texel centers, with zero ``uv`` gradient there).
    * ``nearest`` picks texel ``floor(u w)`` (clamped to ``[0, w - 1]`` after the wrap); no ``uv`` gradient.
    * Trilinear (``linear-mipmap-linear``): with ``s = u * Wt``, ``t = v * Ht`` (base level size), the screen
      Jacobian ``J = [[ds/dx, ds/dy], [dt/dx, dt/dy]]`` from ``uv_da = (du/dx, du/dy, dv/dx, dv/dy)`` gives
      ``A = |J[:, 0]|^2``, ``B = |J[:, 1]|^2``, ``C = J[:, 0] . J[:, 1]`` and the major footprint axis
      ``l^2 = (A + B) / 2 + sqrt((A - B)^2 / 4 + C^2)`` (largest eigenvalue of ``J^T J``);
      ``LOD = 0.5 log2(l^2)`` clamped to ``[0, L]`` (``L`` = last level; NaN -> 0). Levels ``floor(LOD)`` and
      ``min(floor(LOD) + 1, L)`` are sampled bilinearly and blended by ``frac(LOD)``. No gradient reaches
      ``uv_da`` (the LOD is treated as a constant).
    * Non-finite ``uv`` samples give 0 with zero gradient.

Mip pyramid (``build_mipmaps``)
    Level ``k + 1`` has size ``(max(1, ceil(h / 2)), max(1, ceil(w / 2)))``; texel ``(i, j)`` is the mean of the
    2x2 block ``{2i, 2i + 1} x {2j, 2j + 1}`` of level ``k`` with indices clamped to the last row / column, so an
    odd size repeats its last row / column (the edge texel weighs double in the last output texel) and a size of 1
    stays 1. For power-of-two sizes this is exactly nvdiffrast's pyramid. The chain stops at ``1 x 1`` or after
    ``max_mip_level`` levels.

Antialiasing (Laine et al. 2020, as nvdiffrast; see :func:`antialias`)
    Geometry is evaluated in pixel-homogeneous coordinates relative to a pixel center, so edges of triangles with
    vertices behind the camera (``w <= 0``) are handled exactly: an edge crosses the pixel row (column) where its
    homogeneous ``y`` changes sign *and* the crossing point has ``w > 0``. For ``w > 0`` everywhere this is
    nvdiffrast's computation.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

FILTER_MODES = ("auto", "nearest", "linear", "linear-mipmap-linear")
BOUNDARY_MODES = ("wrap", "clamp")

# Edge crossings up to 1/16 pixel outside the segment between the two pixel centers still count (then clamp):
# the crossing is recomputed from vertex positions that the rasterizer saw with a slightly different rounding.
AA_CROSS_EPS = 1.0 / 16.0
# Regularizer of the position gradient (in pixels) for nearly horizontal / tiny edges, as nvdiffrast: the
# gradient of the crossing uses 1 / (dy + copysign(eps, dy)) instead of 1 / dy; the forward value is exact.
AA_GRAD_EPS = 1e-3


# ----------------------------------------------------------------------------------------------------------------
# Mip pyramid
# ----------------------------------------------------------------------------------------------------------------


def mip_level_sizes(height: int, width: int, max_mip_level: int | None = None) -> list[tuple[int, int]]:
    """``[(h_0, w_0), (h_1, w_1), ...]`` of the pyramid: halve with ``ceil`` until ``1 x 1`` (or the limit)."""
    sizes = [(int(height), int(width))]
    while max(sizes[-1]) > 1 and (max_mip_level is None or len(sizes) <= max_mip_level):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def build_mipmaps(tex: Tensor, max_mip_level: int | None = None) -> list[Tensor]:
    """Mip pyramid ``[tex, level_1, ...]`` of ``tex [..., H, W, D]`` by a differentiable 2x2 box filter.

    Odd sizes repeat their last row / column before averaging (see the module docstring), so level ``k + 1`` has
    size ``ceil(h_k / 2) x ceil(w_k / 2)``. ``max_mip_level`` limits the number of levels after the base
    (``0`` = base only); None builds down to ``1 x 1``.
    """
    levels = [tex]
    for h, w in mip_level_sizes(tex.shape[-3], tex.shape[-2], max_mip_level)[1:]:
        x = levels[-1]
        if x.shape[-3] % 2:
            x = torch.cat([x, x[..., -1:, :, :]], dim=-3)
        if x.shape[-2] % 2:
            x = torch.cat([x, x[..., -1:, :]], dim=-2)
        x = x.unflatten(-3, (h, 2)).unflatten(-2, (w, 2))  # [..., h, 2, w, 2, D]
        # Four strided views summed (several times faster than a mean over two strided dims, forward and back).
        levels.append(0.25 * ((x[..., 0, :, 0, :] + x[..., 0, :, 1, :]) + (x[..., 1, :, 0, :] + x[..., 1, :, 1, :])))
    return levels


# ----------------------------------------------------------------------------------------------------------------
# Texture sampling
# ----------------------------------------------------------------------------------------------------------------


def _cam_offsets(level: Tensor, C: int) -> Tensor | int:
    """Texel offset of each camera's texture in the flattened level (0 when the texture is shared)."""
    T, h, w, _ = level.shape
    if T == 1:
        return 0
    return (torch.arange(C, device=level.device) * (h * w)).view(C, 1, 1)


def _bilinear(level: Tensor, u: Tensor, v: Tensor, boundary_mode: str) -> Tensor:
    """Bilinear sample of ``level [T, h, w, D]`` at ``u, v [C, H, W]`` -> ``[C, H, W, D]``."""
    _, h, w, D = level.shape
    if boundary_mode == "wrap":
        u = u - torch.floor(u)
        v = v - torch.floor(v)
    x = u * w - 0.5
    y = v * h - 0.5
    if boundary_mode == "clamp":
        # Beyond one texel outside, the clamped indices no longer change; bounding x keeps the int cast defined.
        x = x.clamp(-1.0, float(w))
        y = y.clamp(-1.0, float(h))
    x0 = torch.floor(x)
    y0 = torch.floor(y)
    fx = (x - x0)[..., None]
    fy = (y - y0)[..., None]
    j0, i0 = x0.long(), y0.long()
    j1, i1 = j0 + 1, i0 + 1
    if boundary_mode == "wrap":
        j0, j1, i0, i1 = j0.remainder(w), j1.remainder(w), i0.remainder(h), i1.remainder(h)
    else:
        j0, j1, i0, i1 = j0.clamp(0, w - 1), j1.clamp(0, w - 1), i0.clamp(0, h - 1), i1.clamp(0, h - 1)
    flat = level.reshape(-1, D)
    base = _cam_offsets(level, u.shape[0])
    t00, t10 = flat[base + i0 * w + j0], flat[base + i0 * w + j1]
    t01, t11 = flat[base + i1 * w + j0], flat[base + i1 * w + j1]
    return (1 - fy) * ((1 - fx) * t00 + fx * t10) + fy * ((1 - fx) * t01 + fx * t11)


def _nearest(level: Tensor, u: Tensor, v: Tensor, boundary_mode: str) -> Tensor:
    _, h, w, D = level.shape
    u, v = u.detach(), v.detach()
    if boundary_mode == "wrap":
        u = u - torch.floor(u)
        v = v - torch.floor(v)
    j = torch.floor((u * w).clamp(-1.0, float(w))).long().clamp(0, w - 1)
    i = torch.floor((v * h).clamp(-1.0, float(h))).long().clamp(0, h - 1)
    return level.reshape(-1, D)[_cam_offsets(level, u.shape[0]) + i * w + j]


def mip_level(uv_da: Tensor, base_h: int, base_w: int, max_level: int) -> Tensor:
    """Fractional LOD ``[C, H, W]`` from ``uv_da [C, H, W, 4]`` (formula in the module docstring); no gradient."""
    da = uv_da.detach()
    dsdx, dsdy = da[..., 0] * base_w, da[..., 1] * base_w
    dtdx, dtdy = da[..., 2] * base_h, da[..., 3] * base_h
    A = dsdx * dsdx + dtdx * dtdx
    B = dsdy * dsdy + dtdy * dtdy
    Cc = dsdx * dsdy + dtdx * dtdy
    l2b = 0.5 * (A + B)
    l2a = torch.sqrt(0.25 * (A - B) * (A - B) + Cc * Cc)
    flevel = 0.5 * torch.log2(l2b + l2a)
    return torch.nan_to_num(flevel, nan=0.0).clamp(0.0, float(max_level))


def texture(tex: Tensor, uv: Tensor, uv_da: Tensor | None = None, filter_mode: str = "auto",
            boundary_mode: str = "wrap", max_mip_level: int | None = None) -> Tensor:
    """Sample ``tex [Ht, Wt, D] | [C, Ht, Wt, D]`` at ``uv [C, H, W, 2]`` -> ``[C, H, W, D]`` (see module docstring).

    ``filter_mode``: ``nearest``, ``linear``, ``linear-mipmap-linear`` (needs ``uv_da [C, H, W, 4]``) or ``auto``
    (trilinear with ``uv_da``, else bilinear). Inputs are assumed valid (the public op validates them).
    """
    if filter_mode == "auto":
        filter_mode = "linear-mipmap-linear" if uv_da is not None else "linear"
    tex4 = tex if tex.dim() == 4 else tex[None]
    C = uv.shape[0]
    finite = torch.isfinite(uv).all(-1)
    uv = torch.where(finite[..., None], uv, torch.zeros_like(uv))
    u, v = uv[..., 0], uv[..., 1]
    if filter_mode == "nearest":
        out = _nearest(tex4, u, v, boundary_mode)
    elif filter_mode == "linear":
        out = _bilinear(tex4, u, v, boundary_mode)
    else:
        levels = build_mipmaps(tex4, max_mip_level)
        L = len(levels) - 1
        flevel = mip_level(uv_da, tex4.shape[1], tex4.shape[2], L)
        level0 = torch.floor(flevel)
        frac = flevel - level0
        level0 = level0.long()
        level1 = (level0 + 1).clamp(max=L)
        out = torch.zeros(C, *uv.shape[1:3], tex4.shape[-1], dtype=tex.dtype, device=tex.device)
        for k, lev in enumerate(levels):
            wk = (1 - frac) * (level0 == k) + frac * (level1 == k)
            if bool((wk != 0).any()):
                out = out + wk[..., None] * _bilinear(lev, u, v, boundary_mode)
    return torch.where(finite[..., None], out, torch.zeros_like(out))


# ----------------------------------------------------------------------------------------------------------------
# Antialiasing
# ----------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def edge_topology(tri: Tensor, num_vertices: int) -> Tensor:
    """Opposite vertex across each triangle edge: ``opp [F, 3]`` int32.

    Edge ``i`` of triangle ``f`` joins ``tri[f, (i + 1) % 3]`` and ``tri[f, (i + 2) % 3]`` (it is opposite
    vertex ``i``). ``opp[f, i]`` is the vertex of the other triangle on that edge when exactly two
    non-degenerate triangles share it, and -1 otherwise (boundary or non-manifold edges, which are always
    treated as potential silhouettes, and every edge of a degenerate triangle). Deterministic (stable sort).
    """
    F = tri.shape[0]
    t = tri.long()
    if F == 0:
        return torch.full((0, 3), -1, dtype=torch.int32, device=tri.device)
    a, b = t[:, [1, 2, 0]], t[:, [2, 0, 1]]
    lo, hi = torch.minimum(a, b), torch.maximum(a, b)
    degenerate = (t[:, 0] == t[:, 1]) | (t[:, 1] == t[:, 2]) | (t[:, 2] == t[:, 0])
    key = (lo * max(int(num_vertices), 1) + hi).reshape(-1)
    slots = torch.arange(3 * F, device=tri.device)
    # Degenerate triangles get unique negative keys: they never pair with anything.
    key = torch.where(degenerate.repeat_interleave(3), -1 - slots, key)
    ks, order = torch.sort(key, stable=True)
    first = torch.ones_like(ks, dtype=torch.bool)
    first[1:] = ks[1:] != ks[:-1]
    group = torch.cumsum(first.long(), 0) - 1
    counts = torch.bincount(group)[group]
    partner = torch.where(first, slots + 1, slots - 1).clamp(0, 3 * F - 1)
    opp_vertex = t.reshape(-1)  # slot 3f + i holds vertex i of triangle f: the vertex opposite edge i
    opp_sorted = torch.where(counts == 2, opp_vertex[order[partner]], torch.full_like(ks, -1))
    opp = torch.empty_like(opp_sorted)
    opp[order] = opp_sorted
    return opp.view(F, 3).to(torch.int32)


def _det3(p: Tensor, q: Tensor, r: Tensor) -> Tensor:
    """Determinant of rows ``(x, y, w)`` of ``p, q, r [..., 3]`` (sign = screen-space winding)."""
    return (p[..., 0] * (q[..., 1] * r[..., 2] - q[..., 2] * r[..., 1])
            - p[..., 1] * (q[..., 0] * r[..., 2] - q[..., 2] * r[..., 0])
            + p[..., 2] * (q[..., 0] * r[..., 1] - q[..., 1] * r[..., 0]))


def _pairs(ids: Tensor, d: int) -> tuple[Tensor, Tensor]:
    """Flat pixel indices ``(p0, p1)`` of the right (d=0) / down (d=1) neighbour pairs whose ids differ."""
    C, H, W = ids.shape
    idx = torch.arange(C * H * W, device=ids.device).view(C, H, W)
    if d == 0:
        a, b, ia = ids[:, :, :-1], ids[:, :, 1:], idx[:, :, :-1]
    else:
        a, b, ia = ids[:, :-1, :], ids[:, 1:, :], idx[:, :-1, :]
    p0 = ia[a != b]
    return p0, p0 + (1 if d == 0 else W)


def _pair_geometry(rast_f: Tensor, pos: Tensor, tri: Tensor, p0: Tensor, p1: Tensor, H: int, W: int, d: int):
    """For pairs ``(p0, p1)``: the chosen triangle ``f``, direction sign ``ds``, camera, clip vertices ``P [P, 3, 4]``
    and the pixel-homogeneous edge endpoints ``(x, y, w)`` of edges a -> b (``[P, 3]`` each, axes swapped for
    vertical pairs) relative to the chosen pixel's center."""
    id0, id1 = rast_f[p0, 3].long() - 1, rast_f[p1, 3].long() - 1
    z0, z1 = rast_f[p0, 2], rast_f[p1, 2]
    use1 = (id0 < 0) | ((id1 >= 0) & ~(z0 < z1))  # the nearer (or the only covered) pixel's triangle
    f = torch.where(use1, id1, id0)
    ds = torch.where(use1, -1.0, 1.0).to(pos.dtype)
    cam = torch.div(p0, H * W, rounding_mode="floor")
    rem = p0 - cam * (H * W)
    py, px = torch.div(rem, W, rounding_mode="floor"), rem % W
    px = px + (use1 & (d == 0)).long()
    py = py + (use1 & (d == 1)).long()
    P = pos[cam[:, None], tri[f].long()]  # [P, 3, 4] clip positions (with autograd)
    X, Y, Wc = P[..., 0], P[..., 1], P[..., 3]
    xh, yh = 0.5 * W, 0.5 * H
    cx = (px.to(pos.dtype) + 0.5)[:, None]
    cy = (py.to(pos.dtype) + 0.5)[:, None]
    hx = X * xh + Wc * (xh - cx)  # pixel-homogeneous, relative to the chosen pixel center
    hy = Y * yh + Wc * (yh - cy)
    if d == 1:
        hx, hy = hy, hx  # the pair's axis becomes x
    ia, ib = [1, 2, 0], [2, 0, 1]  # edge i joins vertices (i + 1) % 3 and (i + 2) % 3
    ends = (hx[:, ia], hy[:, ia], Wc[:, ia], hx[:, ib], hy[:, ib], Wc[:, ib])
    return f, ds, cam, P, ends


def _pair_deltas(color_f: Tensor, rast_f: Tensor, pos: Tensor, tri: Tensor, opp: Tensor, H: int, W: int, d: int,
                 grad_eps: float) -> tuple[Tensor, Tensor]:
    """Target pixel and color delta ``alpha (c1 - c0)`` of every active pair in direction ``d``."""
    p0, p1 = _pairs(rast_f[:, 3].view(-1, H, W), d)
    if p0.numel() == 0:
        return p0, color_f.new_zeros(0, color_f.shape[1])
    f, ds, cam, P, ends = _pair_geometry(rast_f, pos, tri, p0, p1, H, W, d)
    hxa, hya, wa, hxb, hyb, wb = ends
    with torch.no_grad():
        den = hya * wb - hyb * wa
        num = hya * hxb - hyb * hxa
        crosses = ((hya < 0) != (hyb < 0)) & (den * (hya - hyb) > 0)  # sign change with w > 0 at the crossing
        dc_all = torch.where(crosses, ds[:, None] * (num / den), torch.full_like(den, -math.inf))
        di = dc_all.argmax(1, keepdim=True)  # the exit point of the chosen pixel's triangle along the segment
        dc = dc_all.gather(1, di)[:, 0]
        DX = hxb * wa - hxa * wb
        DY = hyb * wa - hya * wb
        steep = (DY.gather(1, di).abs() >= DX.gather(1, di).abs())[:, 0]
        xyw = P[..., [0, 1, 3]]
        bb = _det3(xyw[:, 0], xyw[:, 1], xyw[:, 2])
        o = opp[f].long().gather(1, di)[:, 0]
        own = xyw.gather(1, di[:, :, None].expand(-1, 1, 3))[:, 0]
        O = torch.where((o >= 0)[:, None], pos[cam, o.clamp(min=0)][:, [0, 1, 3]], own)  # wing vertex
        e = di[:, 0]
        wing = torch.where(e == 0, _det3(O, xyw[:, 1], xyw[:, 2]),
                           torch.where(e == 1, _det3(xyw[:, 0], O, xyw[:, 2]), _det3(xyw[:, 0], xyw[:, 1], O)))
        silhouette = (wing > 0) == (bb > 0)
        active = crosses.any(1) & steep & silhouette & (dc > -AA_CROSS_EPS) & (dc < 1 + AA_CROSS_EPS)
        inner = (dc > 0) & (dc < 1)  # a clamped crossing passes no position gradient
    sel = active.nonzero()[:, 0]
    di, ds = di[sel], ds[sel]
    ga_x, ga_y, ga_w, gb_x, gb_y, gb_w = (t[sel].gather(1, di)[:, 0] for t in ends)
    # The value is the exact clamped crossing; the gradient is that of num / (den + copysign(eps |w_a w_b|, den)).
    num = ga_y * gb_x - gb_y * ga_x
    den = ga_y * gb_w - gb_y * ga_w
    den_s = den + (torch.sign(den) * grad_eps * (ga_w * gb_w).abs()).detach()
    xs = num / den_s
    dcc = dc[sel].clamp(0.0, 1.0) + torch.where(inner[sel], ds * (xs - xs.detach()), torch.zeros_like(xs))
    alpha = ds * (0.5 - dcc)
    q0, q1 = p0[sel], p1[sel]
    target = torch.where(alpha.detach() > 0, q0, q1)
    return target, alpha[:, None] * (color_f[q1] - color_f[q0])


def _antialias(color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor, opp: Tensor,
               grad_eps: float = AA_GRAD_EPS) -> Tensor:
    """:func:`antialias` with a given topology ``opp`` and gradient regularizer (0 = exact derivative)."""
    C, H, W, D = color.shape
    color_f = color.reshape(-1, D)
    rast_f = rast.detach().reshape(-1, 4)
    out = color_f
    for d in (0, 1):
        target, delta = _pair_deltas(color_f, rast_f, pos, tri, opp, H, W, d, grad_eps)
        if target.numel():
            out = out.index_add(0, target, delta)
    return out.view(C, H, W, D)


def antialias(color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor) -> Tensor:
    """Analytic silhouette antialiasing (Laine et al. 2020): ``color [C, H, W, D]`` -> ``[C, H, W, D]``.

    For each horizontally / vertically adjacent pixel pair ``(p0, p1)`` with different ``rast[..., 3]`` ids, the
    triangle of the nearer pixel (smaller ``ndc_z``; the covered one next to an empty pixel; ``p1`` on ties) is
    analysed relative to that pixel's center: of its edges that cross the line through both centers (at a point
    with ``w > 0``), the farthest crossing toward the other pixel is taken (the triangle's exit point). If that
    edge is steep for this direction (``|dy| >= |dx|`` for a horizontal pair, ``|dx| >= |dy|`` for a vertical
    one), a potential silhouette (boundary edge, or its wing vertex lies on the same side of the edge as the
    triangle's own third vertex, tested with homogeneous determinants) and the crossing ``dc`` (0 = chosen
    center, 1 = the other) lies in ``(-1/16, 17/16)``, then with ``alpha = s (0.5 - clamp(dc, 0, 1))`` (``s = +1``
    when ``p0``'s triangle was chosen, else -1) ``alpha (c1 - c0)`` is added to ``p0`` when ``alpha > 0`` and to
    ``p1`` otherwise: the pixel that the edge cuts takes the other color in proportion to its cut-off area.
    The deltas of all pairs are computed from the input colors and summed.

    Gradients: to ``color`` through the blend, to ``pos [C, V, 4]`` (x, y, w) through the crossing (nvdiffrast's
    1e-3 pixel regularizer, :data:`AA_GRAD_EPS`); none where the crossing was clamped. ``rast`` gets none.
    """
    return _antialias(color, rast, pos, tri, edge_topology(tri, pos.shape[1]), AA_GRAD_EPS)
