"""An independent, minimal numpy renderer of standard 3D Gaussian splatting (test helper, not part of recon).

Written from the published 3DGS conventions (Kerbl et al. 2023, the reference CUDA rasterizer) and kept free of
recon imports so it can check recon's renderers and PLY files from the outside:

* activations: ``scale = exp(log_scales)``, ``opacity = sigmoid(logit)``, normalized quaternion (w, x, y, z);
  ``Sigma = R S S^T R^T``;
* colour: real SH of degree 0..3 with the reference constants, evaluated at the unit direction from the camera
  centre to the Gaussian mean, ``rgb = max(sh + 0.5, 0)``;
* EWA projection ``Sigma_2d = J W Sigma W^T J^T + 0.3 I`` (no clamping of x/z, y/z in J), Gaussians with camera
  z <= 0.2 culled;
* per pixel, front to back in camera-z order: ``alpha = min(0.99, o exp(-0.5 d^T Sigma_2d^-1 d))`` with ``d`` the
  offset from the projected mean to the pixel centre ``(i + 0.5, j + 0.5)``; contributions with positive power or
  ``alpha < 1/255`` are skipped; compositing stops before the Gaussian that would bring the transmittance below
  1e-4; the background is added with the remaining transmittance.

Differences from tile-based renderers: no 3-sigma tile culling unless ``radius_sigma`` is given (then a Gaussian
only touches pixels whose centre lies within ``radius_sigma sqrt(lambda_max)`` of its mean along x and y).
Brute force over pixels x Gaussians: fine for ~200 Gaussians at 32 x 32.
"""

from __future__ import annotations

import numpy as np

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199
SH_C2 = (1.0925484305920792, -1.0925484305920792, 0.31539156525252005, -1.0925484305920792, 0.5462742152960396)
SH_C3 = (-0.5900435899266435, 2.890611442640554, -0.4570457994644658, 0.3731763325901154, -0.4570457994644658,
         1.445305721320277, -0.5900435899266435)


def _np(x) -> np.ndarray:
    return np.asarray(x.detach().cpu().numpy() if hasattr(x, "detach") else x, dtype=np.float64)


def quat_to_rotmat(q: np.ndarray) -> np.ndarray:
    """``[N, 4]`` (w, x, y, z), normalized here -> ``[N, 3, 3]``."""
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = q.T
    return np.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], axis=-1).reshape(-1, 3, 3)


def eval_sh(degree: int, coeffs: np.ndarray, dirs: np.ndarray) -> np.ndarray:
    """Reference 3DGS ``computeColorFromSH`` without the offset: ``coeffs [N, K, 3]``, unit ``dirs [N, 3]``."""
    res = SH_C0 * coeffs[:, 0]
    if degree == 0:
        return res
    x, y, z = (dirs[:, i : i + 1] for i in range(3))
    res = res - SH_C1 * y * coeffs[:, 1] + SH_C1 * z * coeffs[:, 2] - SH_C1 * x * coeffs[:, 3]
    if degree == 1:
        return res
    xx, yy, zz, xy, yz, xz = x * x, y * y, z * z, x * y, y * z, x * z
    res = (res + SH_C2[0] * xy * coeffs[:, 4] + SH_C2[1] * yz * coeffs[:, 5]
           + SH_C2[2] * (2.0 * zz - xx - yy) * coeffs[:, 6] + SH_C2[3] * xz * coeffs[:, 7]
           + SH_C2[4] * (xx - yy) * coeffs[:, 8])
    if degree == 2:
        return res
    return (res + SH_C3[0] * y * (3.0 * xx - yy) * coeffs[:, 9] + SH_C3[1] * xy * z * coeffs[:, 10]
            + SH_C3[2] * y * (4.0 * zz - xx - yy) * coeffs[:, 11]
            + SH_C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy) * coeffs[:, 12]
            + SH_C3[4] * x * (4.0 * zz - xx - yy) * coeffs[:, 13] + SH_C3[5] * z * (xx - yy) * coeffs[:, 14]
            + SH_C3[6] * x * (xx - 3.0 * yy) * coeffs[:, 15])


def render_numpy(ply, world_to_cam, K, width: int, height: int, background, *,
                 radius_sigma: float | None = None) -> np.ndarray:
    """Render a ``GaussianPly`` (raw parameters) with an OpenCV camera.

    Args:
        ply: object with ``means [N,3], quats [N,4], log_scales [N,3], opacity_logits [N], sh_dc [N,3],
            sh_rest [N,K-1,3]`` (tensors or arrays).
        world_to_cam: ``[4, 4]`` OpenCV world-to-camera. K: ``[3, 3]`` intrinsics in pixels.
        background: ``[3]`` colour added with the final transmittance.
        radius_sigma: optional square cut-off in units of the largest 2D standard deviation (3DGS uses 3).
    Returns:
        ``rgb [H, W, 3]`` float64.
    """
    means, log_scales = _np(ply.means), _np(ply.log_scales)
    quats, logits = _np(ply.quats), _np(ply.opacity_logits).reshape(-1)
    coeffs = np.concatenate([_np(ply.sh_dc)[:, None], _np(ply.sh_rest)], axis=1)  # [N, K, 3]
    degree = int(round(np.sqrt(coeffs.shape[1]))) - 1
    w2c, K, bg = _np(world_to_cam), _np(K), _np(background).reshape(3)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]

    p_cam = means @ w2c[:3, :3].T + w2c[:3, 3]
    keep = p_cam[:, 2] > 0.2
    order = np.argsort(p_cam[keep, 2], kind="stable")
    idx = np.nonzero(keep)[0][order]
    if len(idx) == 0:
        return np.broadcast_to(bg, (height, width, 3)).copy()
    p, n = p_cam[idx], len(idx)

    rot = quat_to_rotmat(quats[idx])
    scales = np.exp(log_scales[idx])
    m = rot * scales[:, None, :]
    sigma = m @ m.transpose(0, 2, 1)
    x, y, z = p.T
    J = np.zeros((n, 2, 3))
    J[:, 0, 0], J[:, 0, 2] = fx / z, -fx * x / (z * z)
    J[:, 1, 1], J[:, 1, 2] = fy / z, -fy * y / (z * z)
    T = J @ w2c[:3, :3]
    cov2d = T @ sigma @ T.transpose(0, 2, 1) + 0.3 * np.eye(2)
    a, b, c = cov2d[:, 0, 0], cov2d[:, 0, 1], cov2d[:, 1, 1]
    det = a * c - b * b
    conic = np.stack([c / det, -b / det, a / det], axis=1)
    uv = np.stack([fx * x / z + cx, fy * y / z + cy], axis=1)

    cam_center = -w2c[:3, :3].T @ w2c[:3, 3]
    dirs = means[idx] - cam_center
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    rgb = np.maximum(eval_sh(degree, coeffs[idx], dirs) + 0.5, 0.0)
    opacity = 1.0 / (1.0 + np.exp(-logits[idx]))

    ys, xs = np.meshgrid(np.arange(height) + 0.5, np.arange(width) + 0.5, indexing="ij")
    pix = np.stack([xs.ravel(), ys.ravel()], axis=1)  # [P, 2]
    dx = pix[:, None, 0] - uv[None, :, 0]
    dy = pix[:, None, 1] - uv[None, :, 1]
    power = -0.5 * (conic[:, 0] * dx * dx + conic[:, 2] * dy * dy) - conic[:, 1] * dx * dy  # [P, N]
    alpha = np.minimum(0.99, opacity * np.exp(np.minimum(power, 0.0)))
    skip = (power > 0.0) | (alpha < 1.0 / 255.0)
    if radius_sigma is not None:
        lam = 0.5 * (a + c) + np.sqrt(np.maximum(0.25 * (a - c) ** 2 + b * b, 0.1))
        r = radius_sigma * np.sqrt(lam)
        skip |= (np.abs(dx) > r) | (np.abs(dy) > r)
    alpha = np.where(skip, 0.0, alpha)
    t_after = np.cumprod(1.0 - alpha, axis=1)
    # t_after is non-increasing, so "stop before the first Gaussian that would push T below 1e-4" keeps a prefix.
    used = t_after >= 1e-4
    t_before = np.concatenate([np.ones((len(pix), 1)), t_after[:, :-1]], axis=1)
    weights = np.where(used, alpha * t_before, 0.0)
    t_final = np.where(used, t_after, 1.0).min(axis=1)
    out = weights @ rgb + t_final[:, None] * bg
    return out.reshape(height, width, 3)
