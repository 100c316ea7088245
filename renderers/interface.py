"""The renderer interface shared by all scene representations (DESIGN.md section 4)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

from recon.cameras import Cameras

Channel = Literal["rgb", "alpha", "depth", "normal", "albedo", "roughness", "metallic", "shading"]


@dataclass(frozen=True)
class GaussianSettings:
    """Gaussian-specific render settings."""

    sh_degree: int | None = None
    """SH degree to evaluate (None: the scene's active degree)."""
    near: float = 0.01
    """Gaussians closer than this camera-space z are culled."""
    eps2d: float = 0.3
    """Isotropic dilation (pixels^2) added to every projected 2D covariance, as in 3DGS."""
    tile_size: int = 16
    """Tile edge in pixels for binning."""
    method: Literal["raster", "raycast"] = "raster"
    """"raster": 3DGS tile rasterization (pinhole cameras only); "raycast": the Gaussian ray caster
    (``recon.renderers.gaussians.raycast``: exact 3D evaluation along each ray, any camera model including
    fisheye and OpenCV distortion, slower). Both honour ``eps2d`` (the ray caster as the equivalent 3D
    dilation at each Gaussian's distance)."""
    raycast_order: Literal["center", "hit"] = "center"
    """Ray casting: composite in order of the Gaussians' centers along the ray (the rasterizer's order, so a
    rasterization-trained scene looks the same) or of their maximum-response points (3DGRT's)."""


@dataclass(frozen=True)
class MeshSettings:
    """Mesh-specific render settings."""

    shading: Literal["auto", "unlit", "headlight"] = "auto"
    """"unlit": the base color (texture, vertex colors or factor) as is -- what reconstruction fits;
    "headlight": Lambertian shading by a light at the camera plus ambient, for assets without baked lighting;
    "auto": unlit for meshes with a texture or vertex colors, headlight for bare geometry (default gray)."""
    near: float | None = None
    """Near clip plane (camera-space z); None: from the scene bounds."""
    far: float | None = None
    """Far clip plane; None: from the scene bounds."""
    antialias: bool = True
    """Analytic silhouette antialiasing (also what gives vertex positions gradients from coverage)."""
    texture_filter: Literal["auto", "nearest", "linear", "linear-mipmap-linear"] = "auto"
    """Texture filter ("auto": trilinear mip-mapping)."""


@dataclass(frozen=True)
class ShadingSettings:
    """How a relightable scene (:class:`recon.scenes.lit.LitScene`: geometry + material + light) is shaded.

    Plain values only: the light itself travels with the scene, so relighting swaps the scene's light and keeps
    these settings. See ``docs/inverse_rendering.md`` for the integrators.
    """

    integrator: Literal["splitsum", "mc"] = "splitsum"
    """"splitsum": prefiltered environment lighting (fast, differentiable w.r.t. the light; unshadowed, except
    relightable Gaussians, which bake their self-shadowing per Gaussian, see ``shadows``);
    "mc": Monte Carlo with multiple importance sampling of the light and the BRDF, shadow rays through the
    scene's ray caster (accurate; relighting and evaluation)."""
    spp: int = 64
    """Monte Carlo: samples per pixel of each strategy (light and BRDF), so 2 spp rays per pixel."""
    seed: int = 0
    """Monte Carlo: random seed (a fixed seed gives the same image every call)."""
    shadows: bool = True
    """Monte Carlo: trace shadow rays (self-occlusion of the environment). Split-sum on relightable Gaussians:
    shade with their baked diffuse transfer (:func:`recon.renderers.gaussians.pbr.bake_transfer`)."""
    supersample: int = 1
    """Shade an N x N grid of sub-pixel samples per pixel and resample them with a Gaussian pixel filter
    (stddev 0.5 px, as Mitsuba's default), which anti-aliases silhouettes, texture and shading edges the way a
    path tracer does; costs N^2. G-buffer channels stay pixel-center values."""
    indirect: bool = False
    """Monte Carlo: add one bounce of indirect light (BRDF-sampled rays that hit the scene pick up the direct
    light reflected there; needs ``shadows``). The bounced radiance carries no gradient."""


@dataclass(frozen=True)
class FieldSettings:
    """Field-specific render settings (tri-plane fields, neural SDFs)."""

    method: Literal["volume", "sphere"] = "volume"
    """"volume": volume rendering (what training optimizes); "sphere": sphere tracing of an SDF's zero set
    (exact surface hits and normals, opaque; SDFs only)."""


@dataclass(frozen=True)
class RenderSettings:
    """How to render. Frozen: a new feature adds a field here, not a positional argument."""

    background: tuple[float, float, float] | torch.Tensor | None = None
    """Linear RGB background ``[3]`` composited behind the scene; None means black."""
    channels: tuple[Channel, ...] = ("rgb", "alpha", "depth")
    """Which outputs to produce. "shading" (physically based shading only) is the G-buffer's demodulated
    shading: the linear radiance the pixel would have with a base color of 1 (roughness and metallic kept)."""
    backend: str = "auto"
    """Implementation: "auto", or a backend name of the scene's family ("torch", "cpu", "gsplat", ...)."""
    gaussians: GaussianSettings = field(default_factory=GaussianSettings)
    mesh: MeshSettings = field(default_factory=MeshSettings)
    shading: ShadingSettings = field(default_factory=ShadingSettings)
    fields: FieldSettings = field(default_factory=FieldSettings)


@dataclass
class RenderOutput:
    """Rendered images for ``C`` cameras, all NHWC float32.

    rgb ``[C, H, W, 3]`` composited over the background, in the encoding of the dataset images (display /
    sRGB values: what PSNR compares; mesh materials are linear and encoded by the mesh renderer); alpha ``[C, H, W, 1]`` coverage;
    depth ``[C, H, W, 1]`` expected camera-space z of the visible surface (sum of w_i z_i divided by alpha,
    0 where alpha is 0); normal ``[C, H, W, 3]`` world-space (when the representation has one);
    gbuffer: named material channels; aux: backend extras typed per family (e.g. the 2D means the
    Gaussian densification reads, see ``recon.renderers.gaussians.GaussianAux``).
    """

    rgb: torch.Tensor | None = None
    alpha: torch.Tensor | None = None
    depth: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    gbuffer: dict[str, torch.Tensor] = field(default_factory=dict)
    aux: object | None = None


RenderFn = Callable[[object, Cameras, RenderSettings], RenderOutput]
_REGISTRY: dict[type, RenderFn] = {}


def register_renderer(scene_type: type) -> Callable[[RenderFn], RenderFn]:
    """Decorator: register ``fn(scene, cameras, settings) -> RenderOutput`` for ``scene_type``."""

    def deco(fn: RenderFn) -> RenderFn:
        _REGISTRY[scene_type] = fn
        return fn

    return deco


def render(scene, cameras: Cameras, settings: RenderSettings | None = None) -> RenderOutput:
    """Render ``scene`` from every camera in ``cameras``. Differentiable w.r.t. the scene's parameters.

    Raises ``TypeError`` for a scene type no renderer is registered for.
    """
    settings = settings or RenderSettings()
    if not isinstance(cameras, Cameras):
        raise TypeError(f"cameras must be recon.cameras.Cameras, got {type(cameras).__name__}")
    # Importing the families registers them; done lazily so `import recon.renderers` stays light.
    import recon.renderers.gaussians  # noqa: F401
    import recon.renderers.lit  # noqa: F401
    import recon.renderers.mesh  # noqa: F401
    import recon.renderers.volume.field  # noqa: F401
    import recon.renderers.volume.sdf  # noqa: F401

    for klass in type(scene).__mro__:
        if klass in _REGISTRY:
            return _REGISTRY[klass](scene, cameras, settings)
    raise TypeError(f"no renderer registered for scene type {type(scene).__name__}; "
                    f"known: {sorted(k.__name__ for k in _REGISTRY)}")
