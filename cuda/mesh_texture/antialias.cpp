// Analytic silhouette antialiasing (Laine et al. 2020, "Modular Primitives for High-Performance Differentiable
// Rendering") and its hand-written backward (CPU). The algorithm is documented in renderers/mesh/_ref_texture.py.
//
// Layout: every pixel p owns the pair (p, right neighbour) in slot 2p and (p, lower neighbour) in slot 2p + 1.
// Pass 0 marks the silhouette edges of every (camera, triangle) once (they do not depend on the pixel).
// Pass 1 analyses each pair on its own (rows in parallel) and stores alpha and a code (0 = no effect, else
// 1 + edge + 4 * [the second pixel's triangle was chosen]); pass 2 gathers, per pixel, the deltas of the up to four
// pairs that target it, so nothing is written twice. The backward gathers the color gradient the same way and
// collects the position gradients of fixed chunks of rows in per-chunk lists that are summed in chunk order
// (deterministic, no float atomics).
#include <algorithm>
#include <utility>
#include <vector>

#include "mt_common.h"

namespace mt {

namespace {

struct AAInputs {
  const float* color;
  const float* rast;
  const float* pos;
  const int* tri;
  const int* opp;
  int64_t C, H, W, D, V, F;
};

AAInputs check_inputs(const at::Tensor& color, const at::Tensor& rast, const at::Tensor& pos, const at::Tensor& tri,
                      const at::Tensor& opp) {
  MT_CHECK_CPU(color, at::kFloat, "color");
  MT_CHECK_CPU(rast, at::kFloat, "rast");
  MT_CHECK_CPU(pos, at::kFloat, "pos");
  MT_CHECK_CPU(tri, at::kInt, "tri");
  MT_CHECK_CPU(opp, at::kInt, "opp");
  TORCH_CHECK(color.dim() == 4, "color must have shape [C, H, W, D], got ", color.sizes());
  TORCH_CHECK(pos.dim() == 3 && pos.size(2) == 4, "pos must have shape [C, V, 4], got ", pos.sizes());
  TORCH_CHECK(tri.dim() == 2 && tri.size(1) == 3, "tri must have shape [F, 3], got ", tri.sizes());
  AAInputs a;
  a.C = color.size(0), a.H = color.size(1), a.W = color.size(2), a.D = color.size(3);
  a.V = pos.size(1), a.F = tri.size(0);
  MT_CHECK_SHAPE(rast, "rast", a.C, a.H, a.W, 4);
  MT_CHECK_SHAPE(pos, "pos", a.C, a.V, 4);
  MT_CHECK_SHAPE(opp, "opp", a.F, 3);
  TORCH_CHECK(a.F < (1 << 24), "at most 2^24 triangles (float ids), got ", a.F);
  a.color = color.data_ptr<float>();
  a.rast = rast.data_ptr<float>();
  a.pos = pos.data_ptr<float>();
  a.tri = tri.data_ptr<int>();
  a.opp = opp.data_ptr<int>();
  return a;
}

// Triangle id of a pixel (-1 = empty); -2 for an id that is not an integer in [0, F] (such pairs are skipped).
inline int64_t tri_id(const AAInputs& a, int64_t pix) {
  const float id = a.rast[4 * pix + 3];
  if (!(id >= 0.f && id <= (float)a.F) || id != std::floor(id)) return -2;
  return (int64_t)id - 1;
}

// The geometry of one pair: which pixel's triangle is analysed, relative to which pixel center.
struct PairGeom {
  int64_t p0, p1, tri;
  bool use1, down;
  float ds;   // +1: p0's triangle, -1: p1's
  HVert v[3];  // pixel-homogeneous vertices relative to the chosen pixel center (axes swapped for down)
  const float* P[3];
  int vi[3];
  int64_t cam;
  float cx, cy, xh, yh;
};

// Silhouette test of edge i of triangle f in camera c: the wing vertex (or the triangle's own vertex i on a
// boundary edge) lies on the same side of the edge as vertex i, i.e. the two faces fold over each other in screen
// space. Homogeneous determinants, so any signs of w work. Bit i of the result is set for silhouette edges.
inline uint8_t silhouette_bits(const AAInputs& a, int64_t c, int64_t f) {
  const float* P[3];
  for (int k = 0; k < 3; ++k) {
    const int vi = a.tri[3 * f + k];
    if (vi < 0 || vi >= a.V) return 0;
    P[k] = a.pos + (c * a.V + vi) * 4;
  }
  const float bb = det3(P[0], P[1], P[2]);
  uint8_t bits = 0;
  for (int i = 0; i < 3; ++i) {
    const int o = a.opp[3 * f + i];
    const float* O = (o >= 0 && o < a.V) ? a.pos + (c * a.V + o) * 4 : P[i];
    const float wing = i == 0 ? det3(O, P[1], P[2]) : i == 1 ? det3(P[0], O, P[2]) : det3(P[0], P[1], O);
    if ((wing > 0.f) == (bb > 0.f)) bits |= (uint8_t)(1 << i);
  }
  return bits;
}

// Fills g for the pair (p0, p0 + 1 or + W); false when the pair has equal ids or invalid indices, or (with a
// silhouette mask sil [C, F]) when the chosen triangle has no silhouette edge, before any projection work.
inline bool pair_geometry(const AAInputs& a, int64_t p0, bool down, PairGeom* g, const uint8_t* sil = nullptr) {
  const int64_t HW = a.H * a.W;
  const int64_t p1 = down ? p0 + a.W : p0 + 1;
  const int64_t t0 = tri_id(a, p0), t1 = tri_id(a, p1);
  if (t0 == t1 || t0 < -1 || t1 < -1) return false;
  const float z0 = a.rast[4 * p0 + 2], z1 = a.rast[4 * p1 + 2];
  const bool use1 = t0 < 0 || (t1 >= 0 && !(z0 < z1));
  g->p0 = p0, g->p1 = p1, g->use1 = use1, g->down = down;
  g->tri = use1 ? t1 : t0;
  g->ds = use1 ? -1.f : 1.f;
  g->cam = p0 / HW;
  if (sil && sil[g->cam * a.F + g->tri] == 0) return false;
  const int64_t rem = p0 - g->cam * HW;
  const int64_t px = rem % a.W + (use1 && !down ? 1 : 0), py = rem / a.W + (use1 && down ? 1 : 0);
  g->xh = 0.5f * (float)a.W, g->yh = 0.5f * (float)a.H;
  g->cx = (float)px + 0.5f, g->cy = (float)py + 0.5f;
  for (int k = 0; k < 3; ++k) {
    const int vi = a.tri[3 * g->tri + k];
    if (vi < 0 || vi >= a.V) return false;
    g->vi[k] = vi;
    g->P[k] = a.pos + (g->cam * a.V + vi) * 4;
    g->v[k] = to_pixel(g->P[k], g->xh, g->yh, g->cx, g->cy, down);
  }
  return true;
}

// Pass-1 analysis of one pair: returns the code (0 = no effect) and alpha. sil [C, F]: silhouette_bits.
inline int analyse_pair(const AAInputs& a, const uint8_t* sil, int64_t p0, bool down, float* alpha) {
  PairGeom g;
  if (!pair_geometry(a, p0, down, &g, sil)) return 0;
  float best = -INFINITY;
  int di = -1;
  for (int i = 0; i < 3; ++i) {
    float num, den;
    if (!edge_crossing(g.v[(i + 1) % 3], g.v[(i + 2) % 3], &num, &den)) continue;
    const float dc = g.ds * (num / den);
    if (dc > best) best = dc, di = i;
  }
  if (di < 0) return 0;
  if (!((sil[g.cam * a.F + g.tri] >> di) & 1)) return 0;  // the exit edge is not a silhouette
  const HVert &va = g.v[(di + 1) % 3], &vb = g.v[(di + 2) % 3];
  const float DX = vb.x * va.w - va.x * vb.w, DY = vb.y * va.w - va.y * vb.w;
  if (!(std::fabs(DY) >= std::fabs(DX))) return 0;  // shallow edges belong to the other direction's pairs
  if (!(best > -kCrossEps && best < 1.f + kCrossEps)) return 0;
  const float dcc = std::min(std::max(best, 0.f), 1.f);
  *alpha = g.ds * (0.5f - dcc);
  return 1 + di + (g.use1 ? 4 : 0);
}

constexpr int64_t kRowsPerChunk = 8;

struct PosGrad {
  int64_t index;  // cam * V + vertex
  float gx, gy, gw;
};

}  // namespace

// Opposite vertex across every edge, opp [F, 3] int32 (see _ref_texture.edge_topology): edge i of triangle f joins
// its vertices (i + 1) % 3 and (i + 2) % 3; opp[f, i] is the third vertex of the other triangle when exactly two
// non-degenerate triangles share the edge, else -1. Serial sort of the 3F (edge, slot) keys: deterministic and
// ~20 ms for 100k faces, without waking a thread team.
at::Tensor edge_topology(const at::Tensor& tri, int64_t num_vertices) {
  MT_CHECK_CPU(tri, at::kInt, "tri");
  TORCH_CHECK(tri.dim() == 2 && tri.size(1) == 3, "tri must have shape [F, 3], got ", tri.sizes());
  TORCH_CHECK(num_vertices >= 0, "num_vertices must be >= 0");
  const int64_t F = tri.size(0);
  const int* t = tri.data_ptr<int>();
  const uint64_t V = (uint64_t)std::max<int64_t>(num_vertices, 1);
  std::vector<std::pair<uint64_t, int64_t>> keys;
  keys.reserve((size_t)(3 * F));
  for (int64_t f = 0; f < F; ++f) {
    const int v0 = t[3 * f], v1 = t[3 * f + 1], v2 = t[3 * f + 2];
    if (v0 == v1 || v1 == v2 || v2 == v0 || v0 < 0 || v1 < 0 || v2 < 0) continue;
    for (int i = 0; i < 3; ++i) {
      const uint64_t a = (uint64_t)t[3 * f + (i + 1) % 3], b = (uint64_t)t[3 * f + (i + 2) % 3];
      keys.emplace_back(std::min(a, b) * V + std::max(a, b), 3 * f + i);
    }
  }
  std::sort(keys.begin(), keys.end());
  at::Tensor opp = at::empty({F, 3}, tri.options());
  int* o = opp.data_ptr<int>();
  std::fill(o, o + 3 * F, -1);
  for (size_t k = 0; k < keys.size();) {
    size_t e = k + 1;
    while (e < keys.size() && keys[e].first == keys[k].first) ++e;
    if (e - k == 2) {  // slot 3f + i holds vertex i of triangle f: the vertex opposite edge i
      o[keys[k].second] = t[keys[k + 1].second];
      o[keys[k + 1].second] = t[keys[k].second];
    }
    k = e;
  }
  return opp;
}

// Forward: [out [C, H, W, D], alpha [C, H, W, 2], code [C, H, W, 2] (uint8)].
std::vector<at::Tensor> antialias_forward(const at::Tensor& color, const at::Tensor& rast, const at::Tensor& pos,
                                          const at::Tensor& tri, const at::Tensor& opp) {
  const AAInputs a = check_inputs(color, rast, pos, tri, opp);
  const int64_t H = a.H, W = a.W, D = a.D, rows = a.C * H;
  at::Tensor alpha = zeros_serial({a.C, H, W, 2}, color.options());
  at::Tensor code = zeros_serial({a.C, H, W, 2}, color.options().dtype(at::kByte));
  at::Tensor out = at::empty({a.C, H, W, D}, color.options());
  float* al = alpha.data_ptr<float>();
  uint8_t* cd = code.data_ptr<uint8_t>();
  // Silhouette edges per (camera, triangle) once: most pairs in a dense mesh show two front-facing neighbours and
  // are rejected by one lookup.
  std::vector<uint8_t> sil((size_t)(a.C * a.F));
  at::parallel_for(0, a.C * a.F, 4096, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) sil[i] = silhouette_bits(a, i / a.F, i % a.F);
  });
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t y = r % H;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t p = r * W + x;
        if (x + 1 < W) cd[2 * p] = (uint8_t)analyse_pair(a, sil.data(), p, false, &al[2 * p]);
        if (y + 1 < H) cd[2 * p + 1] = (uint8_t)analyse_pair(a, sil.data(), p, true, &al[2 * p + 1]);
      }
    }
  });
  float* o = out.data_ptr<float>();
  const float* c = a.color;
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t y = r % H;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t p = r * W + x;
        float* op = o + p * D;
        const float* cp = c + p * D;
        std::copy(cp, cp + D, op);
        // (pair slot, other pixel, p is the pair's first pixel)
        const int64_t slot[4] = {2 * p, 2 * (p - 1), 2 * p + 1, 2 * (p - W) + 1};
        const int64_t other[4] = {p + 1, p - 1, p + W, p - W};
        const bool exists[4] = {x + 1 < W, x > 0, y + 1 < H, y > 0};
        for (int k = 0; k < 4; ++k) {
          if (!exists[k] || cd[slot[k]] == 0) continue;
          const float alp = al[slot[k]];
          const bool first = (k % 2) == 0;
          if ((alp > 0.f) != first) continue;  // alpha > 0 targets the first pixel, otherwise the second
          const float* c0 = first ? cp : c + other[k] * D;
          const float* c1 = first ? c + other[k] * D : cp;
          for (int64_t ch = 0; ch < D; ++ch) op[ch] += alp * (c1[ch] - c0[ch]);
        }
      }
    }
  });
  return {out, alpha, code};
}

// Backward: [grad_color [C, H, W, D], grad_pos [C, V, 4]] from the forward's alpha and code.
std::vector<at::Tensor> antialias_backward(const at::Tensor& color, const at::Tensor& rast, const at::Tensor& pos,
                                           const at::Tensor& tri, const at::Tensor& opp, const at::Tensor& alpha,
                                           const at::Tensor& code, const at::Tensor& grad_out) {
  const AAInputs a = check_inputs(color, rast, pos, tri, opp);
  const int64_t H = a.H, W = a.W, D = a.D, rows = a.C * H;
  MT_CHECK_CPU(alpha, at::kFloat, "alpha");
  MT_CHECK_CPU(code, at::kByte, "code");
  MT_CHECK_CPU(grad_out, at::kFloat, "grad_out");
  MT_CHECK_SHAPE(alpha, "alpha", a.C, H, W, 2);
  MT_CHECK_SHAPE(code, "code", a.C, H, W, 2);
  MT_CHECK_SHAPE(grad_out, "grad_out", a.C, H, W, D);
  const float* al = alpha.data_ptr<float>();
  const uint8_t* cd = code.data_ptr<uint8_t>();
  const float* g = grad_out.data_ptr<float>();
  const float* c = a.color;
  at::Tensor grad_color = at::empty({a.C, H, W, D}, color.options());
  float* gc = grad_color.data_ptr<float>();
  // Color: the pair (p0, p1) with target t adds alpha (c1 - c0) to t, so p0 gets -alpha g_t and p1 +alpha g_t.
  at::parallel_for(0, rows, 8, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t y = r % H;
      for (int64_t x = 0; x < W; ++x) {
        const int64_t p = r * W + x;
        float* gp = gc + p * D;
        std::copy(g + p * D, g + p * D + D, gp);
        const int64_t slot[4] = {2 * p, 2 * (p - 1), 2 * p + 1, 2 * (p - W) + 1};
        const int64_t other[4] = {p + 1, p - 1, p + W, p - W};
        const bool exists[4] = {x + 1 < W, x > 0, y + 1 < H, y > 0};
        for (int k = 0; k < 4; ++k) {
          if (!exists[k] || cd[slot[k]] == 0) continue;
          const float alp = al[slot[k]];
          const bool first = (k % 2) == 0;
          const int64_t p0 = first ? p : other[k], p1 = first ? other[k] : p;
          const float* gt = g + (alp > 0.f ? p0 : p1) * D;
          const float sgn = first ? -alp : alp;
          for (int64_t ch = 0; ch < D; ++ch) gp[ch] += sgn * gt[ch];
        }
      }
    }
  });
  // Positions: alpha = s (0.5 - dc) with dc = s x, so dL/dx = -dd where dd = g_t . (c1 - c0); x = num / den is
  // differentiated through num / (den + copysign(eps |w_a w_b|, den)) (eps constant), as the twin does.
  const int64_t n_chunks = (rows + kRowsPerChunk - 1) / kRowsPerChunk;
  std::vector<std::vector<PosGrad>> chunks(n_chunks);
  at::parallel_for(0, n_chunks, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t ch = cb; ch < ce; ++ch) {
      std::vector<PosGrad>& list = chunks[ch];
      for (int64_t r = ch * kRowsPerChunk; r < std::min(rows, (ch + 1) * kRowsPerChunk); ++r) {
        for (int64_t s = r * W * 2; s < (r + 1) * W * 2; ++s) {
          if (cd[s] == 0) continue;
          const bool down = (s & 1) != 0;
          PairGeom pg;
          if (!pair_geometry(a, s / 2, down, &pg)) continue;
          const float alp = al[s];
          const float* gt = g + (alp > 0.f ? pg.p0 : pg.p1) * D;
          const float *c0 = c + pg.p0 * D, *c1 = c + pg.p1 * D;
          float dd = 0.f;
          for (int64_t k = 0; k < D; ++k) dd += gt[k] * (c1[k] - c0[k]);
          if (dd == 0.f) continue;
          const int di = (cd[s] - 1) & 3;
          const int ia = (di + 1) % 3, ib = (di + 2) % 3;
          const HVert &va = pg.v[ia], &vb = pg.v[ib];
          float num, den;
          if (!edge_crossing(va, vb, &num, &den)) continue;
          const float dc = pg.ds * (num / den);
          if (!(dc > 0.f && dc < 1.f)) continue;  // clamped crossing: no position gradient
          const float den_s = den + std::copysign(kGradEps * std::fabs(va.w * vb.w), den);
          const float rs = 1.f / den_s, xs = num * rs;
          const float gnum = -dd * rs, gden = dd * xs * rs;
          // d num = a.y db.x + b.x da.y - b.y da.x - a.x db.y; d den = a.y db.w + b.w da.y - b.y da.w - a.w db.y
          float gax = -vb.y * gnum, gbx = va.y * gnum;
          float gay = vb.x * gnum + vb.w * gden, gby = -va.x * gnum - va.w * gden;
          const float gaw = -vb.y * gden, gbw = va.y * gden;
          if (down) std::swap(gax, gay), std::swap(gbx, gby);
          const float ox = pg.xh - pg.cx, oy = pg.yh - pg.cy;  // hx = X xh + W (xh - cx), hy likewise
          list.push_back({pg.cam * a.V + pg.vi[ia], gax * pg.xh, gay * pg.yh, gax * ox + gay * oy + gaw});
          list.push_back({pg.cam * a.V + pg.vi[ib], gbx * pg.xh, gby * pg.yh, gbx * ox + gby * oy + gbw});
        }
      }
    }
  });
  at::Tensor grad_pos = zeros_serial({a.C, a.V, 4}, pos.options());
  float* gpos = grad_pos.data_ptr<float>();
  for (const auto& list : chunks)
    for (const PosGrad& e : list) {
      gpos[4 * e.index] += e.gx;
      gpos[4 * e.index + 1] += e.gy;
      gpos[4 * e.index + 3] += e.gw;
    }
  return {grad_color, grad_pos};
}

}  // namespace mt
