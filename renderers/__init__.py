"""recon.renderers: one differentiable ``render(scene, cameras, settings)`` entry for every representation.

Backends register per scene type (see :func:`register_renderer`); ``settings.backend = "auto"`` picks the
fastest implementation available for the scene's device.
"""

from recon.renderers.interface import (
    FieldSettings,
    GaussianSettings,
    MeshSettings,
    RenderOutput,
    RenderSettings,
    ShadingSettings,
    register_renderer,
    render,
)

__all__ = ["FieldSettings", "GaussianSettings", "MeshSettings", "RenderOutput", "RenderSettings", "ShadingSettings",
           "register_renderer", "render"]
