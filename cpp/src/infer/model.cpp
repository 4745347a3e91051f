// Model: reading the file, the forward of the patch networks (forward.cpp:
// the ops' arithmetic with weights packed at load), PCA projection and the
// Joint Bayesian score.
#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <stdexcept>

#include "model_file.h"
#include "model_impl.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace deepid2 {

namespace {

constexpr uint64_t kMaxFileBytes = uint64_t(2) << 30;

void require(bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(what);
}

int threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// Where image j of network i is read and its network_dim() outputs written:
// images come in pairs (a patch and its flipped partner), pairs `x_face`
// floats apart; network i's pair starts x_net[i] floats into a face (its
// patches' sizes differ between networks in a mixed model).
struct ImageMap {
    const float* x;
    int64_t x_face;
    const int64_t* x_net;  // per network, indexed by i
    const Model::Impl& m;
    float* out;
    int64_t o_face, o_net, F;
    const float* in(int i, int j) const {
        return x + (j / 2) * x_face + x_net[i] + (j % 2) * m.shapes[size_t(i)].size();
    }
    float* dst(int i, int j) const { return out + (j / 2) * o_face + i * o_net + (j % 2) * F; }
};

// Networks [net0, net0 + nets) on `images` images each. One image alone is
// split over the threads layer by layer; otherwise blocks of up to
// kMaxBlock images of one network are tasks for one thread each, at least
// as many tasks as threads where there are enough images.
void run_networks(const Model::Impl& m, int net0, int nets, int images, const ImageMap& map) {
    const int T = threads();
    if (nets == 1 && images == 1 && T > 1) {
        infer::forward_split(m.plan(net0), m.nets[net0], map.in(net0, 0), map.dst(net0, 0), T);
        return;
    }
    const int per_net = std::max(1, (T + nets - 1) / nets);  // tasks wanted per network
    const int nb = std::max(1, std::min(infer::kMaxBlock, (images + per_net - 1) / per_net));
    const int blocks = (images + nb - 1) / nb, tasks = nets * blocks;
    auto run = [&](int t) {
        const int i = net0 + t / blocks, j0 = (t % blocks) * nb, k = std::min(nb, images - j0);
        const float* xs[infer::kMaxBlock];
        float* outs[infer::kMaxBlock];
        for (int j = 0; j < k; ++j) xs[j] = map.in(i, j0 + j), outs[j] = map.dst(i, j0 + j);
        infer::forward_block(m.plan(i), m.nets[i], k, xs, outs);
    };
    if (tasks == 1 || T == 1) {
        for (int t = 0; t < tasks; ++t) run(t);
        return;
    }
    // Errors may not leave the parallel region: the first one is carried out.
    std::exception_ptr error;
#pragma omp parallel for schedule(dynamic)
    for (int t = 0; t < tasks; ++t) {
        try {
            run(t);
        } catch (...) {
#pragma omp critical(deepid2_features_error)
            if (!error) error = std::current_exception();
        }
    }
    if (error) std::rethrow_exception(error);
}

}  // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& path) {
    return load_model_file(path, kMaxFileBytes, "a verifier model",
                           [](const uint8_t* b, size_t n) { return Model(load_model_impl(b, n)); });
}

Model Model::load_memory(const void* bytes, size_t size) {
    if (!bytes && size) throw std::invalid_argument("Model::load_memory: bytes is null");
    if (uint64_t(size) > kMaxFileBytes) throw ModelFormatError("verifier model: too large");
    return Model(load_model_impl(static_cast<const uint8_t*>(bytes), size));
}

void Model::patch_features(int patch, const float* x, int n, float* out) const {
    const Impl& m = *impl_;
    require(patch >= 0 && patch < m.P, "Model::patch_features: patch index out of range");
    require(n >= 0, "Model::patch_features: n must be >= 0");
    if (n == 0) return;
    require(x && out, "Model::patch_features: x or out is null");
    const int64_t ps = m.shapes[size_t(patch)].size(), F = m.net_dim;
    std::vector<int64_t> at(size_t(m.P), 0);  // x holds this network's pairs only
    run_networks(m, patch, 1, n, ImageMap{x, 2 * ps, at.data(), m, out, 2 * F, 0, F});
}

void Model::features(const float* patches, int n, float* out) const {
    const Impl& m = *impl_;
    require(n >= 0, "Model::features: n must be >= 0");
    if (n == 0) return;
    require(patches && out, "Model::features: patches or out is null");
    require(n <= std::numeric_limits<int>::max() / 2, "Model::features: n is too large");
    const int64_t F = m.net_dim;
    std::vector<int64_t> at(size_t(m.P));
    for (int i = 0; i < m.P; ++i) at[size_t(i)] = m.shapes[size_t(i)].offset;
    // network i sees patches 2i, 2i+1 of each face
    run_networks(m, 0, m.P, 2 * n, ImageMap{patches, m.face_size, at.data(), m, out, m.D, 2 * F, F});
}

void Model::project(const float* feature, double* z) const {
    const Impl& m = *impl_;
    require(feature && z, "Model::project: feature or z is null");
    std::fill(z, z + m.d, 0.0);
    for (int k = 0; k < m.D; ++k) {
        const double v = double(feature[k]) - m.pca_mean[k];
        const float* row = m.pca_components.data() + int64_t(k) * m.d;
        for (int j = 0; j < m.d; ++j) z[j] += v * row[j];
    }
}

double Model::score_projected(const double* z1, const double* z2) const {
    const Impl& m = *impl_;
    require(z1 && z2, "Model::score_projected: z1 or z2 is null");
    double r = 0;
    for (int i = 0; i < m.d; ++i) {
        const float* a = m.jb_A.data() + int64_t(i) * m.d;
        const float* g = m.jb_G.data() + int64_t(i) * m.d;
        double a1 = 0, a2 = 0, g12 = 0;
        for (int j = 0; j < m.d; ++j) {
            a1 += a[j] * z1[j];
            a2 += a[j] * z2[j];
            g12 += g[j] * z2[j];
        }
        r += z1[i] * a1 + z2[i] * a2 - 2 * z1[i] * g12;
    }
    return r;
}

Verdict Model::verify(const float* feature_a, const float* feature_b) const {
    require(feature_a && feature_b, "Model::verify: a feature pointer is null");
    std::vector<double> z(2 * size_t(impl_->d));
    project(feature_a, z.data());
    project(feature_b, z.data() + impl_->d);
    const double s = score_projected(z.data(), z.data() + impl_->d);
    return {s, s >= impl_->threshold};
}

int Model::patches() const { return impl_->P; }

// One C, H, W for the whole model only where all patches share it: a caller
// sizing buffers as 2P x C x H x W must not get patch 0's and overrun.
static const PatchShape& uniform_shape(const Model::Impl& m, const char* fn) {
    if (!m.uniform)
        throw std::logic_error(std::string("Model::") + fn + ": the patches of this model differ "
                               "in shape; use patch_" + fn + "(i) and input_size()");
    return m.shapes[0];
}
int Model::channels() const { return uniform_shape(*impl_, "channels").C; }
int Model::height() const { return uniform_shape(*impl_, "height").H; }
int Model::width() const { return uniform_shape(*impl_, "width").W; }
bool Model::uniform_patches() const { return impl_->uniform; }

static const PatchShape& shape_of(const Model::Impl& m, int patch, const char* fn) {
    require(patch >= 0 && patch < m.P, fn);
    return m.shapes[size_t(patch)];
}
int Model::patch_channels(int patch) const {
    return shape_of(*impl_, patch, "Model::patch_channels: patch index out of range").C;
}
int Model::patch_height(int patch) const {
    return shape_of(*impl_, patch, "Model::patch_height: patch index out of range").H;
}
int Model::patch_width(int patch) const {
    return shape_of(*impl_, patch, "Model::patch_width: patch index out of range").W;
}
size_t Model::input_size() const { return size_t(impl_->face_size); }
int Model::network_dim() const { return impl_->net_dim; }
int Model::feature_dim() const { return impl_->D; }
int Model::projected_dim() const { return impl_->d; }
double Model::threshold() const { return impl_->threshold; }
const std::vector<std::string>& Model::patch_names() const { return impl_->patch_names; }
const std::string& Model::layout() const { return impl_->layout; }
const std::string& Model::metadata(const std::string& key) const {
    static const std::string empty;
    auto it = impl_->metadata.find(key);
    return it == impl_->metadata.end() ? empty : it->second;
}

}  // namespace deepid2
