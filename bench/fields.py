"""Field rendering benchmark (issue 10, first part): rays per second of the volume compositing op, forward and
backward, per backend and mode, and peak memory.

    python bench/fields.py --out FILE.json [--rays 65536] [--samples 64] [--repeats 5] [--threads 2]

Workload: ``--rays`` rays of ``--samples`` contiguous samples each (intervals of 1/samples on [1, 2]), random
densities (``density`` mode; per-ray scales so about a third of the rays stop early) or alphas (``alpha``,
NeuS), 3 color channels; loss ``(rgb * v).sum() + (opacity * va).sum() + (depth * vd).sum()`` with fixed random
v. Medians over ``--repeats`` after one warm-up. The compiled encodings (tri-plane, hash grid), the occupancy
grid and sphere tracing are not in recon yet; they join this benchmark when they land (the tri-plane trainer's
speed is in docs/fields.md).
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
    report = {"composite": results, "rays": args.rays, "samples_per_ray": args.samples,
              "threads": torch.get_num_threads(),
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    for r in results:
        print(f"{r['mode']:8s} {r['backend']:6s} forward {r['forward_s'] * 1e3:7.1f} ms  backward "
              f"{r['backward_s'] * 1e3:7.1f} ms  train {r['rays_per_s_train'] / 1e6:5.2f} M rays/s  "
              f"({r['mean_samples_composited']:.1f} samples composited per ray)")
    print(f"peak RSS {report['peak_rss_mb']:.0f} MB; wrote {args.out}")


if __name__ == "__main__":
    main()
