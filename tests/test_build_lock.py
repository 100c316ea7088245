"""The C++ extension cache survives a build killed halfway: torch's empty ``lock`` file, which its loader waits
on forever, is removed under recon's own flock (which the kernel releases when its holder dies). A killed CI
run once left such a file in the shared cache and the next CI hung on it until its 90 minutes ran out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recon.renderers._build import _BuildLock, build_dir_of, load_cpu_extension

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX)
print("held", flush=True)
time.sleep(60)
"""

TRY = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o644)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    print("free")
except BlockingIOError:
    print("busy")
"""


def _probe(path) -> str:
    return subprocess.run([sys.executable, "-c", TRY, str(path)], capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def test_stale_torch_lock_is_removed_and_the_flock_excludes_others(tmp_path):
    build = tmp_path / "recon_x_cpu_0"
    build.mkdir()
    (build / "lock").touch()  # what a build killed inside torch's FileBaton leaves behind
    (build / "recon_build_ok").touch()  # ... beside a library that may be cut off
    flock = tmp_path / "recon_x_cpu_0.flock"
    with pytest.warns(RuntimeWarning, match="stale build lock .*recon_x_cpu_0/lock"):
        with _BuildLock(build):
            assert not (build / "lock").exists() and not (build / "recon_build_ok").exists()
            assert _probe(flock) == "busy"  # a second process waits for this build
    assert _probe(flock) == "free"


def test_a_killed_holder_releases_the_flock(tmp_path):
    build = tmp_path / "recon_y_cpu_0"
    build.mkdir()
    flock = tmp_path / "recon_y_cpu_0.flock"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(flock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _probe(flock) == "busy"
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with _BuildLock(build):  # returns at once: the dead holder's flock went with it
        assert _probe(flock) == "busy"
    assert _probe(flock) == "free"


def test_a_built_extension_loads_in_a_new_process_without_compiling():
    """The real cache: a finished build is imported as it is (no ninja, nothing compiled, the library untouched)
    by a fresh process, so the module is not already in this one's memory."""
    load_cpu_extension("shading")  # built (or found) once; the suite's other tests use it anyway
    build, _ = build_dir_of("shading")
    so = build / f"{build.name}.so"
    stamp = so.stat().st_mtime_ns
    code = "from recon.renderers._build import load_cpu_extension as f; print(f('shading').__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == build.name
    assert "compiling" not in out.stderr and so.stat().st_mtime_ns == stamp, out.stderr[-2000:]


@pytest.mark.slow
def test_a_build_killed_halfway_is_rebuilt(tmp_path):
    """A build killed inside torch's FileBaton (its ``lock`` left behind, the library possibly cut off): the
    next process removes the lock, does not trust the library, compiles again and loads (about a minute)."""
    env = {**os.environ, "RECON_EXT_CACHE": str(tmp_path / "ext")}
    code = "from recon.renderers._build import load_cpu_extension as f; print(f('volume').__name__)"
    first = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert first.returncode == 0 and "compiling" in first.stderr, first.stderr[-2000:]
    build = tmp_path / "ext" / first.stdout.strip()
    so = build / f"{build.name}.so"
    so.write_bytes(so.read_bytes()[:4096])  # a link cut off after its headers
    (build / "lock").touch()
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "stale build lock" in again.stderr and "compiling" in again.stderr
    assert so.stat().st_size > 100_000 and not (build / "lock").exists()


def test_the_cache_key_follows_the_sources_bytes_not_their_times(tmp_path, monkeypatch):
    import shutil

    from recon.renderers import _build

    src = tmp_path / "cuda"
    shutil.copytree(_build.CUDA_SRC, src)
    monkeypatch.setattr(_build, "CUDA_SRC", src)
    key = {f: build_dir_of(f)[0].name for f in ("shading", "gaussians_rt", "volume")}
    os.utime(src / "shading" / "shading_math.h", (1e9, 1e9))  # a fresh clone: new times, same bytes
    assert {f: build_dir_of(f)[0].name for f in key} == key
    with open(src / "gaussians" / "gs_math.h", "a") as f:
        f.write("\n// edit\n")
    # gaussians_rt includes ../gaussians/gs_math.h, so its key moves with it; the others keep theirs
    after = {f: build_dir_of(f)[0].name for f in key}
    assert after["gaussians_rt"] != key["gaussians_rt"]
    assert after["shading"] == key["shading"] and after["volume"] == key["volume"]


def test_a_build_leaves_the_keys_of_later_builds_alone(tmp_path, monkeypatch):
    """torch's loader appends its own flags to the lists it is given; the keys must not change with it (they
    did: a process that compiled one family then looked for every later one under a key no other process uses)."""
    from torch.utils import cpp_extension

    from recon.renderers import _build

    def fake_load(**kwargs):
        kwargs["extra_ldflags"] += ["-L/torch/lib", "-lc10"]  # what torch's _prepare_ldflags does in place
        kwargs["extra_cflags"] += ["-DEXTRA"]
        raise RuntimeError("no compiler in this test")

    monkeypatch.setenv("RECON_EXT_CACHE", str(tmp_path / "ext"))
    monkeypatch.setattr(cpp_extension, "load", fake_load)
    before = {f: build_dir_of(f)[0].name for f in ("shading", "volume")}
    with pytest.raises(_build.ExtensionBuildError, match="no compiler in this test"):
        _build._build("shading")
    assert {f: build_dir_of(f)[0].name for f in before} == before and _build.LDFLAGS == ("-fopenmp",)
