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
  // Blocks of pixels are computed into a per-worker buffer and streamed out (see stream_copy).
  constexpr int64_t kBlock = 256;
  std::vector<std::vector<float>> block(max_slots(), std::vector<float>(kBlock * A));
  parallel_dynamic(in.C * in.P, 16 * kBlock, [&](int64_t pb, int64_t pe, int slot) {
    float* buf = block[slot].data();
    for (int64_t b0 = pb; b0 < pe; b0 += kBlock) {
      const int64_t b1 = std::min(pe, b0 + kBlock);
      for (int64_t p = b0; p < b1; ++p) {
        const float* rp = r + p * 4;
        const int f = pixel_tri(rp);
        float* op = buf + (p - b0) * A;
        float* odp = with_da ? od + p * 2 * n_da : nullptr;
        if (f < 0 || f >= in.F) {
          if (f >= in.F || f < -1) bad_id = true;
          std::fill(op, op + A, 0.f);
          if (with_da) std::fill(odp, odp + 2 * n_da, 0.f);
          continue;
        }
        const float* ac = ap + (in.Ca == 1 ? 0 : p / in.P) * in.V * A;
        const float *a0 = ac + t[3 * f] * A, *a1 = ac + t[3 * f + 1] * A, *a2 = ac + t[3 * f + 2] * A;
        const float u = rp[0], v = rp[1], w = 1.f - u - v;
        for (int64_t k = 0; k < A; ++k) op[k] = u * a0[k] + v * a1[k] + w * a2[k];
        if (!with_da) continue;
        const float* dbp = db + p * 4;
        for (int64_t j = 0; j < n_da; ++j) {
          const int64_t k = diff_idx[j];
          const float d0 = a0[k] - a2[k], d1 = a1[k] - a2[k];
          odp[2 * j] = d0 * dbp[0] + d1 * dbp[2];
          odp[2 * j + 1] = d0 * dbp[1] + d1 * dbp[3];
        }
      }
      stream_copy(o + b0 * A, buf, (b1 - b0) * A);
    }
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
