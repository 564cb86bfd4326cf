// CPU kernel of the exact per-unit quantile of Network Dissection's thresholds (paper.md section
// 5.2; the Python side, which plans the passes and holds the state, is
// mmit_fast/interpret/quantile.py, ExactQuantile).
//
// Order-preserving key of a float32 value v with bits u (IEEE 754):
//
//   key(v) = ~u            when the sign bit is set (negative values: larger magnitude, smaller key)
//          = u | 2^31      otherwise
//
// so key(a) < key(b) exactly when a < b (with -0 < +0, equal as numbers). A rank is then found by
// radix selection on the key's bits, most significant first, in at most three passes over the
// data (levels of 12, 12 and 8 bits): pass 1 counts every value in 4096 bins of its top 12 bits
// (a log-scale histogram: sign, exponent and 3 mantissa bits), later passes count, inside the one
// bin that holds the wanted rank, the next bits; after 32 bits the key, hence the value, is exact.
// A bin that holds few values (the Python side's cap) is not counted again but collected: its
// values are copied out and the rank is read from them after sorting. Heavy tails, values that
// are mostly zero and constant units need no special case: the bins follow the values' exponents,
// not their range.
//
// One pass, per unit k and target slot j (two per unit: the order statistics below and above
// the interpolated rank; a slot may be idle): a value whose key satisfies
// (key >> shift[j]) == prefix[j] is counted in hist[row[j], (key >> (shift[j] - bits[j])) & (2^bits - 1)]
// (mode 1) or appended to buf[offset[j] + fill[j]++] (mode 2; at most cap[j] values). Units are
// split over OpenMP threads (each owns its slots: no shared writes). Pass 1 also counts each unit's
// values equal to 0 (a rank among a ReLU unit's zeros is then known without refining).

#include "quantile.h"
#include "threads.h"

#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

namespace mmit {
namespace {

inline uint64_t order_key(float v) {
    uint32_t u;
    std::memcpy(&u, &v, 4);
    return (u & 0x80000000u) ? uint64_t(~u) : uint64_t(u | 0x80000000u);
}


// x float32 [B, K, S] (value s of unit k in batch row b at (b * K + k) * S + s); the slot arrays
// have 2 * K entries (unit k: slots 2k, 2k + 1): mode (0 idle, 1 count, 2 collect), shift, bits,
// prefix, row (histogram row of a counting slot), offset / fill / cap (a collecting slot's part of
// buf). hist int64 [rows, 4096]. check_finite: count non-finite values (nothing else is done then,
// for the units holding them). Returns the number of non-finite values, or -1 - j when
// collecting slot j would overflow its cap (the caller's counts were wrong: a bug, or a pass over
// other data than the one counted).
int64_t radix_pass_ptr(uintptr_t x, int64_t B, int64_t K, int64_t S, uintptr_t mode_p, uintptr_t shift_p,
                       uintptr_t bits_p, uintptr_t prefix_p, uintptr_t row_p, uintptr_t hist_p, uintptr_t offset_p,
                       uintptr_t fill_p, uintptr_t cap_p, uintptr_t buf_p, bool check_finite, uintptr_t zeros_p,
                       int threads) {
    if (B < 0 || K < 0 || S < 0) throw std::invalid_argument("radix_pass: bad shape");
    const float *v = reinterpret_cast<const float *>(x);
    const int32_t *mode = reinterpret_cast<const int32_t *>(mode_p);
    const int32_t *shift = reinterpret_cast<const int32_t *>(shift_p);
    const int32_t *bits = reinterpret_cast<const int32_t *>(bits_p);
    const int64_t *prefix = reinterpret_cast<const int64_t *>(prefix_p);
    const int64_t *row = reinterpret_cast<const int64_t *>(row_p);
    int64_t *hist = reinterpret_cast<int64_t *>(hist_p);
    const int64_t *offset = reinterpret_cast<const int64_t *>(offset_p);
    int64_t *fill = reinterpret_cast<int64_t *>(fill_p);
    const int64_t *cap = reinterpret_cast<const int64_t *>(cap_p);
    float *buf = reinterpret_cast<float *>(buf_p);
    int64_t *zeros = reinterpret_cast<int64_t *>(zeros_p);
    for (int64_t j = 0; j < 2 * K; ++j) {
        if (mode[j] < 0 || mode[j] > 2) throw std::invalid_argument("radix_pass: mode must be 0, 1 or 2");
        if (mode[j] && (shift[j] < 0 || shift[j] > 32 || (mode[j] == 1 && (bits[j] < 1 || bits[j] > 12 || bits[j] > shift[j]))))
            throw std::invalid_argument("radix_pass: bad shift/bits");
    }
    py::gil_scoped_release nogil;
    const int nt = thread_count(threads);
    int64_t bad = 0, overflow = -1;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 8) reduction(+ : bad) if (B * K * S >= (1 << 15))
    for (int64_t k = 0; k < K; ++k) {
        if (check_finite || zeros) {
            int64_t nonfinite = 0, z = 0;
            for (int64_t b = 0; b < B; ++b) {
                const float *p = v + (b * K + k) * S;
                for (int64_t s = 0; s < S; ++s) {
                    nonfinite += !std::isfinite(p[s]);
                    z += p[s] == 0.0f;
                }
            }
            if (check_finite && nonfinite) {
                bad += nonfinite;
                continue;
            }
            if (zeros) zeros[k] += z;
        }
        for (int64_t j = 2 * k; j < 2 * k + 2; ++j) {
            if (!mode[j]) continue;
            const int sh = shift[j];
            const uint64_t pre = uint64_t(prefix[j]);
            if (mode[j] == 1) {
                const int down = sh - bits[j];
                const uint64_t mask = (uint64_t(1) << bits[j]) - 1;
                int64_t *h = hist + row[j] * 4096;
                for (int64_t b = 0; b < B; ++b) {
                    const float *p = v + (b * K + k) * S;
                    for (int64_t s = 0; s < S; ++s) {
                        const uint64_t key = order_key(p[s]);
                        if ((key >> sh) == pre) h[(key >> down) & mask] += 1;
                    }
                }
            } else {
                float *dst = buf + offset[j];
                int64_t f = fill[j];
                const int64_t c = cap[j];
                for (int64_t b = 0; b < B && f <= c; ++b) {
                    const float *p = v + (b * K + k) * S;
                    for (int64_t s = 0; s < S; ++s)
                        if ((order_key(p[s]) >> sh) == pre) {
                            if (f < c) dst[f] = p[s];
                            ++f;
                        }
                }
                fill[j] = f;
                if (f > c) {
#pragma omp critical
                    overflow = j;
                }
            }
        }
    }
    if (overflow >= 0) return -1 - overflow;
    return bad;
}

// For each slot i: the first bin b of histogram row rows[i] (int64 [R, 4096], first nb bins used)
// whose cumulative count exceeds rank[i]; rank[i] becomes the rank inside that bin, bin[i] = b and
// size[i] = its count. A linear scan of one row per slot (no cumulative array).
void radix_select_ptr(uintptr_t hist_p, int64_t R, int64_t nb, uintptr_t rows_p, uintptr_t rank_p, uintptr_t bin_p,
                      uintptr_t size_p, int64_t n) {
    if (nb < 1 || nb > 4096 || R < 0 || n < 0) throw std::invalid_argument("radix_select: bad shape");
    const int64_t *hist = reinterpret_cast<const int64_t *>(hist_p);
    const int64_t *rows = reinterpret_cast<const int64_t *>(rows_p);
    int64_t *rank = reinterpret_cast<int64_t *>(rank_p);
    int64_t *bin = reinterpret_cast<int64_t *>(bin_p);
    int64_t *size = reinterpret_cast<int64_t *>(size_p);
    for (int64_t i = 0; i < n; ++i)
        if (rows[i] < 0 || rows[i] >= R) throw std::invalid_argument("radix_select: row out of range");
    py::gil_scoped_release nogil;
    for (int64_t i = 0; i < n; ++i) {
        const int64_t *h = hist + rows[i] * 4096;
        int64_t before = 0, b = 0;
        while (b < nb - 1 && before + h[b] <= rank[i]) before += h[b++];
        rank[i] -= before;
        bin[i] = b;
        size[i] = h[b];
    }
}

}  // namespace

void register_quantile(py::module_ &m) {
    m.def("radix_select_ptr", &radix_select_ptr, py::arg("hist"), py::arg("R"), py::arg("nb"), py::arg("rows"),
          py::arg("rank"), py::arg("bin"), py::arg("size"), py::arg("n"),
          "Per slot, the histogram bin that holds its rank (see csrc/quantile.cpp): hist int64 [R, 4096]; rows, rank "
          "(updated to the rank inside the bin), bin, size int64 [n].");
    m.def("radix_pass_ptr", &radix_pass_ptr, py::arg("x"), py::arg("B"), py::arg("K"), py::arg("S"), py::arg("mode"),
          py::arg("shift"), py::arg("bits"), py::arg("prefix"), py::arg("row"), py::arg("hist"), py::arg("offset"),
          py::arg("fill"), py::arg("cap"), py::arg("buf"), py::arg("check_finite"), py::arg("zeros"), py::arg("threads"),
          "One radix-selection pass of the exact per-unit quantile on data pointers (see csrc/quantile.cpp): x float32 "
          "[B, K, S]; per slot (2 per unit) int32 mode/shift/bits, int64 prefix/row/offset/fill/cap; hist int64 "
          "[rows, 4096] (added to); buf float32 (collected values); zeros int64 [K] (values equal to 0 added to, "
          "when not 0). Returns the number of non-finite values "
          "(check_finite), or -1 - slot when a collecting slot overflows its cap.");
}

}  // namespace mmit
