// Fuzz target of the model reader (libFuzzer's entry point; the mutation
// driver in mutation_driver.cpp calls it the same way where libFuzzer is
// missing). Any input must either load or be refused with ModelFormatError;
// a model that loads must run features() and verify() on a face.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <vector>

#include "deepid2/model.h"

// Inputs that loaded (read by the mutation driver's summary).
long deepid2_fuzz_loaded = 0;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const deepid2::Model m = deepid2::Model::load_memory(data, size);
        // Inputs this small hold small networks, so one forward is cheap.
        std::vector<float> x(m.input_size(), 0.5f), f(size_t(m.feature_dim()));
        m.features(x.data(), 1, f.data());
        const deepid2::Verdict v = m.verify(f.data(), f.data());
        if (v.same != (v.score >= m.threshold())) std::abort();
        ++deepid2_fuzz_loaded;
    } catch (const deepid2::ModelFormatError&) {
    } catch (const std::bad_alloc&) {
    } catch (const std::exception& e) {  // anything else is a reader bug
        std::fprintf(stderr, "unexpected exception: %s\n", e.what());
        std::abort();
    }
    return 0;
}
