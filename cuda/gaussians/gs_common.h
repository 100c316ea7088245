// Host-side helpers of the CPU kernels: input checks and camera unpacking.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>

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

// Runs fn(begin, end, slot) over [0, n) in chunks handed out dynamically (atomic counter) to torch's intra-op
// (OpenMP) threads; slot < at::get_num_threads() identifies the worker. Dynamic hand-out keeps all threads busy
// when the work per item is uneven (tiles) or when a thread is descheduled on a loaded machine.
template <typename Fn>
void parallel_dynamic(int64_t n, int64_t chunk, Fn&& fn) {
  if (n <= 0) return;
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
