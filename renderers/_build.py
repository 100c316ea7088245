"""Build and load recon's C++ extensions on first use (torch.utils.cpp_extension + ninja), cached per machine.

Sources live in the repository's ``cuda/<family>/`` folder. The build directory is keyed on the extension
name, the torch version, the instruction-set flags in use and the sources' bytes, so a cache copied to another
CPU is never loaded with instructions that CPU lacks, and a finished build is loaded without running ninja. One
line is printed while compiling; any failure raises :class:`ExtensionBuildError`, which callers turn into one warning and a fallback to the torch reference.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import re
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType

import torch

try:
    import fcntl
except ImportError:  # Windows: no flock; builds there rely on torch's own lock alone
    fcntl = None

CUDA_SRC = Path(__file__).resolve().parents[1] / "cuda"
# -fopenmp at link time links libgomp.so.1, which resolves to the copy torch already loaded (same soname), so
# at::parallel_for runs on torch's own OpenMP thread pool.
LDFLAGS = ("-fopenmp",)  # a tuple: torch's loader appends its own -L/-l flags to the list it is given
_RECIPE_VERSION = 1  # bump when _build changes how a family is built in a way the flags do not show

_LOCK = threading.Lock()
_LOADED: dict[str, ModuleType] = {}
_FAILED: dict[str, "ExtensionBuildError"] = {}


class ExtensionBuildError(RuntimeError):
    """A C++ extension could not be compiled or loaded; the message says why."""


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def _isa_flags() -> list[str]:
    """-mavx2 -mfma when this CPU has them (x86-64 Linux); never -march=native (caches may move between CPUs)."""
    if platform.machine() not in ("x86_64", "AMD64") or os.environ.get("RECON_NO_AVX2"):
        return []
    flags = _cpu_flags()
    return ["-mavx2", "-mfma"] if {"avx2", "fma"} <= flags else []


def _cache_root() -> Path:
    root = os.environ.get("RECON_EXT_CACHE")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "recon" / "torch_extensions"


def load_cpu_extension(family: str) -> ModuleType:
    """Compile (once) and import the CPU extension of ``cuda/<family>/*.cpp``.

    Returns the loaded module. Raises :class:`ExtensionBuildError` when there is no compiler, the sources are
    missing, or compilation fails (the error keeps the compiler's message). A failure is remembered for the
    process, so callers may ask again cheaply.
    """
    with _LOCK:
        if family in _LOADED:
            return _LOADED[family]
        if family in _FAILED:
            raise _FAILED[family]
        try:
            _LOADED[family] = _build(family)
            return _LOADED[family]
        except ExtensionBuildError as err:
            _FAILED[family] = err
            raise


class _BuildLock:
    """An flock on ``<build_dir>.flock`` held while building: the kernel drops it when its process dies, so a
    build whose Python process was killed halfway never blocks the next one. torch's own lock (an empty ``lock``
    file in the build directory, waited on forever) is left behind by such a kill; with the flock held no other
    recon process is building there, so a ``lock`` file found then is stale: it is removed, and so is the
    finished-build marker, since the library beside it may be cut off. (A compiler or linker that outlives the
    killed Python process is not covered: the next build may run beside it.)"""

    def __init__(self, build_dir: Path):
        self.path, self.torch_lock = build_dir.with_name(build_dir.name + ".flock"), build_dir / "lock"
        self.marker = build_dir / "recon_build_ok"

    def __enter__(self) -> None:
        if fcntl is None:
            return
        self.fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o644)  # flock needs no write access
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        if self.torch_lock.exists():
            warnings.warn(f"recon: removing a stale build lock {self.torch_lock} (a build was killed halfway)",
                          RuntimeWarning, stacklevel=2)
            self.marker.unlink(missing_ok=True)
            self.torch_lock.unlink(missing_ok=True)

    def __exit__(self, *exc: object) -> None:
        if fcntl is None:
            return
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _key_files(family: str) -> list[Path]:
    """What a build of ``cuda/<family>`` reads: every file of its folder and, transitively, the quoted
    ``#include``s they name (``cuda/gaussians_rt`` includes headers of ``cuda/gaussians`` and ``cuda/mesh_bvh``)."""
    todo = [p.resolve() for p in (CUDA_SRC / family).glob("*") if p.is_file()]
    seen: set[Path] = set()
    while todo:
        path = todo.pop()
        if path in seen or not path.is_file() or not path.is_relative_to(CUDA_SRC.resolve()):
            continue
        seen.add(path)
        for inc in re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(errors="replace"), re.M):
            todo.append((path.parent / inc).resolve())
    return sorted(seen)


def build_dir_of(family: str) -> tuple[Path, tuple[str, ...]]:
    """The cache directory of ``cuda/<family>``'s CPU build and the compiler flags it is built with.

    The name keys the cache on the compile and link flags (and ``_RECIPE_VERSION``, bumped by any other change
    to how :func:`_build` builds), the torch and python versions and the bytes of every file the build reads,
    so a finished build is reused as it is by any checkout with the same sources (a fresh clone's new file times
    do not make ninja rebuild it) and an edit gets a directory of its own (about 1 MB each)."""
    cflags = ("-O3", "-fopenmp", *_isa_flags())
    recipe = f"{' '.join(cflags)} | {' '.join(LDFLAGS)} | include <family> | {_RECIPE_VERSION}"
    h = hashlib.sha1(f"{recipe} {torch.__version__} {sys.version_info[:2]}".encode())
    for path in _key_files(family):
        h.update(path.relative_to(CUDA_SRC.resolve()).as_posix().encode() + b"\0" + path.read_bytes())
    avx = "_avx2" if "-mavx2" in cflags else ""
    return _cache_root() / f"recon_{family}_cpu{avx}_{h.hexdigest()[:12]}", cflags


def _import_built(name: str, so: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, so)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {so}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _build(family: str) -> ModuleType:
    src_dir = CUDA_SRC / family
    sources = sorted(str(p) for p in src_dir.glob("*.cpp"))
    if not sources:
        raise ExtensionBuildError(f"no C++ sources found in {src_dir}")
    build_dir, cflags = build_dir_of(family)
    name = build_dir.name
    try:
        from torch.utils import cpp_extension

        build_dir.mkdir(parents=True, exist_ok=True)
        so = build_dir / f"{name}.so"
        lock = _BuildLock(build_dir)
        with lock:
            # The marker is written after a load that succeeded, so a library cut off by a killed link (which
            # may crash dlopen rather than raise) is never imported directly.
            if lock.marker.exists() and so.exists():
                try:
                    return _import_built(name, so)
                except ImportError:
                    lock.marker.unlink()
            # Without the marker the library is not trusted: ninja would call a cut-off one up to date (it is
            # newer than the objects) and torch would import it, so it goes and ninja links it again.
            so.unlink(missing_ok=True)
            print(f"recon: compiling C++ kernels {name} (first use, ~1 min)...", file=sys.stderr, flush=True)
            # Fresh lists from the tuples: torch appends to them in place, and when that was the keyed list every
            # later key in the process changed (a fresh clone's CI then compiled under keys no process computes).
            module = cpp_extension.load(name=name, sources=sources, extra_cflags=list(cflags),
                                        extra_ldflags=list(LDFLAGS), extra_include_paths=[str(src_dir)],
                                        build_directory=str(build_dir), verbose=False)
            lock.marker.touch()
            return module
    except Exception as err:  # compiler missing, compile error, ninja missing, import error: all mean "no kernels"
        raise ExtensionBuildError(f"could not build the C++ extension {name!r} from {src_dir}: "
                                  f"{type(err).__name__}: {str(err).strip()[-2000:]}") from err


def require_cpu_extension(family: str, device: torch.device, dtype: torch.dtype) -> ModuleType:
    """The extension of ``cuda/<family>`` for an explicit ``backend="cpu"`` request: raises ``ValueError`` unless
    the tensors are float32 on the CPU, and ``RuntimeError`` (with the compiler's reason) when it cannot be built."""
    if device.type != "cpu" or dtype != torch.float32:
        raise ValueError(f"backend 'cpu' needs float32 CPU tensors, got {dtype} on {device}")
    try:
        return load_cpu_extension(family)
    except ExtensionBuildError as err:
        raise RuntimeError(f"backend 'cpu' requested but the C++ kernels are unavailable: {err}") from err


def resolve_cpu_backend(family: str, backend: str, device: torch.device, dtype: torch.dtype, what: str,
                        slow_note: str | None = None) -> str:
    """Pick "cpu" or "torch" for an op with C++ CPU kernels in ``cuda/<family>`` and a torch twin.

    ``backend``: "auto", "torch" or "cpu". "cpu" is checked by :func:`require_cpu_extension`. "auto" picks
    "cpu" for float32 CPU tensors when the kernels build (warning, naming ``what``, when they do not) and
    "torch" otherwise, warning with ``slow_note`` for other devices or dtypes when one is given."""
    if backend not in ("auto", "torch", "cpu"):
        raise ValueError(f"backend must be one of ('auto', 'torch', 'cpu'), got {backend!r}")
    if backend == "cpu":
        require_cpu_extension(family, device, dtype)
        return "cpu"
    if backend == "torch":
        return "torch"
    if device.type != "cpu" or dtype != torch.float32:
        if slow_note:
            warnings.warn(f"recon: {what} of {dtype} tensors on {device} uses the torch reference ({slow_note})",
                          RuntimeWarning, stacklevel=4)
        return "torch"
    try:
        load_cpu_extension(family)
        return "cpu"
    except ExtensionBuildError as err:
        warnings.warn(f"recon: {what} falls back to the torch reference: {str(err)[:300]}", RuntimeWarning,
                      stacklevel=4)
        return "torch"
