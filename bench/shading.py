"""Monte Carlo shading benchmark: ``shade_mc`` on a real view with the ``torch`` backend (reference ops) and the
``cpu`` backend (fused C++ kernels of cuda/shading), interleaved, median of ``--repeats`` runs each.

    python bench/shading.py --out bench/results/shading.json [--scene armadillo_field] [--view 0] [--spp 16]
        [--supersample 1] [--repeats 3] [--no-grad]

The G-buffer and the ray tracer of the scene's ground-truth asset (gt_asset.glb) under envmaps/field.hdr are
captured once from a render of test view ``--view``; only ``shade_mc`` is timed: direct light and direct + one
indirect bounce (no grad), and, unless ``--no-grad``, forward + backward of direct light with gradients to the
material and the light (as in training). Also reports the largest difference between the two images.
Data: $RECON_TEST_DATA/synthetic/<scene> (default ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def capture(scene_name: str, view: int, supersample: int):
    """``(gb, light, tracer)`` that the mesh renderer hands to ``shade_mc`` for one test view."""
    from recon.data.load import load_dataset
    from recon.export.mesh_io import load_mesh
    from recon.renderers import RenderSettings, ShadingSettings, render
    from recon.scenes.lit import LitScene
    from recon.shading import mc
    from recon.shading.envmap import EnvLight

    root = Path(os.environ.get("RECON_TEST_DATA", REPO.parent / "shared" / "data")) / "synthetic" / scene_name
    data = load_dataset(root)
    scene = LitScene(load_mesh(root / "gt_asset.glb"), EnvLight.from_file(root / "envmaps" / "field.hdr"))
    got = {}
    original = mc.shade_mc

    def grab(gb, light, settings, caster=None, **kw):
        got.update(gb=gb, light=light, tracer=caster)
        return original(gb, light, replace(settings, spp=1), caster, **kw)

    mc.shade_mc = grab  # shade() imports shade_mc from the module at call time
    try:
        settings = RenderSettings(background=torch.ones(3), channels=("rgb",),
                                  shading=ShadingSettings(integrator="mc", spp=1, supersample=supersample))
        with torch.no_grad():
            render(scene, data.test.cameras[view], settings)
    finally:
        mc.shade_mc = original
    return got["gb"], got["light"], got["tracer"]


def run_case(gb, light, tracer, settings, backend: str, grad: bool) -> tuple[float, torch.Tensor]:
    from recon.shading.mc import shade_mc

    t0 = time.perf_counter()
    if grad:
        leaves = {k: getattr(gb, k).detach().clone().requires_grad_(True)
                  for k in ("normal", "base_color", "roughness", "metallic")}
        light.log_radiance.requires_grad_(True)
        out = shade_mc(replace(gb, **leaves), light, settings, tracer, backend=backend)
        out.sum().backward()
        light.log_radiance.requires_grad_(False)
        light.log_radiance.grad = None
    else:
        with torch.no_grad():
            out = shade_mc(gb, light, settings, tracer, backend=backend)
    return time.perf_counter() - t0, out.detach()


def main() -> None:
    from recon.renderers import ShadingSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "shading.json")
    ap.add_argument("--scene", default="armadillo_field")
    ap.add_argument("--view", type=int, default=0)
    ap.add_argument("--spp", type=int, default=16)
    ap.add_argument("--supersample", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-grad", action="store_true")
    a = ap.parse_args()
    gb, light, tracer = capture(a.scene, a.view, a.supersample)
    cases = {"direct": (ShadingSettings(integrator="mc", spp=a.spp), False),
             "indirect": (ShadingSettings(integrator="mc", spp=a.spp, indirect=True), False)}
    if not a.no_grad:
        cases["direct_grad"] = (ShadingSettings(integrator="mc", spp=a.spp), True)
    result = {"scene": a.scene, "view": a.view, "pixels": len(gb), "spp": a.spp, "supersample": a.supersample,
              "repeats": a.repeats, "torch_threads": torch.get_num_threads(), "cases": {}}
    print(f"{a.scene} view {a.view}: {len(gb)} shaded pixels, spp {a.spp}, {torch.get_num_threads()} threads")
    run_case(gb, light, tracer, ShadingSettings(integrator="mc", spp=1), "cpu", False)  # build / warm up
    for name, (settings, grad) in cases.items():
        times = {"torch": [], "cpu": []}
        images = {}
        for _ in range(a.repeats):
            for backend in ("torch", "cpu"):  # interleaved, so a load change on the machine hits both
                secs, images[backend] = run_case(gb, light, tracer, settings, backend, grad)
                times[backend].append(secs)
        med = {b: statistics.median(t) for b, t in times.items()}
        diff = float((images["cpu"] - images["torch"]).abs().max())
        result["cases"][name] = {"seconds_torch": times["torch"], "seconds_cpu": times["cpu"],
                                 "median_torch": med["torch"], "median_cpu": med["cpu"],
                                 "speedup": med["torch"] / med["cpu"], "max_abs_diff": diff}
        print(f"{name:>12s}  torch {med['torch']:7.3f} s  cpu {med['cpu']:7.3f} s  speedup "
              f"{med['torch'] / med['cpu']:5.2f}x  max |diff| {diff:.2e}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
