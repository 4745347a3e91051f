// pybind11 module deepid2_core._cpu: checks numpy arguments and forwards to
// the C++ ops. No copies: inputs must already be C-contiguous float32 (int32
// for indices); anything else raises TypeError (dtype) or ValueError (shape,
// layout). std::invalid_argument from the library also becomes ValueError.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>
#include <vector>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "array_checks.h"
#include "deepid2/ops.h"

namespace py = pybind11;
using namespace deepid2;

// the face pipeline's stages (bindings/<stage>.cpp)
void bind_yunet(py::module_& m);
void bind_landmarks(py::module_& m);
void bind_geometry(py::module_& m);
void bind_pipeline(py::module_& m);

namespace {

using Shape = std::vector<py::ssize_t>;

std::string shape_str(const Shape& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (s.size() == 1 ? ",)" : ")");
}

Shape shape_of(const py::array& a) { return Shape(a.shape(), a.shape() + a.ndim()); }

using deepid2_bindings::checked;

template <typename T>
py::array_t<T> writable(const py::handle& obj, const char* name) {
    auto a = checked<T>(obj, name);
    if (!a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
    return a;
}

// Also rejects empty arrays: every op needs at least one element per axis.
void expect_ndim(const py::array& a, const std::string& name, int ndim, const char* meaning) {
    if (a.ndim() != ndim)
        throw py::value_error(name + " must have " + std::to_string(ndim) + " dimensions (" +
                              meaning + "), got shape " + shape_str(shape_of(a)));
    for (int i = 0; i < ndim; ++i)
        if (a.shape(i) < 1)
            throw py::value_error(name + ": every dimension of " + meaning +
                                  " must be positive, got shape " + shape_str(shape_of(a)));
}

void expect_shape(const py::array& a, const char* name, const Shape& want, const char* meaning) {
    if (shape_of(a) != want)
        throw py::value_error(std::string(name) + ": expected shape " + shape_str(want) + " (" +
                              meaning + "), got " + shape_str(shape_of(a)));
}

template <typename T>
py::array_t<T> out_or_new(const py::object& given, const char* name, const Shape& shape,
                          const char* meaning) {
    if (given.is_none()) {
        py::array_t<T> a(shape);
        std::fill(a.mutable_data(), a.mutable_data() + a.size(), T(0));
        return a;
    }
    auto a = writable<T>(given, name);
    expect_shape(a, name, shape, meaning);
    return a;
}

LsconvShape lsconv_shape(const py::array& x, const py::array& w, std::pair<int, int> region) {
    expect_ndim(x, "x", 4, "N x C x H x W");
    expect_ndim(w, "w", 6, "RY x RX x K x C x kh x kw");
    LsconvShape s{int(x.shape(0)), int(x.shape(1)), int(x.shape(2)), int(x.shape(3)),
                  int(w.shape(2)), int(w.shape(4)), int(w.shape(5)), region.first, region.second};
    if (s.rh < 1 || s.rw < 1) throw py::value_error("region must be two positive integers");
    if (s.kh > s.h || s.kw > s.w)
        throw py::value_error("w: kernel " + std::to_string(s.kh) + "x" + std::to_string(s.kw) +
                              " (axes 4, 5) is larger than x's " + std::to_string(s.h) + "x" +
                              std::to_string(s.w) + " map");
    if (s.rh > s.oh() || s.rw > s.ow())
        throw py::value_error("region " + std::to_string(s.rh) + "x" + std::to_string(s.rw) +
                              " is larger than the " + std::to_string(s.oh()) + "x" +
                              std::to_string(s.ow()) + " output map");
    expect_shape(w, "w", {s.ry(), s.rx(), s.k, s.c, s.kh, s.kw},
                 "RY x RX x K x C x kh x kw for this x and region");
    return s;
}

py::array_t<float> py_lsconv_forward(py::handle x_, py::handle w_, py::handle b_,
                                     std::pair<int, int> region, bool relu) {
    auto x = checked<float>(x_, "x"), w = checked<float>(w_, "w"), b = checked<float>(b_, "b");
    const LsconvShape s = lsconv_shape(x, w, region);
    expect_shape(b, "b", {s.ry(), s.rx(), s.k}, "RY x RX x K");
    py::array_t<float> y({s.n, s.k, s.oh(), s.ow()});
    {
        py::gil_scoped_release nogil;
        lsconv_forward(s, x.data(), w.data(), b.data(), relu, y.mutable_data());
    }
    return y;
}

// What both lsconv backwards take and give besides their own inputs: y (read
// only with relu, shape yshape), dw / db (given to accumulate into, or new), dx.
struct LsconvGrads {
    py::array_t<float> y, dw, db;
    py::object dx_obj = py::none();
    const float* yp = nullptr;
    float* dxp = nullptr;

    LsconvGrads(const LsconvShape& s, const py::array_t<float>& x, const py::array_t<float>& w,
                py::handle y_, const Shape& yshape, const char* ydesc, bool relu,
                bool need_dx, py::object dw_, py::object db_) {
        if (relu) {
            y = checked<float>(y_, "y");
            expect_shape(y, "y", yshape, ydesc);
            yp = y.data();
        }
        dw = out_or_new<float>(dw_, "dw", shape_of(w), "same as w");
        db = out_or_new<float>(db_, "db", {s.ry(), s.rx(), s.k}, "RY x RX x K");
        if (need_dx) {
            py::array_t<float> dx(shape_of(x));
            dxp = dx.mutable_data();
            dx_obj = dx;
        }
    }
    py::tuple result() const { return py::make_tuple(dx_obj, dw, db); }
};

py::tuple py_lsconv_backward(py::handle x_, py::handle w_, py::handle y_, py::handle dy_,
                             std::pair<int, int> region, bool relu, bool need_dx,
                             py::object dw_, py::object db_) {
    auto x = checked<float>(x_, "x"), w = checked<float>(w_, "w"), dy = checked<float>(dy_, "dy");
    const LsconvShape s = lsconv_shape(x, w, region);
    const Shape yshape{s.n, s.k, s.oh(), s.ow()};
    expect_shape(dy, "dy", yshape, "N x K x OH x OW");
    LsconvGrads g(s, x, w, y_, yshape, "N x K x OH x OW", relu, need_dx, dw_, db_);
    {
        py::gil_scoped_release nogil;
        lsconv_backward(s, x.data(), w.data(), g.yp, dy.data(), relu, g.dxp,
                        g.dw.mutable_data(), g.db.mutable_data());
    }
    return g.result();
}

// The pooled map of lsconv_pool_*: N x K x (OH/s) x (OW/s).
Shape pooled_shape(const LsconvShape& s, int ps) {
    if (ps < 1) throw py::value_error("s must be a positive integer, got " + std::to_string(ps));
    if (ps > s.oh() || ps > s.ow())
        throw py::value_error("s: the " + std::to_string(ps) + "x" + std::to_string(ps) +
                              " window is larger than the " + std::to_string(s.oh()) + "x" +
                              std::to_string(s.ow()) + " output map");
    return {s.n, s.k, s.oh() / ps, s.ow() / ps};
}

py::tuple py_lsconv_pool_forward(py::handle x_, py::handle w_, py::handle b_,
                                 std::pair<int, int> region, bool relu, int ps) {
    auto x = checked<float>(x_, "x"), w = checked<float>(w_, "w"), b = checked<float>(b_, "b");
    const LsconvShape s = lsconv_shape(x, w, region);
    expect_shape(b, "b", {s.ry(), s.rx(), s.k}, "RY x RX x K");
    const Shape pshape = pooled_shape(s, ps);
    py::array_t<float> y(pshape);
    py::array_t<int32_t> am(pshape);
    {
        py::gil_scoped_release nogil;
        lsconv_pool_forward(s, x.data(), w.data(), b.data(), relu, ps, y.mutable_data(),
                            am.mutable_data());
    }
    return py::make_tuple(y, am);
}

py::tuple py_lsconv_pool_backward(py::handle x_, py::handle w_, py::handle y_, py::handle am_,
                                  py::handle dy_, std::pair<int, int> region, bool relu,
                                  bool need_dx, py::object dw_, py::object db_, int ps) {
    auto x = checked<float>(x_, "x"), w = checked<float>(w_, "w"), dy = checked<float>(dy_, "dy");
    auto am = checked<int32_t>(am_, "argmax");
    const LsconvShape s = lsconv_shape(x, w, region);
    const Shape pshape = pooled_shape(s, ps);
    expect_shape(dy, "dy", pshape, "N x K x OH/s x OW/s");
    expect_shape(am, "argmax", pshape, "N x K x OH/s x OW/s");
    LsconvGrads g(s, x, w, y_, pshape, "N x K x OH/s x OW/s", relu, need_dx, dw_, db_);
    {
        py::gil_scoped_release nogil;
        lsconv_pool_backward(s, x.data(), w.data(), g.yp, am.data(), dy.data(), relu, ps,
                             g.dxp, g.dw.mutable_data(), g.db.mutable_data());
    }
    return g.result();
}

py::tuple py_maxpool_forward(py::handle x_, int s) {
    auto x = checked<float>(x_, "x");
    expect_ndim(x, "x", 4, "N x C x H x W");
    if (s < 1) throw py::value_error("s must be a positive integer, got " + std::to_string(s));
    const int n = int(x.shape(0)), c = int(x.shape(1)), h = int(x.shape(2)), w = int(x.shape(3));
    if (s > h || s > w)
        throw py::value_error("x: the " + std::to_string(s) + "x" + std::to_string(s) +
                              " window is larger than the " + std::to_string(h) + "x" +
                              std::to_string(w) + " map");
    py::array_t<float> y({n, c, h / s, w / s});
    py::array_t<int32_t> am({n, c, h / s, w / s});
    {
        py::gil_scoped_release nogil;
        maxpool_forward(n, c, h, w, s, x.data(), y.mutable_data(), am.mutable_data());
    }
    return py::make_tuple(y, am);
}

py::array_t<float> py_maxpool_backward(py::handle dy_, py::handle am_, std::pair<int, int> in_hw,
                                       py::object s_) {
    auto dy = checked<float>(dy_, "dy");
    auto am = checked<int32_t>(am_, "argmax");
    expect_ndim(dy, "dy", 4, "N x C x OH x OW");
    const int n = int(dy.shape(0)), c = int(dy.shape(1)), h = in_hw.first, w = in_hw.second;
    if (h < 1 || w < 1) throw py::value_error("in_hw must be two positive integers");
    const int oh = int(dy.shape(2)), ow = int(dy.shape(3));
    // The window size: given, or the only one that maps in_hw onto dy's map.
    const int s = s_.is_none() ? h / oh : s_.cast<int>();
    if (s < 1)
        throw py::value_error("dy: its " + std::to_string(oh) + "x" + std::to_string(ow) +
                              " map is larger than in_hw = (" + std::to_string(h) + ", " +
                              std::to_string(w) + ")");
    if (h / s != oh || w / s != ow)
        throw py::value_error("dy: shape " + shape_str(shape_of(dy)) + " is not a " +
                              std::to_string(s) + "x" + std::to_string(s) +
                              " pooling of an input of size in_hw = (" + std::to_string(h) +
                              ", " + std::to_string(w) + ")");
    expect_shape(am, "argmax", shape_of(dy), "same as dy");
    py::array_t<float> dx({n, c, h, w});
    {
        py::gil_scoped_release nogil;
        maxpool_backward(n, c, h, w, s, dy.data(), am.data(), dx.mutable_data());
    }
    return dx;
}

struct DenseInputs {
    std::vector<py::array_t<float>> arrays;
    std::vector<int> dims;
    std::vector<const float*> ptrs;
    int n = 0, total = 0;
};

DenseInputs dense_inputs(const py::handle& xs_) {
    DenseInputs in;
    py::list items;
    if (py::isinstance<py::array>(xs_))
        items.append(xs_);
    else if (py::isinstance<py::list>(xs_) || py::isinstance<py::tuple>(xs_))
        for (auto item : py::reinterpret_borrow<py::sequence>(xs_)) items.append(item);
    else
        throw py::type_error("xs must be a numpy array or a list of numpy arrays");
    if (items.size() == 0) throw py::value_error("xs must hold at least one array");
    for (size_t i = 0; i < items.size(); ++i) {
        const std::string name = "xs[" + std::to_string(i) + "]";
        auto a = checked<float>(items[i], name.c_str());
        if (a.ndim() < 2)
            throw py::value_error(name + " must be N x ... (at least 2 dimensions), got shape " +
                                  shape_str(shape_of(a)));
        if (a.size() == 0)
            throw py::value_error(name + " must not be empty, got shape " + shape_str(shape_of(a)));
        if (i == 0) in.n = int(a.shape(0));
        if (a.shape(0) != in.n)
            throw py::value_error(name + " has " + std::to_string(a.shape(0)) +
                                  " rows, xs[0] has " + std::to_string(in.n));
        in.dims.push_back(int(a.size() / std::max<py::ssize_t>(1, a.shape(0))));
        in.total += in.dims.back();
        in.ptrs.push_back(a.data());
        in.arrays.push_back(a);
    }
    return in;
}

py::array_t<float> py_dense_forward(py::handle xs_, py::handle w_, py::handle b_, bool relu) {
    DenseInputs in = dense_inputs(xs_);
    auto w = checked<float>(w_, "w"), b = checked<float>(b_, "b");
    expect_ndim(w, "w", 2, "sum(d_i) x M");
    const int m = int(w.shape(1));
    expect_shape(w, "w", {in.total, m}, "sum(d_i) x M");
    expect_shape(b, "b", {m}, "M");
    py::array_t<float> y({in.n, m});
    {
        py::gil_scoped_release nogil;
        dense_forward(in.n, int(in.dims.size()), in.dims.data(), in.ptrs.data(), m, w.data(),
                      b.data(), relu, y.mutable_data());
    }
    return y;
}

py::tuple py_dense_backward(py::handle xs_, py::handle w_, py::handle y_, py::handle dy_, bool relu,
                            bool need_dx, py::object dw_, py::object db_) {
    DenseInputs in = dense_inputs(xs_);
    auto w = checked<float>(w_, "w"), dy = checked<float>(dy_, "dy");
    expect_ndim(w, "w", 2, "sum(d_i) x M");
    const int m = int(w.shape(1));
    expect_shape(w, "w", {in.total, m}, "sum(d_i) x M");
    expect_shape(dy, "dy", {in.n, m}, "N x M");
    const float* yp = nullptr;
    py::array_t<float> y;
    if (relu) {
        y = checked<float>(y_, "y");
        expect_shape(y, "y", {in.n, m}, "N x M");
        yp = y.data();
    }
    auto dw = out_or_new<float>(dw_, "dw", shape_of(w), "same as w");
    auto db = out_or_new<float>(db_, "db", {m}, "M");
    py::object dxs_obj = py::none();
    std::vector<float*> dxp;
    if (need_dx) {
        py::list dxs;
        for (auto& a : in.arrays) {
            py::array_t<float> dx(shape_of(a));
            dxp.push_back(dx.mutable_data());
            dxs.append(dx);
        }
        dxs_obj = dxs;
    }
    {
        py::gil_scoped_release nogil;
        dense_backward(in.n, int(in.dims.size()), in.dims.data(), in.ptrs.data(), m, w.data(), yp,
                       dy.data(), relu, need_dx ? dxp.data() : nullptr, dw.mutable_data(),
                       db.mutable_data());
    }
    return py::make_tuple(dxs_obj, dw, db);
}

Verif parse_variant(const std::string& v) {
    if (v == "l2") return Verif::L2;
    if (v == "l2_pos") return Verif::L2_POS;
    if (v == "l1") return Verif::L1;
    if (v == "cosine") return Verif::COSINE;
    throw py::value_error("variant must be one of 'l2', 'l2_pos', 'l1', 'cosine', got '" + v + "'");
}

py::tuple py_joint_loss(py::handle logits_, py::handle labels_, py::handle f_, py::handle pa_,
                        py::handle pb_, py::handle py_, const std::string& variant, float lam,
                        py::object params_) {
    const Verif v = parse_variant(variant);
    auto logits = checked<float>(logits_, "logits");
    auto labels = checked<int32_t>(labels_, "labels");
    auto f = checked<float>(f_, "features");
    auto pa = checked<int32_t>(pa_, "pair_a"), pb = checked<int32_t>(pb_, "pair_b");
    auto pyy = checked<int32_t>(py_, "pair_y");
    expect_ndim(logits, "logits", 2, "N x n_classes");
    const int n = int(logits.shape(0)), nc = int(logits.shape(1));
    expect_shape(labels, "labels", {n}, "N");
    expect_ndim(f, "features", 2, "N x D");
    const int d = int(f.shape(1));
    expect_shape(f, "features", {n, d}, "N x D");
    if (pa.ndim() != 1)  // P = 0 pairs is allowed
        throw py::value_error("pair_a must have 1 dimension (P), got shape " + shape_str(shape_of(pa)));
    const int np_ = int(pa.shape(0));
    expect_shape(pb, "pair_b", {np_}, "P, same as pair_a");
    expect_shape(pyy, "pair_y", {np_}, "P, same as pair_a");
    const int npar = verif_n_params(v);
    py::array_t<float> params;
    if (params_.is_none()) {
        params = py::array_t<float>(npar);
        params.mutable_data()[0] = 1.0f;
        if (npar == 2) params.mutable_data()[1] = 0.0f;
    } else {
        params = checked<float>(params_, "params");
        expect_shape(params, "params", {npar}, npar == 2 ? "[w, b] for cosine" : "[m]");
    }
    py::array_t<float> dlogits({n, nc}), dfeat({n, d}), dparams(npar);
    JointLossResult r;
    {
        py::gil_scoped_release nogil;
        r = joint_loss(n, nc, logits.data(), labels.data(), d, f.data(), np_, pa.data(), pb.data(),
                       pyy.data(), v, lam, params.data(), dlogits.mutable_data(),
                       dfeat.mutable_data(), dparams.mutable_data());
    }
    return py::make_tuple(r.total, r.ident, r.verif, r.correct, dlogits, dfeat, dparams);
}

py::tuple py_regression_loss(py::handle pred_, py::handle target_) {
    auto pred = checked<float>(pred_, "pred"), target = checked<float>(target_, "target");
    expect_ndim(pred, "pred", 2, "N x D");
    expect_shape(target, "target", shape_of(pred), "same as pred");
    py::array_t<float> dpred(shape_of(pred));
    double loss;
    {
        py::gil_scoped_release nogil;
        loss = regression_loss(int(pred.shape(0)), int(pred.shape(1)), pred.data(), target.data(),
                               dpred.mutable_data());
    }
    return py::make_tuple(loss, dpred);
}

void py_sgd_update(py::handle p_, py::handle g_, py::handle v_, float lr, float momentum,
                   float wd) {
    auto p = writable<float>(p_, "param"), v = writable<float>(v_, "velocity");
    auto g = checked<float>(g_, "grad");
    expect_shape(g, "grad", shape_of(p), "same as param");
    expect_shape(v, "velocity", shape_of(p), "same as param");
    py::gil_scoped_release nogil;
    sgd_update(p.size(), p.mutable_data(), g.data(), v.mutable_data(), lr, momentum, wd);
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
    bind_yunet(m);
    bind_landmarks(m);
    bind_geometry(m);
    bind_pipeline(m);
    m.doc() = "deepid2 CPU ops (C++17 + OpenMP). See docs/ops.md for the conventions.";
    m.def("lsconv_forward", &py_lsconv_forward, py::arg("x"), py::arg("w"), py::arg("b"),
          py::arg("region"), py::arg("relu") = true);
    m.def("lsconv_backward", &py_lsconv_backward, py::arg("x"), py::arg("w"), py::arg("y"),
          py::arg("dy"), py::arg("region"), py::arg("relu") = true, py::arg("need_dx") = true,
          py::arg("dw") = py::none(), py::arg("db") = py::none());
    m.def("lsconv_pool_forward", &py_lsconv_pool_forward, py::arg("x"), py::arg("w"),
          py::arg("b"), py::arg("region"), py::arg("relu") = true, py::arg("s") = 2);
    m.def("lsconv_pool_backward", &py_lsconv_pool_backward, py::arg("x"), py::arg("w"),
          py::arg("y"), py::arg("argmax"), py::arg("dy"), py::arg("region"),
          py::arg("relu") = true, py::arg("need_dx") = true, py::arg("dw") = py::none(),
          py::arg("db") = py::none(), py::arg("s") = 2);
    m.def("maxpool_forward", &py_maxpool_forward, py::arg("x"), py::arg("s") = 2);
    m.def("maxpool_backward", &py_maxpool_backward, py::arg("dy"), py::arg("argmax"),
          py::arg("in_hw"), py::arg("s") = py::none());
    m.def("dense_forward", &py_dense_forward, py::arg("xs"), py::arg("w"), py::arg("b"),
          py::arg("relu") = true);
    m.def("dense_backward", &py_dense_backward, py::arg("xs"), py::arg("w"), py::arg("y"),
          py::arg("dy"), py::arg("relu") = true, py::arg("need_dx") = true,
          py::arg("dw") = py::none(), py::arg("db") = py::none());
    m.def("joint_loss", &py_joint_loss, py::arg("logits"), py::arg("labels"), py::arg("features"),
          py::arg("pair_a"), py::arg("pair_b"), py::arg("pair_y"), py::arg("variant") = "l2",
          py::arg("lam") = 0.05f, py::arg("params") = py::none());
    m.def("regression_loss", &py_regression_loss, py::arg("pred"), py::arg("target"));
    m.def("sgd_update", &py_sgd_update, py::arg("param"), py::arg("grad"), py::arg("velocity"),
          py::arg("lr"), py::arg("momentum") = 0.9f, py::arg("weight_decay") = 0.0f);
    m.def("max_threads", &max_threads, "OpenMP threads the ops use");
    m.def("keep_freed_memory", [] {
#if defined(__GLIBC__)
        // Large numpy arrays are mmap'ed and unmapped on free by default, so
        // every training step would fault its activations in afresh (about
        // 15% of a DeepID2 step). Keep freed memory in the heap instead.
        return mallopt(M_MMAP_THRESHOLD, 1 << 30) == 1 && mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1;
#else
        return false;
#endif
    }, "Process-wide: keep freed large buffers for reuse (glibc). Returns whether it applied.");
}
