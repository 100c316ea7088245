// Projection of 3D Gaussians to 2D (forward and hand-written backward), parallel over Gaussians.
#include <ATen/Parallel.h>

#include "gs_common.h"

namespace gs {

// ~100 ns per Gaussian: below this count the projection runs on the calling thread.
constexpr int64_t kMinParallel = 1 << 18;

std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                        const at::Tensor& world_to_cam, const at::Tensor& K, int64_t width,
                                        int64_t height, double near, double eps2d) {
  const int64_t N = means.size(0);
  GS_CHECK_INPUT(means, N, 3);
  GS_CHECK_INPUT(quats, N, 4);
  GS_CHECK_INPUT(scales, N, 3);
  const Camera cam = make_camera(world_to_cam, K, width, height);
  auto means2d = zeros_serial({N, 2}, means.options());
  auto conics = zeros_serial({N, 3}, means.options());
  auto depths = zeros_serial({N}, means.options());
  auto radii = zeros_serial({N}, means.options().dtype(at::kInt));
  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* s = scales.data_ptr<float>();
  float* m2 = means2d.data_ptr<float>();
  float* cn = conics.data_ptr<float>();
  float* z = depths.data_ptr<float>();
  int* r = radii.data_ptr<int>();
  const float fnear = (float)near, feps = (float)eps2d;
  parallel_dynamic(N, 2048, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      ProjState st;
      // Depth is reported for every Gaussian in front of the camera or not (as the reference does).
      const float* mi = m + 3 * i;
      z[i] = cam.R[6] * mi[0] + cam.R[7] * mi[1] + cam.R[8] * mi[2] + cam.t[2];
      project_one(mi, q + 4 * i, s + 3 * i, cam, fnear, feps, st, m2 + 2 * i, cn + 3 * i, z + i, r + i);
    }
  }, kMinParallel);
  return {means2d, conics, depths, radii};
}

std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& quats, const at::Tensor& scales,
                                         const at::Tensor& world_to_cam, const at::Tensor& K, int64_t width,
                                         int64_t height, double near, double eps2d, const at::Tensor& radii,
                                         const at::Tensor& v_means2d, const at::Tensor& v_conics,
                                         const at::Tensor& v_depths) {
  const int64_t N = means.size(0);
  GS_CHECK_INPUT(means, N, 3);
  GS_CHECK_INPUT(quats, N, 4);
  GS_CHECK_INPUT(scales, N, 3);
  GS_CHECK_INT(radii, N);
  GS_CHECK_INPUT(v_means2d, N, 2);
  GS_CHECK_INPUT(v_conics, N, 3);
  GS_CHECK_INPUT(v_depths, N);
  const Camera cam = make_camera(world_to_cam, K, width, height);
  auto v_means = zeros_serial({N, 3}, means.options());
  auto v_quats = zeros_serial({N, 4}, means.options());
  auto v_scales = zeros_serial({N, 3}, means.options());
  const float* m = means.data_ptr<float>();
  const float* q = quats.data_ptr<float>();
  const float* s = scales.data_ptr<float>();
  const int* r = radii.data_ptr<int>();
  const float* vm2 = v_means2d.data_ptr<float>();
  const float* vcn = v_conics.data_ptr<float>();
  const float* vz = v_depths.data_ptr<float>();
  float* vm = v_means.data_ptr<float>();
  float* vq = v_quats.data_ptr<float>();
  float* vs = v_scales.data_ptr<float>();
  const float fnear = (float)near, feps = (float)eps2d;
  parallel_dynamic(N, 2048, [&](int64_t begin, int64_t end, int) {
    for (int64_t i = begin; i < end; ++i) {
      if (r[i] <= 0) {
        // Culled: only the depth output (reported for all) carries a gradient, through p_z = R[2] . mean + t_z.
        for (int k = 0; k < 3; ++k) vm[3 * i + k] = cam.R[6 + k] * vz[i];
        continue;
      }
      ProjState st;
      float m2[2], cn[3], z;
      int rad;
      project_one(m + 3 * i, q + 4 * i, s + 3 * i, cam, fnear, feps, st, m2, cn, &z, &rad);
      project_one_vjp(m + 3 * i, s + 3 * i, cam, st, vm2 + 2 * i, vcn + 3 * i, vz[i], vm + 3 * i, vq + 4 * i,
                      vs + 3 * i);
    }
  }, kMinParallel);
  return {v_means, v_quats, v_scales};
}

}  // namespace gs
