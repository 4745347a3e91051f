// Speed of the C++ face pipeline per photograph, one thread: read (decode the
// file) + detect (YuNet and the landmarks) + embed (align, cut the patches, run
// the networks) of the first face, as bench/bench_pipeline.py times the others.
//   deepid2_bench_pipeline [--models DIR] [--warmup N] [--json] [--features OUT.f32] PHOTO...
// Each photo is timed once, after N (default 3) untimed runs over the first
// photos. Prints median and mean ms per stage and in all; --json prints one
// JSON object instead: {"photos", "no_face", "total_ms": [...], "read_ms",
// "detect_ms", "embed_ms"} (per photo, in the order given).
// Exit status 2 with one line on stderr for an unreadable photo or bad models.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <numeric>
#include <string>
#include <vector>

#include "deepid2/pipeline.h"
#include "image_file.h"

namespace {

using Clock = std::chrono::steady_clock;

double ms_since(Clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

struct Timings {
    std::vector<double> read, detect, embed, total;
    int no_face = 0;
    std::vector<std::vector<float>> features;  // per photo; empty where no face
};

// One photo through the pipeline; its times appended to `t` when given.
void run_one(const deepid2::Pipeline& pipeline, const std::string& path, Timings* t) {
    const auto t0 = Clock::now();
    const deepid2_examples::ImageFile img = deepid2_examples::read_image_file(path);
    const auto t1 = Clock::now();
    const std::vector<deepid2::Face> faces = pipeline.detect(img.view());
    const auto t2 = Clock::now();
    std::vector<float> features;
    if (!faces.empty()) features = pipeline.embed(img.view(), faces[0]);
    if (!t) return;
    const double read = std::chrono::duration<double, std::milli>(t1 - t0).count();
    const double detect = std::chrono::duration<double, std::milli>(t2 - t1).count();
    const double embed = ms_since(t2);
    t->read.push_back(read);
    t->detect.push_back(detect);
    t->embed.push_back(embed);
    t->total.push_back(read + detect + embed);
    t->no_face += faces.empty();
    t->features.push_back(std::move(features));
}

// Each photo's features, feature_dim float32 each (NaN where no face): for
// tests/cpp/test_inference.py, which compares them with Python's bit for bit.
void write_features(const std::string& path, const Timings& t, int dim) {
    FILE* f = std::fopen(path.c_str(), "wb");
    if (!f) throw std::runtime_error("cannot write " + path);
    const std::vector<float> none(size_t(dim), std::nanf(""));
    for (const auto& v : t.features) std::fwrite((v.empty() ? none : v).data(), 4, size_t(dim), f);
    if (std::fclose(f) != 0) throw std::runtime_error("cannot write " + path);
}

double median(std::vector<double> v) {
    std::sort(v.begin(), v.end());
    const size_t n = v.size();
    return n == 0 ? 0.0 : n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double mean(const std::vector<double>& v) {
    return v.empty() ? 0.0 : std::accumulate(v.begin(), v.end(), 0.0) / double(v.size());
}

void print_json_list(const char* name, const std::vector<double>& v, bool last) {
    std::printf("\"%s\": [", name);
    for (size_t i = 0; i < v.size(); ++i) std::printf(i ? ", %.4f" : "%.4f", v[i]);
    std::printf(last ? "]" : "], ");
}

}  // namespace

int main(int argc, char** argv) {
    std::string models;
    int warmup = 3;
    std::string features_out;
    bool json = false, bad_option = false;
    std::vector<std::string> photos;
    for (int i = 1; i < argc; ++i) {
        const std::string arg = argv[i];
        if (arg == "--models" && i + 1 < argc) models = argv[++i];
        else if (arg == "--warmup" && i + 1 < argc) warmup = std::max(0, std::atoi(argv[++i]));
        else if (arg == "--json") json = true;
        else if (arg == "--features" && i + 1 < argc) features_out = argv[++i];
        else if (arg.rfind("-", 0) == 0) bad_option = true;
        else photos.push_back(arg);
    }
    if (photos.empty() || bad_option) {
        std::fprintf(stderr, "usage: %s [--models DIR] [--warmup N] [--json] [--features OUT.f32] PHOTO...\n", argv[0]);
        return 2;
    }
    omp_set_num_threads(1);  // one thread, as the other pipelines are timed
    try {
        const deepid2::Pipeline pipeline =
            models.empty() ? deepid2::Pipeline::load() : deepid2::Pipeline::load_folder(models);
        for (int i = 0; i < warmup; ++i) run_one(pipeline, photos[size_t(i) % photos.size()], nullptr);
        Timings t;
        for (const std::string& p : photos) run_one(pipeline, p, &t);
        if (!features_out.empty()) write_features(features_out, t, pipeline.model().feature_dim());
        if (json) {
            std::printf("{\"photos\": %zu, \"no_face\": %d, ", photos.size(), t.no_face);
            print_json_list("total_ms", t.total, false);
            print_json_list("read_ms", t.read, false);
            print_json_list("detect_ms", t.detect, false);
            print_json_list("embed_ms", t.embed, true);
            std::printf("}\n");
        } else {
            std::printf("%zu photos, %d without a face, 1 thread\n", photos.size(), t.no_face);
            const std::pair<const char*, const std::vector<double>*> rows[] = {
                {"read", &t.read}, {"detect", &t.detect}, {"embed", &t.embed}, {"total", &t.total}};
            for (const auto& [name, v] : rows)
                std::printf("%-7s median %8.2f ms   mean %8.2f ms\n", name, median(*v), mean(*v));
        }
        return 0;
    } catch (const std::exception& e) {
        std::fprintf(stderr, "deepid2_bench_pipeline: %s\n", e.what());
        return 2;
    }
}
