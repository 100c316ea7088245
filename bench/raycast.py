"""Gaussian ray caster benchmark: BVH build, forward / backward time, shadow-ray throughput, agreement with the
rasterizer, peak memory.

    python bench/raycast.py --out FILE.json [--repeats N] [--threads 2]

* Garden: the scene of ``bench/raster.py`` (``$RECON_TEST_DATA/gaussians/garden_points.npz``, camera 0, 648 x 420,
  111,785 Gaussians with random scales / rotations / opacities). ``build_s``: the BVH (``GaussianRayCaster``);
  ``forward_s`` / ``backward_s``: the op (one ray per pixel center, 8 x 8 pixel packets, "center" order) with
  the loss ``(features * v).sum() + (alpha * va).sum() + (depth * vd).sum()`` (fixed random v), medians over
  the repeats; ``render_*_s``: the same view through ``render(..., method="raycast")`` (dilation, projection
  for densification, SH colors included). ``psnr_vs_raster``: that render against ``method="raster"`` (black
  background); ``psnr_vs_raster_hit_order`` / ``_no_dilation`` the same with the "hit" order / without the
  3D dilation, ``error_share_of_worst_1pct_pixels`` where the difference sits. A PNG beside the JSON shows both
  images and their difference.
* Shadow rays: ``shadow_rays_per_s`` on the bob_field scene as Gaussians (200,000 flat Gaussians sampled on
  ``bob_field/mesh.ply`` by area, disc radius ~ the sample spacing, opacity 0.95): 1,000,000 rays from the
  surface (offset 1e-3 along the normal) in cosine-distributed directions, ``transmittance`` with tmin 1e-3.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def garden(repeats: int) -> tuple[dict, dict]:
    from raster import load_scene

    from recon.cameras import Cameras
    from recon.renderers import GaussianSettings, RenderSettings, render
    from recon.renderers.gaussians.raycast import GaussianRayCaster
    from recon.renderers.gaussians.raycast_render import _tile_order
    from recon.scenes.gaussians import GaussianScene
    from recon.sh import SH_C0

    (means, quats, scales, opac, colors), w2c, K, W, H = load_scene()
    cams = Cameras(world_to_cam=w2c[None], K=K[None], width=W, height=H)
    pix, _ = _tile_order(W, H, "cpu")
    o, d = (x[0].contiguous() for x in cams.rays(pix[None]))
    leaves = [p.clone().requires_grad_(True) for p in (means, quats, scales, opac, colors)]
    g = torch.Generator().manual_seed(1)
    v = [torch.randn(len(o), c, generator=g) for c in (3, 1, 1)]  # one ray per pixel + border-tile padding
    build, fwd, bwd = [], [], []
    for i in range(repeats + 1):  # the first iteration warms up (kernel load, first touches)
        for p in leaves:
            p.grad = None
        t0 = time.perf_counter()
        caster = GaussianRayCaster(*leaves[:4])
        t1 = time.perf_counter()
        out = caster.trace(o, d, leaves[4], tmin=0.01, packet=64)
        t2 = time.perf_counter()
        ((out.features * v[0]).sum() + (out.alpha * v[1]).sum() + (out.depth * v[2]).sum()).backward()
        t3 = time.perf_counter()
        if i:
            build.append(t1 - t0)
            fwd.append(t2 - t1)
            bwd.append(t3 - t2)
    hits = float(out.n_hits.float().mean())
    n = len(means)
    scene = GaussianScene(means, quats, scales.log(), torch.logit(opac.clamp(1e-6, 1 - 1e-6)),
                          ((colors - 0.5) / SH_C0)[:, None], torch.zeros(n, 0, 3), 0)
    images, rfwd, rbwd = {}, [], []
    for method in ("raster", "raycast"):
        for i in range(repeats + 1 if method == "raycast" else 1):
            scene.zero_grad()
            t0 = time.perf_counter()
            r = render(scene, cams, RenderSettings(gaussians=GaussianSettings(method=method)))
            t1 = time.perf_counter()
            (r.rgb.sum() + r.depth.sum()).backward()
            t2 = time.perf_counter()
            if method == "raycast" and i:
                rfwd.append(t1 - t0)
                rbwd.append(t2 - t1)
        images[method] = r.rgb[0].detach()
    def psnr_vs_raster(img) -> float:
        return -10 * float(np.log10(max(float(((images["raster"] - img) ** 2).mean()), 1e-20)))

    # What each difference from rasterization costs: the 3DGRT order (t*), and no dilation (eps2d only 2D).
    variants = {}
    with torch.no_grad():
        for name, gs in (("hit_order", GaussianSettings(method="raycast", raycast_order="hit")),
                         ("no_dilation", GaussianSettings(method="raycast", eps2d=0.0))):
            variants[name] = psnr_vs_raster(render(scene, cams, RenderSettings(gaussians=gs)).rgb[0])
    err = ((images["raster"] - images["raycast"]) ** 2).mean(-1).flatten()
    top = err.sort().values[-len(err) // 100:]
    result = {
        "build_s": statistics.median(build), "forward_s": statistics.median(fwd),
        "backward_s": statistics.median(bwd), "forward_plus_backward_s": statistics.median(
            f + b for f, b in zip(fwd, bwd)),
        "build_all_s": build, "forward_all_s": fwd, "backward_all_s": bwd,
        "render_forward_s": statistics.median(rfwd), "render_backward_s": statistics.median(rbwd),
        "psnr_vs_raster": psnr_vs_raster(images["raycast"]),
        "psnr_vs_raster_hit_order": variants["hit_order"], "psnr_vs_raster_no_dilation": variants["no_dilation"],
        "error_share_of_worst_1pct_pixels": float(top.sum() / err.sum()),
        "mean_hits_per_ray": hits, "bvh": caster.stats, "num_gaussians": n, "width": W, "height": H,
    }
    return result, images


def _surface_samples(mesh_path: Path, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Area-uniform points on a mesh, their face normals, and the mean sample spacing."""
    from recon.export.mesh_io import load_mesh

    mesh = load_mesh(mesh_path)
    V, F = mesh.vertices.detach().double(), mesh.faces.long()
    a, b, c = V[F[:, 0]], V[F[:, 1]], V[F[:, 2]]
    cross = torch.linalg.cross(b - a, c - a)
    area = cross.norm(dim=-1)
    g = torch.Generator().manual_seed(seed)
    tri = torch.multinomial(area, n, replacement=True, generator=g)
    u, w = (torch.rand(n, 1, generator=g, dtype=torch.float64) for _ in range(2))
    flip = (u + w) > 1
    u, w = torch.where(flip, 1 - u, u), torch.where(flip, 1 - w, w)
    pts = a[tri] + u * (b[tri] - a[tri]) + w * (c[tri] - a[tri])
    return pts, cross[tri] / area[tri, None], float((area.sum() / 2 / n) ** 0.5)


def _shadow_rays(mesh_path: Path, n_rays: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rays from surface points (offset 1e-3 along the normal) in cosine-distributed directions around it."""
    pts, n, _ = _surface_samples(mesh_path, n_rays, seed=1)
    g = torch.Generator().manual_seed(2)
    r1, r2 = (torch.rand(n_rays, generator=g, dtype=torch.float64) for _ in range(2))
    local = torch.stack([r1.sqrt() * torch.cos(2 * np.pi * r2), r1.sqrt() * torch.sin(2 * np.pi * r2),
                         (1 - r1).sqrt()], -1)
    helper = torch.where(n[:, :1].abs() < 0.9, torch.tensor([[1.0, 0, 0]], dtype=torch.float64),
                         torch.tensor([[0.0, 1.0, 0]], dtype=torch.float64))
    t1 = torch.nn.functional.normalize(torch.linalg.cross(n, helper), dim=-1)
    t2 = torch.linalg.cross(n, t1)
    dirs = local[:, :1] * t1 + local[:, 1:2] * t2 + local[:, 2:] * n
    return (pts + 1e-3 * n).float().contiguous(), dirs.float().contiguous()


def _disc_gaussians(mesh_path: Path, n: int) -> list[torch.Tensor]:
    """Flat Gaussians on the surface: disc sigma = sample spacing, thickness 5 %, opacity 0.95."""
    pts, normal, spacing = _surface_samples(mesh_path, n, seed=0)
    z = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64).expand_as(normal)
    half = torch.nn.functional.normalize(z + normal, dim=-1)  # rotation z -> normal: the half-way quaternion
    quats = torch.cat([(z * half).sum(-1, keepdim=True), torch.linalg.cross(z, half)], -1)
    quats[(z + normal).norm(dim=-1) < 1e-6] = torch.tensor([0.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    scales = torch.tensor([spacing, spacing, spacing * 0.05], dtype=torch.float64).expand(n, 3)
    return [pts.float(), quats.float(), scales.float().contiguous(), torch.full((n,), 0.95)]


def shadow_throughput(gaussians: list[torch.Tensor], mesh_path: Path, n_rays: int) -> dict:
    from recon.renderers.gaussians.raycast import GaussianRayCaster

    caster = GaussianRayCaster(*gaussians)
    origins, dirs = _shadow_rays(mesh_path, n_rays)
    caster.transmittance(origins[:1000], dirs[:1000], tmin=1e-3)  # warm up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        T = caster.transmittance(origins, dirs, tmin=1e-3)
        times.append(time.perf_counter() - t0)
    return {"rays_per_s": n_rays / statistics.median(times), "seconds": times, "rays": n_rays,
            "gaussians": len(gaussians[0]), "occluded_fraction": float((T < 0.5).float().mean()),
            "mean_transmittance": float(T.mean())}


def bob_shadow_rays(data_root: Path, trained: Path | None, n_rays: int = 1_000_000) -> dict:
    """Shadow rays on bob_field: through a trained Gaussian scene of it when given (a 3DGS PLY), and through
    200,000 flat Gaussians sampled on its mesh (a denser, harder stand-in)."""
    mesh_path = data_root / "synthetic" / "bob_field" / "mesh.ply"
    out = {"shadow_discs": shadow_throughput(_disc_gaussians(mesh_path, 200_000), mesh_path, n_rays)}
    if trained is not None:
        from recon.export.scenes import load_scene_file

        scene = load_scene_file(trained)
        params = [x.detach().contiguous() for x in (scene.means, scene.quats, scene.scales, scene.opacities)]
        out["shadow_trained"] = shadow_throughput(params, mesh_path, n_rays)
        out["shadow_trained"]["scene"] = str(trained)
    main = out.get("shadow_trained", out["shadow_discs"])
    out["shadow_rays_per_s"] = main["rays_per_s"]
    return out


def save_png(images: dict, path: Path) -> None:
    from PIL import Image

    a, b = images["raster"].clamp(0, 1), images["raycast"].clamp(0, 1)
    diff = ((a - b).abs() * 10).clamp(0, 1)
    strip = torch.cat([a, b, diff], dim=1)
    Image.fromarray((strip.numpy() * 255 + 0.5).astype(np.uint8)).save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True, type=Path, help="JSON file to write")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bob-scene", type=Path, default=None,
                    help="a trained Gaussian scene of bob_field (3DGS PLY, e.g. RUN/exports/scene.ply of "
                         "`recon train --config configs/gaussians-bob_field.yaml`) for the shadow-ray figure")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    root = Path(os.environ.get("RECON_TEST_DATA", REPO.parent / "shared" / "data"))
    baseline = rss_mb()
    report, images = garden(args.repeats)
    report.update(bob_shadow_rays(root, args.bob_scene))
    report.update({"peak_rss_mb": rss_mb(), "baseline_rss_mb": baseline, "threads": torch.get_num_threads(),
                   "load_average_1min": os.getloadavg()[0]})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    save_png(images, args.out.with_suffix(".png"))
    print(f"build {report['build_s']:.3f} s  forward {report['forward_s']:.3f} s  backward {report['backward_s']:.3f} s"
          f"  (render(): {report['render_forward_s']:.3f} + {report['render_backward_s']:.3f} s)")
    print(f"psnr vs raster {report['psnr_vs_raster']:.2f} dB  shadow rays {report['shadow_rays_per_s'] / 1e6:.2f} M/s"
          f"  peak RSS {report['peak_rss_mb']:.0f} MB")
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
