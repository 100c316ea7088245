// BVH over a triangle mesh for CPU ray casting: node layout, the ray-box and watertight ray-triangle tests.
//
// Layout (built by bvh.cpp, traversed by bvh_trace.cpp):
// * nodes_: a flat array of 4-wide nodes (128 bytes, two cache lines); node 0 is the root. Each holds the boxes of
//   up to four children in structure-of-arrays form, so one SIMD slab test checks all four. A child lane is an
//   inner node (count 0, child = node index), a leaf (count > 0 triangles starting at child in tris_) or empty
//   (count -1). The build makes a binary SAH tree first and collapses it to four-wide nodes (Wald et al. 2008,
//   "Getting rid of packets"; Embree's BVH4 layout), which halves the depth and the number of nodes visited.
// * tris_: the non-degenerate triangles' vertex positions in leaf order, 9 floats each (p0, p1, p2), and ids_
//   their indices into the caller's faces array. Degenerate triangles (see is_degenerate) are left out at build
//   time, so they can never be hit.
//
// Intersection: the watertight test of Woop, Benthin and Wald (JCGT 2013) evaluated in double precision on the
// float32 inputs. A shared edge yields bit-identical, opposite-signed edge functions in both triangles, so rays
// through shared edges or vertices cannot pass between two triangles. Box tests are float32 with the
// conservative far-distance scaling of Ize ("Robust BVH Ray Traversal", JCGT 2013) so rounding never culls a hit.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#if defined(__SSE2__)
#include <immintrin.h>
#endif

#define BVH_CHECK_FLOAT(x, cols)                                                                          \
  TORCH_CHECK_VALUE((x).device().is_cpu(), #x " must be a CPU tensor");                                   \
  TORCH_CHECK_VALUE((x).scalar_type() == at::kFloat, #x " must be float32, got ", (x).scalar_type());     \
  TORCH_CHECK_VALUE((x).is_contiguous(), #x " must be contiguous");                                       \
  TORCH_CHECK_VALUE((x).dim() == 2 && (x).size(1) == (cols), #x " must have shape [N, " #cols "], got ", \
                    (x).sizes())

namespace mesh_bvh {

struct alignas(64) Node4 {
  float lo[3][4];    // lo[axis][lane]
  float hi[3][4];
  int32_t child[4];  // inner: node index; leaf: first triangle in tris_
  int32_t count[4];  // inner: 0; leaf: number of triangles; empty lane: -1
};
static_assert(sizeof(Node4) == 128, "Node4 must stay 128 bytes");

// The binary build switches to median splits below depth kMaxSahDepth, so its depth stays below
// kMaxSahDepth + 32 for any mesh of fewer than 2^31 triangles. The traversal pushes at most 3 entries per
// four-wide level, and a four-wide level spans at least one binary level.
constexpr int kMaxSahDepth = 64;
constexpr int kStackSize = 3 * (kMaxSahDepth + 32) + 4;

// A triangle whose height over its longest edge is below this is degenerate (zero area up to float32 rounding
// of its vertices) and never hit. The torch reference (renderers/mesh/raycast.py) uses the same rule.
constexpr double kDegenerateRel = 1e-7;

inline bool is_degenerate(const float* p0, const float* p1, const float* p2) {
  double e1[3], e2[3], e3[3];
  for (int k = 0; k < 3; ++k) {
    e1[k] = (double)p1[k] - p0[k];
    e2[k] = (double)p2[k] - p0[k];
    e3[k] = (double)p2[k] - p1[k];
  }
  const double cx = e1[1] * e2[2] - e1[2] * e2[1], cy = e1[2] * e2[0] - e1[0] * e2[2],
               cz = e1[0] * e2[1] - e1[1] * e2[0];
  const double cross2 = cx * cx + cy * cy + cz * cz;
  auto n2 = [](const double* e) { return e[0] * e[0] + e[1] * e[1] + e[2] * e[2]; };
  const double l2 = std::max({n2(e1), n2(e2), n2(e3)});
  // |cross| = longest edge * height; degenerate when height <= kDegenerateRel * longest edge.
  return !(cross2 > kDegenerateRel * kDegenerateRel * l2 * l2);
}

// Per-ray constants of both tests. A ray with a zero direction is invalid and misses.
// The box tests run on the direction scaled to a largest component of 1, so their distances are t * scale: with
// the raw direction, the reciprocal of a very small (but valid) direction would overflow float32.
struct Ray {
  float o[3], inv[3];  // float32 origin and reciprocal scaled direction for the box tests
  double od[3];
  double scale;       // largest |component| of the direction
  double sx, sy, sz;  // shear constants of the watertight test
  int kx, ky, kz;
  bool valid;
};

inline Ray make_ray(const float* o, const float* d) {
  Ray r;
  int kz = 0;
  double ad[3];
  for (int k = 0; k < 3; ++k) {
    r.o[k] = o[k];
    r.od[k] = o[k];
    ad[k] = std::fabs((double)d[k]);
  }
  if (ad[1] > ad[kz]) kz = 1;
  if (ad[2] > ad[kz]) kz = 2;
  r.valid = ad[kz] > 0.0;
  r.scale = r.valid ? ad[kz] : 1.0;
  for (int k = 0; k < 3; ++k) {
    // A zero component would make (lo - o) * inf = NaN when the origin lies on a slab plane; a tiny stand-in
    // gives the right sign (inside / outside the slab) without NaN.
    const float dk = (float)(d[k] / r.scale);
    r.inv[k] = 1.f / (std::fabs(dk) < 1e-30f ? std::copysign(1e-30f, dk) : dk);
  }
  r.kz = kz;
  r.kx = (kz + 1) % 3;
  r.ky = (kz + 2) % 3;
  const double dz = r.valid ? (double)d[kz] : 1.0;
  r.sx = d[r.kx] / dz;
  r.sy = d[r.ky] / dz;
  r.sz = 1.0 / dz;
  return r;
}

// Ize's bound on the relative error of a float32 slab distance: 1 + 2 * gamma(3).
constexpr float kRobust = 1.0f + 2.0f * (3.0f * 0x1p-24f) / (1.0f - 3.0f * 0x1p-24f);

// Slab test of the four children of n clipped to [tlo, thi]: returns the bit mask of the lanes hit and writes
// their entry distances to tnear[4].
inline int hit_node4(const Node4& n, const Ray& r, float tlo, float thi, float* tnear) {
#if defined(__SSE2__)
  __m128 t0 = _mm_set1_ps(tlo), t1 = _mm_set1_ps(thi);
  const __m128 robust = _mm_set1_ps(kRobust);
  for (int k = 0; k < 3; ++k) {
    const __m128 o = _mm_set1_ps(r.o[k]), inv = _mm_set1_ps(r.inv[k]);
    const __m128 a = _mm_mul_ps(_mm_sub_ps(_mm_load_ps(n.lo[k]), o), inv);
    const __m128 b = _mm_mul_ps(_mm_sub_ps(_mm_load_ps(n.hi[k]), o), inv);
    t0 = _mm_max_ps(t0, _mm_min_ps(a, b));
    t1 = _mm_min_ps(t1, _mm_mul_ps(_mm_max_ps(a, b), robust));
  }
  _mm_storeu_ps(tnear, t0);
  const __m128i valid = _mm_cmpgt_epi32(_mm_load_si128((const __m128i*)n.count), _mm_set1_epi32(-1));
  return _mm_movemask_ps(_mm_and_ps(_mm_cmple_ps(t0, t1), _mm_castsi128_ps(valid)));
#else
  int mask = 0;
  for (int l = 0; l < 4; ++l) {
    float t0 = tlo, t1 = thi;
    for (int k = 0; k < 3; ++k) {
      const float a = (n.lo[k][l] - r.o[k]) * r.inv[k];
      const float b = (n.hi[k][l] - r.o[k]) * r.inv[k];
      t0 = std::max(t0, std::min(a, b));
      t1 = std::min(t1, std::max(a, b) * kRobust);
    }
    tnear[l] = t0;
    mask |= (t0 <= t1 && n.count[l] >= 0) << l;
  }
  return mask;
#endif
}

// 2D edge function of the segment p -> q at the origin, qx py - qy px. The two triangles sharing an edge traverse
// it in opposite directions (or, with inconsistent winding, in the same one); evaluating the products always with
// the endpoints in one canonical order makes their values exactly opposite (or equal) even where the compiler
// fuses a product into an FMA (GCC does by default), which is what makes the test watertight.
inline double edge_function(double px, double py, double qx, double qy) {
  const bool flip = qx < px || (qx == px && qy < py);
  const double fx = flip ? qx : px, fy = flip ? qy : py, sx = flip ? px : qx, sy = flip ? py : qy;
  const double e = sx * fy - sy * fx;
  return flip ? -e : e;
}

// Watertight ray-triangle test (both windings). On a hit with tlo <= t <= thi returns true with t and the
// barycentrics (u, v) of p0 and p1 (point = u p0 + v p1 + (1 - u - v) p2).
inline bool hit_triangle(const float* tri, const Ray& r, double tlo, double thi, double* t, double* u, double* v) {
  double a[3], b[3], c[3];
  for (int k = 0; k < 3; ++k) {
    a[k] = (double)tri[k] - r.od[k];
    b[k] = (double)tri[3 + k] - r.od[k];
    c[k] = (double)tri[6 + k] - r.od[k];
  }
  const int kx = r.kx, ky = r.ky, kz = r.kz;
  const double ax = a[kx] - r.sx * a[kz], ay = a[ky] - r.sy * a[kz];
  const double bx = b[kx] - r.sx * b[kz], by = b[ky] - r.sy * b[kz];
  const double cx = c[kx] - r.sx * c[kz], cy = c[ky] - r.sy * c[kz];
  const double U = edge_function(bx, by, cx, cy);  // cx by - cy bx: weight of p0
  const double V = edge_function(cx, cy, ax, ay);  // ax cy - ay cx: weight of p1
  const double W = edge_function(ax, ay, bx, by);  // bx ay - by ax: weight of p2
  if ((U < 0.0 || V < 0.0 || W < 0.0) && (U > 0.0 || V > 0.0 || W > 0.0)) return false;
  const double det = U + V + W;
  if (det == 0.0) return false;  // edge-on ray
  const double T = r.sz * (U * a[kz] + V * b[kz] + W * c[kz]);
  const double tt = T / det;
  if (!(tt >= tlo && tt <= thi)) return false;
  *t = tt;
  *u = U / det;
  *v = V / det;
  return true;
}

// Runs fn(begin, end) over [0, n) in chunks handed out dynamically to torch's intra-op (OpenMP) threads, so
// threads that get cheap rays (misses) keep taking work; small inputs run on the calling thread.
template <typename Fn>
void parallel_chunks(int64_t n, int64_t chunk, Fn&& fn) {
  if (n <= 0) return;
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  if (n_chunks <= 1 || at::get_num_threads() <= 1) {
    fn(0, n);
    return;
  }
  const int64_t n_workers = std::min<int64_t>(at::get_num_threads(), n_chunks);
  std::atomic<int64_t> next{0};
  at::parallel_for(0, n_workers, 1, [&](int64_t wbegin, int64_t wend) {
    for (int64_t w = wbegin; w < wend; ++w)
      for (int64_t c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1))
        fn(c * chunk, std::min(n, (c + 1) * chunk));
  });
}

// The BVH of one mesh, built once in the constructor; the query methods are const and thread-safe.
class Bvh {
 public:
  // vertices [V, 3] float32, faces [F, 3] int64 (values in [0, V)); bins: SAH bins per axis; max_leaf: most
  // triangles per leaf.
  Bvh(const at::Tensor& vertices, const at::Tensor& faces, int64_t bins, int64_t max_leaf);

  // origins, dirs [N, 3] float32; tmin, tmax float64 [N] or [1] (broadcast). Returns t [N] float32 (inf on miss),
  // tri_id [N] int64 (-1 on miss), uv [N, 2] float32 (0 on miss).
  std::vector<at::Tensor> closest_hit(const at::Tensor& origins, const at::Tensor& dirs, const at::Tensor& tmin,
                                      const at::Tensor& tmax) const;
  // Same inputs; bool [N]: some triangle is hit with tmin <= t <= tmax.
  at::Tensor any_hit(const at::Tensor& origins, const at::Tensor& dirs, const at::Tensor& tmin,
                     const at::Tensor& tmax) const;

  int64_t num_nodes() const { return (int64_t)nodes_.size(); }  // four-wide nodes
  int64_t num_triangles() const { return (int64_t)ids_.size(); }  // non-degenerate triangles in the tree
  int64_t depth() const { return depth_; }  // of the binary tree before collapsing
  // Nodes as an [num_nodes, 32] float32 copy (lo, hi as [3][4], then child and count bits), for inspection.
  at::Tensor nodes_tensor() const;
  at::Tensor triangle_ids() const;  // [num_triangles] int64, leaf order

 private:
  template <bool kAnyHit>
  void trace(const Ray& ray, double tlo, double thi, double* t, int64_t* id, double* u, double* v) const;

  std::vector<Node4> nodes_;
  std::vector<float> tris_;
  std::vector<int64_t> ids_;
  int64_t depth_ = 0;
  friend struct Builder;
};

}  // namespace mesh_bvh
