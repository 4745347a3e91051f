// Loads a model through the installed C++ header and verifies a face
// against itself (the score must say "same" only if it clears the threshold).
#include <cstdio>
#include <vector>

#include <deepid2/model.h>

int main(int argc, char** argv) {
    if (argc != 2) return 2;
    try {
        const auto m = deepid2::Model::load(argv[1]);
        std::vector<float> x(m.input_size(), 0.25f);
        std::vector<float> f(m.feature_dim());
        m.features(x.data(), 1, f.data());
        const auto v = m.verify(f.data(), f.data());
        std::printf("consumer_cpp: D=%d score %.6g %s\n", m.feature_dim(), v.score,
                    v.same ? "same" : "different");
        return v.score == v.score ? 0 : 1;  // not NaN
    } catch (const std::exception& e) {
        std::fprintf(stderr, "consumer_cpp: %s\n", e.what());
        return 1;
    }
}
