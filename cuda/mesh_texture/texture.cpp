// Texture sampling (nearest / bilinear / trilinear, wrap / clamp) and its hand-written backward (CPU).
//
// The mip pyramid arrives as a list of levels [T, h_k, w_k, D] (T = 1: shared, T = C: one texture per camera),
// built by differentiable torch ops in Python; the backward returns one gradient per level and autograd carries
// them down to the base texture. Pixels are independent in the forward. In the backward many pixels scatter into
// the same texels: each of S slots (a fixed contiguous range of pixels) accumulates into its own gradient buffer
// and the buffers are summed in slot order afterwards (deterministic, no float atomics).
#include <type_traits>
#include <vector>

#include "mt_common.h"

namespace mt {

namespace {

struct Level {
  const float* data;
  int h, w;
  int64_t cam_stride;  // texels per camera (0 when shared)
};

struct Setup {
  std::vector<Level> levels;
  int64_t C, H, W, D, T;
  const float* uv;
  const float* uv_da;
  int filter, boundary;
};

Setup check_inputs(const std::vector<at::Tensor>& levels, const at::Tensor& uv, const at::Tensor& uv_da,
                   int64_t filter, int64_t boundary) {
  TORCH_CHECK(!levels.empty(), "texture needs at least one level");
  TORCH_CHECK(filter >= kNearest && filter <= kTrilinear, "filter must be 0 (nearest), 1 (linear) or 2 (trilinear)");
  TORCH_CHECK(boundary == kWrap || boundary == kClamp, "boundary must be 0 (wrap) or 1 (clamp)");
  MT_CHECK_CPU(uv, at::kFloat, "uv");
  TORCH_CHECK(uv.dim() == 4 && uv.size(3) == 2, "uv must have shape [C, H, W, 2], got ", uv.sizes());
  Setup s;
  s.C = uv.size(0), s.H = uv.size(1), s.W = uv.size(2);
  const at::Tensor& base = levels[0];
  MT_CHECK_CPU(base, at::kFloat, "tex");
  TORCH_CHECK(base.dim() == 4 && base.size(1) > 0 && base.size(2) > 0 && base.size(3) > 0,
              "tex levels must have shape [T, h, w, D] with h, w, D > 0, got ", base.sizes());
  s.T = base.size(0), s.D = base.size(3);
  TORCH_CHECK(s.T == 1 || s.T == s.C, "tex must hold 1 or C=", s.C, " textures, got ", s.T);
  for (size_t k = 0; k < levels.size(); ++k) {
    const at::Tensor& l = levels[k];
    MT_CHECK_CPU(l, at::kFloat, "tex level");
    TORCH_CHECK(l.dim() == 4 && l.size(0) == s.T && l.size(3) == s.D && l.size(1) > 0 && l.size(2) > 0,
                "tex level ", k, " must have shape [", s.T, ", h, w, ", s.D, "], got ", l.sizes());
    TORCH_CHECK(l.size(1) < (1 << 30) && l.size(2) < (1 << 30), "tex level too large");
    s.levels.push_back({l.data_ptr<float>(), (int)l.size(1), (int)l.size(2), s.T == 1 ? 0 : l.size(1) * l.size(2)});
  }
  s.uv = uv.data_ptr<float>();
  s.uv_da = nullptr;
  if (filter == kTrilinear) {
    MT_CHECK_CPU(uv_da, at::kFloat, "uv_da");
    MT_CHECK_SHAPE(uv_da, "uv_da", s.C, s.H, s.W, 4);
    s.uv_da = uv_da.data_ptr<float>();
  }
  s.filter = (int)filter;
  s.boundary = (int)boundary;
  return s;
}

// The (at most two) bilinear taps of one pixel: level index, blend weight and footprint. Returns the tap count,
// 0 for non-finite uv.
int pixel_taps(const Setup& s, int64_t pix, int64_t cam, int* lev, float* wt, Bilinear* b) {
  const float u = s.uv[2 * pix], v = s.uv[2 * pix + 1];
  if (!std::isfinite(u) || !std::isfinite(v)) return 0;
  int l0 = 0, l1 = 0;
  float frac = 0.f;
  if (s.filter == kTrilinear) {
    const int L = (int)s.levels.size() - 1;
    const float f = mip_level(s.uv_da + 4 * pix, s.levels[0].w, s.levels[0].h, L);
    const float fl = std::floor(f);
    frac = f - fl;
    l0 = (int)fl;
    l1 = std::min(l0 + 1, L);
  }
  const Level& a = s.levels[l0];
  lev[0] = l0;
  wt[0] = 1.f - frac;
  b[0] = bilinear_setup(u, v, a.w, a.h, s.boundary, cam * a.cam_stride);
  if (frac == 0.f) return 1;
  const Level& c = s.levels[l1];
  lev[1] = l1;
  wt[1] = frac;
  b[1] = bilinear_setup(u, v, c.w, c.h, s.boundary, cam * c.cam_stride);
  return 2;
}

// Forward over pixels [begin, end); DC > 0 fixes the channel count at compile time (DC = 0: s.D).
template <int DC>
void forward_range(const Setup& s, int64_t begin, int64_t end, float* o) {
  const int64_t HW = s.H * s.W, D = DC > 0 ? DC : s.D;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t cam = p / HW;
    float* op = o + p * D;
    if (s.filter == kNearest) {
      const float u = s.uv[2 * p], v = s.uv[2 * p + 1];
      if (!std::isfinite(u) || !std::isfinite(v)) {
        std::fill(op, op + D, 0.f);
        continue;
      }
      const Level& l = s.levels[0];
      const float* t = l.data + nearest_index(u, v, l.w, l.h, s.boundary, cam * l.cam_stride) * D;
      std::copy(t, t + D, op);
      continue;
    }
    int lev[2];
    float wt[2];
    Bilinear b[2];
    const int n = pixel_taps(s, p, cam, lev, wt, b);
    std::fill(op, op + D, 0.f);
    for (int k = 0; k < n; ++k) {
      const float* t = s.levels[lev[k]].data;
      const float *a00 = t + b[k].t00 * D, *a10 = t + b[k].t10 * D, *a01 = t + b[k].t01 * D, *a11 = t + b[k].t11 * D;
      const float fx = b[k].fx, fy = b[k].fy, w = wt[k];
      for (int64_t c = 0; c < D; ++c)
        op[c] += w * ((1.f - fy) * ((1.f - fx) * a00[c] + fx * a10[c]) + fy * ((1.f - fx) * a01[c] + fx * a11[c]));
    }
  }
}

// Calls fn(std::integral_constant<int, DC>) with DC = D for D in 1..4, else 0 (runtime channel count).
template <typename Fn>
void dispatch_channels(int64_t D, Fn&& fn) {
  switch (D) {
    case 1: fn(std::integral_constant<int, 1>()); break;
    case 2: fn(std::integral_constant<int, 2>()); break;
    case 3: fn(std::integral_constant<int, 3>()); break;
    case 4: fn(std::integral_constant<int, 4>()); break;
    default: fn(std::integral_constant<int, 0>());
  }
}

// Backward over pixels [begin, end) into one slot's level-gradient buffer `mine` (levels at offset[k]; null: no
// texture gradient) and into guv (null: no uv gradient).
template <int DC>
void backward_range(const Setup& s, int64_t begin, int64_t end, const float* g, const int64_t* offset, float* mine,
                    float* guv) {
  const int64_t HW = s.H * s.W, D = DC > 0 ? DC : s.D;
  for (int64_t p = begin; p < end; ++p) {
    const int64_t cam = p / HW;
    const float* gp = g + p * D;
    if (s.filter == kNearest) {
      const float u = s.uv[2 * p], v = s.uv[2 * p + 1];
      if (!mine || !std::isfinite(u) || !std::isfinite(v)) continue;
      const Level& l = s.levels[0];
      float* t = mine + nearest_index(u, v, l.w, l.h, s.boundary, cam * l.cam_stride) * D;
      for (int64_t c = 0; c < D; ++c) t[c] += gp[c];
      continue;
    }
    int lev[2];
    float wt[2];
    Bilinear b[2];
    const int n = pixel_taps(s, p, cam, lev, wt, b);
    float gu = 0.f, gv = 0.f;
    for (int k = 0; k < n; ++k) {
      const Level& l = s.levels[lev[k]];
      float* gt = mine ? mine + offset[lev[k]] : nullptr;
      const float fx = b[k].fx, fy = b[k].fy, w = wt[k];
      const float w00 = w * (1.f - fx) * (1.f - fy), w10 = w * fx * (1.f - fy);
      const float w01 = w * (1.f - fx) * fy, w11 = w * fx * fy;
      const float *a00 = l.data + b[k].t00 * D, *a10 = l.data + b[k].t10 * D, *a01 = l.data + b[k].t01 * D,
                  *a11 = l.data + b[k].t11 * D;
      if (mine) {
        float *g00 = gt + b[k].t00 * D, *g10 = gt + b[k].t10 * D, *g01 = gt + b[k].t01 * D,
              *g11 = gt + b[k].t11 * D;
        for (int64_t c = 0; c < D; ++c) {
          const float gc = gp[c];
          g00[c] += w00 * gc;
          g10[c] += w10 * gc;
          g01[c] += w01 * gc;
          g11[c] += w11 * gc;
        }
      }
      if (!guv) continue;
      float dfx = 0.f, dfy = 0.f;
      for (int64_t c = 0; c < D; ++c) {
        const float gc = gp[c];
        dfx += gc * ((1.f - fy) * (a10[c] - a00[c]) + fy * (a11[c] - a01[c]));
        dfy += gc * ((1.f - fx) * (a01[c] - a00[c]) + fx * (a11[c] - a10[c]));
      }
      // x = u w - 0.5 (after the wrap's u - floor(u), whose derivative is 1); clamped coordinates give equal
      // texels and hence zero here, like the twin's clamp.
      gu += w * dfx * (float)l.w;
      gv += w * dfy * (float)l.h;
    }
    if (guv) {
      guv[2 * p] = gu;
      guv[2 * p + 1] = gv;
    }
  }
}

}  // namespace

// out [C, H, W, D] = texture(levels, uv, uv_da) (uv_da is read only for filter = trilinear).
at::Tensor texture_forward(const std::vector<at::Tensor>& levels, const at::Tensor& uv, const at::Tensor& uv_da,
                           int64_t filter, int64_t boundary) {
  const Setup s = check_inputs(levels, uv, uv_da, filter, boundary);
  at::Tensor out = at::empty({s.C, s.H, s.W, s.D}, uv.options());
  float* o = out.data_ptr<float>();
  dispatch_channels(s.D, [&](auto dc) {
    at::parallel_for(0, s.C * s.H * s.W, 2048,
                     [&](int64_t begin, int64_t end) { forward_range<decltype(dc)::value>(s, begin, end, o); });
  });
  return out;
}

// Backward: [grad_uv [C, H, W, 2] (zeros unless need_uv), grad_level_0, grad_level_1, ...] (the level gradients
// only with need_tex).
std::vector<at::Tensor> texture_backward(const std::vector<at::Tensor>& levels, const at::Tensor& uv,
                                         const at::Tensor& uv_da, int64_t filter, int64_t boundary,
                                         const at::Tensor& grad_out, bool need_uv, bool need_tex) {
  const Setup s = check_inputs(levels, uv, uv_da, filter, boundary);
  const int64_t N = s.C * s.H * s.W, D = s.D;
  MT_CHECK_CPU(grad_out, at::kFloat, "grad_out");
  MT_CHECK_SHAPE(grad_out, "grad_out", s.C, s.H, s.W, D);
  const float* g = grad_out.data_ptr<float>();
  std::vector<int64_t> offset(levels.size() + 1, 0);
  for (size_t k = 0; k < levels.size(); ++k) offset[k + 1] = offset[k] + levels[k].numel();
  const int64_t total = need_tex ? offset.back() : 0;
  // Slots: one gradient buffer each. Bounded by the thread count, by ~1 GiB of buffers and by the work (a slot
  // per 16k pixels), so tiny calls stay single-threaded.
  const int64_t by_mem = std::max<int64_t>(1, (int64_t(1) << 28) / std::max<int64_t>(total, 1));
  const int slots = (int)std::max<int64_t>(
      1, std::min<int64_t>({(int64_t)at::get_num_threads(), by_mem, (N + 16383) / 16384}));
  at::Tensor buf = zeros_serial({slots, total}, uv.options());
  float* bufp = buf.data_ptr<float>();
  at::Tensor grad_uv = zeros_serial({s.C, s.H, s.W, 2}, uv.options());
  float* guv = grad_uv.data_ptr<float>();
  dispatch_channels(D, [&](auto dc) {
    for_each_slot(N, slots, [&](int64_t begin, int64_t end, int slot) {
      backward_range<decltype(dc)::value>(s, begin, end, g, offset.data(),
                                          need_tex ? bufp + (int64_t)slot * total : nullptr, need_uv ? guv : nullptr);
    });
  });
  std::vector<at::Tensor> result{grad_uv};
  for (size_t k = 0; k < levels.size() && need_tex; ++k) {
    at::Tensor gl = at::empty(levels[k].sizes(), uv.options());
    float* dst = gl.data_ptr<float>();
    const int64_t off = offset[k], n = levels[k].numel();
    if (slots == 1) {
      std::copy(bufp + off, bufp + off + n, dst);
    } else {
      at::parallel_for(0, n, 1 << 16, [&](int64_t b0, int64_t b1) {
        for (int64_t i = b0; i < b1; ++i) {
          float acc = 0.f;
          for (int sl = 0; sl < slots; ++sl) acc += bufp[(int64_t)sl * total + off + i];
          dst[i] = acc;
        }
      });
    }
    result.push_back(gl);
  }
  return result;
}

}  // namespace mt
