// Math of the fused Monte Carlo shading kernels (host code today; written to compile for devices too).
//
// The formulas are those of recon/shading/brdf.py (the torch twin: principled_brdf, sample_brdf, pdf_brdf), in the
// same float32 operation order and with the same clamps, so both take the same discrete decisions (lobe choice,
// masks) on the same inputs. Gradients follow torch's conventions for the clamps: clamp(x, lo, hi) passes the
// gradient where lo <= x <= hi, torch.where passes it only to the taken branch.
#pragma once

// No fused multiply-adds: the torch twin rounds every product, and at roughness ~0 the GGX peak
// (den = 1 - n.h^2 (1 - a^2) ~ 1e-6) turns one rounding step into a visible difference.
#if defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#pragma GCC optimize("fp-contract=off")
#endif

#include <algorithm>
#include <cmath>

#ifdef __CUDACC__
#define SH_HD __host__ __device__ __forceinline__
#else
#define SH_HD inline
#endif

namespace shading {

constexpr float kPi = 3.14159265358979323846f;
constexpr float kTwoPi = 6.28318530717958647692f;  // float(2 * math.pi), as torch rounds the Python scalar
constexpr float kAlphaMin = 1e-3f;                  // brdf.ALPHA_MIN
constexpr float kCosEps = 1e-4f;                    // brdf._COS_EPS
constexpr float kF0Dielectric = 0.04f;
constexpr float kLuma0 = 0.2126f, kLuma1 = 0.7152f, kLuma2 = 0.0722f;

struct V3 {
  float x, y, z;
};

SH_HD V3 load3(const float* p) { return {p[0], p[1], p[2]}; }
SH_HD void store3(float* p, V3 a) { p[0] = a.x, p[1] = a.y, p[2] = a.z; }
SH_HD V3 operator+(V3 a, V3 b) { return {a.x + b.x, a.y + b.y, a.z + b.z}; }
SH_HD V3 operator-(V3 a, V3 b) { return {a.x - b.x, a.y - b.y, a.z - b.z}; }
SH_HD V3 operator*(float s, V3 a) { return {s * a.x, s * a.y, s * a.z}; }
SH_HD float dot(V3 a, V3 b) { return a.x * b.x + a.y * b.y + a.z * b.z; }
SH_HD float clampf(float x, float lo, float hi) { return std::min(std::max(x, lo), hi); }
SH_HD float pass(float x, float lo, float hi) { return (x >= lo && x <= hi) ? 1.f : 0.f; }  // clamp's gradient
SH_HD float pow5(float x) {
  const float x2 = x * x;
  return x2 * x2 * x;
}

// brdf._safe_normalize: x * rsqrt(max(|x|^2, 1e-20)).
SH_HD V3 safe_normalize(V3 a) { return (1.f / std::sqrt(std::max(dot(a, a), 1e-20f))) * a; }

// Per-pixel material terms that do not depend on the light direction.
struct Material {
  float base[3], rough, metal;
  float alpha, a2;
  float dalpha_drough;  // d alpha / d roughness: 2 r where r^2 >= ALPHA_MIN (clamp_min passes), else 0
  float f0[3];
};

SH_HD Material make_material(const float* base, float rough, float metal) {
  Material m;
  for (int c = 0; c < 3; ++c) m.base[c] = base[c];
  m.rough = rough, m.metal = metal;
  const float r2 = rough * rough;
  m.alpha = std::max(r2, kAlphaMin);
  m.a2 = m.alpha * m.alpha;
  m.dalpha_drough = r2 >= kAlphaMin ? 2.f * rough : 0.f;
  for (int c = 0; c < 3; ++c) m.f0[c] = kF0Dielectric * (1.f - metal) + base[c] * metal;
  return m;
}

// brdf.specular_probability with n_dot_v = n.v (unclamped).
SH_HD float specular_probability(const Material& m, float n_dot_v) {
  const float c = clampf(clampf(n_dot_v, 0.f, 1.f), 0.f, 1.f);
  const float w5 = pow5(1.f - c);
  float F[3], dif[3];
  for (int k = 0; k < 3; ++k) {
    F[k] = m.f0[k] + (1.f - m.f0[k]) * w5;
    dif[k] = (1.f - m.metal) * m.base[k];
  }
  const float ws = F[0] * kLuma0 + F[1] * kLuma1 + F[2] * kLuma2;
  const float wd = dif[0] * kLuma0 + dif[1] * kLuma1 + dif[2] * kLuma2;
  return clampf(ws / std::max(ws + wd, 1e-8f), 0.1f, 0.9f);
}

// brdf.ggx_d.
SH_HD float ggx_d(float n_dot_h, float a2) {
  if (!(n_dot_h > 0.f)) return 0.f;
  const float nh = clampf(n_dot_h, 0.f, 1.f);
  const float den = nh * nh * (a2 - 1.f) + 1.f;
  return a2 / (kPi * den * den);
}

// brdf._frame (Duff et al. 2017).
SH_HD void frame(V3 n, V3* t, V3* s) {
  const float sign = n.z >= 0.f ? 1.f : -1.f;
  const float a = -1.f / (sign + n.z);
  const float b = n.x * n.y * a;
  *t = {1.f + sign * n.x * n.x * a, sign * b, -sign * n.x};
  *s = {b, sign + n.y * n.y * a, -n.y};
}

SH_HD V3 to_world(V3 local, V3 t, V3 s, V3 n) { return local.x * t + local.y * s + local.z * n; }

// brdf.sample_ggx_vndf with u1, u2 = u[..., 0:2] of the lobe.
SH_HD V3 sample_ggx_vndf(V3 n, V3 v, float alpha, float u1, float u2) {
  V3 t, s;
  frame(n, &t, &s);
  const float vx = dot(v, t), vy = dot(v, s), vz = std::max(dot(v, n), kCosEps);
  const V3 vh = safe_normalize({alpha * vx, alpha * vy, vz});
  const float lensq = vh.x * vh.x + vh.y * vh.y;
  const float inv_len = 1.f / std::sqrt(std::max(lensq, 1e-20f));
  const V3 t1 = lensq > 1e-14f ? V3{-vh.y * inv_len, vh.x * inv_len, 0.f} : V3{1.f, 0.f, 0.f};
  const V3 t2 = {vh.y * t1.z - vh.z * t1.y, vh.z * t1.x - vh.x * t1.z, vh.x * t1.y - vh.y * t1.x};
  const float r = std::sqrt(u1), phi = kTwoPi * u2;
  const float p1 = r * std::cos(phi);
  float p2 = r * std::sin(phi);
  const float blend = 0.5f * (1.f + vh.z);
  p2 = (1.f - blend) * std::sqrt(std::max(1.f - p1 * p1, 0.f)) + blend * p2;
  const V3 nh = p1 * t1 + p2 * t2 + std::sqrt(std::max(1.f - p1 * p1 - p2 * p2, 0.f)) * vh;
  const V3 h = to_world(safe_normalize({alpha * nh.x, alpha * nh.y, std::max(nh.z, 0.f)}), t, s, n);
  return (2.f * dot(v, h)) * h - v;
}

// brdf.sample_cosine.
SH_HD V3 sample_cosine(V3 n, float u1, float u2) {
  V3 t, s;
  frame(n, &t, &s);
  const float r = std::sqrt(u1), phi = kTwoPi * u2;
  return to_world({r * std::cos(phi), r * std::sin(phi), std::sqrt(std::max(1.f - u1, 0.f))}, t, s, n);
}

// brdf.pdf_brdf = p_spec pdf_ggx + (1 - p_spec) pdf_cosine.
SH_HD float pdf_brdf(V3 n, V3 v, V3 l, const Material& m, float p_spec) {
  const float n_dot_v = dot(n, v);
  float pdf_g = 0.f;
  if (n_dot_v > 0.f) {
    const float nv = clampf(n_dot_v, kCosEps, 1.f);
    pdf_g = ggx_d(dot(n, safe_normalize(v + l)), m.a2) / (2.f * (nv + std::sqrt(m.a2 + (1.f - m.a2) * nv * nv)));
  }
  const float pdf_c = std::max(dot(n, l), 0.f) / kPi;
  return p_spec * pdf_g + (1.f - p_spec) * pdf_c;
}

// Terms of principled_brdf at one (n, v, l) that the forward and the backward share. Valid when front.
struct BrdfEval {
  bool front;
  float nl, nv, nh;  // raw dot products
  V3 h;
  float D, V, w5, S, sv, sl, nvc, nlc, den;
  float f[3], F[3];
};

SH_HD BrdfEval eval_brdf(V3 n, V3 v, V3 l, const Material& m) {
  BrdfEval e;
  e.nl = dot(n, l), e.nv = dot(n, v);
  e.front = e.nl > 0.f && e.nv > 0.f;
  if (!e.front) return e;
  e.h = safe_normalize(v + l);
  e.nh = dot(n, e.h);
  // D (ggx_d)
  const float nhc = clampf(e.nh, 0.f, 1.f);
  e.den = nhc * nhc * (m.a2 - 1.f) + 1.f;
  e.D = e.nh > 0.f ? m.a2 / (kPi * e.den * e.den) : 0.f;
  // V (smith_g2_height_correlated)
  e.nvc = clampf(e.nv, kCosEps, 1.f), e.nlc = clampf(e.nl, kCosEps, 1.f);
  e.sv = std::sqrt(e.nvc * e.nvc * (1.f - m.a2) + m.a2);
  e.sl = std::sqrt(e.nlc * e.nlc * (1.f - m.a2) + m.a2);
  e.S = e.nlc * e.sv + e.nvc * e.sl;
  e.V = 0.5f / e.S;
  // F (schlick_fresnel at v.h)
  e.w5 = pow5(1.f - clampf(dot(v, e.h), 0.f, 1.f));
  const float dv = e.D * e.V;
  for (int c = 0; c < 3; ++c) {
    e.F[c] = m.f0[c] + (1.f - m.f0[c]) * e.w5;
    e.f[c] = (1.f - m.metal) * m.base[c] / kPi + dv * e.F[c];
  }
  return e;
}

// Gradients of sum_c t[c] f_c (t = d loss / d f, the BRDF without the cosine) w.r.t. the material and the raw
// cosines n.l, n.v, n.h. Accumulates into the outputs.
SH_HD void brdf_vjp(const BrdfEval& e, const Material& m, const float t[3], float g_base[3], float* g_rough,
                    float* g_metal, float* g_nl, float* g_nv, float* g_nh) {
  const float DV = e.D * e.V, one_w5 = 1.f - e.w5;
  float g_dv = 0.f;
  for (int c = 0; c < 3; ++c) {
    g_base[c] += t[c] * ((1.f - m.metal) / kPi + DV * m.metal * one_w5);
    *g_metal += t[c] * (-m.base[c] / kPi + DV * (m.base[c] - kF0Dielectric) * one_w5);
    g_dv += t[c] * e.F[c];
  }
  const float g_D = g_dv * e.V, g_V = g_dv * e.D;
  float g_a2 = 0.f;
  if (e.nh > 0.f) {
    const float nhc = clampf(e.nh, 0.f, 1.f);
    const float inv = 1.f / (kPi * e.den * e.den);
    const float dD_dden = -2.f * m.a2 * inv / e.den;
    g_a2 += g_D * (inv + dD_dden * nhc * nhc);
    *g_nh += g_D * dD_dden * 2.f * nhc * (m.a2 - 1.f) * pass(e.nh, 0.f, 1.f);
  }
  const float g_S = g_V * (-0.5f / (e.S * e.S));
  const float one_a2 = 1.f - m.a2;
  *g_nl += g_S * (e.sv + e.nvc * e.nlc * one_a2 / e.sl) * pass(e.nl, kCosEps, 1.f);
  *g_nv += g_S * (e.nlc * e.nvc * one_a2 / e.sv + e.sl) * pass(e.nv, kCosEps, 1.f);
  g_a2 += g_S * (e.nlc * (1.f - e.nvc * e.nvc) / (2.f * e.sv) + e.nvc * (1.f - e.nlc * e.nlc) / (2.f * e.sl));
  *g_rough += g_a2 * 2.f * m.alpha * m.dalpha_drough;
}

}  // namespace shading
