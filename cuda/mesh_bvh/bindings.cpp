// Python bindings of the mesh BVH (loaded by renderers/_build.py as the "mesh_bvh" family).
//
// The BVH lives in a C++ object (class Bvh) that Python keeps for the lifetime of a RayCaster; queries pass only
// the rays. All entry points repeat the input checks of renderers/mesh/raycast.py (ValueError on bad input).
#include <torch/extension.h>

#include "bvh.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "recon mesh ray caster: SAH-binned BVH, CPU";
  py::class_<mesh_bvh::Bvh>(m, "Bvh")
      .def(py::init<const at::Tensor&, const at::Tensor&, int64_t, int64_t>(), py::arg("vertices"),
           py::arg("faces"), py::arg("bins") = 32, py::arg("max_leaf") = 8,
           py::call_guard<py::gil_scoped_release>(),
           "Build from vertices [V, 3] float32 and faces [F, 3] int64; degenerate triangles are left out.")
      .def("closest_hit", &mesh_bvh::Bvh::closest_hit, py::arg("origins"), py::arg("dirs"), py::arg("tmin"),
           py::arg("tmax"), py::call_guard<py::gil_scoped_release>(),
           "(origins [N,3] f32, dirs [N,3] f32, tmin [N]|[1] f64, tmax [N]|[1] f64) -> [t [N] f32 (inf on miss), "
           "tri_id [N] i64 (-1 on miss), uv [N,2] f32]")
      .def("any_hit", &mesh_bvh::Bvh::any_hit, py::arg("origins"), py::arg("dirs"), py::arg("tmin"), py::arg("tmax"),
           py::call_guard<py::gil_scoped_release>(), "(origins, dirs, tmin, tmax) -> bool [N]")
      .def_property_readonly("num_nodes", &mesh_bvh::Bvh::num_nodes)
      .def_property_readonly("num_triangles", &mesh_bvh::Bvh::num_triangles,
                             "non-degenerate triangles stored in the tree")
      .def_property_readonly("depth", &mesh_bvh::Bvh::depth)
      .def("nodes", &mesh_bvh::Bvh::nodes_tensor, "[num_nodes, 8] float32 copy of the node array (see bvh.h)")
      .def("triangle_ids", &mesh_bvh::Bvh::triangle_ids, "[num_triangles] int64 face ids in leaf order");
}
