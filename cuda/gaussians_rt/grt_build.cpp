// BVH build over the Gaussians' bounding boxes (see grt.h): per-Gaussian setup in parallel, then a top-down
// binary build that bins box centers along the widest axis (16 bins) and splits at the cheapest surface area
// heuristic boundary, or makes a leaf when that is cheaper and at most leaf_size Gaussians remain.
#include <algorithm>
#include <array>

#include "grt.h"

namespace grt {

namespace {

constexpr int kBins = 16;
// SAH splits above this depth, object-median splits below, so the depth stays under kMaxDepth + 32 and the
// four-wide traversal's fixed stack (mesh_bvh::kStackSize) suffices.
constexpr int kMaxDepth = mesh_bvh::kMaxSahDepth;

struct Box {
  float lo[3] = {INFINITY, INFINITY, INFINITY}, hi[3] = {-INFINITY, -INFINITY, -INFINITY};
  void grow(const float* l, const float* h) {
    for (int k = 0; k < 3; ++k) {
      lo[k] = std::min(lo[k], l[k]);
      hi[k] = std::max(hi[k], h[k]);
    }
  }
  float half_area() const {
    if (!(hi[0] >= lo[0])) return 0.f;
    const float dx = hi[0] - lo[0], dy = hi[1] - lo[1], dz = hi[2] - lo[2];
    return dx * dy + dy * dz + dz * dx;
  }
};

struct BuildPrim {
  float lo[3], hi[3], c[3];
  int32_t slot;  // index into the unordered prim array
};

}  // namespace

Bvh::Bvh(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
         int64_t leaf_size) {
  const int64_t N = means.size(0);
  GRT_CHECK(means, N, 3);
  GRT_CHECK(quats, N, 4);
  GRT_CHECK(scales, N, 3);
  GRT_CHECK(opacities, N, 0);
  TORCH_CHECK_VALUE(leaf_size >= 1 && leaf_size <= 4, "leaf_size must be in [1, 4] (a four-wide leaf block), got ",
                    leaf_size);
  n_ = N;
  means_ = means.clone();
  quats_ = quats.clone();
  scales_ = scales.clone();
  const float* mp = means.data_ptr<float>();
  const float* qp = quats.data_ptr<float>();
  const float* sp = scales.data_ptr<float>();
  const float* op = opacities.data_ptr<float>();

  std::vector<Prim> all(N);
  std::vector<BuildPrim> bp(N);
  std::vector<uint8_t> keep(N, 0);
  at::parallel_for(0, N, 1024, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float o = op[i];
      const float* s = sp + 3 * i;
      const float* m = mp + 3 * i;
      // Gaussians that can never reach alpha 1/255, and degenerate or non-finite ones, are never hit.
      if (!(o >= gs::kAlphaMin) || !(s[0] > 0.f && s[1] > 0.f && s[2] > 0.f) || !std::isfinite(s[0] + s[1] + s[2]) ||
          !std::isfinite(m[0] + m[1] + m[2]))
        continue;
      float qn[4], R[9];
      const float* q = qp + 4 * i;
      const float qnorm = std::max(std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), 1e-12f);
      for (int k = 0; k < 4; ++k) qn[k] = q[k] / qnorm;
      gs::quat_to_rotmat(qn, R);
      Prim& g = all[i];
      for (int r = 0; r < 3; ++r)
        for (int c = 0; c < 3; ++c) g.M[r * 3 + c] = R[c * 3 + r] / s[r];
      for (int k = 0; k < 3; ++k) g.mu[k] = m[k];
      g.opacity = o;
      g.id = (int32_t)i;
      const float k2 = 2.f * std::log(std::min(o, 1.f) / gs::kAlphaMin);
      g.k2 = k2 * 1.0001f + 1e-6f;  // the exact test is alpha >= 1/255; this only skips the exp
      const float kr = std::sqrt(std::max(k2, 0.f));
      g.radius = kr * std::max({s[0], s[1], s[2]}) * 1.00001f;
      BuildPrim& b = bp[i];
      for (int j = 0; j < 3; ++j) {
        const float a0 = R[j * 3] * s[0], a1 = R[j * 3 + 1] * s[1], a2 = R[j * 3 + 2] * s[2];
        // Padded by a relative 1e-5 so float rounding of the box never culls a hit at its boundary.
        const float ext = kr * std::sqrt(a0 * a0 + a1 * a1 + a2 * a2) * 1.00001f + 1e-7f * (1.f + std::fabs(m[j]));
        b.lo[j] = m[j] - ext;
        b.hi[j] = m[j] + ext;
        b.c[j] = m[j];
      }
      b.slot = (int32_t)i;
      keep[i] = 1;
    }
  });
  std::vector<BuildPrim> items;
  items.reserve(N);
  for (int64_t i = 0; i < N; ++i)
    if (keep[i]) items.push_back(bp[i]);
  const int64_t P = (int64_t)items.size();
  nodes_.reserve(std::max<int64_t>(1, 2 * P / std::max<int64_t>(1, leaf_size / 2 + 1) + 8));
  nodes_.push_back(Node{});
  if (P == 0) {
    for (int k = 0; k < 3; ++k)
      nodes_[0].lo[k] = nodes_[0].clo[k] = INFINITY, nodes_[0].hi[k] = nodes_[0].chi[k] = -INFINITY;
    nodes_[0].first = 0;
    nodes_[0].count = -1;  // empty tree: the root box is never hit
    return;
  }
  struct Task {
    int32_t node, begin, end, depth;
  };
  std::vector<Task> stack{{0, 0, (int32_t)P, 1}};
  while (!stack.empty()) {
    const Task t = stack.back();
    stack.pop_back();
    depth_ = std::max<int64_t>(depth_, t.depth);
    Box box, cbox;
    for (int32_t i = t.begin; i < t.end; ++i) {
      box.grow(items[i].lo, items[i].hi);
      cbox.grow(items[i].c, items[i].c);
    }
    Node& nd = nodes_[t.node];
    for (int k = 0; k < 3; ++k) nd.lo[k] = box.lo[k], nd.hi[k] = box.hi[k], nd.clo[k] = cbox.lo[k], nd.chi[k] = cbox.hi[k];
    const int32_t count = t.end - t.begin;
    int axis = 0;
    for (int k = 1; k < 3; ++k)
      if (cbox.hi[k] - cbox.lo[k] > cbox.hi[axis] - cbox.lo[axis]) axis = k;
    const float extent = cbox.hi[axis] - cbox.lo[axis];
    int32_t mid = -1;
    if (count > 1 && extent > 0.f && t.depth < kMaxDepth) {
      std::array<Box, kBins> bins;
      std::array<int32_t, kBins> cnt{};
      const float scale = kBins / extent;
      auto bin_of = [&](const BuildPrim& p) {
        return std::min(kBins - 1, std::max(0, (int)((p.c[axis] - cbox.lo[axis]) * scale)));
      };
      for (int32_t i = t.begin; i < t.end; ++i) {
        const int b = bin_of(items[i]);
        bins[b].grow(items[i].lo, items[i].hi);
        ++cnt[b];
      }
      std::array<float, kBins> right_area{};
      std::array<int32_t, kBins> right_cnt{};
      Box acc;
      int32_t n = 0;
      for (int b = kBins - 1; b > 0; --b) {
        acc.grow(bins[b].lo, bins[b].hi);
        n += cnt[b];
        right_area[b] = acc.half_area();
        right_cnt[b] = n;
      }
      Box left;
      int32_t nl = 0, best_b = -1;
      float best = INFINITY;
      for (int b = 1; b < kBins; ++b) {
        left.grow(bins[b - 1].lo, bins[b - 1].hi);
        nl += cnt[b - 1];
        if (nl == 0 || right_cnt[b] == 0) continue;
        const float cost = left.half_area() * nl + right_area[b] * right_cnt[b];
        if (cost < best) best = cost, best_b = b;
      }
      const float leaf_cost = box.half_area() * count;
      const float split_cost = 1.f * box.half_area() + best;  // one node visit + both children's tests
      if (best_b > 0 && (count > leaf_size || split_cost < leaf_cost)) {
        auto it = std::partition(items.begin() + t.begin, items.begin() + t.end,
                                 [&](const BuildPrim& p) { return bin_of(p) < best_b; });
        mid = (int32_t)(it - items.begin());
      }
    }
    if (mid < 0 && count > leaf_size) {  // coincident centers or no useful SAH split: object median
      mid = t.begin + count / 2;
      std::nth_element(items.begin() + t.begin, items.begin() + mid, items.begin() + t.end,
                       [&](const BuildPrim& a, const BuildPrim& b) { return a.c[axis] < b.c[axis]; });
    }
    if (mid < 0) {
      nd.first = t.begin;
      nd.count = count;
      continue;
    }
    const int32_t left = (int32_t)nodes_.size();
    nd.first = left;
    nd.count = 0;
    nodes_.push_back(Node{});  // invalidates nd
    nodes_.push_back(Node{});
    stack.push_back({left + 1, mid, t.end, t.depth + 1});
    stack.push_back({left, t.begin, mid, t.depth + 1});
  }
  prims_.resize(P);
  for (int64_t i = 0; i < P; ++i) prims_[i] = all[items[i].slot];
  collapse();
}

void Bvh::collapse() {
  nodes4_.clear();
  blocks_.clear();
  if (prims_.empty()) return;
  auto area = [&](int32_t i) {
    const Node& n = nodes_[i];
    const float dx = n.hi[0] - n.lo[0], dy = n.hi[1] - n.lo[1], dz = n.hi[2] - n.lo[2];
    return dx * dy + dy * dz + dz * dx;
  };
  // (binary node, four-wide node to fill); a binary leaf at the root becomes a one-lane node.
  std::vector<std::pair<int32_t, int32_t>> todo{{0, 0}};
  nodes4_.emplace_back();
  while (!todo.empty()) {
    const auto [b, slot] = todo.back();
    todo.pop_back();
    int32_t kids[4];
    int m = 0;
    if (nodes_[b].count > 0) {
      kids[m++] = b;
    } else {
      kids[m++] = nodes_[b].first;
      kids[m++] = nodes_[b].first + 1;
    }
    // Open the largest inner child until four lanes are used or only leaves remain.
    while (m < 4) {
      int best = -1;
      for (int j = 0; j < m; ++j)
        if (nodes_[kids[j]].count == 0 && (best < 0 || area(kids[j]) > area(kids[best]))) best = j;
      if (best < 0) break;
      const int32_t open = kids[best];
      kids[best] = nodes_[open].first;
      kids[m++] = nodes_[open].first + 1;
    }
    mesh_bvh::Node4 n4;
    for (int l = 0; l < 4; ++l) {
      for (int k = 0; k < 3; ++k) n4.lo[k][l] = INFINITY, n4.hi[k][l] = -INFINITY;
      n4.child[l] = 0;
      n4.count[l] = -1;
    }
    for (int l = 0; l < m; ++l) {
      const Node& c = nodes_[kids[l]];
      for (int k = 0; k < 3; ++k) n4.lo[k][l] = c.lo[k], n4.hi[k][l] = c.hi[k];
      if (c.count > 0) {
        TORCH_CHECK(c.count <= 4, "internal: a leaf holds more than 4 Gaussians");
        Block4 blk;
        for (int j = 0; j < 4; ++j) {
          const bool used = j < c.count;
          const Prim& g = prims_[c.first + (used ? j : 0)];
          for (int k = 0; k < 9; ++k) blk.M[k][j] = g.M[k];
          for (int k = 0; k < 3; ++k) blk.mu[k][j] = g.mu[k];
          blk.k2[j] = used ? g.k2 : -1.f;
          blk.opacity[j] = g.opacity;
        }
        n4.child[l] = (int32_t)blocks_.size();
        n4.count[l] = c.count;
        blocks_.push_back(blk);
      } else {
        n4.child[l] = (int32_t)nodes4_.size();
        n4.count[l] = 0;
        nodes4_.emplace_back();
        todo.emplace_back(kids[l], n4.child[l]);
      }
    }
    nodes4_[slot] = n4;
  }
}

}  // namespace grt
