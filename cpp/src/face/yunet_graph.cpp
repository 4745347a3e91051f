#include "yunet_graph.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <set>

#include "deepid2/model.h"
#include "../gemm.h"
#include "../infer/json.h"
#include "yunet_ops.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the model file is little-endian; this reader copies floats as they are"
#endif

namespace deepid2 {
namespace face {

namespace {

using json::Value;
using Shape = std::vector<int64_t>;

constexpr int kMaxNodes = 4096;
constexpr int kMaxRank = 6;
constexpr int kMaxKernel = 15, kMaxStride = 8, kMaxPad = 15, kMaxScale = 8;
constexpr int64_t kMaxElements = int64_t(1) << 31;  // per value: int indexing in the kernels

[[noreturn]] void bad(const std::string& what) { throw ModelFormatError("yunet model: " + what); }

enum class Op { Conv, Relu, Sigmoid, MaxPool, Resize, Add, Transpose, Reshape };

struct Node {
    Op op;
    std::string what;         // "node 12 (Conv)", for messages
    std::vector<int> inputs;  // value ids (data inputs only)
    int output = -1;
    int weight = -1, bias = -1;  // Conv: indices into Impl::consts
    int groups = 1, kh = 1, kw = 1, sh = 1, sw = 1, pads[4] = {0, 0, 0, 0};
    bool relu = false;            // Conv: a following Relu fused in
    std::vector<float> packed;    // Conv: the weight packed for the SGEMM (pack_conv_weights)
    int fy = 1, fx = 1;           // Resize
    std::vector<int64_t> dims;    // Transpose: perm; Reshape: shape
};

const Value& member(const Value& obj, const char* key, const std::string& what) {
    const Value* v = obj.find(key);
    if (!v) bad(what + " lacks \"" + key + "\"");
    return *v;
}

const std::string& string_of(const Value& v, const std::string& what) {
    if (v.type != Value::Type::String || v.string.empty() || v.string.size() > 256)
        bad(what + " must be a non-empty string of at most 256 characters");
    return v.string;
}

std::vector<int64_t> ints_of(const Value& v, size_t min_n, size_t max_n, int64_t lo, int64_t hi,
                             const std::string& what) {
    if (v.type != Value::Type::Array || v.array.size() < min_n || v.array.size() > max_n)
        bad(what + " must be a list of " + std::to_string(min_n) + ".." + std::to_string(max_n) +
            " integers");
    std::vector<int64_t> out;
    for (const Value& e : v.array) {
        if (e.type != Value::Type::Number || !e.is_integer || e.integer < lo || e.integer > hi)
            bad(what + " must hold integers in " + std::to_string(lo) + ".." + std::to_string(hi));
        out.push_back(e.integer);
    }
    return out;
}

int64_t int_of(const Value& v, int64_t lo, int64_t hi, const std::string& what) {
    if (v.type != Value::Type::Number || !v.is_integer || v.integer < lo || v.integer > hi)
        bad(what + " must be an integer in " + std::to_string(lo) + ".." + std::to_string(hi));
    return v.integer;
}

std::string shape_str(const Shape& s) {
    std::string out = "[";
    for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
    return out + "]";
}

int64_t count_of(const Shape& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;  // callers keep every factor <= kMaxElements
    return n;
}

// Buffers kept between runs on this thread: fresh pages for YuNet's few MB of
// activations cost more than its later layers' arithmetic.
struct BufferPool {
    std::vector<FloatBuffer> free;
    std::vector<float> scratch;

    FloatBuffer take(size_t n) {
        size_t best = free.size();
        for (size_t i = 0; i < free.size(); ++i)
            if (free[i].capacity() >= n &&
                (best == free.size() || free[i].capacity() < free[best].capacity()))
                best = i;
        FloatBuffer v;
        if (best < free.size()) {
            v = std::move(free[best]);
            free.erase(free.begin() + std::ptrdiff_t(best));
        }
        v.clear();
        v.resize(n);
        return v;
    }
    void give(FloatBuffer&& v) {
        constexpr size_t kMaxKept = 64, kMaxKeptFloats = size_t(1) << 26;
        if (v.capacity() && v.capacity() <= kMaxKeptFloats && free.size() < kMaxKept)
            free.push_back(std::move(v));
        v = FloatBuffer();
    }
};

thread_local BufferPool pool;

}  // namespace

struct Graph::Impl {
    std::vector<Tensor> consts;          // Conv weights and biases
    std::vector<Node> nodes;
    int n_values = 1;                    // value 0 is the input
    std::vector<int> outputs;            // value ids
    std::vector<std::string> output_names;
    std::vector<int> last_use;           // per value: last node reading it (-1: none)

    void read_node(const Value& v, int index, std::map<std::string, int>& values,
                   const std::map<std::string, int>& const_ids, std::vector<bool>& used);
    // Output shape of node given its inputs' shapes (ModelFormatError if impossible).
    Shape infer(const Node& nd, const std::vector<const Shape*>& in) const;
    void check_attrs(const Value& attrs, const std::set<std::string>& allowed,
                     const std::string& what) const;
    // A Conv node's shape on an input of shape x (checked by infer).
    ConvShape conv_shape(const Node& nd, const Shape& x) const {
        const Shape& w = consts[size_t(nd.weight)].shape;
        return {int(x[0]), int(x[1]), int(x[2]), int(x[3]), int(w[0]), nd.groups, nd.kh, nd.kw,
                nd.sh, nd.sw, nd.pads[0], nd.pads[1], nd.pads[2], nd.pads[3]};
    }
};

void Graph::Impl::check_attrs(const Value& attrs, const std::set<std::string>& allowed,
                              const std::string& what) const {
    if (attrs.type != Value::Type::Object) bad(what + ": \"attrs\" must be a JSON object");
    for (const auto& kv : attrs.object)
        if (!allowed.count(kv.first)) bad(what + ": unsupported attribute \"" + kv.first + "\"");
}

void Graph::Impl::read_node(const Value& v, int index, std::map<std::string, int>& values,
                            const std::map<std::string, int>& const_ids, std::vector<bool>& used) {
    std::string what = "node " + std::to_string(index);
    if (v.type != Value::Type::Object) bad(what + " is not a JSON object");
    for (const auto& kv : v.object)
        if (kv.first != "op" && kv.first != "inputs" && kv.first != "outputs" && kv.first != "attrs")
            bad(what + " has an unknown key \"" + kv.first + "\"");
    const std::string& op = string_of(member(v, "op", what), what + " op");
    static const std::map<std::string, Op> ops = {
        {"Conv", Op::Conv}, {"Relu", Op::Relu}, {"Sigmoid", Op::Sigmoid},
        {"MaxPool", Op::MaxPool}, {"Resize", Op::Resize}, {"Add", Op::Add},
        {"Transpose", Op::Transpose}, {"Reshape", Op::Reshape}};
    auto it = ops.find(op);
    if (it == ops.end()) bad(what + ": unsupported op \"" + op + "\"");
    Node nd;
    nd.op = it->second;
    nd.what = what += " (" + op + ")";
    const Value& ins = member(v, "inputs", what);
    const Value& outs = member(v, "outputs", what);
    const Value* attrs_p = v.find("attrs");
    const Value empty_attrs = [] { Value e; e.type = Value::Type::Object; return e; }();
    const Value& attrs = attrs_p ? *attrs_p : empty_attrs;
    if (outs.type != Value::Type::Array || outs.array.size() != 1)
        bad(what + ": \"outputs\" must list exactly one name");
    const size_t n_data = nd.op == Op::Add ? 2 : 1;
    const size_t max_in = nd.op == Op::Conv ? 3 : n_data;
    const size_t min_in = nd.op == Op::Conv ? 2 : n_data;
    if (ins.type != Value::Type::Array || ins.array.size() < min_in || ins.array.size() > max_in)
        bad(what + ": \"inputs\" must list " + std::to_string(min_in) +
            (max_in > min_in ? ".." + std::to_string(max_in) : "") + " names");
    for (size_t i = 0; i < ins.array.size(); ++i) {
        const std::string& name = string_of(ins.array[i], what + " input");
        const bool is_const = nd.op == Op::Conv && i >= 1;
        if (is_const) {
            auto c = const_ids.find(name);
            if (c == const_ids.end()) bad(what + ": weight \"" + name + "\" is not a tensor of the file");
            used[c->second] = true;
            (i == 1 ? nd.weight : nd.bias) = c->second;
        } else {
            auto d = values.find(name);
            if (d == values.end())
                bad(what + ": input \"" + name + "\" is not the graph input or an earlier node's output");
            nd.inputs.push_back(d->second);
        }
    }
    const std::string& out = string_of(outs.array[0], what + " output");
    if (values.count(out) || const_ids.count(out)) bad(what + ": output \"" + out + "\" is defined twice");
    nd.output = n_values++;
    values[out] = nd.output;

    auto get = [&](const char* key) { return attrs.find(key); };
    switch (nd.op) {
    case Op::Conv: {
        check_attrs(attrs, {"group", "kernel_shape", "pads", "strides", "dilations"}, what);
        const Tensor& w = consts[nd.weight];
        if (w.shape.size() != 4) bad(what + ": weight must be 4-D (M x C/group x kh x kw), got " + shape_str(w.shape));
        if (get("group")) nd.groups = int(int_of(*get("group"), 1, 1 << 16, what + " group"));
        if (w.shape[0] % nd.groups) bad(what + ": group " + std::to_string(nd.groups) + " does not divide the " + std::to_string(w.shape[0]) + " output channels");
        if (w.shape[2] > kMaxKernel || w.shape[3] > kMaxKernel || w.shape[2] < 1 || w.shape[3] < 1)
            bad(what + ": kernel " + shape_str(w.shape) + " is outside 1.." + std::to_string(kMaxKernel));
        nd.kh = int(w.shape[2]), nd.kw = int(w.shape[3]);
        if (get("kernel_shape") && ints_of(*get("kernel_shape"), 2, 2, 1, kMaxKernel, what + " kernel_shape") != Shape{nd.kh, nd.kw})
            bad(what + ": kernel_shape does not match the weight " + shape_str(w.shape));
        if (get("strides")) {
            auto s = ints_of(*get("strides"), 2, 2, 1, kMaxStride, what + " strides");
            nd.sh = int(s[0]), nd.sw = int(s[1]);
        }
        if (get("pads")) {
            auto p = ints_of(*get("pads"), 4, 4, 0, kMaxPad, what + " pads");
            nd.pads[0] = int(p[0]), nd.pads[1] = int(p[1]), nd.pads[2] = int(p[2]), nd.pads[3] = int(p[3]);
        }
        if (get("dilations")) ints_of(*get("dilations"), 2, 2, 1, 1, what + " dilations (only 1)");
        if (nd.bias >= 0 && consts[nd.bias].shape != Shape{w.shape[0]})
            bad(what + ": bias must be [" + std::to_string(w.shape[0]) + "], got " + shape_str(consts[nd.bias].shape));
        break;
    }
    case Op::MaxPool: {
        check_attrs(attrs, {"kernel_shape", "pads", "strides", "ceil_mode"}, what);
        if (!get("kernel_shape")) bad(what + " lacks kernel_shape");
        auto k = ints_of(*get("kernel_shape"), 2, 2, 1, kMaxKernel, what + " kernel_shape");
        nd.kh = int(k[0]), nd.kw = int(k[1]);
        if (get("strides")) {
            auto s = ints_of(*get("strides"), 2, 2, 1, kMaxStride, what + " strides");
            nd.sh = int(s[0]), nd.sw = int(s[1]);
        }
        if (get("pads")) ints_of(*get("pads"), 4, 4, 0, 0, what + " pads (only 0)");
        if (get("ceil_mode")) int_of(*get("ceil_mode"), 0, 0, what + " ceil_mode (only 0)");
        break;
    }
    case Op::Resize: {
        check_attrs(attrs, {"mode", "coordinate_transformation_mode", "nearest_mode", "scales"}, what);
        auto is = [&](const char* key, const char* want) {
            const Value* a = get(key);
            if (!a || a->type != Value::Type::String || a->string != want)
                bad(what + ": " + key + " must be \"" + want + "\" (the only one supported)");
        };
        is("mode", "nearest");
        is("coordinate_transformation_mode", "asymmetric");
        is("nearest_mode", "floor");
        const Value* sc = get("scales");
        if (!sc || sc->type != Value::Type::Array || sc->array.size() != 4) bad(what + ": scales must be a list of 4 numbers");
        for (size_t i = 0; i < 4; ++i) {
            const Value& e = sc->array[i];
            const double want_max = i < 2 ? 1 : kMaxScale;
            if (e.type != Value::Type::Number || e.number != double(int64_t(e.number)) || e.number < 1 || e.number > want_max)
                bad(what + ": scales must be [1, 1, fy, fx] with integer factors 1.." + std::to_string(kMaxScale));
        }
        nd.fy = int(sc->array[2].number), nd.fx = int(sc->array[3].number);
        break;
    }
    case Op::Transpose:
        check_attrs(attrs, {"perm"}, what);
        nd.dims = ints_of(member(attrs, "perm", what), 1, kMaxRank, 0, kMaxRank - 1, what + " perm");
        {
            Shape sorted = nd.dims;
            std::sort(sorted.begin(), sorted.end());
            for (size_t i = 0; i < sorted.size(); ++i)
                if (sorted[i] != int64_t(i)) bad(what + ": perm is not a permutation");
        }
        break;
    case Op::Reshape:
        check_attrs(attrs, {"shape"}, what);
        nd.dims = ints_of(member(attrs, "shape", what), 1, kMaxRank, -1, kMaxElements, what + " shape");
        if (std::count(nd.dims.begin(), nd.dims.end(), -1) > 1) bad(what + ": shape has more than one -1");
        break;
    default:
        check_attrs(attrs, {}, what);
    }
    nodes.push_back(std::move(nd));
}

Shape Graph::Impl::infer(const Node& nd, const std::vector<const Shape*>& in) const {
    const Shape& x = *in[0];
    auto need_rank = [&](size_t r) {
        if (x.size() != r) bad(nd.what + ": input must be " + std::to_string(r) + "-D, got " + shape_str(x));
    };
    Shape y;
    switch (nd.op) {
    case Op::Conv: {
        need_rank(4);
        const Shape& w = consts[nd.weight].shape;
        if (x[1] != w[1] * nd.groups)
            bad(nd.what + ": input has " + std::to_string(x[1]) + " channels, the weight " + shape_str(w) + " with group " + std::to_string(nd.groups) + " takes " + std::to_string(w[1] * nd.groups));
        const int64_t ph = x[2] + nd.pads[0] + nd.pads[2], pw = x[3] + nd.pads[1] + nd.pads[3];
        if (ph < nd.kh || pw < nd.kw) bad(nd.what + ": input " + shape_str(x) + " is smaller than the kernel");
        y = {x[0], w[0], (ph - nd.kh) / nd.sh + 1, (pw - nd.kw) / nd.sw + 1};
        break;
    }
    case Op::MaxPool:
        need_rank(4);
        if (x[2] < nd.kh || x[3] < nd.kw) bad(nd.what + ": input " + shape_str(x) + " is smaller than the window");
        y = {x[0], x[1], (x[2] - nd.kh) / nd.sh + 1, (x[3] - nd.kw) / nd.sw + 1};
        break;
    case Op::Resize:
        need_rank(4);
        y = {x[0], x[1], x[2] * nd.fy, x[3] * nd.fx};
        break;
    case Op::Add:
        if (*in[1] != x) bad(nd.what + ": shapes " + shape_str(x) + " and " + shape_str(*in[1]) + " differ (no broadcasting)");
        y = x;
        break;
    case Op::Transpose:
        need_rank(nd.dims.size());
        for (int64_t p : nd.dims) y.push_back(x[size_t(p)]);
        break;
    case Op::Reshape: {
        int64_t known = 1;
        int infer_at = -1;
        for (size_t i = 0; i < nd.dims.size(); ++i) {
            int64_t d = nd.dims[i];
            if (d == 0) {
                if (i >= x.size()) bad(nd.what + ": shape copies dimension " + std::to_string(i) + " of a " + std::to_string(x.size()) + "-D input");
                d = x[i];
            }
            if (d == -1) infer_at = int(i);
            else if (d > kMaxElements || (known *= d) > kMaxElements) bad(nd.what + ": shape too large");
            y.push_back(d);
        }
        const int64_t total = count_of(x);
        if (infer_at >= 0) {
            if (known == 0 || total % known) bad(nd.what + ": cannot reshape " + shape_str(x) + " to " + shape_str(nd.dims));
            y[size_t(infer_at)] = total / known;
        }
        if (count_of(y) != total) bad(nd.what + ": cannot reshape " + shape_str(x) + " to " + shape_str(nd.dims));
        break;
    }
    default:
        y = x;
    }
    for (int64_t d : y)
        if (d < 1 || d > kMaxElements) bad(nd.what + ": output shape " + shape_str(y) + " is empty or too large");
    int64_t total = 1;
    for (int64_t d : y)
        if ((total *= d) > kMaxElements) bad(nd.what + ": output " + shape_str(y) + " has too many elements");
    return y;
}

Graph Graph::from_file(const safetensors::File& f) {
    auto impl = std::make_unique<Impl>();
    auto meta = f.metadata.find("graph");
    if (meta == f.metadata.end()) bad("metadata \"graph\" is missing");
    Value g;
    try {
        g = json::parse(meta->second);
    } catch (const json::JsonError& e) {
        bad(std::string("metadata \"graph\" is not valid JSON (") + e.what() + ")");
    }
    if (g.type != Value::Type::Object) bad("graph is not a JSON object");
    for (const auto& kv : g.object)
        if (kv.first != "input" && kv.first != "outputs" && kv.first != "nodes")
            bad("graph has an unknown key \"" + kv.first + "\"");

    std::map<std::string, int> const_ids;
    for (const auto& kv : f.tensors) {
        const safetensors::Tensor& t = kv.second;
        if (t.dtype != "F32") bad("tensor \"" + kv.first + "\" is " + t.dtype + ", expected F32");
        if (t.shape.empty() || t.shape.size() > 4 || t.count() < 1)
            bad("tensor \"" + kv.first + "\" has shape " + shape_str(t.shape) + " (expected 1-4 dimensions, not empty)");
        Tensor c;
        c.shape = t.shape;
        c.data.resize(size_t(t.count()));
        std::memcpy(c.data.data(), f.data + t.begin, t.end - t.begin);  // begin/end checked by parse
        const_ids[kv.first] = int(impl->consts.size());
        impl->consts.push_back(std::move(c));
    }
    std::vector<bool> used(impl->consts.size(), false);

    std::map<std::string, int> values;
    const std::string& input = string_of(member(g, "input", "graph"), "graph input");
    if (const_ids.count(input)) bad("graph input \"" + input + "\" is also a tensor name");
    values[input] = 0;
    const Value& nodes = member(g, "nodes", "graph");
    if (nodes.type != Value::Type::Array || nodes.array.empty() || nodes.array.size() > size_t(kMaxNodes))
        bad("graph nodes must be a list of 1.." + std::to_string(kMaxNodes) + " nodes");
    for (size_t i = 0; i < nodes.array.size(); ++i)
        impl->read_node(nodes.array[i], int(i), values, const_ids, used);
    for (size_t i = 0; i < used.size(); ++i)
        if (!used[i])
            for (const auto& kv : const_ids)
                if (kv.second == int(i)) bad("tensor \"" + kv.first + "\" is not used by the graph");

    const Value& outs = member(g, "outputs", "graph");
    if (outs.type != Value::Type::Array || outs.array.empty() || outs.array.size() > 64)
        bad("graph outputs must be a list of 1..64 names");
    for (const Value& o : outs.array) {
        const std::string& name = string_of(o, "graph output");
        auto it = values.find(name);
        if (it == values.end()) bad("graph output \"" + name + "\" is no node's output");
        if (std::count(impl->output_names.begin(), impl->output_names.end(), name)) bad("graph output \"" + name + "\" is listed twice");
        impl->outputs.push_back(it->second);
        impl->output_names.push_back(name);
    }
    // Fuse Conv + Relu where the Relu is the conv output's only reader.
    std::vector<int> readers(size_t(impl->n_values), 0);
    for (const Node& nd : impl->nodes)
        for (int id : nd.inputs) ++readers[size_t(id)];
    for (int id : impl->outputs) ++readers[size_t(id)];
    std::vector<Node> fused;
    for (size_t i = 0; i < impl->nodes.size(); ++i) {
        Node nd = impl->nodes[i];
        if (nd.op == Op::Conv && i + 1 < impl->nodes.size()) {
            const Node& next = impl->nodes[i + 1];
            if (next.op == Op::Relu && next.inputs[0] == nd.output && readers[size_t(nd.output)] == 1) {
                nd.relu = true;
                nd.output = next.output;
                ++i;
            }
        }
        fused.push_back(std::move(nd));
    }
    impl->nodes = std::move(fused);
    for (Node& nd : impl->nodes) {  // each weight packed for the SGEMM once
        if (nd.op != Op::Conv) continue;
        const Tensor& w = impl->consts[size_t(nd.weight)];
        if (w.shape[1] * nd.groups <= kMaxElements / 2)
            nd.packed = pack_conv_weights(impl->conv_shape(nd, {1, w.shape[1] * nd.groups, 1, 1}), w.data.data());
    }
    impl->last_use.assign(size_t(impl->n_values), -1);
    for (size_t i = 0; i < impl->nodes.size(); ++i)
        for (int id : impl->nodes[i].inputs) impl->last_use[size_t(id)] = int(i);
    for (int id : impl->outputs) impl->last_use[size_t(id)] = int(impl->nodes.size());
    return Graph(std::move(impl));
}

std::vector<std::vector<int64_t>> Graph::output_shapes(const std::vector<int64_t>& input) const {
    std::vector<Shape> shapes(size_t(impl_->n_values));
    shapes[0] = input;
    for (const Node& nd : impl_->nodes) {
        std::vector<const Shape*> in;
        for (int id : nd.inputs) in.push_back(&shapes[size_t(id)]);
        shapes[size_t(nd.output)] = impl_->infer(nd, in);
    }
    std::vector<Shape> out;
    for (int id : impl_->outputs) out.push_back(shapes[size_t(id)]);
    return out;
}

std::vector<Tensor> Graph::run(Tensor input) const {
    if (input.shape.size() != 4 || count_of(input.shape) != int64_t(input.data.size()))
        throw std::invalid_argument("yunet graph: the input must be N x C x H x W");
    output_shapes(input.shape);  // every shape checked before anything runs
    const Impl& g = *impl_;
    std::vector<Tensor> v(size_t(g.n_values));
    v[0] = std::move(input);
    std::vector<float>& scratch = pool.scratch;
    for (size_t i = 0; i < g.nodes.size(); ++i) {
        const Node& nd = g.nodes[i];
        const Tensor& x = v[size_t(nd.inputs[0])];
        std::vector<const Shape*> in;
        for (int id : nd.inputs) in.push_back(&v[size_t(id)].shape);
        Tensor y;
        y.shape = g.infer(nd, in);
        y.data = pool.take(size_t(count_of(y.shape)));
        const Shape& s = x.shape;
        switch (nd.op) {
        case Op::Conv: {
            ConvWeights w;
            w.weight = g.consts[size_t(nd.weight)].data.data();
            w.bias = nd.bias >= 0 ? g.consts[size_t(nd.bias)].data.data() : nullptr;
            w.packed = nd.packed.empty() ? nullptr : nd.packed.data();
            conv2d(g.conv_shape(nd, s), w, nd.relu, x.data.data(), y.data.data(), scratch);
            break;
        }
        case Op::Relu:
            for (size_t k = 0; k < y.data.size(); ++k) y.data[k] = std::max(x.data[k], 0.f);
            break;
        case Op::Sigmoid:
            for (size_t k = 0; k < y.data.size(); ++k) y.data[k] = 1.f / (1.f + std::exp(-x.data[k]));
            break;
        case Op::MaxPool:
            maxpool2d(int(s[0] * s[1]), int(s[2]), int(s[3]), nd.kh, nd.kw, nd.sh, nd.sw, x.data.data(), y.data.data());
            break;
        case Op::Resize:
            upsample_nearest(int(s[0] * s[1]), int(s[2]), int(s[3]), nd.fy, nd.fx, x.data.data(), y.data.data());
            break;
        case Op::Add: {
            const Tensor& b = v[size_t(nd.inputs[1])];
            for (size_t k = 0; k < y.data.size(); ++k) y.data[k] = x.data[k] + b.data[k];
            break;
        }
        case Op::Reshape:
            std::copy(x.data.begin(), x.data.end(), y.data.begin());
            break;
        case Op::Transpose: {
            if (nd.dims == Shape{0, 2, 3, 1}) {  // NCHW to NHWC: a matrix transpose per image
                const int64_t c = s[1], hw = s[2] * s[3];
                for (int64_t n = 0; n < s[0]; ++n)
                    transpose(int(c), int(hw), x.data.data() + n * c * hw, hw, y.data.data() + n * c * hw, c);
                break;
            }
            // y index walks in order; the matching x offset from x's strides
            const size_t r = s.size();
            std::vector<int64_t> xstride(r, 1), idx(r, 0);
            for (size_t k = r - 1; k > 0; --k) xstride[k - 1] = xstride[k] * s[k];
            for (size_t k = 0; k < y.data.size(); ++k) {
                int64_t off = 0;
                for (size_t a = 0; a < r; ++a) off += idx[a] * xstride[size_t(nd.dims[a])];
                y.data[k] = x.data[size_t(off)];
                for (size_t a = r; a-- > 0;) {
                    if (++idx[a] < y.shape[a]) break;
                    idx[a] = 0;
                }
            }
            break;
        }
        }
        v[size_t(nd.output)] = std::move(y);
        for (int id : nd.inputs)
            if (g.last_use[size_t(id)] == int(i)) pool.give(std::move(v[size_t(id)].data));
    }
    std::vector<Tensor> out;
    for (int id : g.outputs) out.push_back(v[size_t(id)]);
    for (Tensor& t : v) pool.give(std::move(t.data));
    return out;
}

const std::vector<std::string>& Graph::output_names() const { return impl_->output_names; }

Graph::Graph(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Graph::Graph(Graph&&) noexcept = default;
Graph& Graph::operator=(Graph&&) noexcept = default;
Graph::~Graph() = default;

}  // namespace face
}  // namespace deepid2
