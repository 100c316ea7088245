"""Export scenes to files and load scene files: 3DGS PLY for Gaussian scenes; OBJ / PLY / GLB for meshes."""

from __future__ import annotations

from pathlib import Path

import torch

from recon.export.gaussian_ply import GaussianPly, read_gaussian_ply, write_gaussian_ply
from recon.scenes.gaussians import GaussianScene
from recon.scenes.mesh import MeshScene

FORMATS = ("ply",)
MESH_FORMATS = ("obj", "ply", "glb")
LIGHT_FORMATS = ("hdr", "exr")


def scene_to_ply(scene: GaussianScene) -> GaussianPly:
    """The standard 3DGS PLY record of a scene (full SH degree, raw parameters); a relightable scene adds its
    material and normals (see ``recon.export.gaussian_ply``)."""
    from recon.scenes.gaussians_pbr import PBRGaussianScene

    material = normals = None
    if isinstance(scene, PBRGaussianScene):
        material = torch.cat([scene.base_color, scene.roughness_metallic], -1).detach().cpu().clamp(0, 1)
        from recon.renderers.gaussians.pbr import outward_normals

        normals = outward_normals(scene).detach().cpu()
    return GaussianPly(means=scene.means.detach().cpu(), quats=scene.quats.detach().cpu(),
                       log_scales=scene.log_scales.detach().cpu(), opacity_logits=scene.opacity_logits.detach().cpu(),
                       sh_dc=scene.sh_dc.detach().cpu()[:, 0], sh_rest=scene.sh_rest.detach().cpu(),
                       material=material, normals=normals)


def scene_from_ply(ply: GaussianPly) -> GaussianScene:
    """A GaussianScene from a standard 3DGS PLY record (a relightable PBRGaussianScene when the record has a
    material); the active SH degree is the file's degree."""
    k = ply.sh_rest.shape[1] + 1
    degree = {1: 0, 4: 1, 9: 2, 16: 3}[k]
    args = (ply.means, ply.quats, ply.log_scales, ply.opacity_logits, ply.sh_dc[:, None, :], ply.sh_rest)
    if ply.material is not None:
        from recon.scenes.gaussians_pbr import PBRGaussianScene

        return PBRGaussianScene(*args, max_sh_degree=degree, base_color=ply.material[:, :3],
                                roughness_metallic=ply.material[:, 3:])
    return GaussianScene(*args, max_sh_degree=degree)


def export_scene(scene, fmt: str, path: Path) -> Path:
    """Write ``scene`` as ``fmt`` to ``path`` atomically (a MeshScene as obj / ply / glb, see ``mesh_io``; a
    LitScene's geometry likewise, and its light as ``hdr`` / ``exr``: the equirectangular linear map with any
    rotation baked in, in the dataset's world frame)."""
    from recon.scenes.lit import LitScene

    if isinstance(scene, LitScene):
        if fmt in LIGHT_FORMATS:
            from recon.data.io import write_exr, write_hdr

            path = Path(path)
            (write_hdr if fmt == "hdr" else write_exr)(path, scene.light.baked().detach().cpu().numpy())
            return path
        scene = scene.geometry
    elif fmt in LIGHT_FORMATS:
        raise ValueError(f"export format {fmt!r} writes a light; this {type(scene).__name__} has none "
                         "(export a run of a PBR method such as mesh-pbr)")
    if isinstance(scene, MeshScene):
        if fmt not in MESH_FORMATS:
            raise ValueError(f"export format must be one of {list(MESH_FORMATS)} for a mesh scene, got {fmt!r}")
        from recon.export.mesh_io import save_mesh

        return save_mesh(scene, path, fmt)
    if fmt not in FORMATS:
        raise ValueError(f"export format must be one of {list(FORMATS)} for a Gaussian scene, got {fmt!r}")
    if not isinstance(scene, GaussianScene):
        raise TypeError(f"cannot export a {type(scene).__name__} as {fmt}")
    path = Path(path)
    write_gaussian_ply(path, scene_to_ply(scene))
    return path


def load_scene_file(path: Path):
    """Load a scene file: a 3DGS PLY (``.ply`` with Gaussian properties) as a GaussianScene; ``.obj`` / ``.glb`` /
    ``.gltf``, or a ``.ply`` with faces and without ``f_dc_0``, as a MeshScene; a field's ``.pt`` (``exports/
    field.pt`` of a tri-plane or SDF run) as that field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"scene file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".pt":
        from recon.scenes.fields import load_field_file

        return load_field_file(path)
    if suffix in (".obj", ".glb", ".gltf") or (suffix == ".ply" and _ply_is_mesh(path)):
        from recon.export.mesh_io import load_mesh

        return load_mesh(path)
    if suffix != ".ply":
        raise ValueError(f"{path}: unsupported scene file type {path.suffix!r}; expected a 3DGS .ply, a mesh "
                         ".obj / .ply / .glb / .gltf or a field .pt")
    return scene_from_ply(read_gaussian_ply(path))


def _ply_is_mesh(path: Path) -> bool:
    """A PLY header with a non-empty ``face`` element and no ``f_dc_0`` property (3DGS PLYs have no faces)."""
    with open(path, "rb") as f:
        head = f.read(65536)
    end = head.find(b"end_header")
    lines = head[: end if end >= 0 else len(head)].decode("ascii", errors="replace").splitlines()
    tokens = [line.split() for line in lines]
    has_faces = any(t[:2] == ["element", "face"] and len(t) > 2 and t[2] != "0" for t in tokens)
    return has_faces and not any(t[:1] == ["property"] and t[-1:] == ["f_dc_0"] for t in tokens)
