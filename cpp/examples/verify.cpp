// Are two photographs of the same person? The whole pipeline in C++, no Python.
//   deepid2_verify A.jpg B.jpg [--models DIR]
// Prints "same person: score S (threshold T)" or "different people: ...".
// DIR holds verifier.safetensors, landmarks.safetensors and yunet.safetensors;
// without it, the installed models (or $DEEPID2_MODELS).
// Exit status 0 with a verdict; 2 with one line on stderr for bad arguments,
// an unreadable image, a photo without a face or bad model files.
#include <cstdio>
#include <string>
#include <vector>

#include "deepid2/pipeline.h"
#include "image_file.h"

static int usage(const char* argv0) {
    std::fprintf(stderr, "usage: %s A.jpg B.jpg [--models DIR]   (JPEG or PNG photographs)\n", argv0);
    return 2;
}

// The verdict, or the reason for none; the README quotes this function.
static int verify(const std::string& photo_a, const std::string& photo_b, const std::string& models) {
    const deepid2_examples::ImageFile a = deepid2_examples::read_image_file(photo_a);
    const deepid2_examples::ImageFile b = deepid2_examples::read_image_file(photo_b);
    const deepid2::Pipeline pipeline =
        models.empty() ? deepid2::Pipeline::load() : deepid2::Pipeline::load_folder(models);
    try {
        const deepid2::Verdict v = pipeline.verify(a.view(), b.view());
        std::printf("%s: score %.2f (threshold %.2f)\n", v.same ? "same person" : "different people",
                    v.score, pipeline.model().threshold());
        return 0;
    } catch (const deepid2::NoFace&) {  // say which photo has none
        const bool in_a = pipeline.detect(a.view()).empty();
        throw deepid2::NoFace("no face found in " + (in_a ? photo_a : photo_b));
    }
}

int main(int argc, char** argv) {
    std::vector<std::string> photos;
    std::string models;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--models" && i + 1 < argc) models = argv[++i];
        else if (arg.rfind("-", 0) == 0) return usage(argv[0]);
        else photos.push_back(arg);
    }
    if (photos.size() != 2) return usage(argv[0]);
    try {
        return verify(photos[0], photos[1], models);
    } catch (const std::exception& e) {  // ImageFileError, NoFace, BadImage, ModelIOError, ...
        std::fprintf(stderr, "deepid2_verify: %s\n", e.what());
        return 2;
    }
}
