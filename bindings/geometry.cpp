// Test hooks of cpp/src/face/geometry.* for tests/ (deepid2_core._cpu.*).
#include <pybind11/pybind11.h>

void bind_geometry(pybind11::module_& m) { (void)m; }
