// Python bindings of the CPU mesh texture / antialias kernels (loaded by renderers/_build.py, family
// "mesh_texture").
#include <torch/extension.h>

#include <vector>

namespace mt {
at::Tensor texture_forward(const std::vector<at::Tensor>&, const at::Tensor&, const at::Tensor&, int64_t, int64_t);
std::vector<at::Tensor> texture_backward(const std::vector<at::Tensor>&, const at::Tensor&, const at::Tensor&, int64_t,
                                         int64_t, const at::Tensor&, bool, bool);
at::Tensor edge_topology(const at::Tensor&, int64_t);
std::vector<at::Tensor> antialias_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                          const at::Tensor&);
std::vector<at::Tensor> antialias_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&);
}  // namespace mt

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon mesh texture sampling and silhouette antialiasing, CPU kernels";
  m.def("texture_forward", &mt::texture_forward,
        "(levels [T,h,w,D] list, uv [C,H,W,2], uv_da [C,H,W,4] (trilinear only), filter (0 nearest, 1 linear, "
        "2 trilinear), boundary (0 wrap, 1 clamp)) -> out [C,H,W,D]");
  m.def("texture_backward", &mt::texture_backward,
        "(levels, uv, uv_da, filter, boundary, grad_out, need_uv, need_tex) -> [grad_uv, grad_level_0, ...] (level "
        "gradients only with need_tex)");
  m.def("edge_topology", &mt::edge_topology,
        "(tri [F,3] int32, num_vertices) -> opp [F,3] int32: the opposite vertex across each edge, -1 = none");
  m.def("antialias_forward", &mt::antialias_forward,
        "(color [C,H,W,D], rast [C,H,W,4], pos [C,V,4], tri [F,3] int32, opp [F,3] int32) -> [out, alpha, code]");
  m.def("antialias_backward", &mt::antialias_backward,
        "(color, rast, pos, tri, opp, alpha, code, grad_out) -> [grad_color, grad_pos]");
}
