"""Gaussian rasterizer benchmark on the "garden" point cloud: forward / backward time and peak memory per backend.

    python bench/raster.py --out FILE.json [--backends torch,cpu] [--repeats N]

Scene: ``$RECON_TEST_DATA/gaussians/garden_points.npz`` (default ``<repo>/../shared/data``), points cropped to
[-2, 2]^3, then ``torch.manual_seed(0)``: scales ~ U(1e-4, 0.02), quats = normalize(randn), opacities ~ U(0, 1);
colors = the point colors (SH degree 0, i.e. the op's colors input is the point color itself); camera 0, 648x420.
Loss per iteration: ``(rgb * v).sum() + (alpha * va).sum() + (depth * vd).sum()`` with fixed random v, va, vd.
Each backend runs in its own subprocess so that ``peak_rss_mb`` (ru_maxrss of that process) is its own; the
baseline RSS after loading the scene (torch imported, scene tensors built, before any render) is reported too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_REPEATS = {"cpu": 5, "torch": 2, "gsplat": 10}


def load_scene(device: str = "cpu"):
    import numpy as np
    import torch

    root = Path(os.environ.get("RECON_TEST_DATA", REPO.parent / "shared" / "data"))
    path = root / "gaussians" / "garden_points.npz"
    if not path.is_file():
        raise SystemExit(f"benchmark scene not found: {path} (set RECON_TEST_DATA)")
    data = np.load(path)
    means = torch.from_numpy(data["means3d"]).float()
    colors = torch.from_numpy(data["colors"]).float() / 255.0
    keep = (means.abs() <= 2.0).all(dim=1)
    means, colors = means[keep].contiguous(), colors[keep].contiguous()
    n = means.shape[0]
    torch.manual_seed(0)
    scales = torch.rand(n, 3) * (0.02 - 1e-4) + 1e-4
    quats = torch.nn.functional.normalize(torch.randn(n, 4), dim=-1)
    opacities = torch.rand(n)
    params = [t.to(device) for t in (means, quats, scales, opacities, colors)]
    w2c = torch.from_numpy(data["viewmats"][0]).float().to(device)
    K = torch.from_numpy(data["Ks"][0]).float().to(device)
    return params, w2c, K, int(data["width"]), int(data["height"])


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def worker(backend: str, repeats: int) -> dict:
    import torch

    from recon.renderers.gaussians.rasterize import rasterize_gaussians

    device = "cuda" if backend == "gsplat" else "cpu"
    params, w2c, K, width, height = load_scene(device)
    leaves = [p.clone().requires_grad_(True) for p in params]
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(height, width, c, generator=g).to(device) for c in (3, 1, 1)]
    baseline = rss_mb()

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    def step(backward: bool = True):
        for p in leaves:
            p.grad = None
        sync()
        t0 = time.perf_counter()
        out = rasterize_gaussians(*leaves, w2c, K, width, height, backend=backend)
        sync()
        t1 = time.perf_counter()
        if backward:
            loss = (out.rgb * v[0]).sum() + (out.alpha * v[1]).sum() + (out.depth * v[2]).sum()
            loss.backward()
        sync()
        return t1 - t0, time.perf_counter() - t1, out

    # Warmup: the kernels' build/load and allocator first touches (the reference warms up on a forward only:
    # one of its iterations takes about a minute).
    _, _, out = step(backward=backend != "torch")
    num_visible = int((out.radii > 0).sum())
    fwd, bwd = [], []
    for _ in range(repeats):
        tf, tb, _ = step()
        fwd.append(tf)
        bwd.append(tb)
    return {
        "backend": backend,
        "median_forward_s": statistics.median(fwd),
        "median_backward_s": statistics.median(bwd),
        "median_total_s": statistics.median(f + b for f, b in zip(fwd, bwd)),
        "forward_s": fwd,
        "backward_s": bwd,
        "repeats": repeats,
        "peak_rss_mb": rss_mb(),
        "baseline_rss_mb": baseline,
        "num_gaussians": int(params[0].shape[0]),
        "num_visible": num_visible,
        "width": width,
        "height": height,
        "threads": torch.get_num_threads(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="JSON file to write")
    ap.add_argument("--backends", default="torch,cpu", help="comma separated: torch, cpu, gsplat")
    ap.add_argument("--repeats", type=int, default=None, help="timed iterations (default: cpu 5, torch 2)")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        args.out.write_text(json.dumps(worker(args.worker, args.repeats)))
        return
    results = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        repeats = args.repeats or DEFAULT_REPEATS.get(backend, 3)
        tmp = args.out.with_suffix(f".{backend}.tmp.json")
        print(f"[{backend}] running {repeats} repeats in a subprocess...", flush=True)
        cmd = [sys.executable, __file__, "--worker", backend, "--repeats", str(repeats), "--out", str(tmp)]
        proc = subprocess.run(cmd)
        if proc.returncode != 0:
            results[backend] = {"error": f"worker exited with {proc.returncode}"}
            continue
        results[backend] = json.loads(tmp.read_text())
        tmp.unlink()
    report = {
        "scene": "garden_points.npz camera 0, points cropped to [-2,2]^3; scales U(1e-4,0.02), quats normalize(randn), "
                 "opacities U(0,1), seed 0; colors input = point colors (SH degree 0)",
        "loss": "(rgb*v).sum() + (alpha*va).sum() + (depth*vd).sum(), fixed random v",
        "backends": results,
    }
    ok = {k: r for k, r in results.items() if "error" not in r}
    if "cpu" in ok and "torch" in ok:
        report["speedup_cpu_vs_torch"] = ok["torch"]["median_total_s"] / ok["cpu"]["median_total_s"]
    try:
        report["load_average_1min"] = os.getloadavg()[0]  # other processes on the machine inflate timings
    except OSError:
        pass
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    print(f"\n{'backend':8s} {'forward s':>10s} {'backward s':>11s} {'total s':>9s} {'peak RSS MB':>12s}  visible/N")
    for k, r in ok.items():
        print(f"{k:8s} {r['median_forward_s']:10.3f} {r['median_backward_s']:11.3f} {r['median_total_s']:9.3f} "
              f"{r['peak_rss_mb']:12.0f}  {r['num_visible']}/{r['num_gaussians']}  ({r['threads']} threads)")
    if "speedup_cpu_vs_torch" in report:
        print(f"speedup cpu vs torch: {report['speedup_cpu_vs_torch']:.1f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
