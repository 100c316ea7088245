// Python bindings of the Gaussian ray caster (loaded by renderers/_build.py as the "gaussians_rt" family).
//
// The BVH lives in a C++ object (class Bvh) that Python keeps while it casts rays against one set of Gaussians;
// queries pass only the rays (and the colors to composite).
#include <torch/extension.h>

#include "grt.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon Gaussian ray caster: BVH over bounding ellipsoids, ordered compositing, CPU";
  py::class_<grt::Bvh>(m, "Bvh")
      .def(py::init<const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t>(),
           py::arg("means"), py::arg("quats"), py::arg("scales"), py::arg("opacities"), py::arg("leaf_size") = 4,
           py::call_guard<py::gil_scoped_release>(),
           "Build from means [N,3], quats [N,4] (w,x,y,z, unnormalized), scales [N,3], opacities [N], float32.")
      .def("trace", &grt::Bvh::trace, py::arg("origins"), py::arg("dirs"), py::arg("tmin"), py::arg("tmax"),
           py::arg("colors"), py::arg("order") = 0, py::arg("packet") = 1, py::call_guard<py::gil_scoped_release>(),
           "order 0: by center projection, 1: by t*; packet: consecutive rays from one origin traced together "
           "(1: every ray alone) -> [features [R,D], alpha [R], depth [R] (sum w key), "
           "final_T [R], n_hits [R] int32, hit_prims [H] int32, offsets [R+1] int64]")
      .def("trace_backward", &grt::Bvh::trace_backward, py::arg("origins"), py::arg("dirs"), py::arg("tmin"),
           py::arg("tmax"), py::arg("colors"), py::arg("order"), py::arg("final_T"),
           py::arg("hit_prims"), py::arg("offsets"), py::arg("v_features"), py::arg("v_alpha"),
           py::arg("v_depth"), py::call_guard<py::gil_scoped_release>(),
           "-> [v_means, v_quats, v_scales, v_opacities, v_colors]")
      .def("transmittance", &grt::Bvh::transmittance, py::arg("origins"), py::arg("dirs"), py::arg("tmin"),
           py::arg("tmax"), py::call_guard<py::gil_scoped_release>(), "-> T [R]")
      .def_property_readonly("num_nodes", &grt::Bvh::num_nodes)
      .def_property_readonly("num_prims", &grt::Bvh::num_prims, "Gaussians stored in the tree")
      .def_property_readonly("depth", &grt::Bvh::depth);
}
