"""Training configs: plain dataclasses whose field docstrings become the CLI help (tyro), YAML presets, and
range validation that names the offending field."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

SCHEMA_VERSION = 3
# Run configs are saved with every field. An older config predates the fields below; when it lacks them it gets
# the behaviour it was trained with, not today's defaults (so `recon eval` / `--resume` of an old run stay what
# they were). Keyed by the last schema without the fields.
# A config of schema v gets the entries of every key >= v.
_SCHEMA2_PBR = {"optim": {"albedo_zero_shrink": 0.0, "lambda_albedo_normal": 0.0}}
_OLD_DEFAULTS = {
    1: {"mesh-pbr": {"model": {"init_albedo": "stage1"},
                     "optim": {"interreflection": False, "light_warmup": 0, "roughness_search": 0}}},
    2: {"mesh-pbr": _SCHEMA2_PBR, "sdf-pbr": _SCHEMA2_PBR},
}


@dataclass
class GaussianModelConfig:
    """How the Gaussian scene is initialized."""

    sh_degree: int = 3
    """Maximum spherical-harmonics degree (0..3)."""
    init: Literal["auto", "points", "random"] = "auto"
    """Initial points: the dataset's point cloud ("points"), random in the scene bounds ("random"), or points
    when the dataset has them ("auto")."""
    num_random: int = 20000
    """Number of random initial Gaussians (init = random)."""
    random_extent: float = 0.35
    """Half-size of the random-init cube as a fraction of the median camera distance to the scene center."""
    carve: bool = True
    """Drop random initial points outside the visual hull of the training alpha masks (RGBA datasets only)."""
    init_opacity: float = 0.1
    """Initial opacity of every Gaussian, in (0, 1)."""


@dataclass
class OptimConfig:
    """Per-parameter Adam learning rates and the loss (the 3DGS recipe)."""

    lr_means: float = 1.6e-4
    """Initial position learning rate, multiplied by the scene extent."""
    lr_means_final: float = 1.6e-6
    """Final position learning rate (exponential decay over max_steps), multiplied by the scene extent."""
    lr_sh_dc: float = 2.5e-3
    """Learning rate of the degree-0 SH coefficients."""
    lr_sh_rest: float = 1.25e-4
    """Learning rate of the higher SH coefficients."""
    lr_opacity: float = 0.05
    """Learning rate of the opacity logits."""
    lr_scales: float = 5e-3
    """Learning rate of the log-scales."""
    lr_quats: float = 1e-3
    """Learning rate of the rotations."""
    lambda_dssim: float = 0.2
    """Weight of the D-SSIM term: loss = (1 - l) L1 + l (1 - SSIM)."""
    sh_degree_interval: int = 1000
    """Raise the active SH degree by one every this many steps."""


@dataclass
class DensifyConfig:
    """Adaptive density control (clone / split / prune, opacity reset) as in 3DGS."""

    start: int = 500
    """First step of densification."""
    stop: int = 15000
    """Last step of densification; clamped to 60% of max_steps so short runs end with a settled scene."""
    interval: int = 100
    """Densify every this many steps."""
    grad_threshold: float = 2e-4
    """Mean view-space (NDC) gradient norm of a Gaussian's 2D center above which it is cloned or split."""
    percent_dense: float = 0.01
    """Gaussians larger than this fraction of the scene extent are split, smaller ones cloned."""
    opacity_reset_interval: int = 3000
    """Reset all opacities to at most 0.01 every this many steps (0 disables)."""
    prune_opacity: float = 0.005
    """Prune Gaussians whose opacity falls below this."""
    max_screen_size: int = 20
    """After the first opacity reset, prune Gaussians whose screen radius exceeds this (pixels)."""
    max_gaussians: int = 1_000_000
    """Hard cap on the number of Gaussians (densification stops growing past it)."""


@dataclass
class TrainConfigBase:
    """Options every training method shares (data, run directory, schedule, logging, device)."""

    data: Path = Path("data/sample")
    """Dataset folder (Blender, instant-ngp/nerfstudio transforms.json, or COLMAP); default: the embedded
    sample scene."""
    data_format: Literal["auto", "blender", "ngp", "colmap"] = "auto"
    """Dataset format; "auto" detects it from the folder."""
    downscale: int = 1
    """Downscale images by this integer factor at load."""
    test_every: int = 8
    """Hold out every N-th image for testing when the dataset has no test split."""
    skip_missing_images: bool = False
    """Drop frames whose image file is missing instead of failing."""
    distortion: Literal["undistort", "keep"] = "undistort"
    """Lens distortion of instant-ngp / COLMAP cameras: "undistort" the images at load to pinhole cameras with
    the same K (every renderer works), or "keep" the images and the distorted camera models (OpenCV, fisheye),
    which only ray casting renders (``recon train gaussians --render-method raycast``)."""
    background: Literal["auto", "white", "black"] = "auto"
    """Evaluation background for RGBA datasets ("auto": the dataset's, white for Blender)."""
    alpha_mode: Literal["auto", "coverage", "mask"] = "auto"
    """What image alpha means: "coverage" (object over a background, composited; Blender RGBA), "mask"
    (pixels with alpha < 0.5 are invalid, e.g. outside an undistorted photo, and left out of the loss and the
    metrics); "auto": coverage for Blender datasets, mask for instant-ngp and COLMAP photos."""
    random_background: bool = True
    """Composite training images over a random background each step (teaches transparency)."""
    output: Path | None = None
    """Run directory (default: outputs/<method>-<dataset>-<time>)."""
    max_steps: int = 3000
    """Number of optimization steps."""
    eval_every: int = 0
    """Evaluate on the test split every N steps (0: only at the end)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every N steps (and on SIGINT/SIGTERM and at the end)."""
    log_every: int = 50
    """Append a line to metrics.jsonl every N steps."""
    seed: int = 0
    """Random seed."""
    device: str = "auto"
    """Torch device ("auto": cuda when available, else cpu)."""
    threads: int = 0
    """CPU threads for torch and the kernels (0: torch's default)."""
    progress: bool = True
    """Show a progress bar."""


@dataclass
class GaussianTrainConfig(TrainConfigBase):
    """Train 3D Gaussian splatting from posed images."""

    backend: Literal["auto", "torch", "cpu", "gsplat"] = "auto"
    """Renderer backend ("gsplat" rasterizes only)."""
    render_method: Literal["raster", "raycast"] = "raster"
    """How training and evaluation views are rendered: "raster" (3DGS tile rasterization, pinhole cameras) or
    "raycast" (the Gaussian ray caster: any camera model, e.g. fisheye without undistorting; slower)."""
    model: GaussianModelConfig = field(default_factory=GaussianModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    densify: DensifyConfig = field(default_factory=DensifyConfig)


@dataclass
class MeshModelConfig:
    """The iso-surface grid, its initialization and the texture of the refined mesh."""

    grid_resolution: int = 96
    """Cells per axis of the generated tetrahedral grid (6 tetrahedra per cell)."""
    init: Literal["auto", "visual_hull", "sphere"] = "auto"
    """Initial SDF: the visual hull of the training alpha masks ("visual_hull", RGBA datasets), a sphere
    filling half the grid ("sphere"), or the visual hull when the dataset has coverage alpha ("auto")."""
    bounds_margin: float = 0.1
    """Grid box = the visual hull's bounding box grown by this fraction of its size on every side."""
    texture_size: int = 1024
    """Edge of the square base-color texture of the refinement stage (pixels)."""
    min_component_faces: int = 200
    """Connected components with fewer faces are dropped when the mesh is extracted (floaters)."""
    init_mesh: str | None = None
    """Start the refinement stage from this mesh file (OBJ / PLY / GLB; its geometry and vertex colors) instead
    of an iso-surface; needs `optim.geometry_steps 0` (nvdiffrec's base mesh). With a synthetic set's
    `gt_asset.glb` and `optim.lr_vertices 0` it scores material and light recovery on exact geometry."""
    cull_hidden: bool = True
    """Before the refinement stage, drop the connected regions of 20 or more faces that no training camera sees
    (rasterized at twice the image resolution): the walls of pockets inside the object, which the photometric
    loss never reaches and which only add interior surface (docs/mesh.md)."""
    smooth_iterations: int = 0
    """Taubin smoothing iterations applied to the extracted mesh before the refinement stage (removes the
    marching-tetrahedra staircase, which shading would read as bumps)."""
    geometry: Literal["tetgrid", "sdf"] = "tetgrid"
    """The first (topology) stage: "tetgrid", the DMTet-style SDF on a tetrahedral grid rendered as a mesh;
    "sdf", a neural SDF trained by NeuS volume rendering (exactly `recon train sdf`, options in the `field`
    section) whose zero set is extracted by marching cubes at `field_resolution` and cleaned as
    `recon export` does."""
    field_resolution: int = 160
    """Marching-cubes grid (per side of the field's box) of the zero set extracted after a `geometry sdf` stage
    (160: ~120k faces on the synthetic sets, 256: ~300k and twice the refinement's step time)."""


@dataclass
class MeshOptimConfig:
    """The two stages: iso-surface (topology) optimization, then textured refinement of the extracted mesh."""

    geometry_steps: int = 600
    """Steps of the iso-surface stage; the remaining max_steps refine the extracted, UV-mapped mesh."""
    views_per_step: int = 2
    """Training views rendered per step."""
    lr_sdf: float = 2e-3
    """Adam learning rate of the grid SDF values (world units)."""
    lr_deform: float = 1e-2
    """Adam learning rate of the grid deformation parameters."""
    lr_color: float = 2e-2
    """Adam learning rate of the grid colors (iso-surface stage)."""
    lr_vertices: float = 2e-5
    """Adam learning rate of the vertex positions in the refinement stage, times the scene size."""
    lr_texture: float = 2e-2
    """Adam learning rate of the texels."""
    lr_final_fraction: float = 0.1
    """The refinement stage's learning rates decay exponentially to this fraction of their start at max_steps."""
    lambda_mask: float = 1.0
    """Weight of the silhouette loss: mean squared error of the antialiased alpha (coverage datasets)."""
    lambda_sdf: float = 0.02
    """Weight of the SDF sign regularizer on surface-crossing grid edges (suppresses floaters)."""
    lambda_laplacian: float = 0.05
    """Weight of the uniform Laplacian smoothness of the vertex displacements (refinement stage)."""
    lambda_normal: float = 0.01
    """Weight of the normal-consistency term (1 - cos between adjacent face normals, refinement stage)."""




@dataclass
class GaussianPBRConfig:
    """The relightable stage of `gaussians-pbr` and the normal consistency of both stages."""

    geometry_steps: int = 3000
    """Steps of the first stage: today's 3DGS recipe (radiance, densification) plus the depth-normal
    consistency; the material stage follows until max_steps."""
    lambda_normal: float = 0.05
    """Weight of the depth-normal consistency (1 - cos between the rendered normal, each Gaussian's shortest
    axis, and the normal of the rendered depth), as in 2DGS / GS-IR, so that normals are trustworthy before
    the materials are fitted."""
    normal_from: int = 500
    """First step of the depth-normal consistency (the Gaussians are blobs before)."""
    lambda_flat: float = 1.0
    """Weight of the flatness prior: the mean ratio of each Gaussian's shortest to its middle axis (from
    normal_from on), so that the shortest axis, the normal, is well defined."""
    init_light: float = 1.0
    """Initial constant radiance of the learned light (the initial base color is divided by it)."""
    light_height: int = 32
    """Rows of the learned equirectangular environment map (columns: 2x)."""
    init_roughness: float = 0.6
    """Initial roughness of every Gaussian."""
    init_metallic: float = 0.05
    """Initial metallic of every Gaussian."""
    lr_base_color: float = 5e-3
    """Adam learning rate of the base colors."""
    lr_material: float = 5e-3
    """Adam learning rate of roughness-metallic."""
    lr_light: float = 3e-2
    """Adam learning rate of the light's log-radiance texels."""
    geometry_lr_scale: float = 0.0
    """Factor on the geometry's learning rates (means, rotations, scales, opacities) in the material stage;
    0 freezes the stage-1 geometry and its normals."""
    light_warmup: int = 200
    """First material-stage steps in which only the light learns (the base colors start as the mean stage-1
    color and would otherwise absorb the shading before the light moves; see docs/inverse_rendering.md)."""
    lambda_light_white: float = 0.01
    """Weight of the neutral-white light prior (as mesh-pbr)."""
    lambda_metallic: float = 0.01
    """Weight of the prior pulling metallic towards 0."""
    lambda_albedo_smooth: float = 0.0
    """Weight of the edge-aware total variation of the rendered base color (R3DG / GS-IR): per-Gaussian
    materials of overlapping Gaussians are otherwise free to trade off against each other."""
    lambda_roughness_smooth: float = 0.0
    """Weight of the edge-aware total variation of the rendered roughness."""
    shadow_samples: int = 32
    """Self-shadowing in the split-sum steps: a per-Gaussian diffuse transfer from this many shadow rays per
    Gaussian through the Gaussian ray caster's BVH (R3DG's baked visibility); evaluation, render and relight
    shade with the same bake (the scene keeps the count). 0: unshadowed split-sum."""
    transfer_every: int = 200
    """Re-bake the transfer every this-many steps (Gaussians move, split and die)."""


@dataclass
class GaussianPBRTrainConfig(GaussianTrainConfig):
    """Relightable 3D Gaussians: geometry, per-Gaussian base color, roughness, metallic and normal, and the
    environment light, from photos under one unknown environment."""

    max_steps: int = 5000
    """Number of optimization steps (both stages)."""
    relight_spp: int = 8
    """Monte Carlo samples per sub-pixel and strategy of the relit test views the final evaluation scores."""
    eval_supersample: int = 2
    """Evaluation renders shade N x N sub-pixel samples under the datasets' Gaussian pixel filter."""
    pbr: GaussianPBRConfig = field(default_factory=GaussianPBRConfig)


@dataclass
class TriPlaneModelConfig:
    """The tri-plane field (recon/scenes/triplane.py)."""

    resolutions: tuple[int, ...] = (64, 128, 256)
    """Plane edge (texels) of each level."""
    channels: int = 16
    """Features per plane and level."""
    hidden: int = 64
    """Width of the density and color MLPs."""
    samples: int = 64
    """Samples per ray across the field's box (equal intervals; no occupancy grid yet)."""
    bounds_margin: float = 0.05
    """Margin added on every side of the object's box (a fraction of its size)."""


@dataclass
class TriPlaneOptimConfig:
    """Adam on the planes and the MLPs, learning rates decayed exponentially to 10 % at the last step."""

    rays_per_step: int = 2048
    """Rays per step, drawn from 8 random training views."""
    lr_planes: float = 0.02
    lr_mlp: float = 0.002
    lambda_tv: float = 1e-4
    """Total variation of the planes (K-Planes' spatial smoothness)."""


@dataclass
class TriPlaneTrainConfig(TrainConfigBase):
    """Train a tri-plane radiance field (volume rendering) from posed images."""

    max_steps: int = 3000
    """Number of optimization steps."""
    backend: Literal["auto", "torch", "cpu"] = "auto"
    """Volume compositing backend."""
    model: TriPlaneModelConfig = field(default_factory=TriPlaneModelConfig)
    optim: TriPlaneOptimConfig = field(default_factory=TriPlaneOptimConfig)


@dataclass
class SDFModelConfig:
    """The neural SDF (recon/scenes/sdf.py)."""

    resolutions: tuple[int, ...] = (32, 64, 128)
    """Plane edge (texels) of each level of the tri-plane encoding."""
    channels: int = 8
    """Features per plane and level."""
    hidden: int = 64
    """Width of the SDF and color MLPs."""
    samples: int = 64
    """Samples per ray across the field's box (equal intervals)."""
    bounds_margin: float = 0.1
    """Margin added on every side of the object's box (a fraction of its size)."""
    init_radius: float = 0.5
    """Radius of the initial sphere, as a fraction of the box's half extent."""
    occupancy_resolution: int = 0
    """Cells per side of the occupancy grid that skips empty space once it starts (0: no grid; e.g. 64)."""
    grid_samples: int = 256
    """Candidate intervals per ray once the grid is on (only those in occupied cells are evaluated)."""
    background: Literal["auto", "field", "none"] = "auto"
    """What lies outside the box: `field`, a tri-plane radiance field over mip-NeRF 360's contracted space
    (recon/scenes/background.py), composited with the box's samples in depth order (NeRF++ / NeuS's outside
    model) for photos of a scene; `none`, nothing (the images' background color); `auto`: `field` unless the
    images carry coverage alpha (object datasets, which the mask loss fits instead)."""
    background_resolutions: tuple[int, ...] = (64, 128, 256)
    """Plane edge (texels) of each level of the background field."""
    background_channels: int = 8
    """Features per plane and level of the background field."""
    background_samples: int = 32
    """Intervals per ray through the background (linear near it, uniform in inverse distance far)."""


@dataclass
class SDFOptimConfig:
    """Adam on the planes and the MLPs (with NeuS's inverse deviation), linear warm-up then cosine decay."""

    rays_per_step: int = 1024
    """Rays per step, drawn from 8 random training views."""
    lr_planes: float = 0.01
    lr_mlp: float = 0.002
    lambda_eikonal: float = 0.1
    """Weight of the eikonal loss (|grad f| - 1)^2 at the ray samples."""
    lambda_mask: float = 0.1
    """Weight of the BCE between opacity and the images' coverage alpha (datasets with coverage alpha)."""
    lambda_curvature: float = 0.0
    """Weight of the curvature loss (PermutoSDF's, with analytic normals): 1 - n(x).n(x + eps t) for a random
    tangent t, weighted by the samples' rendering weights (0: off)."""
    curvature_samples: int = 2048
    """Samples per step the curvature loss is taken at (drawn among those with rendering weight > 1e-4)."""
    curvature_step: float = 1.0
    """eps of the curvature loss, in texels of the finest plane along the box's longest side."""
    anneal_fraction: float = 0.1
    """Fraction of the steps over which NeuS's cosine is annealed to the exact |cos|."""
    grid_start: float = 0.1
    """Fraction of the steps after which the occupancy grid is built (the uniform sampler before)."""
    grid_every: int = 16
    """Steps between occupancy-grid updates."""


@dataclass
class SDFTrainConfig(TrainConfigBase):
    """Train a neural SDF (NeuS volume rendering) from posed images."""

    max_steps: int = 3000
    """Number of optimization steps."""
    backend: Literal["auto", "torch", "cpu"] = "auto"
    """Volume compositing backend."""
    model: SDFModelConfig = field(default_factory=SDFModelConfig)
    optim: SDFOptimConfig = field(default_factory=SDFOptimConfig)


@dataclass
class SDFStageConfig:
    """The neural SDF of a `model.geometry sdf` topology stage (as `recon train sdf`'s model and optim; its steps
    are `optim.geometry_steps`)."""

    model: SDFModelConfig = field(default_factory=SDFModelConfig)
    optim: SDFOptimConfig = field(default_factory=SDFOptimConfig)


@dataclass
class MeshTrainConfig(TrainConfigBase):
    """Reconstruct a textured triangle mesh from posed images (DMTet-style iso-surface, then texture)."""

    max_steps: int = 1500
    """Number of optimization steps (both stages)."""
    checkpoint_every: int = 500
    """Write a checkpoint every N steps (and on SIGINT/SIGTERM and at the end)."""
    backend: Literal["auto", "torch", "cpu", "nvdiffrast"] = "auto"
    """Mesh raster-op backend."""
    model: MeshModelConfig = field(default_factory=MeshModelConfig)
    optim: MeshOptimConfig = field(default_factory=MeshOptimConfig)
    field: SDFStageConfig = field(default_factory=SDFStageConfig)
    """The neural SDF of the topology stage when `model.geometry` is "sdf"."""


@dataclass
class MeshPBRModelConfig(MeshModelConfig):
    """The mesh-pbr scene: the mesh model plus the material textures and the learned environment light."""

    texture_size: int = 512
    """Edge of the square base-color and roughness-metallic textures of the material stage (pixels)."""
    smooth_iterations: int = 50
    """Taubin smoothing iterations applied to the extracted mesh before the material stage (shading reads the
    marching-tetrahedra staircase as bumps; docs/inverse_rendering.md has the bob_field ablation)."""
    light_height: int = 32
    """Rows of the learned equirectangular environment map (columns: 2x)."""
    init_light: float = 1.0
    """Initial constant radiance of the learned light (the initial base color is divided by it; albedo and light
    are recovered up to a common scale, which evaluation aligns)."""
    envmap: str | None = None
    """An `.hdr` / `.exr` environment map in the dataset's convention to start the light from instead of a
    constant (resampled to `light_height` rows); with `--optim.lr-light 0` it stays fixed (and the light warm-up
    is skipped): inverse rendering under a known light, e.g. a measured light probe (nvdiffrec's `envmap` with
    `learn_light` off). The initial base color is then divided by the map's mean luminance instead of
    `init_light`. Read when the material stage starts; `recon train` checks it first and stores it absolute."""
    init_albedo: Literal["constant", "stage1"] = "constant"
    """Initial base color of the material stage: `constant`, every texel the mean stage-1 color (divided by
    `init_light`), so the light first explains the shading (see `optim.light_warmup`); `stage1`, the stage-1
    colors themselves, which carry the training light's shading, so the light stays flat and the base color
    keeps the shading (armadillo_field, exact geometry: albedo 16.8 dB against 27+ with the true light)."""
    init_roughness: float = 0.6
    """Initial roughness of every texel."""
    init_metallic: float = 0.05
    """Initial metallic of every texel."""


@dataclass
class MeshPBROptimConfig(MeshOptimConfig):
    """Mesh optimization (as for `mesh`) plus the material and light of the PBR stage."""

    lambda_normal: float = 0.5
    """Weight of the normal-consistency term (1 - cos between adjacent face normals). Higher than for `mesh`:
    with shading in the loss, vertex offsets otherwise grow bumps that explain shading detail (bob_field normal
    error 19.8 deg at 0.01, 11.8 deg at 0.1)."""
    lambda_material_smooth: float = 0.5
    """Weight of the total variation of the roughness-metallic texture."""
    lr_material: float = 1e-2
    """Adam learning rate of the roughness-metallic texels."""
    lr_light: float = 3e-2
    """Adam learning rate of the light's log-radiance texels."""
    lambda_albedo_smooth: float = 0.02
    """Weight of the total variation of the base-color texture (nvdiffrec's kd smoothness, in texture space)."""
    albedo_zero_shrink: float = 1.0
    """Exact zeros in the base color: after every step, a base-color channel below `albedo_zero_below` times
    its texel's brightest channel shrinks by this fraction of the texture's current learning rate (a proximal
    L1 step on those values only). Adam's steps are at most about the learning rate, so at 1 such a channel
    stays only where the images ask for it step after step; one they are nearly indifferent to (under image
    noise and the shading's small biases, e.g. the blue of bob_field's orange body) reaches exactly 0, as the
    base colors of saturated materials have. Relative, so the unknown scale shared by base color and light
    does not matter and dark but neutral colors are left alone. 0: off."""
    albedo_zero_below: float = 0.02
    """Fraction of a texel's brightest base-color channel under which `albedo_zero_shrink` acts on its other
    channels."""
    lambda_albedo_normal: float = 0.0
    """Weight of the albedo-orientation prior: the part of the log base-color brightness (the channels' mean, at
    the covered pixels of each step's views) that band-3 spherical harmonics of the surface normal explain, as
    a mean square. A light wrong by a factor f(n) and a base color times f(n) render the same diffuse images;
    the prior hands that part to the light (recon.train.mesh_pbr.albedo_normal_correlation). 0: off."""
    light_warmup: int = 200
    """First steps of the material stage in which base color and roughness-metallic hold still while the light
    (and the vertices) learn: per-texel base colors adapt faster than a light can, and would otherwise absorb
    its shading before the light has moved. Skipped when `lr_light` is 0 (a known light, `model.envmap`)."""
    lambda_shading: float = 0.0
    """Weight of nvdiffrec-mc's monochrome shading regularizer: the luminance of the demodulated shading (the
    render with a base color of 1) should match the brightest channel of the image, compared as
    srgb(log(1 + x)) over the object; light and geometry explain the brightness, the base color the chroma."""
    lambda_light_white: float = 0.01
    """Weight of the neutral-white light prior: mean |L_c - mean_c L| / mean L over the map (nvdiffrec-mc);
    color goes to the base color rather than being baked into the light."""
    lambda_metallic: float = 0.01
    """Weight of a prior pulling metallic towards 0 (dielectric), the common case the image alone cannot
    separate from a tinted specular."""
    shadow_samples: int = 64
    """Self-shadowing in the split-sum steps: the per-vertex diffuse transfer (visibility times cosine in
    spherical harmonics, recon.shading.prt) from this many shadow rays per vertex through the mesh BVH, so
    shadows are explained by the geometry instead of painted into the base color; evaluation then uses the
    Monte Carlo integrator. 0: unshadowed split-sum."""
    interreflection: bool = True
    """With self-shadowing: one bounce of diffuse interreflection in the split-sum steps, from the same rays
    (those that hit the object carry back its direct light times its base color; recon.shading.prt.Bounce),
    the light a path tracer at depth 3 adds and that the base color otherwise absorbs in concave places;
    evaluation then uses the Monte Carlo integrator's indirect bounce."""
    roughness_search: int = 4
    """After the last step, refit the roughness as a whole under the Monte Carlo integrator: shift the
    roughness texture to each mean of `roughness_candidates` (then +-0.05 around the best), render this many
    training views at half resolution (images of 128 px and more) with the same samples
    (`roughness_search_spp`), keep the shift with the least L1. Split-sum
    hardly sees a dielectric's roughness (0.09 dB between 0.2 and 0.8 on armadillo_field's exact asset, and
    biased low), while Monte Carlo peaks at the truth. 0: off."""
    roughness_search_spp: int = 4
    """Samples per pixel and strategy of the roughness search renders."""
    roughness_candidates: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65, 0.8)
    """Mean roughness values the search tries first."""
    transfer_every: int = 200
    """Recompute the transfer every this-many steps (the vertices move)."""
    mc_steps: int = 0
    """The last this-many steps shade with the Monte Carlo integrator (shadow rays through the mesh BVH) instead
    of split-sum, so that self-shadowing is explained by the geometry rather than baked into the base color
    (nvdiffrec-mc); evaluation then uses it too. 0: split-sum throughout."""
    mc_spp: int = 4
    """Monte Carlo samples per pixel and strategy in the mc_steps (a new sample pattern every step)."""


@dataclass
class MeshPBRTrainConfig(MeshTrainConfig):
    """Inverse rendering of a textured mesh: geometry, base color, roughness, metallic and the environment light
    from photos under one unknown environment (split-sum shading while training)."""

    max_steps: int = 2000
    """Number of optimization steps (both stages)."""
    relight_spp: int = 8
    """Monte Carlo samples per sub-pixel and strategy of the relit test views that the final evaluation scores
    (datasets with a transforms_relight.json)."""
    eval_supersample: int = 2
    """Evaluation renders (novel views and relit views) shade N x N sub-pixel samples resampled with Mitsuba's
    Gaussian pixel filter, the pixel response of the synthetic sets' images (bob_field novel views: 29.0 dB at
    1 x 1 and 16 spp, 32.2 dB at 2 x 2 and 4 spp, the same cost). Training shades pixel centers."""
    model: MeshPBRModelConfig = field(default_factory=MeshPBRModelConfig)
    optim: MeshPBROptimConfig = field(default_factory=MeshPBROptimConfig)


@dataclass
class SDFPBRModelConfig(MeshPBRModelConfig):
    """The sdf-pbr scene: the mesh-pbr model whose topology comes from a neural SDF."""

    geometry: Literal["tetgrid", "sdf"] = "sdf"
    """The first (topology) stage (see `recon train mesh-pbr`); "sdf" here."""


@dataclass
class SDFPBROptimConfig(MeshPBROptimConfig):
    """mesh-pbr's optimization after an SDF stage of `geometry_steps`."""

    geometry_steps: int = 2000
    """Steps of the neural-SDF stage (NeuS volume rendering); the remaining max_steps are the material stage
    (1500 left armadillo_field's SDF at 28.6 dB, docs/inverse_rendering.md)."""
    lambda_albedo_normal: float = 0.5
    """Weight of the albedo-orientation prior (as for mesh-pbr, where it is off by default): at 0.5 the bench's
    albedo rises 15.45 -> 18.34 dB on armadillo_field and 23.60 -> 24.02 dB on bob_field, relighting
    21.63 -> 24.03 and 29.66 -> 30.15 dB (docs/inverse_rendering.md)."""


@dataclass
class SDFPBRTrainConfig(MeshPBRTrainConfig):
    """Inverse rendering with a neural SDF's geometry: a NeuS SDF fitted to the photos, its zero set extracted
    by marching cubes, then mesh-pbr's material stage (base color, roughness, metallic textures and the
    environment light) on that surface."""

    max_steps: int = 3200
    """Number of optimization steps (SDF stage, then material stage)."""
    model: SDFPBRModelConfig = field(default_factory=SDFPBRModelConfig)
    optim: SDFPBROptimConfig = field(default_factory=SDFPBROptimConfig)


METHODS: dict[str, type] = {"gaussians": GaussianTrainConfig, "mesh": MeshTrainConfig,
                            "mesh-pbr": MeshPBRTrainConfig, "gaussians-pbr": GaussianPBRTrainConfig,
                            "triplane": TriPlaneTrainConfig, "sdf": SDFTrainConfig,
                            "sdf-pbr": SDFPBRTrainConfig}

# (field path, predicate, what is expected)
_RULES: list[tuple[str, typing.Callable[[object], bool], str]] = [
    ("downscale", lambda v: v >= 1, "an integer >= 1"),
    ("test_every", lambda v: v >= 2, "an integer >= 2"),
    ("max_steps", lambda v: v >= 1, "an integer >= 1"),
    ("eval_every", lambda v: v >= 0, "an integer >= 0"),
    ("checkpoint_every", lambda v: v >= 1, "an integer >= 1"),
    ("log_every", lambda v: v >= 1, "an integer >= 1"),
    ("threads", lambda v: v >= 0, "an integer >= 0"),
    ("model.sh_degree", lambda v: 0 <= v <= 3, "an integer in 0..3"),
    ("model.num_random", lambda v: v >= 1, "an integer >= 1"),
    ("model.random_extent", lambda v: v > 0, "a number > 0"),
    ("model.init_opacity", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("optim.lambda_dssim", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("optim.sh_degree_interval", lambda v: v >= 1, "an integer >= 1"),
    ("densify.interval", lambda v: v >= 1, "an integer >= 1"),
    ("densify.grad_threshold", lambda v: v > 0, "a number > 0"),
    ("densify.percent_dense", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("densify.opacity_reset_interval", lambda v: v >= 0, "an integer >= 0"),
    ("densify.prune_opacity", lambda v: 0 <= v < 1, "a number in [0, 1)"),
    ("densify.max_gaussians", lambda v: v >= 1, "an integer >= 1"),
    ("model.grid_resolution", lambda v: 4 <= v <= 512, "an integer in 4..512"),
    ("model.bounds_margin", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("model.texture_size", lambda v: 8 <= v <= 8192, "an integer in 8..8192"),
    ("model.min_component_faces", lambda v: v >= 0, "an integer >= 0"),
    ("model.smooth_iterations", lambda v: 0 <= v <= 1000, "an integer in 0..1000"),
    ("optim.geometry_steps", lambda v: v >= 0, "an integer >= 0"),
    ("optim.views_per_step", lambda v: v >= 1, "an integer >= 1"),
    ("optim.lr_final_fraction", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    ("relight_spp", lambda v: v >= 1, "an integer >= 1"),
    ("model.resolutions", lambda v: len(v) >= 1 and all(2 <= r <= 2048 for r in v), "plane edges in 2..2048"),
    ("model.channels", lambda v: v >= 1, "an integer >= 1"),
    ("model.hidden", lambda v: v >= 1, "an integer >= 1"),
    ("model.samples", lambda v: v >= 1, "an integer >= 1"),
    ("model.background_samples", lambda v: v >= 1, "an integer >= 1"),
    ("model.background_channels", lambda v: v >= 1, "an integer >= 1"),
    ("model.background_resolutions", lambda v: len(v) >= 1 and all(r >= 2 for r in v),
     "a non-empty list of integers >= 2"),
    ("optim.rays_per_step", lambda v: v >= 8 and v % 8 == 0, "a multiple of 8 (rays from 8 views per step)"),
    ("optim.lr_planes", lambda v: v > 0, "a positive number"),
    ("optim.lr_mlp", lambda v: v > 0, "a positive number"),
    ("optim.lambda_tv", lambda v: v >= 0, "a number >= 0"),
    ("model.init_radius", lambda v: 0 < v < 1, "a number in (0, 1)"),
    ("optim.lambda_eikonal", lambda v: v >= 0, "a number >= 0"),
    ("optim.lambda_curvature", lambda v: v >= 0, "a number >= 0"),
    ("optim.curvature_samples", lambda v: v >= 1, "an integer >= 1"),
    ("optim.curvature_step", lambda v: v > 0, "a number > 0"),
    ("optim.lambda_mask", lambda v: v >= 0, "a number >= 0"),
    ("optim.anneal_fraction", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("model.occupancy_resolution", lambda v: v == 0 or 8 <= v <= 256, "0 (no grid) or an integer in 8..256"),
    ("model.grid_samples", lambda v: v >= 8, "an integer >= 8"),
    ("optim.grid_start", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("optim.grid_every", lambda v: v >= 1, "an integer >= 1"),
    ("pbr.geometry_steps", lambda v: v >= 0, "an integer >= 0"),
    ("pbr.init_light", lambda v: v > 0, "a number > 0"),
    ("pbr.light_height", lambda v: 4 <= v <= 1024, "an integer in 4..1024"),
    ("pbr.shadow_samples", lambda v: v >= 0, "an integer >= 0"),
    ("pbr.transfer_every", lambda v: v >= 1, "an integer >= 1"),
    ("eval_supersample", lambda v: 1 <= v <= 8, "an integer in 1..8"),
    ("optim.mc_steps", lambda v: v >= 0, "an integer >= 0"),
    ("optim.shadow_samples", lambda v: v >= 0, "an integer >= 0"),
    ("optim.transfer_every", lambda v: v >= 1, "an integer >= 1"),
    ("optim.mc_spp", lambda v: v >= 1, "an integer >= 1"),
    ("optim.light_warmup", lambda v: v >= 0, "an integer >= 0"),
    ("optim.albedo_zero_shrink", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("optim.albedo_zero_below", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
    ("optim.roughness_search", lambda v: v >= 0, "an integer >= 0"),
    ("optim.roughness_search_spp", lambda v: v >= 1, "an integer >= 1"),
    ("optim.roughness_candidates", lambda v: len(v) >= 1 and all(0 < x <= 1 for x in v),
     "a non-empty list of numbers in (0, 1]"),
    ("model.light_height", lambda v: 4 <= v <= 1024, "an integer in 4..1024"),
    ("model.field_resolution", lambda v: 32 <= v <= 1024, "an integer in 32..1024"),
    ("model.init_light", lambda v: v > 0, "a number > 0"),
    ("model.init_roughness", lambda v: 0 < v <= 1, "a number in (0, 1]"),
    ("model.init_metallic", lambda v: 0 <= v <= 1, "a number in [0, 1]"),
] + [(f"optim.{n}", lambda v: v >= 0, "a number >= 0") for n in
     ("lr_means", "lr_means_final", "lr_sh_dc", "lr_sh_rest", "lr_opacity", "lr_scales", "lr_quats",
      "lr_sdf", "lr_deform", "lr_color", "lr_vertices", "lr_texture", "lambda_mask", "lambda_sdf",
      "lambda_laplacian", "lambda_normal", "lr_material", "lr_light", "lambda_albedo_smooth",
      "lambda_material_smooth", "lambda_shading", "lambda_light_white", "lambda_metallic",
      "lambda_albedo_normal")
] + [(f"pbr.{n}", lambda v: v >= 0, "a number >= 0") for n in
     ("lambda_normal", "lambda_flat", "geometry_lr_scale", "lambda_albedo_smooth", "lambda_roughness_smooth")]


def _get(cfg, dotted: str):
    for part in dotted.split("."):
        cfg = getattr(cfg, part)
    return cfg


def _check_rules(cfg, prefix: str = "") -> None:
    for name, ok, expected in _RULES:
        try:
            value = _get(cfg, name)
        except AttributeError:
            continue
        if not ok(value):
            raise ValueError(f"config field '{prefix}{name}' must be {expected}, got {value!r}")


def validate(cfg) -> None:
    """Raise ``ValueError`` naming the first field whose value is out of range (the nested `field` section of a
    mesh config is checked by the same rules as `recon train sdf`'s)."""
    _check_rules(cfg)
    section = getattr(cfg, "field", None)
    if dataclasses.is_dataclass(section):
        _check_rules(section, "field.")
    model = getattr(cfg, "model", None)
    if (getattr(model, "geometry", None) == "sdf" and model.init_mesh is None
            and cfg.optim.geometry_steps == 0):
        raise ValueError("config field 'model.geometry' is 'sdf' but optim.geometry_steps is 0: the SDF stage needs "
                         "steps (or give model.init_mesh)")
    init_mesh = getattr(getattr(cfg, "model", None), "init_mesh", None)
    if init_mesh is not None and not Path(init_mesh).is_file():
        raise ValueError(f"config field 'model.init_mesh' must be an existing mesh file, got {init_mesh!r}")
    if init_mesh is not None and cfg.optim.geometry_steps != 0:
        raise ValueError(f"config field 'model.init_mesh' ({init_mesh}) needs optim.geometry_steps 0, "
                         f"got {cfg.optim.geometry_steps}")


def to_dict(cfg) -> dict:
    """Plain nested dict (Paths as strings) for YAML."""
    out = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            value = to_dict(value)
        elif isinstance(value, Path):
            value = str(value)
        elif isinstance(value, tuple):
            value = list(value)
        out[f.name] = value
    return out


def _coerce(tp, value, where: str):
    """Check/convert a YAML value to the annotated type; raise ValueError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, where)
            except ValueError:
                continue
        raise ValueError(f"{where}: {value!r} does not match {tp}")
    if tp is Path:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a path string, got {value!r}")
        return Path(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ValueError(f"{where}: expected a string, got {value!r}")
        return value
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ValueError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    return value


def from_dict(cls, data: dict, where: str = "config"):
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise ``ValueError``."""
    if not isinstance(data, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, f"{where}.{k}") for k, v in data.items()}
    return cls(**kwargs)


def load_config_file(path: Path) -> tuple[str, object]:
    """Read a preset or a run's config.yaml -> ``(method, config)``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: malformed YAML ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    data = dict(data)
    method = data.pop("method", "gaussians")
    version = data.pop("schema_version", SCHEMA_VERSION)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {version} is not supported (expected 1 to {SCHEMA_VERSION})")
    if method not in METHODS:
        raise ValueError(f"{path}: field 'method' must be one of {sorted(METHODS)}, got {method!r}")
    for old in (v for v in _OLD_DEFAULTS if v >= version):  # the run's own keys win over all of these
        for section, fields in _OLD_DEFAULTS[old].get(method, {}).items():
            if isinstance(data.get(section), dict):
                data[section] = {**fields, **data[section]}
    cfg = from_dict(METHODS[method], data, where=str(path))
    validate(cfg)
    return method, cfg


def save_config(path: Path, method: str, cfg) -> None:
    """Write the resolved config (with method and schema version) atomically."""
    from recon.train.checkpoint import atomic_write_text

    body = {"method": method, "schema_version": SCHEMA_VERSION, **to_dict(cfg)}
    atomic_write_text(Path(path), yaml.safe_dump(body, sort_keys=False))
