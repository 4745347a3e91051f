// Fuzz target of the pipeline's entry points: detect, embed and verify on
// image views of random sizes, strides, channel counts, byte orders and
// pixels, and embed on random landmarks. A view that is not an image must be
// refused with BadImage, an image without a face with NoFace (verify) or no
// faces (detect); nothing else may happen.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "deepid2/pipeline.h"

long deepid2_fuzz_loaded = 0;

namespace {

const deepid2::Pipeline& pipeline() {
    static const deepid2::Pipeline p = deepid2::Pipeline::load_folder(DEEPID2_FUZZ_MODELS);
    return p;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size == 0) return 0;
    const deepid2::Pipeline& p = pipeline();
    // the view's shape from a hash of every byte, so that any mutation moves
    // it: width, height (1 in 16 is 0: refused), channels (0..3: 0 and 2
    // refused), stride slack (-2..9: below a row is refused), order, pick, and
    // 1 in 64 a null view
    uint64_t hsh = 1469598103934665603ull;
    for (size_t k = 0; k < size; ++k) hsh = (hsh ^ data[k]) * 1099511628211ull;
    auto take = [&](uint64_t n) { const uint64_t v = hsh % n; hsh = hsh / n * 2654435761ull + v; return int(v); };
    const int w = take(16) ? 1 + take(96) : 0, h = take(16) ? 1 + take(96) : 0;
    const int channels = take(4), slack = take(12) - 2;
    const bool bgr = take(2), center = take(2), null_pixels = take(64) == 0;
    const size_t stride = size_t(std::max(0, w * channels + slack));
    std::vector<uint8_t> pixels(std::max<size_t>(1, stride * size_t(h)));
    for (size_t k = 0; k < pixels.size(); ++k) pixels[k] = data[k % size];
    deepid2::ImageView v{null_pixels ? nullptr : pixels.data(), w, h, stride, channels,
                         bgr ? deepid2::PixelOrder::BGR : deepid2::PixelOrder::RGB};
    const deepid2::Pick pick = center ? deepid2::Pick::Center : deepid2::Pick::Largest;
    try {
        std::vector<deepid2::Face> faces = p.detect(v, pick);
        ++deepid2_fuzz_loaded;  // a view taken as an image
        deepid2::Face f{};
        if (!faces.empty()) {
            f = faces[0];
        } else {  // landmarks from the bytes: huge, coincident or far outside the image
            const float scale = take(2) ? 1e6f : 0.5f;
            for (int k = 0; k < 10; ++k) f.landmarks[k] = float(int8_t(data[k % size])) * scale;
        }
        try {
            std::vector<float> feat = p.embed(v, f);
            for (float x : feat)
                if (!std::isfinite(x)) std::abort();
        } catch (const std::invalid_argument&) {  // degenerate landmarks
        }
        try {
            p.verify(v, v, pick);
        } catch (const deepid2::NoFace&) {
        }
    } catch (const deepid2::BadImage&) {
    } catch (const std::bad_alloc&) {
    } catch (const std::exception& e) {
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        std::abort();
    }
    return 0;
}
