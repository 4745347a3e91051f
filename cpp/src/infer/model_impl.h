// What a loaded verifier holds; shared by model_load.cpp (validation) and
// model.cpp (forward, projection, scoring).
#pragma once
#include <array>
#include <map>
#include <string>
#include <vector>

#include "deepid2/model.h"
#include "deepid2/ops.h"
#include "forward.h"

namespace deepid2 {

// One convolution of the stack, its shape for a batch of one (n is set per
// call), and whether a 2x2 max-pool follows (conv1..conv3).
struct ConvLayer {
    const char* name;
    LsconvShape shape;
    bool pooled;
    int out_h() const { return pooled ? shape.oh() / 2 : shape.oh(); }
    int out_w() const { return pooled ? shape.ow() / 2 : shape.ow(); }
    int64_t conv_size() const { return int64_t(shape.k) * shape.oh() * shape.ow(); }
    int64_t out_size() const { return int64_t(shape.k) * out_h() * out_w(); }
};

// One network's tensors as read from the file (packed into an
// infer::PackedNet at load, then dropped).
struct PatchNet {
    std::array<std::vector<float>, 4> conv_w, conv_b;
    std::vector<float> deepid_w, deepid_b;
};

// Patch network i's input and layer shapes (from its net config), where its
// patch pair sits in a face's input, and which plan runs it.
struct PatchShape {
    int C = 0, H = 0, W = 0;
    std::array<ConvLayer, 4> convs;
    int64_t offset = 0;  // floats from a face's start to this network's first patch
    int plan = 0;        // index into Model::Impl::plans

    int64_t size() const { return int64_t(C) * H * W; }  // one patch
    int64_t pool3_size() const { return convs[2].out_size(); }
    int64_t conv4_size() const { return convs[3].conv_size(); }
};

struct Model::Impl {
    int net_dim = 0;       // 160 in DeepID2; the same for every patch network
    int P = 0, D = 0, d = 0;
    std::vector<PatchShape> shapes;      // P of them
    int64_t face_size = 0;               // floats of one face's 2P patches
    bool uniform = true;                 // all patches C x H x W alike
    std::vector<infer::Plan> plans;      // one per distinct network shape
    std::vector<infer::PackedNet> nets;  // P of them, weights packed for the forward
    std::vector<float> pca_mean;  // D
    std::vector<float> pca_components;  // D x d
    std::vector<float> jb_A, jb_G;      // d x d
    double threshold = 0;
    std::vector<std::string> patch_names;
    std::string layout;
    std::map<std::string, std::string> metadata;

    const infer::Plan& plan(int i) const { return plans[size_t(shapes[size_t(i)].plan)]; }
};

// Validates the file's bytes and builds the Impl (model_load.cpp).
std::unique_ptr<Model::Impl> load_model_impl(const uint8_t* bytes, uint64_t size);

}  // namespace deepid2
