// Traversal of the Gaussian BVH (see grt.h): ordered compositing forward and backward, and transmittance.
//
// Ordered traversal: depth first, nearer child first; every stack entry carries a lower bound of the ordering
// keys below it ("hit": the box entry distance; "center": the support of the node's box of centers along the
// ray) and the minimum of the bounds under it. A pending hit whose key is at most that minimum can no longer be
// preceded by an unseen hit, so it is composited right away: exact (key, id) order, and a ray stops as soon as
// its transmittance is spent, without gathering every hit first. The backward pass reads the hits the forward
// pass recorded.
#include <algorithm>
#include <functional>
#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#endif

#include "grt.h"

namespace grt {

namespace {

struct RayBox {
  float o[3], inv[3];
};

inline RayBox make_raybox(const float* o, const float* d) {
  RayBox r;
  for (int k = 0; k < 3; ++k) {
    r.o[k] = o[k];
    // A zero component would give (lo - o) * inf = NaN on a slab plane; a tiny stand-in keeps the sign.
    r.inv[k] = 1.f / (std::fabs(d[k]) < 1e-30f ? std::copysign(1e-30f, d[k]) : d[k]);
  }
  return r;
}

// Entry distance of the ray into the box clipped to [tmin, tmax]; false on a miss.
inline bool enter(const Node& n, const RayBox& r, float tmin, float tmax, float* tn) {
  float t0 = tmin, t1 = tmax;
  for (int k = 0; k < 3; ++k) {
    const float a = (n.lo[k] - r.o[k]) * r.inv[k], b = (n.hi[k] - r.o[k]) * r.inv[k];
    t0 = std::max(t0, std::min(a, b));
    t1 = std::min(t1, std::max(a, b) * 1.000001f + 1e-30f);
  }
  *tn = t0;
  return t0 <= t1;
}

inline float dot3(const float* a, const float* b) { return a[0] * b[0] + a[1] * b[1] + a[2] * b[2]; }

// Pending hits are kept sorted by decreasing (key, id), so the next one to composite is at the back.
inline void insert_pending(std::vector<Pending>& pending, const Pending& h) {
  pending.insert(std::upper_bound(pending.begin(), pending.end(), h, std::greater<Pending>()), h);
}

// Composite the pending hits with key <= upto, in order; false once visit() stops the ray.
template <typename Visit>
bool flush_pending(std::vector<Pending>& pending, float upto, Visit& visit) {
  while (!pending.empty() && pending.back().key <= upto) {
    const Pending h = pending.back();
    pending.pop_back();
    if (!visit(h)) return false;
  }
  return true;
}

}  // namespace

void Bvh::check_rays(const at::Tensor& origins, const at::Tensor& dirs) const {
  const int64_t R = origins.size(0);
  GRT_CHECK(origins, R, 3);
  GRT_CHECK(dirs, R, 3);
}

template <typename Visit>
void Bvh::ordered(const float* o, const float* d, float tmin, float tmax, Order order, Scratch& s,
                  Visit&& visit) const {
  auto& stack = s.stack;
  auto& pending = s.pending;
  stack.clear();
  pending.clear();
  if (prims_.empty()) return;
  const RayBox rb = make_raybox(o, d);
  const float dd = dot3(d, d);
  if (!(dd > 0.f)) return;
  const float idd = 1.f / dd;
  // Lower bound of the ordering key over everything under node n (tn: its box entry distance).
  // Keys are computed as (mu - o).d / |d|^2 (and t* from the canonical frame); the bounds subtract a relative
  // margin well above float32 rounding, so they never exceed a key they bound. A low bound only delays
  // compositing; it never changes which hits are composited or their order.
  auto bound = [&](const Node& n, float tn) {
    if (order == kHit) return tn - 1e-5f * std::fabs(tn) - 1e-30f;
    float m = 0.f, mag = 0.f;
    for (int k = 0; k < 3; ++k) {
      const float a = (n.clo[k] - o[k]) * d[k], b = (n.chi[k] - o[k]) * d[k];
      m += std::min(a, b);
      mag += std::max(std::fabs(a), std::fabs(b));
    }
    return (m - 1e-5f * mag) * idd;
  };
  auto push = [&](int32_t ni, float b) {
    const float below = stack.empty() ? b : std::min(b, stack.back().below);
    stack.push_back(StackEntry{ni, b, below});
  };
  auto flush = [&](float upto) { return flush_pending(pending, upto, visit); };
  float tn;
  if (enter(nodes_[0], rb, tmin, tmax, &tn)) push(0, bound(nodes_[0], tn));
  while (!stack.empty()) {
    const StackEntry e = stack.back();
    stack.pop_back();
    // No hit under a node still on the stack, or under this one, can come before `upto`.
    const float upto = stack.empty() ? e.bound : std::min(e.bound, stack.back().below);
    if (!flush(upto)) return;
    const Node& n = nodes_[e.node];
    if (n.count > 0) {
      for (int32_t k = n.first; k < n.first + n.count; ++k) {
        const Prim& g = prims_[k];
        Response r;
        if (!respond(g, o, d, r) || !(r.t >= tmin && r.t <= tmax)) continue;
        const float key = order == kHit ? r.t
                                        : ((g.mu[0] - o[0]) * d[0] + (g.mu[1] - o[1]) * d[1] +
                                           (g.mu[2] - o[2]) * d[2]) * idd;
        const Pending h{key, r.t, r.alpha_raw, g.id, k};
        insert_pending(pending, h);
      }
      continue;
    }
    float t0, t1;
    const Node &a = nodes_[n.first], &b = nodes_[n.first + 1];
    const bool ha = enter(a, rb, tmin, tmax, &t0), hb = enter(b, rb, tmin, tmax, &t1);
    const float ba = ha ? bound(a, t0) : 0.f, bb = hb ? bound(b, t1) : 0.f;
    // Nearer child on top of the stack.
    if (ha && hb) {
      if (ba <= bb) {
        push(n.first + 1, bb);
        push(n.first, ba);
      } else {
        push(n.first, ba);
        push(n.first + 1, bb);
      }
    } else if (ha) {
      push(n.first, ba);
    } else if (hb) {
      push(n.first + 1, bb);
    }
  }
  flush(INFINITY);
}

// Packets: rays that share an origin (a camera's pixel tile) lie in a cone around their mean direction. One
// traversal collects every Gaussian whose bounding sphere meets that cone (a superset of what any of the rays can
// hit), with a lower bound of its ordering key over the cone; each ray then scans the candidates in order of
// that bound, compositing a pending hit as soon as no later candidate can precede it. Same hits, same order as
// the single-ray traversal, a fraction of the box tests.
bool Bvh::gather(const float* o, const float* dirs, int64_t count, Order order, Scratch& s) const {
  float axis[3] = {0.f, 0.f, 0.f}, dmin = INFINITY, dmax = 0.f;
  for (int64_t i = 0; i < count; ++i) {
    const float* d = dirs + 3 * i;
    const float n = std::sqrt(dot3(d, d));
    if (!(n > 0.f) || !std::isfinite(n)) return false;
    dmin = std::min(dmin, n);
    dmax = std::max(dmax, n);
    for (int k = 0; k < 3; ++k) axis[k] += d[k] / n;
  }
  const float an = std::sqrt(dot3(axis, axis));
  if (!(an > 0.f)) return false;
  for (int k = 0; k < 3; ++k) axis[k] /= an;
  float cmin = 1.f;
  for (int64_t i = 0; i < count; ++i) {
    const float* d = dirs + 3 * i;
    cmin = std::min(cmin, dot3(d, axis) / std::sqrt(dot3(d, d)));
  }
  const float theta = std::acos(std::max(-1.f, std::min(1.f, cmin))) * 1.0001f + 1e-5f;
  if (theta > 0.5f) return false;  // not a coherent packet: trace the rays one by one
  const float cos_t = std::cos(theta), sin_t = std::sin(theta);
  // Does the sphere (center o + v, radius r) meet the cone? The angle phi between v and the axis must be at most
  // theta + asin(r / |v|); in cosines (all angles below pi): v.a >= cos(theta) sqrt(|v|^2 - r^2) - sin(theta) r.
  auto meets = [&](const float* v, float r) {
    const float d2 = dot3(v, v), r2 = r * r;
    if (d2 <= r2) return true;
    return dot3(v, axis) >= cos_t * std::sqrt(d2 - r2) - sin_t * r - 1e-6f * std::sqrt(d2);
  };
  auto& cands = s.cands;
  auto& stack = s.nodes;
  cands.clear();
  stack.assign(1, 0);
  while (!stack.empty()) {
    const Node& n = nodes_[stack.back()];
    stack.pop_back();
    float v[3], r2 = 0.f;
    for (int k = 0; k < 3; ++k) {
      v[k] = 0.5f * (n.lo[k] + n.hi[k]) - o[k];
      const float h = 0.5f * (n.hi[k] - n.lo[k]);
      r2 += h * h;
    }
    if (!(r2 >= 0.f) || !meets(v, std::sqrt(r2) * 1.0001f)) continue;
    if (n.count <= 0) {
      stack.push_back(n.first);
      stack.push_back(n.first + 1);
      continue;
    }
    for (int32_t k = n.first; k < n.first + n.count; ++k) {
      const Prim& g = prims_[k];
      float w[3];
      for (int j = 0; j < 3; ++j) w[j] = g.mu[j] - o[j];
      if (!meets(w, g.radius)) continue;
      const float dist = std::sqrt(dot3(w, w));
      float lb;
      if (order == kHit) {
        const float near = dist - g.radius;
        lb = near / (near >= 0.f ? dmax : dmin);
      } else {
        // Smallest v.d / |d| over the cone's directions: |v| cos(min(pi, phi + theta)).
        const float cos_p = dist > 0.f ? std::max(-1.f, std::min(1.f, dot3(w, axis) / dist)) : 1.f;
        const float sin_p = std::sqrt(std::max(0.f, 1.f - cos_p * cos_p));
        const float c = cos_p < -cos_t ? -1.f : cos_p * cos_t - sin_p * sin_t;
        lb = dist * c / (c >= 0.f ? dmax : dmin);
      }
      // Rounding margin: the bound only decides when pending hits are composited, never which.
      cands.emplace_back(lb - 1e-4f * (std::fabs(lb) + dist), k);
    }
  }
  std::sort(cands.begin(), cands.end());
  // Structure of arrays of the candidates (M row-major 0-8, mu 9-11, k2 12), so the per-ray loop vectorizes.
  const size_t C = cands.size();
  s.soa.resize(13 * C);
  for (size_t i = 0; i < C; ++i) {
    const Prim& g = prims_[cands[i].second];
    for (int k = 0; k < 9; ++k) s.soa[k * C + i] = g.M[k];
    for (int k = 0; k < 3; ++k) s.soa[(9 + k) * C + i] = g.mu[k];
    s.soa[12 * C + i] = g.k2;
  }
  return true;
}

template <typename Visit>
void Bvh::scan(const float* o, const float* d, float tmin, float tmax, Order order, Scratch& s,
               Visit&& visit) const {
  auto& pending = s.pending;
  pending.clear();
  const float idd = 1.f / dot3(d, d);
  auto flush = [&](float upto) { return flush_pending(pending, upto, visit); };
  const size_t C = s.cands.size();
  const float* A = s.soa.data();
  constexpr size_t kBlock = 64;
  float tb[kBlock], m2b[kBlock], keyb[kBlock];
  for (size_t b0 = 0; b0 < C; b0 += kBlock) {
    const size_t nb = std::min(kBlock, C - b0);
    // Responses of a block of candidates at once (branch-free, vectorized); the same arithmetic as respond().
    for (size_t j = 0; j < nb; ++j) {
      const size_t i = b0 + j;
      const float po0 = o[0] - A[9 * C + i], po1 = o[1] - A[10 * C + i], po2 = o[2] - A[11 * C + i];
      const float p0 = A[i] * po0 + A[C + i] * po1 + A[2 * C + i] * po2;
      const float p1 = A[3 * C + i] * po0 + A[4 * C + i] * po1 + A[5 * C + i] * po2;
      const float p2 = A[6 * C + i] * po0 + A[7 * C + i] * po1 + A[8 * C + i] * po2;
      const float q0 = A[i] * d[0] + A[C + i] * d[1] + A[2 * C + i] * d[2];
      const float q1 = A[3 * C + i] * d[0] + A[4 * C + i] * d[1] + A[5 * C + i] * d[2];
      const float q2 = A[6 * C + i] * d[0] + A[7 * C + i] * d[1] + A[8 * C + i] * d[2];
      const float a = q0 * q0 + q1 * q1 + q2 * q2;
      const float bb = p0 * q0 + p1 * q1 + p2 * q2;
      const float t = a > 0.f ? -bb / a : 0.f;
      const float x0 = p0 + t * q0, x1 = p1 + t * q1, x2 = p2 + t * q2;
      tb[j] = t;
      m2b[j] = x0 * x0 + x1 * x1 + x2 * x2;
      keyb[j] = -(po0 * d[0] + po1 * d[1] + po2 * d[2]) * idd;
    }
    for (size_t j = 0; j < nb; ++j) {
      const float lb = s.cands[b0 + j].first;
      if (!pending.empty() && pending.back().key <= lb && !flush(lb)) return;
      if (!(m2b[j] <= A[12 * C + b0 + j]) || !(tb[j] >= tmin && tb[j] <= tmax)) continue;
      const int32_t k = s.cands[b0 + j].second;
      const Prim& g = prims_[k];
      const float alpha_raw = g.opacity * std::exp(-0.5f * m2b[j]);
      if (!(alpha_raw >= gs::kAlphaMin)) continue;
      const Pending h{order == kHit ? tb[j] : keyb[j], tb[j], alpha_raw, g.id, k};
      insert_pending(pending, h);
    }
  }
  flush(INFINITY);
}

std::vector<at::Tensor> Bvh::trace(const at::Tensor& origins, const at::Tensor& dirs, double tmin, double tmax,
                                   const at::Tensor& colors, int64_t order, int64_t packet) const {
  TORCH_CHECK_VALUE(packet >= 1, "packet must be >= 1, got ", packet);
  TORCH_CHECK_VALUE(tmin >= 0.0 && tmax > tmin, "need 0 <= tmin < tmax, got ", tmin, ", ", tmax);
  TORCH_CHECK_VALUE(order == kCenter || order == kHit, "order must be 0 (center) or 1 (hit), got ", order);
  check_rays(origins, dirs);
  GRT_CHECK(colors, n_, -1);
  TORCH_CHECK_VALUE(colors.dim() == 2 && colors.size(1) >= 1, "colors must have shape [N, D]");
  const int64_t R = origins.size(0), D = colors.size(1);
  auto feat = at::zeros({R, D}, at::kFloat);
  auto alpha = at::zeros({R}, at::kFloat), depth = at::zeros({R}, at::kFloat), final_T = at::ones({R}, at::kFloat);
  auto n_hits = at::zeros({R}, at::kInt);
  const float *op = origins.data_ptr<float>(), *dp = dirs.data_ptr<float>(), *cp = colors.data_ptr<float>();
  float *fp = feat.data_ptr<float>(), *ap = alpha.data_ptr<float>(), *zp = depth.data_ptr<float>(),
        *tp = final_T.data_ptr<float>();
  int32_t* np = n_hits.data_ptr<int32_t>();
  // The composited hits' prim indices, per thread, and where each ray's run starts, so that the backward pass
  // reads them instead of traversing again.
  const int threads = std::max(1, at::get_num_threads());
  std::vector<std::vector<int32_t>> lists(threads);
  std::vector<int32_t> where(2 * R);
  const int64_t P = (R + packet - 1) / packet;
  // Chunks of packets handed out as threads get free: an image's busy and empty regions are far apart, and a
  // static split in halves left one thread idle for a third of the time on the garden view.
  std::vector<Scratch> scratch(threads);
  mesh_bvh::parallel_chunks(P, std::max<int64_t>(1, 256 / packet), [&](int64_t pb, int64_t pe) {
    const int tid = std::min(at::get_thread_num(), threads - 1);
    Scratch& s = scratch[tid];
    auto& list = lists[tid];
    for (int64_t pk = pb; pk < pe; ++pk) {
    const int64_t b = pk * packet, e = std::min(R, b + packet);
    bool coherent = e - b > 1 && !prims_.empty();
    for (int64_t r = b + 1; r < e && coherent; ++r)
      coherent = op[3 * r] == op[3 * b] && op[3 * r + 1] == op[3 * b + 1] && op[3 * r + 2] == op[3 * b + 2];
    coherent = coherent && gather(op + 3 * b, dp + 3 * b, e - b, (Order)order, s);
    for (int64_t r = b; r < e; ++r) {
      where[2 * r] = tid;
      where[2 * r + 1] = (int32_t)list.size();
      float T = 1.f, z = 0.f;
      int32_t n = 0;
      float* f = fp + r * D;
      auto visit = [&](const Pending& h) {
        const float a = std::min(h.alpha_raw, gs::kAlphaMax);
        const float next = T * (1.f - a);
        if (next < gs::kTMin) return false;  // the rasterizer's rule: this hit is not composited
        const float w = a * T;
        const float* c = cp + (int64_t)h.id * D;
        for (int64_t k = 0; k < D; ++k) f[k] += w * c[k];
        z += w * h.key;
        T = next;
        ++n;
        list.push_back(h.prim);
        return true;
      };
      if (coherent)
        scan(op + 3 * r, dp + 3 * r, (float)tmin, (float)tmax, (Order)order, s, visit);
      else
        ordered(op + 3 * r, dp + 3 * r, (float)tmin, (float)tmax, (Order)order, s, visit);
      ap[r] = 1.f - T;
      zp[r] = z;
      tp[r] = T;
      np[r] = n;
    }
    }
  });
  auto offsets = at::zeros({R + 1}, at::kLong);
  int64_t* off = offsets.data_ptr<int64_t>();
  for (int64_t r = 0; r < R; ++r) off[r + 1] = off[r] + np[r];
  auto hit_prims = at::empty({off[R]}, at::kInt);
  int32_t* hp = hit_prims.data_ptr<int32_t>();
  at::parallel_for(0, R, 1024, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      std::copy_n(lists[where[2 * r]].data() + where[2 * r + 1], np[r], hp + off[r]);
  });
  return {feat, alpha, depth, final_T, n_hits, hit_prims, offsets};
}

std::vector<at::Tensor> Bvh::trace_backward(const at::Tensor& origins, const at::Tensor& dirs, double tmin,
                                            double tmax, const at::Tensor& colors, int64_t order,
                                            const at::Tensor& final_T, const at::Tensor& hit_prims,
                                            const at::Tensor& offsets, const at::Tensor& v_features, const at::Tensor& v_alpha,
                                            const at::Tensor& v_depth) const {
  check_rays(origins, dirs);
  TORCH_CHECK_VALUE(tmin >= 0.0 && tmax > tmin, "need 0 <= tmin < tmax, got ", tmin, ", ", tmax);
  const int64_t R = origins.size(0), D = colors.size(1), N = n_;
  GRT_CHECK(colors, N, D);
  GRT_CHECK(final_T, R, 0);
  GRT_CHECK(v_features, R, D);
  TORCH_CHECK_VALUE(offsets.scalar_type() == at::kLong && offsets.numel() == R + 1 && offsets.is_contiguous(),
                    "offsets must be int64 [R + 1]");
  TORCH_CHECK_VALUE(hit_prims.scalar_type() == at::kInt && hit_prims.is_contiguous() && hit_prims.dim() == 1,
                    "hit_prims must be int32 [H]");
  const int64_t* offp = offsets.data_ptr<int64_t>();
  const int32_t* hp = hit_prims.data_ptr<int32_t>();
  TORCH_CHECK_VALUE(offp[R] == hit_prims.numel(), "offsets do not match hit_prims");
  for (int64_t j = 0; j < hit_prims.numel(); ++j)
    TORCH_CHECK_VALUE(hp[j] >= 0 && hp[j] < (int64_t)prims_.size(), "hit_prims out of range");
  GRT_CHECK(v_alpha, R, 0);
  GRT_CHECK(v_depth, R, 0);
  const int64_t S = 13 + D;  // per Gaussian: dmu[3], dM[9], dopacity, dcolor[D]
  const int threads = std::max(1, at::get_num_threads());
  std::vector<std::vector<float>> acc(threads);  // per worker (below)
  const float *op = origins.data_ptr<float>(), *dp = dirs.data_ptr<float>(), *cp = colors.data_ptr<float>(),
              *vfp = v_features.data_ptr<float>(), *vap = v_alpha.data_ptr<float>(),
              *vzp = v_depth.data_ptr<float>(), *ftp = final_T.data_ptr<float>();
  // Worker w takes chunks w, w + W, w + 2W, ... of 256 rays: interleaved, so an image's busy region is shared
  // (a split in halves left one thread idle for a third of the time), and fixed, so each worker sums the same
  // rays in the same order into its own accumulator every time: the gradients are the same bits run after run.
  constexpr int64_t kChunk = 256;
  const int64_t n_chunks = (R + kChunk - 1) / kChunk;
  const int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, n_chunks));
  std::vector<Scratch> scratch(workers);
  at::parallel_for(0, workers, 1, [&](int64_t wb, int64_t we) {
   for (int64_t w = wb; w < we; ++w)
   for (int64_t c = w; c < n_chunks; c += workers) {
    const int64_t b = c * kChunk, e = std::min(R, b + kChunk);
    auto& g = acc[w];
    if (g.empty()) g.assign(N * S, 0.f);
    Scratch& s = scratch[w];
    for (int64_t r = b; r < e; ++r) {
      const float* o = op + 3 * r;
      const float* d = dp + 3 * r;
      const float* vf = vfp + r * D;
      const float va = vap[r], vz = vzp[r];
      auto& hits = s.hits;
      hits.clear();
      float T = 1.f;
      const float idd = 1.f / dot3(d, d);
      for (int64_t j = offp[r]; j < offp[r + 1]; ++j) {
        const Prim& g = prims_[hp[j]];
        Response rs;
        respond(g, o, d, rs);
        // The forward pass (possibly vectorized, rounding differently) decided this is a hit: evaluate it
        // whatever respond()'s threshold test says here.
        rs.alpha_raw = g.opacity * std::exp(-0.5f * rs.m2);
        const float a = std::min(rs.alpha_raw, gs::kAlphaMax);
        const float key = order == kHit ? rs.t
                                        : ((g.mu[0] - o[0]) * d[0] + (g.mu[1] - o[1]) * d[1] +
                                           (g.mu[2] - o[2]) * d[2]) * idd;
        hits.push_back(Hit{key, rs.t, a, rs.alpha_raw, T, hp[j]});
        T *= 1.f - a;
      }
      const float T_final = ftp[r];
      float later = 0.f;  // sum over later hits of w_j g_j
      for (int64_t i = (int64_t)hits.size() - 1; i >= 0; --i) {
        const Hit& h = hits[i];
        const Prim& pr = prims_[h.prim];
        const float* c = cp + (int64_t)pr.id * D;
        float gi = vz * h.key;
        for (int64_t k = 0; k < D; ++k) gi += vf[k] * c[k];
        const float w = h.alpha * h.T;
        float* gg = g.data() + (int64_t)pr.id * S;
        for (int64_t k = 0; k < D; ++k) gg[13 + k] += w * vf[k];
        const float v_a = h.T * gi + (va * T_final - later) / (1.f - h.alpha);
        later += w * gi;
        const float v_key = w * vz, v_t = order == kHit ? v_key : 0.f;
        float v_m2 = 0.f;
        if (h.alpha_raw < gs::kAlphaMax) {
          gg[12] += v_a * h.alpha_raw / pr.opacity;
          v_m2 = -0.5f * h.alpha_raw * v_a;
        }
        // Recompute the canonical-frame quantities of this hit.
        float po[3], p[3], q[3], x[3];
        for (int k = 0; k < 3; ++k) po[k] = o[k] - pr.mu[k];
        for (int k = 0; k < 3; ++k) {
          p[k] = dot3(pr.M + 3 * k, po);
          q[k] = dot3(pr.M + 3 * k, d);
        }
        const float a2 = dot3(q, q);
        if (!(a2 > 0.f)) continue;
        const float t = h.t;
        for (int k = 0; k < 3; ++k) x[k] = p[k] + t * q[k];
        // m2 = |x*|^2 at the optimum t*: dm2/dp = 2 x*, dm2/dq = 2 t* x*; t* = -(p.q)/(q.q).
        float vp[3], vq[3];
        for (int k = 0; k < 3; ++k) {
          vp[k] = 2.f * v_m2 * x[k] - v_t * q[k] / a2;
          vq[k] = 2.f * v_m2 * t * x[k] - v_t * (p[k] + 2.f * t * q[k]) / a2;
        }
        const float dd = dot3(d, d);
        for (int k = 0; k < 3; ++k) {
          gg[k] -= pr.M[k] * vp[0] + pr.M[3 + k] * vp[1] + pr.M[6 + k] * vp[2];
          if (order == kCenter) gg[k] += v_key * d[k] / dd;  // key = (mu - o).d / |d|^2
        }
        for (int i2 = 0; i2 < 3; ++i2)
          for (int j = 0; j < 3; ++j) gg[3 + i2 * 3 + j] += vp[i2] * po[j] + vq[i2] * d[j];
      }
    }
   }
  });
  auto v_means = at::zeros({N, 3}, at::kFloat), v_quats = at::zeros({N, 4}, at::kFloat),
       v_scales = at::zeros({N, 3}, at::kFloat), v_opac = at::zeros({N}, at::kFloat),
       v_colors = at::zeros({N, D}, at::kFloat);
  const float *qp = quats_.data_ptr<float>(), *sp = scales_.data_ptr<float>();
  float *vm = v_means.data_ptr<float>(), *vq = v_quats.data_ptr<float>(), *vs = v_scales.data_ptr<float>(),
        *vo = v_opac.data_ptr<float>(), *vc = v_colors.data_ptr<float>();
  at::parallel_for(0, N, 1024, [&](int64_t b, int64_t e) {
    std::vector<float> sum(S);
    for (int64_t i = b; i < e; ++i) {
      std::fill(sum.begin(), sum.end(), 0.f);
      bool any = false;
      for (const auto& g : acc) {
        if (g.empty()) continue;
        any = true;
        for (int64_t k = 0; k < S; ++k) sum[k] += g[i * S + k];
      }
      if (!any) continue;
      for (int k = 0; k < 3; ++k) vm[3 * i + k] = sum[k];
      vo[i] = sum[12];
      for (int64_t k = 0; k < D; ++k) vc[i * D + k] = sum[13 + k];
      const float* q = qp + 4 * i;
      const float* s = sp + 3 * i;
      if (!(s[0] > 0.f && s[1] > 0.f && s[2] > 0.f)) continue;
      float qn[4], Rm[9], dR[9];
      const float qnorm = std::max(std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), 1e-12f);
      for (int k = 0; k < 4; ++k) qn[k] = q[k] / qnorm;
      gs::quat_to_rotmat(qn, Rm);
      // M[r][c] = R[c][r] / s[r]  =>  dR[c][r] = dM[r][c] / s[r],  ds[r] = -sum_c dM[r][c] M[r][c] / s[r].
      for (int r = 0; r < 3; ++r) {
        float dsr = 0.f;
        for (int c = 0; c < 3; ++c) {
          const float gM = sum[3 + r * 3 + c];
          dR[c * 3 + r] = gM / s[r];
          dsr -= gM * Rm[c * 3 + r] / (s[r] * s[r]);
        }
        vs[3 * i + r] = dsr;
      }
      float vqn[4];
      gs::quat_to_rotmat_vjp(qn, dR, vqn);
      const float dotq = qn[0] * vqn[0] + qn[1] * vqn[1] + qn[2] * vqn[2] + qn[3] * vqn[3];
      for (int k = 0; k < 4; ++k) vq[4 * i + k] = (vqn[k] - qn[k] * dotq) / qnorm;
    }
  });
  return {v_means, v_quats, v_scales, v_opac, v_colors};
}

namespace {

// The 10 low bits of x spread to every third bit (bit i to bit 3 i): one axis of a 30-bit Morton code.
inline uint32_t spread3(uint32_t x) {
  x &= 0x3ffu;
  x = (x | (x << 16)) & 0x030000ffu;
  x = (x | (x << 8)) & 0x0300f00fu;
  x = (x | (x << 4)) & 0x030c30c3u;
  x = (x | (x << 2)) & 0x09249249u;
  return x;
}

#if defined(__AVX2__) && defined(__FMA__)
// One eight-wide slab test of a node's lanes against the ray's interval [tlo, thi] (box distances in units of the
// scaled direction, as mesh_bvh::make_ray gives them). Returns the mask of the lanes the ray enters.
inline int hit_node8(const Node8& n, const mesh_bvh::Ray& r, float tlo, float thi) {
  __m256 t0 = _mm256_set1_ps(tlo), t1 = _mm256_set1_ps(thi);
  const __m256 robust = _mm256_set1_ps(mesh_bvh::kRobust);
  for (int k = 0; k < 3; ++k) {
    const __m256 o = _mm256_set1_ps(r.o[k]), inv = _mm256_set1_ps(r.inv[k]);
    const __m256 a = _mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(n.lo[k]), o), inv);
    const __m256 b = _mm256_mul_ps(_mm256_sub_ps(_mm256_load_ps(n.hi[k]), o), inv);
    t0 = _mm256_max_ps(t0, _mm256_min_ps(a, b));
    t1 = _mm256_min_ps(t1, _mm256_mul_ps(_mm256_max_ps(a, b), robust));
  }
  const __m256i valid = _mm256_cmpgt_epi32(_mm256_load_si256((const __m256i*)n.count), _mm256_set1_epi32(-1));
  return _mm256_movemask_ps(_mm256_and_ps(_mm256_cmp_ps(t0, t1, _CMP_LE_OQ), _mm256_castsi256_ps(valid)));
}

// respond() for a block's eight Gaussians at once: m2 and t* only. Returns the mask of lanes whose ellipsoid the
// ray meets within [tmin, tmax] (unused lanes have k2 = -1).
inline int responses8(const Block8& b, const float* o, const float* d, float tmin, float tmax, float* m2, float* t) {
  const __m256 po0 = _mm256_sub_ps(_mm256_set1_ps(o[0]), _mm256_load_ps(b.mu[0]));
  const __m256 po1 = _mm256_sub_ps(_mm256_set1_ps(o[1]), _mm256_load_ps(b.mu[1]));
  const __m256 po2 = _mm256_sub_ps(_mm256_set1_ps(o[2]), _mm256_load_ps(b.mu[2]));
  const __m256 d0 = _mm256_set1_ps(d[0]), d1 = _mm256_set1_ps(d[1]), d2 = _mm256_set1_ps(d[2]);
  __m256 p[3], q[3];
  for (int r = 0; r < 3; ++r) {
    const __m256 m0 = _mm256_load_ps(b.M[3 * r]), m1 = _mm256_load_ps(b.M[3 * r + 1]),
                 m2r = _mm256_load_ps(b.M[3 * r + 2]);
    p[r] = _mm256_fmadd_ps(m2r, po2, _mm256_fmadd_ps(m1, po1, _mm256_mul_ps(m0, po0)));
    q[r] = _mm256_fmadd_ps(m2r, d2, _mm256_fmadd_ps(m1, d1, _mm256_mul_ps(m0, d0)));
  }
  const __m256 pq = _mm256_fmadd_ps(p[2], q[2], _mm256_fmadd_ps(p[1], q[1], _mm256_mul_ps(p[0], q[0])));
  const __m256 qq = _mm256_fmadd_ps(q[2], q[2], _mm256_fmadd_ps(q[1], q[1], _mm256_mul_ps(q[0], q[0])));
  // A zero q (never for valid Gaussians and rays) gives NaN, which fails every test.
  const __m256 tt = _mm256_sub_ps(_mm256_setzero_ps(), _mm256_div_ps(pq, qq));
  __m256 mm = _mm256_setzero_ps();
  for (int r = 0; r < 3; ++r) {
    const __m256 x = _mm256_fmadd_ps(tt, q[r], p[r]);
    mm = _mm256_fmadd_ps(x, x, mm);
  }
  _mm256_storeu_ps(t, tt);
  _mm256_storeu_ps(m2, mm);
  const __m256 ok = _mm256_and_ps(_mm256_cmp_ps(mm, _mm256_load_ps(b.k2), _CMP_LE_OQ),
                                  _mm256_and_ps(_mm256_cmp_ps(tt, _mm256_set1_ps(tmin), _CMP_GE_OQ),
                                                _mm256_cmp_ps(tt, _mm256_set1_ps(tmax), _CMP_LE_OQ)));
  return _mm256_movemask_ps(ok);
}
#else
// Portable versions of the two tests above.
inline int hit_node8(const Node8& n, const mesh_bvh::Ray& r, float tlo, float thi) {
  int mask = 0;
  for (int l = 0; l < 8; ++l) {
    float t0 = tlo, t1 = thi;
    for (int k = 0; k < 3; ++k) {
      const float a = (n.lo[k][l] - r.o[k]) * r.inv[k];
      const float b = (n.hi[k][l] - r.o[k]) * r.inv[k];
      t0 = std::max(t0, std::min(a, b));
      t1 = std::min(t1, std::max(a, b) * mesh_bvh::kRobust);
    }
    mask |= (t0 <= t1 && n.count[l] >= 0) << l;
  }
  return mask;
}

inline int responses8(const Block8& b, const float* o, const float* d, float tmin, float tmax, float* m2, float* t) {
  int mask = 0;
  for (int j = 0; j < 8; ++j) {
    const float po[3] = {o[0] - b.mu[0][j], o[1] - b.mu[1][j], o[2] - b.mu[2][j]};
    float p[3], q[3];
    for (int r = 0; r < 3; ++r) {
      p[r] = b.M[3 * r][j] * po[0] + b.M[3 * r + 1][j] * po[1] + b.M[3 * r + 2][j] * po[2];
      q[r] = b.M[3 * r][j] * d[0] + b.M[3 * r + 1][j] * d[1] + b.M[3 * r + 2][j] * d[2];
    }
    t[j] = -(p[0] * q[0] + p[1] * q[1] + p[2] * q[2]) / (q[0] * q[0] + q[1] * q[1] + q[2] * q[2]);
    m2[j] = 0.f;
    for (int r = 0; r < 3; ++r) m2[j] += (p[r] + t[j] * q[r]) * (p[r] + t[j] * q[r]);
    mask |= (m2[j] <= b.k2[j] && t[j] >= tmin && t[j] <= tmax) << j;
  }
  return mask;
}
#endif

}  // namespace

at::Tensor Bvh::transmittance(const at::Tensor& origins, const at::Tensor& dirs, double tmin, double tmax) const {
  check_rays(origins, dirs);
  const int64_t R = origins.size(0);
  TORCH_CHECK_VALUE(R <= INT32_MAX, "at most 2^31 - 1 rays per call, got ", R);
  auto out = at::ones({R}, at::kFloat);
  const float *op = origins.data_ptr<float>(), *dp = dirs.data_ptr<float>();
  float* tp = out.data_ptr<float>();
  if (prims_.empty() || R == 0) return out;
  std::call_once(visibility_once_, [this] { build_visibility_tree(); });
  // Visit the rays in Morton order of their origins: neighbouring rays then touch the same nodes and
  // Gaussians, which keeps them in cache (shadow rays often arrive in no useful order). Every step in parallel:
  // with the traversal this fast, a serial sort was a tenth of the time.
  const int64_t n_parts = std::max<int64_t>(1, std::min<int64_t>({(int64_t)at::get_num_threads(), 16, R / 65536}));
  const int64_t part = (R + n_parts - 1) / n_parts;
  std::vector<float> part_box(6 * n_parts);
  at::parallel_for(0, n_parts, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      float l[3] = {INFINITY, INFINITY, INFINITY}, h[3] = {-INFINITY, -INFINITY, -INFINITY};
      for (int64_t r = p * part; r < std::min(R, (p + 1) * part); ++r)
        for (int k = 0; k < 3; ++k) l[k] = std::min(l[k], op[3 * r + k]), h[k] = std::max(h[k], op[3 * r + k]);
      for (int k = 0; k < 3; ++k) part_box[6 * p + k] = l[k], part_box[6 * p + 3 + k] = h[k];
    }
  });
  float lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
  for (int64_t p = 0; p < n_parts; ++p)
    for (int k = 0; k < 3; ++k) lo[k] = std::min(lo[k], part_box[6 * p + k]), hi[k] = std::max(hi[k], part_box[6 * p + 3 + k]);
  // A counting sort on the top 16 bits of a 30-bit Morton code (10 bits per axis) is fine-grained enough: each
  // part counts its keys, the parts' offsets follow key by key, then each part scatters its rays.
  constexpr int kKeys = 65536;
  // Uninitialized buffers: zero-filling (and first touching) ~30 MB per million rays was a tenth of the time too.
  auto key_t = at::empty({R}, at::kShort);
  uint16_t* key = (uint16_t*)key_t.data_ptr<int16_t>();
  std::vector<int64_t> start(kKeys * n_parts, 0);
  at::parallel_for(0, n_parts, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      int64_t* cnt = start.data() + kKeys * p;
      for (int64_t r = p * part; r < std::min(R, (p + 1) * part); ++r) {
        uint32_t code = 0;
        for (int k = 0; k < 3; ++k) {
          const float span = hi[k] - lo[k];
          const float f = span > 0.f ? (op[3 * r + k] - lo[k]) / span : 0.f;
          code |= spread3((uint32_t)std::min(1023.f, std::max(0.f, f * 1023.f))) << k;  // NaN -> 0
        }
        key[r] = (uint16_t)(code >> 14);
        ++cnt[key[r]];
      }
    }
  });
  int64_t acc = 0;
  for (int k = 0; k < kKeys; ++k)
    for (int64_t p = 0; p < n_parts; ++p) {
      const int64_t c = start[kKeys * p + k];
      start[kKeys * p + k] = acc;
      acc += c;
    }
  auto order_t = at::empty({R}, at::kInt);
  int32_t* order = order_t.data_ptr<int32_t>();
  at::parallel_for(0, n_parts, 1, [&](int64_t pb, int64_t pe) {
    for (int64_t p = pb; p < pe; ++p) {
      int64_t* next = start.data() + kKeys * p;
      for (int64_t r = p * part; r < std::min(R, (p + 1) * part); ++r) order[next[key[r]]++] = (int32_t)r;
    }
  });
  // The rays themselves in that order (reading them through `order` inside the traversal was a cache miss per
  // ray).
  auto rays_t = at::empty({R, 6}, at::kFloat), result_t = at::empty({R}, at::kFloat);
  float *rays = rays_t.data_ptr<float>(), *result = result_t.data_ptr<float>();
  at::parallel_for(0, R, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i)
      for (int k = 0; k < 3; ++k) rays[6 * i + k] = op[3 * order[i] + k], rays[6 * i + 3 + k] = dp[3 * order[i] + k];
  });
  const float ftmin = (float)tmin, ftmax = (float)tmax;
  // Each eight-wide level pushes at most 7 entries beyond the one it pops, and spans at least one binary level.
  constexpr int kStack = 7 * (mesh_bvh::kMaxSahDepth + 32) + 8;
  mesh_bvh::parallel_chunks(R, 1024, [&](int64_t b, int64_t e) {
    std::vector<int32_t> stack(kStack);
    for (int64_t i = b; i < e; ++i) {
      const float* o = rays + 6 * i;
      const float* d = o + 3;
      const mesh_bvh::Ray ray = mesh_bvh::make_ray(o, d);
      result[i] = 1.f;
      if (!ray.valid) continue;
      // Box distances are in units of the scaled direction (mesh_bvh::make_ray).
      const float flo = (float)(tmin * ray.scale), fhi = (float)(std::min(tmax, 3e38) * ray.scale) * mesh_bvh::kRobust;
      float T = 1.f;
      int sp = 0;
      stack[sp++] = 0;
      while (sp > 0 && T > 0.f) {
        const Node8& n = nodes8_[stack[--sp]];
        const int entered = hit_node8(n, ray, flo, fhi);
        for (int mask = entered; mask && T > 0.f; mask &= mask - 1) {
          const int l = __builtin_ctz(mask);
          if (n.count[l] == 0) {
            stack[sp++] = n.child[l];
            continue;
          }
          const Block8& blk = blocks_[n.child[l]];
          alignas(32) float m2[8], t[8];
          for (int hits = responses8(blk, o, d, ftmin, ftmax, m2, t); hits; hits &= hits - 1) {
            const int j = __builtin_ctz(hits);
            const float alpha_raw = blk.opacity[j] * std::exp(-0.5f * m2[j]);
            if (!(alpha_raw >= gs::kAlphaMin)) continue;
            T *= 1.f - std::min(alpha_raw, gs::kAlphaMax);
            if (T < gs::kTMin) {
              T = 0.f;
              break;
            }
          }
        }
      }
      result[i] = T;
    }
  });
  at::parallel_for(0, R, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) tp[order[i]] = result[i];
  });
  return out;
}

}  // namespace grt
