// The OpenMP thread count the CPU kernels use: `threads` when > 0, else OpenMP's default;
// 1 when built without OpenMP.
#pragma once

#ifdef _OPENMP
#include <omp.h>
#endif

namespace mmit {

inline int thread_count(int threads) {
#ifdef _OPENMP
    return threads > 0 ? threads : omp_get_max_threads();
#else
    (void)threads;
    return 1;
#endif
}

}  // namespace mmit
