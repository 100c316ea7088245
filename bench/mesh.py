"""Mesh benchmarks: BVH ray casting (recon's C++ BVH vs open3d / Embree) and mesh rasterization; one JSON.

    python bench/mesh.py --out FILE.json [--mesh PATH] [--sections raycast,raster] [--repeats N]

Each section runs in its own subprocess (so ``peak_rss_mb``, the ru_maxrss of that process, is its own) and
returns one dict; the report holds the machine info and one entry per section. Sections:

* ``raycast``: ``--mesh`` (default ``$RECON_TEST_DATA/meshes/armadillo.obj``, ``RECON_TEST_DATA`` defaulting to
  ``<repo>/../shared/data``) centered on its bounding box and scaled to the unit sphere. Rays: 8 views of 512x512
  primary rays (cameras on a radius-3 sphere looking at the origin, fx = fy = 600, pixel centers via
  ``Cameras.rays()``) and 1M random rays (origins uniform in [-1.5, 1.5]^3, directions normal(0, 1), not unit).
  Build time: median over ``--repeats`` builds (open3d: ``add_triangles`` plus the first ``cast_rays`` of one ray,
  since Embree builds lazily on first use). Closest hit: recon ``closest_hit`` vs open3d ``cast_rays``; any hit:
  recon ``any_hit`` vs open3d ``test_occlusions``; rays/s = rays / median wall time, both on torch's thread count;
  the median process CPU time (``*_cpu_s``, all threads) is recorded too, as wall times move with other load.
  Agreement: closest-hit triangle ids on rays that hit in either, max relative t difference where they agree,
  any-hit equality.
* ``raster``: the same mesh and the same 8 views at 512x512. Forward of ``rasterize`` + ``interpolate`` (camera z)
  on the ``cpu`` backend for all views vs open3d ``cast_rays`` on the same pixel-center rays (``Cameras.rays()``,
  ray generation and Embree's build timed apart), timed interleaved (each round runs both, in alternating order,
  so that both see the same load on a shared machine), their speed ratio (of the medians, and the median of the
  per-round ratios) and agreement (triangle ids on pixels covered in either, max relative depth difference where
  they agree); the ``torch`` twin's forward on one view. Then
  forward + backward of rasterize -> interpolate (uv with ``rast_db``) -> texture (1024^2 RGB, trilinear) ->
  antialias on ``cpu`` for all views, loss ``sum(out * w)`` with fixed random ``w``, gradients w.r.t. vertices,
  uvs and texture (spherical-projection uvs: the armadillo has none). Threads and load averages are recorded.

``--out X.json`` also writes ``X.png``: recon cpu vs open3d times (needs matplotlib; skipped without it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("RECON_TEST_DATA", REPO.parent / "shared" / "data"))


# ------------------------------------------------------------------------------------------------- helpers


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def machine_info() -> dict:
    import torch

    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["load_average_1min"] = os.getloadavg()[0]  # other processes on the machine inflate timings
    except OSError:
        pass
    try:
        import open3d

        info["open3d"] = open3d.__version__
    except ImportError:
        info["open3d"] = None
    return info


def load_mesh(path: Path):
    """Vertices [V, 3] float32 centered on the bounding box and scaled to the unit sphere, faces [F, 3] int64.

    Reads OBJ ``v`` / ``f`` records directly (polygons fanned) so that triangle ids are the file's order.
    """
    import torch

    if not path.is_file():
        raise SystemExit(f"benchmark mesh not found: {path} (set RECON_TEST_DATA or pass --mesh)")
    verts, faces = [], []
    for line in path.read_text().splitlines():
        tok = line.split()
        if tok and tok[0] == "v":
            verts.append([float(x) for x in tok[1:4]])
        elif tok and tok[0] == "f":
            ids = [int(t.split("/")[0]) for t in tok[1:]]
            ids = [i - 1 if i > 0 else len(verts) + i for i in ids]
            faces += [[ids[0], ids[k], ids[k + 1]] for k in range(1, len(ids) - 1)]
    v = torch.tensor(verts, dtype=torch.float64)
    v = v - (v.amax(0) + v.amin(0)) / 2
    return (v / v.norm(dim=1).max()).float(), torch.tensor(faces, dtype=torch.int64)


def orbit_cameras(n: int = 8, radius: float = 3.0, size: int = 512, focal: float = 600.0):
    """n OpenCV cameras on a sphere (azimuths evenly spaced, elevations within +-0.5 rad) looking at the origin."""
    import numpy as np
    import torch

    from recon.cameras import Cameras, intrinsics_matrix

    mats = []
    for i in range(n):
        a, el = 2 * math.pi * i / n, 0.5 * math.sin(3 * 2 * math.pi * i / n)
        eye = radius * np.array([math.cos(a) * math.cos(el), math.sin(a) * math.cos(el), math.sin(el)])
        z = -eye / np.linalg.norm(eye)
        x = np.cross(z, [0.0, 0.0, 1.0])
        x /= np.linalg.norm(x)
        rot = np.stack([x, np.cross(z, x), z])
        w2c = np.eye(4)
        w2c[:3, :3], w2c[:3, 3] = rot, -rot @ eye
        mats.append(w2c)
    K = intrinsics_matrix(focal, focal, size / 2, size / 2)[None].repeat(n, 1, 1)
    return Cameras(torch.tensor(np.stack(mats)), K, size, size)


def timed(fn, repeats: int) -> tuple[float, float, object]:
    """Median wall seconds and median process CPU seconds (all threads) of fn() over repeats, after one warm-up
    call, and the last result. CPU time is less sensitive to other load on a shared machine than wall time."""
    out = fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(wall), statistics.median(cpu), out


# ------------------------------------------------------------------------------------------------- raycast


def bench_raycast(args) -> dict:
    """BVH build time, closest-hit / any-hit rays/s and agreement: recon cpu vs open3d RaycastingScene."""
    import numpy as np
    import torch

    from recon.renderers.mesh.raycast import RayCaster

    path = Path(args.mesh) if args.mesh else DATA / "meshes" / "armadillo.obj"
    v, f = load_mesh(path)
    o, d = orbit_cameras().rays()
    g = torch.Generator().manual_seed(0)
    batches = {
        "primary_8x512x512": (o.reshape(-1, 3).float().contiguous(), d.reshape(-1, 3).float().contiguous()),
        "random_1M": ((torch.rand(1_000_000, 3, generator=g) * 3 - 1.5), torch.randn(1_000_000, 3, generator=g)),
    }
    threads = torch.get_num_threads()
    out = {"mesh": str(path), "num_vertices": v.shape[0], "num_faces": f.shape[0], "threads": threads,
           "repeats": args.repeats, "rays": {k: b[0].shape[0] for k, b in batches.items()}}

    builds = []
    for _ in range(args.repeats):
        rc = RayCaster(v, f, backend="cpu")
        builds.append(rc.build_seconds)
    out["recon"] = {"build_s": statistics.median(builds), "build_s_all": builds, "num_nodes": rc.num_nodes,
                    "bvh_depth": int(rc._bvh.depth), "bvh_triangles": int(rc._bvh.num_triangles)}
    recon_hits = {}
    for name, (bo, bd) in batches.items():
        tc, cc, hits = timed(lambda bo=bo, bd=bd: rc.closest_hit(bo, bd), args.repeats)
        ta, ca, occl = timed(lambda bo=bo, bd=bd: rc.any_hit(bo, bd), args.repeats)
        recon_hits[name] = (hits, occl)
        out["recon"][name] = {"closest_s": tc, "closest_cpu_s": cc, "closest_rays_per_s": bo.shape[0] / tc,
                              "any_s": ta, "any_cpu_s": ca, "any_rays_per_s": bo.shape[0] / ta,
                              "hit_fraction": hits.hit.float().mean().item()}
    try:
        import open3d as o3d
    except ImportError:
        out["open3d"] = {"skipped": "open3d is not installed (pip install 'recon[open3d]')"}
        return out

    v_o3d, f_o3d = o3d.core.Tensor(v.numpy()), o3d.core.Tensor(f.numpy().astype(np.uint32))
    one_ray = o3d.core.Tensor(np.array([[0, 0, -3, 0, 0, 1]], dtype=np.float32))
    builds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(v_o3d, f_o3d)
        scene.cast_rays(one_ray, nthreads=threads)  # Embree builds its BVH on the first query
        builds.append(time.perf_counter() - t0)
    out["open3d"] = {"build_s": statistics.median(builds), "build_s_all": builds, "nthreads": threads}
    agreement = {}
    for name, (bo, bd) in batches.items():
        rays = o3d.core.Tensor(torch.cat([bo, bd], 1).numpy())
        tc, cc, ans = timed(lambda rays=rays: scene.cast_rays(rays, nthreads=threads), args.repeats)
        ta, ca, occl = timed(lambda rays=rays: scene.test_occlusions(rays, nthreads=threads), args.repeats)
        out["open3d"][name] = {"closest_s": tc, "closest_cpu_s": cc, "closest_rays_per_s": bo.shape[0] / tc,
                               "any_s": ta, "any_cpu_s": ca, "any_rays_per_s": bo.shape[0] / ta}
        ids = torch.from_numpy(ans["primitive_ids"].numpy().astype(np.int64))
        ids[ids == 2**32 - 1] = -1
        t3 = torch.from_numpy(ans["t_hit"].numpy()).double()
        hits, recon_occl = recon_hits[name]
        either = hits.hit | (ids >= 0)
        agree = either & (hits.tri_id == ids)
        rel = (hits.t[agree].double() - t3[agree]).abs() / t3[agree]
        agreement[name] = {
            "rays_hit_in_either": int(either.sum()),
            "id_agreement": agree.sum().item() / max(1, either.sum().item()),
            "ids_differ": int((either & ~agree).sum()),
            "t_max_rel_diff": rel.max().item() if rel.numel() else 0.0,
            "t_rel_diff_above_1e-5": int((rel > 1e-5).sum()),
            "any_hit_differ": int((recon_occl != torch.from_numpy(occl.numpy()).bool()).sum()),
        }
    out["agreement"] = agreement
    out["speed_ratio_recon_over_open3d"] = {
        name: {q: out["recon"][name][f"{q}_rays_per_s"] / out["open3d"][name][f"{q}_rays_per_s"]
               for q in ("closest", "any")} for name in batches}
    return out


# -------------------------------------------------------------------------------------------------- raster


RASTER_SIZE = 512
TEXTURE_SIZE = 1024


def _clip_positions(v, cams):
    """World vertices [V, 3] -> clip-space positions [C, V, 4] (near / far enclose the mesh in every view)."""
    from recon.renderers.mesh.render import clip_positions

    return clip_positions(v, cams)


def _sources_sha1(family: str) -> str:
    """sha1 of the C++ sources of cuda/<family> (the kernels change while the repo is worked on)."""
    import hashlib

    h = hashlib.sha1()
    for src in sorted((REPO / "cuda" / family).glob("*")):
        h.update(src.name.encode() + src.read_bytes())
    return h.hexdigest()[:12]


def _recon_forward(v, f, cams):
    """rasterize + interpolate(camera z) forward on the cpu backend, all views, as a callable -> (rast, z)."""
    import torch

    from recon.renderers.mesh.rasterize import interpolate, rasterize

    pos, tri = _clip_positions(v, cams), f.to(torch.int32)

    def forward():
        rast, _ = rasterize(pos, tri, (RASTER_SIZE, RASTER_SIZE), grad_db=False, backend="cpu")
        z, _ = interpolate(pos[..., 3:4], rast, tri, backend="cpu")  # clip w = camera-space z
        return rast, z

    return forward


def _open3d_scene(v, f, cams, threads: int):
    """open3d cast_rays on the same pixel-center rays as a callable, with ray-generation and build times; or a
    {"skipped": why} dict without open3d."""
    import numpy as np
    import torch

    try:
        import open3d as o3d
    except ImportError:
        return {"skipped": "open3d is not installed (pip install 'recon[open3d]')"}
    t0 = time.perf_counter()
    o, d = cams.rays()
    rays_s = time.perf_counter() - t0
    rays = o3d.core.Tensor(torch.cat([o, d], -1).float().reshape(-1, 6).contiguous().numpy())
    t0 = time.perf_counter()
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(v.numpy()), o3d.core.Tensor(f.numpy().astype(np.uint32)))
    scene.cast_rays(rays[:1], nthreads=threads)  # Embree builds its BVH on the first query
    build_s = time.perf_counter() - t0
    return {"cast": lambda: scene.cast_rays(rays, nthreads=threads), "dirs": d, "build_s": build_s,
            "rays_s": rays_s}


def _agreement(cams, dirs, ans, rast, z) -> dict:
    """Triangle ids on pixels covered in either, and the max relative depth difference where they agree."""
    import numpy as np
    import torch

    ids = torch.from_numpy(ans["primitive_ids"].numpy().astype(np.int64))
    ids[ids == 2**32 - 1] = -1
    rid = rast[..., 3].reshape(-1).long() - 1
    either = (rid >= 0) | (ids >= 0)
    agree = either & (rid == ids)
    # Ray distance t along the unit direction -> camera z: z = t * (d . camera forward axis).
    fwd = cams.world_to_cam[:, 2, :3].to(dirs.dtype)
    z3 = torch.from_numpy(ans["t_hit"].numpy()).double() * (dirs * fwd[:, None]).sum(-1).reshape(-1)
    rel = (z.reshape(-1).double()[agree] - z3[agree]).abs() / z3[agree]
    return {"pixels_covered_in_either": int(either.sum()),
            "id_agreement": agree.sum().item() / max(1, int(either.sum())),
            "ids_differ": int((either & ~agree).sum()),
            "covered_only_raster": int(((rid >= 0) & (ids < 0)).sum()),
            "covered_only_open3d": int(((rid < 0) & (ids >= 0)).sum()),
            "depth_max_rel_diff": rel.max().item() if rel.numel() else 0.0}


def _primary_hits(v, f, cams, repeats: int, threads: int) -> dict:
    """recon rasterize + interpolate vs open3d cast_rays, timed interleaved: each round runs both once (in
    alternating order), so both see the same machine; medians of each, their ratio, and the median per-round
    ratio. Returns {"cpu", "open3d", "speedup_recon_cpu_over_open3d", ...} and the last (rast, z)."""
    import torch

    forward = _recon_forward(v, f, cams)
    o3 = _open3d_scene(v, f, cams, threads)
    fns = {"recon": forward} if "skipped" in o3 else {"recon": forward, "open3d": o3["cast"]}
    times, last = _interleaved(fns, repeats)
    rast, z = last["recon"]
    out = {"cpu": {"forward_s": times["recon"]["wall"], "forward_cpu_s": times["recon"]["cpu"],
                   "forward_s_per_view": times["recon"]["wall"] / len(cams),
                   "coverage": (rast[..., 3] > 0).float().mean().item()}}
    if "skipped" in o3:
        out["open3d"] = o3
        return out, (rast, z)
    out["open3d"] = {"cast_rays_s": times["open3d"]["wall"], "cast_rays_cpu_s": times["open3d"]["cpu"],
                     "cast_rays_s_per_view": times["open3d"]["wall"] / len(cams), "build_s": o3["build_s"],
                     "rays_s": o3["rays_s"], "nthreads": threads,
                     "agreement": _agreement(cams, o3["dirs"], last["open3d"], rast, z)}
    out["speedup_recon_cpu_over_open3d"] = times["open3d"]["wall"] / times["recon"]["wall"]
    ratios = [b / a for a, b in zip(times["recon"]["walls"], times["open3d"]["walls"], strict=True)]
    out["speedup_median_of_round_ratios"] = statistics.median(ratios)
    out["threads"] = torch.get_num_threads()
    return out, (rast, z)


SETTLE_S = 0.05


def _interleaved(fns: dict, repeats: int) -> tuple[dict, dict]:
    """Times the callables of fns round-robin (one warm-up call each, then repeats rounds, the order reversed every
    other round). Returns ({name: {"wall", "cpu" (medians), "walls" (per round)}}, {name: last result}).

    Each timed call starts SETTLE_S after the previous one ended: recon runs on torch's OpenMP threads and open3d on
    Embree's TBB threads, and either pool's workers keep spinning for a while after a call. Back to back, a call ran
    ~10 ms slower right after the other library's (measured on 2 cores), which is interference between two thread
    pools in one process, not the speed of either."""
    names = list(fns)
    last = {k: fns[k]() for k in names}
    walls = {k: [] for k in names}
    cpus = {k: [] for k in names}
    for r in range(repeats):
        for k in (names if r % 2 == 0 else names[::-1]):
            time.sleep(SETTLE_S)
            t0, c0 = time.perf_counter(), time.process_time()
            last[k] = fns[k]()
            walls[k].append(time.perf_counter() - t0)
            cpus[k].append(time.process_time() - c0)
    return ({k: {"wall": statistics.median(walls[k]), "cpu": statistics.median(cpus[k]), "walls": walls[k]}
             for k in names}, last)


def _raster_chain(v, f, cams, repeats: int) -> dict:
    """Forward + backward of rasterize -> interpolate(uv, rast_db) -> texture (trilinear) -> antialias."""
    import torch

    from recon.renderers.mesh.antialias import antialias
    from recon.renderers.mesh.rasterize import interpolate, rasterize
    from recon.renderers.mesh.texture import texture

    g = torch.Generator().manual_seed(0)
    d = v / v.norm(dim=1, keepdim=True).clamp_min(1e-12)
    uvs = torch.stack([torch.atan2(d[:, 1], d[:, 0]) / (2 * math.pi), torch.acos(d[:, 2].clamp(-1, 1)) / math.pi], 1)
    verts, uvs = v.clone().requires_grad_(True), uvs.contiguous().requires_grad_(True)
    tex = torch.rand(TEXTURE_SIZE, TEXTURE_SIZE, 3, generator=g).requires_grad_(True)
    weights = torch.rand(len(cams), RASTER_SIZE, RASTER_SIZE, 3, generator=g)
    tri = f.to(torch.int32)

    def forward():
        pos = _clip_positions(verts, cams)
        rast, rast_db = rasterize(pos, tri, (RASTER_SIZE, RASTER_SIZE), backend="cpu")
        uv, uv_da = interpolate(uvs, rast, tri, rast_db, diff_attrs="all", backend="cpu")
        color = texture(tex, uv, uv_da, filter_mode="linear-mipmap-linear", backend="cpu")
        color = torch.where(rast[..., 3:4] > 0, color, torch.zeros_like(color))
        return (antialias(color, rast, pos, tri, backend="cpu") * weights).sum()

    fwd, bwd, fwd_cpu, bwd_cpu = [], [], [], []
    for i in range(repeats + 1):  # the first iteration is a warm-up
        for x in (verts, uvs, tex):
            x.grad = None
        t0, c0 = time.perf_counter(), time.process_time()
        loss = forward()
        t1, c1 = time.perf_counter(), time.process_time()
        loss.backward()
        t2, c2 = time.perf_counter(), time.process_time()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
            fwd_cpu.append(c1 - c0)
            bwd_cpu.append(c2 - c1)
    total = [a + b for a, b in zip(fwd, bwd)]
    finite = all(bool(torch.isfinite(x.grad).all()) for x in (verts, uvs, tex))
    return {"forward_s": statistics.median(fwd), "backward_s": statistics.median(bwd),
            "total_s": statistics.median(total), "total_s_per_view": statistics.median(total) / len(cams),
            "forward_cpu_s": statistics.median(fwd_cpu), "backward_cpu_s": statistics.median(bwd_cpu),
            "total_s_all": total, "gradients_finite": finite,
            "grad_norms": {"vertices": verts.grad.norm().item(), "uvs": uvs.grad.norm().item(),
                           "texture": tex.grad.norm().item()}}


def _one_thread_pair(v, f, cams, repeats: int, threads: int) -> dict:
    """recon cpu forward and open3d cast_rays again on one thread each: on a loaded shared machine a multi-threaded
    region waits for descheduled workers, so the per-core comparison is the steadier one."""
    import torch

    torch.set_num_threads(1)
    try:
        one, _ = _primary_hits(v, f, cams, repeats, 1)
    finally:
        torch.set_num_threads(threads)
    out = {"cpu_forward_s": one["cpu"]["forward_s"], "open3d_cast_rays_s": one["open3d"].get("cast_rays_s")}
    for key in ("speedup_recon_cpu_over_open3d", "speedup_median_of_round_ratios"):
        if key in one:
            out[key] = one[key]
    return out


def _torch_one_view(v, f, cam, repeats: int) -> dict:
    """The torch twin's rasterize + interpolate forward on one view (it is slow)."""
    import torch

    from recon.renderers.mesh.rasterize import interpolate, rasterize

    pos, tri = _clip_positions(v, cam), f.to(torch.int32)

    def forward():
        rast, _ = rasterize(pos, tri, (RASTER_SIZE, RASTER_SIZE), grad_db=False, backend="torch")
        return interpolate(pos[..., 3:4], rast, tri, backend="torch")[0]

    n = max(1, min(repeats, 3))
    wall, cpu, _ = timed(forward, n)
    return {"forward_s_per_view": wall, "forward_cpu_s": cpu, "repeats": n}


def bench_raster(args) -> dict:
    """rasterize + interpolate forward (cpu, torch) vs open3d primary rays; full raster chain forward + backward."""
    import torch

    path = Path(args.mesh) if args.mesh else DATA / "meshes" / "armadillo.obj"
    v, f = load_mesh(path)
    cams = orbit_cameras(size=RASTER_SIZE)
    threads = torch.get_num_threads()
    out = {"mesh": str(path), "num_vertices": v.shape[0], "num_faces": f.shape[0], "views": len(cams),
           "resolution": [RASTER_SIZE, RASTER_SIZE], "cameras": "as the raycast section (orbit_cameras, fx=fy=600)",
           "threads": threads, "repeats": args.repeats, "load_average_1min_start": os.getloadavg()[0],
           "note": "shared machine: other jobs ran concurrently (see load averages); wall times move with that load, "
                   "*_cpu_s (process CPU time, all threads) less so",
           "mesh_raster_sources_sha1": _sources_sha1("mesh_raster"),
           "mesh_texture_sources_sha1": _sources_sha1("mesh_texture")}
    primary, rast_z = _primary_hits(v, f, cams, args.repeats, threads)
    out.update(primary)
    out["rss_mb_after_cpu_forward"] = rss_mb()
    del rast_z
    out["one_thread"] = _one_thread_pair(v, f, cams, args.repeats, threads)
    out["chain"] = {"what": "rasterize -> interpolate(uv, rast_db, diff_attrs='all') -> texture "
                            f"({TEXTURE_SIZE}^2 RGB, linear-mipmap-linear, wrap) -> antialias; cpu backend, all views;"
                            " loss = sum(output * fixed random weights); gradients w.r.t. vertices, uvs, texture",
                    "uvs": "spherical projection per vertex of the unit-sphere-normalized mesh: u = atan2(y, x) / 2pi, "
                           "v = acos(z) / pi (the mesh has no uvs; good enough for timing, seam triangles included)",
                    **_raster_chain(v, f, cams, args.repeats)}
    out["rss_mb_after_chain"] = rss_mb()
    out["torch_one_view"] = _torch_one_view(v, f, cams[0], args.repeats)
    out["torch_one_view"]["slowdown_over_cpu_backend"] = (out["torch_one_view"]["forward_s_per_view"]
                                                          / out["cpu"]["forward_s_per_view"])
    out["load_average_1min_end"] = os.getloadavg()[0]
    return out


# ---------------------------------------------------------------------------------------------------- main

# name -> function(args) -> dict. Each runs in its own subprocess (see main).
SECTIONS = {"raycast": bench_raycast, "raster": bench_raster}


def print_summary(report: dict) -> None:
    rc = report["sections"].get("raycast", {})
    if "recon" not in rc:
        return
    print(f"\nraycast: {rc['mesh']} ({rc['num_faces']} triangles), {rc['threads']} threads")
    rows = [("recon", rc["recon"])] + ([("open3d", rc["open3d"])] if "build_s" in rc.get("open3d", {}) else [])
    print(f"{'':8s} {'build ms':>9s} " + " ".join(f"{n[:14] + ' closest':>22s} {'any':>8s}" for n in rc["rays"]))
    for who, r in rows:
        cells = " ".join(f"{r[n]['closest_rays_per_s'] / 1e6:18.2f} M/s {r[n]['any_rays_per_s'] / 1e6:6.2f} M/s"
                         for n in rc["rays"])
        print(f"{who:8s} {1e3 * r['build_s']:9.1f} {cells}")
    for name, a in rc.get("agreement", {}).items():
        print(f"agreement {name}: ids {100 * a['id_agreement']:.4f}% of {a['rays_hit_in_either']} rays "
              f"({a['ids_differ']} differ), t max rel diff {a['t_max_rel_diff']:.1e}, any-hit differ "
              f"{a['any_hit_differ']}")


def print_raster_summary(report: dict) -> None:
    rs = report["sections"].get("raster", {})
    if "cpu" not in rs:
        return
    print(f"\nraster: {rs['mesh']} ({rs['num_faces']} triangles), {rs['views']} views of {rs['resolution']}, "
          f"{rs['threads']} threads, load {rs['load_average_1min_start']:.1f} -> {rs['load_average_1min_end']:.1f}")
    print(f"rasterize+interpolate cpu: {1e3 * rs['cpu']['forward_s']:.1f} ms "
          f"({1e3 * rs['cpu']['forward_s_per_view']:.1f} ms/view); torch twin "
          f"{1e3 * rs['torch_one_view']['forward_s_per_view']:.0f} ms/view")
    o3 = rs.get("open3d", {})
    if "cast_rays_s" in o3:
        a, one = o3["agreement"], rs["one_thread"]
        print(f"open3d cast_rays: {1e3 * o3['cast_rays_s']:.1f} ms (build {1e3 * o3['build_s']:.1f} ms); open3d / "
              f"recon = {rs['speedup_recon_cpu_over_open3d']:.2f} (per-round median {rs['speedup_median_of_round_ratios']:.2f}); ids agree on {100 * a['id_agreement']:.4f}% of "
              f"{a['pixels_covered_in_either']} pixels ({a['ids_differ']} differ), depth max rel diff "
              f"{a['depth_max_rel_diff']:.1e}")
        print(f"one thread: recon {1e3 * one['cpu_forward_s']:.1f} ms, open3d {1e3 * one['open3d_cast_rays_s']:.1f} ms "
              f"(open3d / recon = {one['speedup_recon_cpu_over_open3d']:.2f}, per-round {one['speedup_median_of_round_ratios']:.2f})")
    ch = rs["chain"]
    print(f"raster chain fwd+bwd: {1e3 * ch['total_s']:.0f} ms (fwd {1e3 * ch['forward_s']:.0f}, bwd "
          f"{1e3 * ch['backward_s']:.0f}); peak RSS {rs['peak_rss_mb']:.0f} MB")


def plot_report(report: dict, path: Path) -> None:
    """Bar chart of recon cpu vs open3d wall times (ms) per measurement; skipped without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'recon[plot]')")
        return
    bars = []  # (label, recon seconds, open3d seconds)
    rc = report["sections"].get("raycast", {})
    for name in rc.get("rays", {}) if "build_s" in rc.get("open3d", {}) else ():
        for q in ("closest", "any"):
            bars.append((f"BVH {q}-hit\n{name}", rc["recon"][name][f"{q}_s"], rc["open3d"][name][f"{q}_s"]))
    rs = report["sections"].get("raster", {})
    if "cast_rays_s" in rs.get("open3d", {}):
        bars.append(("primary hits 8x512^2\nrasterize+interpolate", rs["cpu"]["forward_s"],
                     rs["open3d"]["cast_rays_s"]))
        bars.append(("primary hits 8x512^2\n1 thread", rs["one_thread"]["cpu_forward_s"],
                     rs["one_thread"]["open3d_cast_rays_s"]))
    if not bars:
        return
    fig, ax = plt.subplots(figsize=(2.2 * len(bars) + 2, 4))
    xs = range(len(bars))
    ax.bar([x - 0.2 for x in xs], [1e3 * b[1] for b in bars], 0.4, label="recon cpu")
    ax.bar([x + 0.2 for x in xs], [1e3 * b[2] for b in bars], 0.4, label="open3d (Embree)")
    ax.set_xticks(list(xs), [b[0] for b in bars], fontsize=8)
    ax.set_ylabel("wall time (ms, median)")
    machine = report["machine"]
    ax.set_title(f"recon vs open3d, {machine.get('torch_threads')} threads, shared machine "
                 f"(load {machine.get('load_average_1min', 0):.1f})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"wrote {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="JSON file to write")
    ap.add_argument("--mesh", default=None, help="OBJ for both sections (default: shared armadillo.obj)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma separated, from {list(SECTIONS)}")
    ap.add_argument("--repeats", type=int, default=11, help="timed repetitions per measurement (median reported)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        result = SECTIONS[args.worker](args)
        result["peak_rss_mb"] = rss_mb()
        args.out.write_text(json.dumps(result))
        return
    names = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = [s for s in names if s not in SECTIONS]
    if unknown:
        raise SystemExit(f"unknown sections {unknown}; choose from {list(SECTIONS)}")
    report = {"machine": machine_info(), "sections": {}}
    for name in names:
        tmp = args.out.with_suffix(f".{name}.tmp.json")
        print(f"[{name}] running in a subprocess...", flush=True)
        cmd = [sys.executable, __file__, "--worker", name, "--out", str(tmp), "--repeats", str(args.repeats)]
        if args.mesh:
            cmd += ["--mesh", args.mesh]
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            report["sections"][name] = {"error": f"worker exited with {proc.returncode}"}
            continue
        report["sections"][name] = json.loads(tmp.read_text())
        tmp.unlink()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print_summary(report)
    print_raster_summary(report)
    print(f"wrote {args.out}")
    plot_report(report, args.out.with_suffix(".png"))


if __name__ == "__main__":
    main()
