// Math of the mesh rasterizer shared by the forward and backward kernels (see docs/mesh.md and the torch twin
// renderers/mesh/_ref.py, which spells out the same formulas).
//
// Pixel-homogeneous vertices: clip (x, y, z, w) -> q = ((x + w) W / 2, (y + w) H / 2, w), so q.xy / q.w is the
// position in pixels (pixel centers at +0.5). 2D homogeneous rasterization (Olano & Greer 1997): at the pixel
// center p = (X, Y, 1) the edge functions e_i = (q_j x q_k) . p ((i, j, k) cyclic) are adj([q0 q1 q2]) p, the
// perspective-correct barycentrics are e / sum(e) and the clip w of the point is det / sum(e). A pixel is covered
// when every e_i has the sign of det (inside and in front of the camera, for both windings and for triangles
// crossing w = 0); det = 0 covers nothing. ndc_z = sum(e_i z_i) / sum(e_i w_i) is affine in (X, Y).
// Everything here runs in double: it serves the rare triangles crossing w = 0 (bbox by clipping) and the backward
// pass (per-pixel gradients), where it costs little and matches the float64 reference closely.
#pragma once

#include <algorithm>
#include <cmath>

namespace mr {

struct Vec3 {
  double x, y, z;
};

inline Vec3 cross(const Vec3& a, const Vec3& b) {
  return {a.y * b.z - a.z * b.y, a.z * b.x - a.x * b.z, a.x * b.y - a.y * b.x};
}
inline double dot(const Vec3& a, const Vec3& b) { return a.x * b.x + a.y * b.y + a.z * b.z; }

// Bounding boxes are widened by this many pixels; the edge and depth tests decide coverage exactly.
constexpr double kBBoxMargin = 1e-3;

inline Vec3 pixel_homogeneous(const float* clip, double half_w, double half_h) {
  const double w = clip[3];
  return {(clip[0] + w) * half_w, (clip[1] + w) * half_h, w};
}

// Inclusive pixel bbox of a triangle (x1 < x0 or y1 < y0: empty).
struct PixBox {
  int x0, y0, x1, y1;
};

// Inclusive pixel range whose centers (i + 0.5) lie in [lo, hi] (widened by kBBoxMargin), clamped to [0, n - 1].
inline void pixel_range(double lo, double hi, int n, int* i0, int* i1) {
  lo = std::max(std::ceil(lo - 0.5 - kBBoxMargin), 0.0);
  hi = std::min(std::floor(hi - 0.5 + kBBoxMargin), (double)(n - 1));
  *i0 = lo > n ? n : (int)lo;
  *i1 = hi < -1 ? -1 : (int)hi;
}

// Clips the polygon (clip-space x, y, z, w rows) against the half-space a z + w >= 0 (a = +-1): Sutherland-Hodgman.
inline int clip_polygon(const double (*in)[4], int n, double a, double (*out)[4]) {
  int m = 0;
  for (int i = 0; i < n; ++i) {
    const double* p = in[i];
    const double* q = in[(i + 1) % n];
    const double dp = a * p[2] + p[3], dq = a * q[2] + q[3];
    if (dp >= 0) std::copy(p, p + 4, out[m++]);
    if ((dp >= 0) != (dq >= 0)) {
      const double t = dp / (dp - dq);
      for (int k = 0; k < 4; ++k) out[m][k] = p[k] + t * (q[k] - p[k]);
      ++m;
    }
  }
  return m;
}

// Pixel bbox of the part of the triangle with -w <= z <= w (the only part that can cover pixels: those conditions
// imply w >= 0). Triangles with every w > 0 use their projected vertices (the common case, kept cheap); the others
// are clipped first. Returns false when nothing can be visible (then b is unspecified).
inline bool triangle_bbox(const float* const p[3], int H, int W, PixBox* b) {
  const bool all_front = p[0][3] > 0 && p[1][3] > 0 && p[2][3] > 0;
  if ((p[0][2] > p[0][3] && p[1][2] > p[1][3] && p[2][2] > p[2][3]) ||
      (p[0][2] < -p[0][3] && p[1][2] < -p[1][3] && p[2][2] < -p[2][3]))
    return false;  // beyond the far plane or in front of the near plane
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  if (all_front) {
    for (int i = 0; i < 3; ++i) {
      const double inv_w = 1.0 / p[i][3];
      const double X = (p[i][0] * inv_w + 1.0) * 0.5 * W, Y = (p[i][1] * inv_w + 1.0) * 0.5 * H;
      xmin = std::min(xmin, X), xmax = std::max(xmax, X), ymin = std::min(ymin, Y), ymax = std::max(ymax, Y);
    }
  } else {
    double poly[9][4], tmp[9][4];
    for (int i = 0; i < 3; ++i)
      for (int k = 0; k < 4; ++k) poly[i][k] = p[i][k];
    int n = clip_polygon(poly, 3, 1.0, tmp);
    n = clip_polygon(tmp, n, -1.0, poly);
    if (n == 0) return false;
    for (int i = 0; i < n; ++i) {
      const double w = poly[i][3];
      if (!(w > 0)) {  // a vertex at w = z = 0 projects to infinity: the whole image
        xmin = ymin = -INFINITY;
        xmax = ymax = INFINITY;
        break;
      }
      const double X = (poly[i][0] / w + 1.0) * 0.5 * W, Y = (poly[i][1] / w + 1.0) * 0.5 * H;
      xmin = std::min(xmin, X), xmax = std::max(xmax, X), ymin = std::min(ymin, Y), ymax = std::max(ymax, Y);
    }
  }
  if (!(xmin <= xmax && ymin <= ymax)) return false;  // NaN
  pixel_range(xmin, xmax, W, &b->x0, &b->x1);
  pixel_range(ymin, ymax, H, &b->y0, &b->y1);
  return b->x0 <= b->x1 && b->y0 <= b->y1;
}

// Vector-Jacobian product of (u, v, ndc_z) at the pixel center (X, Y) w.r.t. the clip vertices p[0..2]:
// g[i][0..3] = dL/d(x, y, z, w)_i for upstream (gu, gv, gz).
inline void raster_vjp(const float* const p[3], double X, double Y, int H, int W, double gu, double gv, double gz,
                       double g[3][4]) {
  const double hw = 0.5 * W, hh = 0.5 * H;
  const Vec3 q[3] = {pixel_homogeneous(p[0], hw, hh), pixel_homogeneous(p[1], hw, hh),
                     pixel_homogeneous(p[2], hw, hh)};
  const Vec3 P{X, Y, 1.0};
  double e[3], S = 0, N = 0, D = 0;
  for (int i = 0; i < 3; ++i) {
    e[i] = dot(cross(q[(i + 1) % 3], q[(i + 2) % 3]), P);
    S += e[i], N += e[i] * p[i][2], D += e[i] * p[i][3];
  }
  const double u = e[0] / S, v = e[1] / S, zn = N / D;
  const double common = (gu * u + gv * v) / S;
  Vec3 gq[3] = {{0, 0, 0}, {0, 0, 0}, {0, 0, 0}};
  for (int i = 0; i < 3; ++i) {
    const double ge = ((i == 0 ? gu : 0.0) + (i == 1 ? gv : 0.0)) / S - common + gz * (p[i][2] - zn * p[i][3]) / D;
    const int j = (i + 1) % 3, k = (i + 2) % 3;
    // e_i = q_j . (q_k x P) = q_k . (P x q_j)
    const Vec3 dj = cross(q[k], P), dk = cross(P, q[j]);
    gq[j] = {gq[j].x + ge * dj.x, gq[j].y + ge * dj.y, gq[j].z + ge * dj.z};
    gq[k] = {gq[k].x + ge * dk.x, gq[k].y + ge * dk.y, gq[k].z + ge * dk.z};
  }
  for (int i = 0; i < 3; ++i) {
    g[i][0] = gq[i].x * hw;
    g[i][1] = gq[i].y * hh;
    g[i][2] = gz * e[i] / D;
    g[i][3] = gq[i].x * hw + gq[i].y * hh + gq[i].z - gz * zn * e[i] / D;
  }
}

}  // namespace mr
