"""Process-wide settings for recon's commands (the CLI applies them; a library user may call them)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
_APPLIED = False


def keep_freed_memory(limit: int = 1 << 30) -> bool:
    """Keep blocks below ``limit`` bytes in the process's heap when freed (glibc only; returns whether applied).

    glibc serves every allocation above its mmap threshold (at most 32 MB) with a fresh ``mmap`` and unmaps it on
    free, so the next tensor of that size page-faults its memory back in, zero-filled by the kernel. A field's
    training step allocates and frees hundreds of such tensors: on 2 cores a NeuS step of 1024 rays spent 0.16-0.2
    of its 0.6 s in the kernel, and rendering 8192 rays of a fox SDF 3 of 3.5 s. With the threshold raised to
    ``limit`` and trimming deferred to the same amount, freed blocks are reused: 0.46 s per step and 1.6 s per
    8192 rays (docs/fields.md). Freed memory is kept for reuse rather than handed back between steps, and
    fragmentation can raise the peak: the fox SDF preset's peak RSS went from 1.83 to 2.47 GB.
    ``RECON_KEEP_FREED_MEMORY=0`` turns it off. Applied once per process (later calls change nothing)."""
    global _APPLIED
    if _APPLIED:
        return True
    if os.environ.get("RECON_KEEP_FREED_MEMORY", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not 0 < limit < 2 ** 31:
        raise ValueError(f"limit must be in (0, 2^31) bytes (mallopt takes an int), got {limit}")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to do
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # the trim threshold first: should the mmap one fail, keeping freed heap memory alone changes nothing else
    _APPLIED = bool(mallopt(_M_TRIM_THRESHOLD, int(limit))) and bool(mallopt(_M_MMAP_THRESHOLD, int(limit)))
    return _APPLIED
