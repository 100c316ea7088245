"""Scene construction from a dataset: ``build_gaussian_scene(cfg, data)`` and the scene extent."""

from __future__ import annotations

import torch

from recon.cameras import Cameras
from recon.data.dataset import SceneData
from recon.scenes.gaussians import GaussianScene
from recon.train.config import GaussianModelConfig


def scene_extent(cameras: Cameras) -> float:
    """3DGS's extent: 1.1 x the largest distance of a camera center from their mean."""
    centers = cameras.centers().double()
    radius = (centers - centers.mean(0)).norm(dim=-1).max().item()
    return 1.1 * max(radius, 1e-3)


def look_at_center(cameras: Cameras) -> torch.Tensor:
    """Least-squares point closest to all optical axes ``[3]`` (the mean of centers if ill-posed)."""
    c2w = cameras.cam_to_world().double()
    origins, dirs = c2w[:, :3, 3], c2w[:, :3, 2]
    eye = torch.eye(3, dtype=torch.float64)
    proj = eye - dirs[:, :, None] * dirs[:, None, :]
    a = proj.sum(0)
    b = (proj @ origins[:, :, None]).sum(0)[:, 0]
    if torch.linalg.cond(a) > 1e6:
        return origins.mean(0)
    return torch.linalg.solve(a, b)


def _has_masks(images: torch.Tensor) -> bool:
    """True when most training images carry real transparency (a background to carve against)."""
    alpha = images[..., 3]
    return bool(((alpha < 0.5).flatten(1).float().mean(1) > 0.01).float().mean() > 0.5)


def sample_views(points: torch.Tensor, cameras: Cameras, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixels under the projections of ``points [P, 3]`` in every view: ``pix [C, P, D]`` (nearest pixel of
    ``images [C, H, W, D]``) and ``inside [C, P]`` (within the frame, and in front of the camera; a fisheye
    lens also sees points behind its image plane)."""
    uv, z = cameras.to(dtype=torch.float32).project(points.float())
    h, w = images.shape[1:3]
    col = uv[..., 0].floor().long()
    row = uv[..., 1].floor().long()
    front = torch.isfinite(uv).all(-1) if cameras.model == "fisheye" else z > 0
    inside = front & (col >= 0) & (col < w) & (row >= 0) & (row < h)
    cam_idx = torch.arange(len(cameras))[:, None].expand_as(col)
    return images[cam_idx, row.clamp(0, h - 1), col.clamp(0, w - 1)], inside


def carve(points: torch.Tensor, cameras: Cameras, images: torch.Tensor,
          min_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
    """Visual-hull carving: keep points whose projection has alpha > 0.1 in at least ``min_fraction`` of the
    views that see them. Returns ``(keep [P] bool, mean color [P, 3])`` (color from the views that see it)."""
    pix, inside = sample_views(points, cameras, images)
    hit = inside & (pix[..., 3] > 0.1)
    seen = inside.sum(0)
    keep = (seen > 0) & (hit.sum(0) >= min_fraction * seen)
    weight = hit.float()[..., None]
    color = (pix[..., :3] * weight).sum(0) / weight.sum(0).clamp_min(1)
    return keep, color


def build_gaussian_scene(cfg: GaussianModelConfig, data: SceneData, seed: int = 0,
                         alpha_is_coverage: bool = True) -> GaussianScene:
    """Initial Gaussians: the dataset's points, or random points in the scene bounds (carved by the alpha
    masks when the dataset has them and its alpha is coverage, colored by the images)."""
    use_points = cfg.init == "points" or (cfg.init == "auto" and data.points is not None and len(data.points) > 0)
    if use_points:
        if data.points is None or len(data.points) == 0:
            raise ValueError(f"model.init = 'points' but the dataset at {data.root} has no point cloud")
        return GaussianScene.from_points(data.points, data.point_colors, max_sh_degree=cfg.sh_degree,
                                         init_opacity=cfg.init_opacity)
    gen = torch.Generator().manual_seed(seed)
    cams = data.train.cameras
    center = look_at_center(cams).float()
    dist = (cams.centers().float() - center).norm(dim=-1).median().item()
    half = cfg.random_extent * dist
    carve_it = cfg.carve and alpha_is_coverage and _has_masks(data.train.images)
    kept, colors = [], []
    total, tries = 0, 0
    while total < cfg.num_random and tries < 20:
        tries += 1
        cand = center + (torch.rand(max(cfg.num_random, 4096) * 2, 3, generator=gen) * 2 - 1) * half
        if carve_it:
            keep, color = carve(cand, cams, data.train.images)
            cand, color = cand[keep], color[keep]
        else:
            color = torch.rand(cand.shape[0], 3, generator=gen)
        kept.append(cand)
        colors.append(color)
        total += cand.shape[0]
    if total == 0:
        raise ValueError(f"random initialization found no point inside the alpha masks of {data.root}; "
                         "set model.carve false")
    points = torch.cat(kept)[: cfg.num_random]
    colors = torch.cat(colors)[: cfg.num_random]
    return GaussianScene.from_points(points, colors, max_sh_degree=cfg.sh_degree, init_opacity=cfg.init_opacity)
