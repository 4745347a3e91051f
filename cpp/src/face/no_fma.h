// Include after the other headers of a file whose floating point must round
// as numpy's does: the build's -ffp-contract=fast (the GEMM kernel's FMAs)
// would fuse a * b + c into one FMA, one rounding instead of numpy's two, and
// an ulp off can move a patch's pixel by a grey level. GCC honours this
// pragma under -ffp-contract=fast; clang only under
// -ffp-contract=fast-honor-pragmas, which CMake and setup.py pass it.
#pragma once
#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC optimize("fp-contract=off")
#endif
