// A CPU emulator for the deepid2 CUDA kernels (kernels/*.cu), for tests on
// machines without a GPU. Force-included (g++ -include emu.h) before a kernel
// file's source as the gpu backend builds it (kernels/common.cuh pasted in).
//
// Model: the blocks of a launch run one after another; the threads of a
// block are fibers (ucontext) on one OS thread, switched at __syncthreads.
// Each barrier phase runs the threads in index order (EMU_ORDER=reverse:
// reverse order, to shake out missing barriers). A block where some threads
// wait at a barrier while others have returned is reported as an error
// (real GPUs hang or misbehave there). Atomics are plain read-modify-writes
// (one OS thread). __shared__ arrays are function statics (blocks never
// overlap); dynamic shared memory is filled with NaN bytes before each block.
//
// Warp-collective instructions (the TF32 tensor-core mma of kernels/tc.cuh)
// exchange registers between the 32 lanes of a warp: each lane posts its
// operands and waits at a warp barrier (fiber state 3) until all 32 lanes of
// its warp have posted, then computes its own share of the result from
// everyone's operands, as the PTX ISA lays the fragments out. A warp whose
// lanes do not all reach the same collective (some returned, some at
// __syncthreads, a partial warp, a different instruction) is an error, as
// the hardware's .aligned instructions require the whole warp, converged.
//
// Only what the kernels use is provided; arithmetic is IEEE float/double as
// on the GPU, except that the GPU may fuse a * b + c into an FMA (so results
// agree to rounding, not bit for bit), and that the tensor cores' internal
// summation order and rounding are not specified (here: the eight products
// of an mma, exact for TF32 inputs, added to the accumulator one by one in
// k order, each add rounded to nearest float).
#pragma once
#define DEEPID2_EMU 1

#include <math.h>
#include <string.h>
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x, y, z;
};
struct float4 {
    float x, y, z, w;
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define DEV inline
#define LDG(p) (*(p))
#define LAUNCH_BOUNDS(n)
#define LAUNCH_BOUNDS_MIN(n, b)
#define DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(emu::dyn_smem())

namespace emu {

struct Fiber {
    ucontext_t ctx;
    dim3 tid;
    int state;  // 0 runnable, 1 at a barrier, 2 returned, 3 at a warp barrier
};

// Operands of one warp-collective instruction, posted by each lane; double
// buffered by the parity of the lane's collective count (a lane can post the
// next one only after every lane has passed the barrier of this one, and so
// has read this one's operands).
struct WarpPost {
    int op;        // which instruction (kOp*), for the convergence check
    long seq;      // the lane's collective count
    unsigned w[16];
};
struct WarpExchange {
    WarpPost lane[2][32];
};
enum { kOpMmaTf32 = 1 };

inline dim3 block_idx, block_dim, grid_dim;
inline std::vector<Fiber> fibers;
inline std::vector<std::vector<char>> stacks;
inline int current = 0;
inline ucontext_t sched;
inline std::vector<unsigned char> dyn;
inline void (*entry_fn)(void**) = nullptr;
inline void** entry_args = nullptr;
inline std::string error;
inline std::vector<WarpExchange> warps;   // one per warp of the block
inline std::vector<long> lane_seq;        // collectives posted, per thread

inline Fiber& cur() { return fibers[current]; }
inline void* dyn_smem() { return dyn.data(); }

inline void syncthreads() {
    Fiber& f = cur();
    f.state = 1;
    swapcontext(&f.ctx, &sched);
}

// Fails the launch: the scheduler stops after the current pass over the
// block's threads and reports the first error.
inline void fail(const std::string& what) {
    if (error.empty()) error = what;
}

inline void warp_barrier() {
    Fiber& f = cur();
    f.state = 3;
    swapcontext(&f.ctx, &sched);
}

// Posts this lane's n words for instruction op, waits for the warp, and
// returns the warp's 32 posts (index = lane) or nullptr after an error.
inline const WarpPost* warp_exchange(int op, const unsigned* words, int n) {
    const int t = current, wi = t / 32, ln = t % 32;
    const long seq = lane_seq[t]++;
    WarpPost& mine = warps[wi].lane[seq & 1][ln];
    mine.op = op;
    mine.seq = seq;
    for (int i = 0; i < n; ++i) mine.w[i] = words[i];
    warp_barrier();
    const WarpPost* all = warps[wi].lane[seq & 1];
    for (int l = 0; l < 32; ++l)
        if (all[l].op != op || all[l].seq != seq) {
            char buf[200];
            snprintf(buf, sizeof buf,
                     "warp %d of block (%u, %u, %u): lanes %d and %d are at different "
                     "warp-collective instructions",
                     wi, block_idx.x, block_idx.y, block_idx.z, ln, l);
            fail(buf);
            return nullptr;
        }
    return all;
}

inline float bits_float(unsigned u) {
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}
inline unsigned float_bits(float f) {
    unsigned u;
    memcpy(&u, &f, sizeof u);
    return u;
}

// cvt.rna.tf32.f32: round to the nearest TF32 value (10 explicit mantissa
// bits), ties away from zero; the result is a float with its low 13 bits 0.
// Infinities stay; a NaN stays a NaN; a value past the largest TF32 rounds
// to infinity, as the hardware's rounding does.
inline unsigned cvt_rna_tf32_f32(float v) {
    const unsigned u = float_bits(v);
    if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0x7fffffu) ? (u | 0x400000u) : u;
#ifdef EMU_TF32_TRUNCATE  // tests only: what a kernel gets without cvt.rna (the checks must fail)
    return u & 0xffffe000u;
#endif
    return (u + 0x1000u) & 0xffffe000u;
}

// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 d, a, b, c (PTX ISA,
// "Matrix Fragments for mma.m16n8k8", .tf32): with g = lane / 4 and
// t = lane % 4, lane holds
//   a0 = A[g][t], a1 = A[g+8][t], a2 = A[g][t+4], a3 = A[g+8][t+4]  (A 16 x 8)
//   b0 = B[t][g], b1 = B[t+4][g]                                     (B 8 x 8)
//   c0 = C[g][2t], c1 = C[g][2t+1], c2 = C[g+8][2t], c3 = C[g+8][2t+1]
// and gets D = A B + C in the same places as C. The tensor cores read only
// the top 19 bits of a TF32 operand (the low 13 are dropped here too).
inline void mma_m16n8k8_tf32(float d[4], const unsigned a[4], const unsigned b[2],
                             const float c[4]) {
    unsigned words[10];
    for (int i = 0; i < 4; ++i) words[i] = a[i];
    words[4] = b[0];
    words[5] = b[1];
    for (int i = 0; i < 4; ++i) words[6 + i] = float_bits(c[i]);
    const WarpPost* all = warp_exchange(kOpMmaTf32, words, 10);
    if (!all) return;
    float A[16][8], B[8][8], C[16][8];
    for (int l = 0; l < 32; ++l) {
        const int g = l / 4, t = l % 4;
        const unsigned* w = all[l].w;
        auto op = [](unsigned x) { return bits_float(x & 0xffffe000u); };
        A[g][t] = op(w[0]);
        A[g + 8][t] = op(w[1]);
        A[g][t + 4] = op(w[2]);
        A[g + 8][t + 4] = op(w[3]);
        B[t][g] = op(w[4]);
        B[t + 4][g] = op(w[5]);
        C[g][2 * t] = bits_float(w[6]);
        C[g][2 * t + 1] = bits_float(w[7]);
        C[g + 8][2 * t] = bits_float(w[8]);
        C[g + 8][2 * t + 1] = bits_float(w[9]);
    }
    const int ln = current % 32, g = ln / 4, t = ln % 4;
    for (int i = 0; i < 4; ++i) {
        const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float acc = C[row][col];
        for (int k = 0; k < 8; ++k) acc += A[row][k] * B[k][col];
        d[i] = acc;
    }
}

inline void fiber_main() {
    entry_fn(entry_args);
    cur().state = 2;
    // returning resumes uc_link (the scheduler)
}

// Lets the warps whose 32 lanes all wait at a warp barrier go on (state 0);
// false (and error set) where only some lanes of a warp got there.
inline bool release_warps(int nt, unsigned bx, unsigned by, unsigned bz) {
    for (int w0 = 0; w0 < nt; w0 += 32) {
        int at = 0, n = 0;
        for (int t = w0; t < nt && t < w0 + 32; ++t, ++n) at += fibers[t].state == 3;
        if (at == 0) continue;
        if (at != 32) {
            char buf[256];
            snprintf(buf, sizeof buf,
                     "warp %d of block (%u, %u, %u): %d of its %d lanes reached a "
                     "warp-collective instruction, the others returned or wait at "
                     "__syncthreads (the instruction needs all 32 lanes)",
                     w0 / 32, bx, by, bz, at, n);
            error = buf;
            return false;
        }
        for (int t = w0; t < w0 + 32; ++t) fibers[t].state = 0;
    }
    return true;
}

// Runs one launch; returns false (and sets error) on a divergent barrier.
inline bool launch(void (*fn)(void**), const unsigned grid[3], const unsigned block[3],
                   size_t shmem, void** args) {
    const int nt = int(block[0] * block[1] * block[2]);
    const bool reverse = getenv("EMU_ORDER") && std::string(getenv("EMU_ORDER")) == "reverse";
    entry_fn = fn;
    entry_args = args;
    error.clear();
    grid_dim = {grid[0], grid[1], grid[2]};
    block_dim = {block[0], block[1], block[2]};
    fibers.assign(nt, Fiber{});
    if (int(stacks.size()) < nt) stacks.resize(nt);
    for (auto& s : stacks) s.resize(256 * 1024);
    dyn.assign(shmem + 16, 0xff);
    for (unsigned bz = 0; bz < grid[2]; ++bz)
        for (unsigned by = 0; by < grid[1]; ++by)
            for (unsigned bx = 0; bx < grid[0]; ++bx) {
                block_idx = {bx, by, bz};
                std::fill(dyn.begin(), dyn.end(), 0xff);  // NaN floats, -1 ints
                for (int t = 0; t < nt; ++t) {
                    Fiber& f = fibers[t];
                    f.tid = {unsigned(t % block[0]), unsigned((t / block[0]) % block[1]),
                             unsigned(t / (block[0] * block[1]))};
                    f.state = 0;
                    getcontext(&f.ctx);
                    f.ctx.uc_stack.ss_sp = stacks[t].data();
                    f.ctx.uc_stack.ss_size = stacks[t].size();
                    f.ctx.uc_link = &sched;
                    makecontext(&f.ctx, fiber_main, 0);
                }
                warps.assign((nt + 31) / 32, WarpExchange{});
                lane_seq.assign(nt, 0);
                for (;;) {
                    for (int i = 0; i < nt; ++i) {
                        current = reverse ? nt - 1 - i : i;
                        if (fibers[current].state == 0) swapcontext(&sched, &fibers[current].ctx);
                    }
                    if (!error.empty()) return false;
                    if (!release_warps(nt, bx, by, bz)) return false;
                    bool warp_released = false;
                    for (auto& f : fibers) warp_released |= f.state == 0;
                    if (warp_released) continue;
                    int waiting = 0, done = 0;
                    for (auto& f : fibers) (f.state == 1 ? waiting : done) += 1;
                    if (waiting == 0) break;
                    if (done > 0) {
                        char buf[256];
                        snprintf(buf, sizeof buf,
                                 "divergent __syncthreads in block (%u, %u, %u): %d threads "
                                 "returned while %d wait at a barrier",
                                 bx, by, bz, done, waiting);
                        error = buf;
                        return false;
                    }
                    for (auto& f : fibers) f.state = 0;
                }
            }
    return true;
}

template <class... A, size_t... I>
void invoke_impl(void (*f)(A...), void** a, std::index_sequence<I...>) {
    f(*static_cast<std::remove_cv_t<std::remove_reference_t<A>>*>(a[I])...);
}
template <class... A>
void invoke(void (*f)(A...), void** a) {
    invoke_impl(f, a, std::index_sequence_for<A...>{});
}

}  // namespace emu

#define threadIdx (emu::cur().tid)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __syncthreads() emu::syncthreads()

inline float atomicAdd(float* p, float v) {
    const float old = *p;
    *p = old + v;
    return old;
}
inline double atomicAdd(double* p, double v) {
    const double old = *p;
    *p = old + v;
    return old;
}
inline int atomicOr(int* p, int v) {
    const int old = *p;
    *p = old | v;
    return old;
}
inline float __int_as_float(int v) {
    float f;
    memcpy(&f, &v, sizeof f);
    return f;
}
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
