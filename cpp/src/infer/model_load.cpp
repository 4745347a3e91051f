// From a file's bytes to a Model::Impl: the container (safetensors.cpp),
// then the metadata, each patch network's shapes derived from its net config
// ("net" for all in format 1, "nets"[i] in format 2) exactly as
// deepid2_core/nets/deepid2.py param_shapes does, and every tensor checked against
// them. Nothing is trusted before it is checked.
#include <cmath>
#include <cstring>
#include <set>

#include "json.h"
#include "model_impl.h"
#include "safetensors.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the verifier file is little-endian; this reader copies floats as they are"
#endif

namespace deepid2 {

namespace {

constexpr const char* kFormat = "deepid2-verifier/1";    // metadata "net": one config for all
constexpr const char* kFormatV2 = "deepid2-verifier/2";  // metadata "nets": one config per patch
constexpr int kMaxSide = 4096;       // C, H, W caps: keeps every size product in range
constexpr int kMaxNetDim = 1 << 16;
constexpr int kMaxPatches = 1024;

[[noreturn]] void bad(const std::string& what) { throw ModelFormatError("verifier model: " + what); }

json::Value parse_meta_json(const safetensors::File& f, const std::string& key) {
    auto it = f.metadata.find(key);
    if (it == f.metadata.end()) bad("metadata \"" + key + "\" is missing");
    try {
        return json::parse(it->second);
    } catch (const json::JsonError& e) {
        bad("metadata \"" + key + "\" is not valid JSON (" + e.what() + ")");
    }
}

int int_in(const json::Value& v, int lo, int hi, const std::string& what) {
    if (v.type != json::Value::Type::Number || !v.is_integer || v.integer < lo || v.integer > hi)
        bad(what + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
    return int(v.integer);
}

std::array<int, 2> int_pair(const json::Value& v, const std::string& what) {
    if (v.type != json::Value::Type::Array || v.array.size() != 2)
        bad(what + " must be a list of two integers");
    return {int_in(v.array[0], 1, kMaxSide, what), int_in(v.array[1], 1, kMaxSide, what)};
}

// One net config of the file (NetConfig.to_dict()).
struct NetConfig {
    int C = 3, H = 55, W = 47, feature_dim = 160;
    std::array<int, 2> grid{}, region{};
    bool has_region = false;
};

// NetConfig.from_dict: conv3_grid and n_classes required, the rest default.
// `what` names the config in messages: "net" (format 1) or "nets[i]".
NetConfig read_net_config(const json::Value& net, const std::string& what) {
    if (net.type != json::Value::Type::Object) bad(what + " is not a JSON object");
    static const std::set<std::string> known = {"n_classes", "height", "width", "channels",
                                                "feature_dim", "conv3_grid", "conv3_region"};
    for (const auto& kv : net.object)
        if (!known.count(kv.first)) bad(what + " config has an unknown key \"" + kv.first + "\"");
    auto get = [&](const char* key) { return net.find(key); };
    if (!get("n_classes")) bad(what + " config lacks n_classes");
    int_in(*get("n_classes"), 1, 1 << 30, what + " n_classes");  // informational only
    NetConfig c;
    if (get("height")) c.H = int_in(*get("height"), 1, kMaxSide, what + " height");
    if (get("width")) c.W = int_in(*get("width"), 1, kMaxSide, what + " width");
    if (get("channels")) c.C = int_in(*get("channels"), 1, kMaxSide, what + " channels");
    if (get("feature_dim")) c.feature_dim = int_in(*get("feature_dim"), 1, kMaxNetDim, what + " feature_dim");
    if (!get("conv3_grid")) bad(what + " config lacks conv3_grid");
    c.grid = int_pair(*get("conv3_grid"), what + " conv3_grid");
    const json::Value* r = get("conv3_region");
    c.has_region = r && r->type != json::Value::Type::Null;
    if (c.has_region) c.region = int_pair(*r, what + " conv3_region");
    return c;
}

// The configs of all P patches: format 1's one "net" for all, or format 2's
// "nets" list, one per patch; every patch with the same feature_dim.
std::vector<NetConfig> read_net_configs(const safetensors::File& f, bool v2, int P) {
    const bool has_net = f.metadata.count("net") > 0, has_nets = f.metadata.count("nets") > 0;
    if (has_net && has_nets)
        bad("metadata has both \"net\" and \"nets\" (format 1 has \"net\", format 2 \"nets\")");
    if (!v2) return std::vector<NetConfig>(size_t(P), read_net_config(parse_meta_json(f, "net"), "net"));
    if (!has_nets)
        bad("metadata \"nets\" is missing (format \"" + std::string(kFormatV2) +
            "\" has one net config per patch)");
    const json::Value nets = parse_meta_json(f, "nets");
    if (nets.type != json::Value::Type::Array) bad("metadata \"nets\" must be a list of net configs");
    if (nets.array.size() != size_t(P))
        bad("metadata \"nets\" has " + std::to_string(nets.array.size()) + " net configs for " +
            std::to_string(P) + " patches");
    std::vector<NetConfig> cfgs;
    for (int i = 0; i < P; ++i) {
        const std::string what = "nets[" + std::to_string(i) + "]";
        cfgs.push_back(read_net_config(nets.array[size_t(i)], what));
        if (cfgs[size_t(i)].feature_dim != cfgs[0].feature_dim)
            bad(what + " has feature_dim " + std::to_string(cfgs[size_t(i)].feature_dim) +
                ", nets[0] " + std::to_string(cfgs[0].feature_dim) +
                ": all patch networks need the same feature_dim");
    }
    return cfgs;
}

// nets/deepid2.py stack_shapes over LAYERS, with its error messages.
void derive_convs(PatchShape& m, const NetConfig& cfg, const std::string& what) {
    struct Spec { const char* name; int kernel, maps; char sharing; };
    static const Spec layers[4] = {
        {"conv1", 4, 20, 's'}, {"conv2", 3, 40, 's'}, {"conv3", 3, 60, 'g'}, {"conv4", 2, 80, 'l'}};
    m.C = cfg.C, m.H = cfg.H, m.W = cfg.W;
    const std::string input = what + ": input " + std::to_string(m.H) + "x" + std::to_string(m.W);
    int c = m.C, h = m.H, w = m.W;
    for (int i = 0; i < 4; ++i) {
        const Spec& L = layers[i];
        const int oh = h - L.kernel + 1, ow = w - L.kernel + 1;
        if (oh < 1 || ow < 1) bad(input + " is too small: " + L.name + " has no output");
        int rh = oh, rw = ow;
        if (L.sharing == 'g') {
            rh = cfg.has_region ? cfg.region[0] : (oh + cfg.grid[0] - 1) / cfg.grid[0];
            rw = cfg.has_region ? cfg.region[1] : (ow + cfg.grid[1] - 1) / cfg.grid[1];
            if (rh > oh || rw > ow)
                bad(what + ": conv3_region " + std::to_string(rh) + "x" + std::to_string(rw) +
                    " is larger than conv3's output map " + std::to_string(oh) + "x" +
                    std::to_string(ow));
        } else if (L.sharing == 'l') {
            rh = rw = 1;
        }
        m.convs[i] = {L.name, LsconvShape{1, c, h, w, L.maps, L.kernel, L.kernel, rh, rw}, i < 3};
        c = L.maps;
        if (i < 3) {
            h = oh / 2;
            w = ow / 2;
            if (h < 1 || w < 1) bad(input + " is too small for pool" + std::to_string(i + 1));
        }
    }
}

// Networks of equal shapes share one plan.
bool same_shape(const PatchShape& a, const PatchShape& b) {
    if (a.C != b.C || a.H != b.H || a.W != b.W) return false;
    for (int l = 0; l < 4; ++l) {
        const LsconvShape &s = a.convs[l].shape, &t = b.convs[l].shape;
        if (s.c != t.c || s.h != t.h || s.w != t.w || s.k != t.k || s.kh != t.kh || s.kw != t.kw ||
            s.rh != t.rh || s.rw != t.rw)
            return false;
    }
    return true;
}

std::string shape_str(const std::vector<int64_t>& s) {
    std::string out = "(";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + (s.size() == 1 ? ",)" : ")");
}

// Copies tensor `name` out as float32 after checking dtype, shape, values.
class TensorTaker {
public:
    explicit TensorTaker(const safetensors::File& f) : f_(f) {}

    std::vector<float> take(const std::string& name, const std::vector<int64_t>& shape,
                            const std::string& from = "the net config") {
        auto it = f_.tensors.find(name);
        if (it == f_.tensors.end()) bad("tensor \"" + name + "\" is missing");
        const safetensors::Tensor& t = it->second;
        if (t.dtype != "F32") bad("tensor \"" + name + "\" has dtype " + t.dtype + ", expected F32");
        if (t.shape != shape)
            bad("tensor \"" + name + "\" has shape " + shape_str(t.shape) + ", expected " +
                shape_str(shape) + " (from " + from + ")");
        std::vector<float> v(size_t(t.count()));
        if (!v.empty()) std::memcpy(v.data(), f_.data + t.begin, v.size() * sizeof(float));
        for (size_t i = 0; i < v.size(); ++i)
            if (!std::isfinite(v[i]))
                bad("tensor \"" + name + "\" holds a non-finite value at index " + std::to_string(i));
        taken_.insert(name);
        return v;
    }
    bool has(const std::string& name) const { return f_.tensors.count(name) > 0; }
    void reject_unknown() const {
        for (const auto& kv : f_.tensors)
            if (!taken_.count(kv.first)) bad("unexpected tensor \"" + kv.first + "\"");
    }

private:
    const safetensors::File& f_;
    std::set<std::string> taken_;
};

}  // namespace

std::unique_ptr<Model::Impl> load_model_impl(const uint8_t* bytes, uint64_t size) {
    const safetensors::File f = safetensors::parse(bytes, size);
    auto m = std::make_unique<Model::Impl>();
    m->metadata = f.metadata;
    auto format = f.metadata.find("format");
    if (format == f.metadata.end()) bad("metadata \"format\" is missing (not a verifier file?)");
    if (format->second != kFormat && format->second != kFormatV2)
        bad("metadata format is \"" + format->second + "\", this reader knows \"" + kFormat +
            "\" and \"" + kFormatV2 + "\"");
    const bool v2 = format->second == kFormatV2;
    auto verifier = f.metadata.find("verifier");
    if (verifier == f.metadata.end() || verifier->second != "joint_bayesian")
        bad("metadata \"verifier\" must be \"joint_bayesian\"");
    auto layout = f.metadata.find("layout");
    if (layout == f.metadata.end()) bad("metadata \"layout\" is missing");
    m->layout = layout->second;

    const json::Value names = parse_meta_json(f, "patches");
    if (names.type != json::Value::Type::Array || names.array.empty() ||
        names.array.size() > size_t(kMaxPatches))
        bad("metadata \"patches\" must be a list of 1.." + std::to_string(kMaxPatches) + " names");
    for (const auto& n : names.array) {
        if (n.type != json::Value::Type::String) bad("metadata \"patches\" holds a non-string");
        m->patch_names.push_back(n.string);
    }
    m->P = int(m->patch_names.size());

    const std::vector<NetConfig> cfgs = read_net_configs(f, v2, m->P);
    m->net_dim = cfgs[0].feature_dim;
    m->D = 2 * m->P * m->net_dim;
    m->shapes.resize(size_t(m->P));
    for (int i = 0; i < m->P; ++i) {
        const std::string what = v2 ? "nets[" + std::to_string(i) + "]" : "net";
        PatchShape& ps = m->shapes[size_t(i)];
        derive_convs(ps, cfgs[size_t(i)], what);
        ps.offset = m->face_size;
        m->face_size += 2 * ps.size();
        m->uniform = m->uniform && ps.C == m->shapes[0].C && ps.H == m->shapes[0].H && ps.W == m->shapes[0].W;
    }

    TensorTaker taker(f);
    for (int i = 0; i < m->P; ++i) {
        PatchShape& ps = m->shapes[size_t(i)];
        const std::string pre = "patch" + std::to_string(i) + "/";
        const std::string from = v2 ? "nets[" + std::to_string(i) + "]" : "the net config";
        // Tensors before the plan: a header claiming huge inputs fails on its
        // (missing) weights before any plan of that size is built.
        PatchNet net;
        for (int l = 0; l < 4; ++l) {
            const LsconvShape& s = ps.convs[l].shape;
            const int64_t ry = s.ry(), rx = s.rx(), name_l = l + 1;
            const std::string conv = pre + "conv" + std::to_string(name_l);
            net.conv_w[l] = taker.take(conv + ".w", {ry, rx, s.k, s.c, s.kh, s.kw}, from);
            net.conv_b[l] = taker.take(conv + ".b", {ry, rx, s.k}, from);
        }
        net.deepid_w = taker.take(pre + "deepid.w", {ps.pool3_size() + ps.conv4_size(), m->net_dim}, from);
        net.deepid_b = taker.take(pre + "deepid.b", {m->net_dim}, from);
        ps.plan = -1;
        for (int j = 0; j < i && ps.plan < 0; ++j)
            if (same_shape(ps, m->shapes[size_t(j)])) ps.plan = m->shapes[size_t(j)].plan;
        if (ps.plan < 0) {
            std::array<LsconvShape, 4> shapes;
            for (int l = 0; l < 4; ++l) shapes[l] = ps.convs[l].shape;
            ps.plan = int(m->plans.size());
            m->plans.push_back(infer::make_plan(ps.C, ps.H, ps.W, m->net_dim, shapes));
        }
        m->nets.push_back(infer::pack_net(m->plan(i), net.conv_w, net.conv_b, net.deepid_w, net.deepid_b));
    }
    auto pc = f.tensors.find("pca/components");
    if (pc == f.tensors.end()) bad("tensor \"pca/components\" is missing");
    if (pc->second.shape.size() != 2 || pc->second.shape[1] < 1 || pc->second.shape[1] > m->D)
        bad("tensor \"pca/components\" must have shape (" + std::to_string(m->D) +
            ", d) with 1 <= d <= " + std::to_string(m->D));
    m->d = int(pc->second.shape[1]);
    const int64_t D = m->D, d = m->d;
    m->pca_mean = taker.take("pca/mean", {D});
    m->pca_components = taker.take("pca/components", {D, d});
    m->jb_A = taker.take("jb/A", {d, d});
    m->jb_G = taker.take("jb/G", {d, d});
    m->threshold = taker.take("jb/threshold", {1})[0];
    for (const char* opt : {"l2/threshold", "cosine/threshold"})
        if (taker.has(opt)) taker.take(opt, {1});  // checked, not used here
    taker.reject_unknown();
    return m;
}

}  // namespace deepid2
