// The pipeline's entry points, C++ and C: every bad image view is refused
// with BadImage / DEEPID2_ERROR_IMAGE naming the problem, before any work;
// a face-less image gives no faces and NoFace / DEEPID2_ERROR_NO_FACE; the
// two APIs agree; results are the same from several threads at once.
//   deepid2_test_pipeline MODEL_DIR   (verifier, landmarks, yunet .safetensors)
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "deepid2/deepid2.h"
#include "deepid2/pipeline.h"

static int failures = 0;

static void expect(bool ok, const std::string& what) {
    if (!ok) {
        std::printf("FAIL %s (last C error: \"%s\")\n", what.c_str(), deepid2_last_error());
        ++failures;
    }
}

template <class F>
static std::string bad_image_message(F&& call) {
    try {
        call();
    } catch (const deepid2::BadImage& e) {
        return e.what();
    } catch (const std::exception& e) {
        return std::string("wrong exception: ") + e.what();
    }
    return "no exception";
}

int main(int argc, char** argv) {
    if (argc != 2) {
        std::fprintf(stderr, "usage: %s MODEL_DIR\n", argv[0]);
        return 2;
    }
    const std::string dir = argv[1];
    const deepid2::Pipeline p = deepid2::Pipeline::load_folder(dir);

    // noise: random size and bytes, no face
    std::mt19937 g(7);
    const int w = 60 + int(g() % 80), h = 50 + int(g() % 90);
    std::vector<uint8_t> px(size_t(w) * h * 3 + 17);
    for (auto& v : px) v = uint8_t(g());
    const deepid2::ImageView noise{px.data(), w, h, size_t(w) * 3, 3, deepid2::PixelOrder::RGB};
    expect(p.detect(noise).empty(), "noise has no face");
    bool no_face = false;
    try {
        p.verify(noise, noise);
    } catch (const deepid2::NoFace&) {
        no_face = true;
    }
    expect(no_face, "verify on noise throws NoFace");

    // bad views, each named
    struct Case {
        deepid2::ImageView v;
        const char* words;
    } cases[] = {
        {{nullptr, w, h, size_t(w) * 3, 3, deepid2::PixelOrder::RGB}, "null"},
        {{px.data(), 0, h, size_t(w) * 3, 3, deepid2::PixelOrder::RGB}, "positive"},
        {{px.data(), w, -3, size_t(w) * 3, 3, deepid2::PixelOrder::RGB}, "positive"},
        {{px.data(), w, h, size_t(w) * 3 - 1, 3, deepid2::PixelOrder::RGB}, "stride"},
        {{px.data(), w, h, size_t(w) * 3, 2, deepid2::PixelOrder::RGB}, "channels"},
        {{px.data(), w, h, size_t(w) * 3, 4, deepid2::PixelOrder::RGB}, "channels"},
        {{px.data(), 1 << 20, 1, size_t(3) << 20, 3, deepid2::PixelOrder::RGB}, "limit"},
    };
    for (const Case& c : cases) {
        const std::string m = bad_image_message([&] { p.detect(c.v); });
        expect(m.find(c.words) != std::string::npos, "detect refuses a bad view: '" + m + "'");
        const std::string m2 = bad_image_message([&] { p.verify(noise, c.v); });
        expect(m2.find(c.words) != std::string::npos, "verify refuses a bad view: '" + m2 + "'");
        deepid2_image ci{c.v.pixels, c.v.width, c.v.height, c.v.stride, c.v.channels, 0};
        int found = -1;
        expect(deepid2_pipeline_detect(nullptr, &ci, 0, nullptr, 0, &found) == DEEPID2_ERROR_ARGUMENT,
               "C: NULL pipeline");
    }

    // the C API: same answers and error codes
    deepid2_pipeline* cp = nullptr;
    expect(deepid2_pipeline_load((dir + "/verifier.safetensors").c_str(),
                                 (dir + "/landmarks.safetensors").c_str(),
                                 (dir + "/yunet.safetensors").c_str(), &cp) == DEEPID2_OK && cp,
           "C: load");
    expect(deepid2_pipeline_load((dir + "/none.safetensors").c_str(), nullptr, nullptr, &cp) ==
                   DEEPID2_ERROR_IO ||
               deepid2_pipeline_load((dir + "/none.safetensors").c_str(), nullptr, nullptr, &cp) ==
                   DEEPID2_ERROR_FORMAT,
           "C: a missing verifier is an error");
    expect(cp == nullptr, "C: a failed load leaves NULL");
    deepid2_pipeline_load((dir + "/verifier.safetensors").c_str(),
                          (dir + "/landmarks.safetensors").c_str(),
                          (dir + "/yunet.safetensors").c_str(), &cp);
    deepid2_image ci{px.data(), w, h, size_t(w) * 3, 3, 0};
    int found = -1;
    expect(deepid2_pipeline_detect(cp, &ci, DEEPID2_PICK_LARGEST, nullptr, 0, &found) == DEEPID2_OK &&
               found == 0,
           "C: no face in noise");
    expect(deepid2_pipeline_detect(cp, &ci, 7, nullptr, 0, &found) == DEEPID2_ERROR_ARGUMENT,
           "C: a bad pick");
    double score = 0;
    int same = -1;
    expect(deepid2_pipeline_verify(cp, &ci, &ci, 0, &score, &same) == DEEPID2_ERROR_NO_FACE &&
               std::strstr(deepid2_last_error(), "no face"),
           "C: verify on noise is DEEPID2_ERROR_NO_FACE");
    deepid2_image bad = ci;
    bad.stride = 3;
    expect(deepid2_pipeline_verify(cp, &ci, &bad, 0, &score, &same) == DEEPID2_ERROR_IMAGE &&
               std::strstr(deepid2_last_error(), "stride"),
           "C: a short stride is DEEPID2_ERROR_IMAGE");
    bad = ci;
    bad.bgr = 5;
    expect(deepid2_pipeline_detect(cp, &bad, 0, nullptr, 0, &found) == DEEPID2_ERROR_IMAGE,
           "C: bgr other than 0/1");

    // embed at fixed landmarks: C and C++ agree, and threads agree
    deepid2::Face f{};
    const float lm[10] = {52, 60, 78, 59, 66, 74, 55, 88, 77, 87};
    std::memcpy(f.landmarks, lm, sizeof lm);
    const std::vector<float> ref = p.embed(noise, f);
    std::vector<float> c_out(ref.size(), NAN);
    deepid2_face cf{};
    std::memcpy(cf.landmarks, lm, sizeof lm);
    expect(deepid2_pipeline_embed(cp, &ci, &cf, c_out.data(), c_out.size()) == DEEPID2_OK &&
               c_out == ref,
           "C: embed equals C++");
    expect(deepid2_pipeline_embed(cp, &ci, &cf, c_out.data(), c_out.size() - 1) ==
               DEEPID2_ERROR_ARGUMENT,
           "C: a short out buffer");
    std::vector<std::vector<float>> outs(4);
    std::vector<std::thread> threads;
    for (auto& o : outs) threads.emplace_back([&] { o = p.embed(noise, f); });
    for (auto& t : threads) t.join();
    for (const auto& o : outs) expect(o == ref, "embed from 4 threads at once equals one call");
    deepid2_pipeline_free(cp);

    if (failures) {
        std::printf("%d failures\n", failures);
        return 1;
    }
    std::printf("pipeline: all checks passed\n");
    return 0;
}
