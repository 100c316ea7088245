// Marching cubes without a case table: the CPU kernel of recon.renderers.volume.isosurface.
//
// Each cube of the grid is cut face by face. On a face (corners in counter-clockwise order seen from outside the
// cube) every sign change of an edge is a crossing; the crossings are joined into directed segments running from
// a "negative -> positive" crossing to a "positive -> negative" one. A face with four crossings (its corners
// alternate) is ambiguous; the asymptotic decider (the sign of the bilinear interpolant's saddle value) chooses
// whether its negative corners connect. The two cubes sharing a face compute the same segments from the same
// four values, so the surface is watertight; every crossing starts one segment and ends another, so the segments
// of a cube close into cycles, which are fanned into triangles whose normals point toward increasing values.
//
// Output: triangles as triples of global vertex keys, key = axis * X*Y*Z + (i * Y + j) * Z + k for the vertex on
// the grid edge from point (i, j, k) one step along axis (0 = x, 1 = y, 2 = z), and key = 3 * X*Y*Z + (i * Y + j)
// * Z + k for the center vertex of cube (i, j, k) (see triangulate), with the edge keys of its cycle. Cubes are visited in row-major order and each
// cube's triangles are listed cycle by cycle (cycles start at their lowest cube-edge number), so the output is
// deterministic and identical to the torch twin (renderers/volume/_ref_isosurface.py), which shares these rules.

#include <torch/extension.h>

#include <ATen/Parallel.h>

#include <array>
#include <cstdint>
#include <vector>

namespace isosurface {
namespace {

// Corner c of a cube is at offset (c & 1, (c >> 1) & 1, (c >> 2) & 1).
constexpr int kEdges[12][2] = {{0, 1}, {2, 3}, {4, 5}, {6, 7},   // along x
                               {0, 2}, {1, 3}, {4, 6}, {5, 7},   // along y
                               {0, 4}, {1, 5}, {2, 6}, {3, 7}};  // along z
// Faces as corner loops, counter-clockwise seen from outside: -x, +x, -y, +y, -z, +z.
constexpr int kFaces[6][4] = {{0, 4, 6, 2}, {1, 3, 7, 5}, {0, 1, 5, 4}, {2, 6, 7, 3}, {0, 2, 3, 1}, {4, 5, 7, 6}};

struct EdgeTable {
  int id[8][8];
  int faces[12];  // bit f set: the edge lies on face f
  EdgeTable() {
    for (auto& row : id)
      for (int& v : row) v = -1;
    for (int e = 0; e < 12; ++e) id[kEdges[e][0]][kEdges[e][1]] = id[kEdges[e][1]][kEdges[e][0]] = e;
    for (int& f : faces) f = 0;
    for (int f = 0; f < 6; ++f)
      for (int m = 0; m < 4; ++m) faces[id[kFaces[f][m]][kFaces[f][(m + 1) & 3]]] |= 1 << f;
  }
};
const EdgeTable kEdgeId;
constexpr int kCenter = 12;  // local vertex number of a cycle's center

// A triangle of a cycle may not join two crossings of one face that no segment of that face joins: the edge
// would lie in the face, where the neighbouring cube may use it too. A cycle is fanned from its first vertex
// from which no diagonal lies in a face; when there is none (140 of the 1026 cycles of all configurations, at
// most one per cube) it is fanned from a center vertex, the mean of its crossings.
inline void triangulate(const int* cycle, int k, std::vector<std::array<int, 3>>& out, int* center_cycle) {
  for (int s = 0; s < k; ++s) {
    bool ok = true;
    for (int t = 2; t + 1 < k && ok; ++t) ok = !(kEdgeId.faces[cycle[s]] & kEdgeId.faces[cycle[(s + t) % k]]);
    if (!ok) continue;
    for (int t = 1; t + 1 < k; ++t) out.push_back({cycle[s], cycle[(s + t + 1) % k], cycle[(s + t) % k]});
    return;
  }
  for (int t = 0; t < k; ++t) out.push_back({kCenter, cycle[(t + 1) % k], cycle[t]});
  for (int t = 0; t < 12; ++t) center_cycle[t] = t < k ? cycle[t] : -1;
}

// Triangles (local vertex numbers: cube edges 0-11, kCenter) of one cube with corner values w (value minus
// level), normals toward increasing values; appended to out. center_cycle receives the center's cycle (else
// untouched).
inline void cube_triangles(const double w[8], std::vector<std::array<int, 3>>& out, int* center_cycle) {
  bool neg[8];
  int mask = 0;
  for (int c = 0; c < 8; ++c) {
    neg[c] = w[c] < 0;
    mask |= int(neg[c]) << c;
  }
  if (mask == 0 || mask == 255) return;
  int next[12];
  for (int& n : next) n = -1;
  for (const auto& f : kFaces) {
    bool n[4];
    int changes = 0;
    for (int m = 0; m < 4; ++m) n[m] = neg[f[m]];
    for (int m = 0; m < 4; ++m) changes += n[m] != n[(m + 1) & 3];
    if (changes == 0) continue;
    auto edge = [&](int m) { return kEdgeId.id[f[m & 3]][f[(m + 1) & 3]]; };  // face edge m: corners m, m+1
    if (changes == 2) {
      int start = -1, end = -1;
      for (int m = 0; m < 4; ++m) {
        if (n[m] && !n[(m + 1) & 3]) start = edge(m);
        if (!n[m] && n[(m + 1) & 3]) end = edge(m);
      }
      next[start] = end;
      continue;
    }
    // Four crossings: the saddle value of the bilinear interpolant is num / den; den != 0 here.
    const double w0 = w[f[0]], w1 = w[f[1]], w2 = w[f[2]], w3 = w[f[3]];
    const double num = w0 * w2 - w1 * w3, den = w0 + w2 - w1 - w3;
    const bool negatives_connect = num * den < 0;
    for (int m = 0; m < 4; ++m) {
      if (negatives_connect && !n[m]) next[edge(m + 3)] = edge(m);  // cut off the positive corner m
      if (!negatives_connect && n[m]) next[edge(m)] = edge(m + 3);  // cut off the negative corner m
    }
  }
  bool seen[12] = {false};
  int cycle[12];
  for (int e0 = 0; e0 < 12; ++e0) {
    if (next[e0] < 0 || seen[e0]) continue;
    int k = 0;
    for (int e = e0; !seen[e]; e = next[e]) {
      seen[e] = true;
      cycle[k++] = e;
    }
    triangulate(cycle, k, out, center_cycle);
  }
}

}  // namespace

// values [X, Y, Z] float32 (CPU, contiguous); returns int64 [T, 3] vertex keys and int64 [C, 13] centers.
std::vector<torch::Tensor> marching_cubes_keys(const torch::Tensor& values, double level) {
  TORCH_CHECK_VALUE(values.device().is_cpu() && values.scalar_type() == at::kFloat && values.is_contiguous(),
                    "values must be a contiguous float32 CPU tensor");
  TORCH_CHECK_VALUE(values.dim() == 3 && values.size(0) >= 2 && values.size(1) >= 2 && values.size(2) >= 2,
                    "values must have shape [X, Y, Z] with every size >= 2, got ", values.sizes());
  const int64_t X = values.size(0), Y = values.size(1), Z = values.size(2), NV = X * Y * Z;
  const float* v = values.data_ptr<float>();
  // Per cube-edge: the key offset of its lower corner and its axis.
  int64_t corner_off[8], edge_off[12];
  for (int c = 0; c < 8; ++c) corner_off[c] = ((c & 1) * Y + ((c >> 1) & 1)) * Z + ((c >> 2) & 1);
  for (int e = 0; e < 12; ++e) edge_off[e] = (e / 4) * NV + corner_off[kEdges[e][0]];

  const int64_t slabs = X - 1;
  std::vector<std::vector<int64_t>> parts(slabs), center_parts(slabs);
  at::parallel_for(0, slabs, 1, [&](int64_t b, int64_t e) {
    std::vector<std::array<int, 3>> tris;
    double w[8];
    int center_cycle[12];
    for (int64_t i = b; i < e; ++i) {
      auto& part = parts[i];
      for (int64_t j = 0; j + 1 < Y; ++j)
        for (int64_t k = 0; k + 1 < Z; ++k) {
          const int64_t base = (i * Y + j) * Z + k;
          for (int c = 0; c < 8; ++c) w[c] = double(v[base + corner_off[c]]) - level;
          tris.clear();
          center_cycle[0] = -1;
          cube_triangles(w, tris, center_cycle);
          const int64_t center_key = 3 * NV + base;
          for (const auto& t : tris)
            for (int m = 0; m < 3; ++m) part.push_back(t[m] == kCenter ? center_key : base + edge_off[t[m]]);
          if (center_cycle[0] >= 0) {
            center_parts[i].push_back(center_key);
            for (int t = 0; t < 12; ++t)
              center_parts[i].push_back(center_cycle[t] < 0 ? -1 : base + edge_off[center_cycle[t]]);
          }
        }
    }
  });
  auto gather = [](const std::vector<std::vector<int64_t>>& ps, int64_t cols) {
    int64_t total = 0;
    for (const auto& p : ps) total += int64_t(p.size());
    auto out = torch::empty({total / cols, cols}, torch::kLong);
    int64_t* dst = out.data_ptr<int64_t>();
    for (const auto& p : ps) dst = std::copy(p.begin(), p.end(), dst);
    return out;
  };
  return {gather(parts, 3), gather(center_parts, 13)};
}

}  // namespace isosurface

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("marching_cubes_keys", &isosurface::marching_cubes_keys, py::arg("values"), py::arg("level"),
        py::call_guard<py::gil_scoped_release>(), "Triangles of the level set as triples of vertex keys; centers [C, 13] (key, cycle edge keys or -1).");
}
