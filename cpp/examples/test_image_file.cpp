// Tests of the examples' image decoder (image_file.h) on the files in
// images/ (written by images/make_images.py):
//   - every PNG colour type and depth, and grey, colour and progressive JPEGs,
//     decode to the pattern (PNG exactly, JPEG within a few levels: its
//     colour is subsampled);
//   - missing, empty, foreign, truncated and over-sized inputs are refused
//     with ImageFileError and a message saying why;
//   - mutated copies of every file (byte changes, truncation, insertion) decode
//     or are refused, never anything else: a small deterministic fuzzer. Built
//     with -fsanitize=address,undefined it also finds memory errors.
//   deepid2_test_image_file IMAGES_DIR [--fuzz-seconds S]   (default 2)
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <random>
#include <string>
#include <vector>

#include "image_file.h"

using deepid2_examples::ImageFile;
using deepid2_examples::ImageFileError;

static int failures = 0;

#define CHECK(cond, ...)                                       \
    do {                                                       \
        if (!(cond)) {                                         \
            std::printf("FAIL %s:%d: ", __FILE__, __LINE__);   \
            std::printf(__VA_ARGS__);                          \
            std::printf("\n");                                 \
            ++failures;                                        \
        }                                                      \
    } while (0)

// make_images.py's pattern(): R G B at (x, y)
static int pattern(int x, int y, int c) {
    return c == 0 ? 40 + 8 * x : c == 1 ? 30 + 10 * y : 200 - 4 * x - 3 * y;
}

static std::vector<uint8_t> file_bytes(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return std::vector<uint8_t>((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
}

// The largest |decoded - expected| over all pixels; grey files hold the green channel.
static int worst_error(const ImageFile& img, bool grey) {
    int worst = 0;
    for (int y = 0; y < img.height; ++y)
        for (int x = 0; x < img.width; ++x)
            for (int c = 0; c < 3; ++c) {
                const int want = pattern(x, y, grey ? 1 : c);
                worst = std::max(worst, std::abs(img.rgb[(size_t(y) * img.width + x) * 3 + c] - want));
            }
    return worst;
}

static std::string error_of(const std::vector<uint8_t>& bytes) {
    try {
        deepid2_examples::decode_image(bytes.data(), bytes.size(), "x");
        return "";
    } catch (const ImageFileError& e) {
        return e.what();
    }
}

static bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

static void test_good_files(const std::string& dir) {
    struct Case { const char* name; int width; bool grey; int tolerance; };
    const Case cases[] = {
        {"rgb8.png", 24, false, 0},       {"grey8.png", 24, true, 0},
        {"rgba8.png", 24, false, 0},      {"grey_alpha8.png", 24, true, 0},
        {"rgb16.png", 24, false, 0},      {"grey_alpha16.png", 24, true, 0},
        {"palette8.png", 16, false, 0},   {"rgb.jpg", 24, false, 10},
        {"grey.jpg", 24, true, 3},        {"progressive.jpg", 24, false, 10},
    };
    for (const Case& c : cases) {
        try {
            const ImageFile img = deepid2_examples::read_image_file(dir + "/" + c.name);
            CHECK(img.width == c.width && img.height == 16, "%s: %d x %d", c.name, img.width, img.height);
            CHECK(img.rgb.size() == size_t(img.width) * img.height * 3, "%s: %zu bytes", c.name,
                  img.rgb.size());
            const int err = worst_error(img, c.grey);
            CHECK(err <= c.tolerance, "%s: a pixel is %d levels off (tolerance %d)", c.name, err,
                  c.tolerance);
            const deepid2::ImageView v = img.view();
            CHECK(v.stride == size_t(img.width) * 3 && v.channels == 3, "%s: view", c.name);
        } catch (const std::exception& e) {
            CHECK(false, "%s: %s", c.name, e.what());
        }
    }
}

static void test_refusals(const std::string& dir) {
    try {
        deepid2_examples::read_image_file(dir + "/no_such_file.jpg");
        CHECK(false, "a missing file decoded");
    } catch (const ImageFileError& e) {
        CHECK(contains(e.what(), "cannot read") && contains(e.what(), "no_such_file.jpg"), "%s", e.what());
    }
    try {
        deepid2_examples::read_image_file(dir);  // a folder
        CHECK(false, "a folder decoded");
    } catch (const ImageFileError& e) {
        CHECK(contains(e.what(), "cannot read"), "%s", e.what());
    }
    CHECK(contains(error_of({}), "empty file"), "%s", error_of({}).c_str());
    const std::vector<uint8_t> text = {'h', 'e', 'l', 'l', 'o'};
    CHECK(contains(error_of(text), "not a JPEG or PNG"), "%s", error_of(text).c_str());

    const std::string huge = error_of(file_bytes(dir + "/huge.png"));
    CHECK(contains(huge, "8000 x 8000 pixels is more than the 50-megapixel limit"), "%s", huge.c_str());
    // the same for a JPEG: its frame header (SOF0 or SOF2) patched to 10000 x 10000
    for (const char* name : {"rgb.jpg", "progressive.jpg"}) {
        std::vector<uint8_t> jpg = file_bytes(dir + "/" + name);
        for (size_t i = 0; i + 9 < jpg.size(); ++i)
            if (jpg[i] == 0xFF && (jpg[i + 1] == 0xC0 || jpg[i + 1] == 0xC2)) {
                jpg[i + 5] = jpg[i + 7] = 10000 >> 8;  // height, width (big-endian)
                jpg[i + 6] = jpg[i + 8] = 10000 & 0xFF;
                break;
            }
        const std::string e = error_of(jpg);
        CHECK(contains(e, "10000 x 10000 pixels is more than"), "%s: %s", name, e.c_str());
    }
    // cut in half: the image data ends early
    for (const char* name : {"rgb.jpg", "progressive.jpg", "rgb8.png", "palette8.png"}) {
        std::vector<uint8_t> b = file_bytes(dir + "/" + name);
        b.resize(b.size() / 2);
        const std::string e = error_of(b);
        CHECK(contains(e, "truncated"), "%s cut in half: \"%s\"", name, e.c_str());
    }
    // garbage in place of a JPEG's entropy-coded data: an error or a whole image
    std::vector<uint8_t> jpg = file_bytes(dir + "/rgb.jpg");
    for (size_t i = jpg.size() / 2; i < jpg.size() - 2; ++i) jpg[i] = 0xFF;
    error_of(jpg);
}

// Mutated copies of every file: each decodes (within the pixel limit) or is
// refused with ImageFileError. Deterministic (fixed seed).
static void fuzz(const std::string& dir, double seconds) {
    const char* seeds[] = {"rgb8.png", "grey8.png", "rgba8.png", "grey_alpha8.png", "rgb16.png",
                           "grey_alpha16.png", "palette8.png", "rgb.jpg", "grey.jpg", "progressive.jpg"};
    std::vector<std::vector<uint8_t>> inputs;
    for (const char* s : seeds) inputs.push_back(file_bytes(dir + "/" + s));
    std::mt19937 rng(1);
    long runs = 0, decoded = 0;
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
        std::vector<uint8_t> b = inputs[rng() % inputs.size()];
        const int mutations = 1 + int(rng() % 4);
        for (int m = 0; m < mutations && !b.empty(); ++m) {
            const size_t at = rng() % b.size();
            switch (rng() % 5) {
                case 0: b[at] = uint8_t(rng()); break;
                case 1: b[at] ^= uint8_t(1u << (rng() % 8)); break;
                case 2: b.resize(at); break;
                case 3: b.insert(b.begin() + long(at), uint8_t(rng())); break;
                case 4: b.erase(b.begin() + long(at)); break;
            }
        }
        ++runs;
        try {
            const ImageFile img = deepid2_examples::decode_image(b.data(), b.size(), "fuzz");
            CHECK(img.width > 0 && img.height > 0 &&
                      img.rgb.size() == size_t(img.width) * img.height * 3 &&
                      (long long)img.width * img.height <= deepid2_examples::kMaxImagePixels,
                  "fuzz run %ld: decoded to %d x %d, %zu bytes", runs, img.width, img.height,
                  img.rgb.size());
            ++decoded;
        } catch (const ImageFileError&) {
        } catch (const std::exception& e) {
            CHECK(false, "fuzz run %ld: %s", runs, e.what());
        }
    }
    std::printf("fuzz: %ld mutated inputs, %ld decoded, the rest refused\n", runs, decoded);
}

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s IMAGES_DIR [--fuzz-seconds S]\n", argv[0]);
        return 2;
    }
    double seconds = 2.0;
    for (int i = 2; i + 1 < argc; i += 2)
        if (std::string(argv[i]) == "--fuzz-seconds") seconds = std::atof(argv[i + 1]);
    test_good_files(argv[1]);
    test_refusals(argv[1]);
    fuzz(argv[1], seconds);
    std::printf(failures ? "%d FAILED\n" : "all passed\n", failures);
    return failures ? 1 : 0;
}
