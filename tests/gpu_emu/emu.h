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
// Only what the kernels use is provided; arithmetic is IEEE float/double as
// on the GPU, except that the GPU may fuse a * b + c into an FMA (so results
// agree to rounding, not bit for bit).
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
#define DYN_SMEM(T, name) T* name = reinterpret_cast<T*>(emu::dyn_smem())

namespace emu {

struct Fiber {
    ucontext_t ctx;
    dim3 tid;
    int state;  // 0 runnable, 1 at a barrier, 2 returned
};

inline dim3 block_idx, block_dim, grid_dim;
inline std::vector<Fiber> fibers;
inline std::vector<std::vector<char>> stacks;
inline int current = 0;
inline ucontext_t sched;
inline std::vector<unsigned char> dyn;
inline void (*entry_fn)(void**) = nullptr;
inline void** entry_args = nullptr;
inline std::string error;

inline Fiber& cur() { return fibers[current]; }
inline void* dyn_smem() { return dyn.data(); }

inline void syncthreads() {
    Fiber& f = cur();
    f.state = 1;
    swapcontext(&f.ctx, &sched);
}

inline void fiber_main() {
    entry_fn(entry_args);
    cur().state = 2;
    // returning resumes uc_link (the scheduler)
}

// Runs one launch; returns false (and sets error) on a divergent barrier.
inline bool launch(void (*fn)(void**), const unsigned grid[3], const unsigned block[3],
                   size_t shmem, void** args) {
    const int nt = int(block[0] * block[1] * block[2]);
    const bool reverse = getenv("EMU_ORDER") && std::string(getenv("EMU_ORDER")) == "reverse";
    entry_fn = fn;
    entry_args = args;
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
                for (;;) {
                    for (int i = 0; i < nt; ++i) {
                        current = reverse ? nt - 1 - i : i;
                        if (fibers[current].state == 0) swapcontext(&sched, &fibers[current].ctx);
                    }
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
