// AVX2/FMA versions of the per-pixel compositing loops for 3 color channels (CPU only).
// Compiled when the build enables -mavx2 -mfma (renderers/_build.py checks the CPU); otherwise the portable scalar
// loops in gs_raster.cpp are used. Both the forward and the backward pass of a build evaluate every pixel through
// the same code path (tails are handled with lane masks, never with a scalar remainder), so the alpha the backward
// recomputes is bit-identical to the forward's.
#pragma once

#if defined(__AVX2__) && defined(__FMA__)
#define GS_HAVE_AVX2 1
#include <immintrin.h>

#include "gs_math.h"

namespace gs {
namespace avx2 {

// Same algorithm as fast_exp (Cephes expf), 8 lanes.
inline __m256 exp_ps(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(-87.0f));
  const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
  r = _mm256_fmadd_ps(n, _mm256_set1_ps(2.12194440e-4f), r);
  __m256 p = _mm256_set1_ps(1.9875691500e-4f);
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.3981999507e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.3334519073e-3f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.1665795894e-2f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.6666665459e-1f));
  p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(5.0000001201e-1f));
  p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), r);
  p = _mm256_add_ps(p, _mm256_set1_ps(1.0f));
  const __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(e));
}

inline float hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// Lanes p .. p+7 that are < p1.
inline __m256 lane_mask(int p, int p1) {
  const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(p), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_set1_epi32(p1), idx));
}

struct Splat {
  float mx, my, a, b, c, o, z, col[3];
};

// Power and alpha of one Gaussian at 8 pixels.
inline void splat_alpha(const Splat& g, __m256 px, __m256 py, __m256& dx, __m256& dy, __m256& power, __m256& G,
                        __m256& og, __m256& al) {
  dx = _mm256_sub_ps(px, _mm256_set1_ps(g.mx));
  dy = _mm256_sub_ps(py, _mm256_set1_ps(g.my));
  const __m256 q = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_set1_ps(g.c), dy), dy,
                                   _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(g.a), dx), dx));
  power = _mm256_fnmadd_ps(_mm256_mul_ps(_mm256_set1_ps(g.b), dx), dy, _mm256_mul_ps(_mm256_set1_ps(-0.5f), q));
  G = exp_ps(power);
  og = _mm256_mul_ps(_mm256_set1_ps(g.o), G);
  al = _mm256_min_ps(og, _mm256_set1_ps(kAlphaMax));
}

// Forward over pixels [p0, p1) (arrays padded to a multiple of 8 beyond p1). Returns the number of pixels that
// terminated. last is int32 stored in the same layout.
inline int forward_pixels(const Splat& g, int k, int p0, int p1, int stride, const float* px, const float* py,
                          float* T, float* act, float* acc, float* accz, int* last) {
  int n_stop = 0;
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f);
  const __m256i kk = _mm256_set1_epi32(k + 1);
  for (int p = p0; p < p1; p += 8) {
    __m256 dx, dy, power, G, og, al;
    splat_alpha(g, _mm256_loadu_ps(px + p), _mm256_loadu_ps(py + p), dx, dy, power, G, og, al);
    const __m256 Tp = _mm256_loadu_ps(T + p);
    const __m256 actv = _mm256_loadu_ps(act + p);
    const __m256 test_T = _mm256_mul_ps(Tp, _mm256_sub_ps(one, al));
    __m256 valid = _mm256_and_ps(_mm256_cmp_ps(power, zero, _CMP_LE_OQ),
                                 _mm256_cmp_ps(al, _mm256_set1_ps(kAlphaMin), _CMP_GE_OQ));
    valid = _mm256_and_ps(valid, _mm256_and_ps(_mm256_cmp_ps(actv, zero, _CMP_NEQ_OQ), lane_mask(p, p1)));
    const int vbits = _mm256_movemask_ps(valid);
    if (vbits == 0) continue;
    const __m256 stop = _mm256_and_ps(valid, _mm256_cmp_ps(test_T, _mm256_set1_ps(kTMin), _CMP_LT_OQ));
    const __m256 inc = _mm256_andnot_ps(stop, valid);
    const __m256 w = _mm256_and_ps(inc, _mm256_mul_ps(al, Tp));
    for (int ch = 0; ch < 3; ++ch) {
      float* a = acc + ch * stride + p;
      _mm256_storeu_ps(a, _mm256_fmadd_ps(w, _mm256_set1_ps(g.col[ch]), _mm256_loadu_ps(a)));
    }
    _mm256_storeu_ps(accz + p, _mm256_fmadd_ps(w, _mm256_set1_ps(g.z), _mm256_loadu_ps(accz + p)));
    _mm256_storeu_ps(T + p, _mm256_blendv_ps(Tp, test_T, inc));
    const __m256 lastv = _mm256_castsi256_ps(_mm256_loadu_si256((const __m256i*)(last + p)));
    _mm256_storeu_si256((__m256i*)(last + p), _mm256_castps_si256(_mm256_blendv_ps(lastv, _mm256_castsi256_ps(kk), inc)));
    _mm256_storeu_ps(act + p, _mm256_andnot_ps(stop, actv));
    n_stop += __builtin_popcount(_mm256_movemask_ps(stop));
  }
  return n_stop;
}

// Backward over pixels [p0, p1); sums of this Gaussian's gradients go to out[0..9]
// (mean2d x, y, conic a, b, c, opacity, depth, colors 0..2).
inline void backward_pixels(const Splat& g, int k, int p0, int p1, int stride, const float* px, const float* py,
                            float* T, const float* Tf, float* acc, float* accz, const int* last, const float* vr,
                            const float* vz, const float* va, float* out) {
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f);
  const __m256i kk = _mm256_set1_epi32(k);
  const __m256 zz = _mm256_set1_ps(g.z), a = _mm256_set1_ps(g.a), b = _mm256_set1_ps(g.b), c = _mm256_set1_ps(g.c);
  __m256 s_mx = zero, s_my = zero, s_a = zero, s_b = zero, s_c = zero, s_o = zero, s_z = zero;
  __m256 s_col[3] = {zero, zero, zero};
  for (int p = p0; p < p1; p += 8) {
    __m256 dx, dy, power, G, og, al;
    splat_alpha(g, _mm256_loadu_ps(px + p), _mm256_loadu_ps(py + p), dx, dy, power, G, og, al);
    const __m256 in_list = _mm256_castsi256_ps(_mm256_cmpgt_epi32(_mm256_loadu_si256((const __m256i*)(last + p)), kk));
    __m256 valid = _mm256_and_ps(_mm256_cmp_ps(power, zero, _CMP_LE_OQ),
                                 _mm256_cmp_ps(al, _mm256_set1_ps(kAlphaMin), _CMP_GE_OQ));
    valid = _mm256_and_ps(valid, _mm256_and_ps(in_list, lane_mask(p, p1)));
    if (_mm256_movemask_ps(valid) == 0) continue;
    const __m256 one_m_al = _mm256_sub_ps(one, al);
    const __m256 ra = _mm256_div_ps(one, one_m_al);
    const __m256 Tcur = _mm256_loadu_ps(T + p);
    const __m256 Tk = _mm256_blendv_ps(Tcur, _mm256_mul_ps(Tcur, ra), valid);  // transmittance in front of k
    _mm256_storeu_ps(T + p, Tk);
    const __m256 w = _mm256_and_ps(valid, _mm256_mul_ps(al, Tk));
    const __m256 vzp = _mm256_loadu_ps(vz + p);
    const __m256 az = _mm256_loadu_ps(accz + p);
    __m256 v_c = _mm256_mul_ps(_mm256_sub_ps(zz, az), vzp);
    for (int ch = 0; ch < 3; ++ch) {
      float* ap = acc + ch * stride + p;
      const __m256 accc = _mm256_loadu_ps(ap);
      const __m256 col = _mm256_set1_ps(g.col[ch]);
      const __m256 vrc = _mm256_loadu_ps(vr + ch * stride + p);
      v_c = _mm256_fmadd_ps(_mm256_sub_ps(col, accc), vrc, v_c);
      _mm256_storeu_ps(ap, _mm256_blendv_ps(accc, _mm256_fmadd_ps(al, col, _mm256_mul_ps(one_m_al, accc)), valid));
      s_col[ch] = _mm256_fmadd_ps(w, vrc, s_col[ch]);
    }
    const __m256 v_al = _mm256_fmadd_ps(Tk, v_c, _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(Tf + p), ra),
                                                               _mm256_loadu_ps(va + p)));
    _mm256_storeu_ps(accz + p, _mm256_blendv_ps(az, _mm256_fmadd_ps(al, zz, _mm256_mul_ps(one_m_al, az)), valid));
    s_z = _mm256_fmadd_ps(w, vzp, s_z);
    const __m256 pass = _mm256_and_ps(valid, _mm256_cmp_ps(og, _mm256_set1_ps(kAlphaMax), _CMP_LE_OQ));
    const __m256 v_pow = _mm256_and_ps(pass, _mm256_mul_ps(og, v_al));
    s_o = _mm256_add_ps(s_o, _mm256_and_ps(pass, _mm256_mul_ps(G, v_al)));
    s_a = _mm256_fmadd_ps(_mm256_mul_ps(dx, dx), v_pow, s_a);
    s_b = _mm256_fmadd_ps(_mm256_mul_ps(dx, dy), v_pow, s_b);
    s_c = _mm256_fmadd_ps(_mm256_mul_ps(dy, dy), v_pow, s_c);
    s_mx = _mm256_fmadd_ps(_mm256_fmadd_ps(a, dx, _mm256_mul_ps(b, dy)), v_pow, s_mx);
    s_my = _mm256_fmadd_ps(_mm256_fmadd_ps(b, dx, _mm256_mul_ps(c, dy)), v_pow, s_my);
  }
  out[0] = hsum(s_mx);
  out[1] = hsum(s_my);
  out[2] = -0.5f * hsum(s_a);
  out[3] = -hsum(s_b);
  out[4] = -0.5f * hsum(s_c);
  out[5] = hsum(s_o);
  out[6] = hsum(s_z);
  for (int ch = 0; ch < 3; ++ch) out[7 + ch] = hsum(s_col[ch]);
}

}  // namespace avx2
}  // namespace gs

#endif
