// Fused CPU kernels of Monte Carlo shading (recon/shading/mc.py): BRDF sampling and pdf (no gradient), and the
// shading sum  out[p] = sum_s f(n, v, l) max(n.l, 0) (radiance weight + bounce)  with its hand-written backward.
//
// Material tensors are per pixel [P, ...]; sample tensors are [P, S, ...] (S samples of pixel p are contiguous).
// Every pixel is handled by one thread, and its S samples are summed in order, so results do not depend on the
// thread count. The torch twins are recon/shading/brdf.py and recon/shading/_kernels.py (brdf_shade_ref).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <vector>

#include "shading_math.h"

#define SH_CHECK_CPU(x, name)                                                                       \
  TORCH_CHECK((x).defined() && (x).device().is_cpu(), name " must be a CPU tensor");                \
  TORCH_CHECK((x).scalar_type() == at::kFloat, name " must be float32, got ", (x).scalar_type()); \
  TORCH_CHECK((x).is_contiguous(), name " must be contiguous")

#define SH_CHECK_SHAPE(x, name, ...)                                                                  \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), name " must have shape [" #__VA_ARGS__ \
              "], got ", (x).sizes())

namespace shading {

namespace {

struct PixelInputs {
  int64_t P;
  const float *n, *v, *base, *rough, *metal;
};

// Checks n, v, base [P, 3], rough, metal [P, 1]; returns their pointers.
PixelInputs check_pixels(const at::Tensor& n, const at::Tensor& v, const at::Tensor& base, const at::Tensor& rough,
                         const at::Tensor& metal) {
  SH_CHECK_CPU(n, "n");
  TORCH_CHECK(n.dim() == 2 && n.size(1) == 3, "n must have shape [P, 3], got ", n.sizes());
  const int64_t P = n.size(0);
  SH_CHECK_CPU(v, "v");
  SH_CHECK_SHAPE(v, "v", P, 3);
  SH_CHECK_CPU(base, "base");
  SH_CHECK_SHAPE(base, "base", P, 3);
  SH_CHECK_CPU(rough, "rough");
  SH_CHECK_SHAPE(rough, "rough", P, 1);
  SH_CHECK_CPU(metal, "metal");
  SH_CHECK_SHAPE(metal, "metal", P, 1);
  return {P, n.data_ptr<float>(), v.data_ptr<float>(), base.data_ptr<float>(), rough.data_ptr<float>(),
          metal.data_ptr<float>()};
}

int64_t check_samples(const at::Tensor& x, const char* name, int64_t P, int64_t last) {
  TORCH_CHECK(x.defined() && x.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kFloat, name, " must be float32, got ", x.scalar_type());
  TORCH_CHECK(x.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(x.dim() == 3 && x.size(0) == P && x.size(2) == last, name, " must have shape [P=", P, ", S, ", last,
              "], got ", x.sizes());
  return x.size(1);
}

// Pixels per parallel task: about 2048 samples per task.
int64_t grain(int64_t S) { return std::max<int64_t>(1, 2048 / std::max<int64_t>(S, 1)); }

struct ShadeInputs {
  PixelInputs px;
  int64_t S;
  const float *l, *rad, *w, *bounce;  // bounce may be null
};

ShadeInputs check_shade(const at::Tensor& n, const at::Tensor& v, const at::Tensor& l, const at::Tensor& base,
                        const at::Tensor& rough, const at::Tensor& metal, const at::Tensor& radiance,
                        const at::Tensor& weight, const at::Tensor& bounce) {
  ShadeInputs s;
  s.px = check_pixels(n, v, base, rough, metal);
  const int64_t P = s.px.P;
  s.S = check_samples(l, "l", P, 3);
  SH_CHECK_CPU(radiance, "radiance");
  SH_CHECK_SHAPE(radiance, "radiance", P, s.S, 3);
  SH_CHECK_CPU(weight, "weight");
  SH_CHECK_SHAPE(weight, "weight", P, s.S);
  s.l = l.data_ptr<float>(), s.rad = radiance.data_ptr<float>(), s.w = weight.data_ptr<float>();
  s.bounce = nullptr;
  if (bounce.defined() && bounce.numel() > 0) {
    SH_CHECK_CPU(bounce, "bounce");
    SH_CHECK_SHAPE(bounce, "bounce", P, s.S, 3);
    s.bounce = bounce.data_ptr<float>();
  }
  return s;
}

Material pixel_material(const PixelInputs& px, int64_t p) {
  return make_material(px.base + 3 * p, px.rough[p], px.metal[p]);
}

}  // namespace

at::Tensor brdf_shade_forward(const at::Tensor& n, const at::Tensor& v, const at::Tensor& l, const at::Tensor& base,
                              const at::Tensor& rough, const at::Tensor& metal, const at::Tensor& radiance,
                              const at::Tensor& weight, const at::Tensor& bounce) {
  const ShadeInputs s = check_shade(n, v, l, base, rough, metal, radiance, weight, bounce);
  at::Tensor out = at::empty({s.px.P, 3}, n.options());
  float* o = out.data_ptr<float>();
  at::parallel_for(0, s.px.P, grain(s.S), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Material m = pixel_material(s.px, p);
      const V3 np = load3(s.px.n + 3 * p), vp = load3(s.px.v + 3 * p);
      float acc[3] = {0.f, 0.f, 0.f};
      for (int64_t k = p * s.S; k < (p + 1) * s.S; ++k) {
        const BrdfEval e = eval_brdf(np, vp, load3(s.l + 3 * k), m);
        if (!e.front) continue;
        for (int c = 0; c < 3; ++c) {
          float inc = s.rad[3 * k + c] * s.w[k];
          if (s.bounce) inc += s.bounce[3 * k + c];
          acc[c] += e.f[c] * e.nl * inc;
        }
      }
      store3(o + 3 * p, {acc[0], acc[1], acc[2]});
    }
  });
  return out;
}

std::vector<at::Tensor> brdf_shade_backward(const at::Tensor& n, const at::Tensor& v, const at::Tensor& l,
                                            const at::Tensor& base, const at::Tensor& rough, const at::Tensor& metal,
                                            const at::Tensor& radiance, const at::Tensor& weight,
                                            const at::Tensor& bounce, const at::Tensor& grad_out, bool need_radiance) {
  const ShadeInputs s = check_shade(n, v, l, base, rough, metal, radiance, weight, bounce);
  const int64_t P = s.px.P, S = s.S;
  SH_CHECK_CPU(grad_out, "grad_out");
  SH_CHECK_SHAPE(grad_out, "grad_out", P, 3);
  at::Tensor g_n = at::empty({P, 3}, n.options()), g_base = at::empty({P, 3}, n.options());
  at::Tensor g_rough = at::empty({P, 1}, n.options()), g_metal = at::empty({P, 1}, n.options());
  at::Tensor g_rad = need_radiance ? at::empty({P, S, 3}, n.options()) : at::empty({0}, n.options());
  const float* go = grad_out.data_ptr<float>();
  float *gn = g_n.data_ptr<float>(), *gb = g_base.data_ptr<float>(), *gr = g_rough.data_ptr<float>();
  float *gm = g_metal.data_ptr<float>(), *grad = need_radiance ? g_rad.data_ptr<float>() : nullptr;
  at::parallel_for(0, P, grain(S), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Material m = pixel_material(s.px, p);
      const V3 np = load3(s.px.n + 3 * p), vp = load3(s.px.v + 3 * p);
      const float g[3] = {go[3 * p], go[3 * p + 1], go[3 * p + 2]};
      float g_b[3] = {0.f, 0.f, 0.f}, g_r = 0.f, g_m = 0.f;
      V3 g_np = {0.f, 0.f, 0.f};
      for (int64_t k = p * S; k < (p + 1) * S; ++k) {
        const V3 lk = load3(s.l + 3 * k);
        const BrdfEval e = eval_brdf(np, vp, lk, m);
        if (!e.front) {
          if (grad) store3(grad + 3 * k, {0.f, 0.f, 0.f});
          continue;
        }
        // contrib_c = f_c nl inc_c:  d/d f_c = g_c nl inc_c,  d/d nl (the cosine) = sum_c g_c f_c inc_c
        float t[3], g_nl = 0.f, g_nv = 0.f, g_nh = 0.f;
        for (int c = 0; c < 3; ++c) {
          float inc = s.rad[3 * k + c] * s.w[k];
          if (s.bounce) inc += s.bounce[3 * k + c];
          t[c] = g[c] * e.nl * inc;
          g_nl += g[c] * e.f[c] * inc;
          if (grad) grad[3 * k + c] = g[c] * e.f[c] * e.nl * s.w[k];
        }
        brdf_vjp(e, m, t, g_b, &g_r, &g_m, &g_nl, &g_nv, &g_nh);
        g_np = g_np + g_nl * lk + g_nv * vp + g_nh * e.h;
      }
      store3(gn + 3 * p, g_np);
      store3(gb + 3 * p, {g_b[0], g_b[1], g_b[2]});
      gr[p] = g_r;
      gm[p] = g_m;
    }
  });
  return {g_n, g_base, g_rough, g_metal, g_rad};
}

std::vector<at::Tensor> sample_brdf(const at::Tensor& n, const at::Tensor& v, const at::Tensor& base,
                                    const at::Tensor& rough, const at::Tensor& metal, const at::Tensor& u) {
  const PixelInputs px = check_pixels(n, v, base, rough, metal);
  const int64_t S = check_samples(u, "u", px.P, 3);
  at::Tensor l = at::empty({px.P, S, 3}, n.options()), pdf = at::empty({px.P, S}, n.options());
  const float* up = u.data_ptr<float>();
  float *lo = l.data_ptr<float>(), *po = pdf.data_ptr<float>();
  at::parallel_for(0, px.P, grain(S), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Material m = pixel_material(px, p);
      const V3 np = load3(px.n + 3 * p), vp = load3(px.v + 3 * p);
      const float p_spec = specular_probability(m, dot(np, vp));
      for (int64_t k = p * S; k < (p + 1) * S; ++k) {
        const float* uk = up + 3 * k;
        const V3 lk = uk[0] < p_spec ? sample_ggx_vndf(np, vp, m.alpha, uk[1], uk[2]) : sample_cosine(np, uk[1], uk[2]);
        store3(lo + 3 * k, lk);
        po[k] = pdf_brdf(np, vp, lk, m, p_spec);
      }
    }
  });
  return {l, pdf};
}

at::Tensor pdf_brdf_op(const at::Tensor& n, const at::Tensor& v, const at::Tensor& l, const at::Tensor& base,
                       const at::Tensor& rough, const at::Tensor& metal) {
  const PixelInputs px = check_pixels(n, v, base, rough, metal);
  const int64_t S = check_samples(l, "l", px.P, 3);
  at::Tensor pdf = at::empty({px.P, S}, n.options());
  const float* lp = l.data_ptr<float>();
  float* po = pdf.data_ptr<float>();
  at::parallel_for(0, px.P, grain(S), [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      const Material m = pixel_material(px, p);
      const V3 np = load3(px.n + 3 * p), vp = load3(px.v + 3 * p);
      const float p_spec = specular_probability(m, dot(np, vp));
      for (int64_t k = p * S; k < (p + 1) * S; ++k) po[k] = pdf_brdf(np, vp, load3(lp + 3 * k), m, p_spec);
    }
  });
  return pdf;
}

}  // namespace shading
