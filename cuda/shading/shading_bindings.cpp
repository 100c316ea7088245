// Python bindings of the fused Monte Carlo shading CPU kernels (loaded by renderers/_build.py, family "shading").
#include <torch/extension.h>

#include <vector>

namespace shading {
at::Tensor brdf_shade_forward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                              const at::Tensor&);
std::vector<at::Tensor> brdf_shade_backward(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                            const at::Tensor&, const at::Tensor&, bool);
std::vector<at::Tensor> sample_brdf(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&);
at::Tensor pdf_brdf_op(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                       const at::Tensor&);
}  // namespace shading

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon fused Monte Carlo shading (principled BRDF sampling, pdf, shading sum), CPU kernels";
  m.def("brdf_shade_forward", &shading::brdf_shade_forward,
        "(n [P,3], v [P,3], l [P,S,3], base [P,3], rough [P,1], metal [P,1], radiance [P,S,3], weight [P,S], "
        "bounce [P,S,3] or empty) -> out [P,3] = sum_s f(n,v,l) max(n.l,0) (radiance weight + bounce)");
  m.def("brdf_shade_backward", &shading::brdf_shade_backward,
        "(n, v, l, base, rough, metal, radiance, weight, bounce, grad_out [P,3], need_radiance) -> "
        "[grad_n, grad_base, grad_rough, grad_metal, grad_radiance (empty unless need_radiance)]");
  m.def("sample_brdf", &shading::sample_brdf,
        "(n [P,3], v [P,3], base [P,3], rough [P,1], metal [P,1], u [P,S,3]) -> [l [P,S,3], pdf [P,S]]");
  m.def("pdf_brdf", &shading::pdf_brdf_op,
        "(n [P,3], v [P,3], l [P,S,3], base [P,3], rough [P,1], metal [P,1]) -> pdf [P,S]");
}
