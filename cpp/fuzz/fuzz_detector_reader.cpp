// Fuzz target of the detector's model reader: a mutated yunet.safetensors
// must load or be refused with ModelFormatError; one that loads must run
// detect() on a small image. (The fuzz build skips the sha256 check so that
// mutated weights and graphs reach the reader and the forward behind it.)
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "../src/face/yunet.h"

long deepid2_fuzz_loaded = 0;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const deepid2::face::YuNet net = deepid2::face::YuNet::load_memory(data, size);
        deepid2::face::Image img(40, 48, 3);
        for (size_t k = 0; k < img.px.size(); ++k) img.px[k] = uint8_t(k * 37 + size);
        net.detect(img);
        ++deepid2_fuzz_loaded;
    } catch (const deepid2::ModelFormatError&) {
    } catch (const std::bad_alloc&) {
    } catch (const std::exception& e) {  // anything else is a reader bug
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        std::abort();
    }
    return 0;
}
