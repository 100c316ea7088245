// SAH-binned BVH build (see bvh.h for the layout): a binary tree, then collapsed to four-wide nodes.
//
// Top-down: each node bins its triangles' centroids into `bins` equal intervals along each of the three axes,
// evaluates the surface area heuristic at every bin boundary, and splits at the cheapest one, or makes a leaf
// when that is cheaper and the node holds at most max_leaf triangles. Below depth kMaxSahDepth (pathological
// inputs only) and when all centroids coincide, nodes are split at the object median instead, which bounds the
// depth. Subtrees of more than kTaskMin triangles are built as OpenMP tasks on torch's thread count; children
// are allocated as pairs from an atomic counter, so node indices may differ between runs but the tree
// (boxes, leaves, triangle order) is the same. The collapse then lays the four-wide nodes out depth first.
#include <algorithm>
#include <cstring>

#include "bvh.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mesh_bvh {

namespace {

// SAH constants: cost of visiting a node (two box tests) relative to one triangle test.
constexpr float kTraversalCost = 1.0f;
constexpr float kTriangleCost = 1.0f;
constexpr int64_t kTaskMin = 1 << 14;
constexpr int kMaxBins = 256;

// Plain struct (no constructor) so per-node bin arrays cost nothing until reset(). Four lanes (the last one
// unused) so that grow() compiles to one SIMD min and one max: binning is the hot loop of the build.
struct alignas(16) Box {
  float lo[4], hi[4];
  void reset() {
    for (int k = 0; k < 4; ++k) {
      lo[k] = INFINITY;
      hi[k] = -INFINITY;
    }
  }
  void grow(const Box& o) {
    for (int k = 0; k < 4; ++k) {
      lo[k] = o.lo[k] < lo[k] ? o.lo[k] : lo[k];
      hi[k] = o.hi[k] > hi[k] ? o.hi[k] : hi[k];
    }
  }
  void grow_point(const float* p) {
    for (int k = 0; k < 3; ++k) {
      lo[k] = std::min(lo[k], p[k]);
      hi[k] = std::max(hi[k], p[k]);
    }
  }
  float half_area() const {
    const float dx = hi[0] - lo[0], dy = hi[1] - lo[1], dz = hi[2] - lo[2];
    return dx * dy + dy * dz + dz * dx;
  }
};

// Node of the binary tree: children are allocated as pairs (right = offset + 1).
struct BinNode {
  Box box;
  int32_t offset;  // inner: index of the left child; leaf: first primitive
  int32_t count;   // inner: 0; leaf: number of primitives
};

}  // namespace

// A triangle's box, centroid and index; the build partitions an array of these in place, so every pass over a
// node's range streams through contiguous memory.
struct Prim {
  Box box;
  float c[3];
  int32_t id;
};

struct Builder {
  int bins, max_leaf;
  std::vector<Prim> prims;  // leaves refer to ranges of it
  BinNode* nodes;
  std::atomic<int32_t> next_node{1};
  std::atomic<int> max_depth{0};

  void make_leaf(BinNode& node, int64_t begin, int64_t end) {
    node.offset = (int32_t)begin;
    node.count = (int32_t)(end - begin);
  }

  // Best SAH split of [begin, end) over the three axes (one pass bins all three). Returns the axis (-1 if none)
  // and sets *split_bin and *cost (sum of count x half-area of both sides).
  int best_split(int64_t begin, int64_t end, const Box& cb, const float* scale, int nb, int* split_bin,
                 float* cost) {
    // Only the first `bins` entries are used (Box has no constructor, so the arrays cost nothing until reset).
    Box bb[3][kMaxBins];
    int32_t cnt[3][kMaxBins];
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < nb; ++b) {
        bb[a][b].reset();
        cnt[a][b] = 0;
      }
    for (int64_t i = begin; i < end; ++i) {
      const Prim& p = prims[i];
      for (int a = 0; a < 3; ++a) {
        const int b = bin_of(p.c[a], cb.lo[a], scale[a], nb);
        cnt[a][b]++;
        bb[a][b].grow(p.box);
      }
    }
    int best_axis = -1;
    *cost = INFINITY;
    for (int a = 0; a < 3; ++a) {
      if (scale[a] <= 0.f) continue;
      float right_area[kMaxBins];
      int32_t right_cnt[kMaxBins];
      Box acc;
      acc.reset();
      int32_t n = 0;
      for (int b = nb - 1; b > 0; --b) {
        acc.grow(bb[a][b]);
        n += cnt[a][b];
        right_area[b] = acc.half_area();
        right_cnt[b] = n;
      }
      acc.reset();
      n = 0;
      for (int b = 1; b < nb; ++b) {
        acc.grow(bb[a][b - 1]);
        n += cnt[a][b - 1];
        if (n == 0 || right_cnt[b] == 0) continue;
        const float c = (float)n * acc.half_area() + (float)right_cnt[b] * right_area[b];
        if (c < *cost) {
          *cost = c;
          best_axis = a;
          *split_bin = b;
        }
      }
    }
    return best_axis;
  }

  static int bin_of(float c, float lo, float scale, int nb) {
    return std::min(nb - 1, std::max(0, (int)((c - lo) * scale)));
  }

  // Object-median split along the widest centroid axis (by position when all centroids coincide).
  int64_t median_split(int64_t begin, int64_t end, const Box& cb) {
    const int64_t mid = begin + (end - begin) / 2;
    int a = 0;
    for (int k = 1; k < 3; ++k)
      if (cb.hi[k] - cb.lo[k] > cb.hi[a] - cb.lo[a]) a = k;
    if (cb.hi[a] > cb.lo[a]) {
      std::nth_element(prims.begin() + begin, prims.begin() + mid, prims.begin() + end,
                       [a](const Prim& x, const Prim& y) {
                         return x.c[a] < y.c[a] || (x.c[a] == y.c[a] && x.id < y.id);
                       });
    }
    return mid;
  }

  void build(int32_t ni, int64_t begin, int64_t end, int depth) {
    BinNode& node = nodes[ni];
    Box box, cb;
    box.reset();
    cb.reset();
    for (int64_t i = begin; i < end; ++i) {
      box.grow(prims[i].box);
      cb.grow_point(prims[i].c);
    }
    node.box = box;
    int seen = max_depth.load();
    while (depth > seen && !max_depth.compare_exchange_weak(seen, depth)) {
    }
    const int64_t n = end - begin;
    if (n == 1) return make_leaf(node, begin, end);
    int64_t mid = -1;
    if (depth < kMaxSahDepth) {
      // Small nodes use fewer bins: the sweeps over the bins would otherwise dominate the build.
      const int nb = (int)std::min<int64_t>(bins, std::max<int64_t>(8, n));
      float scale[3];
      for (int a = 0; a < 3; ++a) {
        const float ext = cb.hi[a] - cb.lo[a];
        scale[a] = ext > 0.f ? (float)nb / ext : 0.f;
      }
      int split_bin = 0;
      float cost = 0.f;
      const int axis = best_split(begin, end, cb, scale, nb, &split_bin, &cost);
      if (axis >= 0) {
        const float area = box.half_area();
        const float split_cost = kTraversalCost + kTriangleCost * (area > 0.f ? cost / area : (float)n);
        if (n <= max_leaf && (float)n * kTriangleCost <= split_cost) return make_leaf(node, begin, end);
        const float lo = cb.lo[axis], sc = scale[axis];
        auto it = std::partition(prims.begin() + begin, prims.begin() + end,
                                 [&](const Prim& p) { return bin_of(p.c[axis], lo, sc, nb) < split_bin; });
        mid = it - prims.begin();
      }
    }
    if (mid < 0) {
      if (n <= max_leaf) return make_leaf(node, begin, end);
      mid = median_split(begin, end, cb);
    }
    const int32_t child = next_node.fetch_add(2);
    node.offset = child;
    node.count = 0;
    if (n > kTaskMin) {
#ifdef _OPENMP
#pragma omp task default(shared) firstprivate(child, begin, mid, depth)
#endif
      build(child, begin, mid, depth + 1);
    } else {
      build(child, begin, mid, depth + 1);
    }
    build(child + 1, mid, end, depth + 1);
  }

  // Appends the four-wide node for binary node `bi` (and, depth first, its subtree) to out; returns its index.
  // Up to four children are gathered by repeatedly opening the inner child of largest surface area.
  int32_t collapse(int32_t bi, std::vector<Node4>& out) const {
    int32_t kids[4];
    int nk = 0;
    if (nodes[bi].count > 0) {
      kids[nk++] = bi;  // the root is a leaf: one lane
    } else {
      kids[nk++] = nodes[bi].offset;
      kids[nk++] = nodes[bi].offset + 1;
    }
    while (nk < 4) {
      int open = -1;
      float best = -1.f;
      for (int k = 0; k < nk; ++k) {
        const BinNode& c = nodes[kids[k]];
        if (c.count == 0 && c.box.half_area() > best) {
          best = c.box.half_area();
          open = k;
        }
      }
      if (open < 0) break;
      const int32_t left = nodes[kids[open]].offset;
      kids[open] = left;
      kids[nk++] = left + 1;
    }
    const int32_t me = (int32_t)out.size();
    out.emplace_back();
    Node4 n;
    for (int l = 0; l < 4; ++l) {
      for (int k = 0; k < 3; ++k) n.lo[k][l] = n.hi[k][l] = 0.f;
      n.child[l] = 0;
      n.count[l] = -1;
    }
    for (int l = 0; l < nk; ++l) {
      const BinNode& c = nodes[kids[l]];
      for (int k = 0; k < 3; ++k) {
        n.lo[k][l] = c.box.lo[k];
        n.hi[k][l] = c.box.hi[k];
      }
      n.count[l] = c.count;
      n.child[l] = c.count > 0 ? c.offset : collapse(kids[l], out);
    }
    out[me] = n;
    return me;
  }
};

Bvh::Bvh(const at::Tensor& vertices, const at::Tensor& faces, int64_t bins, int64_t max_leaf) {
  BVH_CHECK_FLOAT(vertices, 3);
  TORCH_CHECK_VALUE(faces.device().is_cpu(), "faces must be a CPU tensor");
  TORCH_CHECK_VALUE(faces.scalar_type() == at::kLong, "faces must be int64, got ", faces.scalar_type());
  TORCH_CHECK_VALUE(faces.is_contiguous(), "faces must be contiguous");
  TORCH_CHECK_VALUE(faces.dim() == 2 && faces.size(1) == 3, "faces must have shape [F, 3], got ", faces.sizes());
  TORCH_CHECK_VALUE(bins >= 2 && bins <= kMaxBins, "bins must be in [2, ", kMaxBins, "], got ", bins);
  TORCH_CHECK_VALUE(max_leaf >= 1 && max_leaf <= 64, "max_leaf must be in [1, 64], got ", max_leaf);
  const int64_t V = vertices.size(0), F = faces.size(0);
  TORCH_CHECK_VALUE(F < (int64_t)1 << 30, "faces: at most 2^30 triangles are supported, got ", F);
  const float* vp = vertices.data_ptr<float>();
  const int64_t* fp = faces.data_ptr<int64_t>();
  for (int64_t i = 0; i < 3 * V; ++i) TORCH_CHECK_VALUE(std::isfinite(vp[i]), "vertices contain NaN or Inf");
  for (int64_t i = 0; i < 3 * F; ++i)
    TORCH_CHECK_VALUE(fp[i] >= 0 && fp[i] < V, "faces must index vertices in [0, ", V, "), got ", fp[i]);

  std::vector<int64_t> valid;
  valid.reserve(F);
  for (int64_t f = 0; f < F; ++f) {
    const int64_t* t = fp + 3 * f;
    if (!is_degenerate(vp + 3 * t[0], vp + 3 * t[1], vp + 3 * t[2])) valid.push_back(f);
  }
  const int64_t M = (int64_t)valid.size();
  if (M == 0) return;

  Builder b;
  b.bins = (int)bins;
  b.max_leaf = (int)max_leaf;
  b.prims.resize(M);
  for (int64_t p = 0; p < M; ++p) {
    const int64_t* t = fp + 3 * valid[p];
    Prim& pr = b.prims[p];
    pr.box.lo[3] = pr.box.hi[3] = 0.f;
    for (int k = 0; k < 3; ++k) {
      const float x0 = vp[3 * t[0] + k], x1 = vp[3 * t[1] + k], x2 = vp[3 * t[2] + k];
      pr.box.lo[k] = std::min({x0, x1, x2});
      pr.box.hi[k] = std::max({x0, x1, x2});
      pr.c[k] = 0.5f * (pr.box.lo[k] + pr.box.hi[k]);  // box center: cheaper than the centroid, as good for SAH
    }
    pr.id = (int32_t)p;
  }
  std::vector<BinNode> bin(2 * M - 1);
  b.nodes = bin.data();
  const int threads = at::get_num_threads();
#ifdef _OPENMP
  if (threads > 1 && M > kTaskMin) {
#pragma omp parallel num_threads(threads)
#pragma omp single
    b.build(0, 0, M, 0);
  } else {
    b.build(0, 0, M, 0);
  }
#else
  (void)threads;
  b.build(0, 0, M, 0);
#endif
  depth_ = b.max_depth.load();
  nodes_.reserve(b.next_node.load() / 2 + 1);
  b.collapse(0, nodes_);
  nodes_.shrink_to_fit();

  tris_.resize(9 * M);
  ids_.resize(M);
  for (int64_t j = 0; j < M; ++j) {
    const int64_t f = valid[b.prims[j].id];
    ids_[j] = f;
    for (int c = 0; c < 3; ++c)
      for (int k = 0; k < 3; ++k) tris_[9 * j + 3 * c + k] = vp[3 * fp[3 * f + c] + k];
  }
}

at::Tensor Bvh::nodes_tensor() const {
  auto out = at::empty({(int64_t)nodes_.size(), 32}, at::kFloat);
  if (!nodes_.empty()) std::memcpy(out.data_ptr<float>(), nodes_.data(), nodes_.size() * sizeof(Node4));
  return out;
}

at::Tensor Bvh::triangle_ids() const {
  auto out = at::empty({(int64_t)ids_.size()}, at::kLong);
  if (!ids_.empty()) std::memcpy(out.data_ptr<int64_t>(), ids_.data(), ids_.size() * sizeof(int64_t));
  return out;
}

}  // namespace mesh_bvh
