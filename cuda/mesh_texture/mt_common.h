// Host-side helpers of the mesh texture / antialias CPU kernels: input checks and deterministic parallel loops.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstring>

#include "texture_math.h"

#define MT_CHECK_CPU(x, dtype, name)                                                                  \
  TORCH_CHECK((x).defined() && (x).device().is_cpu(), name " must be a CPU tensor");                  \
  TORCH_CHECK((x).scalar_type() == dtype, name " must be ", dtype, ", got ", (x).scalar_type());    \
  TORCH_CHECK((x).is_contiguous(), name " must be contiguous")

#define MT_CHECK_SHAPE(x, name, ...)                                                                  \
  TORCH_CHECK((x).sizes() == at::IntArrayRef({__VA_ARGS__}), name " must have shape [" #__VA_ARGS__ \
              "], got ", (x).sizes())

namespace mt {

// at::zeros without a parallel fill (a memset on the calling thread beats waking the thread team).
inline at::Tensor zeros_serial(at::IntArrayRef sizes, const at::TensorOptions& opts) {
  at::Tensor t = at::empty(sizes, opts);
  if (t.numel() > 0) std::memset(t.data_ptr(), 0, t.nbytes());
  return t;
}

// Runs fn(begin, end, slot) over [0, n) split into `slots` fixed contiguous ranges, one per slot. The split only
// depends on n and slots (never on thread timing), so per-slot partial results reduced in slot order are
// deterministic.
template <typename Fn>
void for_each_slot(int64_t n, int slots, Fn&& fn) {
  if (n <= 0) return;
  if (slots <= 1) {
    fn((int64_t)0, n, 0);
    return;
  }
  at::parallel_for(0, slots, 1, [&](int64_t sb, int64_t se) {
    for (int64_t s = sb; s < se; ++s) fn(n * s / slots, n * (s + 1) / slots, (int)s);
  });
}

}  // namespace mt
