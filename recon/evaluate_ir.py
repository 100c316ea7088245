"""Inverse-rendering evaluation: ground-truth G-buffers, albedo alignment and the two scoring protocols.

Pure functions on NHWC tensors (rendering and the CLI live elsewhere). ``docs/inverse_rendering.md``
("Evaluation protocol") states the protocol in full; :data:`PROTOCOL` is the same text, for ``eval.json``.

* **foreground** (``*_psnr`` / ``*_ssim`` without suffix): only pixels where the ground-truth albedo alpha is 1
  (the pixel-center hit mask of the synthetic sets).
* **legacy full-image** (``*_full``, the TensoIR / GS-IR numbers): the whole image, prediction and ground truth
  both composited over the evaluation background outside the ground-truth mask (images: as stored, over their
  alpha).

Every metric is computed per view and then averaged over views (as the anchors do). PSNR is capped at
:data:`PSNR_CAP_DB` (MSE floored at ``10^-10``), so identical images give a finite number.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from recon.color import linear_to_srgb, srgb_to_linear
from recon.data.io import read_image

__all__ = [
    "PROTOCOL", "PSNR_CAP_DB", "IRGroundTruth", "load_ir_ground_truth", "relight_targets", "albedo_scale",
    "albedo_metrics", "roughness_mae", "normal_mae_deg", "image_metrics", "masked_psnr", "masked_ssim", "ssim_map",
]

PSNR_CAP_DB = 100.0
MASK_THRESHOLD = 0.999  # albedo alpha is 0 or 255 in the PNGs; 254/255 = 0.996 would not count
SCALE_MIN_PRED = 1e-4  # albedo ratios gt/pred with a smaller prediction are left out of the median

PROTOCOL = {
    "averaging": "every metric is computed per test view, then averaged over views (views without foreground "
                 "pixels are left out of foreground means); PSNR capped at 100 dB (MSE floored at 1e-10)",
    "mask": "foreground = pixels whose ground-truth albedo alpha is 1 (pixel-center ray hits the object)",
    "gbuffers": "predicted albedo / roughness / metallic / normals are point samples at the pixel centers, textures "
                "looked up bilinearly without mip-mapping (since 2026-12-07; before, through the mip chain)",
    "foreground": "metrics without suffix: PSNR from the MSE over foreground pixels (all channels); SSIM = mean of "
                  "the SSIM map (11x11 Gaussian, sigma 1.5, zero padding) of the full-image pair over foreground "
                  "pixels",
    "full": "metrics with suffix _full (legacy TensoIR / GS-IR): whole image, prediction and ground truth both "
            "composited over the evaluation background outside the ground-truth mask; images: rendered sRGB "
            "(composited over the background) vs ground-truth RGBA composited over the background",
    "albedo": "per-channel scale s_c = median over foreground pixels of all test views (pooled) of gt_c / pred_c "
              "in linear values (pred_c < 1e-4 skipped), applied to the linear prediction, clamped to [0, 1]; "
              "PSNR / SSIM on sRGB-encoded albedo (the ground-truth PNG encoding); albedo_psnr_unaligned: "
              "foreground PSNR without the scale",
    "roughness": "mean absolute error over foreground pixels (linear values; ground-truth PNG is linear 8-bit)",
    "normal": "mean angular error in degrees over foreground pixels (world space, both normalized); foreground "
              "only in both protocols, as TensoIR",
    "relight": "per environment map of transforms_relight.json: image PSNR / SSIM (both protocols) on the test "
               "cameras, then the mean over environments",
}


# ----------------------------------------------------------------------------------------------- ground truth

@dataclass
class IRGroundTruth:
    """Ground-truth G-buffers of the test views, at pixel centers.

    Attributes:
        names: test view names, in order.
        albedo: ``[C, H, W, 3]`` linear base color (decoded from the sRGB PNG); 0 outside the mask.
        mask: ``[C, H, W, 1]`` float 0/1, 1 where the albedo alpha is 1 (after a downscale: every covered
            source pixel is foreground).
        roughness: ``[C, H, W, 1]`` linear, or None when the dataset has none.
        normal: ``[C, H, W, 3]`` unit world-space normals (0 outside the mask), or None.
        depth: ``[C, H, W, 1]`` camera-space z (0 outside the mask), or None.
    """

    names: list[str]
    albedo: torch.Tensor
    mask: torch.Tensor
    roughness: torch.Tensor | None = None
    normal: torch.Tensor | None = None
    depth: torch.Tensor | None = None


def _read_npy(path: Path) -> np.ndarray:
    try:
        return np.asarray(np.load(path, allow_pickle=False), dtype=np.float32)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"cannot read {path}: {e}") from e


def _read_view(test_dir: Path, name: str) -> dict[str, np.ndarray | None]:
    """One view's buffers as float32 ``[H, W, D]``; optional buffers are None when absent."""
    path = test_dir / f"{name}_albedo.png"
    rgba = read_image(path)
    if rgba.shape[-1] not in (2, 4):
        raise ValueError(f"{path}: albedo must have an alpha channel (the foreground mask), got {rgba.shape[-1]} "
                         "channels")
    albedo = rgba[..., :3] if rgba.shape[-1] == 4 else np.repeat(rgba[..., :1], 3, axis=-1)
    mask = (rgba[..., -1:] >= MASK_THRESHOLD).astype(np.float32)
    out: dict[str, np.ndarray | None] = {"albedo": srgb_to_linear(albedo).astype(np.float32) * mask, "mask": mask}
    rough = test_dir / f"{name}_roughness.png"
    out["roughness"] = read_image(rough)[..., :1] if rough.is_file() else None
    npy, png = test_dir / f"{name}_normal.npy", test_dir / f"{name}_normal.png"
    if npy.is_file():
        out["normal"] = _read_npy(npy)
    elif png.is_file():  # (n + 1) / 2 encoding; 8 bits, so only a fallback
        out["normal"] = read_image(png)[..., :3] * 2.0 - 1.0
    else:
        out["normal"] = None
    depth = test_dir / f"{name}_depth.npy"
    out["depth"] = None
    if depth.is_file():
        d = _read_npy(depth)
        out["depth"] = d[..., None] if d.ndim == 2 else d
    H, W = mask.shape[:2]
    for key, files in (("roughness", rough), ("normal", npy if npy.is_file() else png), ("depth", depth)):
        arr = out[key]
        if arr is not None and (arr.ndim != 3 or arr.shape[:2] != (H, W)):
            raise ValueError(f"{files}: shape {arr.shape} does not match the albedo's {W}x{H} ({path.name})")
        if arr is not None and arr.shape[-1] != (3 if key == "normal" else 1):
            raise ValueError(f"{files}: {key} must have shape [H, W, {3 if key == 'normal' else 1}], "
                             f"got {arr.shape}")
    return out


def _area_weights(n_in: int, n_out: int) -> torch.Tensor:
    """``[n_out, n_in]`` exact area weights of source pixels in each output pixel (rows sum to 1)."""
    s = n_in / n_out
    lo = torch.arange(n_out, dtype=torch.float64)[:, None] * s
    j = torch.arange(n_in, dtype=torch.float64)[None, :]
    return (torch.minimum(lo + s, j + 1) - torch.maximum(lo, j)).clamp_min(0) / s


def _downscale_view(view: dict, height: int, width: int) -> dict:
    """Area-average the buffers over covered source pixels; mask = every source pixel covered."""
    H, W = view["mask"].shape[:2]
    ay, ax = _area_weights(H, height), _area_weights(W, width)

    def area(x: np.ndarray) -> torch.Tensor:
        return torch.einsum("ih,hwd,jw->ijd", ay, torch.from_numpy(x).double(), ax)

    m = view["mask"]
    cover = area(m)
    denom = cover.clamp_min(1e-12)
    out = {"mask": (cover >= 1 - 1e-6).float().numpy()}
    for key in ("albedo", "roughness", "depth"):
        out[key] = None if view[key] is None else (area(view[key] * m) / denom * (cover > 0)).float().numpy()
    if view["normal"] is not None:
        n = area(view["normal"] * m)
        out["normal"] = (n / n.norm(dim=-1, keepdim=True).clamp_min(1e-12)).float().numpy()
    else:
        out["normal"] = None
    return out


def load_ir_ground_truth(data_dir: Path, names: list[str], downscale: int = 1) -> IRGroundTruth | None:
    """Load ``<data_dir>/test/<name>_{albedo.png, roughness.png, normal.npy, depth.npy}`` for ``names``.

    The albedo PNG (sRGB, alpha = pixel-center hit) is required per view; roughness, normal (``.npy``, else the
    ``(n + 1) / 2`` PNG) and depth are optional per dataset but must then exist for every view. ``downscale > 1``
    gives the size of a downscaled test split (``round(W / downscale)``, as ``Cameras.scaled``): albedo,
    roughness and depth are area-averaged over the covered source pixels, normals area-summed then normalized,
    and the mask keeps only output pixels whose source pixels are all foreground.

    Returns None when the first view has no ``_albedo.png`` (a dataset without ground truth). Raises
    ``ValueError`` naming the file when another view lacks a buffer the first one has (or has one the first
    lacks), when sizes differ, or when a file cannot be decoded.
    """
    if isinstance(downscale, bool) or int(downscale) != downscale or downscale < 1:
        raise ValueError(f"downscale must be an integer >= 1, got {downscale!r}")
    test_dir = Path(data_dir) / "test"
    if not names or not (test_dir / f"{names[0]}_albedo.png").is_file():
        return None
    views = []
    for name in names:
        path = test_dir / f"{name}_albedo.png"
        if not path.is_file():
            raise ValueError(f"ground-truth albedo {path} is missing, but {names[0]}_albedo.png exists: "
                             "every test view needs the same ground-truth buffers")
        view = _read_view(test_dir, name)
        if views:
            first = views[0]
            for key in ("roughness", "normal", "depth"):
                if (view[key] is None) != (first[key] is None):
                    have, lack = (name, names[0]) if first[key] is None else (names[0], name)
                    raise ValueError(f"{test_dir}: view {have} has a ground-truth {key} buffer but view {lack} "
                                     f"has none ({lack}_{key}.*): every test view needs the same buffers")
            if view["mask"].shape != first["mask"].shape:
                raise ValueError(f"{path}: size {view['mask'].shape[1]}x{view['mask'].shape[0]} differs from "
                                 f"{names[0]}_albedo.png ({first['mask'].shape[1]}x{first['mask'].shape[0]})")
        views.append(view)
    if downscale > 1:
        H, W = views[0]["mask"].shape[:2]
        h, w = max(1, int(round(H * (1.0 / downscale)))), max(1, int(round(W * (1.0 / downscale))))
        views = [_downscale_view(v, h, w) for v in views]

    def stack(key: str) -> torch.Tensor | None:
        return None if views[0][key] is None else torch.from_numpy(np.stack([v[key] for v in views]))

    return IRGroundTruth(list(names), stack("albedo"), stack("mask"), stack("roughness"), stack("normal"),
                         stack("depth"))


def relight_targets(data_dir: Path) -> dict[str, tuple[Path, dict[str, Path]]]:
    """Relighting targets of ``<data_dir>/transforms_relight.json``: env name -> (env map path, {view: image}).

    The json has ``"envmaps": {name: "./envmaps/<name>.hdr"}`` and ``"frames"`` (the test cameras; view names
    are the ``file_path`` stems). Images are ``relight/<env>/<view>.png``; an optional ``"relight_path"``
    template (``"./relight/<env>/r_<i>.png"``) gives the folder (``<env>`` substituted) and the extension.
    Returns ``{}`` when the json does not exist. Raises ``ValueError`` naming the json and the field when it is
    malformed, ``FileNotFoundError`` naming a listed env map or image that does not exist.
    """
    root = Path(data_dir)
    path = root / "transforms_relight.json"
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(meta).__name__}")
    envmaps, frames = meta.get("envmaps"), meta.get("frames")
    if not isinstance(envmaps, dict) or not envmaps or not all(isinstance(v, str) for v in envmaps.values()):
        raise ValueError(f"{path}: field 'envmaps' must be a non-empty object {{name: path}}, got {envmaps!r:.80}")
    if not isinstance(frames, list) or not frames or not all(
            isinstance(f, dict) and isinstance(f.get("file_path"), str) for f in frames):
        raise ValueError(f"{path}: field 'frames' must be a non-empty list of objects with a 'file_path' string")
    template = meta.get("relight_path", "./relight/<env>/<view>.png")
    if not isinstance(template, str) or "<env>" not in template:
        raise ValueError(f"{path}: field 'relight_path' must be a string containing '<env>', got {template!r}")
    folder, suffix = Path(template).parent, Path(template).suffix or ".png"
    names = [Path(f["file_path"]).stem for f in frames]
    out = {}
    for env, rel in envmaps.items():
        env_path = (root / rel).resolve()
        if not env_path.is_file():
            raise FileNotFoundError(f"env map {env_path} listed in {path} (envmaps.{env}) does not exist")
        images = {n: (root / str(folder).replace("<env>", env) / f"{n}{suffix}").resolve() for n in names}
        missing = [str(p) for p in images.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} relit images of env '{env}' listed in {path} are missing, "
                                    f"e.g. {missing[0]}")
        out[env] = (env_path, images)
    return out


# ----------------------------------------------------------------------------------------------- metrics

def _check(name: str, t: torch.Tensor, like: torch.Tensor, channels: int) -> None:
    if not isinstance(t, torch.Tensor) or t.ndim != 4 or t.shape[:3] != like.shape[:3] or t.shape[-1] != channels:
        got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
        raise ValueError(f"{name} must have shape [C, H, W, {channels}] = {tuple(like.shape[:3]) + (channels,)}, "
                         f"got {got}")


def _background(background, ref: torch.Tensor) -> torch.Tensor:
    bg = torch.as_tensor(background, dtype=ref.dtype, device=ref.device).flatten()
    if bg.numel() != 3:
        raise ValueError(f"background must have 3 values, got {bg.numel()}")
    return bg


def _mean(values: torch.Tensor) -> float | None:
    """Mean over views of the finite entries (NaN marks a view without foreground); None if there are none."""
    v = values[torch.isfinite(values)]
    return float(v.double().mean()) if v.numel() else None


def masked_psnr(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """PSNR per view ``[C]`` (peak 1, capped at :data:`PSNR_CAP_DB`) of ``[C, H, W, D]`` images, from the MSE over
    the pixels where ``mask [C, H, W, 1]`` is 1 (all pixels when None); NaN for a view without such pixels."""
    _check("target", target, pred, pred.shape[-1])
    err = (pred.double() - target.double()) ** 2
    if mask is None:
        mse = err.flatten(1).mean(1)
    else:
        _check("mask", mask, pred, 1)
        m = mask.double()
        count = m.flatten(1).sum(1) * pred.shape[-1]
        mse = torch.where(count > 0, (err * m).flatten(1).sum(1) / count.clamp_min(1), torch.nan)
    return (-10.0 * torch.log10(mse.clamp_min(10 ** (-PSNR_CAP_DB / 10)))).float()


def ssim_map(pred: torch.Tensor, target: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """SSIM map ``[C, H, W, D]`` of ``[C, H, W, D]`` images; the same definition as :func:`recon.metrics.ssim`
    (Gaussian window 11x11, sigma 1.5, C1 = 0.01^2, C2 = 0.03^2, zero padding), whose value is this map's mean."""
    _check("target", target, pred, pred.shape[-1])
    d = pred.shape[-1]
    x, y = pred.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)
    t = torch.arange(window, dtype=torch.float64) - (window - 1) / 2
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = (g / g.sum()).to(x)
    # the 2D Gaussian is separable and zero padding commutes with it: two 1D passes over the five stacked
    # moments equal the 11x11 window of recon.metrics.ssim (depthwise 2D convolutions are slow on CPU)
    stack = torch.cat([x, y, x * x, y * y, x * y], dim=1)
    k = stack.shape[1]
    pad = window // 2
    stack = F.conv2d(stack, g.view(1, 1, window, 1).expand(k, 1, window, 1), padding=(pad, 0), groups=k)
    stack = F.conv2d(stack, g.view(1, 1, 1, window).expand(k, 1, 1, window), padding=(0, pad), groups=k)
    mu_x, mu_y, exx, eyy, exy = stack.split(d, dim=1)
    sxx, syy, sxy = exx - mu_x**2, eyy - mu_y**2, exy - mu_x * mu_y
    c1, c2 = 0.01**2, 0.03**2
    out = ((2 * mu_x * mu_y + c1) * (2 * sxy + c2)) / ((mu_x**2 + mu_y**2 + c1) * (sxx + syy + c2))
    return out.permute(0, 2, 3, 1)


def _ssim_views(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
    """``(masked [C], full [C])`` means of the SSIM map, one view at a time (bounded memory, one map per view)."""
    masked, full = torch.empty(pred.shape[0]), torch.empty(pred.shape[0])
    for i in range(pred.shape[0]):
        s = ssim_map(pred[i:i + 1], target[i:i + 1]).double()
        full[i] = s.mean()
        if mask is not None:
            m = mask[i:i + 1].double().expand_as(s)
            masked[i] = (s * m).sum() / m.sum() if m.sum() > 0 else torch.nan
    return masked, full


def masked_ssim(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """SSIM per view ``[C]``: the mean of :func:`ssim_map` over the pixels (and channels) where ``mask`` is 1,
    or over the whole image when None (then equal to :func:`recon.metrics.ssim`); NaN for an empty mask."""
    _check("target", target, pred, pred.shape[-1])
    if mask is not None:
        _check("mask", mask, pred, 1)
    masked, full = _ssim_views(pred, target, mask)
    return full if mask is None else masked


def _both_protocols(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> dict[str, float | None]:
    ssim_fg, ssim_full = _ssim_views(pred, gt, mask)
    return {"psnr": _mean(masked_psnr(pred, gt, mask)), "ssim": _mean(ssim_fg),
            "psnr_full": _mean(masked_psnr(pred, gt)), "ssim_full": _mean(ssim_full)}


def albedo_scale(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-channel albedo scale ``[3]``: the median over foreground pixels of all views (pooled) of
    ``gt_c / pred_c`` in linear values, skipping ``pred_c < 1e-4``; 1 for a channel with no usable pixel.

    ``pred``, ``gt``: ``[C, H, W, 3]`` linear albedo; ``mask``: ``[C, H, W, 1]``. The median of an even count is
    the mean of the two middle ratios (numpy's).
    """
    _check("gt", gt, pred, 3)
    _check("mask", mask, pred, 1)
    p = pred.detach().double().cpu().reshape(-1, 3).numpy()
    g = gt.detach().double().cpu().reshape(-1, 3).numpy()
    fg = mask.detach().cpu().reshape(-1).numpy() >= 0.5
    scale = np.ones(3)
    for c in range(3):
        ok = fg & (p[:, c] >= SCALE_MIN_PRED)
        if ok.any():
            scale[c] = np.median(g[ok, c] / p[ok, c])
    return torch.from_numpy(scale).to(device=pred.device, dtype=pred.dtype)


def albedo_metrics(pred_linear: torch.Tensor, gt: IRGroundTruth, background, scale: torch.Tensor | None = None,
                   ) -> dict:
    """Albedo PSNR / SSIM in both protocols, after the per-channel scale alignment.

    ``pred_linear [C, H, W, 3]`` linear albedo of the test views; ``background [3]`` the evaluation background as
    an sRGB-encoded color (white for the synthetic sets). ``scale [3]`` (None: :func:`albedo_scale` of this
    prediction) multiplies the linear prediction, which is then clamped to [0, 1] and sRGB-encoded like the
    ground-truth PNG; both are composited over ``background`` outside the ground-truth mask.

    Returns ``albedo_psnr``, ``albedo_ssim`` (foreground), ``albedo_psnr_full``, ``albedo_ssim_full`` (legacy),
    ``albedo_psnr_unaligned`` (foreground, scale 1) and ``albedo_scale`` (list of 3 floats).
    """
    _check("pred_linear", pred_linear, gt.albedo, 3)
    mask = gt.mask.to(pred_linear)
    gt_lin = gt.albedo.to(pred_linear)
    scale = albedo_scale(pred_linear, gt_lin, mask) if scale is None else torch.as_tensor(scale).to(pred_linear)
    if scale.numel() != 3:
        raise ValueError(f"scale must have 3 values, got {scale.numel()}")
    bg = _background(background, pred_linear)

    def encode(lin: torch.Tensor) -> torch.Tensor:
        return linear_to_srgb(lin.clamp(0, 1)) * mask + bg * (1 - mask)

    target = encode(gt_lin)
    aligned = _both_protocols(encode(pred_linear * scale.flatten()), target, mask)
    return {**{f"albedo_{k}": v for k, v in aligned.items()},
            "albedo_psnr_unaligned": _mean(masked_psnr(encode(pred_linear), target, mask)),
            "albedo_scale": [float(s) for s in scale.flatten()]}


def roughness_mae(pred: torch.Tensor, gt: IRGroundTruth) -> float | None:
    """Roughness mean absolute error over foreground pixels, per view then averaged; ``pred [C, H, W, 1]``
    linear (not clamped). None when the dataset has no roughness ground truth."""
    if gt.roughness is None:
        return None
    _check("pred", pred, gt.roughness, 1)
    m = gt.mask.to(pred.device, torch.float64)
    err = (pred.double() - gt.roughness.to(pred.device).double()).abs() * m
    count = m.flatten(1).sum(1)
    return _mean(torch.where(count > 0, err.flatten(1).sum(1) / count.clamp_min(1), torch.nan))


def normal_mae_deg(pred: torch.Tensor, gt: IRGroundTruth) -> float | None:
    """Mean angular error in degrees between ``pred [C, H, W, 3]`` and the ground-truth world normals over
    foreground pixels, per view then averaged (foreground only, as TensoIR; no full-image variant). Both are
    normalized; the angle is ``atan2(|a x b|, a . b)``, equal to ``acos(clamp(a . b))`` but accurate near 0 deg.
    A zero prediction counts as 90 deg. None when the dataset has no normal ground truth."""
    if gt.normal is None:
        return None
    _check("pred", pred, gt.normal, 3)
    a = F.normalize(pred.double(), dim=-1, eps=1e-12)
    b = F.normalize(gt.normal.to(pred.device).double(), dim=-1, eps=1e-12)
    angle = torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=-1), (a * b).sum(-1)))
    m = gt.mask.to(pred.device, torch.float64)[..., 0]
    count = m.flatten(1).sum(1)
    return _mean(torch.where(count > 0, (angle * m).flatten(1).sum(1) / count.clamp_min(1), torch.nan))


def image_metrics(pred_srgb: torch.Tensor, gt_rgba: torch.Tensor, background, mask: torch.Tensor) -> dict:
    """PSNR / SSIM of rendered images in both protocols (test views, or one relighting environment).

    ``pred_srgb [C, H, W, 3]``: sRGB renders already composited over ``background [3]``; ``gt_rgba
    [C, H, W, 4]``: sRGB with straight alpha, composited here over ``background``; ``mask [C, H, W, 1]``: the
    ground-truth foreground (:attr:`IRGroundTruth.mask`). Returns ``psnr``, ``ssim`` (foreground pixels),
    ``psnr_full``, ``ssim_full`` (whole image), each the mean over views.
    """
    _check("gt_rgba", gt_rgba, pred_srgb, 4)
    _check("mask", mask, pred_srgb, 1)
    bg = _background(background, pred_srgb)
    gt_rgba = gt_rgba.to(pred_srgb)
    target = gt_rgba[..., :3] * gt_rgba[..., 3:] + bg * (1 - gt_rgba[..., 3:])
    return _both_protocols(pred_srgb, target, mask.to(pred_srgb))
