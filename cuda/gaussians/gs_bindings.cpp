// Python bindings of the CPU Gaussian rasterizer (loaded by renderers/_build.py).
#include <torch/extension.h>

#include <vector>

namespace gs {
std::vector<at::Tensor> project_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                        const at::Tensor&, int64_t, int64_t, double, double);
std::vector<at::Tensor> project_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, int64_t, int64_t, double, double, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const at::Tensor&);
std::vector<at::Tensor> bin_gaussians(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                      const at::Tensor&, int64_t, int64_t, int64_t);
std::vector<at::Tensor> rasterize_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          int64_t, int64_t, int64_t);
std::vector<at::Tensor> rasterize_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           int64_t, int64_t, int64_t, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&);
}  // namespace gs

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon Gaussian rasterizer, CPU kernels";
  m.def("project_forward", &gs::project_forward,
        "(means, quats, scales, world_to_cam, K, width, height, near, eps2d) -> [means2d, conics, depths, radii]");
  m.def("project_backward", &gs::project_backward,
        "(..., radii, v_means2d, v_conics, v_depths) -> [v_means, v_quats, v_scales]");
  m.def("bin_gaussians", &gs::bin_gaussians,
        "(means2d, conics, opacities, radii, depths, width, height, tile_size) -> [tile_offsets, gauss_ids]");
  m.def("rasterize_forward", &gs::rasterize_forward,
        "(means2d, conics, opacities, colors, depths, background, tile_offsets, gauss_ids, width, height, "
        "tile_size) -> [rgb, alpha, depth, final_T, n_contrib]");
  m.def("rasterize_backward", &gs::rasterize_backward,
        "(..., final_T, n_contrib, v_rgb, v_alpha, v_depth) -> [v_means2d, v_conics, v_opacities, v_colors, "
        "v_depths]");
}
