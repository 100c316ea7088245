// Volume rendering: front-to-back compositing of packed ray samples, forward and hand-written backward
// (renderers/volume/composite.py documents the model; renderers/volume/_ref.py is the torch twin).
//
// Ray r owns samples [offsets[r], offsets[r + 1]), sorted by depth. Sample i has an opacity a_i: from a density
// (mode 0: a_i = 1 - exp(-sigma_i delta_i), delta_i = t_end - t_start) or given (mode 1: NeuS alphas). With
// T_i = prod_{j < i} (1 - a_j), a sample is composited while T_i >= t_eps (early stop, as nerfacc) with weight
// w_i = T_i a_i: rgb = sum w_i c_i, opacity = sum w_i, depth = sum w_i (t_start + t_end) / 2.
//
// Backward, per ray: with G_i = dL/dw_i = g_rgb.c_i + g_depth t_i + g_opacity + g_w_i and
// U_i = sum_{k > i} a_k G_k prod_{i < j < k} (1 - a_j), accumulated from the back as
// U_i = a_{i+1} G_{i+1} + (1 - a_{i+1}) U_{i+1} (no division, so a fully opaque sample is no special case):
//   dL/da_i = T_i (G_i - U_i)                                              (mode 1)
//   dL/dsigma_i = delta_i (1 - a_i) T_i (G_i - U_i), dL/ddelta_i = sigma_i (same factor)   (mode 0)
//   dL/dc_i = w_i g_rgb.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <atomic>
#include <cmath>
#include <vector>

namespace volume {
namespace {

#define VOL_CHECK(x, rows, cols)                                                                          \
  TORCH_CHECK_VALUE((x).device().is_cpu() && (x).scalar_type() == at::kFloat && (x).is_contiguous(),       \
                    #x " must be a contiguous float32 CPU tensor");                                       \
  TORCH_CHECK_VALUE((x).dim() == ((cols) == 0 ? 1 : 2) && (x).size(0) == (rows) &&                         \
                        ((cols) <= 0 || (x).size(1) == (cols)),                                           \
                    #x " has the wrong shape ", (x).sizes())

struct Inputs {
  int64_t S, R, D;
  const float *values, *colors, *t0, *t1;
  const int64_t* off;
};

Inputs check(const at::Tensor& values, const at::Tensor& colors, const at::Tensor& t_starts,
             const at::Tensor& t_ends, const at::Tensor& offsets, int64_t mode) {
  TORCH_CHECK_VALUE(mode == 0 || mode == 1, "mode must be 0 (density) or 1 (alpha), got ", mode);
  const int64_t S = values.size(0);
  VOL_CHECK(values, S, 0);
  VOL_CHECK(colors, S, -1);
  VOL_CHECK(t_starts, S, 0);
  VOL_CHECK(t_ends, S, 0);
  TORCH_CHECK_VALUE(offsets.device().is_cpu() && offsets.scalar_type() == at::kLong && offsets.is_contiguous() &&
                        offsets.dim() == 1 && offsets.size(0) >= 1,
                    "offsets must be a contiguous int64 CPU tensor [R + 1]");
  const int64_t R = offsets.size(0) - 1;
  const int64_t* off = offsets.data_ptr<int64_t>();
  TORCH_CHECK_VALUE(off[0] == 0 && off[R] == S, "offsets must start at 0 and end at the sample count ", S);
  for (int64_t r = 0; r < R; ++r) TORCH_CHECK_VALUE(off[r + 1] >= off[r], "offsets must be non-decreasing");
  return {S, R, colors.size(1), values.data_ptr<float>(), colors.data_ptr<float>(), t_starts.data_ptr<float>(),
          t_ends.data_ptr<float>(), off};
}

// The per-sample checks of composite() in one parallel pass (in Python they cost several times the kernel).
void check_samples(const Inputs& in, int64_t mode) {
  std::atomic<int> bad{0};  // 1 values, 2 colors, 3 interval ends, 4 reversed interval
  at::parallel_for(0, in.S, 1 << 14, [&](int64_t b, int64_t e) {
    int found = 0;
    for (int64_t i = b; i < e && !found; ++i) {
      const float v = in.values[i];
      if (!(v >= 0.f) || !std::isfinite(v) || (mode == 1 && !(v <= 1.f))) found = 1;
      for (int64_t k = 0; k < in.D && !found; ++k)
        if (!std::isfinite(in.colors[i * in.D + k])) found = 2;
      if (!found && !(std::isfinite(in.t0[i]) && std::isfinite(in.t1[i]))) found = 3;
      if (!found && !(in.t1[i] >= in.t0[i])) found = 4;
    }
    if (found) bad.store(found);
  });
  const int f = bad.load();
  TORCH_CHECK_VALUE(f != 1, "values must be finite and ", mode == 0 ? ">= 0 (densities)" : "in [0, 1] (alphas)");
  TORCH_CHECK_VALUE(f != 2, "colors contains NaN or Inf");
  TORCH_CHECK_VALUE(f != 3, "t_starts / t_ends contain NaN or Inf");
  TORCH_CHECK_VALUE(f != 4, "t_ends must be >= t_starts");
}

inline float opacity_of(const Inputs& in, int64_t i, int64_t mode) {
  return mode == 0 ? 1.f - std::exp(-in.values[i] * (in.t1[i] - in.t0[i])) : in.values[i];
}

}  // namespace

// -> [rgb [R, D], opacity [R], depth [R], weights [S], count [R] int32 (samples composited)]
std::vector<at::Tensor> composite_forward(const at::Tensor& values, const at::Tensor& colors,
                                          const at::Tensor& t_starts, const at::Tensor& t_ends,
                                          const at::Tensor& offsets, int64_t mode, double t_eps) {
  const Inputs in = check(values, colors, t_starts, t_ends, offsets, mode);
  check_samples(in, mode);
  auto rgb = at::zeros({in.R, in.D}, at::kFloat);
  auto opacity = at::zeros({in.R}, at::kFloat), depth = at::zeros({in.R}, at::kFloat);
  auto weights = at::zeros({in.S}, at::kFloat);
  auto count = at::zeros({in.R}, at::kInt);
  float *cp = rgb.data_ptr<float>(), *op = opacity.data_ptr<float>(), *zp = depth.data_ptr<float>(),
        *wp = weights.data_ptr<float>();
  int32_t* np = count.data_ptr<int32_t>();
  const float eps = (float)t_eps;
  at::parallel_for(0, in.R, 256, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r) {
      float T = 1.f, z = 0.f;
      float* c = cp + r * in.D;
      int64_t i = in.off[r];
      for (; i < in.off[r + 1] && T >= eps; ++i) {
        const float a = opacity_of(in, i, mode);
        const float w = T * a;
        wp[i] = w;
        const float* col = in.colors + i * in.D;
        for (int64_t k = 0; k < in.D; ++k) c[k] += w * col[k];
        z += w * 0.5f * (in.t0[i] + in.t1[i]);
        T *= 1.f - a;
      }
      op[r] = 1.f - T;
      zp[r] = z;
      np[r] = (int32_t)(i - in.off[r]);
    }
  });
  return {rgb, opacity, depth, weights, count};
}

// -> [v_values [S], v_colors [S, D], v_t_starts [S], v_t_ends [S]]
std::vector<at::Tensor> composite_backward(const at::Tensor& values, const at::Tensor& colors,
                                           const at::Tensor& t_starts, const at::Tensor& t_ends,
                                           const at::Tensor& offsets, int64_t mode, const at::Tensor& count,
                                           const at::Tensor& v_rgb, const at::Tensor& v_opacity,
                                           const at::Tensor& v_depth, const at::Tensor& v_weights) {
  const Inputs in = check(values, colors, t_starts, t_ends, offsets, mode);
  VOL_CHECK(v_rgb, in.R, in.D);
  VOL_CHECK(v_opacity, in.R, 0);
  VOL_CHECK(v_depth, in.R, 0);
  VOL_CHECK(v_weights, in.S, 0);
  TORCH_CHECK_VALUE(count.scalar_type() == at::kInt && count.is_contiguous() && count.numel() == in.R,
                    "count must be int32 [R]");
  auto gv = at::zeros({in.S}, at::kFloat), gc = at::zeros({in.S, in.D}, at::kFloat);
  auto g0 = at::zeros({in.S}, at::kFloat), g1 = at::zeros({in.S}, at::kFloat);
  float *gvp = gv.data_ptr<float>(), *gcp = gc.data_ptr<float>(), *g0p = g0.data_ptr<float>(),
        *g1p = g1.data_ptr<float>();
  const float *vrp = v_rgb.data_ptr<float>(), *vop = v_opacity.data_ptr<float>(), *vzp = v_depth.data_ptr<float>(),
              *vwp = v_weights.data_ptr<float>();
  const int32_t* np = count.data_ptr<int32_t>();
  for (int64_t r = 0; r < in.R; ++r)
    TORCH_CHECK_VALUE(np[r] >= 0 && in.off[r] + np[r] <= in.off[r + 1], "count does not match offsets");
  at::parallel_for(0, in.R, 256, [&](int64_t b, int64_t e) {
    std::vector<float> Ts, as;
    for (int64_t r = b; r < e; ++r) {
      const int64_t first = in.off[r], n = np[r];
      Ts.resize(n);
      as.resize(n);
      float T = 1.f;
      for (int64_t j = 0; j < n; ++j) {  // the forward pass's transmittances, recomputed
        as[j] = opacity_of(in, first + j, mode);
        Ts[j] = T;
        T *= 1.f - as[j];
      }
      const float* g_rgb = vrp + r * in.D;
      float U = 0.f, a_next = 0.f, G_next = 0.f;  // U_i, a_{i+1}, G_{i+1}
      for (int64_t j = n - 1; j >= 0; --j) {
        const int64_t i = first + j;
        const float* col = in.colors + i * in.D;
        const float tm = 0.5f * (in.t0[i] + in.t1[i]);
        float G = vop[r] + vzp[r] * tm + vwp[i];
        for (int64_t k = 0; k < in.D; ++k) G += g_rgb[k] * col[k];
        if (j < n - 1) U = a_next * G_next + (1.f - a_next) * U;
        const float w = Ts[j] * as[j];
        for (int64_t k = 0; k < in.D; ++k) gcp[i * in.D + k] = w * g_rgb[k];
        // The depth's midpoint depends on the sample's ends.
        g0p[i] = g1p[i] = 0.5f * w * vzp[r];
        const float da = Ts[j] * (G - U);  // dL/da_i
        if (mode == 0) {
          const float dx = (1.f - as[j]) * da;  // dL/d(sigma delta)
          gvp[i] = (in.t1[i] - in.t0[i]) * dx;
          g1p[i] += in.values[i] * dx;
          g0p[i] -= in.values[i] * dx;
        } else {
          gvp[i] = da;
        }
        a_next = as[j];
        G_next = G;
      }
    }
  });
  return {gv, gc, g0, g1};
}

}  // namespace volume

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon volume rendering: front-to-back compositing of packed ray samples, CPU kernels";
  m.def("composite_forward", &volume::composite_forward, py::arg("values"), py::arg("colors"),
        py::arg("t_starts"), py::arg("t_ends"), py::arg("offsets"), py::arg("mode"), py::arg("t_eps"),
        py::call_guard<py::gil_scoped_release>(),
        "(values [S] densities (mode 0) or alphas (mode 1), colors [S, D], t_starts [S], t_ends [S], offsets "
        "[R + 1] int64, mode, t_eps) -> [rgb [R, D], opacity [R], depth [R], weights [S], count [R] int32]");
  m.def("composite_backward", &volume::composite_backward, py::call_guard<py::gil_scoped_release>(),
        "(values, colors, t_starts, t_ends, offsets, mode, count, v_rgb [R, D], v_opacity [R], v_depth [R], "
        "v_weights [S]) -> [v_values [S], v_colors [S, D], v_t_starts [S], v_t_ends [S]]");
}
