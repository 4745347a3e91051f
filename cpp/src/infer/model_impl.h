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

struct Model::Impl {
    int C = 0, H = 0, W = 0;
    int net_dim = 0;       // 160 in DeepID2
    int P = 0, D = 0, d = 0;
    std::array<ConvLayer, 4> convs;
    infer::Plan plan;                    // the forward's shapes and index tables
    std::vector<infer::PackedNet> nets;  // P of them, weights packed for the forward
    std::vector<float> pca_mean;  // D
    std::vector<float> pca_components;  // D x d
    std::vector<float> jb_A, jb_G;      // d x d
    double threshold = 0;
    std::vector<std::string> patch_names;
    std::string layout;
    std::map<std::string, std::string> metadata;

    int64_t patch_size() const { return int64_t(C) * H * W; }
    int64_t pool3_size() const { return convs[2].out_size(); }
    int64_t conv4_size() const { return convs[3].conv_size(); }
};

// Validates the file's bytes and builds the Impl (model_load.cpp).
std::unique_ptr<Model::Impl> load_model_impl(const uint8_t* bytes, uint64_t size);

}  // namespace deepid2
