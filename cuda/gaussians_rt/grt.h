// Ray casting of 3D Gaussians on the CPU: a BVH over the Gaussians' bounding ellipsoids and ordered compositing
// of their 3D responses along each ray (renderers/gaussians/raycast.py documents the model).
//
// A Gaussian (mean mu, rotation R from its unit quaternion, scales s, opacity o) seen from a ray x(t) = orig + t d
// is evaluated at the point of its maximum response along the ray, as 3DGRT does. In the Gaussian's canonical
// frame (M = S^-1 R^T), p = M (orig - mu), q = M d:
//   t* = -(p.q) / (q.q),   x* = p + t* q,   m2 = |x*|^2,   alpha = min(0.99, o exp(-m2 / 2)).
// A hit counts when tmin <= t* <= tmax and o exp(-m2 / 2) >= 1/255 (the rasterizer's rule); hits are composited
// front to back in order of (key, id) -- key = (mu - o).d / |d|^2 ("center") or t* ("hit") -- stopping before the hit that would take the transmittance below 1e-4 (the
// rasterizer's rule). alpha >= 1/255 <=> m2 <= 2 ln(255 o), i.e. the ray meets the ellipsoid of that radius in
// sigma units, whose box is what the BVH holds; t* lies inside that ellipsoid, hence inside every box on the way
// to it, which is what makes the ordered traversal exact.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <mutex>
#include <vector>

#include "../gaussians/gs_math.h"
#include "../mesh_bvh/bvh.h"  // make_ray, kRobust, parallel_chunks, kMaxSahDepth

// cols: 0 for a vector [rows], -1 for any [rows, D], else [rows, cols].
#define GRT_CHECK(x, rows, cols)                                                                          \
  TORCH_CHECK_VALUE((x).device().is_cpu(), #x " must be a CPU tensor");                                   \
  TORCH_CHECK_VALUE((x).scalar_type() == at::kFloat, #x " must be float32, got ", (x).scalar_type());     \
  TORCH_CHECK_VALUE((x).is_contiguous(), #x " must be contiguous");                                       \
  TORCH_CHECK_VALUE((x).dim() == ((cols) == 0 ? 1 : 2) && (x).size(0) == (rows) &&                         \
                        ((cols) <= 0 || (x).size(1) == (cols)),                                           \
                    #x " has the wrong shape ", (x).sizes())

namespace grt {

// Binary BVH node: a leaf holds `count` > 0 primitives starting at `first`; an inner node (count 0) has its
// children at `first` and `first + 1`. lo/hi bound the Gaussians' alpha = 1/255 ellipsoids (what a ray must
// enter to hit one), clo/chi their centers (what bounds the "center" ordering key from below).
struct alignas(64) Node {
  float lo[3], hi[3];
  float clo[3], chi[3];
  int32_t first, count;
};

// Order of compositing along a ray: by the Gaussians' centers projected on the ray, (mu - o).d / |d|^2, as the
// rasterizer orders by center depth; or by t*, the point of maximum response.
enum Order : int { kCenter = 0, kHit = 1 };

// A Gaussian as the traversal needs it, stored in leaf order for locality.
struct alignas(64) Prim {
  float M[9];  // S^-1 R^T, row major
  float mu[3];
  float opacity;
  float k2;      // 2 ln(opacity * 255): hits need m2 <= k2
  float radius;  // bounding sphere of the alpha = 1/255 ellipsoid (around mu)
  int32_t id;    // index into the caller's arrays
};
static_assert(sizeof(Prim) == 64, "Prim must stay one cache line");

// The visibility tree (Bvh::build_visibility_tree), which only the transmittance queries use: eight-wide nodes
// whose lanes are an inner node (count 0), a leaf block (count > 0: its index into blocks_) or unused (count -1),
// tested with one eight-wide slab test.
struct alignas(32) Node8 {
  float lo[3][8], hi[3][8];
  int32_t child[8], count[8];
};

// Up to eight Gaussians of one leaf, structure of arrays (unused lanes have k2 = -1: never hit).
struct alignas(32) Block8 {
  float M[9][8], mu[3][8], k2[8], opacity[8];
};

// A hit waiting in the traversal's queue, ordered by (t, id).
struct Pending {
  float key, t, alpha_raw;
  int32_t id, prim;  // caller's index, index into prims_
  bool operator>(const Pending& o) const { return key > o.key || (key == o.key && id > o.id); }
};

// One composited hit (recorded by the backward pass's replay of the forward traversal).
struct Hit {
  float key, t, alpha, alpha_raw, T;  // T: transmittance before this hit
  int32_t prim;
};

struct StackEntry {
  int32_t node;
  float bound, below;  // lower bound of the node's keys; min bound of this and every entry under it
};

struct Scratch {
  std::vector<StackEntry> stack;
  std::vector<int32_t> nodes;                    // packet traversal stack
  std::vector<std::pair<float, int32_t>> cands;  // packet candidates: (lower bound of the key, prim)
  std::vector<float> soa;                        // their M, mu and k2, structure of arrays
  std::vector<Pending> pending;  // sorted by decreasing (key, id): the next hit to composite is at the back
  std::vector<Hit> hits;
};

struct Response {
  float t, m2, alpha_raw, x[3];
};

// Returns false (r partly filled) when the ray misses the alpha = 1/255 ellipsoid; alpha_raw is set on a hit.
inline bool respond(const Prim& g, const float* o, const float* d, Response& r) {
  float po[3], p[3], q[3];
  for (int k = 0; k < 3; ++k) po[k] = o[k] - g.mu[k];
  for (int i = 0; i < 3; ++i) {
    p[i] = g.M[i * 3] * po[0] + g.M[i * 3 + 1] * po[1] + g.M[i * 3 + 2] * po[2];
    q[i] = g.M[i * 3] * d[0] + g.M[i * 3 + 1] * d[1] + g.M[i * 3 + 2] * d[2];
  }
  const float a = q[0] * q[0] + q[1] * q[1] + q[2] * q[2];
  const float b = p[0] * q[0] + p[1] * q[1] + p[2] * q[2];
  r.t = a > 0.f ? -b / a : 0.f;
  for (int k = 0; k < 3; ++k) r.x[k] = p[k] + r.t * q[k];
  r.m2 = r.x[0] * r.x[0] + r.x[1] * r.x[1] + r.x[2] * r.x[2];
  if (!(r.m2 <= g.k2)) return false;
  r.alpha_raw = g.opacity * std::exp(-0.5f * r.m2);
  return r.alpha_raw >= gs::kAlphaMin;
}

class Bvh {
 public:
  Bvh(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
      int64_t leaf_size);

  // -> [features [R, D], alpha [R], depth [R] (sum of w key), final_T [R], n_hits [R] int32,
  //     hit_prims [H] int32 (the composited hits, ray after ray), offsets [R + 1] int64 (into hit_prims)]
  std::vector<at::Tensor> trace(const at::Tensor& origins, const at::Tensor& dirs, double tmin, double tmax,
                                const at::Tensor& colors, int64_t order, int64_t packet) const;
  // -> [v_means [N,3], v_quats [N,4], v_scales [N,3], v_opacities [N], v_colors [N,D]]
  std::vector<at::Tensor> trace_backward(const at::Tensor& origins, const at::Tensor& dirs, double tmin, double tmax,
                                         const at::Tensor& colors, int64_t order, const at::Tensor& final_T,
                                         const at::Tensor& hit_prims, const at::Tensor& offsets,
                                         const at::Tensor& v_features, const at::Tensor& v_alpha,
                                         const at::Tensor& v_depth) const;
  // Transmittance [R] along each ray through every hit in [tmin, tmax] (order-free product; stops below 1e-4
  // and returns 0 there).
  at::Tensor transmittance(const at::Tensor& origins, const at::Tensor& dirs, double tmin, double tmax) const;

  int64_t num_nodes() const { return (int64_t)nodes_.size(); }
  int64_t num_prims() const { return (int64_t)prims_.size(); }
  int64_t depth() const { return depth_; }

 private:
  template <typename Visit>
  void ordered(const float* o, const float* d, float tmin, float tmax, Order order, Scratch& s,
               Visit&& visit) const;
  template <typename Visit>
  void scan(const float* o, const float* d, float tmin, float tmax, Order order, Scratch& s, Visit&& visit) const;
  bool gather(const float* o, const float* dirs, int64_t count, Order order, Scratch& s) const;
  void check_rays(const at::Tensor& origins, const at::Tensor& dirs) const;

  // The transmittance queries' tree, built on their first call: the Gaussians again, in an eight-wide tree
  // whose leaves (Block8) test up to eight at once.
  void build_visibility_tree() const;

  int64_t n_;
  std::vector<Node> nodes_;
  mutable std::vector<Node8> nodes8_;
  mutable std::vector<Block8> blocks_;
  mutable std::once_flag visibility_once_;
  std::vector<Prim> prims_;
  at::Tensor means_, quats_, scales_;  // the inputs, for the backward pass
  int64_t depth_ = 0;
};

}  // namespace grt
