"""Forward-model benchmark: render each synthetic set's ground-truth asset (gt_asset.glb) under its training env
map with recon's shading and compare with the Mitsuba test images (sRGB over white): PSNR over the whole image
and over the object's pixels (test alpha > 0.5), per integrator, and seconds per view.

    python bench/forward.py --out bench/results/forward.json [--scenes bob_field,armadillo_field]
        [--views 0,1,...] [--spp 16] [--supersample 2] [--no-indirect] [--skip-mc] [--skip-splitsum] [--skip-training]

The Monte Carlo settings default to what reaches the 36 dB bar (16 spp per strategy at 2 x 2 sub-pixel samples
under the Gaussian pixel filter, one bounce of indirect light); the split-sum integrator renders at one sample
per pixel. `training` is the shading mesh-pbr / sdf-pbr optimize through: split-sum made self-shadowing by the
per-vertex transfer (64 shadow rays per vertex, spherical harmonics to band 3) plus the per-vertex bounce of
interreflection (recon.train.mesh_pbr.vertex_indirect), at the Monte Carlo runs' sub-pixel samples. Data:
$RECON_TEST_DATA/synthetic/<scene> (default ../shared/data).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return -10.0 * math.log10(max(float(((a - b) ** 2).mean()), 1e-12))


def training_shader(scene, settings, shadow_samples: int = 64):
    """A renderer of ``scene`` (a LitScene of a mesh) with mesh-pbr's training shading (module docstring), and
    the seconds its transfer and bounce took."""
    from recon.renderers.lit import render_supersampled
    from recon.renderers.mesh.raycast import RayCaster
    from recon.renderers.mesh.render import mesh_arrays, render_mesh_arrays
    from recon.scenes.mesh import vertex_normals
    from recon.shading.prt import bounce_matrix, diffuse_transfer
    from recon.train.mesh_pbr import vertex_indirect

    t0 = time.perf_counter()
    arrays = mesh_arrays(scene.geometry)
    verts, faces = arrays.vertices.float(), arrays.faces
    transfer, bounce = diffuse_transfer(verts, vertex_normals(verts, faces), RayCaster(verts.contiguous(), faces),
                                        samples=shadow_samples, bounce_mesh=(verts, faces))
    arrays.transfer = transfer
    with torch.no_grad():
        arrays.indirect = vertex_indirect(arrays, bounce_matrix(bounce, faces, len(verts)), scene.light)
    setup = time.perf_counter() - t0

    def draw(cam):
        # Sub-pixel samples under the datasets' pixel filter, as for any LitScene.
        return render_supersampled(lambda cams, s: render_mesh_arrays(arrays, cams, s, shading="pbr",
                                                                       light=scene.light), cam, settings)

    return draw, setup


def bench_scene(scene_name: str, views: list[int] | None, configs: dict) -> dict:
    from recon.data.load import load_dataset
    from recon.export.mesh_io import load_mesh
    from recon.renderers import RenderSettings, render
    from recon.scenes.lit import LitScene
    from recon.shading.envmap import EnvLight

    root = Path(os.environ.get("RECON_TEST_DATA", REPO.parent / "shared" / "data")) / "synthetic" / scene_name
    data = load_dataset(root)
    scene = LitScene(load_mesh(root / "gt_asset.glb"), EnvLight.from_file(root / "envmaps" / "field.hdr"))
    idx = views if views is not None else list(range(len(data.test.cameras)))
    out = {}
    for name, shading in configs.items():
        settings = RenderSettings(background=torch.ones(3), channels=("rgb", "alpha"), shading=shading)
        draw, setup = (training_shader(scene, settings) if name == "training"
                       else ((lambda cam: render(scene, cam, settings)), 0.0))
        full, fg, secs = [], [], []
        for i in idx:
            t0 = time.perf_counter()
            with torch.no_grad():
                rgb = draw(data.test.cameras[i]).rgb[0].clamp(0.0, 1.0)
            secs.append(time.perf_counter() - t0)
            img = torch.as_tensor(data.test.images[i])
            alpha = img[..., 3:]
            gt = img[..., :3] * alpha + (1.0 - alpha)
            mask = alpha[..., 0] > 0.5
            full.append(_psnr(rgb, gt))
            fg.append(_psnr(rgb[mask], gt[mask]))
        out[name] = {"psnr_full": sum(full) / len(full), "psnr_fg": sum(fg) / len(fg),
                     "seconds_per_view": sum(secs) / len(secs), "setup_seconds": setup, "views": idx,
                     "psnr_full_per_view": full, "psnr_fg_per_view": fg, "settings": shading.__dict__}
        print(f"{scene_name:>16s}  {name:>9s}  full {out[name]['psnr_full']:6.2f} dB  fg {out[name]['psnr_fg']:6.2f} dB"
              f"  {out[name]['seconds_per_view']:6.2f} s/view", flush=True)
    return out


def main() -> None:
    from recon.renderers import ShadingSettings

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "forward.json")
    ap.add_argument("--scenes", default="bob_field,armadillo_field")
    ap.add_argument("--views", default=None, help="comma-separated test view indices (default: all)")
    ap.add_argument("--spp", type=int, default=16)
    ap.add_argument("--supersample", type=int, default=2)
    ap.add_argument("--no-indirect", action="store_true")
    ap.add_argument("--skip-mc", action="store_true")
    ap.add_argument("--skip-splitsum", action="store_true")
    ap.add_argument("--skip-training", action="store_true", help="leave out the training shader")
    a = ap.parse_args()
    configs = {}
    if not a.skip_mc:
        configs["mc"] = ShadingSettings(integrator="mc", spp=a.spp, supersample=a.supersample,
                                        indirect=not a.no_indirect)
    if not a.skip_splitsum:
        configs["splitsum"] = ShadingSettings(integrator="splitsum")
    if not a.skip_training:
        configs["training"] = ShadingSettings(integrator="splitsum", supersample=a.supersample)
    views = [int(v) for v in a.views.split(",")] if a.views else None
    result = {"torch_threads": torch.get_num_threads(), "scenes": {}}
    for s in a.scenes.split(","):
        result["scenes"][s] = bench_scene(s, views, configs)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
