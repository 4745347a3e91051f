// The landmark nets' shapes and forward (landmark_impl.h).
#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>

#include "landmark_impl.h"

namespace deepid2 {
namespace face {

void ConvNet::forward(int n, const float* x, float* y) const {
    if (n < 1 || convs.empty() || dense.empty())
        throw std::invalid_argument("ConvNet::forward: empty batch or net");
    // Two buffers, swapped layer by layer: each holds the largest activation.
    size_t most = 0;
    for (const ConvLayer& c : convs) {
        const LsconvShape& s = c.shape;
        most = std::max(most, size_t(s.k) * s.oh() * s.ow());
    }
    for (const DenseLayer& d : dense) most = std::max(most, size_t(d.out));
    std::vector<float> a(most * n), b(most * n);
    std::vector<int32_t> argmax(most * n);
    const float* in = x;
    int dim = size * size;  // the current activation's size per input
    for (const ConvLayer& c : convs) {
        LsconvShape s = c.shape;
        s.n = n;
        lsconv_forward(s, in, c.w.data(), c.b.data(), true, a.data());
        dim = s.k * s.oh() * s.ow();
        if (c.pool) {
            maxpool_forward(n, s.k, s.oh(), s.ow(), 2, a.data(), b.data(), argmax.data());
            dim = s.k * (s.oh() / 2) * (s.ow() / 2);
            std::swap(a, b);
        }
        std::swap(a, b);  // the output is in b: the next layer's input
        in = b.data();
    }
    for (size_t i = 0; i < dense.size(); ++i) {
        const DenseLayer& d = dense[i];
        if (d.in != dim) throw std::logic_error("ConvNet::forward: layer sizes do not chain");
        const bool last = i + 1 == dense.size();
        float* out = last ? y : a.data();
        dense_forward(n, 1, &d.in, &in, d.out, d.w.data(), d.b.data(), d.relu, out);
        dim = d.out;
        if (!last) {
            std::swap(a, b);
            in = b.data();
        }
    }
}

namespace {

ConvLayer conv(int c, int h, int w, int k, int kernel, int rh, int rw, bool pool) {
    return ConvLayer{LsconvShape{1, c, h, w, k, kernel, kernel, rh, rw}, pool, {}, {}};
}

[[noreturn]] void too_small(const std::string& what) { throw std::invalid_argument(what); }

}  // namespace

ConvNet f1_shapes(int size, int grid_y, int grid_x, int hidden, int outputs) {
    // nets/deepid2.py LAYERS: conv1 4x4 20 shared, conv2 3x3 40 shared,
    // conv3 3x3 60 on a grid of regions, conv4 2x2 80 locally connected.
    struct Spec { const char* name; int kernel, maps; char sharing; };
    static const Spec layers[4] = {
        {"conv1", 4, 20, 's'}, {"conv2", 3, 40, 's'}, {"conv3", 3, 60, 'g'}, {"conv4", 2, 80, 'l'}};
    if (grid_y < 1 || grid_x < 1) too_small("conv3_grid must be positive");
    ConvNet net;
    net.size = size;
    int c = 1, h = size, w = size;
    const std::string input = "input " + std::to_string(size) + "x" + std::to_string(size);
    for (int i = 0; i < 4; ++i) {
        const Spec& L = layers[i];
        const int oh = h - L.kernel + 1, ow = w - L.kernel + 1;
        if (oh < 1 || ow < 1) too_small(input + " is too small: " + L.name + " has no output");
        int rh = oh, rw = ow;
        if (L.sharing == 'g') {
            rh = (oh + grid_y - 1) / grid_y;
            rw = (ow + grid_x - 1) / grid_x;
        } else if (L.sharing == 'l') {
            rh = rw = 1;
        }
        net.convs.push_back(conv(c, h, w, L.maps, L.kernel, rh, rw, i < 3));
        c = L.maps;
        h = i < 3 ? oh / 2 : oh;
        w = i < 3 ? ow / 2 : ow;
        if (h < 1 || w < 1) too_small(input + " is too small for pool" + std::to_string(i + 1));
    }
    net.dense.push_back(DenseLayer{c * h * w, hidden, true, {}, {}});
    net.dense.push_back(DenseLayer{hidden, outputs, false, {}, {}});
    return net;
}

ConvNet refine_shapes(int size, int conv1, int conv2, int hidden) {
    // nets/refine.py refine_shapes: conv1 4x4 -> pool 2 -> conv2 3x3 -> pool 2.
    const int c1 = size - 3, p1 = c1 / 2, c2 = p1 - 2, p2 = c2 / 2;
    if (c1 < 2 || p2 < 1)
        too_small("patch size " + std::to_string(size) + " is too small: it needs at least 10");
    ConvNet net;
    net.size = size;
    net.convs.push_back(conv(1, size, size, conv1, 4, c1, c1, true));
    net.convs.push_back(conv(conv1, p1, p1, conv2, 3, c2, c2, true));
    net.dense.push_back(DenseLayer{conv2 * p2 * p2, hidden, true, {}, {}});
    net.dense.push_back(DenseLayer{hidden, 2, false, {}, {}});
    return net;
}

void standardise(const float* v, int count, float* out) {
    double mean = 0;
    for (int i = 0; i < count; ++i) mean += v[i];
    mean /= count;
    double var = 0;
    for (int i = 0; i < count; ++i) var += (v[i] - mean) * (v[i] - mean);
    const double scale = std::max(std::sqrt(var / count), 4.0);  // std floored at 4 grey levels
    for (int i = 0; i < count; ++i) out[i] = float((v[i] - mean) / scale);
}

}  // namespace face
}  // namespace deepid2
