// Inference-only forward of the patch networks (model.cpp's features() and
// patch_features()): every layer's weights are packed once, at load, into
// the layout its GEMM reads, the im2col index tables are computed once, and
// activations live in a per-thread workspace reused between calls.
//
//   conv1, conv2  (one region): W packed as the GEMM's left operand (MR-row
//                 panels) times im2col chunks of whole output row pairs;
//                 bias + ReLU + the 2x2 max-pool in one pass over the tile.
//   conv3 (region grid): transposed, positions x maps = im2col (packed
//                 straight into MR-row panels) times W_r^T (packed NR-column
//                 panels): a region's few positions fill MR rows better than
//                 NR columns; then bias + ReLU, and the pool in a second pass.
//   conv4 (locally connected) and the dense layer: few images, so a small
//                 "rows x vectors" kernel over W^T stored row-major (output
//                 maps contiguous), reading im2col through the tap table.
//
// Every output element is summed in the order the ops in src/ use (ascending
// taps, blocks of the GEMM's KC, a block's sum added to the running total),
// so the results equal lsconv_forward / maxpool_forward / dense_forward bit
// for bit, whatever the batch, blocking or thread count.
#pragma once
#include <array>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "deepid2/ops.h"

namespace deepid2 {
namespace infer {

// Zero-initialised float array aligned to 64 bytes (a cache line, an
// AVX-512 vector), so vector loads of packed panels never straddle lines.
class AlignedFloats {
public:
    AlignedFloats() = default;
    explicit AlignedFloats(size_t n) { reset(n); }
    void reset(size_t n);  // n zeros; old contents are dropped
    float* data() { return p_.get(); }
    const float* data() const { return p_.get(); }
    size_t size() const { return n_; }

private:
    struct Free {
        void operator()(float* p) const { std::free(p); }
    };
    std::unique_ptr<float, Free> p_;
    size_t n_ = 0;
};

// conv1/conv2: a one-region convolution followed by a 2x2 pool. Only output
// rows 0 .. 2*(OH/2) - 1 are computed (the pool drops an odd last row).
struct PooledConvPlan {
    LsconvShape s;       // n = 1
    int q = 0;           // taps, C * kh * kw
    int mpad = 0;        // maps rounded up to the GEMM's MR
    int ph = 0, pw = 0;  // pooled output
    std::vector<int32_t> taps;  // input offset of tap p from an output's top-left input
    struct Chunk {
        int oy0, rows, cols, ld;  // output rows [oy0, oy0 + rows), cols = rows * OW, ld padded
    };
    // chunks: for one thread, small enough to stay in cache and padding
    // least; split_chunks: for forward_split, sized so that kSplitThreads
    // threads finish together.
    std::vector<Chunk> chunks, split_chunks;
    int max_ld = 0;
};

// conv3: a grid of regions (each its own weights), output kept whole, then pooled.
struct RegionConvPlan {
    LsconvShape s;
    int q = 0, kn = 0;  // kn: maps rounded up to the GEMM's NR
    int ph = 0, pw = 0;
    std::vector<int32_t> taps;
    // region r's positions: out_off[pos0[r] .. pos0[r+1]) in the output
    // plane (oy * OW + ox) and in_off the same positions' top-left input.
    std::vector<int32_t> pos0, out_off, in_off;
    int max_positions = 0;
};

// conv4: locally connected (every output position is a region).
struct LocalConvPlan {
    LsconvShape s;
    int q = 0, kp = 0;  // kp: maps rounded up to the vector width
    std::vector<int32_t> taps, in_off;  // in_off per position (= region)
};

struct Plan {
    int C = 0, H = 0, W = 0, F = 0, fp = 0;  // fp: F rounded up to the vector width
    PooledConvPlan conv[2];
    RegionConvPlan conv3;
    LocalConvPlan conv4;
    int64_t in_size = 0, p1 = 0, p2 = 0, y3 = 0, p3 = 0, y4 = 0;  // per image
};

// One network's weights in the layouts above.
struct PackedNet {
    AlignedFloats w[4], b[4];
    AlignedFloats dense_w;  // (pool3 + conv4) x fp, row-major, zero columns past F
    AlignedFloats dense_b;
};

// The plan of a model's shapes (convs as derived by model_load.cpp).
Plan make_plan(int C, int H, int W, int F, const std::array<LsconvShape, 4>& convs);
// Packs one network: conv_w[l] as in the file (regions x K x C x kh x kw),
// dense_w (pool3 + conv4) x F.
PackedNet pack_net(const Plan& plan, const std::array<std::vector<float>, 4>& conv_w,
                   const std::array<std::vector<float>, 4>& conv_b, const std::vector<float>& dense_w,
                   const std::vector<float>& dense_b);

// Most images one forward_block call takes.
constexpr int kMaxBlock = 8;

// The network on nb <= kMaxBlock images, on the calling thread: image i is
// read from xs[i] (C x H x W) and its F outputs written to outs[i].
void forward_block(const Plan& plan, const PackedNet& net, int nb, const float* const* xs,
                   float* const* outs);

// forward_split's chunking of conv1/conv2 is balanced for this many threads.
constexpr int kSplitThreads = 2;

// One image on all `threads` OpenMP threads (call outside a parallel region):
// work inside each layer is split over the threads, with a barrier between
// layers. For batch 1, where there is only one image to go around.
void forward_split(const Plan& plan, const PackedNet& net, const float* x, float* out, int threads);

}  // namespace infer
}  // namespace deepid2
