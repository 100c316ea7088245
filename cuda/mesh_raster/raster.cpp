// Tiled triangle rasterizer (forward) and its hand-written backward, CPU.
//
// Forward: one parallel loop over a pipeline of tasks (see rasterize_forward), per camera:
// (1) binning, per chunk of kChunk consecutive triangles: gather the vertices (structure of arrays), pixel bboxes
//     (8 lanes, raster_simd.h; triangles crossing w = 0 are clipped in double, raster_math.h), edge / depth planes
//     in double, exact coverage of small bboxes (most triangles of a fine mesh cover no pixel center and are
//     dropped here), then one 64-byte record per (triangle, overlapped tile) in the chunk's buffer, sorted by
//     tile with a counting sort;
// (2) rasterization, per kTile x kTile tile: walk the chunks in order (so triangles come in ascending id order),
//     depth-test each record's bbox rows 8 pixels at a time with float edge functions relative to the record's
//     first pixel (error ~1e-5 pixel at most, ~1e-6 for small triangles: the order of the float32 input's own
//     rounding), then resolve (u, v, ndc_z, id + 1) and rast_db of each pixel's winner once, in double. The test is
//     a strict "<" in ascending id order, so the nearest triangle wins and exact ties go to the smaller id; nothing
//     depends on the thread count.
// Large tiles keep the record scatter of (1) within few write streams; the tiny triangles of a scanned mesh make
// binning, not pixel work, the main cost.
//
// Backward: dL/dpos from dL/d(u, v, ndc_z) per covered pixel (raster_vjp, double), reduced onto vertices without
// atomics (scatter_to_vertices).
#include <ATen/ATen.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <thread>
#include <vector>

#include "raster_common.h"
#include "raster_math.h"
#include "raster_simd.h"

namespace mr {

namespace {

constexpr int kTile = 128;
constexpr int kRow = kTile + 8;  // tile buffer row stride: 8-lane loads from any pixel of a row stay inside
constexpr int64_t kChunk = 4096;

// Waits (yielding the CPU: the machine may be shared) until counter reaches target.
inline void wait_until(const std::atomic<int64_t>& counter, int64_t target) {
  while (counter.load(std::memory_order_acquire) < target) std::this_thread::yield();
}

struct Grid {
  int H, W, tx, ty;
  Grid(int64_t h, int64_t w)
      : H((int)h), W((int)w), tx((int)((w + kTile - 1) / kTile)), ty((int)((h + kTile - 1) / kTile)) {}
  int64_t n_tiles() const { return (int64_t)tx * ty; }
};

// One (triangle, tile) pair in one cache line: edge functions and ndc_z at the first pixel center of the
// triangle's bbox inside the tile (x0, y0; tile-relative), their per-pixel steps, and the triangle id.
struct alignas(64) TileTri {
  float e[3], ea[3], eb[3], z, za, zb;
  int16_t x0, y0, x1, y1;
  int32_t id;
  TileTri() {}  // no zero-initialization when the buffers grow
};

// A chunk's records sorted by tile: tile t owns recs[offsets[t] .. offsets[t + 1]).
struct ChunkBins {
  std::vector<int32_t> offsets;
  std::vector<TileTri> recs;
};

// Per-worker scratch of bin_chunk (structure of arrays over the chunk's triangles).
struct ChunkScratch {
  std::vector<float> v;       // [12][sv]: x, y, z, w of vertex 0, 1, 2
  std::vector<int32_t> box;   // [4][sv]: x0, y0, x1, y1
  std::vector<int32_t> kind;  // see bboxes_soa
  std::vector<double> pl;     // [13][sp]: ea[3], eb[3], ec[3], za, zb, zc, ok
  std::vector<int32_t> live;   // indices of the triangles that get records
  std::vector<int32_t> cursor;
};

// Edge planes (signs flipped so that det > 0) and depth plane of the chunk's triangles, as in triangle_planes.
void planes_soa(const float* __restrict v, int64_t n, int64_t sv, double hw, double hh, double* __restrict pl,
                int64_t sp) {
  const float *x0 = v, *y0 = v + sv, *z0 = v + 2 * sv, *w0 = v + 3 * sv, *x1 = v + 4 * sv, *y1 = v + 5 * sv,
              *z1 = v + 6 * sv, *w1 = v + 7 * sv, *x2 = v + 8 * sv, *y2 = v + 9 * sv, *z2 = v + 10 * sv,
              *w2 = v + 11 * sv;
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) {
    const double a0 = ((double)x0[i] + w0[i]) * hw, b0 = ((double)y0[i] + w0[i]) * hh, c0 = w0[i];
    const double a1 = ((double)x1[i] + w1[i]) * hw, b1 = ((double)y1[i] + w1[i]) * hh, c1 = w1[i];
    const double a2 = ((double)x2[i] + w2[i]) * hw, b2 = ((double)y2[i] + w2[i]) * hh, c2 = w2[i];
    const double E0x = b1 * c2 - c1 * b2, E0y = c1 * a2 - a1 * c2, E0z = a1 * b2 - b1 * a2;  // q1 x q2
    const double E1x = b2 * c0 - c2 * b0, E1y = c2 * a0 - a2 * c0, E1z = a2 * b0 - b2 * a0;  // q2 x q0
    const double E2x = b0 * c1 - c0 * b1, E2y = c0 * a1 - a0 * c1, E2z = a0 * b1 - b0 * a1;  // q0 x q1
    const double det = E0x * a0 + E0y * b0 + E0z * c0;
    const bool ok = (det != 0.0) & (std::fabs(det) <= std::numeric_limits<double>::max());
    // An unconditional division (degenerate triangles get inf / NaN planes, flagged by ok): dividing by a
    // selected value would keep the loop scalar.
    const double sgn = std::copysign(1.0, det), inv = 1.0 / det;
    pl[i] = sgn * E0x, pl[sp + i] = sgn * E1x, pl[2 * sp + i] = sgn * E2x;
    pl[3 * sp + i] = sgn * E0y, pl[4 * sp + i] = sgn * E1y, pl[5 * sp + i] = sgn * E2y;
    pl[6 * sp + i] = sgn * E0z, pl[7 * sp + i] = sgn * E1z, pl[8 * sp + i] = sgn * E2z;
    pl[9 * sp + i] = (E0x * z0[i] + E1x * z1[i] + E2x * z2[i]) * inv;
    pl[10 * sp + i] = (E0y * z0[i] + E1y * z1[i] + E2y * z2[i]) * inv;
    pl[11 * sp + i] = (E0z * z0[i] + E1z * z1[i] + E2z * z2[i]) * inv;
    pl[12 * sp + i] = ok ? 1.0 : 0.0;
  }
}

// Gathers the clip vertices of triangles tri[0 .. n) into structure-of-arrays v[(4 * vertex + coord) * sv + i].
void gather_vertices(const float* __restrict pos_c, const int32_t* __restrict tri, int64_t n, float* __restrict v,
                     int64_t sv) {
  constexpr int64_t kAhead = 16;  // the vertex loads are latency-bound without prefetching
  int64_t i = 0;
#ifdef MR_AVX2
  // 8 triangles at a time: each vertex is one 16-byte load; a 4x8 transpose makes the x, y, z, w rows.
  for (; i + 8 <= n; i += 8) {
    for (int64_t k = i + kAhead; k < std::min(n, i + kAhead + 8); ++k)
      for (int j = 0; j < 3; ++j) __builtin_prefetch(pos_c + 4 * (int64_t)tri[3 * k + j]);
    for (int j = 0; j < 3; ++j) {
      auto at = [&](int64_t k) { return _mm_loadu_ps(pos_c + 4 * (int64_t)tri[3 * (i + k) + j]); };
      const __m256 m0 = _mm256_insertf128_ps(_mm256_castps128_ps256(at(0)), at(4), 1);
      const __m256 m1 = _mm256_insertf128_ps(_mm256_castps128_ps256(at(1)), at(5), 1);
      const __m256 m2 = _mm256_insertf128_ps(_mm256_castps128_ps256(at(2)), at(6), 1);
      const __m256 m3 = _mm256_insertf128_ps(_mm256_castps128_ps256(at(3)), at(7), 1);
      const __m256 t0 = _mm256_unpacklo_ps(m0, m1), t1 = _mm256_unpackhi_ps(m0, m1);
      const __m256 t2 = _mm256_unpacklo_ps(m2, m3), t3 = _mm256_unpackhi_ps(m2, m3);
      _mm256_storeu_ps(v + (4 * j) * sv + i, _mm256_shuffle_ps(t0, t2, 0x44));
      _mm256_storeu_ps(v + (4 * j + 1) * sv + i, _mm256_shuffle_ps(t0, t2, 0xEE));
      _mm256_storeu_ps(v + (4 * j + 2) * sv + i, _mm256_shuffle_ps(t1, t3, 0x44));
      _mm256_storeu_ps(v + (4 * j + 3) * sv + i, _mm256_shuffle_ps(t1, t3, 0xEE));
    }
  }
#endif
  for (; i < n; ++i) {
    if (i + kAhead < n)
      for (int j = 0; j < 3; ++j) __builtin_prefetch(pos_c + 4 * (int64_t)tri[3 * (i + kAhead) + j]);
    for (int j = 0; j < 3; ++j) {
      const float* p = pos_c + 4 * (int64_t)tri[3 * i + j];
      for (int c = 0; c < 4; ++c) v[(4 * j + c) * sv + i] = p[c];
    }
  }
}

template <typename Fn>
inline void for_each_tile_of(const PixBox& b, Fn&& fn) {
  const int tx0 = b.x0 / kTile, ty0 = b.y0 / kTile, tx1 = b.x1 / kTile, ty1 = b.y1 / kTile;
  if (tx0 == tx1 && ty0 == ty1) return fn(ty0, tx0);  // the common case
  for (int ty = ty0; ty <= ty1; ++ty)
    for (int tx = tx0; tx <= tx1; ++tx) fn(ty, tx);
}

TileTri make_record(const double* pl, int64_t sp, int64_t i, const PixBox& b, int ty, int tx, int32_t id) {
  const int ox = tx * kTile, oy = ty * kTile;
  const int xa = std::max(b.x0, ox), ya = std::max(b.y0, oy);
  const double X = xa + 0.5, Y = ya + 0.5;
  TileTri r;
  for (int k = 0; k < 3; ++k) {
    const double ea = pl[k * sp + i], eb = pl[(3 + k) * sp + i], ec = pl[(6 + k) * sp + i];
    r.e[k] = (float)(ea * X + eb * Y + ec);
    r.ea[k] = (float)ea;
    r.eb[k] = (float)eb;
  }
  const double za = pl[9 * sp + i], zb = pl[10 * sp + i], zc = pl[11 * sp + i];
  r.z = (float)(za * X + zb * Y + zc);
  r.za = (float)za;
  r.zb = (float)zb;
  r.x0 = (int16_t)(xa - ox), r.x1 = (int16_t)(std::min(b.x1, ox + kTile - 1) - ox);
  r.y0 = (int16_t)(ya - oy), r.y1 = (int16_t)(std::min(b.y1, oy + kTile - 1) - oy);
  r.id = id;
  return r;
}

// Triangles whose bbox holds at most this many pixels are tested exactly (double) while binning: most of a
// finely tessellated mesh's triangles cover no pixel center at all and need no record.
constexpr int kSmallBox = 6;

// Bins the triangles [fb, fe) of one camera into cb.
void bin_chunk(const float* pos_c, const int32_t* tri, int64_t fb, int64_t fe, const Grid& g, ChunkBins& cb,
               ChunkScratch& s) {
  const int64_t n_tiles = g.n_tiles(), n = fe - fb;
  // Array strides padded off powers of two (12 streams 16 KB apart would share L1 sets) and to 8 lanes.
  const int64_t sv = (n + 15) / 16 * 16 + 16, sp = (n + 7) / 8 * 8 + 8;
  s.v.resize(12 * sv);  // every entry read is written first: no clearing
  s.box.resize(4 * sv);
  s.kind.resize(sv);
  s.pl.resize(13 * sp);
  float* v = s.v.data();
  int32_t* box = s.box.data();
  gather_vertices(pos_c, tri + 3 * fb, n, v, sv);
  const float margin = (float)(kBBoxMargin + 1e-6 * std::max(g.W, g.H));  // + float rounding of projections
  bboxes_soa(v, n, sv, g.H, g.W, margin, box, s.kind.data());
  planes_soa(v, n, sv, 0.5 * g.W, 0.5 * g.H, s.pl.data(), sp);
  for (int64_t i = 0; i < n; ++i) {
    if (s.kind[i] != 2) continue;
    // Crosses w = 0 (rare): clip against the depth range in double.
    const float* p[3] = {pos_c + 4 * (int64_t)tri[3 * (fb + i)], pos_c + 4 * (int64_t)tri[3 * (fb + i) + 1],
                         pos_c + 4 * (int64_t)tri[3 * (fb + i) + 2]};
    PixBox b;
    s.kind[i] = triangle_bbox(p, g.H, g.W, &b) ? 1 : 0;
    box[i] = b.x0, box[sv + i] = b.y0, box[2 * sv + i] = b.x1, box[3 * sv + i] = b.y1;
  }
  shrink_small_soa<kSmallBox>(s.pl.data(), sp, n, box, sv, s.kind.data());
  // The surviving triangles, compacted without branches (about half are culled, unpredictably).
  s.live.resize(n);
  int64_t m = 0;
  for (int64_t i = 0; i < n; ++i) {
    s.live[m] = (int32_t)i;
    m += (s.kind[i] != 0) & (box[2 * sv + i] >= box[i]) & (box[3 * sv + i] >= box[sv + i]) &
         (s.pl[12 * sp + i] != 0.0);
  }
  cb.offsets.assign(n_tiles + 1, 0);
  for (int64_t j = 0; j < m; ++j) {
    const int64_t i = s.live[j];
    for_each_tile_of({box[i], box[sv + i], box[2 * sv + i], box[3 * sv + i]},
                     [&](int ty, int tx) { ++cb.offsets[(int64_t)ty * g.tx + tx + 1]; });
  }
  for (int64_t t = 0; t < n_tiles; ++t) cb.offsets[t + 1] += cb.offsets[t];
  if ((int64_t)cb.recs.size() < cb.offsets[n_tiles]) cb.recs.resize(cb.offsets[n_tiles]);
  s.cursor.assign(cb.offsets.begin(), cb.offsets.end() - 1);
  for (int64_t j = 0; j < m; ++j) {
    const int64_t i = s.live[j];
    const PixBox b{box[i], box[sv + i], box[2 * sv + i], box[3 * sv + i]};
    for_each_tile_of(b, [&](int ty, int tx) {
      cb.recs[s.cursor[(int64_t)ty * g.tx + tx]++] = make_record(s.pl.data(), sp, i, b, ty, tx, (int32_t)(fb + i));
    });
  }
}

// (u, v, ndc_z, id + 1) and (du/dX, du/dY, dv/dX, dv/dY) at the pixel (dx, dy) relative to the record's first
// pixel, in double from the record's float coefficients (~1e-7 relative rounding of values at most a bbox away:
// u, v within ~1e-6 of the exact ones).
template <bool kWithDb>
inline void resolve_pixel(const TileTri& r, int dx, int dy, float* rast, float* db) {
  double e[3], S = 0, SA = 0, SB = 0;
  for (int k = 0; k < 3; ++k) {
    e[k] = (double)r.e[k] + (double)r.ea[k] * dx + (double)r.eb[k] * dy;
    S += e[k], SA += r.ea[k], SB += r.eb[k];
  }
  const double inv = 1.0 / S, u = e[0] * inv, v = e[1] * inv;
  rast[0] = (float)u;
  rast[1] = (float)v;
  rast[2] = (float)((double)r.z + (double)r.za * dx + (double)r.zb * dy);
  rast[3] = (float)(r.id + 1);
  if (!kWithDb) return;
  db[0] = (float)((r.ea[0] - u * SA) * inv);
  db[1] = (float)((r.eb[0] - u * SB) * inv);
  db[2] = (float)((r.ea[1] - v * SA) * inv);
  db[3] = (float)((r.eb[1] - v * SB) * inv);
}

// Per-worker tile buffers: depth, index of the winning record in `seen` (-1: none), records visited.
struct TileScratch {
  std::vector<float> zbuf = std::vector<float>(kTile * kRow);
  std::vector<int32_t> ibuf = std::vector<int32_t>(kTile * kRow);
  std::vector<const TileTri*> seen;
};

void raster_tile(int64_t tile, const Grid& g, const ChunkBins* chunks, int64_t n_chunks, TileScratch& s,
                 float* rast_c, float* db_c) {
  const int ox = (int)(tile % g.tx) * kTile, oy = (int)(tile / g.tx) * kTile;
  const int nx = std::min(kTile, g.W - ox), ny = std::min(kTile, g.H - oy);
  float* zbuf = s.zbuf.data();
  int32_t* ibuf = s.ibuf.data();
  for (int y = 0; y < ny; ++y) {
    std::fill(zbuf + y * kRow, zbuf + y * kRow + nx, std::numeric_limits<float>::infinity());
    std::fill(ibuf + y * kRow, ibuf + y * kRow + nx, -1);
  }
  s.seen.clear();
  for (int64_t k = 0; k < n_chunks; ++k) {
    const ChunkBins& cb = chunks[k];
    for (int32_t i = cb.offsets[tile]; i < cb.offsets[tile + 1]; ++i) {
      const TileTri& r = cb.recs[i];
      if (r.x1 < r.x0) continue;
      const int32_t idx = (int32_t)s.seen.size();
      s.seen.push_back(&r);
      for (int y = r.y0; y <= r.y1; ++y) {
        const float dy = (float)(y - r.y0);
        const float e[3] = {r.e[0] + r.eb[0] * dy, r.e[1] + r.eb[1] * dy, r.e[2] + r.eb[2] * dy};
        depth_test_row(e, r.ea, r.z + r.zb * dy, r.za, r.x0, r.x1, zbuf + y * kRow, ibuf + y * kRow, idx);
      }
    }
  }
  alignas(32) float rrow[kTile * 4], drow[kTile * 4];
  for (int y = 0; y < ny; ++y) {
    for (int x = 0; x < nx; ++x) {
      const int32_t i = ibuf[y * kRow + x];
      if (i < 0) {
        std::fill(rrow + 4 * x, rrow + 4 * x + 4, 0.f);
        if (db_c != nullptr) std::fill(drow + 4 * x, drow + 4 * x + 4, 0.f);
      } else {
        const TileTri& r = *s.seen[i];
        if (db_c != nullptr)
          resolve_pixel<true>(r, x - r.x0, y - r.y0, rrow + 4 * x, drow + 4 * x);
        else
          resolve_pixel<false>(r, x - r.x0, y - r.y0, rrow + 4 * x, drow + 4 * x);
      }
    }
    const int64_t px = (int64_t)(oy + y) * g.W + ox;
    stream_copy(rast_c + px * 4, rrow, 4 * nx);
    if (db_c != nullptr) stream_copy(db_c + px * 4, drow, 4 * nx);
  }
#ifdef MR_AVX2
  _mm_sfence();  // the non-temporal stores are visible before the tile counts as done
#endif
}

}  // namespace

std::vector<at::Tensor> rasterize_forward(const at::Tensor& pos, const at::Tensor& tri, int64_t height,
                                          int64_t width, bool with_db) {
  check_mesh(pos, tri);
  TORCH_CHECK(height > 0 && width > 0, "resolution must be positive, got ", height, "x", width);
  TORCH_CHECK(height <= 32767 && width <= 32767, "resolution must be at most 32767, got ", height, "x", width);
  TORCH_CHECK(tri.size(0) < (int64_t(1) << 24), "at most 2^24 - 1 triangles (ids are stored as float32), got ",
              tri.size(0));
  const int64_t C = pos.size(0), V = pos.size(1), F = tri.size(0);
  at::Tensor rast = empty_output({C, height, width, 4}, pos.options());
  // Without with_db, rast_db is neither written nor allocated (an empty tensor is returned).
  at::Tensor db = with_db ? empty_output({C, height, width, 4}, pos.options()) : at::empty({0}, pos.options());
  const Grid g(height, width);
  const int64_t n_chunks = (F + kChunk - 1) / kChunk, n_tiles = g.n_tiles();
  // One parallel loop over a pipeline of tasks: bin camera 0, bin camera 1, raster camera 0, bin camera 2,
  // raster camera 1, ... A raster task waits until its camera is binned, a bin task until the camera that used
  // the same buffers (3 sets in rotation) is rasterized. Tasks are handed out in this order, so every awaited
  // task is already running and nothing deadlocks; with one thread nothing ever waits. A single loop matters on
  // a shared machine: each loop's end is a barrier where a descheduled thread stalls the others.
  constexpr int64_t kSets = 3;
  struct Task {
    int64_t cam, index;
    bool bin;
  };
  std::vector<Task> tasks;
  tasks.reserve(C * (n_chunks + n_tiles));
  for (int64_t c = 0; c <= C; ++c) {
    for (int64_t k = 0; c < C && k < n_chunks; ++k) tasks.push_back({c, k, true});
    for (int64_t k = 0; c > 0 && k < n_tiles; ++k) tasks.push_back({c - 1, k, false});
  }
  std::vector<ChunkBins> chunks(std::min(C, kSets) * n_chunks);
  std::unique_ptr<std::atomic<int64_t>[]> binned(new std::atomic<int64_t>[C]), drawn(new std::atomic<int64_t>[C]);
  for (int64_t c = 0; c < C; ++c) binned[c] = 0, drawn[c] = 0;
  std::vector<ChunkScratch> bin_scratch(max_slots());
  std::vector<TileScratch> tile_scratch(max_slots());
  const float* pp = pos.data_ptr<float>();
  const int32_t* t = tri.data_ptr<int32_t>();
  parallel_dynamic((int64_t)tasks.size(), 1, [&](int64_t ib, int64_t ie, int slot) {
    for (int64_t i = ib; i < ie; ++i) {
      const Task& task = tasks[i];
      ChunkBins* set = &chunks[(task.cam % kSets) * n_chunks];
      if (task.bin) {
        if (task.cam >= kSets) wait_until(drawn[task.cam - kSets], n_tiles);
        bin_chunk(pp + task.cam * V * 4, t, task.index * kChunk, std::min(F, (task.index + 1) * kChunk), g,
                  set[task.index], bin_scratch[slot]);
        binned[task.cam].fetch_add(1, std::memory_order_release);
      } else {
        wait_until(binned[task.cam], n_chunks);
        raster_tile(task.index, g, set, n_chunks, tile_scratch[slot],
                    rast.data_ptr<float>() + task.cam * height * width * 4,
                    with_db ? db.data_ptr<float>() + task.cam * height * width * 4 : nullptr);
        drawn[task.cam].fetch_add(1, std::memory_order_release);
      }
    }
  });
  return {rast, db};
}

at::Tensor rasterize_backward(const at::Tensor& pos, const at::Tensor& tri, const at::Tensor& rast,
                              const at::Tensor& grad_rast) {
  check_mesh(pos, tri);
  check_rast(rast);
  MR_CHECK_TENSOR(grad_rast, at::kFloat, "grad_rast");
  TORCH_CHECK(rast.size(0) == pos.size(0), "rast and pos must have the same number of cameras, got ",
              rast.size(0), " and ", pos.size(0));
  TORCH_CHECK(grad_rast.sizes() == rast.sizes(), "grad_rast must have rast's shape ", rast.sizes(), ", got ",
              grad_rast.sizes());
  const int64_t C = pos.size(0), V = pos.size(1), F = tri.size(0), H = rast.size(1), W = rast.size(2);
  const int64_t P = H * W;
  at::Tensor grad_pos = at::empty({C, V, 4}, pos.options());
  const float* pp = pos.data_ptr<float>();
  const float* gr = grad_rast.data_ptr<float>();
  const int32_t* t = tri.data_ptr<int32_t>();
  scatter_to_vertices(rast.data_ptr<float>(), C, P, t, F, V, 4, C, [&](int64_t c, int64_t pix, int f, double* g) {
    const float* gp = gr + (c * P + pix) * 4;
    if (gp[0] == 0.f && gp[1] == 0.f && gp[2] == 0.f) {
      std::fill(g, g + 12, 0.0);
      return;
    }
    const float* pc = pp + c * V * 4;
    const float* p[3] = {pc + 4 * (int64_t)t[3 * f], pc + 4 * (int64_t)t[3 * f + 1], pc + 4 * (int64_t)t[3 * f + 2]};
    raster_vjp(p, (double)(pix % W) + 0.5, (double)(pix / W) + 0.5, (int)H, (int)W, gp[0], gp[1], gp[2],
               reinterpret_cast<double(*)[4]>(g));
  }, grad_pos.data_ptr<float>());
  return grad_pos;
}

}  // namespace mr
