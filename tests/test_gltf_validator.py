"""GLBs written by recon pass the Khronos glTF validator (npm ``gltf-validator``, installed by scripts/setup.sh).

Not skipped when node or the package is missing: the test fails and says to run scripts/setup.sh.
"""

import json
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest
import torch

from recon.export.mesh_io import MeshWarning, load_mesh, save_mesh
from recon.scenes.mesh import MeshMaterial, MeshScene

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "gltf_validate.mjs"
PACKAGE = REPO / ".cache" / "npm" / "node_modules" / "gltf-validator"


def _validate(path: Path) -> dict:
    """The validator's JSON summary of ``path`` (``numErrors``, ``numWarnings``, ``errors``, ...)."""
    node = shutil.which("node")
    if node is None or not (PACKAGE / "package.json").is_file():
        pytest.fail(f"the Khronos glTF validator is not installed (node: {node}, package: {PACKAGE}); "
                    "run scripts/setup.sh", pytrace=False)
    run = subprocess.run([node, str(SCRIPT), str(path)], capture_output=True, text=True, timeout=120)
    if run.returncode not in (0, 1):
        pytest.fail(f"scripts/gltf_validate.mjs failed (exit {run.returncode}): {run.stderr.strip()}", pytrace=False)
    report = json.loads(run.stdout)
    assert run.returncode == (1 if report["numErrors"] else 0)
    return report


def _quad(**kwargs) -> MeshScene:
    vertices = torch.tensor([[0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 1, 0]], dtype=torch.float32)
    return MeshScene(vertices, torch.tensor([[0, 1, 2], [0, 2, 3]]), **kwargs)


def test_textured_pbr_mesh_with_normals(tmp_path):
    g = torch.Generator().manual_seed(0)
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]])
    material = MeshMaterial(base_color=torch.rand(8, 16, 3, generator=g),
                            roughness_metallic=torch.rand(16, 16, 2, generator=g),
                            base_color_factor=(0.9, 0.8, 0.7, 1.0), roughness_factor=0.6, metallic_factor=0.2)
    scene = _quad(uvs=torch.tensor([[0, 0], [1, 0], [1, 1], [0, 1]], dtype=torch.float32), uv_faces=faces,
                  normals=torch.randn(3, 3, generator=g), normal_faces=torch.tensor([[0, 1, 2], [0, 2, 1]]),
                  material=material)
    report = _validate(save_mesh(scene, tmp_path / "pbr.glb"))
    assert report["numErrors"] == 0, report["errors"]
    assert report["numWarnings"] == 0, report["warnings"]


def test_untextured_mesh_with_vertex_colors(tmp_path):
    scene = _quad(vertex_colors=torch.rand(4, 3, generator=torch.Generator().manual_seed(1)))
    report = _validate(save_mesh(scene, tmp_path / "colors.glb"))
    assert report["numErrors"] == 0 and report["numWarnings"] == 0, report


def test_resaved_gt_asset(test_data, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error", MeshWarning)
        scene = load_mesh(test_data / "synthetic" / "bob_field" / "gt_asset.glb")
    assert scene.has_normals and scene.has_texture
    report = _validate(save_mesh(scene, tmp_path / "bob.glb"))
    assert report["numErrors"] == 0, report["errors"]


def test_the_validator_catches_errors(tmp_path):
    # a control: the same kind of file with a wrong POSITION max must be reported (the check is not vacuous)
    path = save_mesh(_quad(), tmp_path / "quad.glb")
    raw = path.read_bytes()
    patched = raw.replace(b'"max":[1.0,1.0,0.0]', b'"max":[2.0,1.0,0.0]')
    assert patched != raw
    (tmp_path / "bad.glb").write_bytes(patched)
    report = _validate(tmp_path / "bad.glb")
    assert report["numErrors"] >= 1
    assert any(e["code"] == "ACCESSOR_MAX_MISMATCH" for e in report["errors"]), report["errors"]
