// The argument checks every binding file shares: numpy arrays of the right
// dtype and layout, or TypeError / ValueError naming the argument.
#pragma once
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

namespace deepid2_bindings {

namespace py = pybind11;

// An array of dtype T, C-contiguous, or TypeError / ValueError naming `name`.
template <typename T>
py::array_t<T> checked(const py::handle& obj, const char* name) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(py::dtype::of<T>()))  // equal, not is: "<f4" is float32 too
        throw py::type_error(std::string(name) + " must have dtype " +
                             std::string(py::str(py::dtype::of<T>())) + ", got " +
                             std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be C-contiguous (use np.ascontiguousarray)");
    return py::reinterpret_borrow<py::array_t<T>>(a);
}

}  // namespace deepid2_bindings
