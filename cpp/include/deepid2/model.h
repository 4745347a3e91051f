// deepid2::Model: a trained DeepID2 verifier loaded from a
// "deepid2-verifier/1" or "/2" file (docs/verifier_model.md), forward only.
// Each of the P patch networks has its own input shape C_i x H_i x W_i (all
// alike in format 1; format 2 may mix, e.g. 55x47 RGB and 47x47 gray).
//
//   auto model = deepid2::Model::load("verifier.safetensors");
//   std::vector<float> fa(model.feature_dim()), fb(model.feature_dim());
//   model.features(face_a_patches, 1, fa.data());   // input_size() floats
//   model.features(face_b_patches, 1, fb.data());
//   deepid2::Verdict v = model.verify(fa.data(), fb.data());
//
// Errors: a file that cannot be read throws ModelIOError; a file that is not
// a valid verifier (truncated, corrupt, wrong shapes) throws ModelFormatError
// naming the problem; bad arguments throw std::invalid_argument.
// A loaded Model is immutable: features() and verify() may run concurrently
// from several threads. features() uses OpenMP threads inside.
#pragma once
#include <cstddef>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace deepid2 {

struct ModelIOError : std::runtime_error {
    using std::runtime_error::runtime_error;
};
struct ModelFormatError : std::runtime_error {
    using std::runtime_error::runtime_error;
};

struct Verdict {
    double score;  // Joint Bayesian log-likelihood ratio r(z1, z2)
    bool same;     // score >= threshold()
};

class Model {
public:
    static Model load(const std::string& path);
    // The same from a file's bytes already in memory (copied; need not outlive).
    static Model load_memory(const void* bytes, size_t size);

    // Raw DeepID2 vectors of n faces. patches: n faces of input_size()
    // float32 each; a face's patches in file order [p0, p0 flipped, p1,
    // p1 flipped, ...], patch i's two of C_i x H_i x W_i floats each, so a
    // face is sum_i 2 C_i H_i W_i floats (n x 2P x C x H x W when all alike).
    // Values (u - 127.5) / 128. out: n x feature_dim(), fully overwritten.
    void features(const float* patches, int n, float* out) const;

    // One patch network alone: x: n x C_i x H_i x W_i (i = patch) -> out:
    // n x network_dim().
    void patch_features(int patch, const float* x, int n, float* out) const;

    // PCA projection z = (x - mean) @ components: x has feature_dim(), z has
    // projected_dim() entries.
    void project(const float* feature, double* z) const;
    // r(z1, z2) = z1'A z1 + z2'A z2 - 2 z1'G z2 on projected vectors.
    double score_projected(const double* z1, const double* z2) const;
    // Both of the above on raw feature vectors, and the decision.
    Verdict verify(const float* feature_a, const float* feature_b) const;

    int patches() const;         // P, patch networks (each face has 2P patches)
    // Patch network i's input, C_i x H_i x W_i; std::invalid_argument for i
    // outside 0..P-1.
    int patch_channels(int patch) const;
    int patch_height(int patch) const;
    int patch_width(int patch) const;
    size_t input_size() const;   // floats of one face: sum_i 2 C_i H_i W_i
    bool uniform_patches() const;  // all patches of one C x H x W (always in format 1)
    // The C, H, W all patches share. Where they differ (format 2) these throw
    // std::logic_error rather than answer for patch 0, so that code sizing
    // buffers as 2P x C x H x W fails loudly instead of reading past them.
    int channels() const;        // C
    int height() const;          // H
    int width() const;           // W
    int network_dim() const;     // one network's output, 160 in DeepID2
    int feature_dim() const;     // D = 2P x network_dim()
    int projected_dim() const;   // d, after PCA
    double threshold() const;    // "same" iff score >= threshold
    const std::vector<std::string>& patch_names() const;
    const std::string& layout() const;
    // Every "__metadata__" string of the file, e.g. "net" / "nets" or provenance keys.
    const std::string& metadata(const std::string& key) const;  // "" when absent

    Model(Model&&) noexcept;
    Model& operator=(Model&&) noexcept;
    ~Model();

    struct Impl;  // internal (src/infer/model_impl.h)

private:
    explicit Model(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace deepid2
