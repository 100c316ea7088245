// Host-side helpers of the mesh raster kernels: input checks, dynamic parallel loops, deterministic scatter.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <climits>
#include <memory>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#define MR_CHECK_TENSOR(x, dtype, name)                                                                  \
  TORCH_CHECK((x).device().is_cpu(), name " must be a CPU tensor");                                     \
  TORCH_CHECK((x).scalar_type() == dtype, name " must be ", dtype, ", got ", (x).scalar_type()); \
  TORCH_CHECK((x).is_contiguous(), name " must be contiguous")

namespace mr {

// at::empty for a large output that is written once, advised to use transparent huge pages where the kernel
// offers them on request (THP "madvise" mode): with tens of MB of output, first-touch faults on 4 KB pages cost
// about a third of a forward pass. Purely a hint; the memory stays torch's.
inline at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(1) << 21;
  if (t.nbytes() >= 4 * kHuge) {
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(t.data_ptr()) + kHuge - 1) & ~(kHuge - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(t.data_ptr()) + t.nbytes()) & ~(kHuge - 1);
    if (end > begin) madvise(reinterpret_cast<void*>(begin), end - begin, MADV_HUGEPAGE);
  }
#endif
  return t;
}

// Checks that the int32 indices of tri lie in [0, V) (one vectorizable pass, then one check).
inline void check_indices(const at::Tensor& tri, int64_t V) {
  const int32_t* t = tri.data_ptr<int32_t>();
  const int64_t n = tri.numel();
  int32_t lo = 0, hi = 0;
  if (n > 0) lo = hi = t[0];
  for (int64_t i = 0; i < n; ++i) lo = std::min(lo, t[i]), hi = std::max(hi, t[i]);
  TORCH_CHECK(n == 0 || (lo >= 0 && hi < V), "tri holds vertex indices in [", lo, ", ", hi, "] outside [0, ", V,
              ")");
}

// Checks pos [C, V, 4] float32 and tri [F, 3] int32 with indices in [0, V).
inline void check_mesh(const at::Tensor& pos, const at::Tensor& tri) {
  MR_CHECK_TENSOR(pos, at::kFloat, "pos");
  TORCH_CHECK(pos.dim() == 3 && pos.size(2) == 4, "pos must have shape [C, V, 4], got ", pos.sizes());
  MR_CHECK_TENSOR(tri, at::kInt, "tri");
  TORCH_CHECK(tri.dim() == 2 && tri.size(1) == 3, "tri must have shape [F, 3], got ", tri.sizes());
  check_indices(tri, pos.size(1));
}

// Checks rast [C, H, W, 4] float32 and returns the number of pixels C * H * W.
inline int64_t check_rast(const at::Tensor& rast) {
  MR_CHECK_TENSOR(rast, at::kFloat, "rast");
  TORCH_CHECK(rast.dim() == 4 && rast.size(3) == 4, "rast must have shape [C, H, W, 4], got ", rast.sizes());
  return rast.size(0) * rast.size(1) * rast.size(2);
}

// Number of workers parallel_dynamic may use (size of per-worker scratch arrays).
inline int64_t max_slots() { return std::max(1, at::get_num_threads()); }

// Runs fn(begin, end, slot) over [0, n) in chunks handed out in order, dynamically (atomic counter), to torch's
// intra-op threads; slot < max_slots() identifies the worker. Costs vary a lot between tiles and triangles and the
// machine may be shared, so static splits would leave threads idle. Each worker runs its chunks in the order it
// takes them (rasterize_forward relies on this).
template <typename Fn>
void parallel_dynamic(int64_t n, int64_t chunk, Fn&& fn) {
  if (n <= 0) return;
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  const int64_t n_workers = std::min<int64_t>(max_slots(), n_chunks);
  if (n_workers <= 1) {
    fn(int64_t(0), n, 0);
    return;
  }
  std::atomic<int64_t> next{0};
  at::parallel_for(0, n_workers, 1, [&](int64_t wb, int64_t we) {
    for (int64_t w = wb; w < we; ++w)
      for (int64_t c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1))
        fn(c * chunk, std::min(n, (c + 1) * chunk), (int)w);
  });
}

// True when every element of x (float32 / float64 CPU tensor) is finite. Sequential and branch-free (tests the
// exponent bits): a pass over a few MB is cheaper than waking a thread team on a busy machine.
inline bool all_finite(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "all_finite needs a CPU tensor");
  const at::Tensor c = x.contiguous();
  const int64_t n = c.numel();
  uint32_t bad = 0;
  if (c.scalar_type() == at::kFloat) {
    const uint32_t* b = reinterpret_cast<const uint32_t*>(c.data_ptr<float>());
    for (int64_t i = 0; i < n; ++i) bad |= (uint32_t)((b[i] & 0x7f800000u) == 0x7f800000u);
  } else {
    TORCH_CHECK(c.scalar_type() == at::kDouble, "all_finite needs float32 or float64, got ", c.scalar_type());
    const uint64_t* b = reinterpret_cast<const uint64_t*>(c.data_ptr<double>());
    for (int64_t i = 0; i < n; ++i) bad |= (uint32_t)((b[i] & 0x7ff0000000000000ull) == 0x7ff0000000000000ull);
  }
  return bad == 0;
}

// (min, max) of an int32 / int64 CPU tensor, (0, -1) when empty; sequential like all_finite.
inline std::vector<int64_t> index_range(const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "index_range needs a CPU tensor");
  const at::Tensor c = t.contiguous();
  const int64_t n = c.numel();
  if (n == 0) return {0, -1};
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  if (c.scalar_type() == at::kInt) {
    const int32_t* p = c.data_ptr<int32_t>();
    int32_t l = INT32_MAX, h = INT32_MIN;
    for (int64_t i = 0; i < n; ++i) l = std::min(l, p[i]), h = std::max(h, p[i]);
    lo = l, hi = h;
  } else {
    TORCH_CHECK(c.scalar_type() == at::kLong, "index_range needs int32 or int64, got ", c.scalar_type());
    const int64_t* p = c.data_ptr<int64_t>();
    for (int64_t i = 0; i < n; ++i) lo = std::min(lo, p[i]), hi = std::max(hi, p[i]);
  }
  return {lo, hi};
}

// Triangle id of a rast pixel (-1 when empty); ids are stored as float(id + 1).
inline int pixel_tri(const float* rast_px) { return (int)rast_px[3] - 1; }

// Deterministic scatter of per-pixel, per-corner gradients onto vertices (no atomics, independent of the thread
// count): pixels are bucketed by (camera, triangle) with a counting sort, summed per triangle corner in pixel
// order, then gathered per vertex over its incident corners in triangle order.
//   rast [C, H, W, 4] gives each pixel's triangle; fn(c, pix, f, g) writes the pixel's contribution
//   g[3 * K] (corner-major) for pixel pix (index within camera c) covered by triangle f.
//   out [Cout, V, K]: Cout = C keeps cameras apart, Cout = 1 sums over them.
template <typename Fn>
void scatter_to_vertices(const float* rast, int64_t C, int64_t P, const int32_t* tri, int64_t F, int64_t V, int K,
                         int64_t Cout, Fn&& fn, float* out) {
  std::fill(out, out + Cout * V * K, 0.f);
  if (C == 0 || F == 0 || V == 0 || K == 0) return;
  std::vector<int64_t> start(C * F + 1, 0);  // start[key + 1] counts pixels of key = c * F + f, then prefix sums
  at::parallel_for(0, C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c)
      for (int64_t p = 0; p < P; ++p) {
        const int f = pixel_tri(rast + (c * P + p) * 4);
        if (f >= 0 && f < F) ++start[c * F + f + 1];
      }
  });
  for (int64_t k = 0; k < C * F; ++k) start[k + 1] += start[k];
  std::vector<int32_t> order(start[C * F]);
  at::parallel_for(0, C, 1, [&](int64_t cb, int64_t ce) {
    for (int64_t c = cb; c < ce; ++c) {
      std::vector<int64_t> cursor(start.begin() + c * F, start.begin() + (c + 1) * F);
      for (int64_t p = 0; p < P; ++p) {
        const int f = pixel_tri(rast + (c * P + p) * 4);
        if (f >= 0 && f < F) order[cursor[f]++] = (int32_t)p;
      }
    }
  });
  // Per (camera, triangle, corner) sums; keys without pixels are never read.
  std::unique_ptr<float[]> corner(new float[C * F * 3 * K]);  // uninitialized on purpose
  parallel_dynamic(C * F, 1024, [&](int64_t kb, int64_t ke, int) {
    std::vector<double> acc(3 * K), g(3 * K);
    for (int64_t key = kb; key < ke; ++key) {
      if (start[key] == start[key + 1]) continue;
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = start[key]; i < start[key + 1]; ++i) {
        fn(key / F, (int64_t)order[i], (int)(key % F), g.data());
        for (int j = 0; j < 3 * K; ++j) acc[j] += g[j];
      }
      for (int j = 0; j < 3 * K; ++j) corner[key * 3 * K + j] = (float)acc[j];
    }
  });
  // Vertex -> incident (triangle, corner) lists in triangle order.
  std::vector<int64_t> vstart(V + 1, 0);
  for (int64_t i = 0; i < 3 * F; ++i) ++vstart[tri[i] + 1];
  for (int64_t v = 0; v < V; ++v) vstart[v + 1] += vstart[v];
  std::vector<int64_t> inc(3 * F), vcur(vstart.begin(), vstart.end() - 1);
  for (int64_t i = 0; i < 3 * F; ++i) inc[vcur[tri[i]]++] = i;
  parallel_dynamic(V, 2048, [&](int64_t vb, int64_t ve, int) {
    std::vector<double> acc(K);
    for (int64_t v = vb; v < ve; ++v)
      for (int64_t co = 0; co < Cout; ++co) {
        std::fill(acc.begin(), acc.end(), 0.0);
        const int64_t c0 = Cout == 1 ? 0 : co, c1 = Cout == 1 ? C : co + 1;
        for (int64_t c = c0; c < c1; ++c)
          for (int64_t i = vstart[v]; i < vstart[v + 1]; ++i) {
            const int64_t key = c * F + inc[i] / 3;
            if (start[key] == start[key + 1]) continue;
            const float* src = &corner[(key * 3 + inc[i] % 3) * K];
            for (int j = 0; j < K; ++j) acc[j] += src[j];
          }
        float* dst = out + (co * V + v) * K;
        for (int j = 0; j < K; ++j) dst[j] = (float)acc[j];
      }
  });
}

}  // namespace mr
