// Python bindings of the CPU mesh rasterizer (loaded by renderers/_build.py as family "mesh_raster").
#include <torch/extension.h>

#include <optional>
#include <vector>

#include "raster_common.h"

namespace mr {
std::vector<at::Tensor> rasterize_forward(const at::Tensor&, const at::Tensor&, int64_t, int64_t, bool);
at::Tensor rasterize_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
std::vector<at::Tensor> interpolate_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const std::optional<at::Tensor>&, const std::vector<int64_t>&);
std::vector<at::Tensor> interpolate_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                             const at::Tensor&);
}  // namespace mr

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon mesh rasterizer (rasterize / interpolate), CPU kernels";
  m.def("rasterize_forward", &mr::rasterize_forward,
        "(pos [C,V,4] f32, tri [F,3] i32, height, width, with_db=True) -> [rast [C,H,W,4], rast_db [C,H,W,4] "
        "(empty without with_db)]",
        py::arg("pos"), py::arg("tri"), py::arg("height"), py::arg("width"), py::arg("with_db") = true);
  m.def("rasterize_backward", &mr::rasterize_backward,
        "(pos, tri, rast, grad_rast [C,H,W,4]) -> grad_pos [C,V,4] (from grad_rast[..., :3])");
  m.def("interpolate_forward", &mr::interpolate_forward,
        "(attr [1|C,V,A] f32, rast, tri, rast_db or None, diff_idx list[int]) -> [out [C,H,W,A], out_da or None]");
  m.def("interpolate_backward", &mr::interpolate_backward,
        "(attr, rast, tri, grad_out [C,H,W,A]) -> [grad_attr [1|C,V,A], grad_rast [C,H,W,4]]");
  m.def("all_finite", &mr::all_finite, "(x float32|float64 CPU) -> bool: no NaN / Inf (sequential)");
  m.def("index_range", &mr::index_range, "(t int32|int64 CPU) -> [min, max] ([0, -1] when empty; sequential)");
}
