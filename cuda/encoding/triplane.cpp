// Tri-plane feature sampling: forward, its vector-Jacobian products, and the second-order products the eikonal
// loss of a neural SDF trains through (renderers/volume/encoding.py documents the op; its torch twin is
// torch.nn.functional.grid_sample, bilinear, border padding, align_corners=True).
//
// Level l holds three planes P[p] of C channels, r x r texels (xy, xz, yz: plane p samples axes (a, b), a along
// the texel row, b down the columns), stored channels last, [3, r, r, C], so that a texel's channels are
// contiguous (the Python side transposes grid_sample's [3, C, r, r] once per call). A point u in [-1, 1]^3 maps
// on plane p to texel coordinates x = (u_a + 1) (r - 1) / 2, y = (u_b + 1) (r - 1) / 2, clamped to [0, r - 1]
// (the clamp's derivative 0 outside, as grid_sample's border padding). With x0 = min(floor x, r - 2),
// fx = x - x0 (and the same for y):
//   f_c = (1-fx)(1-fy) q00 + fx (1-fy) q01 + (1-fx) fy q10 + fx fy q11,   q_ij = P[y0 + i, x0 + j, c]
//   df/dx = (1-fy)(q01 - q00) + fy (q11 - q10),   df/dy = (1-fx)(q10 - q00) + fx (q11 - q01),
//   d2f/dxdy = D = q11 - q10 - q01 + q00,   d2f/dx2 = d2f/dy2 = 0.
// Output column (l, p, c) of [N, K]: levels in order, then planes, then channels.
//
// Ops (g = dL/dF [N, K], h = dL/dgu [N, 3]):
//   forward(u)                 -> F
//   backward(u, g)             -> gu = sum g dF/du (only where asked), gP = scatter of g with the bilinear weights
//   backward_backward(u, g, h) -> d<h, gu>/du (the cross terms D), d<h, gu>/dg, d<h, gu>/dP
// Scatters into the planes accumulate per chunk of points (one per thread) in private buffers, summed in chunk
// order: the result does not depend on which thread ran which chunk. A NaN point gets NaN features and NaN
// gradients and adds nothing to the planes.
#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace encoding {
namespace {

constexpr int kAxes[3][2] = {{0, 1}, {0, 2}, {1, 2}};

struct Level {
  const float* P;  // [3, r, r, C]
  int64_t C, r, col, elem;  // channels, edge, first output column, offset in the flat plane-gradient buffer
};

// Texel coordinate of u along an axis of r texels: cell x0, fraction f, and dx/du (0 where clamped).
struct Axis {
  int64_t i;
  float f, s;
};

inline bool nan_point(const float* u) { return std::isnan(u[0]) || std::isnan(u[1]) || std::isnan(u[2]); }

inline Axis axis(float u, int64_t r) {
  const float half = 0.5f * float(r - 1);
  float x = (u + 1.f) * half, s = half;
  if (!(x > 0.f)) {  // NaN lands here too; every op checks its points first (nan_point)
    x = 0.f;
    s = 0.f;
  } else if (x >= float(r - 1)) {
    x = float(r - 1);
    s = 0.f;
  }
  const int64_t i = std::min<int64_t>(int64_t(x), r - 2);
  return {i, x - float(i), s};
}

std::vector<Level> levels_of(const at::Tensor& u, const std::vector<at::Tensor>& planes, int64_t& K) {
  TORCH_CHECK_VALUE(u.device().is_cpu() && u.scalar_type() == at::kFloat && u.is_contiguous() && u.dim() == 2 &&
                        u.size(1) == 3,
                    "u must be a contiguous float32 CPU tensor [N, 3], got ", u.sizes());
  TORCH_CHECK_VALUE(!planes.empty(), "planes must hold at least one level");
  std::vector<Level> out;
  K = 0;
  int64_t elem = 0;
  for (const auto& P : planes) {
    TORCH_CHECK_VALUE(P.device().is_cpu() && P.scalar_type() == at::kFloat && P.is_contiguous() && P.dim() == 4 &&
                          P.size(0) == 3 && P.size(1) == P.size(2) && P.size(1) >= 2,
                      "each level must be a contiguous float32 CPU tensor [3, r, r, C] with r >= 2, got ",
                      P.sizes());
    out.push_back({P.data_ptr<float>(), P.size(3), P.size(1), K, elem});
    K += 3 * P.size(3);
    elem += P.numel();
  }
  return out;
}

void check_grad(const at::Tensor& g, int64_t N, int64_t K, const char* name) {
  TORCH_CHECK_VALUE(g.device().is_cpu() && g.scalar_type() == at::kFloat && g.is_contiguous() && g.dim() == 2 &&
                        g.size(0) == N && g.size(1) == K,
                    name, " must be a contiguous float32 CPU tensor [", N, ", ", K, "], got ", g.sizes());
}

// Chunks of points, one private plane-gradient buffer each (chunk order fixes the sum's order).
int64_t num_chunks(int64_t N) {
  return std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), (N + 1023) / 1024));
}

std::vector<at::Tensor> split_planes(const at::Tensor& flat, const std::vector<at::Tensor>& planes) {
  std::vector<at::Tensor> out;
  int64_t elem = 0;
  for (const auto& P : planes) {
    out.push_back(flat.narrow(0, elem, P.numel()).view(P.sizes()));
    elem += P.numel();
  }
  return out;
}

// Runs body(n0, n1, buffer) over chunks of [0, N), each with a zeroed private buffer of `total` floats when
// `scatter`; returns the buffers' sum in chunk order (empty when not `scatter`).
template <class Body>
at::Tensor chunked(int64_t N, int64_t total, bool scatter, const Body& body) {
  const int64_t T = num_chunks(N);
  at::Tensor buffers = scatter ? at::zeros({T, total}, at::kFloat) : at::Tensor();
  at::parallel_for(0, T, 1, [&](int64_t t0, int64_t t1) {
    for (int64_t t = t0; t < t1; ++t) {
      const int64_t n0 = N * t / T, n1 = N * (t + 1) / T;
      body(n0, n1, scatter ? buffers.data_ptr<float>() + t * total : nullptr);
    }
  });
  if (!scatter) return at::Tensor();
  return T == 1 ? buffers[0] : buffers.sum(0);
}

int64_t total_elems(const std::vector<at::Tensor>& planes) {
  int64_t total = 0;
  for (const auto& P : planes) total += P.numel();
  return total;
}

}  // namespace

at::Tensor triplane_forward(const at::Tensor& u, const std::vector<at::Tensor>& planes) {
  int64_t K;
  const auto levels = levels_of(u, planes, K);
  const int64_t N = u.size(0);
  at::Tensor F = at::empty({N, K}, u.options());
  const float* U = u.data_ptr<float>();
  float* out = F.data_ptr<float>();
  at::parallel_for(0, N, 256, [&](int64_t n0, int64_t n1) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* un = U + 3 * n;
      float* fn = out + n * K;
      const bool nan = nan_point(un);
      for (const auto& L : levels) {
        for (int p = 0; p < 3; ++p) {
          float* f = fn + L.col + p * L.C;
          if (nan) {
            std::fill(f, f + L.C, std::numeric_limits<float>::quiet_NaN());
            continue;
          }
          const Axis X = axis(un[kAxes[p][0]], L.r), Y = axis(un[kAxes[p][1]], L.r);
          const float w00 = (1 - X.f) * (1 - Y.f), w01 = X.f * (1 - Y.f), w10 = (1 - X.f) * Y.f, w11 = X.f * Y.f;
          const int64_t C = L.C, dy = L.r * C;
          const float* q = L.P + ((p * L.r + Y.i) * L.r + X.i) * C;
          for (int64_t c = 0; c < C; ++c)
            f[c] = w00 * q[c] + w01 * q[C + c] + w10 * q[dy + c] + w11 * q[dy + C + c];
        }
      }
    }
  });
  return F;
}

// gu [N, 3] (undefined unless need_u) and the planes' gradients (empty unless need_planes).
std::tuple<at::Tensor, std::vector<at::Tensor>> triplane_backward(const at::Tensor& u,
                                                                  const std::vector<at::Tensor>& planes,
                                                                  const at::Tensor& g, bool need_u,
                                                                  bool need_planes) {
  int64_t K;
  const auto levels = levels_of(u, planes, K);
  const int64_t N = u.size(0), total = total_elems(planes);
  check_grad(g, N, K, "grad_features");
  at::Tensor gu = need_u ? at::zeros({N, 3}, u.options()) : at::Tensor();
  const float* U = u.data_ptr<float>();
  const float* G = g.data_ptr<float>();
  float* GU = need_u ? gu.data_ptr<float>() : nullptr;
  at::Tensor flat = chunked(N, total, need_planes, [&](int64_t n0, int64_t n1, float* buf) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* un = U + 3 * n;
      const float* gn = G + n * K;
      if (nan_point(un)) {  // NaN features in the forward: NaN gradient to the point, nothing to the planes
        if (GU) std::fill(GU + 3 * n, GU + 3 * n + 3, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      for (const auto& L : levels) {
        for (int p = 0; p < 3; ++p) {
          const int a = kAxes[p][0], b = kAxes[p][1];
          const Axis X = axis(un[a], L.r), Y = axis(un[b], L.r);
          const float w00 = (1 - X.f) * (1 - Y.f), w01 = X.f * (1 - Y.f), w10 = (1 - X.f) * Y.f, w11 = X.f * Y.f;
          const int64_t C = L.C, dy = L.r * C, at0 = ((p * L.r + Y.i) * L.r + X.i) * C;
          const float* q = L.P + at0;
          const float* gc = gn + L.col + p * C;
          float da = 0.f, db = 0.f;
          if (GU)
            for (int64_t c = 0; c < C; ++c) {
              da += gc[c] * ((1 - Y.f) * (q[C + c] - q[c]) + Y.f * (q[dy + C + c] - q[dy + c]));
              db += gc[c] * ((1 - X.f) * (q[dy + c] - q[c]) + X.f * (q[dy + C + c] - q[C + c]));
            }
          if (buf) {
            float* o = buf + L.elem + at0;
            for (int64_t c = 0; c < C; ++c) {
              o[c] += gc[c] * w00;
              o[C + c] += gc[c] * w01;
              o[dy + c] += gc[c] * w10;
              o[dy + C + c] += gc[c] * w11;
            }
          }
          if (GU) {
            GU[3 * n + a] += da * X.s;
            GU[3 * n + b] += db * Y.s;
          }
        }
      }
    }
  });
  return {gu, need_planes ? split_planes(flat, planes) : std::vector<at::Tensor>{}};
}

// The VJP of gu = triplane_backward(u, P, g).gu with h = dL/dgu: (dL/du, dL/dg, dL/dP), each only where asked.
std::tuple<at::Tensor, at::Tensor, std::vector<at::Tensor>> triplane_backward_backward(
    const at::Tensor& u, const std::vector<at::Tensor>& planes, const at::Tensor& g, const at::Tensor& h,
    bool need_u, bool need_g, bool need_planes) {
  int64_t K;
  const auto levels = levels_of(u, planes, K);
  const int64_t N = u.size(0), total = total_elems(planes);
  check_grad(g, N, K, "grad_features");
  check_grad(h, N, 3, "grad_gu");
  at::Tensor gu = need_u ? at::zeros({N, 3}, u.options()) : at::Tensor();
  at::Tensor gg = need_g ? at::empty({N, K}, u.options()) : at::Tensor();
  const float* U = u.data_ptr<float>();
  const float* G = g.data_ptr<float>();
  const float* H = h.data_ptr<float>();
  float* GU = need_u ? gu.data_ptr<float>() : nullptr;
  float* GG = need_g ? gg.data_ptr<float>() : nullptr;
  at::Tensor flat = chunked(N, total, need_planes, [&](int64_t n0, int64_t n1, float* buf) {
    for (int64_t n = n0; n < n1; ++n) {
      const float* un = U + 3 * n;
      const float* hn = H + 3 * n;
      const float* gn = G + n * K;
      if (nan_point(un)) {
        if (GU) std::fill(GU + 3 * n, GU + 3 * n + 3, std::numeric_limits<float>::quiet_NaN());
        if (GG) std::fill(GG + n * K, GG + (n + 1) * K, std::numeric_limits<float>::quiet_NaN());
        continue;
      }
      for (const auto& L : levels) {
        for (int p = 0; p < 3; ++p) {
          const int a = kAxes[p][0], b = kAxes[p][1];
          const Axis X = axis(un[a], L.r), Y = axis(un[b], L.r);
          const float A = hn[a] * X.s, B = hn[b] * Y.s;  // dL/d(df/dx), dL/d(df/dy)
          const int64_t C = L.C, dy = L.r * C, at0 = ((p * L.r + Y.i) * L.r + X.i) * C;
          const float* q = L.P + at0;
          const float* gc = gn + L.col + p * C;
          float* ggc = GG ? GG + n * K + L.col + p * C : nullptr;
          float cross = 0.f;
          const float c00 = -(1 - Y.f) * A - (1 - X.f) * B, c01 = (1 - Y.f) * A - X.f * B,
                      c10 = -Y.f * A + (1 - X.f) * B, c11 = Y.f * A + X.f * B;
          if (ggc)
            for (int64_t c = 0; c < C; ++c)
              ggc[c] = A * ((1 - Y.f) * (q[C + c] - q[c]) + Y.f * (q[dy + C + c] - q[dy + c])) +
                       B * ((1 - X.f) * (q[dy + c] - q[c]) + X.f * (q[dy + C + c] - q[C + c]));
          if (GU)
            for (int64_t c = 0; c < C; ++c) cross += gc[c] * (q[dy + C + c] - q[dy + c] - q[C + c] + q[c]);
          if (buf) {
            float* o = buf + L.elem + at0;
            for (int64_t c = 0; c < C; ++c) {
              o[c] += gc[c] * c00;
              o[C + c] += gc[c] * c01;
              o[dy + c] += gc[c] * c10;
              o[dy + C + c] += gc[c] * c11;
            }
          }
          if (GU) {
            const float k = cross * X.s * Y.s;
            GU[3 * n + a] += k * hn[b];
            GU[3 * n + b] += k * hn[a];
          }
        }
      }
    }
  });
  return {gu, gg, need_planes ? split_planes(flat, planes) : std::vector<at::Tensor>{}};
}

}  // namespace encoding

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("triplane_forward", &encoding::triplane_forward, "tri-plane features [N, K] at u [N, 3]");
  m.def("triplane_backward", &encoding::triplane_backward, "(dL/du, dL/dplanes) from dL/dfeatures");
  m.def("triplane_backward_backward", &encoding::triplane_backward_backward,
        "the VJP of triplane_backward's dL/du: (to u, to grad_features, to planes)");
}
