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
    if (size < 8) return 0;
    const deepid2::Pipeline& p = pipeline();
    // header: width, height (0 is refused), channels (0, 2 refused), stride
    // slack (a stride below a row is refused), order, pick, a null view
    const int w = data[0] % 97, h = data[1] % 97, channels = data[2] % 4;
    const int slack = int(data[3] % 12) - 2;
    const bool bgr = data[4] & 1, center = data[4] & 2, null_pixels = data[5] == 255;
    const size_t stride = size_t(std::max(0, w * channels + slack));
    std::vector<uint8_t> pixels(std::max<size_t>(1, stride * size_t(h)));
    for (size_t k = 0; k < pixels.size(); ++k) pixels[k] = data[8 + k % (size - 8)];
    deepid2::ImageView v{null_pixels ? nullptr : pixels.data(), w, h, stride, channels,
                         bgr ? deepid2::PixelOrder::BGR : deepid2::PixelOrder::RGB};
    const deepid2::Pick pick = center ? deepid2::Pick::Center : deepid2::Pick::Largest;
    try {
        std::vector<deepid2::Face> faces = p.detect(v, pick);
        deepid2::Face f{};
        if (!faces.empty()) {
            f = faces[0];
            ++deepid2_fuzz_loaded;
        } else {  // landmarks from the bytes: huge, coincident or far outside the image
            for (int k = 0; k < 10; ++k) {
                int8_t b = int8_t(data[(6 + k) % size]);
                f.landmarks[k] = float(b) * (data[6] & 1 ? 1e6f : 0.5f);
            }
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
