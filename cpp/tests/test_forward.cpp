// Model::features / patch_features (the inference forward of
// src/infer/forward.cpp: weights packed at load, fused epilogues) against a
// forward built from the ops (lsconv_forward, maxpool_forward,
// dense_forward): equal bit for bit, for odd map sizes, region grids that do
// not divide the map, several networks, batches and thread counts.
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include "deepid2/model.h"
#include "deepid2/ops.h"
#include "fixture.h"

using namespace deepid2;

namespace {

struct Net {
    std::vector<float> w[4], b[4], dw, db;
};

// The patch network with the ops on n images (n x C x H x W) -> n x F.
void ops_forward(const fixture::Spec& s, const Net& net, const float* x, int n, float* out) {
    const int kernels[4] = {4, 3, 3, 2}, maps[4] = {20, 40, 60, 80};
    int c = s.channels, h = s.height, w = s.width;
    std::vector<float> in(x, x + size_t(n) * c * h * w), pool3, conv4;
    for (int l = 0; l < 4; ++l) {
        const int oh = h - kernels[l] + 1, ow = w - kernels[l] + 1;
        int rh = oh, rw = ow;
        if (l == 2) {
            rh = (oh + s.grid_rows - 1) / s.grid_rows;
            rw = (ow + s.grid_cols - 1) / s.grid_cols;
        }
        if (l == 3) rh = rw = 1;
        const LsconvShape sh{n, c, h, w, maps[l], kernels[l], kernels[l], rh, rw};
        std::vector<float> y(size_t(n) * maps[l] * oh * ow);
        lsconv_forward(sh, in.data(), net.w[l].data(), net.b[l].data(), true, y.data());
        c = maps[l];
        if (l < 3) {
            std::vector<float> p(size_t(n) * c * (oh / 2) * (ow / 2));
            std::vector<int32_t> am(p.size());
            maxpool_forward(n, c, oh, ow, 2, y.data(), p.data(), am.data());
            in = p;
            h = oh / 2, w = ow / 2;
            if (l == 2) pool3 = p;
        } else {
            conv4 = y;
        }
    }
    const int dims[2] = {int(pool3.size() / n), int(conv4.size() / n)};
    const float* xs[2] = {pool3.data(), conv4.data()};
    dense_forward(n, 2, dims, xs, s.feature_dim, net.dw.data(), net.db.data(), true, out);
}

}  // namespace

int main() {
    std::vector<fixture::Spec> specs;
    specs.push_back(fixture::Spec::deepid2());
    {
        auto s = fixture::Spec::deepid2();
        s.patches = 3, s.seed = 5;
        specs.push_back(s);
    }
    {
        fixture::Spec s;  // 31x31, the smallest input
        s.patches = 2, s.grid_rows = 2, s.grid_cols = 2, s.seed = 7;
        specs.push_back(s);
    }
    {
        fixture::Spec s;  // odd conv maps, a 3x2 grid that leaves a short last region
        s.channels = 3, s.height = 36, s.width = 33, s.feature_dim = 20;
        s.grid_rows = 3, s.grid_cols = 2, s.patches = 2;
        specs.push_back(s);
    }
    {
        fixture::Spec s;  // wide maps, F not a multiple of the vector width
        s.channels = 2, s.height = 41, s.width = 60, s.feature_dim = 33;
        s.grid_rows = 1, s.grid_cols = 3;
        specs.push_back(s);
    }
    int bad = 0, cases = 0;
    for (const auto& s : specs) {
        std::map<std::string, std::vector<float>> t;
        for (auto& x : fixture::verifier_tensors(s)) t[x.name] = std::move(x.values);
        std::vector<Net> nets(size_t(s.patches));
        for (int p = 0; p < s.patches; ++p) {
            const std::string pre = "patch" + std::to_string(p) + "/";
            for (int l = 0; l < 4; ++l) {
                nets[p].w[l] = t[pre + "conv" + std::to_string(l + 1) + ".w"];
                nets[p].b[l] = t[pre + "conv" + std::to_string(l + 1) + ".b"];
            }
            nets[p].dw = t[pre + "deepid.w"];
            nets[p].db = t[pre + "deepid.b"];
        }
        const auto bytes = fixture::verifier_bytes(s);
        const auto m = Model::load_memory(bytes.data(), bytes.size());
        const int F = s.feature_dim, D = m.feature_dim();
        const size_t ps = size_t(s.channels) * s.height * s.width;
        char name[128];
        for (int n : {1, 2, 3, 5, 17}) {
            const auto x = fixture::random_patches(s, n, 11 + n);
            std::vector<float> ref(size_t(n) * D);  // network p on patches 2p, 2p+1 of each face
            for (int p = 0; p < s.patches; ++p) {
                std::vector<float> xi(size_t(2 * n) * ps), yi(size_t(2 * n) * F);
                for (int f = 0; f < n; ++f)
                    std::memcpy(&xi[2 * f * ps], &x[(size_t(f) * s.patches + p) * 2 * ps], 2 * ps * 4);
                ops_forward(s, nets[p], xi.data(), 2 * n, yi.data());
                for (int f = 0; f < n; ++f)
                    std::memcpy(&ref[size_t(f) * D + 2 * p * F], &yi[2 * f * F], 2 * F * 4);
            }
            // the last network alone on the first n patches
            const int last = s.patches - 1;
            std::vector<float> pref(size_t(n) * F);
            ops_forward(s, nets[last], x.data(), n, pref.data());
            for (int T : {1, 2, 3}) {
                omp_set_num_threads(T);
                std::vector<float> got(size_t(n) * D, -7.0f), pgot(size_t(n) * F, -7.0f);
                m.features(x.data(), n, got.data());
                m.patch_features(last, x.data(), n, pgot.data());
                std::snprintf(name, sizeof name, "%dx%dx%d P=%d n=%d threads=%d", s.channels,
                              s.height, s.width, s.patches, n, T);
                cases += 2;
                if (std::memcmp(got.data(), ref.data(), got.size() * 4)) {
                    std::printf("FAIL features %s differ from the ops' forward\n", name);
                    ++bad;
                }
                if (std::memcmp(pgot.data(), pref.data(), pgot.size() * 4)) {
                    std::printf("FAIL patch_features %s differ from the ops' forward\n", name);
                    ++bad;
                }
            }
        }
    }
    std::printf("%d of %d cases differ from the ops' forward\n", bad, cases);
    return bad ? 1 : 0;
}
