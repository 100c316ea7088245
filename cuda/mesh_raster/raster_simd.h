// The two innermost loops of the tiled rasterizer, 8 lanes at a time with AVX2 (portable scalar loops otherwise):
// pixel bboxes of a chunk of triangles, and the depth test of one triangle over one row of a tile.
// Written with intrinsics because GCC keeps these loops scalar under the default -ftrapping-math.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define MR_AVX2 1
#endif

namespace mr {

// Pixel bboxes of the triangles i < n from their gathered clip vertices (SoA: v[(4 * vertex + coord) * sv + i]),
// projected in float (the margin covers its rounding), as inclusive ranges box[0|1|2|3][i] = x0, y0, x1, y1
// (empty: x1 < x0 or y1 < y0), and kind[i]: 0 = culled (all vertices beyond the far plane or in front of the near
// plane), 1 = every w > 0 (bbox valid), 2 = some w <= 0 (bbox invalid: the caller clips). Arrays hold at least
// round_up(n, 8) entries.
inline void bboxes_soa(const float* __restrict v, int64_t n, int64_t sv, int H, int W, float margin,
                       int32_t* __restrict box, int32_t* __restrict kind) {
  const float hw = 0.5f * W, hh = 0.5f * H;
  int64_t i = 0;
#ifdef MR_AVX2
  const __m256 zero = _mm256_setzero_ps(), one = _mm256_set1_ps(1.f);
  const __m256 lo_off = _mm256_set1_ps(-0.5f - margin), hi_off = _mm256_set1_ps(-0.5f + margin);
  const __m256 Wf = _mm256_set1_ps((float)W), Hf = _mm256_set1_ps((float)H);
  const __m256 m1 = _mm256_set1_ps(-1.f), m2 = _mm256_set1_ps(-2.f);
  const __m256i izero = _mm256_setzero_si256(), iW1 = _mm256_set1_epi32(W - 1), iH1 = _mm256_set1_epi32(H - 1);
  for (; i + 8 <= n; i += 8) {
    __m256 front = _mm256_castsi256_ps(_mm256_set1_epi32(-1)), far_all = front, near_all = front;
    __m256 xmin = _mm256_set1_ps(INFINITY), ymin = xmin, xmax = _mm256_set1_ps(-INFINITY), ymax = xmax;
    for (int j = 0; j < 3; ++j) {
      const __m256 x = _mm256_loadu_ps(v + (4 * j) * sv + i), y = _mm256_loadu_ps(v + (4 * j + 1) * sv + i);
      const __m256 z = _mm256_loadu_ps(v + (4 * j + 2) * sv + i), w = _mm256_loadu_ps(v + (4 * j + 3) * sv + i);
      front = _mm256_and_ps(front, _mm256_cmp_ps(w, zero, _CMP_GT_OQ));
      far_all = _mm256_and_ps(far_all, _mm256_cmp_ps(z, w, _CMP_GT_OQ));
      near_all = _mm256_and_ps(near_all, _mm256_cmp_ps(z, _mm256_sub_ps(zero, w), _CMP_LT_OQ));
      // Divisions, not x * (1 / w): a denormal w would turn 0 * inf into NaN.
      const __m256 X = _mm256_div_ps(x, w), Y = _mm256_div_ps(y, w);
      xmin = _mm256_min_ps(xmin, X), xmax = _mm256_max_ps(xmax, X);
      ymin = _mm256_min_ps(ymin, Y), ymax = _mm256_max_ps(ymax, Y);
    }
    // Clamp first (garbage lanes of non-front triangles, huge projections), then ceil / floor by truncation.
    auto clampf = [](__m256 a, __m256 lo, __m256 hi) { return _mm256_min_ps(_mm256_max_ps(a, lo), hi); };
    const __m256 lx = clampf(_mm256_fmadd_ps(_mm256_add_ps(xmin, one), _mm256_set1_ps(hw), lo_off), m1, Wf);
    const __m256 ly = clampf(_mm256_fmadd_ps(_mm256_add_ps(ymin, one), _mm256_set1_ps(hh), lo_off), m1, Hf);
    const __m256 ux = clampf(_mm256_fmadd_ps(_mm256_add_ps(xmax, one), _mm256_set1_ps(hw), hi_off), m2, Wf);
    const __m256 uy = clampf(_mm256_fmadd_ps(_mm256_add_ps(ymax, one), _mm256_set1_ps(hh), hi_off), m2, Hf);
    auto ceil_i = [](__m256 a) {  // comparison masks are -1: t - (t < a)
      const __m256i t = _mm256_cvttps_epi32(a);
      return _mm256_sub_epi32(t, _mm256_castps_si256(_mm256_cmp_ps(_mm256_cvtepi32_ps(t), a, _CMP_LT_OQ)));
    };
    auto floor_i = [](__m256 a) {
      const __m256i t = _mm256_cvttps_epi32(a);
      return _mm256_add_epi32(t, _mm256_castps_si256(_mm256_cmp_ps(_mm256_cvtepi32_ps(t), a, _CMP_GT_OQ)));
    };
    _mm256_storeu_si256((__m256i*)(box + i), _mm256_max_epi32(ceil_i(lx), izero));
    _mm256_storeu_si256((__m256i*)(box + sv + i), _mm256_max_epi32(ceil_i(ly), izero));
    _mm256_storeu_si256((__m256i*)(box + 2 * sv + i), _mm256_min_epi32(floor_i(ux), iW1));
    _mm256_storeu_si256((__m256i*)(box + 3 * sv + i), _mm256_min_epi32(floor_i(uy), iH1));
    const __m256i cull = _mm256_castps_si256(_mm256_or_ps(far_all, near_all));
    const __m256i k = _mm256_blendv_epi8(_mm256_set1_epi32(2), _mm256_set1_epi32(1), _mm256_castps_si256(front));
    _mm256_storeu_si256((__m256i*)(kind + i), _mm256_andnot_si256(cull, k));
  }
#endif
  for (; i < n; ++i) {
    bool front = true, far_all = true, near_all = true;
    float xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
    for (int j = 0; j < 3; ++j) {
      const float x = v[(4 * j) * sv + i], y = v[(4 * j + 1) * sv + i], z = v[(4 * j + 2) * sv + i],
                  w = v[(4 * j + 3) * sv + i];
      front &= w > 0.f, far_all &= z > w, near_all &= z < -w;
      const float X = w > 0.f ? x / w : 0.f, Y = w > 0.f ? y / w : 0.f;
      xmin = std::min(xmin, X), xmax = std::max(xmax, X), ymin = std::min(ymin, Y), ymax = std::max(ymax, Y);
    }
    auto clampf = [](float a, float lo, float hi) { return std::min(std::max(a, lo), hi); };
    box[i] = (int32_t)std::ceil(clampf((xmin + 1.f) * hw - 0.5f - margin, 0.f, (float)W));
    box[sv + i] = (int32_t)std::ceil(clampf((ymin + 1.f) * hh - 0.5f - margin, 0.f, (float)H));
    box[2 * sv + i] = (int32_t)std::floor(clampf((xmax + 1.f) * hw - 0.5f + margin, -1.f, (float)(W - 1)));
    box[3 * sv + i] = (int32_t)std::floor(clampf((ymax + 1.f) * hh - 0.5f + margin, -1.f, (float)(H - 1)));
    kind[i] = (far_all || near_all) ? 0 : (front ? 1 : 2);
  }
}

// Exact coverage of small triangles while binning: for every i < n with kind[i] == 1, a non-degenerate plane
// (pl[12][i] != 0) and a non-empty bbox of at most kMax pixels, tests the pixel centers of the bbox in double
// (edge and depth planes pl [13][sp] as in planes_soa) and shrinks the bbox to the covered ones, or sets
// kind[i] = 0 when none is covered. Other triangles are left alone.
template <int kMax>
inline void shrink_small_soa(const double* __restrict pl, int64_t sp, int64_t n, int32_t* __restrict box,
                             int64_t sv, int32_t* __restrict kind) {
  auto scalar = [&](int64_t i) {
    const int x0 = box[i], y0 = box[sv + i], x1 = box[2 * sv + i], y1 = box[3 * sv + i];
    const bool small = x1 >= x0 && y1 >= y0 && (int64_t)(x1 - x0 + 1) * (y1 - y0 + 1) <= kMax;
    if (kind[i] != 1 || pl[12 * sp + i] == 0.0 || !small) return;
    int cx0 = x1 + 1, cy0 = y1 + 1, cx1 = x0 - 1, cy1 = y0 - 1;
    for (int y = y0; y <= y1; ++y)
      for (int x = x0; x <= x1; ++x) {
        const double X = x + 0.5, Y = y + 0.5, z = pl[9 * sp + i] * X + pl[10 * sp + i] * Y + pl[11 * sp + i];
        bool in = z >= -1 && z <= 1;
        for (int k = 0; k < 3; ++k) in &= pl[k * sp + i] * X + pl[(3 + k) * sp + i] * Y + pl[(6 + k) * sp + i] >= 0;
        if (in) cx0 = std::min(cx0, x), cy0 = std::min(cy0, y), cx1 = std::max(cx1, x), cy1 = std::max(cy1, y);
      }
    if (cx0 > cx1) kind[i] = 0;
    box[i] = cx0, box[sv + i] = cy0, box[2 * sv + i] = cx1, box[3 * sv + i] = cy1;
  };
  int64_t i = 0;
#ifdef MR_AVX2
  // 4 triangles per step; pixel slot j of a w x h bbox is (j mod w, j div w). Branch-free: the outcomes are
  // unpredictable and mispredictions would dominate.
  const __m256d half = _mm256_set1_pd(0.5), one = _mm256_set1_pd(1.0), inf = _mm256_set1_pd(INFINITY);
  const __m256d ninf = _mm256_set1_pd(-INFINITY), zero = _mm256_setzero_pd(), m1 = _mm256_set1_pd(-1.0);
  const __m256d tiny = _mm256_set1_pd(1e-9);  // j / w is k + f with f = 0 or f >= 1 / kMax: exact floors
  for (; i + 4 <= n; i += 4) {
    const __m128i k4 = _mm_loadu_si128((const __m128i*)(kind + i));
    const __m128i bx0 = _mm_loadu_si128((const __m128i*)(box + i));
    const __m128i by0 = _mm_loadu_si128((const __m128i*)(box + sv + i));
    const __m128i bx1 = _mm_loadu_si128((const __m128i*)(box + 2 * sv + i));
    const __m128i by1 = _mm_loadu_si128((const __m128i*)(box + 3 * sv + i));
    const __m256d x0 = _mm256_cvtepi32_pd(bx0), y0 = _mm256_cvtepi32_pd(by0);
    const __m256d w = _mm256_add_pd(_mm256_sub_pd(_mm256_cvtepi32_pd(bx1), x0), one);
    const __m256d h = _mm256_add_pd(_mm256_sub_pd(_mm256_cvtepi32_pd(by1), y0), one);
    const __m256d area = _mm256_mul_pd(w, h), rw = _mm256_div_pd(one, w);
    __m256d act = _mm256_castsi256_pd(_mm256_cvtepi32_epi64(_mm_cmpeq_epi32(k4, _mm_set1_epi32(1))));
    act = _mm256_and_pd(act, _mm256_cmp_pd(area, _mm256_set1_pd((double)kMax), _CMP_LE_OQ));
    act = _mm256_and_pd(act, _mm256_and_pd(_mm256_cmp_pd(w, one, _CMP_GE_OQ), _mm256_cmp_pd(h, one, _CMP_GE_OQ)));
    act = _mm256_and_pd(act, _mm256_cmp_pd(_mm256_loadu_pd(pl + 12 * sp + i), zero, _CMP_NEQ_OQ));
    if (_mm256_testz_pd(act, act)) continue;
    __m256d ea[3], eb[3], ec[3];
    for (int k = 0; k < 3; ++k) {
      ea[k] = _mm256_loadu_pd(pl + k * sp + i);
      eb[k] = _mm256_loadu_pd(pl + (3 + k) * sp + i);
      ec[k] = _mm256_loadu_pd(pl + (6 + k) * sp + i);
    }
    const __m256d za = _mm256_loadu_pd(pl + 9 * sp + i), zb = _mm256_loadu_pd(pl + 10 * sp + i);
    const __m256d zc = _mm256_loadu_pd(pl + 11 * sp + i);
    __m256d cx0 = inf, cy0 = inf, cx1 = ninf, cy1 = ninf;
    // Only as many pixel slots as the largest active bbox has (most have 1 to 3 pixels).
    const __m256d act_area = _mm256_and_pd(act, area);
    const __m128d hi2 = _mm_max_pd(_mm256_castpd256_pd128(act_area), _mm256_extractf128_pd(act_area, 1));
    const int n_slots = (int)_mm_cvtsd_f64(_mm_max_sd(hi2, _mm_unpackhi_pd(hi2, hi2)));
    for (int j = 0; j < n_slots; ++j) {
      const __m256d jd = _mm256_set1_pd((double)j);
      const __m256d dy = _mm256_floor_pd(_mm256_fmadd_pd(jd, rw, tiny)), dx = _mm256_fnmadd_pd(dy, w, jd);
      const __m256d X = _mm256_add_pd(_mm256_add_pd(x0, dx), half), Y = _mm256_add_pd(_mm256_add_pd(y0, dy), half);
      __m256d in = _mm256_and_pd(act, _mm256_cmp_pd(jd, area, _CMP_LT_OQ));
      for (int k = 0; k < 3; ++k) {
        const __m256d e = _mm256_fmadd_pd(ea[k], X, _mm256_fmadd_pd(eb[k], Y, ec[k]));
        in = _mm256_and_pd(in, _mm256_cmp_pd(e, zero, _CMP_GE_OQ));
      }
      const __m256d z = _mm256_fmadd_pd(za, X, _mm256_fmadd_pd(zb, Y, zc));
      in = _mm256_and_pd(in, _mm256_and_pd(_mm256_cmp_pd(z, m1, _CMP_GE_OQ), _mm256_cmp_pd(z, one, _CMP_LE_OQ)));
      cx0 = _mm256_min_pd(cx0, _mm256_blendv_pd(inf, X, in)), cy0 = _mm256_min_pd(cy0, _mm256_blendv_pd(inf, Y, in));
      cx1 = _mm256_max_pd(cx1, _mm256_blendv_pd(ninf, X, in)), cy1 = _mm256_max_pd(cy1, _mm256_blendv_pd(ninf, Y, in));
    }
    // Lanes: act & covered -> shrunk bbox; act & !covered -> kind 0; !act -> unchanged.
    const __m256d covered = _mm256_cmp_pd(cx0, cx1, _CMP_LE_OQ);
    const __m256d upd = _mm256_and_pd(act, covered);
    auto to_i = [](__m256d a) { return _mm256_cvttpd_epi32(a); };  // pixel centers are integers + 0.5
    const __m128i u4 = _mm256_cvtpd_epi32(_mm256_and_pd(upd, _mm256_set1_pd(1.0)));  // 1 where updated
    const __m128i um = _mm_cmpeq_epi32(u4, _mm_set1_epi32(1));
    _mm_storeu_si128((__m128i*)(box + i), _mm_blendv_epi8(bx0, to_i(_mm256_sub_pd(cx0, half)), um));
    _mm_storeu_si128((__m128i*)(box + sv + i), _mm_blendv_epi8(by0, to_i(_mm256_sub_pd(cy0, half)), um));
    _mm_storeu_si128((__m128i*)(box + 2 * sv + i), _mm_blendv_epi8(bx1, to_i(_mm256_sub_pd(cx1, half)), um));
    _mm_storeu_si128((__m128i*)(box + 3 * sv + i), _mm_blendv_epi8(by1, to_i(_mm256_sub_pd(cy1, half)), um));
    const __m128i d4 = _mm256_cvtpd_epi32(_mm256_and_pd(_mm256_andnot_pd(covered, act), _mm256_set1_pd(1.0)));
    const __m128i dm = _mm_cmpeq_epi32(d4, _mm_set1_epi32(1));
    _mm_storeu_si128((__m128i*)(kind + i), _mm_blendv_epi8(k4, _mm_setzero_si128(), dm));
  }
#endif
  for (; i < n; ++i) scalar(i);
}

// Depth test of pixels x0..x1 (relative to the row pointers) of one row: e_k(dx) = e[k] + ea[k] dx and
// z(dx) = z + za dx with dx = x - x0; a pixel is taken when all e_k >= 0, -1 <= z <= 1 and z < zrow[x] (strict:
// among equal depths the first triangle, i.e. the smaller id, keeps the pixel). Rows must have 7 floats / ints
// of padding after x1.
inline void depth_test_row(const float e[3], const float ea[3], float z, float za, int x0, int x1, float* zrow,
                           int32_t* irow, int32_t idx) {
  int x = x0;
#ifdef MR_AVX2
  const __m256 lane = _mm256_setr_ps(0.f, 1.f, 2.f, 3.f, 4.f, 5.f, 6.f, 7.f), zero = _mm256_setzero_ps();
  const __m256i vidx = _mm256_set1_epi32(idx);
  for (; x <= x1; x += 8) {
    const __m256 dx = _mm256_add_ps(_mm256_set1_ps((float)(x - x0)), lane);
    const __m256 e0 = _mm256_fmadd_ps(_mm256_set1_ps(ea[0]), dx, _mm256_set1_ps(e[0]));
    const __m256 e1 = _mm256_fmadd_ps(_mm256_set1_ps(ea[1]), dx, _mm256_set1_ps(e[1]));
    const __m256 e2 = _mm256_fmadd_ps(_mm256_set1_ps(ea[2]), dx, _mm256_set1_ps(e[2]));
    const __m256 zz = _mm256_fmadd_ps(_mm256_set1_ps(za), dx, _mm256_set1_ps(z));
    const __m256 zb = _mm256_loadu_ps(zrow + x);
    __m256 m = _mm256_cmp_ps(dx, _mm256_set1_ps((float)(x1 - x0)), _CMP_LE_OQ);
    m = _mm256_and_ps(m, _mm256_cmp_ps(e0, zero, _CMP_GE_OQ));
    m = _mm256_and_ps(m, _mm256_cmp_ps(e1, zero, _CMP_GE_OQ));
    m = _mm256_and_ps(m, _mm256_cmp_ps(e2, zero, _CMP_GE_OQ));
    m = _mm256_and_ps(m, _mm256_cmp_ps(zz, _mm256_set1_ps(-1.f), _CMP_GE_OQ));
    m = _mm256_and_ps(m, _mm256_cmp_ps(zz, _mm256_set1_ps(1.f), _CMP_LE_OQ));
    m = _mm256_and_ps(m, _mm256_cmp_ps(zz, zb, _CMP_LT_OQ));
    _mm256_storeu_ps(zrow + x, _mm256_blendv_ps(zb, zz, m));  // branch-free: the outcome is unpredictable
    const __m256i ib = _mm256_loadu_si256((const __m256i*)(irow + x));
    _mm256_storeu_si256((__m256i*)(irow + x), _mm256_blendv_epi8(ib, vidx, _mm256_castps_si256(m)));
  }
#else
  for (; x <= x1; ++x) {
    const float dx = (float)(x - x0);
    const float zz = z + za * dx;
    if (e[0] + ea[0] * dx >= 0.f && e[1] + ea[1] * dx >= 0.f && e[2] + ea[2] * dx >= 0.f && zz >= -1.f &&
        zz <= 1.f && zz < zrow[x]) {
      zrow[x] = zz;
      irow[x] = idx;
    }
  }
#endif
}

// Copies n floats to dst with non-temporal stores where dst is 32-byte aligned: the outputs are tens of MB written
// once, and regular stores would first read every line.
inline void stream_copy(float* dst, const float* src, int64_t n) {
  int64_t i = 0;
#ifdef MR_AVX2
  if ((reinterpret_cast<uintptr_t>(dst) & 31) == 0)
    for (; i + 8 <= n; i += 8) _mm256_stream_ps(dst + i, _mm256_loadu_ps(src + i));
#endif
  for (; i < n; ++i) dst[i] = src[i];
}

}  // namespace mr
