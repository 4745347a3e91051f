// Hooks of cpp/src/face/landmarks.* and image.h's warp for Python
// (deepid2_core._cpu.*): face/landmarks.py predicts with the C++ model and
// cuts its training crops with the C++ warp, so that a model sees at
// training what it sees at inference.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <sys/stat.h>

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <tuple>

#include "../array_checks.h"
#include "deepid2/model.h"
#include "face/landmarks.h"

namespace py = pybind11;
using deepid2::face::Image;
using deepid2::face::LandmarkModel;

namespace {

using deepid2_bindings::checked;

// A uint8 H x W (or H x W x 3 where allowed) image copied into a face::Image.
Image image_of(const py::array_t<uint8_t>& a, const char* name, bool colour_ok) {
    const bool colour = a.ndim() == 3 && a.shape(2) == 3;
    if (!(a.ndim() == 2 || (colour_ok && colour)))
        throw py::value_error(std::string(name) + " must be H x W" + (colour_ok ? " or H x W x 3" : "") +
                              " uint8, got " + std::to_string(a.ndim()) + " dimensions");
    const py::ssize_t h = a.shape(0), w = a.shape(1);
    if (h < 1 || w < 1 || h > deepid2::kMaxImageSide || w > deepid2::kMaxImageSide)
        throw py::value_error(std::string(name) + ": " + std::to_string(h) + "x" + std::to_string(w) +
                              " is empty or over the " + std::to_string(deepid2::kMaxImageSide) +
                              " px side limit");
    Image img(int(h), int(w), colour ? 3 : 1);
    std::copy(a.data(), a.data() + img.px.size(), img.px.data());
    return img;
}

// Loaded models by path, reloaded when the file's size or time changes (a
// training run rewrites its model file under the same name).
struct CachedModel {
    int64_t size, mtime_ns;
    std::shared_ptr<const LandmarkModel> model;
};
std::mutex cache_mutex;
std::map<std::string, CachedModel> cache;
constexpr size_t kMaxCached = 16;

std::shared_ptr<const LandmarkModel> model_at(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) throw py::value_error("landmark model " + path + " not found");
    const int64_t size = st.st_size, mtime = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    {
        std::lock_guard<std::mutex> lock(cache_mutex);
        auto it = cache.find(path);
        if (it != cache.end() && it->second.size == size && it->second.mtime_ns == mtime)
            return it->second.model;
    }
    std::shared_ptr<const LandmarkModel> model;
    try {
        model = std::make_shared<const LandmarkModel>(LandmarkModel::load(path));
    } catch (const deepid2::ModelFormatError& e) {
        throw py::value_error(e.what());
    } catch (const deepid2::ModelIOError& e) {
        throw py::value_error(e.what());
    }
    std::lock_guard<std::mutex> lock(cache_mutex);
    if (cache.size() >= kMaxCached) cache.clear();
    cache[path] = CachedModel{size, mtime, model};
    return model;
}

py::array_t<double> landmarks_predict(const std::string& path, py::handle gray_, py::handle boxes_,
                                      int levels) {
    auto gray_a = checked<uint8_t>(gray_, "gray");
    auto boxes = checked<double>(boxes_, "boxes");
    if (boxes.ndim() != 2 || boxes.shape(1) != 4)
        throw py::value_error("boxes must be n x 4 (x, y, w, h)");
    if (levels != -1 && levels < 1)
        throw py::value_error("levels must be -1 (all) or at least 1, got " + std::to_string(levels));
    const Image gray = image_of(gray_a, "gray", false);
    const py::ssize_t n = boxes.shape(0);
    py::array_t<double> out({n, py::ssize_t(5), py::ssize_t(2)});
    const double* b = boxes.data();
    double* o = out.mutable_data();
    std::shared_ptr<const LandmarkModel> model;
    {
        py::gil_scoped_release nogil;
        model = model_at(path);
        for (py::ssize_t i = 0; i < n; ++i) model->predict(gray, b + 4 * i, o + 10 * i, levels);
    }
    return out;
}

py::array_t<uint8_t> warp_affine(py::handle img_, py::handle m_, int width, int height) {
    auto img_a = checked<uint8_t>(img_, "img");
    auto m = checked<double>(m_, "m");
    if (m.ndim() != 2 || m.shape(0) != 2 || m.shape(1) != 3)
        throw py::value_error("m must be a 2 x 3 affine map");
    if (width < 1 || height < 1 || width > deepid2::kMaxImageSide || height > deepid2::kMaxImageSide)
        throw py::value_error("width and height must be in 1.." + std::to_string(deepid2::kMaxImageSide));
    deepid2::face::Affine a;
    for (int i = 0; i < 6; ++i) {
        a[size_t(i)] = m.data()[i];
        if (!std::isfinite(a[size_t(i)])) throw py::value_error("m must be finite");
    }
    const Image src = image_of(img_a, "img", true);
    Image dst;
    {
        py::gil_scoped_release nogil;
        dst = deepid2::face::warp_affine(src, a, width, height);  // invalid_argument: singular
    }
    std::vector<py::ssize_t> shape = {height, width};
    if (dst.c == 3) shape.push_back(3);
    py::array_t<uint8_t> out(shape);
    std::copy(dst.px.begin(), dst.px.end(), out.mutable_data());
    return out;
}

}  // namespace

void bind_landmarks(py::module_& m) {
    m.def("landmarks_predict", &landmarks_predict, py::arg("model_path"), py::arg("gray"),
          py::arg("boxes"), py::arg("levels") = -1,
          "The 5 points (float64 n x 5 x 2, image pixels) of each face box (n x 4 float64 "
          "x, y, w, h) in a grey uint8 H x W image, by the landmark model file at model_path "
          "(level 1 and `levels` - 1 refinement levels; -1: all). Models are cached by path.");
    m.def("warp_affine", &warp_affine, py::arg("img"), py::arg("m"), py::arg("width"),
          py::arg("height"),
          "image.h warp_affine: uint8 H x W (x 3) img warped by the 2 x 3 map m (img -> "
          "output) into height x width, bilinear in double precision, border replicated.");
}
