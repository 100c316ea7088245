"""Render triangle meshes through the four raster ops: rasterize -> interpolate -> texture -> antialias.

:func:`render_mesh_arrays` is the functional core (plain tensors, so trainers can render meshes whose vertices
are produced by other differentiable code, e.g. marching tetrahedra); the registered ``render`` entry for a
:class:`~recon.scenes.mesh.MeshScene` wraps it.

Materials are linear; ``RenderOutput.rgb`` is sRGB-encoded like the dataset images (what an unlit glTF viewer
shows), composited over the background *before* antialiasing so silhouette pixels blend object and background.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from recon.cameras import Cameras
from recon.color import linear_to_srgb
from recon.renderers.interface import RenderOutput, RenderSettings, register_renderer
from recon.scenes.mesh import MeshScene, vertex_normals

DEFAULT_GRAY = 0.5
"""Linear base color of meshes without texture or vertex colors (sRGB ~0.74)."""


@dataclass
class MeshArrays:
    """What the mesh renderer needs, as tensors (shapes: V vertices, F faces, T texture coordinates).

    vertices ``[V, 3]`` world; faces ``[F, 3]`` int; uvs ``[T, 2]`` + uv_faces ``[F, 3]`` (docs/mesh.md
    convention); vertex_colors ``[V, 3]`` linear; base_color ``[Ht, Wt, 3]`` linear texture;
    roughness_metallic ``[Ht, Wt, 2]``; color_factor ``[3]`` multiplies the base color; roughness_factor and
    metallic_factor (scalars) multiply the texture (glTF); normals ``[N, 3]`` + normal_faces ``[F, 3]``:
    face-varying shading normals (e.g. a glTF ``NORMAL``), else area-weighted vertex normals are used;
    transfer ``[V, 17]``: per-vertex self-shadowed diffuse transfer (:mod:`recon.shading.prt`) for PBR shading
    with the split-sum integrator; indirect ``[V, 3]``: per-vertex irradiance of one bounce of interreflection
    added to it (:func:`recon.shading.prt.bounce_irradiance`; split-sum with ``transfer`` only).
    """

    vertices: Tensor
    faces: Tensor
    uvs: Tensor | None = None
    uv_faces: Tensor | None = None
    vertex_colors: Tensor | None = None
    base_color: Tensor | None = None
    roughness_metallic: Tensor | None = None
    color_factor: Tensor | None = None
    roughness_factor: Tensor | float = 1.0
    metallic_factor: Tensor | float = 0.0
    normals: Tensor | None = None
    normal_faces: Tensor | None = None
    transfer: Tensor | None = None
    indirect: Tensor | None = None


@dataclass
class MeshAux:
    """Mesh extras: ``rast [C, H, W, 4]`` (u, v, ndc_z, triangle id + 1) and the geometric (face) normal
    ``[C, H, W, 3]`` (world space, zero where empty; None unless the "normal" channel was asked for)."""

    rast: Tensor
    face_normal: Tensor | None


def mesh_arrays(scene: MeshScene) -> MeshArrays:
    """The tensors of a :class:`MeshScene` (textures only when it has texture coordinates)."""
    has_uv = scene.uvs is not None and scene.uv_faces is not None
    return MeshArrays(vertices=scene.vertices, faces=scene.faces, uvs=scene.uvs if has_uv else None,
                      uv_faces=scene.uv_faces if has_uv else None, vertex_colors=scene.vertex_colors,
                      base_color=scene.base_color if has_uv else None,
                      roughness_metallic=scene.roughness_metallic if has_uv else None,
                      color_factor=scene.base_color_factor[:3], roughness_factor=scene.roughness_factor,
                      metallic_factor=scene.metallic_factor, normals=getattr(scene, "normals", None),
                      normal_faces=getattr(scene, "normal_faces", None))


def clip_planes(vertices: Tensor, cameras: Cameras) -> tuple[float, float]:
    """Near/far planes enclosing the mesh's bounding box in every camera (near >= far * 1e-4)."""
    v = vertices.detach()
    lo, hi = v.min(0).values, v.max(0).values
    corners = torch.cartesian_prod(*[torch.stack([lo[k], hi[k]]) for k in range(3)])
    z = (cameras.world_to_cam[:, 2, :3].to(v) @ corners.T) + cameras.world_to_cam[:, 2, 3:].to(v)
    far = max(float(z.max()) * 1.05, 1e-3)
    near = max(float(z.min()) * 0.95, far * 1e-4)
    return near, far


def clip_positions(vertices: Tensor, cameras: Cameras, near: float | None = None,
                   far: float | None = None) -> Tensor:
    """World vertices ``[V, 3]`` -> clip-space positions ``[C, V, 4]`` for :func:`rasterize`; near / far default
    to :func:`clip_planes` (enclosing the mesh in every view). Differentiable w.r.t. ``vertices``."""
    auto_near, auto_far = clip_planes(vertices, cameras)
    clip_m = cameras.clip_matrices(auto_near if near is None else near, auto_far if far is None else far)
    hom = torch.cat([vertices, torch.ones_like(vertices[:, :1])], -1)
    return torch.einsum("cij,vj->cvi", clip_m.to(vertices.dtype), hom).contiguous()


def render_mesh_arrays(mesh: MeshArrays, cameras: Cameras, settings: RenderSettings,
                       shading: str = "unlit", light=None) -> RenderOutput:
    """Render ``mesh`` into every camera: rgb/alpha ``[C, H, W, *]``, depth and normal when
    ``settings.channels`` asks for them, the G-buffer (albedo; roughness and metallic with a roughness-metallic
    texture) and :class:`MeshAux`. Differentiable w.r.t. every tensor of ``mesh``.

    ``shading`` is "unlit" or "headlight" (see :class:`~recon.renderers.interface.MeshSettings`), or "pbr":
    deferred physically based shading of the G-buffer under ``light`` (an
    :class:`~recon.shading.envmap.EnvLight`) with ``settings.shading``'s integrator.
    """
    from recon.renderers.mesh.antialias import antialias
    from recon.renderers.mesh.rasterize import interpolate, rasterize
    from recon.renderers.mesh.texture import texture

    if not cameras.is_pinhole:
        raise ValueError(f"cameras with the {cameras.model!r} lens model cannot be rasterized as meshes: load the "
                         "data with distortion='undistort' (the default)")
    ms = settings.mesh
    verts = mesh.vertices
    device = verts.device
    faces = mesh.faces.to(device=device, dtype=torch.int32)
    cams = cameras.to(device=device, dtype=torch.float32)
    be = settings.backend
    H, W = cams.height, cams.width
    C = len(cams)
    bg = settings.background
    bg = torch.zeros(3, device=device) if bg is None else torch.as_tensor(bg, dtype=torch.float32, device=device)
    if len(faces) == 0:
        empty = torch.zeros(C, H, W, 1, device=device)
        return RenderOutput(rgb=bg.expand(C, H, W, 3).clone(), alpha=empty, depth=empty.clone(),
                            normal=torch.zeros(C, H, W, 3, device=device),
                            gbuffer={"albedo": torch.zeros(C, H, W, 3, device=device)})
    pos = clip_positions(verts, cams, ms.near, ms.far)
    textured = mesh.base_color is not None and mesh.uvs is not None
    rast, rast_db = rasterize(pos, faces, (H, W), grad_db=textured, backend=be)
    covered = rast[..., 3:4] > 0
    cov_f = covered.float()
    channels = settings.channels
    depth = normal = face_normal = None
    if "depth" in channels:
        depth = interpolate(pos[..., 3:4].contiguous(), rast, faces, backend=be)[0] * cov_f
    pbr = shading == "pbr"
    if pbr and light is None:
        raise ValueError("mesh shading 'pbr' needs a light (render a recon.scenes.lit.LitScene)")
    if "normal" in channels or shading == "headlight" or pbr:
        if mesh.normals is not None and mesh.normal_faces is not None:
            nf = mesh.normal_faces.to(device=device, dtype=torch.int32)
            normal = interpolate(mesh.normals.to(verts), rast, nf, backend=be)[0]
        else:
            normal = interpolate(vertex_normals(verts, faces), rast, faces, backend=be)[0]
        normal = normal / normal.norm(dim=-1, keepdim=True).clamp_min(1e-20) * cov_f
        f_long = faces.long()
        fn = torch.cross(verts[f_long[:, 1]] - verts[f_long[:, 0]], verts[f_long[:, 2]] - verts[f_long[:, 0]],
                         dim=-1)
        fn = fn / fn.norm(dim=-1, keepdim=True).clamp_min(1e-20)
        face_normal = fn[(rast[..., 3].long() - 1).clamp_min(0)] * cov_f

    gbuffer: dict[str, Tensor] = {}
    rough = metal = None
    if textured:
        uv_faces = mesh.uv_faces.to(device=device, dtype=torch.int32)
        uv, uv_da = interpolate(mesh.uvs, rast, uv_faces, rast_db=rast_db, diff_attrs="all", backend=be)
        filt = ms.texture_filter
        color = texture(mesh.base_color, uv, uv_da, filter_mode=filt, boundary_mode="wrap", backend=be)
        if mesh.roughness_metallic is not None:
            rm = texture(mesh.roughness_metallic, uv, uv_da, filter_mode=filt, boundary_mode="wrap", backend=be)
            rough, metal = rm[..., :1], rm[..., 1:2]
    elif mesh.vertex_colors is not None:
        color = interpolate(mesh.vertex_colors, rast, faces, backend=be)[0]
    else:
        color = torch.full((C, H, W, 3), DEFAULT_GRAY, device=device)
    if mesh.color_factor is not None:
        color = color * mesh.color_factor.to(color)
    gbuffer["albedo"] = color * cov_f
    rough = torch.ones_like(cov_f) if rough is None else rough
    metal = torch.ones_like(cov_f) if metal is None else metal
    gbuffer["roughness"] = rough * _factor(mesh.roughness_factor, rough) * cov_f
    gbuffer["metallic"] = metal * _factor(mesh.metallic_factor, metal) * cov_f

    if pbr:
        lin, demod = _shade_pbr(mesh, rast, normal, face_normal, gbuffer, cams, settings, light,
                                demodulated="shading" in channels)
        if demod is not None:
            gbuffer["shading"] = demod
    elif shading == "headlight":
        world = interpolate(verts, rast, faces, backend=be)[0]
        view = world - cams.centers()[:, None, None, :]
        view = view / view.norm(dim=-1, keepdim=True).clamp_min(1e-20)
        lin = color * (0.2 + 0.8 * (normal * view).sum(-1, keepdim=True).abs())
    else:
        lin = color
    # Linear radiance above 1 (highlights under HDR light) saturates like a display does.
    rgb = linear_to_srgb(lin.clamp(0.0, 1.0)) * cov_f + bg * (1.0 - cov_f)
    alpha = cov_f
    if ms.antialias:
        blended = antialias(torch.cat([rgb, alpha], dim=-1).contiguous(), rast, pos, faces, backend=be)
        rgb, alpha = blended[..., :3], blended[..., 3:]
    return RenderOutput(rgb=rgb, alpha=alpha, depth=depth, normal=normal, gbuffer=gbuffer,
                        aux=MeshAux(rast=rast, face_normal=face_normal))


def _factor(value, like: Tensor) -> Tensor:
    return torch.as_tensor(value, dtype=like.dtype, device=like.device)


def _shade_pbr(mesh: MeshArrays, rast, normal, face_normal, gbuffer, cams, settings, light,
               demodulated: bool = False) -> tuple[Tensor, Tensor | None]:
    """Deferred PBR shading of the covered pixels: linear radiance ``[C, H, W, 3]`` (0 where empty) and, with
    ``demodulated``, the same shading of a base color of 1 (else None).

    The Monte Carlo integrator gets a :class:`~recon.renderers.mesh.material.MeshTracer` of ``mesh``: shadow
    rays, and the material at secondary hits for ``settings.shading.indirect``.
    """
    from recon.renderers.mesh.rasterize import interpolate
    from recon.shading.shade import GBuffer, shade

    verts = mesh.vertices
    faces = mesh.faces.to(device=verts.device, dtype=torch.int32)
    C, H, W = rast.shape[:3]
    flat = torch.nonzero(rast[..., 3].reshape(-1) > 0).squeeze(1)
    world = interpolate(verts, rast, faces, backend=settings.backend)[0].reshape(-1, 3)[flat]
    cam_of = flat // (H * W)
    view = cams.centers().to(world)[cam_of] - world
    view = view / view.norm(dim=-1, keepdim=True).clamp_min(1e-20)

    def pick(x: Tensor) -> Tensor:
        return x.reshape(-1, x.shape[-1])[flat]

    transfer = indirect = None
    if mesh.transfer is not None and settings.shading.integrator == "splitsum":
        per_vertex = mesh.transfer.to(verts)
        if mesh.indirect is not None:  # one interpolation for both
            per_vertex = torch.cat([per_vertex, mesh.indirect.to(verts)], -1)
        transfer = pick(interpolate(per_vertex, rast, faces, backend=settings.backend)[0])
        if mesh.indirect is not None:
            transfer, indirect = transfer[:, :-3], transfer[:, -3:]
    gb = GBuffer(position=world, normal=pick(normal), geo_normal=pick(face_normal).detach(), view=view,
                 base_color=pick(gbuffer["albedo"]), roughness=pick(gbuffer["roughness"]),
                 metallic=pick(gbuffer["metallic"]), transfer=transfer, indirect=indirect)
    tracer = None
    if settings.shading.integrator == "mc" and settings.shading.shadows:
        from recon.renderers.mesh.material import MeshTracer

        tex_backend = settings.backend if settings.backend in ("auto", "torch", "cpu", "nvdiffrast") else "auto"
        tracer = MeshTracer(mesh, backend=_caster_backend(verts), texture_backend=tex_backend)
    radiance = shade(gb, light, settings.shading, caster=tracer)

    def scatter(values: Tensor) -> Tensor:
        return values.new_zeros(C * H * W, 3).index_copy(0, flat, values).reshape(C, H, W, 3)

    demod = None
    if demodulated:
        white = replace(gb, base_color=torch.ones_like(gb.base_color))
        demod = scatter(shade(white, light, settings.shading, caster=tracer))
    return scatter(radiance), demod


def _caster_backend(verts: Tensor) -> str:
    return "auto" if verts.device.type == "cpu" else "torch"


@register_renderer(MeshScene)
def render_mesh(scene: MeshScene, cameras: Cameras, settings: RenderSettings) -> RenderOutput:
    """Render a :class:`MeshScene` (see :func:`render_mesh_arrays`)."""
    arrays = mesh_arrays(scene)
    shading = settings.mesh.shading
    if shading == "auto":
        shading = "unlit" if (arrays.base_color is not None or arrays.vertex_colors is not None) else "headlight"
    return render_mesh_arrays(arrays, cameras, settings, shading=shading)
