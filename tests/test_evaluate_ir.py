"""Inverse-rendering evaluation protocol: ground-truth loading on bob_field, alignment, the metrics of both
protocols against hand-computed values, relighting targets and the error paths."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from recon.color import linear_to_srgb
from recon.evaluate_ir import (
    PROTOCOL, PSNR_CAP_DB, albedo_metrics, albedo_scale, image_metrics, load_ir_ground_truth, masked_psnr,
    masked_ssim, normal_mae_deg, relight_targets, roughness_mae,
)
from recon.metrics import ssim

VIEWS = ["r_0", "r_3", "r_7"]
WHITE = (1.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def bob_root(test_data):
    return test_data / "synthetic" / "bob_field"


@pytest.fixture(scope="module")
def gt(bob_root):
    return load_ir_ground_truth(bob_root, VIEWS)


def test_bob_ground_truth_buffers(gt):
    assert gt.names == VIEWS
    assert gt.albedo.shape == (3, 256, 256, 3) and gt.albedo.dtype == torch.float32
    assert gt.mask.shape == gt.roughness.shape == gt.depth.shape == (3, 256, 256, 1)
    assert gt.normal.shape == (3, 256, 256, 3)
    assert set(gt.mask.unique().tolist()) == {0.0, 1.0}
    frac = gt.mask.flatten(1).mean(1)
    assert ((frac > 0.05) & (frac < 0.6)).all(), frac
    fg = gt.mask[..., 0] > 0
    # bob_field: roughness 0.5 everywhere, stored as 8-bit 128/255
    assert (gt.roughness[..., 0][fg] - 0.5).abs().max() <= 1 / 255
    torch.testing.assert_close(gt.normal[fg].norm(dim=-1), torch.ones(int(fg.sum())), atol=1e-5, rtol=0)
    assert (gt.depth[..., 0][fg] > 2.0).all() and (gt.depth[..., 0][fg] < 6.0).all()  # cameras at radius 4
    assert gt.albedo[fg].min() >= 0 and gt.albedo[fg].max() <= 1 and gt.albedo[~fg].abs().max() == 0


def test_ground_truth_as_prediction_is_perfect(gt):
    m = albedo_metrics(gt.albedo.clone(), gt, WHITE)
    assert m["albedo_scale"] == pytest.approx([1.0, 1.0, 1.0], abs=1e-6)
    for key in ("albedo_psnr", "albedo_psnr_full", "albedo_psnr_unaligned"):
        assert m[key] == pytest.approx(PSNR_CAP_DB)  # sRGB round trip error ~1e-7: capped
    assert m["albedo_ssim"] == pytest.approx(1.0, abs=1e-6) and m["albedo_ssim_full"] == pytest.approx(1.0, abs=1e-6)
    assert roughness_mae(gt.roughness.clone(), gt) == 0.0
    assert normal_mae_deg(gt.normal.clone(), gt) == pytest.approx(0.0, abs=1e-5)


class _Views:
    """The test cameras ``VIEWS`` of a dataset, as render_gbuffers takes them (len and cameras[i])."""

    def __init__(self, root):
        from recon.data.load import load_dataset

        test = load_dataset(root).test
        self.cameras = test.cameras[[list(test.names).index(n) for n in VIEWS]]

    def __len__(self) -> int:
        return len(self.cameras)


def test_gbuffers_of_the_exact_asset_match_the_ground_truth(bob_root, gt):
    """The forward model of the G-buffer evaluation: bob_field's own gt_asset.glb scores its albedo to round-off
    and its roughness exactly. The buffers are pixel-center point samples; with trilinear mip-mapping (the
    renderer's default texture filter) the same asset scored 26.2 dB, which capped every textured prediction."""
    from recon.evaluate_pbr import render_gbuffers
    from recon.export.scenes import load_scene_file
    from recon.renderers import MeshSettings, RenderSettings, render

    scene = load_scene_file(bob_root / "gt_asset.glb")
    views = _Views(bob_root)
    buf = render_gbuffers(scene, views, torch.ones(3), "cpu")
    m = albedo_metrics(buf["albedo"], gt, WHITE)
    assert m["albedo_psnr"] > 60 and m["albedo_psnr_unaligned"] > 60, m
    assert roughness_mae(buf["roughness"], gt) < 1 / 255
    assert normal_mae_deg(buf["normal"], gt) < 1.0
    # The same lookups through the mip chain average each pixel's footprint: far from the ground truth.
    mip = RenderSettings(channels=("albedo",), mesh=MeshSettings(texture_filter="linear-mipmap-linear"))
    with torch.no_grad():
        blurred = torch.cat([render(scene, views.cameras[i], mip).gbuffer["albedo"] for i in range(len(views))])
    assert albedo_metrics(blurred, gt, WHITE)["albedo_psnr_unaligned"] < 35


def test_half_albedo_is_aligned_by_scale_two(gt):
    pred = 0.5 * gt.albedo
    m = albedo_metrics(pred, gt, WHITE)
    assert m["albedo_scale"] == pytest.approx([2.0, 2.0, 2.0], abs=1e-5)
    assert m["albedo_psnr"] >= 90 and m["albedo_psnr_full"] >= 90
    # unaligned: foreground MSE of the sRGB encodings, per view, then the mean of the PSNRs
    fg = gt.mask[..., 0].numpy() > 0
    a, b = linear_to_srgb(pred.double().numpy()), linear_to_srgb(gt.albedo.double().numpy())
    expected = np.mean([10 * np.log10(1 / ((a[i] - b[i]) ** 2)[fg[i]].mean()) for i in range(3)])
    assert m["albedo_psnr_unaligned"] == pytest.approx(expected, abs=1e-3)
    assert 10 < m["albedo_psnr_unaligned"] < 25
    # a given scale overrides the estimate
    assert albedo_metrics(pred, gt, WHITE, scale=torch.ones(3))["albedo_psnr"] == pytest.approx(expected, abs=1e-3)


def test_albedo_scale_is_a_robust_per_channel_median():
    gen = torch.Generator().manual_seed(0)
    gt_alb = torch.rand(2, 16, 16, 3, generator=gen) * 0.8 + 0.1
    mask = torch.zeros(2, 16, 16, 1)
    mask[:, 2:14, 3:13] = 1
    factors = torch.tensor([0.5, 1.0, 4.0])
    pred = gt_alb / factors
    pred[0, 5, 5:9] = 0.0  # below 1e-4: skipped, not an infinite ratio
    pred[1, 6, 4:8] *= 10  # a few outliers do not move the median
    pred[:, 0] = 1e3  # background pixels are not used at all
    torch.testing.assert_close(albedo_scale(pred, gt_alb, mask), factors, atol=1e-6, rtol=0)
    # no usable pixel in a channel: scale 1
    pred[..., 1] = 0
    assert albedo_scale(pred, gt_alb, mask)[1] == 1.0


def _tangent(n: torch.Tensor) -> torch.Tensor:
    """A unit vector perpendicular to each unit ``n [..., 3]``."""
    z, x = torch.tensor([0.0, 0.0, 1.0], dtype=n.dtype), torch.tensor([1.0, 0.0, 0.0], dtype=n.dtype)
    ref = torch.where(n[..., 2:].abs() < 0.9, z, x)
    t = torch.linalg.cross(n, ref.expand_as(n))
    return t / t.norm(dim=-1, keepdim=True)


def test_normals_rotated_by_ten_degrees(gt):
    n = gt.normal.double()
    fg = gt.mask[..., 0] > 0
    t = _tangent(torch.where(fg[..., None], n, torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)))
    theta = math.radians(10)
    pred = (math.cos(theta) * n + math.sin(theta) * t).float()
    assert normal_mae_deg(pred, gt) == pytest.approx(10.0, abs=0.01)
    # scale does not matter (both are normalized); background pixels do not count
    pred_bg = torch.where(fg[..., None], 3 * pred, torch.tensor([0.0, 0.0, -1.0]))
    assert normal_mae_deg(pred_bg, gt) == pytest.approx(10.0, abs=0.01)


def test_roughness_mae_over_foreground(gt):
    pred = torch.where(gt.mask > 0, gt.roughness + 0.1, torch.ones_like(gt.roughness))
    assert roughness_mae(pred, gt) == pytest.approx(0.1, abs=1e-6)


def test_downscale_keeps_fully_covered_pixels(bob_root, gt):
    small = load_ir_ground_truth(bob_root, VIEWS, downscale=2)
    assert small.albedo.shape == (3, 128, 128, 3) and small.mask.shape == (3, 128, 128, 1)

    def blocks(x):  # [C, 256, 256, D] -> [C, 128, 128, 4, D]
        C, H, W, D = x.shape
        return x.reshape(C, H // 2, 2, W // 2, 2, D).permute(0, 1, 3, 2, 4, 5).reshape(C, H // 2, W // 2, 4, D)

    full_cover = blocks(gt.mask).amin(3)
    torch.testing.assert_close(small.mask, full_cover, atol=0, rtol=0)
    fg = small.mask[..., 0] > 0
    torch.testing.assert_close(small.albedo[fg], blocks(gt.albedo).mean(3)[fg], atol=1e-6, rtol=0)
    torch.testing.assert_close(small.roughness[fg], blocks(gt.roughness).mean(3)[fg], atol=1e-6, rtol=0)
    torch.testing.assert_close(small.normal[fg].norm(dim=-1), torch.ones(int(fg.sum())), atol=1e-5, rtol=0)
    assert small.mask.mean() < gt.mask.mean()  # the silhouette's partially covered pixels are dropped
    odd = load_ir_ground_truth(bob_root, VIEWS[:1], downscale=3)  # Cameras.scaled size: round(256 / 3) = 85
    assert odd.albedo.shape == (1, 85, 85, 3) and 0.05 < odd.mask.mean() < 0.6


def test_relight_targets_of_bob(bob_root):
    targets = relight_targets(bob_root)
    assert sorted(targets) == ["doge2", "pisa"]
    test_names = [f["file_path"].split("/")[-1] for f in
                  json.loads((bob_root / "transforms_test.json").read_text())["frames"]]
    for env, (env_path, images) in targets.items():
        assert env_path == (bob_root / "envmaps" / f"{env}.hdr").resolve() and env_path.is_file()
        assert len(images) == 20 and list(images) == test_names
        assert images["r_0"] == (bob_root / "relight" / env / "r_0.png").resolve()


def _images_with_mask(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(2, 32, 40, 1)
    mask[0, 8:24, 8:24] = 1  # 256 of 1280 pixels
    mask[1, 4:20, 10:18] = 1  # 128 of 1280
    rgb = torch.rand(2, 32, 40, 3, generator=gen) * 0.6 + 0.2
    gt_rgba = torch.cat([rgb, mask], dim=-1)
    return gt_rgba, mask


def test_image_metrics_known_mse():
    gt_rgba, mask = _images_with_mask()
    bg = torch.tensor(WHITE)
    composite = gt_rgba[..., :3] * mask + bg * (1 - mask)
    same = image_metrics(composite.clone(), gt_rgba, bg, mask)
    assert same["psnr"] == same["psnr_full"] == pytest.approx(PSNR_CAP_DB)
    assert same["ssim"] == pytest.approx(1.0, abs=1e-6) and same["ssim_full"] == pytest.approx(1.0, abs=1e-6)

    d = 0.05
    pred = composite + d * mask  # every foreground channel off by d: foreground MSE = d^2
    m = image_metrics(pred, gt_rgba, WHITE, mask)
    assert m["psnr"] == pytest.approx(10 * math.log10(1 / d**2), abs=1e-4)  # 26.0206 dB
    fractions = [256 / 1280, 128 / 1280]
    expected_full = np.mean([10 * math.log10(1 / (d**2 * f)) for f in fractions])  # per view, then the mean
    assert m["psnr_full"] == pytest.approx(expected_full, abs=1e-4)
    assert m["psnr_full"] > m["psnr"] + 6
    assert m["ssim"] < m["ssim_full"] < 1


def test_masked_ssim_matches_metrics_ssim():
    gt_rgba, mask = _images_with_mask(1)
    pred = torch.rand(2, 32, 40, 3, generator=torch.Generator().manual_seed(2))
    target = gt_rgba[..., :3]
    torch.testing.assert_close(masked_ssim(pred, target), ssim(pred, target), atol=1e-6, rtol=0)
    torch.testing.assert_close(masked_ssim(pred, target, torch.ones_like(mask)), ssim(pred, target), atol=1e-6, rtol=0)
    empty = torch.zeros_like(mask)
    empty[0] = mask[0]
    psnr_v, ssim_v = masked_psnr(pred, target, empty), masked_ssim(pred, target, empty)
    assert torch.isfinite(psnr_v[0]) and torch.isnan(psnr_v[1]) and torch.isnan(ssim_v[1])


def test_protocol_is_json_and_names_both():
    text = json.dumps(PROTOCOL)
    assert {"foreground", "full", "albedo", "averaging"} <= set(PROTOCOL) and "median" in PROTOCOL["albedo"]
    assert "sRGB" in text


# ----------------------------------------------------------------------------------------------- errors

def _copy_gt(src, dst, names):
    (dst / "test").mkdir(parents=True)
    for n in names:
        for suffix in ("_albedo.png", "_roughness.png", "_normal.npy", "_depth.npy"):
            shutil.copy(src / "test" / f"{n}{suffix}", dst / "test" / f"{n}{suffix}")


def test_missing_ground_truth_files(bob_root, tmp_path):
    _copy_gt(bob_root, tmp_path, VIEWS)
    assert load_ir_ground_truth(tmp_path, ["r_5"] + VIEWS) is None  # first view without GT: a dataset without GT
    (tmp_path / "test" / "r_3_albedo.png").unlink()
    with pytest.raises(ValueError, match=r"r_3_albedo\.png is missing"):
        load_ir_ground_truth(tmp_path, VIEWS)
    with pytest.raises(ValueError, match="roughness"):
        (tmp_path / "test" / "r_7_roughness.png").unlink()
        load_ir_ground_truth(tmp_path, ["r_0", "r_7"])
    with pytest.raises(ValueError, match="downscale"):
        load_ir_ground_truth(tmp_path, ["r_0"], downscale=0)


def test_size_mismatch_names_the_file(bob_root, tmp_path):
    _copy_gt(bob_root, tmp_path, VIEWS[:2])
    np.save(tmp_path / "test" / "r_3_depth.npy", np.zeros((128, 128), np.float32))
    with pytest.raises(ValueError, match=r"r_3_depth\.npy"):
        load_ir_ground_truth(tmp_path, VIEWS[:2])


def test_relight_json_errors(bob_root, tmp_path):
    assert relight_targets(tmp_path) == {}
    path = tmp_path / "transforms_relight.json"
    path.write_text('{"envmaps": {"pisa": ')
    with pytest.raises(ValueError, match=r"transforms_relight\.json.*JSON"):
        relight_targets(tmp_path)
    path.write_text(json.dumps({"frames": [{"file_path": "./test/r_0"}], "envmaps": ["pisa"]}))
    with pytest.raises(ValueError, match=r"transforms_relight\.json: field 'envmaps'"):
        relight_targets(tmp_path)
    path.write_text(json.dumps({"frames": [{"file_path": "./test/r_0"}], "envmaps": {"pisa": "./envmaps/pisa.hdr"}}))
    with pytest.raises(FileNotFoundError, match=r"pisa\.hdr"):
        relight_targets(tmp_path)
    (tmp_path / "envmaps").mkdir()
    shutil.copy(bob_root / "envmaps" / "pisa.hdr", tmp_path / "envmaps" / "pisa.hdr")
    with pytest.raises(FileNotFoundError, match=r"relight/pisa/r_0\.png"):
        relight_targets(tmp_path)


def test_shape_errors(gt):
    with pytest.raises(ValueError, match=r"pred_linear must have shape \[C, H, W, 3\]"):
        albedo_metrics(gt.albedo[:2], gt, WHITE)
    with pytest.raises(ValueError, match="mask must have shape"):
        image_metrics(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 4), WHITE, torch.zeros(1, 4, 5, 1))
    with pytest.raises(ValueError, match="background must have 3 values"):
        image_metrics(torch.zeros(1, 4, 4, 3), torch.zeros(1, 4, 4, 4), (1.0, 1.0), torch.zeros(1, 4, 4, 1))
