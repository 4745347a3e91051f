// Test hooks of cpp/src/face/yunet.* for tests/ (deepid2_core._cpu.*):
//   yunet_detect(model_path, bgr, score_threshold=0.6) -> float32 n x 15
//   yunet_find_faces(model_path, bgr, pick="largest", max_side=1024) -> float64 n x 15
// Rows: box x, y, w, h; landmarks x0, y0 .. x4, y4; score. Models are cached
// per path (reloaded when the file's size or time changes). A bad model file
// raises ValueError (format) or OSError (unreadable).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <string>

#include "deepid2/model.h"
#include "face/yunet.h"

namespace py = pybind11;
using namespace deepid2;

namespace {

struct CachedNet {
    std::uintmax_t size = 0;
    std::filesystem::file_time_type time;
    std::shared_ptr<const face::YuNet> net;
};

// Reached with the GIL held: the GIL guards the cache.
std::shared_ptr<const face::YuNet> net_for(const std::string& path) {
    static std::map<std::string, CachedNet> cache;
    std::error_code ec;
    const auto size = std::filesystem::file_size(path, ec);
    const auto time = ec ? std::filesystem::file_time_type() : std::filesystem::last_write_time(path, ec);
    auto it = cache.find(path);
    if (!ec && it != cache.end() && it->second.size == size && it->second.time == time)
        return it->second.net;
    try {
        auto net = std::make_shared<const face::YuNet>(face::YuNet::load(path));
        if (!ec) cache[path] = CachedNet{size, time, net};
        return net;
    } catch (const ModelFormatError& e) {
        throw py::value_error(e.what());
    } catch (const ModelIOError& e) {
        PyErr_SetString(PyExc_OSError, e.what());
        throw py::error_already_set();
    }
}

face::Image image_of(const py::handle& obj) {
    if (!py::isinstance<py::array>(obj))
        throw py::type_error("bgr must be a numpy.ndarray, got " +
                             std::string(py::str(py::type::of(obj).attr("__name__"))));
    auto a = py::reinterpret_borrow<py::array>(obj);
    if (!a.dtype().equal(py::dtype::of<uint8_t>()))
        throw py::type_error("bgr must have dtype uint8, got " + std::string(py::str(a.dtype())));
    if (a.ndim() != 3 || a.shape(2) != 3 || a.shape(0) < 1 || a.shape(1) < 1)
        throw py::value_error("bgr must be H x W x 3 with H, W >= 1, got " +
                              std::string(py::str(a.attr("shape"))));
    if (!(a.flags() & py::array::c_style))
        throw py::value_error("bgr must be C-contiguous (use np.ascontiguousarray)");
    if (a.shape(0) > kMaxImageSide || a.shape(1) > kMaxImageSide)
        throw py::value_error("bgr: sides over " + std::to_string(kMaxImageSide) + " px are refused");
    face::Image img(int(a.shape(0)), int(a.shape(1)), 3);
    std::memcpy(img.px.data(), a.data(), img.px.size());
    return img;
}

template <typename T>
py::array_t<T> rows_of(const std::vector<face::Detection>& dets) {
    py::array_t<T> out({py::ssize_t(dets.size()), py::ssize_t(15)});
    T* p = out.mutable_data();
    for (const auto& d : dets) {
        for (double v : d.box) *p++ = T(v);
        for (double v : d.landmarks) *p++ = T(v);
        *p++ = T(d.score);
    }
    return out;
}

py::array_t<float> py_detect(const std::string& path, py::handle bgr, double score_threshold) {
    face::Image img = image_of(bgr);
    if (!(score_threshold >= 0 && score_threshold <= 1))
        throw py::value_error("score_threshold must be in [0, 1]");
    auto net = net_for(path);
    std::vector<face::Detection> dets;
    {
        py::gil_scoped_release nogil;
        dets = net->detect(img, score_threshold);
    }
    return rows_of<float>(dets);
}

py::array_t<double> py_find_faces(const std::string& path, py::handle bgr, const std::string& pick,
                                  int max_side) {
    face::Image img = image_of(bgr);
    if (pick != "largest" && pick != "center")
        throw py::value_error("pick must be 'largest' or 'center', got '" + pick + "'");
    auto net = net_for(path);
    std::vector<face::Detection> dets;
    {
        py::gil_scoped_release nogil;
        dets = face::find_faces(*net, img, pick == "largest" ? Pick::Largest : Pick::Center,
                                max_side);
    }
    return rows_of<double>(dets);
}

}  // namespace

void bind_yunet(py::module_& m) {
    m.def("yunet_detect", &py_detect, py::arg("model_path"), py::arg("bgr"),
          py::arg("score_threshold") = 0.6,
          "cv2.FaceDetectorYN.detect (NMS 0.3, top 5000, input size = image size) in C++: "
          "float32 n x 15 (box, 5 landmarks, score)");
    m.def("yunet_find_faces", &py_find_faces, py::arg("model_path"), py::arg("bgr"),
          py::arg("pick") = "largest", py::arg("max_side") = 1024,
          "box.py's 'yunet' rule without the Haar fallback: float64 n x 15, Haar-convention "
          "boxes, in pick order");
}
