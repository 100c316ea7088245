"""Training through a fisheye lens without undistorting: a dataset made here (a textured sphere seen by strongly
distorted fisheye cameras, rendered independently with the mesh ray caster) trains with the Gaussian ray caster
to within 1 dB of the same scene seen by pinhole cameras with the same poses, trained by rasterization."""

import json
import math
from pathlib import Path

import pytest
import torch

from recon.cameras import Cameras, look_at
from recon.cli import main
from recon.data.io import read_image, write_png
from recon.renderers.mesh.raycast import RayCaster
from tests._mesh_util import icosphere

SIZE, FOCAL = 64, 24.0
FISHEYE_K = (0.08, -0.02, 0.004, 0.0)
STEPS = ["--max-steps", "500", "--densify.start", "100", "--densify.interval", "100",
         "--densify.opacity-reset-interval", "0", "--no-progress", "--checkpoint-every", "500",
         "--alpha-mode", "coverage", "--test-every", "6", "--seed", "0"]


def _color(p: torch.Tensor) -> torch.Tensor:
    """A smooth procedural texture on the sphere (bands in three directions)."""
    return 0.5 + 0.4 * torch.stack([torch.sin(4 * p[:, 0] + 1), torch.sin(3 * p[:, 1] + 2 * p[:, 2]),
                                    torch.cos(5 * p[:, 2] - p[:, 0])], -1)


def spheres() -> tuple[torch.Tensor, torch.Tensor]:
    """A center sphere and eight small ones on a ring around it: content far off the cameras' axes, where a
    fisheye and a pinhole image differ most."""
    v0, f0 = icosphere(3, radius=0.45)
    verts, faces = [v0], [f0]
    for k in range(8):
        a = 2 * math.pi * k / 8
        center = torch.tensor([0.95 * math.cos(a), 0.95 * math.sin(a), 0.4 * math.sin(3 * a)], dtype=v0.dtype)
        v, f = icosphere(2, radius=0.25)
        faces.append(f + sum(len(x) for x in verts))
        verts.append(v + center)
    return torch.cat(verts).float(), torch.cat(faces)


def make_dataset(root: Path, model: str) -> Path:
    """24 views on a sphere of radius 2.2 around the spheres, 64 x 64, 2 x 2 supersampled, instant-ngp format."""
    caster = RayCaster(*spheres())
    n = 24
    i = torch.arange(n, dtype=torch.float64)
    elev = torch.deg2rad(-20 + 70 * (i % 4) / 3)
    azim = 2 * math.pi * i / n * 2.7
    eyes = 2.2 * torch.stack([torch.cos(elev) * torch.cos(azim), torch.cos(elev) * torch.sin(azim),
                              torch.sin(elev)], -1)
    w2c = look_at(eyes).float()
    K = torch.tensor([[FOCAL, 0, SIZE / 2], [0, FOCAL, SIZE / 2], [0, 0, 1]]).expand(n, 3, 3).clone()
    dist = torch.tensor(FISHEYE_K).expand(n, 4).clone() if model == "fisheye" else None
    cams = Cameras(world_to_cam=w2c, K=K, width=SIZE, height=SIZE, model=model, distortion=dist)
    sub = (torch.arange(2 * SIZE, dtype=torch.float32) + 0.5) / 2
    ys, xs = torch.meshgrid(sub, sub, indexing="ij")
    pix = torch.stack([xs.reshape(-1), ys.reshape(-1)], -1)
    (root / "images").mkdir(parents=True)
    frames = []
    c2w = cams.cam_to_world()
    for c in range(n):
        o, d = cams[c].rays(pix[None])
        hits = caster.closest_hit(o[0], d[0])
        rgb = torch.where(hits.hit[:, None], _color(o[0] + hits.t[:, None] * d[0]), torch.zeros(1, 3))
        rgba = torch.cat([rgb, hits.hit[:, None].float()], -1).reshape(SIZE, 2, SIZE, 2, 4).mean((1, 3))
        # Straight alpha: un-premultiply the supersampled color.
        rgba[..., :3] = rgba[..., :3] / rgba[..., 3:].clamp_min(1e-6)
        write_png(root / "images" / f"r_{c}.png", rgba.clamp(0, 1))
        gl = c2w[c].double() @ torch.diag(torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64))
        frames.append({"file_path": f"images/r_{c}.png", "transform_matrix": gl.tolist()})
    meta = {"fl_x": FOCAL, "fl_y": FOCAL, "cx": SIZE / 2, "cy": SIZE / 2, "w": SIZE, "h": SIZE, "frames": frames}
    if model == "fisheye":
        meta.update(camera_model="OPENCV_FISHEYE", **{f"k{j + 1}": v for j, v in enumerate(FISHEYE_K)})
    else:
        meta.update(camera_model="PINHOLE")
    (root / "transforms.json").write_text(json.dumps(meta))
    return root


def test_fisheye_trains_like_its_pinhole_twin(tmp_path, capsys):
    fish = make_dataset(tmp_path / "fisheye", "fisheye")
    pin = make_dataset(tmp_path / "pinhole", "pinhole")
    # The fisheye images are strongly distorted: the objects' outlines are far from where a pinhole puts them.
    a = read_image(fish / "images" / "r_0.png")[..., 3] > 0.5
    b = read_image(pin / "images" / "r_0.png")[..., 3] > 0.5
    assert (a != b).sum() > 0.1 * (a | b).sum()  # measured 15 %
    assert main(["train", "gaussians", "--data", str(fish), "--output", str(tmp_path / "run_fish"),
                 "--distortion", "keep", "--render-method", "raycast", *STEPS]) == 0
    assert main(["train", "gaussians", "--data", str(pin), "--output", str(tmp_path / "run_pin"), *STEPS]) == 0
    fish_psnr = json.loads((tmp_path / "run_fish" / "eval.json").read_text())["psnr"]
    pin_psnr = json.loads((tmp_path / "run_pin" / "eval.json").read_text())["psnr"]
    assert pin_psnr > 25.0, pin_psnr
    assert fish_psnr > pin_psnr - 1.0, (fish_psnr, pin_psnr)
    # Rasterizing the fisheye run's cameras is refused with a pointer to the ray caster.
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run_fish"), "--gaussians-method", "raster",
                 "--out", str(tmp_path / "e.json")]) != 0
    assert "cannot be rasterized" in capsys.readouterr().err
