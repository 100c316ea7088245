// BVH build over the Gaussians' bounding boxes (see grt.h): per-Gaussian setup in parallel, then a top-down
// binary build that bins box centers (along the widest axis, 16 bins, for the ordered traversals; along every
// axis, 32 bins, for the visibility tree) and splits at the cheapest surface area heuristic boundary, or makes
// a leaf when that is cheaper and at most leaf_size Gaussians remain. The visibility tree is collapsed to
// eight-wide nodes.
#include <algorithm>
#include <array>

#include "grt.h"

namespace grt {

namespace {

constexpr int kMaxBins = 32;
// SAH splits above this depth, object-median splits below, so the depth stays under kMaxDepth + 32 and the
// visibility traversal's fixed stack (grt_trace.cpp, 7 entries per level) suffices.
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

// How sah_build splits: SAH costs relative to one node visit (a leaf costs leaf + prim x count), the number of
// bins, and whether every axis is binned or only the widest one of the centers.
struct SahParams {
  float leaf, prim;
  int bins;
  bool all_axes;
};
// The ordered traversal tests a leaf's Gaussians one by one. (Binning all three axes into 32 bins instead made
// the garden view's forward pass 5-10 % slower.)
constexpr SahParams kOrderedSah{0.f, 1.f, 16, false};

// Top-down binary build over items (reordered in place: a leaf holds items [first, first + count)); nodes gets
// the tree (nodes[0] the root, already pushed). Returns the depth.
int64_t sah_build(std::vector<BuildPrim>& items, int64_t leaf_size, std::vector<Node>& nodes, const SahParams& sah) {
  const int kBins = std::min(sah.bins, kMaxBins);
  const float leaf_cost = sah.leaf, prim_cost = sah.prim;
  int64_t depth = 0;
  struct Task {
    int32_t node, begin, end, depth;
  };
  std::vector<Task> stack{{0, 0, (int32_t)items.size(), 1}};
  while (!stack.empty()) {
    const Task t = stack.back();
    stack.pop_back();
    depth = std::max<int64_t>(depth, t.depth);
    Box box, cbox;
    for (int32_t i = t.begin; i < t.end; ++i) {
      box.grow(items[i].lo, items[i].hi);
      cbox.grow(items[i].c, items[i].c);
    }
    Node& nd = nodes[t.node];
    for (int k = 0; k < 3; ++k) nd.lo[k] = box.lo[k], nd.hi[k] = box.hi[k], nd.clo[k] = cbox.lo[k], nd.chi[k] = cbox.hi[k];
    const int32_t count = t.end - t.begin;
    int axis = 0;  // the widest axis of the centers: the object-median fallback splits it
    for (int k = 1; k < 3; ++k)
      if (cbox.hi[k] - cbox.lo[k] > cbox.hi[axis] - cbox.lo[axis]) axis = k;
    int32_t mid = -1;
    if (count > 1 && t.depth < kMaxDepth) {
      // Binned SAH (over every axis or the widest); the cheapest boundary wins.
      float best = INFINITY;
      int best_axis = -1, best_b = -1;
      for (int k = 0; k < 3; ++k) {
        const float extent = cbox.hi[k] - cbox.lo[k];
        if (!(extent > 0.f) || (!sah.all_axes && k != axis)) continue;
        std::array<Box, kMaxBins> bins;
        std::array<int32_t, kMaxBins> cnt{};
        const float scale = kBins / extent;
        for (int32_t i = t.begin; i < t.end; ++i) {
          const int b = std::min(kBins - 1, std::max(0, (int)((items[i].c[k] - cbox.lo[k]) * scale)));
          bins[b].grow(items[i].lo, items[i].hi);
          ++cnt[b];
        }
        std::array<float, kMaxBins> right_area{};
        std::array<int32_t, kMaxBins> right_cnt{};
        Box acc;
        int32_t n = 0;
        for (int b = kBins - 1; b > 0; --b) {
          acc.grow(bins[b].lo, bins[b].hi);
          n += cnt[b];
          right_area[b] = acc.half_area();
          right_cnt[b] = n;
        }
        Box left;
        int32_t nl = 0;
        for (int b = 1; b < kBins; ++b) {
          left.grow(bins[b - 1].lo, bins[b - 1].hi);
          nl += cnt[b - 1];
          if (nl == 0 || right_cnt[b] == 0) continue;
          const float cost = left.half_area() * (leaf_cost + prim_cost * nl) +
                             right_area[b] * (leaf_cost + prim_cost * right_cnt[b]);
          if (cost < best) best = cost, best_axis = k, best_b = b;
        }
      }
      const float as_leaf = box.half_area() * (leaf_cost + prim_cost * count);
      const float split_cost = 1.f * box.half_area() + best;  // one node visit + both children's tests
      if (best_b > 0 && (count > leaf_size || split_cost < as_leaf)) {
        const float lo = cbox.lo[best_axis], scale = kBins / (cbox.hi[best_axis] - cbox.lo[best_axis]);
        auto it = std::partition(items.begin() + t.begin, items.begin() + t.end, [&](const BuildPrim& p) {
          return std::min(kBins - 1, std::max(0, (int)((p.c[best_axis] - lo) * scale))) < best_b;
        });
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
    const int32_t left = (int32_t)nodes.size();
    nd.first = left;
    nd.count = 0;
    nodes.push_back(Node{});  // invalidates nd
    nodes.push_back(Node{});
    stack.push_back({left + 1, mid, t.end, t.depth + 1});
    stack.push_back({left, t.begin, mid, t.depth + 1});
  }
  return depth;
}

}  // namespace

Bvh::Bvh(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales, const at::Tensor& opacities,
         int64_t leaf_size) {
  const int64_t N = means.size(0);
  GRT_CHECK(means, N, 3);
  GRT_CHECK(quats, N, 4);
  GRT_CHECK(scales, N, 3);
  GRT_CHECK(opacities, N, 0);
  TORCH_CHECK_VALUE(leaf_size >= 1 && leaf_size <= 4, "leaf_size must be in [1, 4], got ", leaf_size);
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
  depth_ = sah_build(items, leaf_size, nodes_, kOrderedSah);
  prims_.resize(P);
  for (int64_t i = 0; i < P; ++i) prims_[i] = all[items[i].slot];
}

namespace {

// The visibility tree's SAH costs (sah_build), relative to one binary node visit: an eight-wide leaf tests up to
// eight Gaussians at once. Tuned on bob_field's shadow rays (bench/raycast.py, before the ray sort was made
// parallel): 0.5 / 0.2 gave 2.0 M rays/s, 0 / 1 (the ordered tree's costs) 1.4, 1 / 0.1 1.8. Cutting the largest Gaussians' boxes into tighter pieces
// (early split clipping, at most 8 pieces for boxes over twice the mean area) was slower too: 1.7 M rays/s,
// the duplicates cost more in the dense shell a shadow ray starts in than the tighter boxes save.
constexpr SahParams kVisibilitySah{0.5f, 0.2f, 32, true};

}  // namespace

void Bvh::build_visibility_tree() const {
  nodes8_.clear();
  blocks_.clear();
  const int64_t P = (int64_t)prims_.size();
  if (P == 0) return;
  // Each Gaussian's box from its prim: the ellipsoid {x : |M (x - mu)|^2 <= k2} spans mu_j +- sqrt(k2 C_jj),
  // C = M^-1 M^-T; M^-1 = R S, whose rows are the rows of adj(M) / det(M).
  std::vector<BuildPrim> items(P);
  at::parallel_for(0, P, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const float* M = prims_[i].M;
      double inv[3][3];
      inv[0][0] = (double)M[4] * M[8] - (double)M[5] * M[7];
      inv[0][1] = (double)M[2] * M[7] - (double)M[1] * M[8];
      inv[0][2] = (double)M[1] * M[5] - (double)M[2] * M[4];
      inv[1][0] = (double)M[5] * M[6] - (double)M[3] * M[8];
      inv[1][1] = (double)M[0] * M[8] - (double)M[2] * M[6];
      inv[1][2] = (double)M[2] * M[3] - (double)M[0] * M[5];
      inv[2][0] = (double)M[3] * M[7] - (double)M[4] * M[6];
      inv[2][1] = (double)M[1] * M[6] - (double)M[0] * M[7];
      inv[2][2] = (double)M[0] * M[4] - (double)M[1] * M[3];
      const double det = M[0] * inv[0][0] + M[1] * inv[1][0] + M[2] * inv[2][0];
      const double k2 = std::max(0.0, (double)prims_[i].k2);
      BuildPrim& bp = items[i];
      for (int j = 0; j < 3; ++j) {
        const double m = prims_[i].mu[j];
        const double r = std::sqrt(k2 * (inv[j][0] * inv[j][0] + inv[j][1] * inv[j][1] + inv[j][2] * inv[j][2])) /
                         std::fabs(det);
        // Padded as the ordered tree's boxes, so float rounding never culls a hit at the boundary.
        const double ext = r * 1.00001 + 1e-7 * (1.0 + std::fabs(m));
        bp.lo[j] = (float)(m - ext);
        bp.hi[j] = (float)(m + ext);
        bp.c[j] = (float)m;
      }
      bp.slot = (int32_t)i;
    }
  });
  std::vector<Node> tree;
  tree.reserve(2 * items.size() / 3 + 8);
  tree.push_back(Node{});
  sah_build(items, 8, tree, kVisibilitySah);

  // Collapse the binary tree to eight-wide nodes: open the largest inner child until eight lanes are used.
  auto node_area = [&](int32_t i) {
    const Node& n = tree[i];
    const float dx = n.hi[0] - n.lo[0], dy = n.hi[1] - n.lo[1], dz = n.hi[2] - n.lo[2];
    return dx * dy + dy * dz + dz * dx;
  };
  // (binary node, eight-wide node to fill); a binary leaf at the root becomes a one-lane node.
  std::vector<std::pair<int32_t, int32_t>> todo{{0, 0}};
  nodes8_.emplace_back();
  while (!todo.empty()) {
    const auto [b, slot] = todo.back();
    todo.pop_back();
    int32_t kids[8];
    int m = 0;
    if (tree[b].count > 0) {
      kids[m++] = b;
    } else {
      kids[m++] = tree[b].first;
      kids[m++] = tree[b].first + 1;
    }
    while (m < 8) {
      int best = -1;
      for (int j = 0; j < m; ++j)
        if (tree[kids[j]].count == 0 && (best < 0 || node_area(kids[j]) > node_area(kids[best]))) best = j;
      if (best < 0) break;
      const int32_t open = kids[best];
      kids[best] = tree[open].first;
      kids[m++] = tree[open].first + 1;
    }
    Node8 n8;
    for (int l = 0; l < 8; ++l) {
      for (int k = 0; k < 3; ++k) n8.lo[k][l] = n8.hi[k][l] = INFINITY;  // a box no ray enters, besides the mask
      n8.child[l] = 0;
      n8.count[l] = -1;
    }
    for (int l = 0; l < m; ++l) {
      const Node& c = tree[kids[l]];
      for (int k = 0; k < 3; ++k) n8.lo[k][l] = c.lo[k], n8.hi[k][l] = c.hi[k];
      if (c.count > 0) {
        TORCH_CHECK(c.count <= 8, "internal: a leaf holds more than 8 Gaussians");
        Block8 blk;
        for (int j = 0; j < 8; ++j) {
          const bool used = j < c.count;
          const Prim& g = prims_[items[c.first + (used ? j : 0)].slot];
          for (int k = 0; k < 9; ++k) blk.M[k][j] = g.M[k];
          for (int k = 0; k < 3; ++k) blk.mu[k][j] = g.mu[k];
          blk.k2[j] = used ? g.k2 : -1.f;
          blk.opacity[j] = g.opacity;
        }
        n8.child[l] = (int32_t)blocks_.size();
        n8.count[l] = c.count;
        blocks_.push_back(blk);
      } else {
        n8.child[l] = (int32_t)nodes8_.size();
        n8.count[l] = 0;
        nodes8_.emplace_back();
        todo.emplace_back(kids[l], n8.child[l]);
      }
    }
    nodes8_[slot] = n8;
  }
}

}  // namespace grt
