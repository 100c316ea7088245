"""Torch twin of the marching-cubes kernel (``cuda/isosurface/marching_cubes.cpp``): the same rules, written as
a readable per-cube function that fills a table once, and a vectorized lookup of that table.

A cube's triangles depend on which corners are below the level (8 bits) and, for each ambiguous face (corners
alternating), on the asymptotic decider (6 bits); :func:`cube_triangles` builds them for one such key and
:func:`_table` caches all 2^14 keys. :func:`marching_cubes_keys` returns the same int64 ``[T, 3]`` edge keys in
the same order as the kernel.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

EDGES = ((0, 1), (2, 3), (4, 5), (6, 7), (0, 2), (1, 3), (4, 6), (5, 7), (0, 4), (1, 5), (2, 6), (3, 7))
FACES = ((0, 4, 6, 2), (1, 3, 7, 5), (0, 1, 5, 4), (2, 6, 7, 3), (0, 2, 3, 1), (4, 5, 7, 6))  # CCW from outside
MAX_TRIANGLES = 12  # one 12-crossing cycle fanned from its center
CENTER = 12  # local vertex number of a cycle's center
_EDGE_ID = {frozenset(e): i for i, e in enumerate(EDGES)}
_EDGE_FACES = [{f for f, cs in enumerate(FACES) for m in range(4) if _EDGE_ID[frozenset((cs[m], cs[(m + 1) % 4]))] == e}
               for e in range(12)]


def triangulate(cycle: list[int]) -> tuple[list[tuple[int, int, int]], list[int] | None]:
    """Fan the cycle from its first vertex none of whose diagonals lies in a cube face (such an edge could be
    used by the neighbouring cube too); with no such vertex, fan it from its center. Returns the triangles and
    the cycle when the center is used."""
    k = len(cycle)
    for s in range(k):
        if all(not (_EDGE_FACES[cycle[s]] & _EDGE_FACES[cycle[(s + t) % k]]) for t in range(2, k - 1)):
            return [(cycle[s], cycle[(s + t + 1) % k], cycle[(s + t) % k]) for t in range(1, k - 1)], None
    return [(CENTER, cycle[(t + 1) % k], cycle[t]) for t in range(k)], cycle


def cube_triangles(neg: tuple[bool, ...], negatives_connect: tuple[bool, ...]):
    """Triangles (local vertex numbers: edges 0-11, ``CENTER``) of a cube whose corners ``neg[c]`` are below the
    level, where ambiguous face ``f`` joins its negative corners iff ``negatives_connect[f]``; normals point toward
    increasing values. Returns ``(triangles, center cycle or None)``."""
    nxt: dict[int, int] = {}
    for f, corners in enumerate(FACES):
        n = [neg[c] for c in corners]

        def edge(m: int) -> int:
            return _EDGE_ID[frozenset((corners[m % 4], corners[(m + 1) % 4]))]

        changes = sum(n[m] != n[(m + 1) % 4] for m in range(4))
        if changes == 2:
            start = next(edge(m) for m in range(4) if n[m] and not n[(m + 1) % 4])
            nxt[start] = next(edge(m) for m in range(4) if not n[m] and n[(m + 1) % 4])
        elif changes == 4:
            for m in range(4):
                if negatives_connect[f] and not n[m]:
                    nxt[edge(m - 1)] = edge(m)  # positive corner m cut off: from its incoming edge to its outgoing
                elif not negatives_connect[f] and n[m]:
                    nxt[edge(m)] = edge(m - 1)  # negative corner m cut off
    tris, seen, center = [], set(), None
    for e0 in sorted(nxt):
        if e0 in seen:
            continue
        cycle, e = [], e0
        while e not in seen:
            seen.add(e)
            cycle.append(e)
            e = nxt[e]
        t, c = triangulate(cycle)
        tris += t
        center = c or center
    return tris, center


@functools.lru_cache(maxsize=1)
def _table() -> tuple[Tensor, Tensor]:
    """``[256 * 64, MAX_TRIANGLES, 3]`` int64 local vertices and ``[256 * 64, 12]`` center cycles (-1 pads),
    indexed by corner mask + 256 * face bits."""
    table = torch.full((256 * 64, MAX_TRIANGLES, 3), -1, dtype=torch.long)
    centers = torch.full((256 * 64, 12), -1, dtype=torch.long)
    for mask in range(1, 255):
        neg = tuple(bool(mask >> c & 1) for c in range(8))
        ambiguous = [f for f, cs in enumerate(FACES) if all(neg[cs[m]] != neg[cs[(m + 1) % 4]] for m in range(4))]
        for bits in range(1 << len(ambiguous)):
            connect = [False] * 6
            face_bits = 0
            for slot, f in enumerate(ambiguous):
                if bits >> slot & 1:
                    connect[f] = True
                    face_bits |= 1 << f
            tris, center = cube_triangles(neg, tuple(connect))
            table[mask + 256 * face_bits, : len(tris)] = torch.tensor(tris)
            if center:
                centers[mask + 256 * face_bits, : len(center)] = torch.tensor(center)
    return table, centers


def marching_cubes_keys(values: Tensor, level: float) -> tuple[Tensor, Tensor]:
    """Int64 ``[T, 3]`` vertex keys of the triangles of ``{values = level}``, ``values [X, Y, Z]``, and int64
    ``[C, 13]`` centers (key, then their cycle's edge keys, -1 pads): the kernel's layout and order (see the C++
    header comment)."""
    X, Y, Z = values.shape
    w = values.double() - level
    corner = [w[c & 1: X - 1 + (c & 1), c >> 1 & 1: Y - 1 + (c >> 1 & 1), c >> 2 & 1: Z - 1 + (c >> 2 & 1)]
              for c in range(8)]
    mask = sum((corner[c] < 0).long() << c for c in range(8))
    face_bits = torch.zeros_like(mask)
    for f, cs in enumerate(FACES):
        n = [corner[c] < 0 for c in cs]
        alternating = (n[0] == n[2]) & (n[1] == n[3]) & (n[0] != n[1])
        num = corner[cs[0]] * corner[cs[2]] - corner[cs[1]] * corner[cs[3]]
        den = corner[cs[0]] + corner[cs[2]] - corner[cs[1]] - corner[cs[3]]
        face_bits |= (alternating & (num * den < 0)).long() << f
    cube = torch.nonzero((mask > 0) & (mask < 255))  # [M, 3] row-major, as the kernel visits cubes
    i, j, k = cube.unbind(-1)
    table, center_table = (t.to(values.device) for t in _table())
    key = mask[i, j, k] + 256 * face_bits[i, j, k]
    local = table[key]  # [M, MAX_TRIANGLES, 3]
    valid = local[:, :, 0] >= 0
    base = (i * Y + j) * Z + k
    nv = X * Y * Z
    offset = torch.tensor([a // 4 * nv + ((b & 1) * Y + (b >> 1 & 1)) * Z + (b >> 2 & 1)
                           for a, (b, _) in enumerate(EDGES)] + [3 * nv], device=values.device)  # + CENTER
    keys = base[:, None, None] + offset[local.clamp_min(0)]
    cycles = center_table[key]
    has_center = cycles[:, 0] >= 0
    cycle_keys = torch.where(cycles >= 0, base[:, None] + offset[cycles.clamp_min(0)], -1)
    centers = torch.cat([(base + 3 * nv)[:, None], cycle_keys], 1)[has_center]
    return keys[valid], centers
