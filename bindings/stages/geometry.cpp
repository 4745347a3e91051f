// deepid2_core._cpu hooks of cpp/src/face/geometry.h: alignment and patch
// cutting, what deepid2_core/face/align.py and patches.py call. Arrays must
// be C-contiguous with the stated dtype (TypeError otherwise, ValueError for
// shapes); the C++ checks the rest (std::invalid_argument -> ValueError).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "face/geometry.h"

namespace py = pybind11;
using namespace deepid2;

namespace {

template <typename T>
py::array_t<T> contiguous(const py::handle& obj, const char* name, const char* dtype) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy.ndarray, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(py::dtype::of<T>()))
        throw py::type_error(std::string(name) + " must have dtype " + dtype + ", got " +
                             std::string(py::str(a.dtype())));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error(std::string(name) + " must be C-contiguous (np.ascontiguousarray)");
    return py::reinterpret_borrow<py::array_t<T>>(a);
}

std::string shape_str(const py::array& a) {
    std::string s = "(";
    for (py::ssize_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
    return s + (a.ndim() == 1 ? ",)" : ")");
}

// A uint8 BGR face, H x W x 3 (channels_ok: also H x W and H x W x 1).
py::array_t<uint8_t> image_arg(const py::handle& obj, const char* name, bool grey_ok) {
    auto a = contiguous<uint8_t>(obj, name, "uint8");
    const bool colour = a.ndim() == 3 && a.shape(2) == 3;
    const bool grey = grey_ok && (a.ndim() == 2 || (a.ndim() == 3 && a.shape(2) == 1));
    if (!(colour || grey) || a.shape(0) < 1 || a.shape(1) < 1)
        throw py::value_error(std::string(name) + " must be a non-empty H x W x 3 BGR image" +
                              (grey_ok ? " (or H x W grey)" : "") + ", got shape " + shape_str(a));
    if (a.shape(0) > kMaxImageSide || a.shape(1) > kMaxImageSide)
        throw py::value_error(std::string(name) + ": sides over " + std::to_string(kMaxImageSide) +
                              " px are refused, got shape " + shape_str(a));
    return a;
}

// 5 x 2 float64 landmarks (x, y per row).
py::array_t<double> points_arg(const py::handle& obj, const char* name) {
    auto a = contiguous<double>(obj, name, "float64");
    if (a.ndim() != 2 || a.shape(0) != 5 || a.shape(1) != 2)
        throw py::value_error(std::string(name) + " must have shape (5, 2), got " + shape_str(a));
    return a;
}

py::array_t<double> to_points(const double pts[10]) {
    py::array_t<double> out({5, 2});
    std::copy(pts, pts + 10, out.mutable_data());
    return out;
}

py::array_t<uint8_t> to_patch(const std::vector<uint8_t>& px, int h, int w, int c) {
    py::array_t<uint8_t> out({h, w, c});
    std::copy(px.begin(), px.end(), out.mutable_data());
    return out;
}

py::tuple py_align_face(py::handle image_, py::handle pts_, int width, int height) {
    auto image = image_arg(image_, "image", true);
    auto pts = points_arg(pts_, "landmarks");
    face::Image src(int(image.shape(0)), int(image.shape(1)), image.ndim() == 3 ? int(image.shape(2)) : 1);
    std::copy(image.data(), image.data() + image.size(), src.px.begin());
    double aligned_pts[10];
    face::Image out;
    {
        py::gil_scoped_release nogil;
        out = face::align_face(src, pts.data(), width, height, aligned_pts);
    }
    std::vector<py::ssize_t> shape{out.h, out.w};
    if (image.ndim() == 3) shape.push_back(out.c);
    py::array_t<uint8_t> aligned(shape);
    std::copy(out.px.begin(), out.px.end(), aligned.mutable_data());
    return py::make_tuple(aligned, to_points(aligned_pts));
}

py::array_t<double> py_alignment_matrix(py::handle pts_, int width, int height) {
    auto pts = points_arg(pts_, "landmarks");
    const face::Affine m = face::alignment_matrix(pts.data(), width, height);
    py::array_t<double> out({2, 3});
    std::copy(m.begin(), m.end(), out.mutable_data());
    return out;
}

py::array_t<double> py_mean_shape(int width, int height) {
    double pts[10];
    face::mean_shape(width, height, pts);
    return to_points(pts);
}

// The patch (h + 2 py) x (w + 2 px) x C of `spec`, mirrored or not.
py::array_t<uint8_t> cut(py::handle aligned_, py::handle landmarks_, const face::PatchSpec& spec,
                         bool mirror, std::pair<int, int> pad) {
    auto aligned = image_arg(aligned_, "aligned", false);
    py::array_t<double> landmarks;
    if (!landmarks_.is_none()) landmarks = points_arg(landmarks_, "landmarks");
    const double* lm = landmarks_.is_none() ? nullptr : landmarks.data();
    const face::BgrView view{aligned.data(), int(aligned.shape(0)), int(aligned.shape(1))};
    std::vector<uint8_t> px;
    {
        py::gil_scoped_release nogil;
        px = face::cut_patch(view, lm, spec, mirror, pad.first, pad.second);
    }
    return to_patch(px, spec.height + 2 * pad.first, spec.width + 2 * pad.second,
                    spec.gray ? 1 : 3);
}

py::array_t<uint8_t> py_cut_layout_patch(py::handle aligned, py::handle landmarks,
                                         const std::string& layout, int index, bool flipped,
                                         std::pair<int, int> pad) {
    const int source = flipped ? face::layout_flip_partner(layout, index) : index;
    return cut(aligned, landmarks, face::layout_patch_spec(layout, source), flipped, pad);
}

py::array_t<uint8_t> py_cut_region_patch(py::handle aligned, py::handle landmarks,
                                         std::pair<double, double> centre, double region_width,
                                         int landmark, double scale, std::pair<int, int> size,
                                         bool gray, bool mirror, std::pair<int, int> pad) {
    face::PatchSpec spec;
    spec.cx = centre.first;
    spec.cy = centre.second;
    spec.region_width = region_width;
    spec.landmark = landmark;
    spec.scale = scale;
    spec.height = size.first;
    spec.width = size.second;
    spec.gray = gray;
    return cut(aligned, landmarks, spec, mirror, pad);
}

}  // namespace

void bind_geometry(py::module_& m) {
    m.def("align_face", &py_align_face, py::arg("image"), py::arg("landmarks"), py::arg("width"),
          py::arg("height"),
          "uint8 H x W x 3 BGR (or H x W grey) image, 5 x 2 float64 landmarks -> (the face "
          "aligned to width x height, its 5 x 2 landmarks): align.align_face");
    m.def("alignment_matrix", &py_alignment_matrix, py::arg("landmarks"), py::arg("width"),
          py::arg("height"), "2 x 3 float64 similarity onto the canonical face: align.alignment_matrix");
    m.def("mean_shape", &py_mean_shape, py::arg("width"), py::arg("height"),
          "align.MEAN_SHAPE in pixels of a width x height face, 5 x 2 float64");
    m.def("cut_layout_patch", &py_cut_layout_patch, py::arg("aligned"), py::arg("landmarks"),
          py::arg("layout"), py::arg("index"), py::arg("flipped") = false,
          py::arg("pad") = std::make_pair(0, 0),
          "Patch `index` of layout 'deepid2' or 'deepid' (flipped: its flipped counterpart) "
          "from a uint8 H x W x 3 BGR aligned face: uint8 (h + 2 py) x (w + 2 px) x C");
    m.def("cut_region_patch", &py_cut_region_patch, py::arg("aligned"), py::arg("landmarks"),
          py::arg("centre"), py::arg("region_width"), py::arg("landmark"), py::arg("scale"),
          py::arg("size"), py::arg("gray"), py::arg("mirror") = false,
          py::arg("pad") = std::make_pair(0, 0),
          "The patch of any layout's region (patches.Region fields; landmark -1: none) at one "
          "scale, size (h, w), grey or RGB; mirror: its columns reversed");
    m.def("layout_size", &face::layout_size, py::arg("layout"));
    m.def("layout_patch_shape", [](const std::string& layout, int index) {
        const auto s = face::layout_patch_shape(layout, index);
        return py::make_tuple(s.height, s.width, s.channels);
    }, py::arg("layout"), py::arg("index"));
    m.def("layout_flip_partner", &face::layout_flip_partner, py::arg("layout"), py::arg("index"));
}
