// Model: reading the file, the forward of the patch networks with the
// library's ops (lsconv + ReLU, 2x2 max-pool, dense over [pool3, conv4]),
// PCA projection and the Joint Bayesian score.
#include <algorithm>
#include <cstring>
#include <exception>
#include <fstream>
#include <limits>

#include "model_impl.h"

#ifdef _OPENMP
#include <omp.h>
#endif

namespace deepid2 {

namespace {

constexpr uint64_t kMaxFileBytes = uint64_t(2) << 30;
constexpr int64_t kChunkBytes = 32 << 20;  // activations of one forward call, about
constexpr int kMaxChunk = 64;               // patches per forward call
// Below this many patches per network, whole-patch tasks run in parallel
// (each op single-threaded): at batch 1 the ops alone cannot keep two
// threads busy, and weight packing per call would be paid on one thread.
constexpr int kTaskParallelBelow = 16;

void require(bool ok, const char* what) {
    if (!ok) throw std::invalid_argument(what);
}

// Activation buffers live as long as the thread, so repeated small calls do
// not fault fresh pages in every time.
template <class T, int Slot>
T* thread_buffer(size_t n) {
    static thread_local std::vector<T> buf;
    if (buf.size() < n) buf.resize(n);
    return buf.data();
}

int64_t activations_per_patch(const Model::Impl& m) {
    int64_t a = 0;
    for (const ConvLayer& c : m.convs) a += c.conv_size() + (c.pooled ? c.out_size() : 0);
    return a;
}

int chunk_patches(const Model::Impl& m) {
    const int64_t per = activations_per_patch(m) * int64_t(sizeof(float));
    return int(std::max<int64_t>(1, std::min<int64_t>(kMaxChunk, kChunkBytes / per)));
}

// Network `net` on n patches x (n x C x H x W) -> out (n x net_dim).
void forward_net(const Model::Impl& m, const PatchNet& net, const float* x, int n, float* out) {
    float* act = thread_buffer<float, 0>(size_t(activations_per_patch(m) * n));
    int64_t max_plane = 0;
    for (const ConvLayer& c : m.convs) max_plane = std::max(max_plane, c.out_size());
    int32_t* argmax = thread_buffer<int32_t, 0>(size_t(max_plane * n));
    const float* in = x;
    const float* conv4 = nullptr;
    for (int l = 0; l < 4; ++l) {
        const ConvLayer& c = m.convs[l];
        LsconvShape s = c.shape;
        s.n = n;
        float* y = act;
        act += c.conv_size() * n;
        lsconv_forward(s, in, net.conv_w[l].data(), net.conv_b[l].data(), true, y);
        if (c.pooled) {
            float* p = act;
            act += c.out_size() * n;
            maxpool_forward(n, s.k, s.oh(), s.ow(), 2, y, p, argmax);
            in = p;
        } else {
            conv4 = y;
        }
    }
    // deepid = relu([pool3, conv4] W + b); `in` is pool3 here
    const int dims[2] = {int(m.pool3_size()), int(m.conv4_size())};
    const float* xs[2] = {in, conv4};
    dense_forward(n, 2, dims, xs, m.net_dim, net.deepid_w.data(), net.deepid_b.data(), true, out);
}

int threads() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

}  // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;
Model::~Model() = default;

Model Model::load(const std::string& path) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) throw ModelIOError("cannot open " + path);
    const std::streamoff end = in.tellg();
    if (end < 0) throw ModelIOError("cannot read the size of " + path);
    if (uint64_t(end) > kMaxFileBytes)
        throw ModelFormatError(path + ": " + std::to_string(end) + " bytes, more than a verifier "
                               "model may have (" + std::to_string(kMaxFileBytes) + ")");
    std::vector<uint8_t> bytes(static_cast<size_t>(end));
    in.seekg(0);
    if (!in.read(reinterpret_cast<char*>(bytes.data()), end)) throw ModelIOError("cannot read " + path);
    try {
        return Model(load_model_impl(bytes.data(), bytes.size()));
    } catch (const ModelFormatError& e) {
        throw ModelFormatError(path + ": " + e.what());
    }
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
    const int chunk = chunk_patches(m);
    for (int i0 = 0; i0 < n; i0 += chunk) {
        const int k = std::min(chunk, n - i0);
        forward_net(m, m.nets[patch], x + m.patch_size() * i0, k, out + int64_t(m.net_dim) * i0);
    }
}

void Model::features(const float* patches, int n, float* out) const {
    const Impl& m = *impl_;
    require(n >= 0, "Model::features: n must be >= 0");
    if (n == 0) return;
    require(patches && out, "Model::features: patches or out is null");
    const int64_t ps = m.patch_size(), F = m.net_dim;
    // Faces per task: network i sees patches 2i, 2i+1 of each of its faces.
    const bool task_parallel = 2 * int64_t(n) < kTaskParallelBelow && int64_t(m.P) * n > 1 && threads() > 1;
    const int faces = task_parallel ? 1 : std::max(1, chunk_patches(m) / 2);
    const int chunks = (n + faces - 1) / faces, tasks = m.P * chunks;
    auto run = [&](int t) {
        const int i = t / chunks, f0 = (t % chunks) * faces, nf = std::min(faces, n - f0);
        float* x = thread_buffer<float, 1>(size_t(2 * nf * ps + 2 * nf * F));
        float* y = x + 2 * nf * ps;
        for (int f = 0; f < nf; ++f)
            std::memcpy(x + 2 * f * ps, patches + ((f0 + f) * int64_t(m.P) + i) * 2 * ps,
                        size_t(2 * ps) * sizeof(float));
        forward_net(m, m.nets[i], x, 2 * nf, y);
        for (int f = 0; f < nf; ++f)
            std::memcpy(out + (f0 + f) * int64_t(m.D) + 2 * i * F, y + 2 * f * F,
                        size_t(2 * F) * sizeof(float));
    };
    if (!task_parallel) {
        for (int t = 0; t < tasks; ++t) run(t);
        return;
    }
    // Ops inside a parallel region run on one thread (no nesting); errors
    // may not leave the region, so the first one is carried out.
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
int Model::channels() const { return impl_->C; }
int Model::height() const { return impl_->H; }
int Model::width() const { return impl_->W; }
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
