"""Training from a COLMAP dataset (binary model, points3D initialization) through the CLI."""

import json

import numpy as np
import torch

from recon.cli import main
from recon.data.colmap import ColmapCamera, ColmapImage, ColmapModel, ColmapPoints, write_colmap_model
from recon.data.io import write_png
from recon.data.load import load_dataset
from recon.data.sample import ensure_sample_scene
from recon.train.init import carve


def _rotmat_to_qvec(R: np.ndarray) -> np.ndarray:
    """(w, x, y, z) of a proper rotation (Shepperd's method, largest diagonal branch)."""
    m = R
    t = np.trace(m)
    cands = [t, m[0, 0], m[1, 1], m[2, 2]]
    i = int(np.argmax(cands))
    if i == 0:
        w = np.sqrt(1 + t) / 2
        q = [w, (m[2, 1] - m[1, 2]) / (4 * w), (m[0, 2] - m[2, 0]) / (4 * w), (m[1, 0] - m[0, 1]) / (4 * w)]
    else:
        j, k = (i % 3) + 1, ((i + 1) % 3) + 1
        a, b, c = i - 1, j - 1, k - 1
        s = np.sqrt(1 + m[a, a] - m[b, b] - m[c, c]) * 2
        q = [0.0] * 4
        q[0] = (m[c, b] - m[b, c]) / s
        q[i] = s / 4
        q[j] = (m[b, a] + m[a, b]) / s
        q[k] = (m[c, a] + m[a, c]) / s
    q = np.array(q)
    return q / np.linalg.norm(q)


def _sample_as_colmap(root):
    """The sample scene's train+test views at 64x64 over white, as a COLMAP model with carved points3D."""
    data = load_dataset(ensure_sample_scene(), downscale=2)
    cams = [data.train.cameras, data.test.cameras]
    images = torch.cat([data.train.images, data.test.images])
    names = [f"a_{n}" for n in data.train.names] + [f"b_{n}" for n in data.test.names]
    w2c = torch.cat([c.world_to_cam for c in cams]).double().numpy()
    K = data.train.cameras.K[0].double().numpy()
    (root / "images").mkdir(parents=True)
    colmap_images = {}
    for i, name in enumerate(names):
        rgb = images[i, ..., :3] * images[i, ..., 3:] + (1 - images[i, ..., 3:])
        write_png(root / "images" / f"{name}.png", rgb.numpy())
        colmap_images[i + 1] = ColmapImage(id=i + 1, qvec=_rotmat_to_qvec(w2c[i, :3, :3]), tvec=w2c[i, :3, 3],
                                           camera_id=1, name=f"{name}.png")
    gen = torch.Generator().manual_seed(0)
    cand = (torch.rand(20000, 3, generator=gen) * 2 - 1) * 1.0
    keep, color = carve(cand, data.train.cameras, data.train.images)
    pts, col = cand[keep].double().numpy(), (color[keep].numpy() * 255).astype(np.uint8)
    points = ColmapPoints(ids=np.arange(1, len(pts) + 1), xyz=pts, rgb=col, errors=np.zeros(len(pts)),
                          tracks=[np.zeros((0, 2), np.int64) for _ in pts])
    camera = ColmapCamera(id=1, model="PINHOLE", width=64, height=64, params=(K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    write_colmap_model(root / "sparse" / "0", ColmapModel({1: camera}, colmap_images, points), binary=True)
    return len(pts)


def test_train_on_colmap_dataset(tmp_path):
    n_points = _sample_as_colmap(tmp_path / "scene")
    data = load_dataset(tmp_path / "scene")
    assert data.format == "colmap" and data.points.shape == (n_points, 3)
    assert len(data.test) == 7 and len(data.train) == 49  # every 8th of 56 sorted images
    run = tmp_path / "run"
    assert main(["train", "gaussians", "--data", str(tmp_path / "scene"), "--output", str(run), "--max-steps", "300",
                 "--no-random-background", "--densify.start", "100", "--densify.interval", "50",
                 "--no-progress"]) == 0
    summary = json.loads((run / "eval.json").read_text())
    # The points3D initialization (a carved hull) starts near 15 dB; 300 steps must get well past it.
    assert summary["psnr"] > 22.0, summary["psnr"]
