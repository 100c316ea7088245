"""Thin adapter from recon's four mesh raster ops to ``nvdiffrast.torch`` (CUDA tensors only, optional dependency).

recon's conventions are nvdiffrast's (docs/mesh.md): clip space, image row 0 at NDC y = -1, ``rast = (u, v, z/w,
id + 1)``, ``rast_db = (du/dX, du/dY, dv/dX, dv/dY)``, ``uv (0, 0)`` = first texel in memory, ``linear-mipmap-linear``
naming, so no flips or reorderings are needed. Differences that remain:

* ``texture``: nvdiffrast cannot build mip levels of odd sizes > 1; when recon's pyramid (``ceil`` halving) needs
  one, this adapter samples with the torch reference instead (one warning per process).
* ``antialias``: nvdiffrast projects vertices with ``1 / w`` (wrong for edges with a vertex at ``w <= 0``, where
  recon's homogeneous formulation is exact) and pairs non-manifold edges differently; otherwise the same.

Install with ``pip install git+https://github.com/NVlabs/nvdiffrast`` (needs a CUDA toolkit).
"""

from __future__ import annotations

import importlib.util
import warnings

import torch
from torch import Tensor

# One RasterizeCudaContext per CUDA device, created on first use (creating one allocates device buffers).
_CONTEXTS: dict[int, object] = {}
_WARNED_ODD_MIPS = False


def available() -> bool:
    """True when ``nvdiffrast.torch`` is importable and CUDA is available."""
    return importlib.util.find_spec("nvdiffrast") is not None and torch.cuda.is_available()


def _dr():
    try:
        import nvdiffrast.torch as dr
    except ImportError as err:  # pragma: no cover - depends on the install
        raise ImportError("the 'nvdiffrast' backend needs nvdiffrast: "
                          "pip install git+https://github.com/NVlabs/nvdiffrast") from err
    return dr


def _context(device: torch.device):
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CONTEXTS:
        _CONTEXTS[index] = _dr().RasterizeCudaContext(device=torch.device("cuda", index))
    return _CONTEXTS[index]


def rasterize(pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """``pos [C, V, 4]``, ``tri [F, 3]`` -> ``(rast [C, H, W, 4], rast_db [C, H, W, 4])`` on CUDA."""
    H, W = int(resolution[0]), int(resolution[1])
    return _dr().rasterize(_context(pos.device), pos.contiguous(), tri.to(torch.int32).contiguous(), resolution=(H, W),
                           grad_db=True)


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor, rast_db: Tensor | None = None,
                diff_attrs=None) -> tuple[Tensor, Tensor | None]:
    """``attr [V, A] | [C, V, A]`` -> ``(out [C, H, W, A], out_da [C, H, W, 2 n] or None)`` on CUDA."""
    tri = tri.to(torch.int32).contiguous()
    if rast_db is None or diff_attrs is None or (not isinstance(diff_attrs, str) and len(diff_attrs) == 0):
        out, _ = _dr().interpolate(attr.contiguous(), rast.contiguous(), tri)
        return out, None
    if not isinstance(diff_attrs, str):
        diff_attrs = [int(i) for i in diff_attrs]
    return _dr().interpolate(attr.contiguous(), rast.contiguous(), tri, rast_db=rast_db.contiguous(),
                             diff_attrs=diff_attrs)


def _halving_is_even(height: int, width: int, levels: int) -> bool:
    """True when nvdiffrast can build ``levels`` mip levels (no odd size > 1 on the way)."""
    h, w = height, width
    for _ in range(levels):
        if (h > 1 and h % 2) or (w > 1 and w % 2):
            return False
        h, w = max(1, h // 2), max(1, w // 2)
    return True


def texture(tex: Tensor, uv: Tensor, uv_da: Tensor | None, filter_mode: str, boundary_mode: str,
            max_mip_level: int | None) -> Tensor:
    """recon's ``texture`` on nvdiffrast: ``tex [Ht, Wt, D] | [C, Ht, Wt, D]``, ``uv [C, H, W, 2]`` -> ``[C, H, W, D]``.

    ``filter_mode`` is concrete (not ``auto``); ``uv_da`` is given for ``linear-mipmap-linear`` only.
    """
    global _WARNED_ODD_MIPS
    from recon.renderers.mesh import _ref_texture as ref

    tex4 = (tex if tex.dim() == 4 else tex[None]).contiguous()  # nvdiffrast broadcasts a batch of 1
    if filter_mode == "linear-mipmap-linear":
        n_levels = len(ref.mip_level_sizes(tex4.shape[1], tex4.shape[2], max_mip_level)) - 1
        if not _halving_is_even(tex4.shape[1], tex4.shape[2], n_levels):
            if not _WARNED_ODD_MIPS:
                _WARNED_ODD_MIPS = True
                warnings.warn(f"recon: nvdiffrast cannot build mip levels of odd size (texture {tuple(tex4.shape[1:3])});"
                              " sampling with the torch reference instead", RuntimeWarning, stacklevel=3)
            return ref.texture(tex, uv, uv_da, filter_mode, boundary_mode, max_mip_level)
        # Our LOD has no gradient (docs/mesh.md): nvdiffrast would send one into uv_da.
        return _dr().texture(tex4, uv.contiguous(), uv_da=uv_da.detach().contiguous(), filter_mode=filter_mode,
                             boundary_mode=boundary_mode, max_mip_level=max_mip_level)
    return _dr().texture(tex4, uv.contiguous(), filter_mode=filter_mode, boundary_mode=boundary_mode)


def antialias(color: Tensor, rast: Tensor, pos: Tensor, tri: Tensor) -> Tensor:
    """recon's ``antialias`` on nvdiffrast: ``color [C, H, W, D]`` -> ``[C, H, W, D]`` (gradients to color and pos)."""
    return _dr().antialias(color.contiguous(), rast.contiguous(), pos.contiguous(), tri.to(torch.int32).contiguous())
