"""Backend choice shared by the mesh ops: ``auto`` -> nvdiffrast (CUDA tensors, importable) -> cpu -> torch."""

from __future__ import annotations

import importlib.util
import warnings

import torch

from recon.renderers._build import ExtensionBuildError, load_cpu_extension

BACKENDS = ("auto", "torch", "cpu", "nvdiffrast")
_WARNED: set[str] = set()


def nvdiffrast_available() -> bool:
    """True when ``nvdiffrast.torch`` can be imported (it is optional and never required)."""
    return importlib.util.find_spec("nvdiffrast") is not None


def cpu_extension(family: str):
    """The compiled module of ``cuda/<family>``, or None (with one warning per family) when it cannot be built."""
    try:
        return load_cpu_extension(family)
    except ExtensionBuildError as err:
        if family not in _WARNED:
            _WARNED.add(family)
            warnings.warn(f"recon: falling back to the torch reference for {family}: {err}", stacklevel=3)
        return None


def resolve_backend(backend: str, family: str, *tensors: torch.Tensor) -> str:
    """Return the concrete backend ("torch", "cpu" or "nvdiffrast") for ``tensors``.

    ``family`` names the C++ extension folder (``cuda/<family>``) the ``cpu`` backend needs.
    Raises ``ValueError`` for an unknown name, ``cpu`` with non-CPU tensors, or ``nvdiffrast`` when it is not
    installed or the tensors are not on CUDA.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    on_cuda = any(t is not None and t.is_cuda for t in tensors)
    if backend == "auto":
        if on_cuda:
            return "nvdiffrast" if nvdiffrast_available() else "torch"
        return "cpu" if cpu_extension(family) is not None else "torch"
    if backend == "cpu":
        if on_cuda:
            raise ValueError("backend 'cpu' needs CPU tensors; use 'auto', 'torch' or 'nvdiffrast' on CUDA")
        if cpu_extension(family) is None:
            raise ValueError(f"backend 'cpu' is unavailable: the C++ extension cuda/{family} could not be built")
    if backend == "nvdiffrast":
        if not nvdiffrast_available():
            raise ValueError("backend 'nvdiffrast' requested but nvdiffrast is not installed")
        if not on_cuda:
            raise ValueError("backend 'nvdiffrast' needs CUDA tensors")
    return backend
