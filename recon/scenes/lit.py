"""A relightable scene: geometry with a PBR material, plus the environment light that illuminates it.

``render(LitScene(geometry, light), cameras, settings)`` shades the geometry's G-buffer with the shared shading
layer (:mod:`recon.shading`) under ``light``; relighting is ``scene.with_light(other)`` -- nothing else changes.
The geometry keeps its own renderer for everything but the shading (rasterization, coverage, antialiasing), so
one ``render()`` entry serves every representation (DESIGN.md section 4). Today's geometry: a
:class:`~recon.scenes.mesh.MeshScene` (its glTF metallic-roughness material is the BRDF input).
"""

from __future__ import annotations

import json

from torch import nn

__all__ = ["LitScene", "has_material"]

KIND = "lit"
VERSION = 1


class LitScene(nn.Module):
    """``geometry`` (a scene with a PBR material) lit by ``light`` (:class:`~recon.shading.envmap.EnvLight`).

    Both are submodules, so ``parameters()`` and ``state_dict()`` cover them; :meth:`param_groups` merges their
    groups (the light's as ``"light"``).
    """

    def __init__(self, geometry: nn.Module, light: nn.Module):
        super().__init__()
        from recon.shading.envmap import EnvLight

        if not isinstance(light, EnvLight):
            raise TypeError(f"LitScene.light must be a recon.shading.EnvLight, got {type(light).__name__}")
        if not has_material(geometry):
            raise ValueError(f"LitScene.geometry ({type(geometry).__name__}) has no PBR material to shade")
        self.geometry = geometry
        self.light = light

    def with_light(self, light: nn.Module) -> LitScene:
        """The same geometry (shared, not copied) under another light."""
        return LitScene(self.geometry, light)

    def bounds(self):
        return self.geometry.bounds()

    def param_groups(self) -> dict[str, nn.Parameter]:
        groups = dict(self.geometry.param_groups())
        if self.light.log_radiance.requires_grad:
            groups["light"] = self.light.log_radiance
        return groups

    def to_state(self) -> dict:
        """``{"header", "geometry": geometry state, "light": light state}`` (tensors only; loads with
        ``torch.load(weights_only=True)``)."""
        return {"header": json.dumps({"kind": KIND, "version": VERSION}), "geometry": self.geometry.to_state(),
                "light": self.light.to_state()}

    @classmethod
    def from_state(cls, state: dict, source: str = "<state>") -> LitScene:
        """Inverse of :meth:`to_state`; ``ValueError`` naming ``source`` for a malformed state."""
        from recon.scenes.mesh import MeshScene
        from recon.shading.envmap import EnvLight

        try:
            header = json.loads(state["header"])
            geometry, light = state["geometry"], state["light"]
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: not a recon lit scene state ({type(err).__name__}: {err})") from err
        if header.get("kind") != KIND:
            raise ValueError(f"{source}: scene kind is {header.get('kind')!r}, expected {KIND!r}")
        if int(header.get("version", 0)) > VERSION:
            raise ValueError(f"{source}: lit scene version {header.get('version')} is newer than supported {VERSION}")
        from recon.scenes.gaussians_pbr import KIND as GAUSSIANS_PBR
        from recon.scenes.gaussians_pbr import PBRGaussianScene

        try:
            kind = json.loads(geometry["header"]).get("kind")
        except (KeyError, TypeError, ValueError):
            kind = None
        geo = (PBRGaussianScene.from_state(geometry, source=source) if kind == GAUSSIANS_PBR
               else MeshScene.from_state(geometry, source=source))
        return cls(geo, EnvLight.from_state(light, source=source))


def has_material(scene) -> bool:
    """Whether ``scene`` carries a PBR material the shading layer can use (meshes: always, since a glTF
    material's factors define one; the renderer reads textures, ``COLOR_0`` and factors as glTF does)."""
    from recon.scenes.gaussians_pbr import PBRGaussianScene
    from recon.scenes.mesh import MeshScene

    return isinstance(scene, (MeshScene, PBRGaussianScene))
