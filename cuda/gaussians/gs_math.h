// Shared math of the Gaussian rasterizer (usable from host and device code).
// Conventions and thresholds mirror renderers/gaussians/_ref.py exactly.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define GS_HD __host__ __device__ __forceinline__
#else
#define GS_HD inline
#endif

namespace gs {

constexpr float kAlphaMin = 1.0f / 255.0f;
constexpr float kAlphaMax = 0.99f;
constexpr float kTMin = 1e-4f;

// Camera of one call: world-to-camera rotation R (row major), translation t, pinhole intrinsics in pixels.
struct Camera {
  float R[9];
  float t[3];
  float fx, fy, cx, cy;
  int width, height;
};

// exp(x) for x <= 0 (Cephes expf: Cody-Waite reduction + degree-6 polynomial, ~1 ulp). Written without
// library calls or branches so that the pixel loops vectorize.
GS_HD float fast_exp(float x) {
  x = x < -87.0f ? -87.0f : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  float n = x * 1.44269504088896341f + magic;
  n = n - magic;
  float r = x - n * 0.693359375f;
  r = r + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  union {
    int32_t i;
    float f;
  } s;
  s.i = (static_cast<int32_t>(n) + 127) << 23;
  return p * s.f;
}

// Half extents (pixels, including a 1 px safety margin) of the ellipse outside which a 2D Gaussian with this
// conic and opacity has alpha < kAlphaMin, i.e. is skipped by the compositing rule. Returns false when the
// Gaussian can never reach kAlphaMin. Skipping pixels outside these extents is exact, not an approximation.
GS_HD bool alpha_extent(const float conic[3], float opacity, float* ext_x, float* ext_y) {
  const float t = 2.f * logf(opacity / kAlphaMin);  // q(d) = d^T conic d must be <= t
  if (!(t >= 0.f)) return false;
  const float det = conic[0] * conic[2] - conic[1] * conic[1];
  if (!(det > 0.f)) {
    *ext_x = *ext_y = 1e7f;
    return true;
  }
  *ext_x = sqrtf(t * conic[2] / det) + 1.f;
  *ext_y = sqrtf(t * conic[0] / det) + 1.f;
  return true;
}

// Rotation matrix (row major) from a unit quaternion (w, x, y, z).
GS_HD void quat_to_rotmat(const float q[4], float Rm[9]) {
  const float w = q[0], x = q[1], y = q[2], z = q[3];
  Rm[0] = 1.f - 2.f * (y * y + z * z);
  Rm[1] = 2.f * (x * y - w * z);
  Rm[2] = 2.f * (x * z + w * y);
  Rm[3] = 2.f * (x * y + w * z);
  Rm[4] = 1.f - 2.f * (x * x + z * z);
  Rm[5] = 2.f * (y * z - w * x);
  Rm[6] = 2.f * (x * z - w * y);
  Rm[7] = 2.f * (y * z + w * x);
  Rm[8] = 1.f - 2.f * (x * x + y * y);
}

// Vector-Jacobian product of quat_to_rotmat: G = dL/dRm -> dL/dq.
GS_HD void quat_to_rotmat_vjp(const float q[4], const float G[9], float vq[4]) {
  const float w = q[0], x = q[1], y = q[2], z = q[3];
  vq[0] = 2.f * (-z * G[1] + y * G[2] + z * G[3] - x * G[5] - y * G[6] + x * G[7]);
  vq[1] = 2.f * (y * G[1] + z * G[2] + y * G[3] - 2.f * x * G[4] - w * G[5] + z * G[6] + w * G[7] - 2.f * x * G[8]);
  vq[2] = 2.f * (-2.f * y * G[0] + x * G[1] + w * G[2] + x * G[3] + z * G[5] - w * G[6] + z * G[7] - 2.f * y * G[8]);
  vq[3] = 2.f * (-2.f * z * G[0] - w * G[1] + x * G[2] + w * G[3] - 2.f * z * G[4] + y * G[5] + x * G[6] + y * G[7]);
}

// C = A B for 3x3 row-major matrices (transposes chosen by flags).
GS_HD void matmul3(const float* A, bool ta, const float* B, bool tb, float* C) {
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      float s = 0.f;
      for (int k = 0; k < 3; ++k) s += (ta ? A[k * 3 + i] : A[i * 3 + k]) * (tb ? B[j * 3 + k] : B[k * 3 + j]);
      C[i * 3 + j] = s;
    }
}

// Intermediate quantities of one projection, recomputed in the backward pass.
struct ProjState {
  float p[3];       // camera-space point
  float qn[4];      // normalized quaternion
  float qnorm;      // |q| (clamped)
  float Rq[9];      // rotation of the Gaussian
  float covc[9];    // camera-space 3D covariance
  float J[6];       // 2x3 projection Jacobian
  float tx, ty;     // clamped x, y
  bool clip_x, clip_y;
  float s00, s01, s11, det;  // 2D covariance (with eps2d) and its determinant
};

// Forward projection of one Gaussian. Returns false when culled (then outputs are untouched).
GS_HD bool project_one(const float* mean, const float* quat, const float* scale, const Camera& cam, float near,
                       float eps2d, ProjState& st, float mean2d[2], float conic[3], float* depth, int* radius) {
  const float* R = cam.R;
  for (int i = 0; i < 3; ++i) st.p[i] = R[i * 3] * mean[0] + R[i * 3 + 1] * mean[1] + R[i * 3 + 2] * mean[2] + cam.t[i];
  const float x = st.p[0], y = st.p[1], z = st.p[2];
  if (!(z > near)) return false;
  float n2 = quat[0] * quat[0] + quat[1] * quat[1] + quat[2] * quat[2] + quat[3] * quat[3];
  st.qnorm = fmaxf(sqrtf(n2), 1e-12f);
  for (int i = 0; i < 4; ++i) st.qn[i] = quat[i] / st.qnorm;
  quat_to_rotmat(st.qn, st.Rq);
  float M[9], cov[9], tmp[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M[i * 3 + j] = st.Rq[i * 3 + j] * scale[j];
  matmul3(M, false, M, true, cov);
  matmul3(R, false, cov, false, tmp);
  matmul3(tmp, false, R, true, st.covc);
  const float W = (float)cam.width, H = (float)cam.height;
  const float lxp = (W - cam.cx) / cam.fx + 0.3f * W / cam.fx, lxn = cam.cx / cam.fx + 0.3f * W / cam.fx;
  const float lyp = (H - cam.cy) / cam.fy + 0.3f * H / cam.fy, lyn = cam.cy / cam.fy + 0.3f * H / cam.fy;
  const float u = x / z, v = y / z;
  st.clip_x = u < -lxn || u > lxp;
  st.clip_y = v < -lyn || v > lyp;
  st.tx = z * fminf(fmaxf(u, -lxn), lxp);
  st.ty = z * fminf(fmaxf(v, -lyn), lyp);
  float* J = st.J;
  J[0] = cam.fx / z; J[1] = 0.f; J[2] = -cam.fx * st.tx / (z * z);
  J[3] = 0.f; J[4] = cam.fy / z; J[5] = -cam.fy * st.ty / (z * z);
  float JC[6];  // J covc
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      JC[i * 3 + j] = J[i * 3] * st.covc[j] + J[i * 3 + 1] * st.covc[3 + j] + J[i * 3 + 2] * st.covc[6 + j];
  st.s00 = JC[0] * J[0] + JC[1] * J[1] + JC[2] * J[2] + eps2d;
  st.s01 = JC[0] * J[3] + JC[1] * J[4] + JC[2] * J[5];
  st.s11 = JC[3] * J[3] + JC[4] * J[4] + JC[5] * J[5] + eps2d;
  st.det = st.s00 * st.s11 - st.s01 * st.s01;
  if (!(st.det > 0.f)) return false;
  mean2d[0] = cam.fx * x / z + cam.cx;
  mean2d[1] = cam.fy * y / z + cam.cy;
  const float mid = 0.5f * (st.s00 + st.s11);
  const float lam = mid + sqrtf(fmaxf(mid * mid - st.det, 0.1f));
  const float r = ceilf(3.f * sqrtf(lam));
  if (mean2d[0] + r <= 0.f || mean2d[0] - r >= W || mean2d[1] + r <= 0.f || mean2d[1] - r >= H) return false;
  conic[0] = st.s11 / st.det;
  conic[1] = -st.s01 / st.det;
  conic[2] = st.s00 / st.det;
  *depth = z;
  *radius = (int)r;
  return true;
}

// Backward of project_one for a visible Gaussian (st from a forward call). Writes dL/dmean, dL/dquat, dL/dscale.
GS_HD void project_one_vjp(const float* mean, const float* scale, const Camera& cam, const ProjState& st,
                           const float v_mean2d[2], const float v_conic[3], float v_depth, float v_mean[3],
                           float v_quat[4], float v_scale[3]) {
  const float* R = cam.R;
  const float x = st.p[0], y = st.p[1], z = st.p[2];
  const float idet = 1.f / st.det;
  // conic = inv(S) with S = [[s00, s01], [s01, s11]]; symmetric dL/dconic as a matrix G; dL/dS = -Ci G Ci.
  const float c0 = st.s11 * idet, c1 = -st.s01 * idet, c2 = st.s00 * idet;
  const float g0 = v_conic[0], g1 = 0.5f * v_conic[1], g2 = v_conic[2];
  const float t00 = c0 * g0 + c1 * g1, t01 = c0 * g1 + c1 * g2, t10 = c1 * g0 + c2 * g1, t11 = c1 * g1 + c2 * g2;
  const float V00 = -(t00 * c0 + t01 * c1), V01 = -(t00 * c1 + t01 * c2), V11 = -(t10 * c1 + t11 * c2);
  const float V[4] = {V00, V01, V01, V11};
  const float* J = st.J;
  // S = J covc J^T: dL/dcovc = J^T V J, dL/dJ = 2 V J covc.
  float VJ[6], v_covc[9], JC[6], v_J[6];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) VJ[i * 3 + j] = V[i * 2] * J[j] + V[i * 2 + 1] * J[3 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) v_covc[i * 3 + j] = J[i] * VJ[j] + J[3 + i] * VJ[3 + j];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      JC[i * 3 + j] = J[i * 3] * st.covc[j] + J[i * 3 + 1] * st.covc[3 + j] + J[i * 3 + 2] * st.covc[6 + j];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j) v_J[i * 3 + j] = 2.f * (V[i * 2] * JC[j] + V[i * 2 + 1] * JC[3 + j]);
  // covc = R cov R^T: dL/dcov = R^T v_covc R; cov = M M^T: dL/dM = 2 dL/dcov M (dL/dcov symmetric).
  float tmp[9], v_cov[9], M[9], v_M[9], v_Rq[9];
  matmul3(R, true, v_covc, false, tmp);
  matmul3(tmp, false, R, false, v_cov);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) M[i * 3 + j] = st.Rq[i * 3 + j] * scale[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      v_M[i * 3 + j] = (v_cov[i * 3] + v_cov[i]) * M[j] + (v_cov[i * 3 + 1] + v_cov[3 + i]) * M[3 + j] +
                       (v_cov[i * 3 + 2] + v_cov[6 + i]) * M[6 + j];
  for (int j = 0; j < 3; ++j) v_scale[j] = v_M[j] * st.Rq[j] + v_M[3 + j] * st.Rq[3 + j] + v_M[6 + j] * st.Rq[6 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) v_Rq[i * 3 + j] = v_M[i * 3 + j] * scale[j];
  float v_qn[4];
  quat_to_rotmat_vjp(st.qn, v_Rq, v_qn);
  const float dot = v_qn[0] * st.qn[0] + v_qn[1] * st.qn[1] + v_qn[2] * st.qn[2] + v_qn[3] * st.qn[3];
  for (int i = 0; i < 4; ++i) v_quat[i] = (v_qn[i] - st.qn[i] * dot) / st.qnorm;
  // Camera point: through mean2d, depth, J (with the tx/ty clamps) and covc (independent of p).
  const float iz = 1.f / z, iz2 = iz * iz;
  float vx = cam.fx * iz * v_mean2d[0];
  float vy = cam.fy * iz * v_mean2d[1];
  float vz = -cam.fx * x * iz2 * v_mean2d[0] - cam.fy * y * iz2 * v_mean2d[1] + v_depth;
  vz += -cam.fx * iz2 * v_J[0] - cam.fy * iz2 * v_J[4];
  vz += 2.f * cam.fx * st.tx * iz2 * iz * v_J[2] + 2.f * cam.fy * st.ty * iz2 * iz * v_J[5];
  const float v_tx = -cam.fx * iz2 * v_J[2], v_ty = -cam.fy * iz2 * v_J[5];
  if (st.clip_x) vz += st.tx * iz * v_tx; else vx += v_tx;
  if (st.clip_y) vz += st.ty * iz * v_ty; else vy += v_ty;
  for (int i = 0; i < 3; ++i) v_mean[i] = R[i] * vx + R[3 + i] * vy + R[6 + i] * vz;
}

}  // namespace gs
