// Test hooks of cpp/src/face/landmarks.* for tests/ (deepid2_core._cpu.*).
#include <pybind11/pybind11.h>

void bind_landmarks(pybind11::module_& m) { (void)m; }
