// Host-side helpers of the CPU kernels: input checks and camera unpacking.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cstring>

#include "gs_math.h"

#define GS_CHECK_INPUT(x, ...)                                                                   \
  TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor");                               \
  TORCH_CHECK((x).scalar_type() == at::kFloat, #x " must be float32, got ", (x).scalar_type()); \
  TORCH_CHECK((x).is_contiguous(), #x " must be contiguous");                                   \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape [" #__VA_ARGS__ "], got ", (x).sizes())

#define GS_CHECK_INT(x, ...)                                                                     \
  TORCH_CHECK((x).device().is_cpu(), #x " must be a CPU tensor");                               \
  TORCH_CHECK((x).scalar_type() == at::kInt, #x " must be int32, got ", (x).scalar_type());     \
  TORCH_CHECK((x).is_contiguous(), #x " must be contiguous");                                   \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape [" #__VA_ARGS__ "], got ", (x).sizes())

namespace gs {

// at::zeros without a parallel fill: a memset of a few MB on the calling thread beats waking the thread team.
inline at::Tensor zeros_serial(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  if (t.numel() > 0) std::memset(t.data_ptr(), 0, t.nbytes());
  return t;
}

// Runs fn(begin, end, slot) over [0, n) in chunks handed out dynamically (atomic counter) to torch's intra-op
// (OpenMP) threads; slot < at::get_num_threads() identifies the worker. Dynamic hand-out keeps all threads busy
// when the work per item is uneven (tiles) or when a thread is descheduled on a loaded machine.
// Loops with fewer than min_parallel items run on the calling thread: a few milliseconds of work is not worth a
// thread-team wake-up and barrier, which can cost far more than that when the machine is oversubscribed.
template <typename Fn>
void parallel_dynamic(int64_t n, int64_t chunk, Fn&& fn, int64_t min_parallel = 0) {
  if (n <= 0) return;
  if (n < min_parallel || at::get_num_threads() <= 1) {
    fn(0, n, 0);
    return;
  }
  const int64_t n_chunks = (n + chunk - 1) / chunk;
  const int64_t n_workers = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), n_chunks));
  std::atomic<int64_t> next{0};
  at::parallel_for(0, n_workers, 1, [&](int64_t wbegin, int64_t wend) {
    for (int64_t slot = wbegin; slot < wend; ++slot)
      for (int64_t c = next.fetch_add(1); c < n_chunks; c = next.fetch_add(1))
        fn(c * chunk, std::min(n, (c + 1) * chunk), (int)slot);
  });
}

inline Camera make_camera(const at::Tensor& world_to_cam, const at::Tensor& K, int64_t width, int64_t height) {
  GS_CHECK_INPUT(world_to_cam, 4, 4);
  GS_CHECK_INPUT(K, 3, 3);
  TORCH_CHECK(width > 0 && height > 0, "image size must be positive, got ", width, "x", height);
  const float* V = world_to_cam.data_ptr<float>();
  const float* k = K.data_ptr<float>();
  Camera cam;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) cam.R[i * 3 + j] = V[i * 4 + j];
    cam.t[i] = V[i * 4 + 3];
  }
  cam.fx = k[0];
  cam.fy = k[4];
  cam.cx = k[2];
  cam.cy = k[5];
  cam.width = (int)width;
  cam.height = (int)height;
  return cam;
}

}  // namespace gs
