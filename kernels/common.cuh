// Shared helpers for the deepid2 GPU kernels (kernels/*.cu).
//
// Every .cu file is compiled three ways, so this header uses nothing beyond
// what all three provide:
//   - NVRTC through cupy.RawModule (deepid2_core/backends/gpu.py): the
//     backend pastes this file in place of its #include line, so the source
//     that CuPy hashes for its kernel cache holds the header too;
//   - nvcc -arch=sm_90 -c (kernels/check_compile.sh), warnings as errors;
//   - the CPU emulator of the tests (tests/gpu_emu/), where DEEPID2_EMU is
//     defined and emu.h provides threadIdx, __syncthreads, atomics, ....
// No standard headers: NVRTC has none. Integer types are the built-in ones
// (int = 32 bits, long long = 64 bits on every CUDA target).
//
// Rules the kernels follow (the emulator relies on them too):
//   - block-wide reductions go through shared memory and __syncthreads, in a
//     fixed tree order, so they are deterministic; no warp shuffles;
//   - every __syncthreads is reached by all threads of the block (early
//     returns are uniform across the block and happen before the first one);
//   - every kernel is extern "C" so its name is the same in CuPy and nvcc.
#ifndef DEEPID2_KERNELS_COMMON_CUH
#define DEEPID2_KERNELS_COMMON_CUH

#ifndef DEEPID2_EMU
#define DEV __device__ __forceinline__
// Dynamic shared memory of a kernel, as an array of T (16-byte aligned).
#define DYN_SMEM(T, name)                                   \
    extern __shared__ __align__(16) unsigned char dsmem_[]; \
    T* name = reinterpret_cast<T*>(dsmem_)
#define LDG(p) __ldg(p)
#define LAUNCH_BOUNDS(n) __launch_bounds__(n)
// ... and at least b resident blocks per SM: a register budget of 64K / (n b)
// per thread, where ptxas's own occupancy target would spill.
#define LAUNCH_BOUNDS_MIN(n, b) __launch_bounds__(n, b)
#endif

typedef long long i64;

// Bits of the int error flag that some kernels set (atomicOr) when an input
// index is invalid; the host reads the flag back and raises ValueError.
#define FLAG_LABEL 1       // joint_loss: a label outside [0, n_classes)
#define FLAG_PAIR_INDEX 2  // joint_loss: pair_a / pair_b outside [0, N)
#define FLAG_PAIR_Y 4      // joint_loss: pair_y not +1 / -1
#define FLAG_ARGMAX 8      // maxpool_backward: argmax outside its window
#define FLAG_INDEX 16      // assemble_batch: an index outside the patches

DEV int imin(int a, int b) { return a < b ? a : b; }
DEV int imax(int a, int b) { return a > b ? a : b; }
DEV i64 lmin(i64 a, i64 b) { return a < b ? a : b; }

DEV float neg_inf() { return __int_as_float(0xff800000); }

// ReLU with the CPU backend's NaN behaviour (std::max(v, 0.0f) keeps NaN).
DEV float relu_f(float v) { return v < 0.0f ? 0.0f : v; }

// Sum of one double per thread over the block, in a fixed tree order (the
// result is the same on every run). blockDim.x must be a power of two and buf
// must hold blockDim.x doubles of shared memory. Every thread must call it;
// every thread gets the sum.
DEV double block_sum_double(double v, double* buf) {
    const int t = threadIdx.x;
    buf[t] = v;
    __syncthreads();
    for (int s = blockDim.x / 2; s > 0; s >>= 1) {
        if (t < s) buf[t] += buf[t + s];
        __syncthreads();
    }
    const double r = buf[0];
    __syncthreads();  // buf may be reused right after
    return r;
}

#endif  // DEEPID2_KERNELS_COMMON_CUH
