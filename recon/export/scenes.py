"""Export scenes to files and load scene files (3DGS PLY now; meshes later)."""

from __future__ import annotations

from pathlib import Path


from recon.export.gaussian_ply import GaussianPly, read_gaussian_ply, write_gaussian_ply
from recon.scenes.gaussians import GaussianScene

FORMATS = ("ply",)


def scene_to_ply(scene: GaussianScene) -> GaussianPly:
    """The standard 3DGS PLY record of a scene (full SH degree, raw parameters)."""
    return GaussianPly(means=scene.means.detach().cpu(), quats=scene.quats.detach().cpu(),
                       log_scales=scene.log_scales.detach().cpu(), opacity_logits=scene.opacity_logits.detach().cpu(),
                       sh_dc=scene.sh_dc.detach().cpu()[:, 0], sh_rest=scene.sh_rest.detach().cpu())


def scene_from_ply(ply: GaussianPly) -> GaussianScene:
    """A GaussianScene from a standard 3DGS PLY record; the active SH degree is the file's degree."""
    k = ply.sh_rest.shape[1] + 1
    degree = {1: 0, 4: 1, 9: 2, 16: 3}[k]
    return GaussianScene(ply.means, ply.quats, ply.log_scales, ply.opacity_logits, ply.sh_dc[:, None, :],
                         ply.sh_rest, max_sh_degree=degree)


def export_scene(scene, fmt: str, path: Path) -> Path:
    """Write ``scene`` as ``fmt`` to ``path`` atomically."""
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {list(FORMATS)} for a Gaussian scene, got {fmt!r}")
    if not isinstance(scene, GaussianScene):
        raise TypeError(f"cannot export a {type(scene).__name__} as {fmt}")
    path = Path(path)
    write_gaussian_ply(path, scene_to_ply(scene))
    return path


def load_scene_file(path: Path):
    """Load a scene file: a 3DGS PLY (``.ply`` with Gaussian properties)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene file not found: {path}")
    if path.suffix.lower() != ".ply":
        raise ValueError(f"{path}: unsupported scene file type {path.suffix!r}; expected a 3DGS .ply")
    return scene_from_ply(read_gaussian_ply(path))
