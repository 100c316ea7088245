"""Field rendering benchmark (issue 10): rays per second of the volume compositing op (forward and backward, per
backend and mode), of the field renderers (training step and rendering, per field and renderer), the time of
marching cubes, and peak memory.

    python bench/fields.py --out FILE.json [--rays 65536] [--samples 64] [--repeats 5] [--threads 2]

Workload: ``--rays`` rays of ``--samples`` contiguous samples each (intervals of 1/samples on [1, 2]), random
densities (``density`` mode; per-ray scales so about a third of the rays stop early) or alphas (``alpha``,
NeuS), 3 color channels; loss ``(rgb * v).sum() + (opacity * va).sum() + (depth * vd).sum()`` with fixed random
v. Medians over ``--repeats`` after one warm-up.

Renderers: the default fields of ``recon train triplane`` / ``sdf`` over the box [-1, 1]^3, the tri-plane's density
raised to an opaque ball of radius 0.5 (so rays stop early as on a trained field) and the SDF's initial sphere of
radius 0.5; rays from a sphere of radius 3 toward the origin (jittered). ``train``: one step's forward + backward
on a batch of the trainer's size (the SDF's with the eikonal term, second derivatives included); ``render``: no
gradients, midpoints (volume) or sphere tracing. The encodings are torch's ``grid_sample`` (no compiled encoding
yet), so these figures are what a training step costs today. Marching cubes: the analytic sphere SDF on 256^3 and
512^3 grids (grid filled beforehand; the extraction alone).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from pathlib import Path

import torch


def workload(rays: int, samples: int, mode: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    S = rays * samples
    offsets = torch.arange(0, S + 1, samples, dtype=torch.long)
    t_starts = (1.0 + torch.arange(samples, dtype=torch.float32) / samples).repeat(rays)
    t_ends = t_starts + 1.0 / samples
    scale = (torch.rand(rays, 1, generator=g) * 60).expand(rays, samples).reshape(-1)
    values = torch.rand(S, generator=g) * (scale if mode == "density" else scale / 60)
    colors = torch.rand(S, 3, generator=g)
    return [values, colors, t_starts, t_ends], offsets


def measure(backend: str, mode: str, rays: int, samples: int, repeats: int) -> dict:
    from recon.renderers.volume import composite

    params, offsets = workload(rays, samples, mode)
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(rays, c, generator=g) for c in (3, 1, 1)]
    fwd, bwd = [], []
    for i in range(repeats + 1):
        leaves = [p.clone().requires_grad_(True) for p in params]
        t0 = time.perf_counter()
        out = composite(*leaves, offsets, mode=mode, backend=backend)
        t1 = time.perf_counter()
        ((out.rgb * v[0]).sum() + (out.opacity * v[1]).sum() + (out.depth * v[2]).sum()).backward()
        t2 = time.perf_counter()
        if i:
            fwd.append(t1 - t0)
            bwd.append(t2 - t1)
    f, b = statistics.median(fwd), statistics.median(bwd)
    return {"backend": backend, "mode": mode, "forward_s": f, "backward_s": b,
            "rays_per_s_train": rays / (f + b), "rays_per_s_render": rays / f,
            "mean_samples_composited": float(out.count.float().mean())}


def _rays(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, 3, generator=g)
    o = o / o.norm(dim=-1, keepdim=True) * 3
    d = torch.nn.functional.normalize(-o + 0.3 * torch.randn(n, 3, generator=g), dim=-1)
    return o, d


def _timed(fn, repeats: int) -> float:
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        fn()
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def measure_renderers(repeats: int) -> list[dict]:
    from recon.renderers.volume.field import render_rays
    from recon.renderers.volume.sdf import render_sdf_rays, sphere_trace_sdf_rays
    from recon.scenes.sdf import NeuralSDF
    from recon.scenes.triplane import TriPlaneField

    lo, hi = -torch.ones(3), torch.ones(3)
    tri = TriPlaneField(lo, hi)
    with torch.no_grad():  # an opaque ball: density exp(h - 1) with h raised inside radius 0.5
        tri.density_net[-1].bias[0] = 0.0
    base_density = tri.density

    def ball_density(x):
        sigma, geo = base_density(x)
        return sigma * torch.where(x.norm(dim=-1) < 0.5, 200.0, 1e-3), geo

    tri.density = ball_density
    sdf = NeuralSDF(lo, hi, init_radius=0.5)
    g = torch.Generator().manual_seed(0)
    out = []
    for name, field, rays in (("triplane volume", tri, 2048), ("sdf volume (NeuS)", sdf, 1024)):
        o, d = _rays(rays)
        if name.startswith("triplane"):
            def step(o=o, d=d, field=field):
                r = render_rays(field, o, d, generator=g)
                (r["rgb"].sum() + r["opacity"].sum()).backward()
        else:
            def step(o=o, d=d, field=field):
                r = render_sdf_rays(field, o, d, generator=g, train=True)
                (r["rgb"].sum() + (r["gradient"].norm(dim=-1) - 1).square().mean()).backward()
        t_train = _timed(step, repeats)
        o, d = _rays(8192, seed=1)
        with torch.no_grad():
            t_render = _timed(lambda: (render_rays(field, o, d) if name.startswith("triplane")
                                       else render_sdf_rays(field, o, d)), repeats)
        out.append({"renderer": name, "train_rays": rays, "train_step_s": t_train, "rays_per_s_train": rays / t_train,
                    "render_rays": 8192, "render_s": t_render, "rays_per_s_render": 8192 / t_render})
    o, d = _rays(8192, seed=1)
    t_sphere = _timed(lambda: sphere_trace_sdf_rays(sdf, o, d), repeats)
    out.append({"renderer": "sdf sphere tracing", "render_rays": 8192, "render_s": t_sphere,
                "rays_per_s_render": 8192 / t_sphere})
    return out


def measure_marching_cubes(resolutions=(256, 512)) -> list[dict]:
    from recon.renderers.volume.isosurface import marching_cubes

    out = []
    for n in resolutions:
        axis = torch.linspace(-1, 1, n)
        values = torch.empty(n, n, n)
        for i in range(n):  # slab by slab: the grid is the only big allocation
            y, z = torch.meshgrid(axis, axis, indexing="ij")
            values[i] = (axis[i] ** 2 + y * y + z * z).sqrt() - 0.7
        t0 = time.perf_counter()
        verts, faces = marching_cubes(values, 0.0, origin=(-1, -1, -1), spacing=(2 / (n - 1),) * 3)
        out.append({"resolution": n, "seconds": time.perf_counter() - t0, "faces": len(faces)})
        del values
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--rays", type=int, default=65536)
    ap.add_argument("--samples", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = [measure(backend, mode, args.rays, args.samples, args.repeats if backend == "cpu" else 2)
               for mode in ("density", "alpha") for backend in ("cpu", "torch")]
    renderers = measure_renderers(max(2, args.repeats // 2))
    mc = measure_marching_cubes()
    report = {"composite": results, "renderers": renderers, "marching_cubes": mc, "rays": args.rays,
              "samples_per_ray": args.samples,
              "threads": torch.get_num_threads(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for r in results:
        print(f"{r['mode']:8s} {r['backend']:6s} forward {r['forward_s'] * 1e3:7.1f} ms  backward "
              f"{r['backward_s'] * 1e3:7.1f} ms  train {r['rays_per_s_train'] / 1e6:5.2f} M rays/s  "
              f"({r['mean_samples_composited']:.1f} samples composited per ray)")
    for r in renderers:
        train = f"train {r['rays_per_s_train'] / 1e3:7.1f} k rays/s  " if "rays_per_s_train" in r else ""
        print(f"{r['renderer']:20s} {train}render {r['rays_per_s_render'] / 1e3:7.1f} k rays/s")
    for m in mc:
        print(f"marching cubes {m['resolution']}^3: {m['seconds']:.2f} s ({m['faces']} faces)")
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB; wrote {args.out}")


if __name__ == "__main__":
    main()
