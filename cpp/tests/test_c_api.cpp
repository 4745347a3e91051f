// The C API: status codes and messages on every error path, lengths checked,
// the thread-local error message, results equal to the C++ API.
//   deepid2_test_c_api SCRATCH_DIR
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <thread>

#include "deepid2/deepid2.h"
#include "deepid2/model.h"
#include "fixture.h"

static int failures = 0;

static void expect(bool ok, const std::string& what) {
    if (!ok) {
        std::printf("FAIL %s (last error: \"%s\")\n", what.c_str(), deepid2_last_error());
        ++failures;
    }
}

static bool error_mentions(const char* words) { return std::strstr(deepid2_last_error(), words) != nullptr; }

int main(int argc, char** argv) {
    const std::string dir = argc > 1 ? argv[1] : ".";
    std::filesystem::create_directories(dir);
    fixture::Spec spec;
    spec.patches = 2;
    const auto bytes = fixture::verifier_bytes(spec);
    const std::string path = dir + "/model.safetensors";
    fixture::write_file(path, bytes.data(), bytes.size());

    deepid2_model* m = reinterpret_cast<deepid2_model*>(&failures);  // must be reset to NULL
    expect(deepid2_model_load((dir + "/missing.safetensors").c_str(), &m) == DEEPID2_ERROR_IO &&
               m == nullptr && error_mentions("cannot open"),
           "missing file: DEEPID2_ERROR_IO, NULL handle");
    expect(deepid2_model_load(nullptr, &m) == DEEPID2_ERROR_ARGUMENT, "NULL path");
    expect(deepid2_model_load(path.c_str(), nullptr) == DEEPID2_ERROR_ARGUMENT, "NULL out");
    expect(deepid2_model_load_memory(bytes.data(), bytes.size() - 1, &m) == DEEPID2_ERROR_FORMAT &&
               m == nullptr && std::strlen(deepid2_last_error()) > 0,
           "truncated bytes: DEEPID2_ERROR_FORMAT with a message");
    const char junk[] = "not a model at all";
    expect(deepid2_model_load_memory(junk, sizeof junk, &m) == DEEPID2_ERROR_FORMAT &&
               error_mentions("header length"),
           "junk bytes");
    expect(deepid2_model_load_memory(nullptr, 10, &m) == DEEPID2_ERROR_ARGUMENT, "NULL bytes");
    {  // one flipped weight byte: refused by its checksum, the file named
        auto damaged = bytes;
        damaged.back() ^= 0x01;
        const std::string bad_path = dir + "/damaged.safetensors";
        fixture::write_file(bad_path, damaged.data(), damaged.size());
        expect(deepid2_model_load(bad_path.c_str(), &m) == DEEPID2_ERROR_FORMAT && m == nullptr &&
                   error_mentions(bad_path.c_str()) &&
                   error_mentions("tensor data damaged (sha256 mismatch: stored "),
               "damaged weights: DEEPID2_ERROR_FORMAT naming the file and the checksum");
        const auto old = fixture::verifier_bytes(spec, false);  // written before checksums
        expect(deepid2_model_load_memory(old.data(), old.size(), &m) == DEEPID2_OK && m,
               "a file without a checksum loads");
        deepid2_model_free(m);
        m = nullptr;
    }

    expect(deepid2_model_load(path.c_str(), &m) == DEEPID2_OK && m, "good file loads");
    expect(std::strlen(deepid2_last_error()) == 0, "success clears the error message");
    deepid2_model_info info;
    expect(deepid2_model_get_info(m, &info) == DEEPID2_OK && info.patches == 2 &&
               info.feature_dim == 2 * 2 * 8 && info.projected_dim == 6 && info.height == 31,
           "model info");
    expect(deepid2_model_get_info(nullptr, &info) == DEEPID2_ERROR_ARGUMENT, "info of NULL");

    const int n = 3;
    const auto x = fixture::random_patches(spec, n, 5);
    std::vector<float> f(size_t(n) * info.feature_dim, NAN);
    expect(deepid2_features(m, x.data(), x.size() - 1, n, f.data(), f.size()) == DEEPID2_ERROR_ARGUMENT &&
               error_mentions("patches_len"),
           "short patch buffer");
    expect(deepid2_features(m, x.data(), x.size(), n, f.data(), f.size() + 1) == DEEPID2_ERROR_ARGUMENT &&
               error_mentions("out_len"),
           "wrong out length");
    expect(deepid2_features(m, x.data(), x.size(), 0, f.data(), 0) == DEEPID2_ERROR_ARGUMENT, "zero faces");
    expect(deepid2_features(m, x.data(), x.size(), -2, f.data(), f.size()) == DEEPID2_ERROR_ARGUMENT,
           "negative faces");
    expect(deepid2_features(m, nullptr, x.size(), n, f.data(), f.size()) == DEEPID2_ERROR_ARGUMENT, "NULL patches");
    expect(std::isnan(f[0]), "failed calls leave out untouched");
    expect(deepid2_features(m, x.data(), x.size(), n, f.data(), f.size()) == DEEPID2_OK, "features");

    const deepid2::Model cpp = deepid2::Model::load(path);
    std::vector<float> g(f.size());
    cpp.features(x.data(), n, g.data());
    expect(std::memcmp(f.data(), g.data(), f.size() * sizeof(float)) == 0, "C features = C++ features");

    const size_t D = size_t(info.feature_dim);
    double score = NAN;
    int same = -1;
    expect(deepid2_verify(m, f.data(), D, f.data() + D, D, &score, &same) == DEEPID2_OK, "verify");
    const deepid2::Verdict v = cpp.verify(f.data(), f.data() + D);
    expect(score == v.score && same == int(v.same), "C verify = C++ verify");
    expect(deepid2_verify(m, f.data(), D - 1, f.data() + D, D, &score, &same) == DEEPID2_ERROR_ARGUMENT &&
               error_mentions("feature lengths"),
           "short feature");
    expect(deepid2_verify(m, f.data(), D, nullptr, D, &score, &same) == DEEPID2_ERROR_ARGUMENT, "NULL feature");
    expect(deepid2_verify(m, f.data(), D, f.data(), D, nullptr, nullptr) == DEEPID2_OK, "NULL outputs are fine");

    // the message is per thread: an error elsewhere does not overwrite ours
    deepid2_verify(m, f.data(), 1, f.data(), D, &score, &same);
    const std::string mine = deepid2_last_error();
    std::string theirs;
    std::thread([&] {
        deepid2_model* none = nullptr;
        deepid2_model_load("", &none);
        theirs = deepid2_last_error();
    }).join();
    expect(mine == deepid2_last_error() && theirs != mine && !theirs.empty(), "thread-local last error");
    expect(std::strcmp(deepid2_status_name(DEEPID2_ERROR_FORMAT), "bad model file") == 0 &&
               std::strcmp(deepid2_status_name(42), "unknown status") == 0,
           "status names");

    size_t len = 0;
    int c = 0, h = 0, w = 0;
    expect(deepid2_model_input_len(m, &len) == DEEPID2_OK && len == spec.face_floats(), "input_len");
    expect(deepid2_model_patch_shape(m, 1, &c, &h, &w) == DEEPID2_OK && c == 1 && h == 31 && w == 31,
           "patch_shape");
    expect(deepid2_model_patch_shape(m, 2, &c, &h, &w) == DEEPID2_ERROR_ARGUMENT && error_mentions("patch is 2"),
           "patch_shape out of range");
    deepid2_model_free(m);
    deepid2_model_free(nullptr);

    // format 2, patches of different shapes: lengths are per-patch sums
    const fixture::Spec mixed = fixture::Spec::mixed();
    const auto mixed_bytes = fixture::verifier_bytes(mixed);
    expect(deepid2_model_load_memory(mixed_bytes.data(), mixed_bytes.size(), &m) == DEEPID2_OK, "mixed loads");
    expect(deepid2_model_get_info(m, &info) == DEEPID2_OK && info.patches == 3 && info.channels == 0 &&
               info.height == 0 && info.width == 0 && info.feature_dim == 2 * 3 * 8,
           "mixed info: no single C, H, W");
    expect(deepid2_model_input_len(m, &len) == DEEPID2_OK && len == mixed.face_floats() &&
               len == size_t(2) * (3 * 35 * 31 + 31 * 31 + 3 * 31 * 33),
           "mixed input_len");
    for (int p = 0; p < 3; ++p)
        expect(deepid2_model_patch_shape(m, p, &c, &h, &w) == DEEPID2_OK && c == mixed.chan(p) &&
                   h == mixed.rows(p) && w == mixed.cols(p),
               "mixed patch_shape " + std::to_string(p));
    const auto mx = fixture::random_patches(mixed, 2, 6);
    std::vector<float> mf(size_t(2) * info.feature_dim, NAN);
    const size_t uniform_guess = size_t(2) * 2 * 3 * 3 * 35 * 31;  // 2P x patch 0's shape
    expect(deepid2_features(m, mx.data(), uniform_guess, 2, mf.data(), mf.size()) == DEEPID2_ERROR_ARGUMENT &&
               error_mentions(("expected " + std::to_string(mx.size())).c_str()),
           "mixed: patches_len checked against the per-patch sum");
    expect(deepid2_features(m, mx.data(), mx.size(), 2, mf.data(), mf.size()) == DEEPID2_OK, "mixed features");
    const deepid2::Model mixed_cpp = deepid2::Model::load_memory(mixed_bytes.data(), mixed_bytes.size());
    std::vector<float> mg(mf.size());
    mixed_cpp.features(mx.data(), 2, mg.data());
    expect(std::memcmp(mf.data(), mg.data(), mf.size() * sizeof(float)) == 0, "mixed: C features = C++ features");
    deepid2_model_free(m);
    if (failures) {
        std::printf("%d failure(s)\n", failures);
        return 1;
    }
    std::printf("all C API tests passed\n");
    return 0;
}
