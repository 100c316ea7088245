// Tile binning, forward compositing and hand-written backward of the Gaussian rasterizer (CPU).
//
// Layout: tiles of tile_size^2 pixels; each tile composites gauss_ids[tile_offsets[t]:tile_offsets[t+1]] front to
// back. Per tile, the Gaussians' 2D data is gathered into contiguous scratch arrays; the loop over Gaussians is the
// outer loop and the pixels of the tile the inner one (8 lanes with AVX2, see gs_avx2.h; portable scalar loops
// otherwise), with per-pixel masks for the 1/255 skip and the early termination.
// Work is pruned exactly: a Gaussian only visits the tile rows inside its alpha >= 1/255 ellipse (alpha_extent),
// rows whose pixels have all terminated are skipped, and a tile stops when all its pixels have.
// Tiles are handed out dynamically to torch's intra-op (OpenMP) threads; the backward writes per-(tile, Gaussian)
// partial gradients to their own rows and reduces them per Gaussian afterwards in a fixed order (no atomics,
// deterministic).
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <numeric>
#include <vector>

#include "gs_avx2.h"
#include "gs_common.h"

namespace gs {

namespace {

struct TileGrid {
  int W, H, ts, tw, th;
  TileGrid(int64_t width, int64_t height, int64_t tile_size)
      : W((int)width), H((int)height), ts((int)tile_size),
        tw((int)((width + tile_size - 1) / tile_size)), th((int)((height + tile_size - 1) / tile_size)) {}
  int n_tiles() const { return tw * th; }
};

// Runs fn(tile, slot) over all tiles, one tile at a time (costs vary a lot between tiles).
template <typename Fn>
void for_each_tile(int n_tiles, Fn&& fn) {
  parallel_dynamic(n_tiles, 1, [&](int64_t begin, int64_t end, int slot) {
    for (int64_t t = begin; t < end; ++t) fn((int)t, slot);
  });
}

// Stride of per-pixel scratch arrays: room for 8-lane loads past the last pixel (masked lanes).
inline int padded(int P) { return (P + 7) / 8 * 8 + 8; }

// Per-worker scratch: gathered Gaussian data of one tile and per-pixel state.
struct Scratch {
  std::vector<float> gx, gy, ga, gb, gc, go, gz, gcol, px, py, T, active, accz, acc, Tf, vz, va, vr, w;
  std::vector<int> last, rlo, rhi;
};

// Gathers the tile's Gaussians into contiguous arrays, with the range of tile rows [rlo, rhi) each can affect.
void gather(Scratch& s, const TileGrid& grid, int tile, const int* ids, int n, int D, const float* m2, const float* cn,
            const float* op, const float* col, const float* z) {
  for (auto* v : {&s.gx, &s.gy, &s.ga, &s.gb, &s.gc, &s.go, &s.gz}) v->resize(n);
  s.gcol.resize((size_t)n * D);
  s.rlo.resize(n);
  s.rhi.resize(n);
  const float yc = (float)((tile / grid.tw) * grid.ts) + 0.5f;  // center of the tile's first row
  for (int k = 0; k < n; ++k) {
    const int g = ids[k];
    s.gx[k] = m2[2 * g];
    s.gy[k] = m2[2 * g + 1];
    s.ga[k] = cn[3 * g];
    s.gb[k] = cn[3 * g + 1];
    s.gc[k] = cn[3 * g + 2];
    s.go[k] = op[g];
    s.gz[k] = z[g];
    for (int c = 0; c < D; ++c) s.gcol[(size_t)k * D + c] = col[(size_t)g * D + c];
    float ex, ey;
    if (!alpha_extent(cn + 3 * g, op[g], &ex, &ey)) {
      s.rlo[k] = s.rhi[k] = 0;
      continue;
    }
    const float lo = std::ceil(s.gy[k] - ey - yc), hi = std::floor(s.gy[k] + ey - yc) + 1.f;
    s.rlo[k] = (int)std::min<float>(std::max(lo, 0.f), (float)grid.ts);
    s.rhi[k] = (int)std::min<float>(std::max(hi, 0.f), (float)grid.ts);
  }
}

void pixel_centers(Scratch& s, const TileGrid& grid, int tile) {
  const int P = grid.ts * grid.ts, x0 = (tile % grid.tw) * grid.ts, y0 = (tile / grid.tw) * grid.ts;
  s.px.assign(padded(P), 0.f);
  s.py.assign(padded(P), 0.f);
  for (int p = 0; p < P; ++p) {
    s.px[p] = (float)(x0 + p % grid.ts) + 0.5f;
    s.py[p] = (float)(y0 + p / grid.ts) + 0.5f;
  }
}

template <int CH>
void forward_tile(const TileGrid& grid, int tile, int n, int Dr, Scratch& s, const float* bg, float* rgb,
                  float* alpha_out, float* depth_out, float* final_T, int* n_contrib) {
  const int D = CH > 0 ? CH : Dr;
  const int P = grid.ts * grid.ts, x0 = (tile % grid.tw) * grid.ts, y0 = (tile / grid.tw) * grid.ts;
  const int S = padded(P);
  s.T.assign(S, 1.f);
  s.active.assign(S, 0.f);
  s.accz.assign(S, 0.f);
  s.acc.assign((size_t)S * D, 0.f);
  s.last.assign(S, 0);
  int n_active = 0;
  for (int p = 0; p < P; ++p) {
    const bool in = x0 + p % grid.ts < grid.W && y0 + p / grid.ts < grid.H;
    s.active[p] = in ? 1.f : 0.f;
    n_active += in;
  }
  float* __restrict T = s.T.data();
  float* __restrict act = s.active.data();
  float* __restrict accz = s.accz.data();
  float* __restrict acc = s.acc.data();
  int* __restrict last = s.last.data();
  const float* __restrict px = s.px.data();
  const float* __restrict py = s.py.data();
  const int ts = grid.ts;
  int alo = 0, ahi = std::min(ts, grid.H - y0);  // rows of the tile that still have active pixels
  for (int k = 0; k < n && n_active > 0; ++k) {
    const int p0 = std::max(s.rlo[k], alo) * ts, p1 = std::min(s.rhi[k], ahi) * ts;
    if (p0 >= p1) continue;
    const float mx = s.gx[k], my = s.gy[k], a = s.ga[k], b = s.gb[k], c = s.gc[k], o = s.go[k], zz = s.gz[k];
    const float* col = &s.gcol[(size_t)k * D];
    int n_stop = 0;
#ifdef GS_HAVE_AVX2
    if (CH == 3) {
      const avx2::Splat g{mx, my, a, b, c, o, zz, {col[0], col[1], col[D > 2 ? 2 : 0]}};
      n_stop = avx2::forward_pixels(g, k, p0, p1, S, px, py, T, act, acc, accz, last);
    } else
#endif
    for (int p = p0; p < p1; ++p) {
      const float dx = px[p] - mx, dy = py[p] - my;
      const float power = -0.5f * (a * dx * dx + c * dy * dy) - b * dx * dy;
      const float og = o * fast_exp(power);
      const float al = og < kAlphaMax ? og : kAlphaMax;
      const float Tp = T[p];
      const float test_T = Tp * (1.f - al);
      const bool valid = (power <= 0.f) & (al >= kAlphaMin) & (act[p] != 0.f);
      const bool stop = valid & (test_T < kTMin);
      const bool inc = valid & !stop;
      const float w = inc ? al * Tp : 0.f;
      for (int ch = 0; ch < D; ++ch) acc[ch * S + p] += w * col[ch];
      accz[p] += w * zz;
      T[p] = inc ? test_T : Tp;
      last[p] = inc ? k + 1 : last[p];
      act[p] = stop ? 0.f : act[p];
      n_stop += stop ? 1 : 0;
    }
    if (n_stop > 0) {
      n_active -= n_stop;
      auto row_active = [&](int r) {
        for (int i = 0; i < ts; ++i)
          if (act[r * ts + i] != 0.f) return true;
        return false;
      };
      while (alo < ahi && !row_active(alo)) ++alo;
      while (ahi > alo && !row_active(ahi - 1)) --ahi;
    }
  }
  for (int p = 0; p < P; ++p) {
    const int x = x0 + p % grid.ts, y = y0 + p / grid.ts;
    if (x >= grid.W || y >= grid.H) continue;
    const int64_t pix = (int64_t)y * grid.W + x;
    for (int ch = 0; ch < D; ++ch) rgb[pix * D + ch] = acc[ch * S + p] + T[p] * bg[ch];
    alpha_out[pix] = 1.f - T[p];
    depth_out[pix] = accz[p];
    final_T[pix] = T[p];
    n_contrib[pix] = last[p];
  }
}

// Gradient row layout per (tile, Gaussian) entry: mean2d x, y, conic a, b, c, opacity, depth, colors[D].
constexpr int kRowFixed = 7;

template <int CH>
void backward_tile(const TileGrid& grid, int tile, int n, int Dr, Scratch& s, const float* bg, const float* v_rgb,
                   const float* v_alpha, const float* v_depth, const float* final_T, const int* n_contrib,
                   float* rows) {
  const int D = CH > 0 ? CH : Dr;
  const int R = kRowFixed + D;
  const int P = grid.ts * grid.ts, x0 = (tile % grid.tw) * grid.ts, y0 = (tile / grid.tw) * grid.ts;
  const int S = padded(P);
  s.T.assign(S, 1.f);
  s.Tf.assign(S, 1.f);
  s.accz.assign(S, 0.f);
  s.acc.assign((size_t)S * D, 0.f);
  s.vz.assign(S, 0.f);
  s.va.assign(S, 0.f);
  s.vr.assign((size_t)S * D, 0.f);
  s.last.assign(S, 0);
  s.w.assign(S, 0.f);
  int kmax = 0;
  for (int p = 0; p < P; ++p) {
    const int x = x0 + p % grid.ts, y = y0 + p / grid.ts;
    const bool in = x < grid.W && y < grid.H;
    const int64_t pix = (int64_t)y * grid.W + x;
    s.T[p] = s.Tf[p] = in ? final_T[pix] : 1.f;
    s.last[p] = in ? n_contrib[pix] : 0;
    s.vz[p] = in ? v_depth[pix] : 0.f;
    s.va[p] = in ? v_alpha[pix] : 0.f;
    for (int ch = 0; ch < D; ++ch) {
      s.vr[ch * S + p] = in ? v_rgb[pix * D + ch] : 0.f;
      s.acc[ch * S + p] = bg[ch];  // color "behind" the last Gaussian: the background
    }
    kmax = std::max(kmax, s.last[p]);
  }
  std::fill(rows + (size_t)kmax * R, rows + (size_t)n * R, 0.f);
  float* __restrict T = s.T.data();
  float* __restrict accz = s.accz.data();
  float* __restrict acc = s.acc.data();
  const float* __restrict Tf = s.Tf.data();
  const float* __restrict vz = s.vz.data();
  const float* __restrict va = s.va.data();
  const float* __restrict vr = s.vr.data();
  const int* __restrict last = s.last.data();
  const float* __restrict px = s.px.data();
  const float* __restrict py = s.py.data();
  float* __restrict wbuf = s.w.data();
  const int ts = grid.ts;
  int rowlast[64];
  for (int r = 0; r < ts; ++r) {
    rowlast[r] = 0;
    for (int i = 0; i < ts; ++i) rowlast[r] = std::max(rowlast[r], s.last[r * ts + i]);
  }
  for (int k = kmax - 1; k >= 0; --k) {
    float* row = rows + (size_t)k * R;
    // Rows where Gaussian k can matter: within its alpha extent and with a pixel that composited it.
    int r0 = s.rlo[k], r1 = s.rhi[k];
    while (r0 < r1 && rowlast[r0] <= k) ++r0;
    while (r1 > r0 && rowlast[r1 - 1] <= k) --r1;
    if (r0 >= r1) {
      std::fill(row, row + R, 0.f);
      continue;
    }
    const int p0 = r0 * ts, p1 = r1 * ts;
    const float mx = s.gx[k], my = s.gy[k], a = s.ga[k], b = s.gb[k], c = s.gc[k], o = s.go[k], zz = s.gz[k];
    const float* col = &s.gcol[(size_t)k * D];
#ifdef GS_HAVE_AVX2
    if (CH == 3) {
      const avx2::Splat g{mx, my, a, b, c, o, zz, {col[0], col[1], col[D > 2 ? 2 : 0]}};
      avx2::backward_pixels(g, k, p0, p1, S, px, py, T, Tf, acc, accz, last, vr, vz, va, row);
      continue;
    }
#endif
    float s_mx = 0.f, s_my = 0.f, s_a = 0.f, s_b = 0.f, s_c = 0.f, s_o = 0.f, s_z = 0.f;
    for (int p = p0; p < p1; ++p) {
      const float dx = px[p] - mx, dy = py[p] - my;
      const float power = -0.5f * (a * dx * dx + c * dy * dy) - b * dx * dy;
      const float G = fast_exp(power);
      const float og = o * G;
      const float al = og < kAlphaMax ? og : kAlphaMax;
      const bool valid = (k < last[p]) & (power <= 0.f) & (al >= kAlphaMin);
      const float ra = 1.f / (1.f - al);
      const float Tk = valid ? T[p] * ra : T[p];  // transmittance in front of Gaussian k
      T[p] = Tk;
      const float w = valid ? al * Tk : 0.f;
      wbuf[p] = w;
      // dL/dalpha_k = T_k (c_k - C_behind) . dL/drgb + T_k (z_k - Z_behind) dL/ddepth + T_final / (1 - alpha_k) dL/dalpha
      float v_c = (zz - accz[p]) * vz[p];
      for (int ch = 0; ch < D; ++ch) {
        const float accc = acc[ch * S + p];
        v_c += (col[ch] - accc) * vr[ch * S + p];
        acc[ch * S + p] = valid ? al * col[ch] + (1.f - al) * accc : accc;
      }
      const float v_al = Tk * v_c + Tf[p] * ra * va[p];
      accz[p] = valid ? al * zz + (1.f - al) * accz[p] : accz[p];
      s_z += w * vz[p];
      // The 0.99 clamp stops the gradient (as torch.clamp does).
      const bool pass = valid & (og <= kAlphaMax);
      const float v_pow = pass ? og * v_al : 0.f;
      s_o += pass ? G * v_al : 0.f;
      s_a += -0.5f * dx * dx * v_pow;
      s_b += -dx * dy * v_pow;
      s_c += -0.5f * dy * dy * v_pow;
      s_mx += (a * dx + b * dy) * v_pow;
      s_my += (b * dx + c * dy) * v_pow;
    }
    row[0] = s_mx;
    row[1] = s_my;
    row[2] = s_a;
    row[3] = s_b;
    row[4] = s_c;
    row[5] = s_o;
    row[6] = s_z;
    for (int ch = 0; ch < D; ++ch) {
      const float* __restrict vrc = vr + ch * S;
      float sc = 0.f;
      for (int p = p0; p < p1; ++p) sc += wbuf[p] * vrc[p];
      row[kRowFixed + ch] = sc;
    }
  }
}

}  // namespace

// Tile/Gaussian intersections sorted by (tile, depth, index): returns tile_offsets [n_tiles + 1], gauss_ids [M].
//
// A Gaussian touches the tiles overlapping [mean2d +- radius], intersected with the box outside which its alpha is
// below 1/255 (alpha_extent): dropping those tiles changes no pixel, it only saves work.
std::vector<at::Tensor> bin_gaussians(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                                      const at::Tensor& radii, const at::Tensor& depths, int64_t width, int64_t height,
                                      int64_t tile_size) {
  const int64_t N = means2d.size(0);
  GS_CHECK_INPUT(means2d, N, 2);
  GS_CHECK_INPUT(conics, N, 3);
  GS_CHECK_INPUT(opacities, N);
  const float* cn = conics.data_ptr<float>();
  const float* op = opacities.data_ptr<float>();
  GS_CHECK_INT(radii, N);
  GS_CHECK_INPUT(depths, N);
  TORCH_CHECK(tile_size > 0 && width > 0 && height > 0, "tile_size and image size must be positive");
  const TileGrid grid(width, height, tile_size);
  const float* m2 = means2d.data_ptr<float>();
  const int* r = radii.data_ptr<int>();
  const float* z = depths.data_ptr<float>();
  // Visible Gaussians in (depth, index) order; filling the tile buckets in this order sorts every tile.
  std::vector<int> order;
  order.reserve(N);
  for (int64_t i = 0; i < N; ++i)
    if (r[i] > 0) order.push_back((int)i);
  std::sort(order.begin(), order.end(), [z](int i, int j) { return z[i] < z[j] || (z[i] == z[j] && i < j); });
  const int V = (int)order.size();
  std::vector<int> rect((size_t)V * 4);
  const float ts = (float)grid.ts;
  parallel_dynamic(V, 4096, [&](int64_t begin, int64_t end, int) {
    for (int64_t k = begin; k < end; ++k) {
      const int g = order[k];
      const float rf = (float)r[g];
      int* rc = &rect[k * 4];
      float ex, ey;
      if (!alpha_extent(cn + 3 * g, op[g], &ex, &ey)) {
        rc[0] = rc[1] = rc[2] = rc[3] = 0;
        continue;
      }
      // The radius box as the reference bins it, then clipped to the alpha box.
      const int x0 = std::min(std::max(0, (int)std::floor((m2[2 * g] - rf) / ts)), grid.tw);
      const int x1 = std::min(std::max(0, (int)std::ceil((m2[2 * g] + rf) / ts)), grid.tw);
      const int y0 = std::min(std::max(0, (int)std::floor((m2[2 * g + 1] - rf) / ts)), grid.th);
      const int y1 = std::min(std::max(0, (int)std::ceil((m2[2 * g + 1] + rf) / ts)), grid.th);
      rc[0] = std::max(x0, (int)std::floor((m2[2 * g] - ex) / ts));
      rc[1] = std::min(x1, (int)std::ceil((m2[2 * g] + ex) / ts));
      rc[2] = std::max(y0, (int)std::floor((m2[2 * g + 1] - ey) / ts));
      rc[3] = std::min(y1, (int)std::ceil((m2[2 * g + 1] + ey) / ts));
      if (rc[0] >= rc[1] || rc[2] >= rc[3]) rc[0] = rc[1] = rc[2] = rc[3] = 0;
    }
  }, 1 << 18);
  const int n_tiles = grid.n_tiles();
  auto tile_offsets = zeros_serial({n_tiles + 1}, means2d.options().dtype(at::kInt));
  int* off = tile_offsets.data_ptr<int>();
  for (int k = 0; k < V; ++k) {
    const int* rc = &rect[k * 4];
    for (int ty = rc[2]; ty < rc[3]; ++ty)
      for (int tx = rc[0]; tx < rc[1]; ++tx) off[ty * grid.tw + tx + 1]++;
  }
  for (int t = 0; t < n_tiles; ++t) {
    TORCH_CHECK((int64_t)off[t + 1] + off[t] < INT32_MAX, "too many tile intersections");
    off[t + 1] += off[t];
  }
  auto gauss_ids = at::empty({(int64_t)off[n_tiles]}, tile_offsets.options());
  int* ids = gauss_ids.data_ptr<int>();
  std::vector<int> cursor(off, off + n_tiles);
  for (int k = 0; k < V; ++k) {
    const int* rc = &rect[k * 4];
    for (int ty = rc[2]; ty < rc[3]; ++ty)
      for (int tx = rc[0]; tx < rc[1]; ++tx) ids[cursor[ty * grid.tw + tx]++] = order[k];
  }
  return {tile_offsets, gauss_ids};
}

namespace {
void check_raster_inputs(const at::Tensor& means2d, const at::Tensor& conics, const at::Tensor& opacities,
                         const at::Tensor& colors, const at::Tensor& depths, const at::Tensor& background,
                         const at::Tensor& tile_offsets, const at::Tensor& gauss_ids, const TileGrid& grid) {
  const int64_t N = means2d.size(0);
  TORCH_CHECK(colors.dim() == 2, "colors must have shape [N, D], got ", colors.sizes());
  const int64_t D = colors.size(1);
  GS_CHECK_INPUT(means2d, N, 2);
  GS_CHECK_INPUT(conics, N, 3);
  GS_CHECK_INPUT(opacities, N);
  GS_CHECK_INPUT(colors, N, D);
  GS_CHECK_INPUT(depths, N);
  GS_CHECK_INPUT(background, D);
  GS_CHECK_INT(tile_offsets, grid.n_tiles() + 1);
  GS_CHECK_INT(gauss_ids, gauss_ids.size(0));
  TORCH_CHECK(grid.ts >= 1 && grid.ts <= 64, "tile_size must be in [1, 64], got ", grid.ts);
  TORCH_CHECK(tile_offsets.data_ptr<int>()[grid.n_tiles()] == gauss_ids.size(0), "tile_offsets do not match gauss_ids");
}
}  // namespace

// Forward compositing: rgb [H, W, D], alpha [H, W, 1], depth [H, W, 1], final_T [H, W], n_contrib [H, W] int32.
std::vector<at::Tensor> rasterize_forward(const at::Tensor& means2d, const at::Tensor& conics,
                                          const at::Tensor& opacities, const at::Tensor& colors,
                                          const at::Tensor& depths, const at::Tensor& background,
                                          const at::Tensor& tile_offsets, const at::Tensor& gauss_ids, int64_t width,
                                          int64_t height, int64_t tile_size) {
  const TileGrid grid(width, height, tile_size);
  check_raster_inputs(means2d, conics, opacities, colors, depths, background, tile_offsets, gauss_ids, grid);
  const int D = (int)colors.size(1);
  auto opts = means2d.options();
  auto rgb = at::empty({height, width, D}, opts);
  auto alpha = at::empty({height, width, 1}, opts);
  auto depth = at::empty({height, width, 1}, opts);
  auto final_T = at::empty({height, width}, opts);
  auto n_contrib = at::empty({height, width}, opts.dtype(at::kInt));
  const int* off = tile_offsets.data_ptr<int>();
  const int* ids = gauss_ids.data_ptr<int>();
  const float *m2 = means2d.data_ptr<float>(), *cn = conics.data_ptr<float>(), *op = opacities.data_ptr<float>();
  const float *col = colors.data_ptr<float>(), *z = depths.data_ptr<float>(), *bg = background.data_ptr<float>();
  float *o_rgb = rgb.data_ptr<float>(), *o_a = alpha.data_ptr<float>(), *o_d = depth.data_ptr<float>();
  float* o_T = final_T.data_ptr<float>();
  int* o_n = n_contrib.data_ptr<int>();
  std::vector<Scratch> scratch(std::max(1, at::get_num_threads()));
  for_each_tile(grid.n_tiles(), [&](int t, int slot) {
    Scratch& s = scratch[slot];
    const int n = off[t + 1] - off[t];
    gather(s, grid, t, ids + off[t], n, D, m2, cn, op, col, z);
    pixel_centers(s, grid, t);
    if (D == 3)
      forward_tile<3>(grid, t, n, D, s, bg, o_rgb, o_a, o_d, o_T, o_n);
    else
      forward_tile<0>(grid, t, n, D, s, bg, o_rgb, o_a, o_d, o_T, o_n);
  });
  return {rgb, alpha, depth, final_T, n_contrib};
}

// Backward compositing: dL/d(means2d [N, 2], conics [N, 3], opacities [N], colors [N, D], depths [N]).
std::vector<at::Tensor> rasterize_backward(const at::Tensor& means2d, const at::Tensor& conics,
                                           const at::Tensor& opacities, const at::Tensor& colors,
                                           const at::Tensor& depths, const at::Tensor& background,
                                           const at::Tensor& tile_offsets, const at::Tensor& gauss_ids,
                                           int64_t width, int64_t height, int64_t tile_size,
                                           const at::Tensor& final_T, const at::Tensor& n_contrib,
                                           const at::Tensor& v_rgb, const at::Tensor& v_alpha,
                                           const at::Tensor& v_depth) {
  const TileGrid grid(width, height, tile_size);
  check_raster_inputs(means2d, conics, opacities, colors, depths, background, tile_offsets, gauss_ids, grid);
  const int64_t N = means2d.size(0);
  const int D = (int)colors.size(1);
  GS_CHECK_INPUT(final_T, height, width);
  GS_CHECK_INT(n_contrib, height, width);
  GS_CHECK_INPUT(v_rgb, height, width, D);
  GS_CHECK_INPUT(v_alpha, height, width, 1);
  GS_CHECK_INPUT(v_depth, height, width, 1);
  const int R = kRowFixed + D;
  const int64_t M = gauss_ids.size(0);
  std::vector<float> rows((size_t)M * R);
  const int* off = tile_offsets.data_ptr<int>();
  const int* ids = gauss_ids.data_ptr<int>();
  const float *m2 = means2d.data_ptr<float>(), *cn = conics.data_ptr<float>(), *op = opacities.data_ptr<float>();
  const float *col = colors.data_ptr<float>(), *z = depths.data_ptr<float>(), *bg = background.data_ptr<float>();
  const float *vr = v_rgb.data_ptr<float>(), *va = v_alpha.data_ptr<float>(), *vd = v_depth.data_ptr<float>();
  const float* fT = final_T.data_ptr<float>();
  const int* nc = n_contrib.data_ptr<int>();
  std::vector<Scratch> scratch(std::max(1, at::get_num_threads()));
  for_each_tile(grid.n_tiles(), [&](int t, int slot) {
    Scratch& s = scratch[slot];
    const int n = off[t + 1] - off[t];
    float* trows = rows.data() + (size_t)off[t] * R;
    gather(s, grid, t, ids + off[t], n, D, m2, cn, op, col, z);
    pixel_centers(s, grid, t);
    if (D == 3)
      backward_tile<3>(grid, t, n, D, s, bg, vr, va, vd, fT, nc, trows);
    else
      backward_tile<0>(grid, t, n, D, s, bg, vr, va, vd, fT, nc, trows);
  });
  auto opts = means2d.options();
  auto v_means2d = zeros_serial({N, 2}, opts);
  auto v_conics = zeros_serial({N, 3}, opts);
  auto v_opac = zeros_serial({N}, opts);
  auto v_colors = zeros_serial({N, D}, opts);
  auto v_depths = zeros_serial({N}, opts);
  float* outs[5] = {v_means2d.data_ptr<float>(), v_conics.data_ptr<float>(), v_opac.data_ptr<float>(),
                    v_depths.data_ptr<float>(), v_colors.data_ptr<float>()};
  // Reduce rows per Gaussian in intersection order (deterministic); the five outputs in parallel.
  const int first[5] = {0, 2, 5, 6, kRowFixed}, width_of[5] = {2, 3, 1, 1, D};
  parallel_dynamic(5, 1, [&](int64_t begin, int64_t end, int) {
    for (int64_t o = begin; o < end; ++o) {
      const int f = first[o], w = width_of[o];
      float* dst = outs[o];
      for (int64_t m = 0; m < M; ++m) {
        const float* row = rows.data() + (size_t)m * R + f;
        float* d = dst + (size_t)ids[m] * w;
        for (int j = 0; j < w; ++j) d[j] += row[j];
      }
    }
  }, /*min_parallel=*/M < (1 << 21) ? 6 : 0);
  return {v_means2d, v_conics, v_opac, v_colors, v_depths};
}

}  // namespace gs
