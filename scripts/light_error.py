"""Where a PBR run's learned light and base color are wrong, against a synthetic set's ground truth.

    python scripts/light_error.py RUN [--envmap FILE.hdr]

Prints (1) the diffuse irradiance of the learned and the true light (default: the set's envmaps/field.hdr, the
training light of the synthetic sets) along +-X, +-Y, +-Z, from their spherical-harmonic projections to band 2
convolved with the cosine lobe, the learned one times the common scale that matches the sum of the true ones
(light and base color share an unknown scale); (2) the base color's squared error (sRGB, after the evaluation's
per-channel alignment, recon.evaluate_ir.albedo_scale) over the test views' object pixels, per channel and split
by the true normal's z: the share of pixels and the share of the error in each band. A light too bright from one side shows
as a base color too dark on the faces turned that way (docs/inverse_rendering.md, albedo-orientation prior).
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

AXES = {"+X": (1, 0, 0), "-X": (-1, 0, 0), "+Y": (0, 1, 0), "-Y": (0, -1, 0), "+Z": (0, 0, 1), "-Z": (0, 0, -1)}
# Cosine-lobe convolution of SH bands 0..3 (Ramamoorthi & Hanrahan): irradiance from radiance coefficients.
LOBE = (math.pi, 2 * math.pi / 3, math.pi / 4, 0.0)


def irradiance(light, dirs: torch.Tensor) -> torch.Tensor:
    """``[N, 3]`` diffuse irradiance of ``light`` at unit normals ``dirs [N, 3]`` (SH to band 3, cosine lobe)."""
    from recon.shading.prt import light_sh, sh_basis

    with torch.no_grad():
        coeffs = light_sh(light).double()  # [16, 3]
        lobe = torch.tensor([LOBE[b] for b in range(4) for _ in range(2 * b + 1)], dtype=coeffs.dtype)
        return sh_basis(dirs.double()) @ (coeffs * lobe[:, None])


def main() -> None:
    from recon.cli import load_run_scene
    from recon.color import linear_to_srgb
    from recon.data.load import load_dataset
    from recon.evaluate_ir import albedo_scale, load_ir_ground_truth
    from recon.evaluate_pbr import render_gbuffers
    from recon.scenes.lit import LitScene
    from recon.shading.envmap import EnvLight
    from recon.train.config import load_config_file

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--envmap", type=Path, default=None)
    args = parser.parse_args()
    scene = load_run_scene(args.run)
    if not isinstance(scene, LitScene):
        raise SystemExit(f"{args.run}: not a PBR run (its scene has no light)")
    data_dir = Path(load_config_file(args.run / "config.yaml")[1].data)
    true = EnvLight.from_file(args.envmap or data_dir / "envmaps" / "field.hdr")

    dirs = torch.tensor(list(AXES.values()), dtype=torch.float64)
    e_true, e_learned = irradiance(true, dirs), irradiance(scene.light, dirs)
    scale = float(e_true.sum() / e_learned.sum())
    print(f"irradiance (r, g, b), learned x {scale:.3f} (the common scale):")
    for name, t, p in zip(AXES, e_true.tolist(), (e_learned * scale).tolist()):
        print(f"  {name}: true {t[0]:.3f} {t[1]:.3f} {t[2]:.3f}   learned {p[0]:.3f} {p[1]:.3f} {p[2]:.3f}")

    data = load_dataset(data_dir)
    gt = load_ir_ground_truth(data.root, list(data.test.names))
    if gt is None or gt.normal is None:
        raise SystemExit(f"{data_dir}: no ground-truth albedo and normals (test/r_<i>_albedo.png, _normal.npy)")
    pred = render_gbuffers(scene, data.test, torch.ones(3), "cpu")["albedo"]
    aligned = (pred * albedo_scale(pred, gt.albedo, gt.mask)).clamp(0, 1)
    sq = (linear_to_srgb(aligned) - linear_to_srgb(gt.albedo.clamp(0, 1))) ** 2
    fg = gt.mask[..., 0] > 0.5
    err, nz = sq.mean(-1)[fg].double(), gt.normal[..., 2][fg].double()
    per_channel = " ".join(f"{float(v):.5f}" for v in sq[fg].double().mean(0))
    print(f"base color squared error (sRGB, aligned) over {int(fg.sum())} object pixels: mean per channel (r g b) "
          f"{per_channel}; by the true normal's z:")
    edges = (-1.0, -0.5, 0.0, 0.5, 1.0)
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (nz >= lo) & ((nz < hi) if hi < 1 else (nz <= hi))
        print(f"  n_z in [{lo:+.1f}, {hi:+.1f}): {float(band.double().mean()):6.1%} of the pixels, "
              f"{float(err[band].sum() / err.sum()):6.1%} of the error")


if __name__ == "__main__":
    main()
