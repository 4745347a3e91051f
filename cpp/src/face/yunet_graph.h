// A small interpreter for the graph of a "deepid2-yunet/1" file (metadata
// "graph", written by cpp/tools/convert_yunet.py): ONNX's node list with the
// shape constants folded into attributes, float32 NCHW, batch 1 or more.
// Ops: Conv (groups, pads, strides), Relu, Sigmoid, MaxPool, Resize (nearest,
// integer factors), Add (same shapes), Transpose, Reshape.
//
// Everything in the file is checked when it is read (ModelFormatError naming
// the node and the problem): op names, attributes and their ranges, that each
// input exists before its use, each weight's shape; and before every run the
// shapes are propagated from the input's, so a graph that cannot take an
// input fails cleanly instead of reading out of bounds.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "../infer/safetensors.h"

namespace deepid2 {
namespace face {

// Leaves new elements uninitialised on resize: every kernel writes all of its
// output, and zeroing each activation first cost 15% of a run.
template <typename T>
struct UninitAllocator : std::allocator<T> {
    template <typename U>
    struct rebind {
        using other = UninitAllocator<U>;
    };
    UninitAllocator() = default;
    template <typename U>
    UninitAllocator(const UninitAllocator<U>&) noexcept {}
    template <typename U>
    void construct(U* p) noexcept {
        ::new (static_cast<void*>(p)) U;
    }
    template <typename U, typename... Args>
    void construct(U* p, Args&&... args) {
        ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
    }
};
using FloatBuffer = std::vector<float, UninitAllocator<float>>;

struct Tensor {
    std::vector<int64_t> shape;
    FloatBuffer data;
};

class Graph {
public:
    // f: the parsed file (its "graph" metadata and tensors).
    static Graph from_file(const safetensors::File& f);

    // input: N x C x H x W. Returns the graph's outputs, in output_names() order.
    std::vector<Tensor> run(Tensor input) const;
    // The output shapes run() would give for an input shape (ModelFormatError
    // where the graph cannot take it).
    std::vector<std::vector<int64_t>> output_shapes(const std::vector<int64_t>& input) const;
    const std::vector<std::string>& output_names() const;

    Graph(Graph&&) noexcept;
    Graph& operator=(Graph&&) noexcept;
    ~Graph();
    struct Impl;

private:
    explicit Graph(std::unique_ptr<Impl> impl);
    std::unique_ptr<Impl> impl_;
};

}  // namespace face
}  // namespace deepid2
