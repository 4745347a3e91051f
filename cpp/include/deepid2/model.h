// deepid2::Model: a trained DeepID2 verifier loaded from a
// "deepid2-verifier/1" file (docs/verifier_model.md), forward only.
//
//   auto model = deepid2::Model::load("verifier.safetensors");
//   std::vector<float> fa(model.feature_dim()), fb(model.feature_dim());
//   model.features(face_a_patches, 1, fa.data());   // 2P patches of C x H x W
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

    // Raw DeepID2 vectors of n faces. patches: n x (2P) x C x H x W float32,
    // each face's patches in file order [p0, p0 flipped, p1, p1 flipped, ...],
    // values (u - 127.5) / 128. out: n x feature_dim(), fully overwritten.
    void features(const float* patches, int n, float* out) const;

    // One patch network alone: x: n x C x H x W -> out: n x network_dim().
    void patch_features(int patch, const float* x, int n, float* out) const;

    // PCA projection z = (x - mean) @ components: x has feature_dim(), z has
    // projected_dim() entries.
    void project(const float* feature, double* z) const;
    // r(z1, z2) = z1'A z1 + z2'A z2 - 2 z1'G z2 on projected vectors.
    double score_projected(const double* z1, const double* z2) const;
    // Both of the above on raw feature vectors, and the decision.
    Verdict verify(const float* feature_a, const float* feature_b) const;

    int patches() const;         // P, patch networks (each face has 2P patches)
    int channels() const;        // C
    int height() const;          // H
    int width() const;           // W
    int network_dim() const;     // one network's output, 160 in DeepID2
    int feature_dim() const;     // D = 2P x network_dim()
    int projected_dim() const;   // d, after PCA
    double threshold() const;    // "same" iff score >= threshold
    const std::vector<std::string>& patch_names() const;
    const std::string& layout() const;
    // Every "__metadata__" string of the file, e.g. "net" or provenance keys.
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
