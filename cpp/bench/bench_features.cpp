// Speed of deepid2::Model inference on the paper's network (55x47x3 input,
// 160-d, conv3 on a 2x2 grid), P = 1, random weights built in memory.
//   deepid2_bench_features [--threads 2] [--min-time 1.0]
// Prints one line per case: "result CASE batch=B images=I median_ms=T images_per_s=R",
// where an image is one 3x55x47 patch through one network (a face of P = 1 is
// two images: the patch and its flipped partner).
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "deepid2/model.h"
#include "fixture.h"

template <class F>
static double median_ms(F&& f, double min_time) {
    for (int i = 0; i < 3; ++i) f();  // warm-up: buffers, caches
    std::vector<double> ts;
    const auto start = std::chrono::steady_clock::now();
    while (ts.size() < 10 ||
           std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < min_time) {
        const auto t0 = std::chrono::steady_clock::now();
        f();
        ts.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    std::sort(ts.begin(), ts.end());
    return ts[ts.size() / 2];
}

int main(int argc, char** argv) {
    int threads = 2;
    double min_time = 1.0;
    for (int i = 1; i + 1 < argc; i += 2) {
        const std::string a = argv[i];
        if (a == "--threads") threads = std::atoi(argv[i + 1]);
        else if (a == "--min-time") min_time = std::atof(argv[i + 1]);
    }
    omp_set_num_threads(threads);
    const fixture::Spec spec = fixture::Spec::deepid2();
    const auto bytes = fixture::verifier_bytes(spec);
    const auto m = deepid2::Model::load_memory(bytes.data(), bytes.size());
    std::printf("threads=%d model: P=%d %dx%dx%d D=%d\n", threads, m.patches(), m.channels(),
                m.height(), m.width(), m.feature_dim());
    for (int faces : {1, 128}) {
        const auto x = fixture::random_patches(spec, faces, 1);
        std::vector<float> f(size_t(faces) * m.feature_dim());
        const double ms = median_ms([&] { m.features(x.data(), faces, f.data()); }, min_time);
        const int images = 2 * faces * m.patches();
        std::printf("result features batch=%d images=%d median_ms=%.4f images_per_s=%.1f\n", faces,
                    images, ms, images / ms * 1e3);
    }
    for (int n : {1, 128}) {  // one network, n patches: the same unit as a framework's batch n
        const auto x = fixture::random_patches(spec, (n + 1) / 2, 2);
        std::vector<float> f(size_t(n) * m.network_dim());
        const double ms = median_ms([&] { m.patch_features(0, x.data(), n, f.data()); }, min_time);
        std::printf("result patch_features batch=%d images=%d median_ms=%.4f images_per_s=%.1f\n", n, n,
                    ms, n / ms * 1e3);
    }
    return 0;
}
