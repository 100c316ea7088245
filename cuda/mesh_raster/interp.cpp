// Attribute interpolation over a rasterized image (forward, screen-space derivatives, hand-written backward), CPU.
//
// out = u a0 + v a1 + (1 - u - v) a2 per covered pixel; out_da = (da/dX, da/dY) = (a0 - a2) du/d* + (a1 - a2) dv/d*
// for the listed attributes. attr is [Ca, V, A] with Ca = 1 (shared by all cameras) or Ca = C.
// Backward: dL/drast[..., :2] per pixel; dL/dattr reduced onto vertices without atomics (scatter_to_vertices).
#include <ATen/ATen.h>

#include <atomic>
#include <optional>
#include <vector>

#include "raster_common.h"
#include "raster_simd.h"

namespace mr {

namespace {

struct InterpInputs {
  int64_t C, P, Ca, V, A, F;
};

InterpInputs check_interp(const at::Tensor& attr, const at::Tensor& rast, const at::Tensor& tri) {
  MR_CHECK_TENSOR(attr, at::kFloat, "attr");
  MR_CHECK_TENSOR(tri, at::kInt, "tri");
  TORCH_CHECK(tri.dim() == 2 && tri.size(1) == 3, "tri must have shape [F, 3], got ", tri.sizes());
  const int64_t P = check_rast(rast);
  const int64_t C = rast.size(0);
  TORCH_CHECK(attr.dim() == 3 && (attr.size(0) == 1 || attr.size(0) == C),
              "attr must have shape [1 or C, V, A] with C=", C, ", got ", attr.sizes());
  const int64_t V = attr.size(1), F = tri.size(0);
  check_indices(tri, V);
  return {C, C == 0 ? 0 : P / C, attr.size(0), V, attr.size(2), F};
}

// Interpolates the n pixels of rast r (one camera; ac = its attribute table [V, A]) into out [n, A]; kA > 0 fixes
// A at compile time. Sets bad when an id lies outside [-1, F). rast comes from DRAM (the rasterizer streams it
// out), so it is prefetched ahead of the dependent index and attribute loads.
template <int kA>
inline void interp_block(const float* __restrict r, int64_t n, const float* __restrict ac, const int32_t* __restrict t,
                         int64_t F, int64_t A_, float* __restrict out, bool& bad) {
  const int64_t A = kA > 0 ? kA : A_;
  for (int64_t p = 0; p < n; ++p) {
    if ((p & 3) == 0) __builtin_prefetch(r + (p + 64) * 4);
    const float* rp = r + p * 4;
    const int f = pixel_tri(rp);
    float* op = out + p * A;
    if (f < 0 || f >= F) {
      bad |= f >= F || f < -1;
      for (int64_t k = 0; k < A; ++k) op[k] = 0.f;
      continue;
    }
    const float *a0 = ac + t[3 * f] * A, *a1 = ac + t[3 * f + 1] * A, *a2 = ac + t[3 * f + 2] * A;
    const float u = rp[0], v = rp[1], w = 1.f - u - v;
    for (int64_t k = 0; k < A; ++k) op[k] = u * a0[k] + v * a1[k] + w * a2[k];
  }
}

// interp_block with screen-space derivatives of the attributes diff_idx (written straight to od [n, 2 * n_da]).
inline void interp_block_da(const float* r, const float* db, int64_t n, const float* ac, const int32_t* t, int64_t F,
                            int64_t A, const std::vector<int64_t>& diff_idx, float* out, float* od, bool& bad) {
  const int64_t n_da = (int64_t)diff_idx.size();
  for (int64_t p = 0; p < n; ++p) {
    const float* rp = r + p * 4;
    const int f = pixel_tri(rp);
    float* op = out + p * A;
    float* odp = od + p * 2 * n_da;
    if (f < 0 || f >= F) {
      bad |= f >= F || f < -1;
      std::fill(op, op + A, 0.f);
      std::fill(odp, odp + 2 * n_da, 0.f);
      continue;
    }
    const float *a0 = ac + t[3 * f] * A, *a1 = ac + t[3 * f + 1] * A, *a2 = ac + t[3 * f + 2] * A;
    const float u = rp[0], v = rp[1], w = 1.f - u - v;
    for (int64_t k = 0; k < A; ++k) op[k] = u * a0[k] + v * a1[k] + w * a2[k];
    const float* dbp = db + p * 4;
    for (int64_t j = 0; j < n_da; ++j) {
      const int64_t k = diff_idx[j];
      const float d0 = a0[k] - a2[k], d1 = a1[k] - a2[k];
      odp[2 * j] = d0 * dbp[0] + d1 * dbp[2];
      odp[2 * j + 1] = d0 * dbp[1] + d1 * dbp[3];
    }
  }
}

}  // namespace

std::vector<at::Tensor> interpolate_forward(const at::Tensor& attr, const at::Tensor& rast, const at::Tensor& tri,
                                            const std::optional<at::Tensor>& rast_db,
                                            const std::vector<int64_t>& diff_idx) {
  const InterpInputs in = check_interp(attr, rast, tri);
  const int64_t A = in.A, n_da = (int64_t)diff_idx.size();
  const bool with_da = rast_db.has_value() && n_da > 0;
  if (with_da) {
    MR_CHECK_TENSOR(*rast_db, at::kFloat, "rast_db");
    TORCH_CHECK(rast_db->sizes() == rast.sizes(), "rast_db must have rast's shape ", rast.sizes(), ", got ",
                rast_db->sizes());
    for (int64_t k : diff_idx) TORCH_CHECK(k >= 0 && k < A, "diff_attrs index ", k, " outside [0, ", A, ")");
  }
  at::Tensor out = empty_output({rast.size(0), rast.size(1), rast.size(2), A}, attr.options());
  at::Tensor da;
  if (with_da) da = at::empty({rast.size(0), rast.size(1), rast.size(2), 2 * n_da}, attr.options());
  const float* r = rast.data_ptr<float>();
  const float* db = with_da ? rast_db->data_ptr<float>() : nullptr;
  const float* ap = attr.data_ptr<float>();
  const int32_t* t = tri.data_ptr<int32_t>();
  float* o = out.data_ptr<float>();
  float* od = with_da ? da.data_ptr<float>() : nullptr;
  std::atomic<bool> bad_id{false};
  // Blocks of pixels are computed into a per-worker buffer and streamed out (see stream_copy); a block never
  // crosses a camera, so each block knows its attribute table.
  constexpr int64_t kBlock = 256;
  std::vector<std::vector<float>> block(max_slots(), std::vector<float>(kBlock * A));
  const int64_t blocks_per_cam = (in.P + kBlock - 1) / kBlock;
  parallel_dynamic(in.C * blocks_per_cam, 16, [&](int64_t bb, int64_t be, int slot) {
    float* buf = block[slot].data();
    bool bad = false;
    for (int64_t b = bb; b < be; ++b) {
      const int64_t c = b / blocks_per_cam, p0 = b % blocks_per_cam * kBlock;
      const int64_t b0 = c * in.P + p0, b1 = c * in.P + std::min(in.P, p0 + kBlock);
      const float* ac = ap + (in.Ca == 1 ? 0 : c) * in.V * A;
      if (with_da) {
        interp_block_da(r + b0 * 4, db + b0 * 4, b1 - b0, ac, t, in.F, A, diff_idx, buf, od + b0 * 2 * n_da, bad);
      } else {
        switch (A) {  // the common widths unrolled at compile time
          case 1: interp_block<1>(r + b0 * 4, b1 - b0, ac, t, in.F, A, buf, bad); break;
          case 2: interp_block<2>(r + b0 * 4, b1 - b0, ac, t, in.F, A, buf, bad); break;
          case 3: interp_block<3>(r + b0 * 4, b1 - b0, ac, t, in.F, A, buf, bad); break;
          case 4: interp_block<4>(r + b0 * 4, b1 - b0, ac, t, in.F, A, buf, bad); break;
          default: interp_block<0>(r + b0 * 4, b1 - b0, ac, t, in.F, A, buf, bad);
        }
      }
      stream_copy(o + b0 * A, buf, (b1 - b0) * A);
    }
    if (bad) bad_id = true;
#ifdef MR_AVX2
    _mm_sfence();  // the non-temporal stores are visible before this chunk counts as done
#endif
  });
  TORCH_CHECK(!bad_id, "rast holds triangle ids outside [0, ", in.F, "): was it rasterized with this tri?");
  return {out, da};
}

std::vector<at::Tensor> interpolate_backward(const at::Tensor& attr, const at::Tensor& rast, const at::Tensor& tri,
                                             const at::Tensor& grad_out) {
  const InterpInputs in = check_interp(attr, rast, tri);
  const int64_t A = in.A;
  MR_CHECK_TENSOR(grad_out, at::kFloat, "grad_out");
  TORCH_CHECK(grad_out.sizes() == at::IntArrayRef({rast.size(0), rast.size(1), rast.size(2), A}),
              "grad_out must have shape [C, H, W, A], got ", grad_out.sizes());
  at::Tensor grad_attr = at::empty(attr.sizes(), attr.options());
  at::Tensor grad_rast = at::empty(rast.sizes(), rast.options());
  const float* r = rast.data_ptr<float>();
  const float* ap = attr.data_ptr<float>();
  const float* go = grad_out.data_ptr<float>();
  const int32_t* t = tri.data_ptr<int32_t>();
  float* gr = grad_rast.data_ptr<float>();
  parallel_dynamic(in.C * in.P, 16384, [&](int64_t pb, int64_t pe, int) {
    for (int64_t p = pb; p < pe; ++p) {
      const int f = pixel_tri(r + p * 4);
      float* g = gr + p * 4;
      g[0] = g[1] = g[2] = g[3] = 0.f;
      if (f < 0 || f >= in.F) continue;
      const float* ac = ap + (in.Ca == 1 ? 0 : p / in.P) * in.V * A;
      const float *a0 = ac + t[3 * f] * A, *a1 = ac + t[3 * f + 1] * A, *a2 = ac + t[3 * f + 2] * A;
      const float* gp = go + p * A;
      double gu = 0, gv = 0;
      for (int64_t k = 0; k < A; ++k) {
        gu += (double)gp[k] * (a0[k] - a2[k]);
        gv += (double)gp[k] * (a1[k] - a2[k]);
      }
      g[0] = (float)gu;
      g[1] = (float)gv;
    }
  });
  scatter_to_vertices(r, in.C, in.P, t, in.F, in.V, (int)A, in.Ca, [&](int64_t c, int64_t pix, int, double* g) {
    const int64_t p = c * in.P + pix;
    const float* gp = go + p * A;
    const double u = r[p * 4], v = r[p * 4 + 1], w = 1.0 - u - v;
    for (int64_t k = 0; k < A; ++k) {
      g[k] = u * gp[k];
      g[A + k] = v * gp[k];
      g[2 * A + k] = w * gp[k];
    }
  }, grad_attr.data_ptr<float>());
  return {grad_attr, grad_rast};
}

}  // namespace mr
