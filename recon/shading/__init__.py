"""Shading: lights and materials for inverse rendering.

* :mod:`recon.shading.envmap`: the equirectangular HDR environment light (:class:`EnvLight`), its direction <->
  texture mapping and file reading.

Public names are re-exported lazily (importing ``recon.shading`` loads nothing until a name is used).
"""

from __future__ import annotations

import importlib

# public name -> submodule that defines it; one entry per line
_EXPORTS = {
    "LUMA_WEIGHTS": "envmap",
    "dir_to_uv": "envmap",
    "uv_to_dir": "envmap",
    "envmap_lookup": "envmap",
    "read_envmap": "envmap",
    "EnvLight": "envmap",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
