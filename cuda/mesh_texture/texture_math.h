// Math shared by the texture and antialias kernels (host code today; written to compile for devices too).
//
// The formulas are those of renderers/mesh/_ref_texture.py (the torch twin), in the same float32 operation order,
// so both produce the same discrete decisions (texel indices, mip levels, chosen edges) on the same inputs.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#ifdef __CUDACC__
#define MT_HD __host__ __device__ __forceinline__
#else
#define MT_HD inline
#endif

namespace mt {

enum Filter : int { kNearest = 0, kLinear = 1, kTrilinear = 2 };
enum Boundary : int { kWrap = 0, kClamp = 1 };

// Antialias constants, see _ref_texture.AA_CROSS_EPS / AA_GRAD_EPS.
constexpr float kCrossEps = 1.f / 16.f;
constexpr float kGradEps = 1e-3f;

// ------------------------------------------------------------------------------------------------------------
// Texture sampling

// One bilinear footprint: four flat texel indices (camera offset included) and the fractional position.
struct Bilinear {
  int64_t t00, t10, t01, t11;  // (x0, y0), (x1, y0), (x0, y1), (x1, y1)
  float fx, fy;
};

// After the wrap's u - floor(u), indices lie in [-1, n]: one conditional add / subtract (the modulo is a fallback).
MT_HD int wrap_index(int64_t i, int n) {
  if (i < 0) i += n;
  else if (i >= n) i -= n;
  if (i < 0 || i >= n) {
    i %= n;
    if (i < 0) i += n;
  }
  return (int)i;
}

MT_HD int clamp_index(int64_t i, int n) { return (int)std::min<int64_t>(std::max<int64_t>(i, 0), n - 1); }

// Texel centers at (j + 0.5) / w; wrap takes the fractional part of u first (as nvdiffrast), clamp clamps indices.
MT_HD Bilinear bilinear_setup(float u, float v, int w, int h, int boundary, int64_t base) {
  if (boundary == kWrap) {
    u = u - std::floor(u);
    v = v - std::floor(v);
  }
  float x = u * (float)w - 0.5f;
  float y = v * (float)h - 0.5f;
  if (boundary == kClamp) {  // beyond one texel outside nothing changes; keeps the int conversion defined
    x = std::min(std::max(x, -1.f), (float)w);
    y = std::min(std::max(y, -1.f), (float)h);
  }
  const float x0f = std::floor(x), y0f = std::floor(y);
  const int64_t x0 = (int64_t)x0f, y0 = (int64_t)y0f;
  int j0, j1, i0, i1;
  if (boundary == kWrap) {
    j0 = wrap_index(x0, w), j1 = wrap_index(x0 + 1, w), i0 = wrap_index(y0, h), i1 = wrap_index(y0 + 1, h);
  } else {
    j0 = clamp_index(x0, w), j1 = clamp_index(x0 + 1, w), i0 = clamp_index(y0, h), i1 = clamp_index(y0 + 1, h);
  }
  Bilinear b;
  b.t00 = base + (int64_t)i0 * w + j0;
  b.t10 = base + (int64_t)i0 * w + j1;
  b.t01 = base + (int64_t)i1 * w + j0;
  b.t11 = base + (int64_t)i1 * w + j1;
  b.fx = x - x0f;
  b.fy = y - y0f;
  return b;
}

// Nearest texel floor(u w), clamped to the texture after the wrap.
MT_HD int64_t nearest_index(float u, float v, int w, int h, int boundary, int64_t base) {
  if (boundary == kWrap) {
    u = u - std::floor(u);
    v = v - std::floor(v);
  }
  const float xs = std::min(std::max(u * (float)w, -1.f), (float)w);
  const float ys = std::min(std::max(v * (float)h, -1.f), (float)h);
  const int j = clamp_index((int64_t)std::floor(xs), w), i = clamp_index((int64_t)std::floor(ys), h);
  return base + (int64_t)i * w + j;
}

// LOD from uv_da = (du/dx, du/dy, dv/dx, dv/dy): 0.5 log2 of the major eigenvalue of J^T J with J scaled by the
// base texture size (nvdiffrast's footprint), clamped to [0, max_level]; NaN -> 0.
MT_HD float mip_level(const float* da, int base_w, int base_h, int max_level) {
  const float dsdx = da[0] * (float)base_w, dsdy = da[1] * (float)base_w;
  const float dtdx = da[2] * (float)base_h, dtdy = da[3] * (float)base_h;
  const float A = dsdx * dsdx + dtdx * dtdx;
  const float B = dsdy * dsdy + dtdy * dtdy;
  const float C = dsdx * dsdy + dtdx * dtdy;
  const float l2b = 0.5f * (A + B);
  const float l2a = std::sqrt(0.25f * (A - B) * (A - B) + C * C);
  float f = 0.5f * std::log2(l2b + l2a);
  if (!(f > 0.f)) f = 0.f;
  if (f > (float)max_level) f = (float)max_level;
  return f;
}

// ------------------------------------------------------------------------------------------------------------
// Antialiasing

// Determinant of the rows (x, y, w) of three clip-space vertices [x, y, z, w]: its sign is the screen-space
// winding, valid for any signs of w (homogeneous).
MT_HD float det3(const float* p, const float* q, const float* r) {
  return p[0] * (q[1] * r[3] - q[3] * r[1]) - p[1] * (q[0] * r[3] - q[3] * r[0]) + p[3] * (q[0] * r[1] - q[1] * r[0]);
}

// Pixel-homogeneous coordinates of a clip vertex relative to the pixel center (cx, cy): (hx, hy, w) with
// hx / w = pixel x - cx. For a vertical pair (down = true) x and y are swapped so that the pair's axis is x.
struct HVert {
  float x, y, w;
};

MT_HD HVert to_pixel(const float* p, float xh, float yh, float cx, float cy, bool down) {
  const float hx = p[0] * xh + p[3] * (xh - cx);
  const float hy = p[1] * yh + p[3] * (yh - cy);
  return down ? HVert{hy, hx, p[3]} : HVert{hx, hy, p[3]};
}

// Where edge (a, b) crosses the axis y = 0: true with x = num / den when the homogeneous y changes sign along
// the edge and the crossing point is in front of the camera (w > 0 there).
MT_HD bool edge_crossing(const HVert& a, const HVert& b, float* num, float* den) {
  if ((a.y < 0.f) == (b.y < 0.f)) return false;
  *den = a.y * b.w - b.y * a.w;
  if (!(*den * (a.y - b.y) > 0.f)) return false;
  *num = a.y * b.x - b.y * a.x;
  return true;
}

}  // namespace mt
