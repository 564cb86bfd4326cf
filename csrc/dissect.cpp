// CPU kernel of action Network Dissection's dataset-level IoU sums (paper.md section 5.2;
// the Python twin is mmit_fast/interpret/dissect.py, IoUTally.update_sparse).
//
// For one batch of B images: unit k's map a_k (h x w, float32) is upsampled bilinearly to the
// mask size H x W and binarised, M_k(y, x) = up(a_k)(y, x) > T_k, with
//
//   up(a)(y, x) = wy0[y] * (wx0[x] a[iy0[y], ix0[x]] + wx1[x] a[iy0[y], ix1[x]])
//               + wy1[y] * (wx0[x] a[iy1[y], ix0[x]] + wx1[x] a[iy1[y], ix1[x]])
//
// evaluated in float64 in exactly this order (the taps iy0, iy1, wy0, wy1, ix0, ... come from
// Python's _axis, so every pixel's value has the same bits as the dense torch path). Then
//
//   area[b, k]          = |M_k(b)|
//   inter[k, concept_p] += |M_k(b) & L_p|   for every concept mask p of image b
//                                           (= area[b, k] when L_p is the whole image).
//
// T_k is float64 (the exact quantile, mmit_fast/interpret/quantile.py): activations are compared
// as double(a) > T_k, upsampled values (already float64) as up(a) > T_k.
//
// Work is bounded by the pixels that can be lit: a bilinear value is a convex combination of
// its (at most) 4 taps, so a pixel is evaluated only when one of its taps is "hot" (a > T_k,
// compared in float32 as the Python side does); an (image, unit) pair without a hot cell is
// skipped outright. Lit pixels go to a bit-packed row mask, and |M & L_p| is a popcount of
// AND-ed 64-bit words over the lit rows only. Concept masks come bit-packed (dissect_tally_bits_ptr:
// from the mask cache, mmit_fast/interpret/maskcache.py; a whole-image label needs no bits) or as
// 0/1 bytes packed here once per batch (dissect_tally_ptr).
// Units are split over OpenMP threads: each thread owns whole rows inter[k, :] and area[:, k],
// so there are no shared writes. Sums are integer counts held in float64 (exact below 2^53).
//
// No FMA contraction here: a fused multiply-add would round differently from the torch path
// (a pixel at exactly the threshold could flip), so contraction is switched off for this file.

#include "dissect.h"
#include "threads.h"

#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

#if defined(__clang__)
#pragma clang fp contract(off)
#elif defined(__GNUC__)
#pragma GCC push_options
#pragma GCC optimize("fp-contract=off")
#endif

namespace mmit {
namespace {

struct Taps {  // one axis of the bilinear upsampling (Python: dissect._axis)
    const int64_t *i0, *i1;
    const double *w0, *w1;
};


// Bit count without the POPCNT instruction (not in the baseline x86-64 ISA this file is built for;
// __builtin_popcountll would call libgcc's table version): the SWAR sum, a few ALU ops.
inline int64_t popcount64(uint64_t v) {
    v = v - ((v >> 1) & 0x5555555555555555ULL);
    v = (v & 0x3333333333333333ULL) + ((v >> 2) & 0x3333333333333333ULL);
    v = (v + (v >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
    return int64_t((v * 0x0101010101010101ULL) >> 56);
}

// masks [P, H, W] bytes, each 0 or 1 -> bits [P, H, WW] (bit x of row y = pixel (y, x)); area[p] <- the
// mask's pixel count. Eight bytes at a time: for 0/1 bytes b_0..b_7 of a little-endian word v,
// (v * 0x0102040810204080) >> 56 = sum b_i 2^i (the partial products never collide in the top byte).
std::vector<uint64_t> pack_masks(const uint8_t *masks, int64_t P, int64_t H, int64_t W, int64_t WW, double *area, int nt) {
    std::vector<uint64_t> bits(size_t(P * H * WW), 0);
#pragma omp parallel for num_threads(nt) schedule(static) if (P * H * W >= (1 << 20))
    for (int64_t p = 0; p < P; ++p) {
        int64_t n = 0;
        for (int64_t y = 0; y < H; ++y) {
            const uint8_t *src = masks + (p * H + y) * W;
            uint64_t *dst = bits.data() + (p * H + y) * WW;
            int64_t x = 0;
            for (; x + 8 <= W; x += 8) {
                uint64_t v;
                std::memcpy(&v, src + x, 8);
                dst[x >> 6] |= ((v * 0x0102040810204080ULL) >> 56) << (x & 63);
            }
            for (; x < W; ++x) dst[x >> 6] |= uint64_t(src[x] != 0) << (x & 63);
            for (int64_t j = 0; j < WW; ++j) n += popcount64(dst[j]);
        }
        area[p] = double(n);
    }
    return bits;
}

// Runs of equal first tap along one axis (i0 never decreases): outputs [start[r], start[r+1]) read
// cells tap[r] and its neighbour. Inside a run x run block the value is bilinear in the two weights,
// which are monotone in the position, so the block's maximum is at one of its 4 corner pixels.
struct Runs {
    std::vector<int64_t> start, tap;
    Runs(const Taps &t, int64_t n) {
        for (int64_t o = 0; o < n; ++o)
            if (o == 0 || t.i0[o] != t.i0[o - 1]) {
                start.push_back(o);
                tap.push_back(t.i0[o]);
            }
        start.push_back(n);
    }
    int64_t size() const { return int64_t(tap.size()); }
};

// Per-thread scratch for one (image, unit) map.
struct Scratch {
    std::vector<uint8_t> hot, hot_row, row_used;
    std::vector<uint64_t> lit;
    std::vector<double> top, bot;  // one block's x-interpolated tap rows (lit_block)
    std::vector<int64_t> word_at;  // the nonzero words of lit (gather_words): their offsets ...
    std::vector<uint64_t> word;    // ... and values
    int64_t ymin = 0, ymax = -1;  // rows holding a lit pixel lie in [ymin, ymax], flagged in row_used
    Scratch(int64_t h, int64_t w, int64_t H, int64_t WW)
        : hot(size_t(h * w)), hot_row(size_t(h)), row_used(size_t(H), 0), lit(size_t(H * WW), 0), top(size_t(WW * 64)),
          bot(size_t(WW * 64)) {}
    void clear(int64_t WW) {  // back to all-dark, touching only the used rows
        for (int64_t y = ymin; y <= ymax; ++y)
            if (row_used[size_t(y)]) {
                std::memset(lit.data() + y * WW, 0, size_t(WW) * sizeof(uint64_t));
                row_used[size_t(y)] = 0;
            }
        ymin = 0;
        ymax = -1;
    }
};

struct Map {  // one unit's map and the upsampling geometry
    const float *a;
    int64_t h, w, H, W, WW;
    const Taps &ty, &tx;
    const Runs &ry, &rx;
    inline double at(int64_t y, int64_t x) const {  // up(a)(y, x) in float64, the torch path's expression
        const float *a0 = a + ty.i0[y] * w, *a1 = a + ty.i1[y] * w;
        const int64_t c0 = tx.i0[x], c1 = tx.i1[x];
        const double top = tx.w0[x] * double(a0[c0]) + tx.w1[x] * double(a0[c1]);
        const double bot = tx.w0[x] * double(a1[c0]) + tx.w1[x] * double(a1[c1]);
        return ty.w0[y] * top + ty.w1[y] * bot;
    }
};

// Lit pixels of one block [y0, y1) x [x0, x1) into s.lit; returns their count. Inside a block every
// pixel reads the same 4 cells, so the two x-interpolated rows top[x], bot[x] are computed once per
// column and each pixel costs wy0[y] * top[x] + wy1[y] * bot[x] (the same operations, hence the same
// bits, as Map::at).
int64_t lit_block(const Map &m, double td, int64_t y0, int64_t y1, int64_t x0, int64_t x1, Scratch &s) {
    const double corner = std::max(std::max(m.at(y0, x0), m.at(y0, x1 - 1)), std::max(m.at(y1 - 1, x0), m.at(y1 - 1, x1 - 1)));
    if (!(corner > td)) return 0;
    const float *a0 = m.a + m.ty.i0[y0] * m.w, *a1 = m.a + m.ty.i1[y0] * m.w;
    const int64_t c0 = m.tx.i0[x0], c1 = m.tx.i1[x0], n = x1 - x0;
    const double a00 = a0[c0], a01 = a0[c1], a10 = a1[c0], a11 = a1[c1];
    double *top = s.top.data(), *bot = s.bot.data();
    for (int64_t x = 0; x < n; ++x) {
        top[x] = m.tx.w0[x0 + x] * a00 + m.tx.w1[x0 + x] * a01;
        bot[x] = m.tx.w0[x0 + x] * a10 + m.tx.w1[x0 + x] * a11;
    }
    int64_t count = 0;
    for (int64_t y = y0; y < y1; ++y) {
        const double wy0 = m.ty.w0[y], wy1 = m.ty.w1[y];
        uint64_t *L = s.lit.data() + y * m.WW;
        int64_t row = 0;
        for (int64_t xs = x0; xs < x1;) {  // one 64-bit word of the row at a time
            const int64_t xe = std::min(x1, (xs | 63) + 1);
            uint64_t bitsw = 0;
            for (int64_t x = xs; x < xe; ++x)
                bitsw |= uint64_t((wy0 * top[x - x0] + wy1 * bot[x - x0]) > td) << (x & 63);
            L[xs >> 6] |= bitsw;
            row += popcount64(bitsw);
            xs = xe;
        }
        if (row) {
            s.row_used[size_t(y)] = 1;
            s.ymin = s.ymax < 0 ? y : std::min(s.ymin, y);
            s.ymax = std::max(s.ymax, y);
            count += row;
        }
    }
    return count;
}

// Binarise up(a) > t into s.lit; returns the lit pixel count (0 when no cell is hot). Only the blocks
// whose 4 cells hold a hot one are looked at; of those, only the ones whose corner maximum exceeds t
// are evaluated pixel by pixel.
int64_t lit_pixels(const Map &m, double t, Scratch &s) {
    bool any = false;
    for (int64_t i = 0; i < m.h; ++i) {
        uint8_t row_any = 0;
        for (int64_t j = 0; j < m.w; ++j) {
            const uint8_t v = double(m.a[i * m.w + j]) > t;
            s.hot[size_t(i * m.w + j)] = v;
            row_any |= v;
        }
        s.hot_row[size_t(i)] = row_any;
        any = any || row_any;
    }
    if (!any) return 0;
    const double td = t;
    int64_t count = 0;
    for (int64_t r = 0; r < m.ry.size(); ++r) {
        const int64_t i0 = m.ry.tap[size_t(r)], i1 = std::min(i0 + 1, m.h - 1);
        if (!(s.hot_row[size_t(i0)] | s.hot_row[size_t(i1)])) continue;
        const uint8_t *h0 = s.hot.data() + i0 * m.w, *h1 = s.hot.data() + i1 * m.w;
        for (int64_t c = 0; c < m.rx.size(); ++c) {
            const int64_t j0 = m.rx.tap[size_t(c)], j1 = std::min(j0 + 1, m.w - 1);
            if (!(h0[j0] | h0[j1] | h1[j0] | h1[j1])) continue;
            count += lit_block(m, td, m.ry.start[size_t(r)], m.ry.start[size_t(r + 1)], m.rx.start[size_t(c)],
                               m.rx.start[size_t(c + 1)], s);
        }
    }
    return count;
}

// The nonzero words of the lit mask, listed once per (image, unit): each concept mask then costs one
// AND + bit count per listed word.
void gather_words(Scratch &s, int64_t WW) {
    s.word_at.clear();
    s.word.clear();
    for (int64_t y = s.ymin; y <= s.ymax; ++y) {
        if (!s.row_used[size_t(y)]) continue;
        for (int64_t j = 0; j < WW; ++j)
            if (const uint64_t v = s.lit[size_t(y * WW + j)]) {
                s.word_at.push_back(y * WW + j);
                s.word.push_back(v);
            }
    }
}

// |lit & mask|
int64_t overlap(const Scratch &s, const uint64_t *mask) {
    int64_t n = 0;
    for (size_t i = 0; i < s.word.size(); ++i) n += popcount64(s.word[i] & mask[s.word_at[i]]);
    return n;
}

// Checks shared by both entries: shapes, mask offsets and concept indices, taps in range.
void check_batch(int64_t B, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W, int64_t P, int64_t C,
                 const int64_t *off, const int64_t *cpt, const Taps &ty, const Taps &tx) {
    if (B < 0 || K < 0 || h < 1 || w < 1 || H < 1 || W < 1 || P < 0 || C < 0)
        throw std::invalid_argument("dissect_tally: bad shape");
    if (off[0] != 0 || off[B] != P) throw std::invalid_argument("dissect_tally: mask offsets must run from 0 to P");
    for (int64_t b = 0; b < B; ++b)
        if (off[b + 1] < off[b]) throw std::invalid_argument("dissect_tally: mask offsets must not decrease");
    for (int64_t p = 0; p < P; ++p)
        if (cpt[p] < 0 || cpt[p] >= C)
            throw std::invalid_argument("dissect_tally: concept index " + std::to_string(cpt[p]) + " outside [0, " +
                                        std::to_string(C) + ")");
    for (int64_t y = 0; y < H; ++y)
        if (ty.i0[y] < 0 || ty.i0[y] >= h || ty.i1[y] < 0 || ty.i1[y] >= h) throw std::invalid_argument("dissect_tally: row tap out of range");
    for (int64_t x = 0; x < W; ++x)
        if (tx.i0[x] < 0 || tx.i0[x] >= w || tx.i1[x] < 0 || tx.i1[x] >= w) throw std::invalid_argument("dissect_tally: column tap out of range");
}

Taps taps_of(uintptr_t i0, uintptr_t i1, uintptr_t w0, uintptr_t w1) {
    return Taps{reinterpret_cast<const int64_t *>(i0), reinterpret_cast<const int64_t *>(i1),
                reinterpret_cast<const double *>(w0), reinterpret_cast<const double *>(w1)};
}

// The sums of one batch, GIL released by the caller: masks are bit-packed, mask p's rows start at
// bits + word[p] (word[p] < 0: the whole image, |M & L_p| = |M|).
void tally_core(const float *a, const double *t, int64_t B, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W,
                const Taps &ty, const Taps &tx, const uint64_t *bits, const int64_t *word, const int64_t *off,
                const int64_t *cpt, int64_t C, double *I, double *A, int nt) {
    const int64_t WW = (W + 63) / 64;
    const Runs ry(ty, H), rx(tx, W);
#pragma omp parallel num_threads(nt)
    {
        Scratch s(h, w, H, WW);
#pragma omp for schedule(dynamic, 4)
        for (int64_t k = 0; k < K; ++k) {
            for (int64_t b = 0; b < B; ++b) {
                const Map m{a + (b * K + k) * h * w, h, w, H, W, WW, ty, tx, ry, rx};
                const int64_t n = lit_pixels(m, t[k], s);
                A[b * K + k] = double(n);
                if (!n) continue;
                gather_words(s, WW);
                for (int64_t p = off[b]; p < off[b + 1]; ++p)
                    I[k * C + cpt[p]] += double(word[p] < 0 ? n : overlap(s, bits + word[p]));
                s.clear(WW);
            }
        }
    }
}

// The whole batch (module comment), masks as bytes. Pointers: act float32 [B, K, h, w]; thr float64 [K];
// taps int64 / float64 [H] and [W]; masks uint8 [P, H, W]; offsets int64 [B + 1] (image b owns masks
// offsets[b] .. offsets[b+1]); concept int64 [P] in [0, C); inter float64 [K, C] (added to); area
// float64 [B, K] and mask_area float64 [P] (written).
void dissect_tally_ptr(uintptr_t act, uintptr_t thr, int64_t B, int64_t K, int64_t h, int64_t w, int64_t H, int64_t W,
                       uintptr_t iy0, uintptr_t iy1, uintptr_t wy0, uintptr_t wy1, uintptr_t ix0, uintptr_t ix1,
                       uintptr_t wx0, uintptr_t wx1, uintptr_t masks, int64_t P, uintptr_t offsets, uintptr_t concept,
                       int64_t C, uintptr_t inter, uintptr_t area, uintptr_t mask_area, int threads) {
    const int64_t *off = reinterpret_cast<const int64_t *>(offsets);
    const int64_t *cpt = reinterpret_cast<const int64_t *>(concept);
    const Taps ty = taps_of(iy0, iy1, wy0, wy1), tx = taps_of(ix0, ix1, wx0, wx1);
    check_batch(B, K, h, w, H, W, P, C, off, cpt, ty, tx);
    const int64_t WW = (W + 63) / 64;
    py::gil_scoped_release nogil;
    const int nt = thread_count(threads);
    const std::vector<uint64_t> bits =
        pack_masks(reinterpret_cast<const uint8_t *>(masks), P, H, W, WW, reinterpret_cast<double *>(mask_area), nt);
    std::vector<int64_t> word(static_cast<size_t>(P));
    for (int64_t p = 0; p < P; ++p) word[size_t(p)] = p * H * WW;
    tally_core(reinterpret_cast<const float *>(act), reinterpret_cast<const double *>(thr), B, K, h, w, H, W, ty, tx,
               bits.data(), word.data(), off, cpt, C, reinterpret_cast<double *>(inter), reinterpret_cast<double *>(area),
               nt);
}

// The same sums with bit-packed masks (the mask cache's layout: mask p's H rows of ceil(W / 64) words,
// bit x of row y = pixel (y, x), starting at bits + word[p]; word[p] = -1: the whole image). bits
// uint64 [n_words]; word int64 [P] (each mask's rows must lie inside bits: checked).
void dissect_tally_bits_ptr(uintptr_t act, uintptr_t thr, int64_t B, int64_t K, int64_t h, int64_t w, int64_t H,
                            int64_t W, uintptr_t iy0, uintptr_t iy1, uintptr_t wy0, uintptr_t wy1, uintptr_t ix0,
                            uintptr_t ix1, uintptr_t wx0, uintptr_t wx1, uintptr_t bits, int64_t n_words,
                            uintptr_t word_p, int64_t P, uintptr_t offsets, uintptr_t concept, int64_t C,
                            uintptr_t inter, uintptr_t area, int threads) {
    const int64_t *off = reinterpret_cast<const int64_t *>(offsets);
    const int64_t *cpt = reinterpret_cast<const int64_t *>(concept);
    const int64_t *word = reinterpret_cast<const int64_t *>(word_p);
    const Taps ty = taps_of(iy0, iy1, wy0, wy1), tx = taps_of(ix0, ix1, wx0, wx1);
    check_batch(B, K, h, w, H, W, P, C, off, cpt, ty, tx);
    const int64_t WW = (W + 63) / 64;
    for (int64_t p = 0; p < P; ++p)
        if (word[p] < -1 || (word[p] >= 0 && word[p] + H * WW > n_words))
            throw std::invalid_argument("dissect_tally: mask " + std::to_string(p) + " lies outside the packed bits");
    py::gil_scoped_release nogil;
    tally_core(reinterpret_cast<const float *>(act), reinterpret_cast<const double *>(thr), B, K, h, w, H, W, ty, tx,
               reinterpret_cast<const uint64_t *>(bits), word, off, cpt, C, reinterpret_cast<double *>(inter),
               reinterpret_cast<double *>(area), thread_count(threads));
}

}  // namespace

void register_dissect(py::module_ &m) {
    m.def("dissect_tally_ptr", &dissect_tally_ptr, py::arg("act"), py::arg("thr"), py::arg("B"), py::arg("K"),
          py::arg("h"), py::arg("w"), py::arg("H"), py::arg("W"), py::arg("iy0"), py::arg("iy1"), py::arg("wy0"),
          py::arg("wy1"), py::arg("ix0"), py::arg("ix1"), py::arg("wx0"), py::arg("wx1"), py::arg("masks"), py::arg("P"),
          py::arg("offsets"), py::arg("concept"), py::arg("C"), py::arg("inter"), py::arg("area"), py::arg("mask_area"), py::arg("threads"),
          "Network Dissection IoU sums of one batch on data pointers (see csrc/dissect.cpp): area[B, K] <- lit pixels "
          "of up(act) > thr (float64); inter[K, C] += lit pixels inside each concept mask; mask_area[P] <- pixels of each "
          "mask (0/1 bytes). The caller guarantees C-contiguous "
          "buffers of the stated types and sizes; offsets, concept indices and taps are range-checked.");
    m.def("dissect_tally_bits_ptr", &dissect_tally_bits_ptr, py::arg("act"), py::arg("thr"), py::arg("B"), py::arg("K"),
          py::arg("h"), py::arg("w"), py::arg("H"), py::arg("W"), py::arg("iy0"), py::arg("iy1"), py::arg("wy0"),
          py::arg("wy1"), py::arg("ix0"), py::arg("ix1"), py::arg("wx0"), py::arg("wx1"), py::arg("bits"),
          py::arg("n_words"), py::arg("word"), py::arg("P"), py::arg("offsets"), py::arg("concept"), py::arg("C"),
          py::arg("inter"), py::arg("area"), py::arg("threads"),
          "dissect_tally_ptr with bit-packed concept masks (the mask cache's layout): mask p's rows start at word[p] "
          "of bits (uint64 [n_words]), or word[p] = -1 for a whole-image label.");
}

}  // namespace mmit

#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC pop_options
#endif
