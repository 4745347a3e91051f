// deepid2_core._cpu.Pipeline: the C++ face pipeline (cpp/include/deepid2/
// pipeline.h) for Python. Images are numpy uint8 arrays, H x W (grey) or
// H x W x 3 in B, G, R order (as cv2.imread gives; the package reads every
// image that way); rows may be strided, pixels within a row must be packed.
// Checks and forwards, no copies: the C++ side reads the array in place.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#include "deepid2/pipeline.h"

namespace py = pybind11;
using namespace deepid2;

namespace {

ImageView view_of(const py::handle& obj, const char* name) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error(std::string(name) + " must be a numpy uint8 array");
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(py::dtype::of<uint8_t>()))
        throw py::type_error(std::string(name) + " must have dtype uint8, got " +
                             std::string(py::str(a.dtype())));
    const int channels = a.ndim() == 2 ? 1 : (a.ndim() == 3 ? int(a.shape(2)) : 0);
    if (channels != 1 && channels != 3)
        throw py::value_error(std::string(name) + " must be H x W or H x W x 3");
    if (a.shape(0) < 1 || a.shape(1) < 1 || a.strides(0) < 1 ||
        a.strides(1) != channels || (a.ndim() == 3 && a.strides(2) != 1))
        throw py::value_error(std::string(name) +
                              " must be non-empty with each row's pixels packed (np.ascontiguousarray)");
    if (a.shape(0) > kMaxImageSide || a.shape(1) > kMaxImageSide)
        throw py::value_error(std::string(name) + " is larger than " +
                              std::to_string(kMaxImageSide) + " px on a side");
    return {static_cast<const uint8_t*>(a.data()), int(a.shape(1)), int(a.shape(0)),
            size_t(a.strides(0)), channels, PixelOrder::BGR};
}

Pick pick_of(const std::string& pick) {
    if (pick == "largest") return Pick::Largest;
    if (pick == "center") return Pick::Center;
    throw py::value_error("pick must be largest or center, got '" + pick + "'");
}

Face face_of(const py::handle& landmarks, const char* name) {
    auto a = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(landmarks);
    if (!a || a.ndim() != 2 || a.shape(0) != 5 || a.shape(1) != 2)
        throw py::value_error(std::string(name) + " must be 5 x 2 landmarks (x, y)");
    Face f{};
    for (int k = 0; k < 10; ++k) f.landmarks[k] = a.data()[k];
    return f;
}

py::tuple face_tuple(const Face& f) {
    py::array_t<float> box(4), lm({5, 2});
    std::copy(f.box, f.box + 4, box.mutable_data());
    std::copy(f.landmarks, f.landmarks + 10, lm.mutable_data());
    return py::make_tuple(box, lm, double(f.score), f.turn, f.turn_unsure);
}

}  // namespace

void bind_pipeline(py::module_& m) {
    py::register_exception<BadImage>(m, "BadImage", PyExc_ValueError);
    py::register_exception<NoFace>(m, "NoFace", PyExc_ValueError);
    py::register_exception_translator([](std::exception_ptr p) {
        try {
            if (p) std::rethrow_exception(p);
        } catch (const ModelIOError& e) {
            PyErr_SetString(PyExc_OSError, e.what());
        } catch (const ModelFormatError& e) {
            PyErr_SetString(PyExc_ValueError, e.what());
        }
    });

    py::class_<Pipeline>(m, "Pipeline", "The C++ face pipeline (deepid2/pipeline.h)")
        .def(py::init([](const py::object& verifier, const std::string& landmarks,
                         const std::string& detector) {
                 if (verifier.is_none()) {
                     py::gil_scoped_release nogil;
                     return Pipeline::load_detection(landmarks, detector);
                 }
                 const std::string v = py::cast<std::string>(verifier);
                 py::gil_scoped_release nogil;
                 return Pipeline::load(PipelineFiles{v, landmarks, detector}, "");
             }),
             py::arg("verifier"), py::arg("landmarks"), py::arg("detector"),
             "verifier None: detection, landmarks and alignment only")
        .def("detect", [](const Pipeline& p, py::handle image, const std::string& pick) {
                 const ImageView v = view_of(image, "image");
                 const Pick k = pick_of(pick);
                 std::vector<Face> faces;
                 {
                     py::gil_scoped_release nogil;
                     faces = p.detect(v, k);
                 }
                 py::list out;
                 for (const Face& f : faces) out.append(face_tuple(f));
                 return out;
             },
             py::arg("image"), py::arg("pick") = "largest",
             "[(box float32 4, landmarks float32 5 x 2, score, turn, turn_unsure)], pick order first")
        .def("locate", [](const Pipeline& p, py::handle image, py::handle box) {
                 const ImageView v = view_of(image, "image");
                 auto b = py::array_t<float, py::array::c_style | py::array::forcecast>::ensure(box);
                 if (!b || b.size() != 4) throw py::value_error("box must be 4 numbers (x, y, w, h)");
                 Face f;
                 {
                     py::gil_scoped_release nogil;
                     f = p.locate(v, b.data());
                 }
                 return face_tuple(f);
             },
             py::arg("image"), py::arg("box"))
        .def("align", [](const Pipeline& p, py::handle image, py::handle landmarks, int width,
                         int height) {
                 const ImageView v = view_of(image, "image");
                 const Face f = face_of(landmarks, "landmarks");
                 if (width < 8 || height < 8 || width > 4096 || height > 4096)
                     throw py::value_error("width and height must be 8..4096");
                 py::array_t<uint8_t> out({height, width, 3});
                 py::array_t<float> pts({5, 2});
                 {
                     py::gil_scoped_release nogil;
                     p.align(v, f, width, height, out.mutable_data(), pts.mutable_data());
                 }
                 return py::make_tuple(out, pts);
             },
             py::arg("image"), py::arg("landmarks"), py::arg("width") = 250,
             py::arg("height") = 250, "(aligned BGR uint8 H x W x 3, its 5 x 2 landmarks)")
        .def("embed", [](const Pipeline& p, py::list images, py::list landmarks) {
                 if (images.size() != landmarks.size())
                     throw py::value_error("images and landmarks differ in length");
                 std::vector<ImageView> views;
                 std::vector<Face> faces;
                 for (size_t i = 0; i < images.size(); ++i) {
                     views.push_back(view_of(images[i], "image"));
                     faces.push_back(face_of(landmarks[i], "landmarks"));
                 }
                 const int n = int(views.size());
                 py::array_t<float> out({n, p.model().feature_dim()});
                 {
                     py::gil_scoped_release nogil;
                     p.embed(views.data(), faces.data(), n, out.mutable_data());
                 }
                 return out;
             },
             py::arg("images"), py::arg("landmarks"),
             "features (n x feature_dim float32) of the faces with these landmarks")
        .def("verify", [](const Pipeline& p, py::handle a, py::handle b, const std::string& pick) {
                 const ImageView va = view_of(a, "a"), vb = view_of(b, "b");
                 const Pick k = pick_of(pick);
                 Verdict v;
                 {
                     py::gil_scoped_release nogil;
                     v = p.verify(va, vb, k);
                 }
                 return py::make_tuple(v.score, v.same);
             },
             py::arg("a"), py::arg("b"), py::arg("pick") = "largest")
        .def_property_readonly("feature_dim", [](const Pipeline& p) { return p.model().feature_dim(); })
        .def_property_readonly("threshold", [](const Pipeline& p) { return p.model().threshold(); })
        .def_property_readonly_static("aligned_side", [](py::object) { return Pipeline::kAlignedSide; });
}
