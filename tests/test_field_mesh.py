"""Meshes of fields (recon.export.field_mesh): analytic SDF fields through marching cubes, the cleaning steps,
colors, and the refusals."""

from __future__ import annotations

import math

import pytest
import torch

from recon.cameras import Cameras, intrinsics_matrix, look_at
from recon.export.field_mesh import FieldMeshOptions, default_level, field_to_mesh, grid_bytes
from tests.test_isosurface import assert_watertight


class AnalyticSDF:
    """A field with ``sdf`` and ``color`` (what field_to_mesh asks of an SDF scene) over the box [-1, 1]^3."""

    def __init__(self, sdf, color=(0.5, 0.25, 1.0)):
        self.lo, self.hi = -torch.ones(3), torch.ones(3)
        self._sdf, self._color = sdf, torch.tensor(color)

    def sdf(self, x):
        return self._sdf(x)

    def color(self, x, d):  # sRGB in [0, 1]: the export stores linear
        return self._color.expand(len(x), 3)


def _cameras(n: int = 12) -> Cameras:
    a = torch.arange(n) * 2 * math.pi / n
    eyes = torch.stack([3 * a.cos(), 3 * a.sin(), 1.2 * torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)], -1)
    K = intrinsics_matrix(80.0, 80.0, 32.0, 32.0).expand(n, 3, 3)
    return Cameras(look_at(eyes).float(), K.float(), 64, 64)


def test_sphere_mesh_is_accurate_watertight_and_colored():
    field = AnalyticSDF(lambda x: x.norm(dim=-1) - 0.6)
    mesh = field_to_mesh(field, FieldMeshOptions(resolution=64))
    r = mesh.vertices.detach().norm(dim=-1)
    h = 2 / 63
    assert float((r - 0.6).abs().max()) < 0.25 * h * h / 0.6 + 1e-6  # linear interpolation of a curved SDF
    assert_watertight(mesh.faces)
    # sRGB (0.5, 0.25, 1.0) -> linear
    torch.testing.assert_close(mesh.vertex_colors[0].detach(), torch.tensor([0.21404, 0.05088, 1.0]), atol=1e-4,
                               rtol=0)


def test_small_components_go_and_unseen_inner_walls_are_culled():
    def sdf(x):
        shell = torch.maximum(x.norm(dim=-1) - 0.7, 0.45 - x.norm(dim=-1))  # a hollow ball: two surfaces
        speck = (x - torch.tensor([0.85, 0.85, 0.85])).norm(dim=-1) - 0.06
        return torch.minimum(shell, speck)

    field = AnalyticSDF(sdf)
    everything = field_to_mesh(field, FieldMeshOptions(resolution=72, min_component=0.0))
    radius = everything.vertices.detach().norm(dim=-1)
    assert bool((radius < 0.5).any()) and bool((radius > 1.0).any())  # inner wall and speck are there
    kept = field_to_mesh(field, FieldMeshOptions(resolution=72))
    assert float(kept.vertices.detach().norm(dim=-1).max()) < 0.72  # the speck (< 5 % of the faces) is gone
    assert bool((kept.vertices.detach().norm(dim=-1) < 0.5).any())  # the inner wall is a large component
    culled = field_to_mesh(field, FieldMeshOptions(resolution=72), cameras=_cameras())
    r = culled.vertices.detach().norm(dim=-1)
    assert float(r.min()) > 0.68  # no camera sees the cavity's wall
    assert_watertight(culled.faces)


def test_density_fields_use_their_stated_level():
    from recon.scenes.triplane import TriPlaneField

    field = TriPlaneField(-torch.ones(3), torch.ones(3), resolutions=(8,), channels=2, hidden=8, samples=50)
    assert default_level(field) == pytest.approx(math.log(2) / (2 / 50))
    assert default_level(AnalyticSDF(lambda x: x[:, 0])) == 0.0


def test_refusals():
    field = AnalyticSDF(lambda x: x.norm(dim=-1) - 0.6)
    with pytest.raises(ValueError, match=r"--resolution 4096 needs about 512\.2 GB .* --resolution \d+ or less"):
        field_to_mesh(field, FieldMeshOptions(resolution=4096, max_bytes=8 << 30))
    assert grid_bytes(512) < 1.5 * 2**30  # 512^3 fits in a few GB
    spans = r"never crosses the level 2 inside its box \(it spans \[-0\.48\d*, 1\.13\d*\] on the 16\^3 grid"
    with pytest.raises(ValueError, match=spans):
        field_to_mesh(field, FieldMeshOptions(resolution=16, level=2.0))
    nan_field = AnalyticSDF(lambda x: torch.where(x[:, 0] > 0.5, torch.nan, x.norm(dim=-1) - 0.6))
    with pytest.raises(ValueError, match="the field is NaN at"):
        field_to_mesh(nan_field, FieldMeshOptions(resolution=16))
    for kwargs, match in [({"resolution": 4}, "--resolution must be an integer >= 8"),
                          ({"level": math.inf}, "--level must be finite"),
                          ({"min_component": 2.0}, r"--min-component must be in \[0, 1\]"),
                          ({"texture_size": 10}, "--texture-size must be 0")]:
        with pytest.raises(ValueError, match=match):
            FieldMeshOptions(**kwargs)
