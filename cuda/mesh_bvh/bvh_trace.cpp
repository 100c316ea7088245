// BVH traversal: closest hit (children visited nearest first, farther ones culled against the current hit) and
// any hit (same order, stops at the first triangle in [tmin, tmax]). Rays run in parallel in dynamic chunks.
#include "bvh.h"

namespace mesh_bvh {

namespace {

constexpr int64_t kChunk = 1024;  // rays per work item: ~0.1-1 ms, small enough to balance uneven rays

void check_rays(const at::Tensor& origins, const at::Tensor& dirs, const at::Tensor& tmin, const at::Tensor& tmax) {
  BVH_CHECK_FLOAT(origins, 3);
  BVH_CHECK_FLOAT(dirs, 3);
  const int64_t N = origins.size(0);
  TORCH_CHECK_VALUE(dirs.size(0) == N, "dirs must have shape [N, 3] with N=", N, ", got ", dirs.sizes());
  for (const auto* t : {&tmin, &tmax}) {
    const char* name = t == &tmin ? "tmin" : "tmax";
    TORCH_CHECK_VALUE(t->device().is_cpu() && t->scalar_type() == at::kDouble && t->is_contiguous(), name,
                      " must be a contiguous float64 CPU tensor");
    TORCH_CHECK_VALUE(t->dim() == 1 && (t->size(0) == N || t->size(0) == 1), name, " must have shape [N] with N=",
                      N, " or [1], got ", t->sizes());
  }
}

}  // namespace

template <bool kAnyHit>
void Bvh::trace(const Ray& ray, double tlo, double thi, double* t, int64_t* id, double* u, double* v) const {
  *t = INFINITY;
  *id = -1;
  if (nodes_.empty() || !ray.valid || !(tlo <= thi)) return;
  const Node4* nodes = nodes_.data();
  // Box-test distances are in units of the scaled direction (see make_ray). They never cull below thi: the
  // float bound is scaled up past the rounding of the double.
  const float flo = (float)(tlo * ray.scale);
  float fhi = (float)(thi * ray.scale) * kRobust;
  struct Entry {
    int32_t child, count;  // as in Node4: an inner node (count 0) or a leaf
    float tnear;
  } stack[kStackSize];
  int sp = 0;
  Entry cur{0, 0, flo};
  double best = thi;
  while (true) {
    if (cur.count > 0) {
      for (int32_t j = cur.child; j < cur.child + cur.count; ++j) {
        double tt, uu, vv;
        if (hit_triangle(&tris_[9 * (int64_t)j], ray, tlo, best, &tt, &uu, &vv)) {
          // Equal distances (a shared edge or vertex) go to the lowest triangle id, as in the torch reference.
          if (tt == best && *id >= 0 && ids_[j] > *id) continue;
          *t = tt;
          *id = ids_[j];
          if (kAnyHit) return;
          *u = uu;
          *v = vv;
          best = tt;
          fhi = (float)(best * ray.scale) * kRobust;
        }
      }
    } else {
      const Node4& n = nodes[cur.child];
      alignas(16) float tn[4];
      int mask = hit_node4(n, ray, flo, fhi, tn);
      if (mask != 0) {
        Entry hits[4];
        int m = 0;
        while (mask) {
          const int l = __builtin_ctz(mask);
          mask &= mask - 1;
          hits[m++] = {n.child[l], n.count[l], tn[l]};
        }
        // Nearest first (also for any hit: on closed meshes the nearest box most likely holds a hit): sorted
        // by decreasing distance, the nearest is taken now and the rest pushed.
        for (int a = 1; a < m; ++a)
          for (int b = a; b > 0 && hits[b].tnear > hits[b - 1].tnear; --b) std::swap(hits[b], hits[b - 1]);
        for (int a = 0; a < m - 1; ++a) stack[sp++] = hits[a];
        cur = hits[m - 1];
        continue;
      }
    }
    // Pop the next subtree that may still hold a closer hit.
    do {
      if (sp == 0) return;
      cur = stack[--sp];
    } while (cur.tnear > fhi);
  }
}

std::vector<at::Tensor> Bvh::closest_hit(const at::Tensor& origins, const at::Tensor& dirs, const at::Tensor& tmin,
                                         const at::Tensor& tmax) const {
  check_rays(origins, dirs, tmin, tmax);
  const int64_t N = origins.size(0);
  auto t_out = at::empty({N}, origins.options());
  auto id_out = at::empty({N}, origins.options().dtype(at::kLong));
  auto uv_out = at::empty({N, 2}, origins.options());
  const float* o = origins.data_ptr<float>();
  const float* d = dirs.data_ptr<float>();
  const double* lo = tmin.data_ptr<double>();
  const double* hi = tmax.data_ptr<double>();
  const int64_t slo = tmin.size(0) == 1 ? 0 : 1, shi = tmax.size(0) == 1 ? 0 : 1;
  float* tp = t_out.data_ptr<float>();
  int64_t* ip = id_out.data_ptr<int64_t>();
  float* up = uv_out.data_ptr<float>();
  parallel_chunks(N, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Ray ray = make_ray(o + 3 * i, d + 3 * i);
      double t, u = 0.0, v = 0.0;
      int64_t id;
      trace<false>(ray, lo[slo * i], hi[shi * i], &t, &id, &u, &v);
      tp[i] = (float)t;
      ip[i] = id;
      up[2 * i] = id >= 0 ? (float)u : 0.f;
      up[2 * i + 1] = id >= 0 ? (float)v : 0.f;
    }
  });
  return {t_out, id_out, uv_out};
}

at::Tensor Bvh::any_hit(const at::Tensor& origins, const at::Tensor& dirs, const at::Tensor& tmin,
                        const at::Tensor& tmax) const {
  check_rays(origins, dirs, tmin, tmax);
  const int64_t N = origins.size(0);
  auto out = at::empty({N}, origins.options().dtype(at::kBool));
  const float* o = origins.data_ptr<float>();
  const float* d = dirs.data_ptr<float>();
  const double* lo = tmin.data_ptr<double>();
  const double* hi = tmax.data_ptr<double>();
  const int64_t slo = tmin.size(0) == 1 ? 0 : 1, shi = tmax.size(0) == 1 ? 0 : 1;
  bool* hp = out.data_ptr<bool>();
  parallel_chunks(N, kChunk, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const Ray ray = make_ray(o + 3 * i, d + 3 * i);
      double t, u, v;
      int64_t id;
      trace<true>(ray, lo[slo * i], hi[shi * i], &t, &id, &u, &v);
      hp[i] = id >= 0;
    }
  });
  return out;
}

}  // namespace mesh_bvh
