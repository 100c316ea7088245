"""Field rendering benchmark (issue 10): rays per second of the volume compositing op (forward and backward, per
backend and mode), the tri-plane encoding per backend, of the field renderers (training step and rendering, per
field and renderer), the time of marching cubes, and peak memory.

    python bench/fields.py --out FILE.json [--rays 65536] [--samples 64] [--repeats 5] [--threads 2]

Workload: ``--rays`` rays of ``--samples`` contiguous samples each (intervals of 1/samples on [1, 2]), random
densities (``density`` mode; per-ray scales so about a third of the rays stop early) or alphas (``alpha``,
NeuS), 3 color channels; loss ``(rgb * v).sum() + (opacity * va).sum() + (depth * vd).sum()`` with fixed random
v. Medians over ``--repeats`` after one warm-up.

Renderers: the default fields of ``recon train triplane`` / ``sdf`` over the box [-1, 1]^3, the tri-plane's density
raised to an opaque ball of radius 0.5 (so rays stop early as on a trained field) and the SDF's initial sphere of
radius 0.5; rays from a sphere of radius 3 toward the origin (jittered). ``train``: one step's forward + backward
on a batch of the trainer's size (the SDF's with the eikonal term, second derivatives included); ``render``: no
gradients, midpoints (volume) or sphere tracing; each with the compiled tri-plane encoding (``cpu``) and with its
torch twin (``grid_sample``). Encoding: ``triplane_sample`` alone on 65,536 points at both fields' default levels,
forward, forward + backward, and for the SDF the normal's share (``triplane_sample_vjp_u``) with its backward.
Normals: a default SDF's normals and eikonal loss with its backward on 65,536 points, analytic against central
finite differences (Neuralangelo's; six more field evaluations).
Marching cubes: the analytic sphere SDF on 256^3 and
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


def measure_encoding(repeats: int, points: int = 65536) -> list[dict]:
    """The tri-plane encoding alone, per backend, at the default levels of both fields: forward, backward (to the
    points and the planes), and for the SDF the encoding's share of the normal with its backward (the eikonal
    loss's second derivatives)."""
    from recon.renderers.volume.encoding import triplane_sample, triplane_sample_vjp_u

    g = torch.Generator().manual_seed(0)
    u0 = torch.rand(points, 3, generator=g) * 2 - 1
    out = []
    for field, resolutions, channels in (("sdf", (32, 64, 128), 8), ("triplane", (64, 128, 256), 16)):
        planes = [torch.randn(3, channels, r, r, generator=g).requires_grad_(True) for r in resolutions]
        for backend in ("cpu", "torch"):
            u = u0.clone().requires_grad_(True)
            with torch.no_grad():
                t_fwd = _timed(lambda: triplane_sample(planes, u, backend=backend), repeats)

            def first(u=u, planes=planes, backend=backend):
                f = triplane_sample(planes, u, backend=backend)
                torch.autograd.grad(f, [u, *planes], torch.ones_like(f))

            row = {"field": field, "backend": backend, "points": points, "resolutions": list(resolutions),
                   "channels": channels, "forward_s": t_fwd, "forward_backward_s": _timed(first, repeats)}
            if field == "sdf":
                gf = torch.randn(points, 3 * channels * len(resolutions), generator=g).requires_grad_(True)

                def second(u=u0, planes=planes, backend=backend, gf=gf):
                    gu = triplane_sample_vjp_u(planes, u, gf, backend=backend)
                    torch.autograd.grad(gu.square().sum(), [gf, *planes])

                row["normal_forward_backward_s"] = _timed(second, repeats)
            out.append(row)
    return out


def measure_normals(repeats: int, points: int = 65536) -> list[dict]:
    """A neural SDF's normals with the eikonal loss's backward, on the default field: analytic (the gradient by
    autograd and the encoding's hand-written second derivatives, what ``recon train sdf`` does) against central
    finite differences (Neuralangelo: six more evaluations of the field, each with its backward), compiled
    encoding in both."""
    from recon.scenes.sdf import NeuralSDF

    field = NeuralSDF(-torch.ones(3), torch.ones(3))
    field.encoding_backend = "cpu"
    x = torch.rand(points, 3, generator=torch.Generator().manual_seed(0)) * 2 - 1
    eps = 2.0 / 128  # one texel of the finest default plane

    def analytic():
        sdf, grad, _ = field.sdf_gradient(x, create_graph=True)
        ((grad.norm(dim=-1) - 1).square().mean() + sdf.abs().mean()).backward()

    def finite_difference():
        sdf = field.sdf(x)
        offsets = torch.eye(3) * eps
        grad = torch.stack([(field.sdf(x + o) - field.sdf(x - o)) / (2 * eps) for o in offsets], -1)
        ((grad.norm(dim=-1) - 1).square().mean() + sdf.abs().mean()).backward()

    return [{"normals": name, "points": points, "seconds": _timed(fn, repeats)}
            for name, fn in (("analytic", analytic), ("finite differences", finite_difference))]


def measure_renderers(repeats: int, encoding: str = "auto") -> list[dict]:
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
    tri.encoding_backend = sdf.encoding_backend = encoding
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
        out.append({"renderer": name, "encoding": encoding, "train_rays": rays, "train_step_s": t_train,
                    "rays_per_s_train": rays / t_train,
                    "render_rays": 8192, "render_s": t_render, "rays_per_s_render": 8192 / t_render})
    o, d = _rays(8192, seed=1)
    t_sphere = _timed(lambda: sphere_trace_sdf_rays(sdf, o, d), repeats)
    out.append({"renderer": "sdf sphere tracing", "encoding": encoding, "render_rays": 8192, "render_s": t_sphere,
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
    from recon._runtime import keep_freed_memory

    keep_freed_memory()  # as the recon CLI does
    results = [measure(backend, mode, args.rays, args.samples, args.repeats if backend == "cpu" else 2)
               for mode in ("density", "alpha") for backend in ("cpu", "torch")]
    encoding = measure_encoding(max(2, args.repeats // 2))
    normals = measure_normals(max(2, args.repeats // 2))
    renderers = [r for enc in ("cpu", "torch") for r in measure_renderers(max(2, args.repeats // 2), enc)]
    mc = measure_marching_cubes()
    report = {"composite": results, "encoding": encoding, "normals": normals, "renderers": renderers,
              "marching_cubes": mc, "rays": args.rays,
              "samples_per_ray": args.samples,
              "threads": torch.get_num_threads(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for r in results:
        print(f"{r['mode']:8s} {r['backend']:6s} forward {r['forward_s'] * 1e3:7.1f} ms  backward "
              f"{r['backward_s'] * 1e3:7.1f} ms  train {r['rays_per_s_train'] / 1e6:5.2f} M rays/s  "
              f"({r['mean_samples_composited']:.1f} samples composited per ray)")
    for r in encoding:
        normal = (f"  normal fwd+bwd {r['normal_forward_backward_s'] * 1e3:6.1f} ms"
                  if "normal_forward_backward_s" in r else "")
        print(f"encoding {r['field']:8s} {r['backend']:6s} forward {r['forward_s'] * 1e3:6.1f} ms  fwd+bwd "
              f"{r['forward_backward_s'] * 1e3:6.1f} ms{normal}  ({r['points']} points)")
    for r in normals:
        print(f"sdf normals {r['normals']:18s} + eikonal backward {r['seconds'] * 1e3:6.1f} ms ({r['points']} points)")
    for r in renderers:
        train = f"train {r['rays_per_s_train'] / 1e3:7.1f} k rays/s  " if "rays_per_s_train" in r else ""
        print(f"{r['renderer']:20s} {r['encoding']:6s} {train}render {r['rays_per_s_render'] / 1e3:7.1f} k rays/s")
    for m in mc:
        print(f"marching cubes {m['resolution']}^3: {m['seconds']:.2f} s ({m['faces']} faces)")
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB; wrote {args.out}")


if __name__ == "__main__":
    main()
