// Test fixtures written from C++ alone: a safetensors writer and a random
// "deepid2-verifier/1" model, or "/2" where patches differ in shape
// (docs/verifier_model.md). The network shapes are
// derived here independently of the library (a second reading of nets/deepid2.py), so
// a wrong derivation in the reader shows up as a rejected file.
#pragma once
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../src/infer/sha256.h"  // the library's SHA-256 (tested on known vectors in test_model)

namespace fixture {

struct Tensor {
    std::string name;
    std::vector<int64_t> shape;
    std::vector<float> values;  // float32 only: all the verifier needs
};

// Header JSON by hand, sorted names, padded with spaces to 8 bytes, with
// "sha256" of the data section in the metadata (as the Python writer does);
// checksum = false writes an older file without it.
inline std::vector<uint8_t> safetensors_bytes(std::vector<Tensor> tensors,
                                              std::map<std::string, std::string> meta,
                                              bool checksum = true) {
    std::sort(tensors.begin(), tensors.end(),
              [](const Tensor& a, const Tensor& b) { return a.name < b.name; });
    std::vector<uint8_t> data;
    for (const Tensor& t : tensors) {
        const size_t at = data.size();
        data.resize(at + 4 * t.values.size());
        if (!t.values.empty()) std::memcpy(data.data() + at, t.values.data(), 4 * t.values.size());
    }
    if (checksum) meta["sha256"] = deepid2::sha256_hex(data.data(), data.size());
    auto quote = [](const std::string& s) {
        std::string o = "\"";
        for (char c : s) {
            if (c == '"' || c == '\\') o += '\\';
            o += c;
        }
        return o + "\"";
    };
    std::string h = "{";
    uint64_t off = 0;
    for (const Tensor& t : tensors) {
        h += quote(t.name) + ":{\"dtype\":\"F32\",\"shape\":[";
        for (size_t i = 0; i < t.shape.size(); ++i) h += (i ? "," : "") + std::to_string(t.shape[i]);
        const uint64_t end = off + 4 * t.values.size();
        h += "],\"data_offsets\":[" + std::to_string(off) + "," + std::to_string(end) + "]},";
        off = end;
    }
    h += "\"__metadata__\":{";
    bool first = true;
    for (const auto& kv : meta) {
        h += (first ? "" : ",") + quote(kv.first) + ":" + quote(kv.second);
        first = false;
    }
    h += "}}";
    while (h.size() % 8) h += ' ';
    std::vector<uint8_t> out(8 + h.size());
    for (int k = 0; k < 8; ++k) out[k] = uint8_t(uint64_t(h.size()) >> (8 * k));
    std::memcpy(out.data() + 8, h.data(), h.size());
    out.insert(out.end(), data.begin(), data.end());
    return out;
}

struct Spec {
    int channels = 1, height = 31, width = 31;  // 31x31 is the smallest input
    int feature_dim = 8, patches = 1, projected = 6;
    int grid_rows = 1, grid_cols = 1;
    uint32_t seed = 1;
    // Per-patch C, H, W; when set, `patches` is its size and the file is
    // format 2 (one net config per patch), else every patch is as above.
    std::vector<std::array<int, 3>> shapes;
    int chan(int p) const { return shapes.empty() ? channels : shapes[size_t(p)][0]; }
    int rows(int p) const { return shapes.empty() ? height : shapes[size_t(p)][1]; }
    int cols(int p) const { return shapes.empty() ? width : shapes[size_t(p)][2]; }
    size_t patch_floats(int p) const { return size_t(chan(p)) * rows(p) * cols(p); }
    size_t face_floats() const {  // one face: 2 patches of each network
        size_t n = 0;
        for (int p = 0; p < patches; ++p) n += 2 * patch_floats(p);
        return n;
    }
    static Spec mixed() {  // format 2: three networks of different inputs
        Spec s;
        s.shapes = {{3, 35, 31}, {1, 31, 31}, {3, 31, 33}};
        s.patches = 3, s.grid_rows = s.grid_cols = 2;
        return s;
    }
    static Spec deepid2() {  // the paper's network, one patch pair
        Spec s;
        s.channels = 3, s.height = 55, s.width = 47, s.feature_dim = 160, s.projected = 64;
        s.grid_rows = s.grid_cols = 2;
        return s;
    }
};

inline std::vector<Tensor> verifier_tensors(const Spec& s) {
    std::mt19937 g(s.seed);
    std::normal_distribution<float> normal;
    auto random = [&](std::vector<int64_t> shape, float scale, float shift = 0) {
        int64_t n = 1;
        for (int64_t d : shape) n *= d;
        std::vector<float> v(static_cast<size_t>(n));
        for (float& x : v) x = shift + scale * normal(g);
        return v;
    };
    std::vector<Tensor> t;
    const int kernels[4] = {4, 3, 3, 2}, maps[4] = {20, 40, 60, 80};
    for (int p = 0; p < s.patches; ++p) {
        int c = s.chan(p), h = s.rows(p), w = s.cols(p), pool3 = 0;
        for (int l = 0; l < 4; ++l) {
            const int oh = h - kernels[l] + 1, ow = w - kernels[l] + 1;
            int64_t ry = 1, rx = 1;  // conv1, conv2: one region
            if (l == 2) {
                const int rh = (oh + s.grid_rows - 1) / s.grid_rows, rw = (ow + s.grid_cols - 1) / s.grid_cols;
                ry = (oh + rh - 1) / rh, rx = (ow + rw - 1) / rw;
            } else if (l == 3) {
                ry = oh, rx = ow;  // locally connected
            }
            const std::string name = "patch" + std::to_string(p) + "/conv" + std::to_string(l + 1);
            const float he = std::sqrt(2.0f / float(c * kernels[l] * kernels[l]));
            t.push_back({name + ".w", {ry, rx, maps[l], c, kernels[l], kernels[l]},
                         random({ry, rx, maps[l], c, kernels[l], kernels[l]}, he)});
            t.push_back({name + ".b", {ry, rx, maps[l]}, random({ry, rx, maps[l]}, 0.05f, 0.05f)});
            c = maps[l];
            if (l < 3) h = oh / 2, w = ow / 2;
            else h = oh, w = ow;
            if (l == 2) pool3 = c * h * w;
        }
        const int64_t rows = pool3 + int64_t(c) * h * w;
        const std::string pre = "patch" + std::to_string(p) + "/deepid";
        t.push_back({pre + ".w", {rows, s.feature_dim},
                     random({rows, s.feature_dim}, std::sqrt(2.0f / float(rows)))});
        t.push_back({pre + ".b", {s.feature_dim}, random({s.feature_dim}, 0.05f, 0.05f)});
    }
    const int64_t D = 2 * int64_t(s.patches) * s.feature_dim, d = s.projected;
    t.push_back({"pca/mean", {D}, random({D}, 0.1f, 0.2f)});
    t.push_back({"pca/components", {D, d}, random({D, d}, 1.0f / std::sqrt(float(D)))});
    t.push_back({"jb/A", {d, d}, random({d, d}, 0.1f)});
    t.push_back({"jb/G", {d, d}, random({d, d}, 0.1f)});
    t.push_back({"jb/threshold", {1}, {0.0f}});
    return t;
}

inline std::string net_json(const Spec& s, int p) {
    return "{\"n_classes\": 10, \"height\": " + std::to_string(s.rows(p)) + ", \"width\": " +
           std::to_string(s.cols(p)) + ", \"channels\": " + std::to_string(s.chan(p)) +
           ", \"feature_dim\": " + std::to_string(s.feature_dim) + ", \"conv3_grid\": [" +
           std::to_string(s.grid_rows) + ", " + std::to_string(s.grid_cols) +
           "], \"conv3_region\": null}";
}

inline std::map<std::string, std::string> verifier_metadata(const Spec& s) {
    std::string names = "[";
    for (int p = 0; p < s.patches; ++p) names += (p ? ",\"p" : "\"p") + std::to_string(p) + "\"";
    names += "]";
    std::map<std::string, std::string> meta = {
        {"patches", names}, {"layout", "test"}, {"verifier", "joint_bayesian"}};
    if (s.shapes.empty()) {
        meta["format"] = "deepid2-verifier/1";
        meta["net"] = net_json(s, 0);
    } else {
        std::string nets = "[";
        for (int p = 0; p < s.patches; ++p) nets += (p ? ", " : "") + net_json(s, p);
        meta["format"] = "deepid2-verifier/2";
        meta["nets"] = nets + "]";
    }
    return meta;
}

inline std::vector<uint8_t> verifier_bytes(const Spec& s, bool checksum = true) {
    return safetensors_bytes(verifier_tensors(s), verifier_metadata(s), checksum);
}

inline void write_file(const std::string& path, const void* data, size_t size) {
    std::ofstream f(path, std::ios::binary);
    f.write(static_cast<const char*>(data), std::streamsize(size));
    if (!f) throw std::runtime_error("cannot write " + path);
}

// n faces of 2P random patches, values in the range of (u - 127.5) / 128.
inline std::vector<float> random_patches(const Spec& s, int n, uint32_t seed) {
    std::mt19937 g(seed);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<float> v(size_t(n) * s.face_floats());
    for (float& x : v) x = u(g);
    return v;
}

}  // namespace fixture
