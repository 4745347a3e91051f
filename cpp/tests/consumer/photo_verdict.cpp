// The README's "Use from C++" program, built by ctest against an installed tree.
#include <cstdio>
#include <deepid2/pipeline.h>
#include "image_file.h"  // JPEG / PNG (cpp/examples): the library itself decodes no files

int main(int argc, char** argv) try {
    if (argc != 3) return std::fprintf(stderr, "usage: photo_verdict A.jpg B.jpg\n"), 2;
    auto a = deepid2_examples::read_image_file(argv[1]), b = deepid2_examples::read_image_file(argv[2]);
    const auto pipeline = deepid2::Pipeline::load();  // the models installed with the library
    const deepid2::Verdict v = pipeline.verify(a.view(), b.view());
    std::printf("%s: score %.2f\n", v.same ? "same person" : "different people", v.score);
} catch (const std::exception& e) {  // unreadable photo, no face, missing models
    return std::fprintf(stderr, "%s\n", e.what()), 2;
}
