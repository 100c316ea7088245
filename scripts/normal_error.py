"""Normal error of any run or scene file against a synthetic set's ground-truth normals (test views).

    python scripts/normal_error.py RUN [--field-method volume|sphere]
    python scripts/normal_error.py --scene FILE.{ply,obj,glb} --data DATASET

Prints the mean angular error in degrees over foreground pixels (per view, then averaged; the protocol of
`recon eval` for PBR runs, recon.evaluate_ir.normal_mae_deg), its median over all foreground pixels and the share
of pixels under 5 and 10 degrees. Works for scenes that `recon eval` does not score normals of (radiance meshes,
fields: e.g. an SDF run sphere-traced; docs/inverse_rendering.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F


def main() -> None:
    from recon.cli import load_run_scene
    from recon.data.load import load_dataset
    from recon.evaluate_ir import load_ir_ground_truth, normal_mae_deg
    from recon.export.scenes import load_scene_file
    from recon.renderers import FieldSettings, RenderSettings, render
    from recon.train.config import load_config_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", type=Path)
    parser.add_argument("--scene", type=Path)
    parser.add_argument("--data", type=Path)
    parser.add_argument("--field-method", choices=("volume", "sphere"), default="sphere")
    args = parser.parse_args()
    if (args.run is None) == (args.scene is None):
        parser.error("give exactly one of RUN or --scene FILE")
    if args.run is not None:
        scene = load_run_scene(args.run)
        data = args.data or load_config_file(args.run / "config.yaml")[1].data
    else:
        if args.data is None:
            parser.error("--scene needs --data")
        scene, data = load_scene_file(args.scene), args.data
    scene = getattr(scene, "mesh", scene)  # a LitScene's geometry
    ds = load_dataset(data)
    gt = load_ir_ground_truth(Path(data), ds.test.names)
    if gt is None or gt.normal is None:
        raise SystemExit(f"{data}: no ground-truth normals (test/r_<i>_normal.npy)")
    settings = RenderSettings(channels=("rgb", "alpha", "normal"), fields=FieldSettings(method=args.field_method))
    with torch.no_grad():
        pred = torch.stack([render(scene, ds.test.cameras[i], settings).normal[0] for i in range(len(ds.test))])
    a, b = F.normalize(pred.double(), dim=-1), F.normalize(gt.normal.double(), dim=-1)
    angle = torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1)))[gt.mask[..., 0] > 0.5]
    print(f"normal MAE {normal_mae_deg(pred, gt):.2f} deg (median {float(angle.median()):.2f}, "
          f"< 5 deg {float((angle < 5).double().mean()):.1%}, < 10 deg {float((angle < 10).double().mean()):.1%})")


if __name__ == "__main__":
    main()
