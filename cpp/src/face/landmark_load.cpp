// From a landmark file's bytes to a LandmarkModel::Impl: the container
// (infer/safetensors.cpp), the metadata "net" (LandmarkNetConfig) and
// "cascade" (the levels' RefineLevelConfig), each net's shapes derived from
// its config as nets/landmark.py and nets/refine.py do, and every tensor
// checked against them. Nothing is trusted before it is checked: the file
// may be hostile. A level-1 training checkpoint loads too, its target
// statistics folded into the output layer (face/landmarks.py fold_target_stats).
#include <cmath>
#include <cstring>
#include <set>

#include "deepid2/model.h"
#include "../infer/json.h"
#include "../infer/safetensors.h"
#include "landmark_impl.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors files are little-endian; this reader copies floats as they are"
#endif

namespace deepid2 {
namespace face {

namespace {

constexpr const char* kModelFormat = "deepid2-landmarks-model/1";
constexpr const char* kCheckpointFormat = "deepid2-landmarks-checkpoint/1";
constexpr const char* kCascadeFormat = "deepid2-landmark-cascade/1";
constexpr const char* kPointNames[kPoints] = {"left_eye", "right_eye", "nose", "left_mouth",
                                              "right_mouth"};
// Caps far above the shipped nets (39 / 15 px, 20..120 units) that keep a
// hostile config from asking for gigabytes of activations.
constexpr int kMaxSize = 128, kMaxMaps = 256, kMaxHidden = 4096;
constexpr int kMaxLevels = 8, kMaxPatchSizes = 16;

using json::Value;

[[noreturn]] void bad(const std::string& what) { throw ModelFormatError("landmark model: " + what); }

Value meta_json(const safetensors::File& f, const std::string& key) {
    auto it = f.metadata.find(key);
    if (it == f.metadata.end()) bad("metadata \"" + key + "\" is missing");
    try {
        return json::parse(it->second);
    } catch (const json::JsonError& e) {
        bad("metadata \"" + key + "\" is not valid JSON (" + e.what() + ")");
    }
}

int int_in(const Value& v, int lo, int hi, const std::string& what) {
    if (v.type != Value::Type::Number || !v.is_integer || v.integer < lo || v.integer > hi)
        bad(what + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
    return int(v.integer);
}

double positive(const Value& v, double hi, const std::string& what) {
    if (v.type != Value::Type::Number || !(v.number > 0) || !(v.number <= hi))
        bad(what + " must be a number in (0, " + std::to_string(hi) + "]");
    return v.number;
}

// The config object's keys: all known, the required ones present.
void check_keys(const Value& cfg, const std::set<std::string>& known, const std::string& what) {
    if (cfg.type != Value::Type::Object) bad(what + " is not a JSON object");
    for (const auto& kv : cfg.object)
        if (!known.count(kv.first)) bad(what + " has an unknown key \"" + kv.first + "\"");
}

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (s.size() == 1 ? ",)" : ")");
}

// Copies tensors out as float32 after checking dtype, shape and values, and
// remembers which were taken so that none is left unexplained.
class TensorTaker {
public:
    explicit TensorTaker(const safetensors::File& f) : f_(f) {}

    std::vector<float> take(const std::string& name, const std::vector<int64_t>& shape) {
        auto it = f_.tensors.find(name);
        if (it == f_.tensors.end()) bad("tensor \"" + name + "\" is missing");
        const safetensors::Tensor& t = it->second;
        if (t.dtype != "F32") bad("tensor \"" + name + "\" has dtype " + t.dtype + ", expected F32");
        if (t.shape != shape)
            bad("tensor \"" + name + "\" has shape " + shape_str(t.shape) + ", expected " +
                shape_str(shape) + " (from the config)");
        std::vector<float> v(size_t(t.count()));
        if (!v.empty()) std::memcpy(v.data(), f_.data + t.begin, v.size() * sizeof(float));
        for (size_t i = 0; i < v.size(); ++i)
            if (!std::isfinite(v[i]))
                bad("tensor \"" + name + "\" holds a non-finite value at index " + std::to_string(i));
        taken_.insert(name);
        return v;
    }
    // Every tensor not taken must start with one of `ignored` (else an error).
    void reject_unknown(const std::vector<std::string>& ignored = {}) const {
        for (const auto& kv : f_.tensors) {
            if (taken_.count(kv.first)) continue;
            bool skip = false;
            for (const std::string& p : ignored) skip = skip || kv.first.compare(0, p.size(), p) == 0;
            if (!skip) bad("unexpected tensor \"" + kv.first + "\"");
        }
    }

private:
    const safetensors::File& f_;
    std::set<std::string> taken_;
};

// Fills a net's weights: prefix + conv1.w, conv1.b, ..., fc.w/b, out.w/b.
void take_weights(ConvNet& net, TensorTaker& taker, const std::string& prefix) {
    for (size_t l = 0; l < net.convs.size(); ++l) {
        ConvLayer& c = net.convs[l];
        const LsconvShape& s = c.shape;
        const std::string name = prefix + "conv" + std::to_string(l + 1);
        c.w = taker.take(name + ".w", {s.ry(), s.rx(), s.k, s.c, s.kh, s.kw});
        c.b = taker.take(name + ".b", {s.ry(), s.rx(), s.k});
    }
    const char* dense_names[2] = {"fc", "out"};
    for (size_t l = 0; l < net.dense.size(); ++l) {
        DenseLayer& d = net.dense[l];
        const std::string name = prefix + dense_names[l];
        d.w = taker.take(name + ".w", {d.in, d.out});
        d.b = taker.take(name + ".b", {d.out});
    }
}

// LandmarkNetConfig.from_dict: every key optional (the dataclass defaults).
ConvNet read_f1_config(const Value& cfg, double& box_scale) {
    check_keys(cfg, {"size", "conv3_grid", "hidden", "n_points", "box_scale"}, "metadata \"net\"");
    int size = 39, gy = 2, gx = 2, hidden = 120;
    box_scale = 1.2;
    if (const Value* v = cfg.find("size")) size = int_in(*v, 1, kMaxSize, "net size");
    if (const Value* v = cfg.find("hidden")) hidden = int_in(*v, 1, kMaxHidden, "net hidden");
    if (const Value* v = cfg.find("n_points")) int_in(*v, kPoints, kPoints, "net n_points");
    if (const Value* v = cfg.find("box_scale")) box_scale = positive(*v, 100.0, "net box_scale");
    if (const Value* v = cfg.find("conv3_grid")) {
        if (v->type != Value::Type::Array || v->array.size() != 2)
            bad("net conv3_grid must be a list of two integers");
        gy = int_in(v->array[0], 1, kMaxSize, "net conv3_grid");
        gx = int_in(v->array[1], 1, kMaxSize, "net conv3_grid");
    }
    try {
        return f1_shapes(size, gy, gx, hidden, 2 * kPoints);
    } catch (const std::invalid_argument& e) {
        bad(std::string("net: ") + e.what());
    }
}

// One entry of "cascade"."levels" (RefineLevelConfig.from_dict plus "level").
CascadeLevel read_level_config(const Value& cfg, const std::string& what) {
    check_keys(cfg, {"level", "patches", "size", "conv1", "conv2", "hidden", "rotate_frame"}, what);
    CascadeLevel lv;
    const Value* number = cfg.find("level");
    if (!number) bad(what + " lacks \"level\"");
    lv.number = int_in(*number, 0, 1 << 20, what + " level");
    int conv1 = 20, conv2 = 40, hidden = 60;
    lv.patches = {1.25, 1.45};
    if (const Value* v = cfg.find("patches")) {
        if (v->type != Value::Type::Array || v->array.empty() ||
            v->array.size() > size_t(kMaxPatchSizes))
            bad(what + " patches must be a list of 1.." + std::to_string(kMaxPatchSizes) + " sides");
        lv.patches.clear();
        for (const Value& p : v->array) lv.patches.push_back(positive(p, 100.0, what + " patches"));
    }
    if (const Value* v = cfg.find("size")) lv.size = int_in(*v, 1, kMaxSize, what + " size");
    if (const Value* v = cfg.find("conv1")) conv1 = int_in(*v, 1, kMaxMaps, what + " conv1");
    if (const Value* v = cfg.find("conv2")) conv2 = int_in(*v, 1, kMaxMaps, what + " conv2");
    if (const Value* v = cfg.find("hidden")) hidden = int_in(*v, 1, kMaxHidden, what + " hidden");
    if (const Value* v = cfg.find("rotate_frame")) {
        if (v->type != Value::Type::Bool) bad(what + " rotate_frame must be true or false");
        lv.rotate_frame = v->boolean;
    }
    ConvNet shape;
    try {
        shape = refine_shapes(lv.size, conv1, conv2, hidden);
    } catch (const std::invalid_argument& e) {
        bad(what + ": " + e.what());
    }
    lv.nets.assign(kPoints * lv.patches.size(), shape);
    return lv;
}

std::vector<CascadeLevel> read_cascade(const safetensors::File& f, TensorTaker& taker) {
    const Value spec = meta_json(f, "cascade");
    check_keys(spec, {"format", "levels"}, "metadata \"cascade\"");
    const Value* format = spec.find("format");
    if (!format || format->type != Value::Type::String || format->string != kCascadeFormat)
        bad(std::string("metadata \"cascade\" format must be \"") + kCascadeFormat + "\"");
    const Value* levels = spec.find("levels");
    if (!levels || levels->type != Value::Type::Array || levels->array.size() > size_t(kMaxLevels))
        bad("metadata \"cascade\" levels must be a list of at most " + std::to_string(kMaxLevels) +
            " level configs");
    std::vector<CascadeLevel> out;
    std::set<int> numbers;
    for (size_t i = 0; i < levels->array.size(); ++i) {
        CascadeLevel lv = read_level_config(levels->array[i], "cascade level " + std::to_string(i));
        if (!numbers.insert(lv.number).second)
            bad("metadata \"cascade\" names level " + std::to_string(lv.number) + " twice");
        const size_t J = lv.patches.size();
        for (int p = 0; p < kPoints; ++p)
            for (size_t j = 0; j < J; ++j)
                take_weights(lv.nets[p * J + j], taker,
                             "level" + std::to_string(lv.number) + "/" + kPointNames[p] + "/" +
                                 std::to_string(j) + "/");
        out.push_back(std::move(lv));
    }
    return out;
}

// face/landmarks.py fold_target_stats: out.w * std, mean + out.b * std (float32).
void fold_target_stats(DenseLayer& out, const std::vector<float>& mean, float std) {
    for (float& w : out.w) w *= std;
    for (int i = 0; i < out.out; ++i) out.b[size_t(i)] = mean[size_t(i)] + out.b[size_t(i)] * std;
}

}  // namespace

std::unique_ptr<LandmarkModel::Impl> load_landmark_impl(const uint8_t* bytes, uint64_t size) {
    const safetensors::File f = safetensors::parse(bytes, size);
    auto format = f.metadata.find("format");
    if (format == f.metadata.end()) bad("metadata \"format\" is missing (not a landmark model?)");
    const bool checkpoint = format->second == kCheckpointFormat;
    if (format->second != kModelFormat && !checkpoint)
        bad("metadata format is \"" + format->second + "\", this reader knows \"" + kModelFormat +
            "\" and \"" + kCheckpointFormat + "\"");
    auto m = std::make_unique<LandmarkModel::Impl>();
    m->f1 = read_f1_config(meta_json(f, "net"), m->box_scale);
    TensorTaker taker(f);
    if (checkpoint) {  // params "param/NAME", velocities (unused), target statistics
        take_weights(m->f1, taker, "param/");
        const std::vector<float> mean = taker.take("target/mean", {2 * kPoints});
        const std::vector<float> std = taker.take("target/std", {1});
        fold_target_stats(m->f1.dense.back(), mean, std[0]);
        taker.reject_unknown({"velocity/"});
        return m;
    }
    take_weights(m->f1, taker, "");
    if (f.metadata.count("cascade")) m->levels = read_cascade(f, taker);
    taker.reject_unknown();
    return m;
}

}  // namespace face
}  // namespace deepid2
