// For tests/cpp/test_inference.py: features of N faces and the scores of
// every pair, to compare with the Python side.
//   deepid2_dump MODEL PATCHES.f32 N FEATURES_OUT.f32
// PATCHES: N faces of Model::input_size() float32 each (patch i's pair of
// C_i x H_i x W_i, in file order). Writes N x D float32 features and
// prints one line per pair i < j: "pair i j SCORE SAME".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <vector>

#include "deepid2/model.h"

int main(int argc, char** argv) {
    if (argc != 5) {
        std::fprintf(stderr, "usage: %s MODEL PATCHES.f32 N FEATURES_OUT.f32\n", argv[0]);
        return 2;
    }
    try {
        const deepid2::Model m = deepid2::Model::load(argv[1]);
        const int n = std::atoi(argv[3]);
        std::ifstream in(argv[2], std::ios::binary);
        std::vector<char> raw((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        const size_t floats = size_t(n) * m.input_size();
        if (n < 1 || raw.size() != floats * sizeof(float))
            throw std::runtime_error("patch file size does not match N faces of this model");
        std::vector<float> x(floats), f(size_t(n) * m.feature_dim());
        std::memcpy(x.data(), raw.data(), raw.size());
        m.features(x.data(), n, f.data());
        std::ofstream out(argv[4], std::ios::binary);
        out.write(reinterpret_cast<const char*>(f.data()), std::streamsize(f.size() * sizeof(float)));
        if (!out) throw std::runtime_error("cannot write the features");
        for (int i = 0; i < n; ++i)
            for (int j = i + 1; j < n; ++j) {
                const auto v = m.verify(&f[size_t(i) * m.feature_dim()], &f[size_t(j) * m.feature_dim()]);
                std::printf("pair %d %d %.17g %d\n", i, j, v.score, v.same ? 1 : 0);
            }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "deepid2_dump: %s\n", e.what());
        return 1;
    }
}
