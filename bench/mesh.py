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
* ``raster``: placeholder for the mesh rasterizer section (returns ``{"skipped": ...}``).
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


def bench_raster(args) -> dict:
    """Mesh rasterization section: TO BE FILLED IN (the lead owns this section)."""
    return {"skipped": "raster section not written yet"}


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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="JSON file to write")
    ap.add_argument("--mesh", default=None, help="OBJ for the raycast section (default: shared armadillo.obj)")
    ap.add_argument("--sections", default=",".join(SECTIONS), help=f"comma separated, from {list(SECTIONS)}")
    ap.add_argument("--repeats", type=int, default=5, help="timed repetitions per measurement (median reported)")
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
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
