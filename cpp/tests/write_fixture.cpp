// Writes a random verifier model (tests/fixture.h) and, optionally, face
// patch files for the example: raw float32 (.f32) and uint8 (.u8) files of
// 2P patches, patch i of C_i x H_i x W_i (all alike unless --mixed).
//   deepid2_write_fixture MODEL [--deepid2 | --mixed] [--patches P] [--seed S]
//                         [--faces A.f32 B.f32] [--u8 A.u8]
// --mixed: format 2, three patch networks of different input shapes.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "fixture.h"

int main(int argc, char** argv) {
    if (argc < 2) {
        std::fprintf(stderr, "usage: %s MODEL [--deepid2 | --mixed] [--patches P] [--seed S] "
                             "[--faces A.f32 B.f32] [--u8 A.u8]\n", argv[0]);
        return 2;
    }
    try {
        fixture::Spec spec;
        std::string face_a, face_b, face_u8;
        for (int i = 2; i < argc; ++i) {
            const std::string a = argv[i];
            if (a == "--deepid2") spec = fixture::Spec::deepid2();
            else if (a == "--mixed") spec = fixture::Spec::mixed();
            else if (a == "--patches" && i + 1 < argc) spec.patches = std::atoi(argv[++i]);
            else if (a == "--seed" && i + 1 < argc) spec.seed = uint32_t(std::atoi(argv[++i]));
            else if (a == "--faces" && i + 2 < argc) face_a = argv[++i], face_b = argv[++i];
            else if (a == "--u8" && i + 1 < argc) face_u8 = argv[++i];
            else throw std::runtime_error("unknown argument " + a);
        }
        const std::string model = argv[1];
        auto parent = std::filesystem::path(model).parent_path();
        if (!parent.empty()) std::filesystem::create_directories(parent);
        const auto bytes = fixture::verifier_bytes(spec);
        fixture::write_file(model, bytes.data(), bytes.size());
        if (!face_a.empty()) {
            auto a = fixture::random_patches(spec, 1, spec.seed + 100);
            auto b = fixture::random_patches(spec, 1, spec.seed + 200);
            fixture::write_file(face_a, a.data(), a.size() * sizeof(float));
            fixture::write_file(face_b, b.data(), b.size() * sizeof(float));
        }
        if (!face_u8.empty()) {  // the same face as A, quantised: u = round(128 v + 127.5)
            auto a = fixture::random_patches(spec, 1, spec.seed + 100);
            std::vector<uint8_t> u(a.size());
            for (size_t i = 0; i < a.size(); ++i)
                u[i] = uint8_t(std::lround(std::min(255.0f, std::max(0.0f, a[i] * 128.0f + 127.5f))));
            fixture::write_file(face_u8, u.data(), u.size());
        }
        std::printf("wrote %s (%zu bytes)\n", model.c_str(), bytes.size());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "deepid2_write_fixture: %s\n", e.what());
        return 1;
    }
}
