// deepid2::Model on fixture files written here (tests/fixture.h): features
// against a plain double-precision forward, the Joint Bayesian score against
// the formula, and the reader on truncated, corrupted and hostile files.
#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>

#include "../src/infer/sha256.h"
#include "deepid2/model.h"
#include "fixture.h"

using deepid2::Model;
using deepid2::ModelFormatError;

static int failures = 0;

static void expect(bool ok, const std::string& what) {
    if (!ok) {
        std::printf("FAIL %s\n", what.c_str());
        ++failures;
    }
}

// f must throw ModelFormatError whose message contains `words`.
static void expect_format_error(const std::function<void()>& f, const std::string& words,
                                const std::string& what) {
    try {
        f();
    } catch (const ModelFormatError& e) {
        if (std::string(e.what()).find(words) == std::string::npos)
            expect(false, what + ": message \"" + e.what() + "\" lacks \"" + words + "\"");
        return;
    } catch (const std::exception& e) {
        expect(false, what + ": threw another error: " + e.what());
        return;
    }
    expect(false, what + ": loaded without error");
}

static void expect_rejected(const std::vector<uint8_t>& bytes, const std::string& words,
                            const std::string& what) {
    expect_format_error([&] { Model::load_memory(bytes.data(), bytes.size()); }, words, what);
}

static std::vector<uint8_t> raw_file(const std::string& header, const std::string& data) {
    std::vector<uint8_t> out(8 + header.size() + data.size());
    for (int k = 0; k < 8; ++k) out[k] = uint8_t(uint64_t(header.size()) >> (8 * k));
    std::memcpy(out.data() + 8, header.data(), header.size());
    if (!data.empty()) std::memcpy(out.data() + 8 + header.size(), data.data(), data.size());
    return out;
}

static const fixture::Tensor& find(const std::vector<fixture::Tensor>& ts, const std::string& name) {
    for (const auto& t : ts)
        if (t.name == name) return t;
    throw std::runtime_error("fixture lacks " + name);
}

// ---------------------------------------------------------------------------
// Plain double-precision forward of one patch network, read straight from
// the fixture tensors: conv (regions), ReLU, 2x2 pool, dense over [pool3, conv4].
struct Map {
    int c, h, w;
    std::vector<double> v;
    double at(int k, int y, int x) const { return v[(size_t(k) * h + y) * w + x]; }
};

static Map naive_conv(const Map& in, const fixture::Tensor& wt, const fixture::Tensor& bt) {
    const int ry = int(wt.shape[0]), rx = int(wt.shape[1]), K = int(wt.shape[2]), k = int(wt.shape[4]);
    Map out{K, in.h - k + 1, in.w - k + 1, {}};
    out.v.resize(size_t(K) * out.h * out.w);
    const int rh = (out.h + ry - 1) / ry, rw = (out.w + rx - 1) / rx;  // grid -> region size
    for (int o = 0; o < K; ++o)
        for (int y = 0; y < out.h; ++y)
            for (int x = 0; x < out.w; ++x) {
                const int r = (y / rh) * rx + x / rw;
                double z = bt.values[size_t(r) * K + o];
                for (int c = 0; c < in.c; ++c)
                    for (int i = 0; i < k; ++i)
                        for (int j = 0; j < k; ++j)
                            z += double(wt.values[(((size_t(r) * K + o) * in.c + c) * k + i) * k + j]) *
                                 in.at(c, y + i, x + j);
                out.v[(size_t(o) * out.h + y) * out.w + x] = std::max(z, 0.0);
            }
    return out;
}

static Map naive_pool(const Map& in) {
    Map out{in.c, in.h / 2, in.w / 2, {}};
    for (int c = 0; c < in.c; ++c)
        for (int y = 0; y < out.h; ++y)
            for (int x = 0; x < out.w; ++x)
                out.v.push_back(std::max(std::max(in.at(c, 2 * y, 2 * x), in.at(c, 2 * y, 2 * x + 1)),
                                         std::max(in.at(c, 2 * y + 1, 2 * x), in.at(c, 2 * y + 1, 2 * x + 1))));
    return out;
}

static std::vector<double> naive_net(const std::vector<fixture::Tensor>& ts, int p,
                                     const fixture::Spec& s, const float* x) {
    const std::string pre = "patch" + std::to_string(p) + "/";
    Map h{s.chan(p), s.rows(p), s.cols(p), std::vector<double>(x, x + s.patch_floats(p))};
    Map pool3;
    for (int l = 1; l <= 4; ++l) {
        const std::string c = pre + "conv" + std::to_string(l);
        h = naive_conv(h, find(ts, c + ".w"), find(ts, c + ".b"));
        if (l < 4) h = naive_pool(h);
        if (l == 3) pool3 = h;
    }
    std::vector<double> cat = pool3.v;
    cat.insert(cat.end(), h.v.begin(), h.v.end());
    const auto& w = find(ts, pre + "deepid.w");
    const auto& b = find(ts, pre + "deepid.b");
    std::vector<double> f(size_t(s.feature_dim));
    for (int j = 0; j < s.feature_dim; ++j) {
        double z = b.values[j];
        for (size_t i = 0; i < cat.size(); ++i) z += cat[i] * w.values[i * s.feature_dim + j];
        f[j] = std::max(z, 0.0);
    }
    return f;
}

static double naive_score(const std::vector<fixture::Tensor>& ts, const float* a, const float* b) {
    const auto& mean = find(ts, "pca/mean");
    const auto& comp = find(ts, "pca/components");
    const auto& A = find(ts, "jb/A");
    const auto& G = find(ts, "jb/G");
    const size_t D = size_t(comp.shape[0]), d = size_t(comp.shape[1]);
    std::vector<double> z1(d), z2(d);
    for (size_t j = 0; j < d; ++j)
        for (size_t k = 0; k < D; ++k) {
            z1[j] += (double(a[k]) - mean.values[k]) * comp.values[k * d + j];
            z2[j] += (double(b[k]) - mean.values[k]) * comp.values[k * d + j];
        }
    double r = 0;
    for (size_t i = 0; i < d; ++i)
        for (size_t j = 0; j < d; ++j)
            r += A.values[i * d + j] * (z1[i] * z1[j] + z2[i] * z2[j]) - 2 * G.values[i * d + j] * z1[i] * z2[j];
    return r;
}

static void test_features_and_scores() {
    fixture::Spec s;
    s.patches = 2, s.grid_rows = 2, s.grid_cols = 2, s.seed = 7;
    const auto ts = fixture::verifier_tensors(s);
    const auto bytes = fixture::safetensors_bytes(ts, fixture::verifier_metadata(s));
    const Model m = Model::load_memory(bytes.data(), bytes.size());
    expect(m.patches() == 2 && m.channels() == 1 && m.height() == 31 && m.width() == 31 &&
               m.network_dim() == 8 && m.feature_dim() == 32 && m.projected_dim() == 6,
           "model dims");
    expect(m.patch_names().size() == 2 && m.patch_names()[1] == "p1" && m.layout() == "test",
           "patch names and layout");
    const int n = 5, D = m.feature_dim(), F = m.network_dim();
    const auto x = fixture::random_patches(s, n, 3);
    std::vector<float> f(size_t(n) * D, NAN);  // poison: every entry must be written
    m.features(x.data(), n, f.data());
    const size_t ps = size_t(s.channels) * s.height * s.width;
    double worst = 0;
    bool any_positive = false;
    for (int face = 0; face < n; ++face)
        for (int q = 0; q < 2 * s.patches; ++q) {
            const auto ref = naive_net(ts, q / 2, s, x.data() + (size_t(face) * 2 * s.patches + q) * ps);
            for (int j = 0; j < F; ++j) {
                const double got = f[size_t(face) * D + size_t(q) * F + j];
                worst = std::max(worst, std::fabs(got - ref[j]) / (1e-3 + std::fabs(ref[j])));
                any_positive |= ref[j] > 0;
                if (!std::isfinite(got)) worst = INFINITY;
            }
        }
    if (worst > 1e-4) std::printf("  worst relative feature error %.3e\n", worst);
    expect(worst <= 1e-4 && any_positive, "features match the naive forward");

    // one face at a time (the task-parallel path) gives the same numbers
    std::vector<float> one(size_t(D), NAN);
    bool same = true;
    for (int face = 0; face < n; ++face) {
        m.features(x.data() + size_t(face) * 2 * s.patches * ps, 1, one.data());
        for (int j = 0; j < D; ++j) same &= std::fabs(one[j] - f[size_t(face) * D + j]) <= 1e-6f * (1 + std::fabs(one[j]));
    }
    expect(same, "features of one face = its row of a batch");
    std::vector<float> pf(size_t(2) * F, NAN);
    m.patch_features(1, x.data() + 2 * ps, 2, pf.data());  // face 0, patches 2 and 3
    same = true;
    for (int j = 0; j < 2 * F; ++j) same &= std::fabs(pf[j] - f[size_t(2) * F + j]) <= 1e-6f * (1 + std::fabs(pf[j]));
    expect(same, "patch_features = the features' block of that network");

    for (int i = 0; i + 1 < n; ++i) {
        const auto v = m.verify(&f[size_t(i) * D], &f[size_t(i + 1) * D]);
        const double ref = naive_score(ts, &f[size_t(i) * D], &f[size_t(i + 1) * D]);
        expect(std::fabs(v.score - ref) <= 1e-9 * (1 + std::fabs(ref)), "score = the JB formula");
        expect(v.same == (v.score >= m.threshold()), "decision at the threshold");
    }
    // argument errors
    auto invalid = [&](const std::function<void()>& g, const std::string& what) {
        try {
            g();
        } catch (const std::invalid_argument&) {
            return;
        }
        expect(false, what + " should throw std::invalid_argument");
    };
    invalid([&] { m.features(nullptr, 1, f.data()); }, "features(null)");
    invalid([&] { m.features(x.data(), -1, f.data()); }, "features(n = -1)");
    invalid([&] { m.patch_features(2, x.data(), 1, f.data()); }, "patch_features(patch out of range)");
    invalid([&] { m.verify(f.data(), nullptr); }, "verify(null)");
    try {
        Model::load("/nonexistent/dir/model.safetensors");
        expect(false, "loading a missing file should throw");
    } catch (const deepid2::ModelIOError&) {
    }
}

// ---------------------------------------------------------------------------
static void test_truncated() {
    const auto good = fixture::verifier_bytes(fixture::Spec{});
    size_t header_end = 8;
    for (int k = 0; k < 8; ++k) header_end += size_t(good[k]) << (8 * k);
    int checked = 0;
    for (size_t len = 0; len < good.size(); len += (len < header_end + 64 ? 1 : 4093)) {
        std::vector<uint8_t> cut(good.begin(), good.begin() + long(len));
        expect_rejected(cut, "", "truncated to " + std::to_string(len) + " bytes");
        ++checked;
    }
    expect(checked > 100, "enough truncations checked");
    // the whole file loads, and it also loads from disk
    Model::load_memory(good.data(), good.size());
}

static void test_corrupted() {
    const fixture::Spec spec;
    const auto ts = fixture::verifier_tensors(spec);
    const auto meta = fixture::verifier_metadata(spec);
    auto good = fixture::safetensors_bytes(ts, meta);
    auto with_meta = [&](const std::string& key, const std::string& value) {
        auto m = meta;
        if (value == "<erase>") m.erase(key);
        else m[key] = value;
        return fixture::safetensors_bytes(ts, m);
    };
    auto net_json = [&](const std::string& grid, const std::string& extra) {
        return "{\"n_classes\": 10, \"height\": 31, \"width\": 31, \"channels\": 1, "
               "\"feature_dim\": 8, \"conv3_grid\": " + grid + extra + "}";
    };

    auto b = good;
    b[5] = 1;  // header length 2^40
    expect_rejected(b, "exceeds the cap", "huge header length");
    b = good;
    b[0] = 0xff, b[1] = 0xff, b[2] = 0x7f;  // ~8 MB: under the cap, over the file
    expect_rejected(b, "does not fit", "header length past the end");
    b = good;
    b[8] = 'x';
    expect_rejected(b, "corrupt header", "header not JSON");
    expect_rejected(raw_file("[1, 2]", ""), "not a JSON object", "header an array");
    expect_rejected(raw_file(std::string(100, '[') + std::string(100, ']'), ""), "nesting", "deep nesting");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
                             "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,8]}}",
                             std::string(8, '\0')), "duplicate key", "duplicate tensor name");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}",
                             std::string(12, '\0')), "overlaps", "overlapping tensors");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                             "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[12,20]}}",
                             std::string(20, '\0')), "gap", "gap between tensors");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]}}",
                             std::string(12, '\0')), "after the last tensor", "trailing bytes");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}",
                             std::string(8, '\0')), "data section", "shape larger than its span");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,8]}}",
                             std::string(8, '\0')), "do not match", "span larger than its shape");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F31\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                             std::string(4, '\0')), "unknown dtype", "unknown dtype");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",
                             std::string(4, '\0')), "dimension", "negative dimension");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
                             "\"data_offsets\":[0,4]}}", std::string(4, '\0')),
                    "larger than the data section", "overflowing shape");
    expect_rejected(raw_file("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}",
                             std::string(4, '\0')), "exactly", "extra key in an entry");
    expect_rejected(raw_file("{\"__metadata__\":{\"format\":\"\xff\"}}", ""), "UTF-8", "bad UTF-8");
    expect_rejected(raw_file("{}", ""), "format", "no metadata");

    expect_rejected(with_meta("format", "deepid2-verifier/3"), "format", "wrong format");
    expect_rejected(with_meta("format", "deepid2-verifier/2"), "\"nets\" is missing", "format 2 with \"net\"");
    expect_rejected(with_meta("nets", "[" + meta.at("net") + "]"), "both", "format 1 with \"nets\" too");
    expect_rejected(with_meta("verifier", "<erase>"), "verifier", "no verifier key");
    expect_rejected(with_meta("patches", "[\"a\", \"b\"]"), "patch1/conv1.w", "more patches than networks");
    expect_rejected(with_meta("patches", "[]"), "patches", "no patches");
    expect_rejected(with_meta("patches", "{"), "not valid JSON", "patches not JSON");
    expect_rejected(with_meta("net", net_json("[0, 1]", "")), "conv3_grid", "zero grid");
    expect_rejected(with_meta("net", net_json("[1, 1]", ", \"conv3_region\": [11, 1]")),
                    "larger than conv3", "conv3 region too large");
    expect_rejected(with_meta("net", net_json("[1, 1]", ", \"dropout\": 0.5")), "unknown key", "unknown net key");
    expect_rejected(with_meta("net", "{\"n_classes\": 10, \"height\": 20, \"width\": 31, \"channels\": 1, "
                                     "\"feature_dim\": 8, \"conv3_grid\": [1, 1]}"),
                    "too small", "input too small");
    expect_rejected(with_meta("net", net_json("[2, 2]", "")), "has shape", "grid differs from the weights");

    auto tensors_edit = [&](const std::function<void(std::vector<fixture::Tensor>&)>& edit) {
        auto t = ts;
        edit(t);
        return fixture::safetensors_bytes(t, meta);
    };
    expect_rejected(tensors_edit([](auto& t) { t.erase(t.begin()); }), "missing", "missing tensor");
    expect_rejected(tensors_edit([](auto& t) { t.push_back({"ident.w", {1}, {1.0f}}); }),
                    "unexpected tensor", "extra tensor");
    expect_rejected(tensors_edit([](auto& t) { t.back().values[0] = NAN; }), "non-finite", "NaN weight");
    expect_rejected(tensors_edit([](auto& t) {
                        for (auto& x : t)
                            if (x.name == "pca/components") x.shape = {x.shape[1], x.shape[0]};
                    }),
                    "pca/components", "transposed PCA");
    // a needed tensor of another 4-byte dtype
    b = good;
    const std::string h(b.begin() + 8, b.end());
    b[8 + h.find("F32")] = 'I';
    expect_rejected(b, "expected F32", "I32 weights");
}

// Format 2: one net config per patch, patches of different shapes.
static void test_mixed_shapes() {
    const fixture::Spec s = fixture::Spec::mixed();
    const auto ts = fixture::verifier_tensors(s);
    const auto meta = fixture::verifier_metadata(s);
    const auto bytes = fixture::safetensors_bytes(ts, meta);
    const Model m = Model::load_memory(bytes.data(), bytes.size());
    expect(m.patches() == 3 && !m.uniform_patches() && m.patch_channels(0) == 3 &&
               m.patch_height(0) == 35 && m.patch_width(2) == 33 && m.patch_channels(1) == 1 &&
               m.input_size() == s.face_floats() && m.feature_dim() == 2 * 3 * 8,
           "mixed model dims");
    bool threw = false;
    try {
        (void)m.channels();  // no one C for all patches
    } catch (const std::logic_error& e) {
        threw = std::string(e.what()).find("patch_channels") != std::string::npos;
    }
    expect(threw, "channels() of a mixed model throws, naming patch_channels");
    try {
        (void)m.patch_height(3);
        expect(false, "patch_height(P) should throw");
    } catch (const std::invalid_argument&) {
    }

    const int n = 3, D = m.feature_dim(), F = m.network_dim();
    const auto x = fixture::random_patches(s, n, 5);
    std::vector<float> f(size_t(n) * D, NAN);
    m.features(x.data(), n, f.data());
    double worst = 0;
    bool any_positive = false;
    for (int face = 0; face < n; ++face) {
        const float* at = x.data() + size_t(face) * s.face_floats();
        for (int q = 0; q < 2 * s.patches; ++q) {
            const auto ref = naive_net(ts, q / 2, s, at);
            at += s.patch_floats(q / 2);
            for (int j = 0; j < F; ++j) {
                const double got = f[size_t(face) * D + size_t(q) * F + j];
                worst = std::max(worst, std::fabs(got - ref[j]) / (1e-3 + std::fabs(ref[j])));
                any_positive |= ref[j] > 0;
                if (!std::isfinite(got)) worst = INFINITY;
            }
        }
    }
    if (worst > 1e-4) std::printf("  worst relative feature error (mixed) %.3e\n", worst);
    expect(worst <= 1e-4 && any_positive, "mixed features match the naive forward");
    std::vector<float> one(size_t(D), NAN);
    m.features(x.data() + s.face_floats(), 1, one.data());  // face 1 alone
    expect(std::memcmp(one.data(), f.data() + D, sizeof(float) * D) == 0, "mixed: one face = its batch row");
    std::vector<float> pf(size_t(2) * F, NAN);
    m.patch_features(2, x.data() + 2 * (s.patch_floats(0) + s.patch_floats(1)), 2, pf.data());
    expect(std::memcmp(pf.data(), f.data() + 4 * F, sizeof(float) * 2 * F) == 0,
           "mixed: patch_features(2) = the features' block of that network");

    auto with_meta = [&](const std::string& key, const std::string& value) {
        auto mm = meta;
        if (value == "<erase>") mm.erase(key);
        else mm[key] = value;
        return fixture::safetensors_bytes(ts, mm);
    };
    const std::string n0 = fixture::net_json(s, 0), n1 = fixture::net_json(s, 1), n2 = fixture::net_json(s, 2);
    auto nets = [](const std::string& a, const std::string& b, const std::string& c) {
        return "[" + a + ", " + b + (c.empty() ? "" : ", " + c) + "]";
    };
    auto replace = [](std::string j, const std::string& from, const std::string& to) {
        return j.replace(j.find(from), from.size(), to);
    };
    expect_rejected(with_meta("nets", "<erase>"), "\"nets\" is missing", "format 2 without nets");
    expect_rejected(with_meta("net", n0), "both", "format 2 with \"net\" too");
    expect_rejected(with_meta("nets", nets(n0, n1, "")), "2 net configs for 3 patches", "nets too short");
    expect_rejected(with_meta("nets", nets(n0, n1, n2 + ", " + n2)), "4 net configs for 3 patches",
                    "nets too long");
    expect_rejected(with_meta("nets", n0), "must be a list", "nets an object");
    expect_rejected(with_meta("nets", nets(n0, "7", n2)), "nets[1] is not a JSON object", "nets[1] a number");
    // 39 rows instead of 31: conv4 gets 2 x 1 positions, patch 1's tensors have 1 x 1
    expect_rejected(with_meta("nets", nets(n0, replace(n1, "\"height\": 31", "\"height\": 39"), n2)),
                    "has shape (1, 1, 80, 60, 2, 2), expected (2, 1, 80, 60, 2, 2) (from nets[1])",
                    "nets[1] differs from its tensors");
    expect_rejected(with_meta("nets", nets(n0, n1, replace(n2, "\"feature_dim\": 8", "\"feature_dim\": 9"))),
                    "nets[2] has feature_dim 9", "feature_dim differs between patches");
    expect_rejected(with_meta("nets", nets(n0, replace(n1, "\"n_classes\"", "\"dropout\": 1, \"n_classes\""), n2)),
                    "nets[1] config has an unknown key \"dropout\"", "unknown key in nets[1]");
    expect_rejected(with_meta("nets", nets(n0, replace(n1, "\"channels\": 1", "\"channels\": 0"), n2)),
                    "nets[1] channels", "channels 0 in nets[1]");
    expect_rejected(with_meta("nets", nets(n0, replace(n1, "\"height\": 31", "\"height\": 20"), n2)),
                    "too small", "nets[1] input too small");
    // one patch's tensors of another patch's shape
    auto t = ts;
    for (auto& x : t)
        if (x.name == "patch1/conv1.w") x.shape = {1, 1, 20, 3, 4, 4}, x.values.resize(20 * 3 * 16, 0.1f);
    expect_rejected(fixture::safetensors_bytes(t, meta), "patch1/conv1.w", "wrong tensor shape for patch 1");

    // format 2 with equal configs loads as format 1 would
    fixture::Spec same;
    same.patches = 2;
    auto same_meta = fixture::verifier_metadata(same);
    same_meta["format"] = "deepid2-verifier/2";
    same_meta["nets"] = nets(fixture::net_json(same, 0), fixture::net_json(same, 1), "");
    same_meta.erase("net");
    const auto v2 = fixture::safetensors_bytes(fixture::verifier_tensors(same), same_meta);
    const Model m2 = Model::load_memory(v2.data(), v2.size());
    const auto v1 = fixture::verifier_bytes(same);
    const Model m1 = Model::load_memory(v1.data(), v1.size());
    const auto y = fixture::random_patches(same, 2, 9);
    std::vector<float> f1(size_t(2) * m1.feature_dim()), f2(f1.size());
    m1.features(y.data(), 2, f1.data());
    m2.features(y.data(), 2, f2.data());
    expect(m2.uniform_patches() && m2.channels() == 1 &&
               std::memcmp(f1.data(), f2.data(), f1.size() * sizeof(float)) == 0,
           "format 2 with equal configs = format 1");
}

// Random byte flips anywhere: the reader either loads or throws
// ModelFormatError; ASan/UBSan builds (cpp/fuzz) make this sharper.
static void test_random_flips() {
    const auto good = fixture::verifier_bytes(fixture::Spec{});
    size_t header_end = 8;
    for (int k = 0; k < 8; ++k) header_end += size_t(good[k]) << (8 * k);
    std::mt19937 g(11);
    int loaded = 0;
    for (int trial = 0; trial < 300; ++trial) {
        auto b = good;
        for (int k = 0; k < 1 + trial % 4; ++k) {
            const size_t at = trial % 2 ? g() % header_end : g() % b.size();
            b[at] = uint8_t(g());
        }
        try {
            Model::load_memory(b.data(), b.size());
            ++loaded;
        } catch (const ModelFormatError&) {
        } catch (const std::exception& e) {
            expect(false, std::string("byte flip: unexpected error type: ") + e.what());
        }
    }
    // every flip in the weights is caught by the checksum; one in the header may still load
    std::printf("random flips: %d of 300 still loaded\n", loaded);
}

// ---------------------------------------------------------------------------
// SHA-256 on the FIPS 180-2 vectors, whole and fed in uneven pieces.
static void test_sha256() {
    auto hex = [](const std::string& s) {
        return deepid2::sha256_hex(reinterpret_cast<const uint8_t*>(s.data()), s.size());
    };
    expect(hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", "sha256(\"\")");
    expect(hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "sha256(abc)");
    const std::string two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";  // 56 bytes: 2 blocks
    expect(hex(two) == "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1", "sha256(448 bits)");
    const std::string million(1000000, 'a');
    const std::string want = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    expect(hex(million) == want, "sha256(10^6 x a)");
    deepid2::Sha256 h;  // pieces of 1, 2, ..., crossing every block boundary position
    const auto* p = reinterpret_cast<const uint8_t*>(million.data());
    size_t at = 0;
    for (size_t len = 1; at < million.size(); ++len) {
        const size_t take = std::min(len % 131, million.size() - at);
        h.update(p + at, take);
        at += take;
    }
    expect(h.hex_digest() == want, "sha256(10^6 x a) in pieces");
    for (size_t n = 54; n <= 66; ++n) {  // the padding edge cases, against one-byte feeding
        const std::string s(n, 'x');
        deepid2::Sha256 one;
        for (char c : s) one.update(reinterpret_cast<const uint8_t*>(&c), 1);
        expect(one.hex_digest() == hex(s), "sha256 of " + std::to_string(n) + " bytes, bytewise");
    }
}

// The "sha256" metadata: checked against the data section, malformed values
// refused, older files without it accepted.
static void test_checksum() {
    const fixture::Spec spec;
    const auto ts = fixture::verifier_tensors(spec);
    const auto meta = fixture::verifier_metadata(spec);
    const auto good = fixture::safetensors_bytes(ts, meta);
    size_t header_end = 8;
    for (int k = 0; k < 8; ++k) header_end += size_t(good[k]) << (8 * k);
    const Model m = Model::load_memory(good.data(), good.size());
    expect(m.metadata("sha256") ==
               deepid2::sha256_hex(good.data() + header_end, good.size() - header_end),
           "the checksum is of exactly the data section");
    for (size_t at : {header_end, header_end + 37, good.size() - 1}) {
        auto b = good;
        b[at] ^= 0x20;
        expect_rejected(b, "safetensors: tensor data damaged (sha256 mismatch: stored ",
                        "a flipped data byte at " + std::to_string(at));
    }
    {  // from disk: the message names the file
        auto b = good;
        b.back() ^= 0x01;
        const std::string path = "checksum_damaged.safetensors";
        fixture::write_file(path, b.data(), b.size());
        expect_format_error([&] { Model::load(path); }, path + ": safetensors: tensor data damaged",
                            "damaged file on disk");
        std::remove(path.c_str());
    }
    const auto old = fixture::safetensors_bytes(ts, meta, false);
    const Model o = Model::load_memory(old.data(), old.size());
    expect(o.metadata("sha256").empty(), "an older file without a checksum loads");
    const std::string right = m.metadata("sha256");
    std::string upper = right;
    for (char& c : upper) c = char(std::toupper(static_cast<unsigned char>(c)));
    auto with_sum = [&](const std::string& v) {
        auto mm = meta;
        mm["sha256"] = v;
        return fixture::safetensors_bytes(ts, mm, false);
    };
    const auto up = with_sum(upper);
    Model::load_memory(up.data(), up.size());  // upper-case hex is read
    for (const std::string v : {std::string(), std::string("abc"), std::string(64, 'g'),
                                right.substr(1), right + "0", " " + right.substr(1)})
        expect_rejected(with_sum(v), "metadata sha256 is not a hex SHA-256 (64 hex digits)",
                        "malformed checksum \"" + v + "\"");
    std::string wrong = right;
    wrong[0] = wrong[0] == '0' ? '1' : '0';
    expect_rejected(with_sum(wrong), "stored " + wrong.substr(0, 16) + "..., computed " +
                                         right.substr(0, 16) + "...)",
                    "a well-formed but wrong checksum");
}

int main() {
    test_sha256();
    test_checksum();
    test_features_and_scores();
    test_truncated();
    test_corrupted();
    test_mixed_shapes();
    test_random_flips();
    if (failures) {
        std::printf("%d failure(s)\n", failures);
        return 1;
    }
    std::printf("all model tests passed\n");
    return 0;
}
