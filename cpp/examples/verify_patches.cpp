// Verifies two faces given as their aligned patches, with a trained model and
// no face pipeline (deepid2::Model alone; deepid2_verify takes photographs).
//   deepid2_verify_patches MODEL FACE_A FACE_B
// A face file holds the 2P aligned patches of one face, in the model's patch
// order [p0, p0 flipped, p1, p1 flipped, ...], patch i's each C_i x H_i x W_i
// (its network's input; planar, RGB for C_i = 3), raw with no header:
//   *.f32  float32 little-endian, already normalised as (u - 127.5) / 128
//   *.u8   uint8 pixel values u (normalised here)
// Prints "score S same|different (threshold T)".
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "deepid2/model.h"

static std::vector<float> read_face(const std::string& path, size_t floats) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw std::runtime_error("cannot open " + path);
    std::vector<char> raw((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    const bool u8 = path.size() > 3 && path.compare(path.size() - 3, 3, ".u8") == 0;
    const bool f32 = path.size() > 4 && path.compare(path.size() - 4, 4, ".f32") == 0;
    if (!u8 && !f32) throw std::runtime_error(path + ": name must end in .f32 or .u8");
    const size_t want = u8 ? floats : floats * sizeof(float);
    if (raw.size() != want)
        throw std::runtime_error(path + ": " + std::to_string(raw.size()) + " bytes, expected " +
                                 std::to_string(want) + " (" + std::to_string(floats) +
                                 " values: 2P patches, patch i of C_i x H_i x W_i)");
    std::vector<float> v(floats);
    if (f32) {
        std::memcpy(v.data(), raw.data(), want);
    } else {
        for (size_t i = 0; i < floats; ++i)
            v[i] = (float(static_cast<unsigned char>(raw[i])) - 127.5f) / 128.0f;
    }
    return v;
}

int main(int argc, char** argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s MODEL FACE_A FACE_B   (faces: .f32 or .u8 raw patches)\n",
                     argv[0]);
        return 2;
    }
    try {
        const deepid2::Model model = deepid2::Model::load(argv[1]);
        const size_t floats = model.input_size();
        const std::vector<float> a = read_face(argv[2], floats), b = read_face(argv[3], floats);
        std::vector<float> fa(model.feature_dim()), fb(model.feature_dim());
        model.features(a.data(), 1, fa.data());
        model.features(b.data(), 1, fb.data());
        const deepid2::Verdict v = model.verify(fa.data(), fb.data());
        std::printf("score %.6g %s (threshold %.6g)\n", v.score, v.same ? "same" : "different",
                    model.threshold());
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "deepid2_verify_patches: %s\n", e.what());
        return 1;
    }
}
