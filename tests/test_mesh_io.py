"""MeshScene and mesh file I/O: round trips through trimesh, the uv convention, PBR materials, bad inputs."""

import io
import json
import struct
import warnings

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from recon.data.io import srgb_to_linear
from recon.export.mesh_io import (
    MeshWarning,
    export_vertex_count,
    load_mesh,
    save_mesh,
    split_at_seams,
    split_at_uv_seams,
)
from recon.export.scenes import export_scene, load_scene_file
from recon.scenes.gaussians import GaussianScene
from recon.scenes.mesh import MeshMaterial, MeshScene, mesh_report

ASSETS = {"spot": "meshes/spot/spot.obj", "bob": "meshes/bob/bob_tri.obj", "bunny": "meshes/bunny.obj"}
TEXTURES = {"spot": "meshes/spot/spot_texture.png", "bob": "meshes/bob/bob_diffuse.png"}


@pytest.fixture(scope="module")
def loaded(test_data):
    cache = {}

    def get(name):
        if name not in cache:
            with warnings.catch_warnings():
                warnings.simplefilter("error", MeshWarning)  # the real assets need no repair
                cache[name] = load_mesh(test_data / ASSETS[name])
        return cache[name]

    return get


def _trimesh_single(path):
    """What trimesh reads (process=False), as one Trimesh."""
    m = trimesh.load(str(path), process=False)
    if isinstance(m, trimesh.Scene):
        assert len(m.geometry) == 1
        m = next(iter(m.geometry.values()))
    return m


def _raw_obj(path):
    """``v`` [n, 3], ``vt`` [t, 2] and per-corner (v, vt) 0-based indices [F, 3, 2] of a triangle OBJ."""
    v, vt, f = [], [], []
    for line in path.read_text().splitlines():
        tok = line.split()
        if tok[:1] == ["v"]:
            v.append([float(x) for x in tok[1:4]])
        elif tok[:1] == ["vt"]:
            vt.append([float(x) for x in tok[1:3]])
        elif tok[:1] == ["f"]:
            f.append([[int(i) - 1 for i in t.split("/")[:2]] for t in tok[1:]])
    return np.array(v), np.array(vt), np.array(f)


def _write(path, text):
    path.write_text(text)
    return path


def _png(path, pixels):
    Image.fromarray(np.asarray(pixels, np.uint8)).save(path)
    return path


QUAD = "v 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\n"


# ----------------------------------------------------------------------------------------------- loading

def test_spot_merges_seams_into_watertight_topology(loaded, test_data):
    scene = loaded("spot")
    v, vt, f = _raw_obj(test_data / ASSETS["spot"])
    assert scene.name == "spot" and scene.has_texture and tuple(scene.base_color.shape) == (1024, 1024, 3)
    # the file's v lines are unique positions: faces are exactly the raw v indices (file order kept)
    assert scene.num_vertices == len(v) and scene.num_faces == len(f)
    np.testing.assert_array_equal(scene.faces.numpy(), f[..., 0])
    np.testing.assert_allclose(scene.vertices.detach().numpy(), v, atol=1e-6)
    # uv seams live in uv_faces: every corner's uv is the file's vt with v flipped (docs/mesh.md)
    corner_uv = scene.uvs.numpy()[scene.uv_faces.numpy()]
    expected = vt[f[..., 1]]
    np.testing.assert_allclose(corner_uv[..., 0], expected[..., 0], atol=1e-7)
    np.testing.assert_allclose(corner_uv[..., 1], 1.0 - expected[..., 1], atol=1e-7)
    report = mesh_report(scene)
    assert report.boundary_edges == 0 and report.non_manifold_edges == 0 and report.is_watertight
    assert report.components == 1 and report.degenerate_faces == 0 and report.duplicate_faces == 0
    assert report.num_edges == 3 * scene.num_faces // 2
    # without the merge (trimesh's split vertices) the seams would be open boundaries
    tm = _trimesh_single(test_data / ASSETS["spot"])
    assert len(tm.vertices) > scene.num_vertices
    edges = np.sort(np.asarray(tm.edges), 1)
    assert (np.unique(edges, axis=0, return_counts=True)[1] == 1).sum() > 0


def test_untextured_mesh_gets_no_texture(loaded):
    scene = loaded("bunny")
    assert scene.uvs is None and scene.base_color is None and scene.vertex_colors is None
    assert not scene.has_texture and list(scene.param_groups()) == ["vertices"]
    assert scene.base_color_factor.tolist() == [1, 1, 1, 1]


# ----------------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("fmt", ["obj", "ply", "glb"])
@pytest.mark.parametrize("asset", ["spot", "bob", "bunny"])
def test_round_trip(loaded, test_data, tmp_path, asset, fmt):
    scene = loaded(asset)
    path = save_mesh(scene, tmp_path / f"{asset}.{fmt}")
    tm = _trimesh_single(path)
    assert len(tm.vertices) == export_vertex_count(scene, fmt)
    vi, _, tri = split_at_uv_seams(scene.faces.numpy(), None if fmt == "ply" else
                                   (None if scene.uv_faces is None else scene.uv_faces.numpy()))
    np.testing.assert_allclose(tm.vertices, scene.vertices.detach().numpy()[vi], atol=1e-6)
    np.testing.assert_array_equal(tm.faces, tri)
    if asset in TEXTURES and fmt != "ply":
        stored = np.asarray(Image.open(test_data / TEXTURES[asset]).convert("RGB")).astype(int)
        mat = tm.visual.material
        image = mat.image if fmt == "obj" else mat.baseColorTexture
        assert image.size == (stored.shape[1], stored.shape[0])
        assert np.abs(np.asarray(image.convert("RGB")).astype(int) - stored).max() <= 1
    if fmt == "ply":  # textured: colors sampled from the texture; untextured: none
        assert tm.visual.kind == ("vertex" if asset in TEXTURES else None)

    again = load_mesh(path)
    np.testing.assert_array_equal(again.faces.numpy(), scene.faces.numpy())
    torch.testing.assert_close(again.vertices.detach(), scene.vertices.detach(), atol=1e-6, rtol=0)
    if fmt != "ply" and scene.uvs is not None:
        np.testing.assert_array_equal(again.uv_faces.numpy(), scene.uv_faces.numpy())
        torch.testing.assert_close(again.uvs, scene.uvs, atol=1e-6, rtol=0)  # GLB: float32 1 - v in trimesh
        # 8-bit sRGB texels reload exactly (to float32 rounding)
        torch.testing.assert_close(again.base_color.detach(), scene.base_color.detach(), atol=1e-6, rtol=0)


def test_ply_colors_sample_the_texture(loaded, tmp_path):
    scene = loaded("spot")
    tm = _trimesh_single(save_mesh(scene, tmp_path / "spot.ply"))
    # a vertex inside a flat texture region: its color is the texel's, sRGB-encoded
    uv_faces, faces = scene.uv_faces.numpy(), scene.faces.numpy()
    tex = scene.base_color.detach().numpy()
    corner_uv = scene.uvs.numpy()[uv_faces[:, 0]]
    texel = tex[(corner_uv[:, 1] * tex.shape[0]).astype(int) % tex.shape[0],
                (corner_uv[:, 0] * tex.shape[1]).astype(int) % tex.shape[1]]
    linear = srgb_to_linear(np.asarray(tm.visual.vertex_colors)[faces[:, 0], :3] / 255.0)
    assert np.median(np.abs(linear - texel)) < 0.02


def test_uv_convention_on_a_hand_made_triangle(tmp_path):
    # 2x2 texture, row 0 = top: red, green / blue, white-ish
    pixels = [[[200, 30, 60], [30, 200, 60]], [[30, 60, 200], [250, 250, 250]]]
    _png(tmp_path / "tex.png", pixels)
    _write(tmp_path / "tri.mtl", "newmtl m\nmap_Kd tex.png\n")
    # OBJ vt is v-up: (0.25, 0.75) is the top-left texel, (0.75, 0.75) top-right, (0.25, 0.25) bottom-left
    _write(tmp_path / "tri.obj", "mtllib tri.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\n"
           "vt 0.25 0.75\nvt 0.75 0.75\nvt 0.25 0.25\nusemtl m\nf 1/1 2/2 3/3\n")
    scene = load_mesh(tmp_path / "tri.obj")
    uv = scene.uvs.numpy()[scene.uv_faces.numpy()[0]]
    np.testing.assert_array_equal(uv, np.array([[0.25, 0.25], [0.75, 0.25], [0.25, 0.75]], np.float32))
    tex = scene.base_color.detach().numpy()
    for (u, v), (i, j) in zip(uv, [(0, 0), (0, 1), (1, 0)]):
        row, col = int(v * 2), int(u * 2)  # texel (i, j) covers [j/W, (j+1)/W) x [i/H, (i+1)/H)
        assert (row, col) == (i, j)
        np.testing.assert_allclose(tex[row, col], srgb_to_linear(np.array(pixels[i][j]) / 255.0), atol=1e-6)
    # GLB stores recon's uv as is (glTF has the same convention); trimesh reports v-up
    tm = _trimesh_single(save_mesh(scene, tmp_path / "tri.glb"))
    np.testing.assert_allclose(tm.visual.uv[:, 1], 1.0 - uv[:, 1], atol=1e-7)
    # OBJ writes 1 - v back
    save_mesh(scene, tmp_path / "out.obj")
    vts = [line.split()[1:] for line in (tmp_path / "out.obj").read_text().splitlines() if line.startswith("vt ")]
    np.testing.assert_allclose(np.array(vts, float), [[0.25, 0.75], [0.75, 0.75], [0.25, 0.25]])


def _pbr_quad(**material):
    torch.manual_seed(0)
    uv = torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float32)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    mat = MeshMaterial(base_color=torch.rand(4, 8, 3), roughness_metallic=torch.rand(6, 5, 2),
                       normal_map=torch.nn.functional.normalize(torch.randn(2, 2, 3), dim=-1), **material)
    return MeshScene(torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32), faces, uvs=uv,
                     uv_faces=faces, material=mat, name="pbr quad")


def test_glb_pbr_material(tmp_path):
    scene = _pbr_quad(base_color_factor=(0.5, 0.25, 1.0, 0.8), roughness_factor=0.3, metallic_factor=0.7)
    path = save_mesh(scene, tmp_path / "q.glb")
    mat = _trimesh_single(path).visual.material
    assert mat.roughnessFactor == pytest.approx(0.3) and mat.metallicFactor == pytest.approx(0.7)
    assert mat.metallicRoughnessTexture.size == (5, 6) and mat.baseColorTexture.size == (8, 4)
    assert mat.normalTexture.size == (2, 2) and mat.doubleSided
    mr = np.asarray(mat.metallicRoughnessTexture.convert("RGB")).astype(float) / 255
    rm = scene.roughness_metallic.detach().numpy()
    np.testing.assert_allclose(mr[..., 1], rm[..., 0], atol=0.5 / 255)  # glTF: G = roughness
    np.testing.assert_allclose(mr[..., 2], rm[..., 1], atol=0.5 / 255)  # glTF: B = metallic
    again = load_mesh(path)
    assert again.material.base_color_factor == pytest.approx((0.5, 0.25, 1.0, 0.8))  # floats from the JSON
    assert float(again.roughness_factor) == pytest.approx(0.3) and float(again.metallic_factor) == pytest.approx(0.7)
    torch.testing.assert_close(again.roughness_metallic.detach(), scene.roughness_metallic.detach(), atol=0.5 / 255,
                               rtol=0)
    torch.testing.assert_close(again.normal_map.detach(), scene.normal_map.detach(), atol=1 / 255, rtol=0)


def test_obj_pbr_maps_bake_the_factors(tmp_path):
    scene = _pbr_quad(roughness_factor=0.5, metallic_factor=0.25)
    save_mesh(scene, tmp_path / "q.obj")
    mtl = (tmp_path / "q.mtl").read_text()
    for line in ("map_Kd q_basecolor.png", "map_Pr q_roughness.png", "map_Pm q_metallic.png", "norm q_normal.png"):
        assert line in mtl
    assert Image.open(tmp_path / "q_roughness.png").size == (5, 6)
    again = load_mesh(tmp_path / "q.obj")
    assert float(again.roughness_factor) == 1.0 and float(again.metallic_factor) == 1.0  # maps replace scalars
    baked = scene.roughness_metallic.detach() * torch.tensor([0.5, 0.25])
    torch.testing.assert_close(again.roughness_metallic.detach(), baked, atol=0.5 / 255, rtol=0)


@pytest.mark.parametrize("fmt", ["obj", "ply", "glb"])
def test_vertex_colors_round_trip(tmp_path, fmt):
    colors = torch.rand(4, 3, generator=torch.Generator().manual_seed(1))
    scene = MeshScene(torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32),
                      torch.tensor([[0, 1, 2], [0, 2, 3]]), vertex_colors=colors)
    again = load_mesh(save_mesh(scene, tmp_path / f"c.{fmt}"))
    # GLB: float linear COLOR_0; OBJ: sRGB with 6 decimals; PLY: 8-bit sRGB
    tol = {"glb": 0.0, "obj": 1e-5, "ply": 0.01}[fmt]
    torch.testing.assert_close(again.vertex_colors.detach(), colors, atol=tol, rtol=0)
    if fmt == "glb":
        raw = (tmp_path / "c.glb").read_bytes()
        gltf = json.loads(raw[20:20 + struct.unpack_from("<I", raw, 12)[0]])
        assert "COLOR_0" in gltf["meshes"][0]["primitives"][0]["attributes"]


def test_scene_transforms_are_applied_and_geometries_concatenated(tmp_path):
    tri = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False)
    transform = np.eye(4)
    transform[:3, 3] = [5, 0, 0]
    tm_scene = trimesh.Scene()
    tm_scene.add_geometry(tri, geom_name="a")
    tm_scene.add_geometry(tri.copy(), geom_name="b", transform=transform)
    (tmp_path / "two.glb").write_bytes(tm_scene.export(file_type="glb"))
    scene = load_mesh(tmp_path / "two.glb")
    assert scene.num_faces == 2 and scene.num_vertices == 6
    assert sorted(scene.vertices.detach()[:, 0].tolist()) == [0, 0, 1, 5, 5, 6]


def test_state_round_trip_weights_only(loaded):
    scene = loaded("spot")
    buf = io.BytesIO()
    torch.save(scene.to_state(), buf)
    buf.seek(0)
    again = MeshScene.from_state(torch.load(buf, weights_only=True))
    assert again.name == scene.name
    for key, value in scene.to_state()["tensors"].items():
        torch.testing.assert_close(getattr(again, key).detach(), value, atol=0, rtol=0)
    copy = scene.detach_copy()
    assert copy.vertices is not scene.vertices and torch.equal(copy.vertices, scene.vertices)
    with pytest.raises(ValueError, match="kind is 'gaussians'"):
        MeshScene.from_state({"header": json.dumps({"kind": "gaussians"}), "tensors": {}}, source="ckpt.pt")


def test_scene_file_dispatch(loaded, tmp_path):
    scene = loaded("bunny")
    for fmt in ("obj", "ply", "glb"):
        path = export_scene(scene, fmt, tmp_path / f"bunny.{fmt}")
        assert isinstance(load_scene_file(path), MeshScene)
    with pytest.raises(ValueError, match="for a mesh scene"):
        export_scene(scene, "splat", tmp_path / "x.splat")
    gaussians = GaussianScene.from_points(torch.rand(20, 3), None, max_sh_degree=0)
    assert isinstance(load_scene_file(export_scene(gaussians, "ply", tmp_path / "g.ply")), GaussianScene)


def test_open3d_reads_the_ply(loaded, tmp_path):
    o3d = pytest.importorskip("open3d")
    scene = loaded("spot")
    mesh = o3d.io.read_triangle_mesh(str(save_mesh(scene, tmp_path / "spot.ply")))
    assert len(mesh.vertices) == scene.num_vertices and len(mesh.triangles) == scene.num_faces
    assert mesh.has_vertex_colors()


# ----------------------------------------------------------------------------------------------- the scene

def test_normals_edges_bounds():
    # two triangles around vertex 0, areas 0.5 (normal +z) and 2 (normal +x)
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 2, 0], [0, 0, 2]], dtype=torch.float32)
    scene = MeshScene(v, torch.tensor([[0, 1, 2], [0, 3, 4]]))
    torch.testing.assert_close(scene.face_normals(), torch.tensor([[0.0, 0, 1], [1, 0, 0]]))
    expected = torch.nn.functional.normalize(torch.tensor([2.0, 0, 0.5]), dim=0)
    torch.testing.assert_close(scene.vertex_normals()[0], expected)
    scene.vertex_normals()[0].sum().backward()
    assert torch.isfinite(scene.vertices.grad).all() and scene.vertices.grad.abs().sum() > 0
    assert scene.edges().tolist() == [[0, 1], [0, 2], [0, 3], [0, 4], [1, 2], [3, 4]]
    assert scene.bounds().tolist() == [[0, 0, 0], [1, 2, 2]]


def test_vertex_normal_of_a_tiny_face_has_finite_gradient():
    # A vertex used only by a face of area ~1e-14 (squared normal length ~1e-28): its gradient must stay finite
    # (a squared-norm floor of 1e-30 let rsqrt's derivative overflow float32 and turned a training step NaN).
    from recon.scenes.mesh import vertex_normals

    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1e-3, 0, 0], [1e-3 + 1e-7, 0, 0], [1e-3, 1e-7, 0]],
                     dtype=torch.float32, requires_grad=True)
    n = vertex_normals(v, torch.tensor([[0, 1, 2], [3, 4, 5]]))
    assert torch.allclose(n[0], torch.tensor([0.0, 0, 1])) and torch.isfinite(n).all()
    (n * torch.tensor([0.3, -0.2, 1.0])).sum().backward()
    assert torch.isfinite(v.grad).all()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"faces": [[0, 1, 5]]}, r"faces must index \[0, V=3\)"),
    ({"faces": [[0.0, 1.0, 2.0]]}, "faces must be an integer tensor"),
    ({"vertices": [[0, 0, float("nan")], [1, 0, 0], [0, 1, 0]]}, "vertices must be finite, got 1 NaN"),
    ({"vertices": [[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]}, r"vertices must have shape \[V, 3\]"),
    ({"uvs": [[0.0, 0.0]]}, "uvs and MeshScene.uv_faces must be given together"),
    ({"uvs": [[0.0, 0.0]], "uv_faces": [[0, 0, 1]]}, r"uv_faces must index \[0, T=1\)"),
    ({"vertex_colors": [[1.0, 1.0, 1.0]]}, r"vertex_colors must have shape \[V=3, 3\]"),
    ({"material": MeshMaterial(base_color=torch.ones(2, 2, 3))}, "base_color is a texture and needs uvs"),
    ({"uvs": [[0.0, 0.0]], "uv_faces": [[0, 0, 0]], "material": MeshMaterial(roughness_metallic=torch.ones(2, 2, 3))},
     r"roughness_metallic must have shape \[H>0, W>0, 2\]"),
])
def test_scene_validation(kwargs, match):
    args = {"vertices": [[0.0, 0, 0], [1, 0, 0], [0, 1, 0]], "faces": [[0, 1, 2]]} | kwargs
    vertices, faces = torch.tensor(args.pop("vertices")), torch.tensor(args.pop("faces"))
    args = {k: torch.tensor(v) if isinstance(v, list) else v for k, v in args.items()}
    with pytest.raises(ValueError, match=match):
        MeshScene(vertices, faces, **args)


# ----------------------------------------------------------------------------------------------- bad inputs

def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.obj"):
        load_mesh(tmp_path / "nope.obj")


@pytest.mark.parametrize("name", ["bad.obj", "bad.glb", "bad.ply"])
def test_corrupt_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"\x00\x01garbage\xff\xfe" * 50 if name != "bad.ply" else
                     b"ply\nformat binary_little_endian 1.0\nelement vertex 100\nproperty float x\nend_header\n\x00")
    with pytest.raises(ValueError, match=name):
        load_mesh(path)


def test_nan_vertices(tmp_path):
    path = _write(tmp_path / "nan.obj", "v 0 0 0\nv nan 0 0\nv 0 1 inf\nv 1 1 0\nf 1 2 3\nf 1 3 4\n")
    with pytest.raises(ValueError, match=r"nan.obj: 2 of 4 vertices have NaN or Inf"):
        load_mesh(path)


def test_out_of_range_faces(tmp_path):
    with pytest.raises(ValueError, match=r"oor.obj.*out of range.*vertex 5.*defines 3"):
        load_mesh(_write(tmp_path / "oor.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\nf 1 2 5\n"))
    with pytest.raises(ValueError, match=r"zero.obj:4: face references vertex 0"):
        load_mesh(_write(tmp_path / "zero.obj", "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 0 1 2\n"))
    ply = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
           "element face 1\nproperty list uchar int vertex_indices\nend_header\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n")
    with pytest.raises(ValueError, match=r"oor.ply: 1 faces index vertices out of range \[0, 3\)"):
        load_mesh(_write(tmp_path / "oor.ply", ply))


def _mesh_warnings(record):
    return [str(w.message) for w in record if issubclass(w.category, MeshWarning)]


def test_degenerate_and_duplicate_faces_are_removed(tmp_path):
    # v5 duplicates v1's position: face 1 5 2 degenerates after the merge; 1 2 6 is collinear; 1 1 3 repeats
    text = (QUAD + "v 0 0 0\nv 2 0 0\n" + "f 1 2 3\nf 1 3 4\nf 1 1 3\nf 1 5 2\nf 1 2 6\nf 3 2 1\nf 1 3 4\n")
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scene = load_mesh(_write(tmp_path / "dirty.obj", text))
    messages = _mesh_warnings(record)
    assert len(messages) == 2
    assert "removed 3 degenerate faces" in messages[0] and "removed 2 duplicate faces" in messages[1]
    assert scene.faces.tolist() == [[0, 1, 2], [0, 2, 3]] and scene.num_vertices == 4  # unused v6 dropped
    assert mesh_report(scene).boundary_edges == 4


def test_non_manifold_edges_are_kept_and_reported(tmp_path):
    text = "v 0 0 0\nv 1 0 0\nv 0 1 0\nv 0 -1 0\nv 0 0 1\nf 1 2 3\nf 1 2 4\nf 1 2 5\n"
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        scene = load_mesh(_write(tmp_path / "fan.obj", text))
    expected = f"{tmp_path / 'fan.obj'}: 1 non-manifold edges (shared by more than 2 faces); kept as they are"
    assert _mesh_warnings(record) == [expected]
    report = mesh_report(scene)
    assert scene.num_faces == 3 and report.non_manifold_edges == 1 and report.boundary_edges == 6
    assert not report.is_edge_manifold and report.components == 1


def test_mtl_errors(tmp_path):
    body = QUAD + "vt 0 0\nvt 1 0\nvt 1 1\nusemtl m\nf 1/1 2/2 3/3\n"
    _write(tmp_path / "a.mtl", "newmtl m\nKd 1 1 1\nmap_Kd -s 1 1 1 textures/missing.png\n")
    with pytest.raises(ValueError, match=r"a\.mtl: map_Kd references a missing image .*textures/missing.png"):
        load_mesh(_write(tmp_path / "a.obj", "mtllib a.mtl\n" + body))
    with pytest.raises(ValueError, match=r"b\.obj: mtllib 'gone.mtl' not found"):
        load_mesh(_write(tmp_path / "b.obj", "mtllib gone.mtl\n" + body))


def test_several_textured_materials_are_refused(tmp_path):
    _png(tmp_path / "t1.png", np.zeros((2, 2, 3)))
    _png(tmp_path / "t2.png", np.full((2, 2, 3), 255))
    _write(tmp_path / "two.mtl", "newmtl a\nmap_Kd t1.png\nnewmtl b\nmap_Kd t2.png\n")
    text = "mtllib two.mtl\n" + QUAD + "vt 0 0\nvt 1 0\nvt 1 1\nusemtl a\nf 1/1 2/2 3/3\nusemtl b\nf 1/1 3/3 4/2\n"
    with pytest.raises(ValueError, match="two.obj: 2 different textured materials"):
        load_mesh(_write(tmp_path / "two.obj", text))


def test_save_errors(tmp_path):
    scene = MeshScene(torch.zeros(3, 3), torch.zeros(0, 3, dtype=torch.int64))
    with pytest.raises(ValueError, match="no faces"):
        save_mesh(scene, tmp_path / "empty.obj")
    with pytest.raises(ValueError, match="mesh format must be one of"):
        save_mesh(scene, tmp_path / "x.stl")


# ----------------------------------------------------------------------------------------------- shading normals

def _glb_parts(path):
    """``(json dict, binary chunk bytes)`` of a GLB file."""
    raw = path.read_bytes()
    n = struct.unpack_from("<I", raw, 12)[0]
    return json.loads(raw[20:20 + n]), raw[28 + n:]


def _glb_accessor(gltf, binary, index):
    acc = gltf["accessors"][index]
    view = gltf["bufferViews"][acc["bufferView"]]
    dtype = {5126: "<f4", 5125: "<u4", 5123: "<u2", 5121: "u1"}[acc["componentType"]]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}[acc["type"]]
    offset = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
    return np.frombuffer(binary, dtype, acc["count"] * width, offset).reshape(acc["count"], width)


def _pack_glb(gltf, views: list[bytes]) -> bytes:
    """A GLB of ``gltf`` whose buffer views hold ``views`` (offsets and lengths rewritten, 4-byte aligned)."""
    blob = b""
    for entry, data in zip(gltf["bufferViews"], views):
        entry["byteOffset"], entry["byteLength"] = len(blob), len(data)
        blob += data + b"\0" * (-len(data) % 4)
    gltf["buffers"] = [{"byteLength": len(blob)}]
    js = json.dumps(gltf).encode()
    js += b" " * (-len(js) % 4)
    return (struct.pack("<III", 0x46546C67, 2, 28 + len(js) + len(blob)) + struct.pack("<II", len(js), 0x4E4F534A)
            + js + struct.pack("<II", len(blob), 0x004E4942) + blob)


def _corner_normals(scene):
    return scene.normals.numpy()[scene.normal_faces.numpy()]  # [F, 3, 3]


@pytest.mark.parametrize("dataset", ["bob_field", "armadillo_field"])
def test_gt_asset_normals_are_the_files(test_data, dataset):
    path = test_data / "synthetic" / dataset / "gt_asset.glb"
    with warnings.catch_warnings():
        warnings.simplefilter("error", MeshWarning)
        scene = load_mesh(path)
    gltf, binary = _glb_parts(path)
    prim = gltf["meshes"][0]["primitives"][0]
    tri = _glb_accessor(gltf, binary, prim["indices"]).reshape(-1, 3)
    raw_normals = _glb_accessor(gltf, binary, prim["attributes"]["NORMAL"])
    raw_pos = _glb_accessor(gltf, binary, prim["attributes"]["POSITION"])
    assert scene.has_normals and scene.num_faces == len(tri)  # no face was repaired away: corners line up
    np.testing.assert_array_equal(scene.vertices.detach().numpy()[scene.faces.numpy()], raw_pos[tri])
    np.testing.assert_allclose(_corner_normals(scene), raw_normals[tri], atol=1e-6, rtol=0)
    # they are not the area-weighted vertex normals recon would compute (README: armadillo differs by 2.3 deg)
    computed = scene.vertex_normals().detach()[scene.faces].numpy()
    angle = np.degrees(np.arccos(np.clip((computed * _corner_normals(scene)).sum(-1), -1, 1)))
    mean_deg, max_deg = {"bob_field": (0.3, 5.0), "armadillo_field": (2.0, 60.0)}[dataset]  # measured 0.50 / 7.5
    assert angle.mean() > mean_deg and angle.max() > max_deg  # and 2.3 / 89 degrees
    # deduplicated by value; positions merged (bob's file splits them at uv seams), so the topology is watertight
    assert len(np.unique(scene.normals.numpy(), axis=0)) == len(scene.normals) <= len(raw_normals)
    assert scene.num_vertices == len(np.unique(raw_pos, axis=0)) and mesh_report(scene).boundary_edges == 0


def test_files_without_normals_get_none(loaded, tmp_path):
    assert loaded("bunny").normals is None and loaded("bunny").normal_faces is None  # no vn lines
    tri = "v 0 0 0\nv 1 0 0\nv 0 1 0\nf 1 2 3\n"
    scene = load_mesh(_write(tmp_path / "t.obj", tri))
    assert scene.normals is None
    for fmt in ("glb", "ply"):  # written without normals: read back without (trimesh never invents them)
        again = load_mesh(save_mesh(scene, tmp_path / f"t.{fmt}"))
        assert again.normals is None, fmt
    gltf, _ = _glb_parts(tmp_path / "t.glb")
    assert "NORMAL" not in gltf["meshes"][0]["primitives"][0]["attributes"]
    # an OBJ where only some faces name a vn: trimesh drops them all, and so does recon (never half-invented)
    mixed = load_mesh(_write(tmp_path / "m.obj", QUAD + "vn 0 0 1\nf 1//1 2//1 3//1\nf 1 3 4\n"))
    assert mixed.normals is None


def test_obj_normals_are_face_varying(tmp_path):
    # a crease along the diagonal 1-3: face 1 has normal +z everywhere, face 2 a tilted one (unnormalized in the
    # file, length 2: recon renormalizes)
    text = QUAD + "vn 0 0 1\nvn 0 1.2 1.6\nf 1//1 2//1 3//1\nf 1//2 3//2 4//2\n"
    scene = load_mesh(_write(tmp_path / "crease.obj", text))
    assert scene.num_vertices == 4 and scene.faces.tolist() == [[0, 1, 2], [0, 2, 3]]  # merged at the crease
    assert scene.normal_faces.tolist() == [[0, 0, 0], [1, 1, 1]]
    np.testing.assert_allclose(scene.normals.numpy(), [[0, 0, 1], [0, 0.6, 0.8]], atol=1e-7)
    assert export_vertex_count(scene, "obj") == 6 and export_vertex_count(scene, "glb") == 6  # split at the crease
    assert export_vertex_count(scene, "ply") == 4


def test_ply_normals_load(tmp_path):
    ply = ("ply\nformat ascii 1.0\nelement vertex 3\nproperty float x\nproperty float y\nproperty float z\n"
           "property float nx\nproperty float ny\nproperty float nz\nelement face 1\n"
           "property list uchar int vertex_indices\nend_header\n0 0 0 0 0 1\n1 0 0 0 0.6 0.8\n0 1 0 0 0 1\n3 0 1 2\n")
    scene = load_mesh(_write(tmp_path / "n.ply", ply))
    assert scene.normal_faces.tolist() == [[0, 1, 0]]
    np.testing.assert_allclose(scene.normals.numpy(), [[0, 0, 1], [0, 0.6, 0.8]], atol=1e-7)


@pytest.mark.parametrize("fmt", ["obj", "glb"])
def test_normals_round_trip(loaded, tmp_path, fmt):
    scene = loaded("spot")  # spot.obj names a vn at every corner
    assert scene.has_normals
    path = save_mesh(scene, tmp_path / f"spot.{fmt}")
    assert len(_trimesh_single(path).vertices) == export_vertex_count(scene, fmt)
    again = load_mesh(path)
    np.testing.assert_array_equal(again.faces.numpy(), scene.faces.numpy())
    np.testing.assert_array_equal(again.normal_faces.numpy(), scene.normal_faces.numpy())
    np.testing.assert_array_equal(again.normals.numpy(), scene.normals.numpy())  # float32 written exactly
    if fmt == "glb":
        gltf, binary = _glb_parts(path)
        stored = _glb_accessor(gltf, binary, gltf["meshes"][0]["primitives"][0]["attributes"]["NORMAL"])
        np.testing.assert_allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-6)  # glTF: NORMAL is unit


def test_ply_drops_normals_with_one_warning(loaded, tmp_path):
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        path = save_mesh(loaded("bunny").detach_copy(), tmp_path / "plain.ply")
        spot = save_mesh(loaded("spot"), tmp_path / "spot.ply")
    assert _mesh_warnings(record) == [f"{spot}: PLY stores no face-varying normals; the shading normals are "
                                      "not written"]
    assert load_mesh(spot).normals is None and load_mesh(path).normals is None


def test_scene_transform_rotates_normals(tmp_path):
    # node transform: scale x by 2 (non-uniform: normals use the inverse transpose), then mirror y (det < 0)
    tri = trimesh.Trimesh([[0, 0, 0], [1, 0, 0], [0, 1, 0]], [[0, 1, 2]], process=False,
                          vertex_normals=[[0.6, 0, 0.8], [0, 0, 1], [0, 0, 1]])
    tm_scene = trimesh.Scene()
    tm_scene.add_geometry(tri, geom_name="a", transform=np.diag([2.0, -1.0, 1.0, 1.0]))
    (tmp_path / "s.glb").write_bytes(tm_scene.export(file_type="glb"))
    scene = load_mesh(tmp_path / "s.glb")
    corner = _corner_normals(scene)[0]
    at_origin = (scene.vertices.detach()[scene.faces[0]] == 0).all(1).numpy()  # the corner with normal (.6, 0, .8)
    np.testing.assert_allclose(corner[at_origin], [[0.3 / np.hypot(0.3, 0.8), 0, 0.8 / np.hypot(0.3, 0.8)]],
                               atol=1e-6)  # (0.6 / 2, 0, 0.8) renormalized: the inverse transpose of the transform
    np.testing.assert_allclose(corner[~at_origin], [[0, 0, 1], [0, 0, 1]], atol=1e-7)
    # the winding flip keeps the shading normals on the side of the geometric normal
    assert (corner @ scene.face_normals()[0].detach().numpy() > 0).all()


def test_split_at_seams_large_indices():
    # indices whose product overflows the single-key path take the row-wise unique: same answer
    rng = np.random.default_rng(0)
    faces, uvf, nf = (rng.integers(0, 5, (20, 3)) for _ in range(3))
    big = 2**21
    small = split_at_seams(faces, uvf, nf)
    large = split_at_seams(faces * big, uvf * big, nf * big)
    for s, lg in zip(small[:3], large[:3]):
        np.testing.assert_array_equal(s * big, lg)
    np.testing.assert_array_equal(small[3], large[3])
    vi, ui, ni, tri = small
    np.testing.assert_array_equal(np.stack([vi[tri], ui[tri], ni[tri]], -1), np.stack([faces, uvf, nf], -1))


def test_scene_normals_state_and_copies():
    v = torch.tensor([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=torch.float32)
    scene = MeshScene(v, [[0, 1, 2]], normals=[[0.0, 0.0, 2.0], [3.0, 0.0, 4.0]], normal_faces=[[0, 1, 0]])
    torch.testing.assert_close(scene.normals, torch.tensor([[0.0, 0, 1], [0.6, 0, 0.8]]))  # renormalized
    assert scene.normals.dtype == torch.float32 and scene.normal_faces.dtype == torch.int64
    assert "normals" not in scene.param_groups()  # a buffer, not optimized
    state = scene.to_state()
    again = MeshScene.from_state(state)
    assert torch.equal(again.normals, scene.normals) and torch.equal(again.normal_faces, scene.normal_faces)
    assert torch.equal(scene.detach_copy().normals, scene.normals)
    plain = scene.without_normals()
    assert plain.normals is None and plain.normal_faces is None and torch.equal(plain.vertices, scene.vertices)
    assert scene.has_normals and not plain.has_normals
    # a state written before normals existed still loads
    old = {"header": state["header"], "tensors": {k: t for k, t in state["tensors"].items() if "normal" not in k}}
    assert MeshScene.from_state(old).normals is None
    # dropping them in place (what a trainer optimizing the vertices does) passes validation
    scene.normals = scene.normal_faces = None
    scene.validate()


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"normals": [[0.0, 0.0, 1.0]]}, "normals and MeshScene.normal_faces must be given together"),
    ({"normals": [[0.0, 0.0, 1.0], [0.0, 0.0, 0.0]], "normal_faces": [[0, 1, 0]]},
     r"normals has 1 zero-length rows \(first: row 1\)"),
    ({"normals": [[0.0, 1.0]], "normal_faces": [[0, 0, 0]]}, r"normals must have shape \[Nn, 3\]"),
    ({"normals": [[0.0, float("nan"), 1.0]], "normal_faces": [[0, 0, 0]]}, "normals must be finite"),
    ({"normals": [[0.0, 0.0, 1.0]], "normal_faces": [[0, 0, 1]]}, r"normal_faces must index \[0, Nn=1\)"),
    ({"normals": [[0.0, 0.0, 1.0]], "normal_faces": [[0, 0, 0], [0, 0, 0]]}, r"normal_faces must have shape \[F=1"),
])
def test_scene_normals_validation(kwargs, match):
    args = {k: torch.tensor(v) for k, v in kwargs.items()}
    with pytest.raises(ValueError, match=match):
        MeshScene(torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0]]), torch.tensor([[0, 1, 2]]), **args)


def test_assigned_non_unit_normals_fail_validation():
    scene = MeshScene(torch.eye(3), [[0, 1, 2]], normals=[[0.0, 0.0, 1.0]], normal_faces=[[0, 0, 0]])
    scene.normals = torch.tensor([[0.0, 0.0, 0.5]])
    with pytest.raises(ValueError, match=r"normals must be unit length, got lengths in \[0.5, 0.5\]"):
        scene.validate()


# ----------------------------------------------------------------------------------------------- bad materials

def test_gray_metallic_roughness_texture_is_refused(tmp_path):
    path = save_mesh(_pbr_quad(), tmp_path / "q.glb")
    gltf, binary = _glb_parts(path)
    views = [binary[v["byteOffset"]:v["byteOffset"] + v["byteLength"]] for v in gltf["bufferViews"]]
    texture = gltf["materials"][0]["pbrMetallicRoughness"]["metallicRoughnessTexture"]["index"]
    image_view = gltf["images"][gltf["textures"][texture]["source"]]["bufferView"]
    gray = io.BytesIO()
    Image.fromarray(np.full((6, 5), 128, np.uint8), mode="L").save(gray, format="PNG")
    views[image_view] = gray.getvalue()
    bad = tmp_path / "gray_mr.glb"
    bad.write_bytes(_pack_glb(gltf, views))
    with pytest.raises(ValueError, match=r"gray_mr\.glb: metallicRoughnessTexture has 1 channel\(s\) \(L image\); "
                                         r"glTF reads roughness from G and metallic from B"):
        load_mesh(bad)
    # the repacking itself is sound: the same file with an RGB image loads
    views[image_view] = _rgb_png(6, 5)
    good = tmp_path / "rgb_mr.glb"
    good.write_bytes(_pack_glb(gltf, views))
    assert tuple(load_mesh(good).roughness_metallic.shape) == (6, 5, 2)


def _rgb_png(h, w):
    buf = io.BytesIO()
    Image.fromarray(np.full((h, w, 3), 64, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("statement", ["map_Pr", "map_Pm", "norm"])
def test_mtl_missing_pbr_maps(tmp_path, statement):
    _write(tmp_path / "m.mtl", f"newmtl m\nKd 1 1 1\n{statement} maps/gone_{statement}.png\n")
    obj = _write(tmp_path / "m.obj", "mtllib m.mtl\n" + QUAD + "vt 0 0\nvt 1 0\nvt 1 1\nusemtl m\nf 1/1 2/2 3/3\n")
    with pytest.raises(ValueError, match=rf"m\.mtl: {statement} references a missing image .*maps/gone_{statement}"):
        load_mesh(obj)
