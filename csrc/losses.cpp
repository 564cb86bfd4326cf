// CPU kernels of the mmit-fast losses: BCE, WARP, LSEP, wLSEP (paper.md section 2).
//
// No torch headers: the Python side hands over contiguous buffers (loss_rows: py::array;
// loss_ptr, the per-call path: the tensors' data pointers) that it checked or allocated itself -- logits [B, C] (float32 or float64), targets [B, C] as the caller holds
// them (uint8 -- a bool tensor viewed as bytes -- float32 or float64), optional class weights
// [C] (the logits' float type), the output row losses [B] and, when a gradient is wanted, the
// output gradient [B, C] -- and these functions fill the outputs.
// Targets are validated while they are read anyway (first pass of every row, no extra pass):
// a value other than 0 or 1 (NaN included) flags the row; loss_rows then returns the flat index
// of the first bad target (-1 when all are good) and Python raises the named ValueError.
// Rows are independent: OpenMP splits them over threads, each row is processed in a few
// cache-resident passes, and every exp is evaluated once per element.
//
// Per row (x logits, Y positives, N negatives, w weights, s = scale on the gradient):
//  BCE   L = sum_i w_i (softplus(x_i) - y_i x_i);         dL/dx_i = w_i (sigmoid(x_i) - y_i)
//  LSEP  A = LSE_N x, B = LSE_Y (log w - x), L = softplus(A + B)
//        dL/dx_j = sigmoid(A+B) exp(x_j - A) (j in N); dL/dx_i = -sigmoid(A+B) w_i exp(-x_i - B)
//        (positives with w_i = 0 take no part: their exp is never evaluated -- exp(-x_i - B)
//        overflows when x_i lies ~88 below the weighted positives, and 0 * inf = NaN)
//  wLSEP L = sum_Y c_i softplus(A - x_i), c_i = w_i / |Y| (w_i for the 'pair' normalisation)
//        dL/dx_i = -c_i sigmoid(A - x_i); dL/dx_j = (sum_Y c_i sigmoid(A - x_i)) exp(x_j - A)
//  WARP  R_i = #{j in N: 1 + x_j - x_i > 0}, S_i = sum_N max(0, 1 + x_j - x_i),
//        c_i = w_i H(R_i) / |Y|, L = sum_Y c_i S_i, dL/dx_i = -c_i R_i,
//        dL/dx_j = sum_{i in Y: 1 + x_j - x_i > 0} c_i.  Exact: for few positives a direct
//        pass over the (compacted) negatives per positive; otherwise sorted negatives with
//        prefix sums + binary search, O(C log C) per row.
// Rows with no positive or no negative: loss 0, gradient 0 (BCE: always defined).
//
// The float kernels are compiled three times, for AVX-512, for AVX2+FMA and for the baseline
// ISA, and picked at run time (__builtin_cpu_supports; MMIT_CPP_NO_AVX512=1 skips AVX-512); exp uses a branch-free Cephes-style polynomial that
// the compiler vectorises (max error ~2 ulp for x <= 88; NaN propagates).

#include "losses.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

namespace py = pybind11;

// The kernels do not read floating-point exception flags, so the compiler may treat FP
// ops as non-trapping: that is what lets GCC if-convert and vectorise the exp / log
// polynomials below (results are unchanged -- this is not -ffast-math).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("no-trapping-math")
#endif

namespace mmit {
namespace {

#define MMIT_INLINE inline __attribute__((always_inline))

// ---------------------------------------------------------------- elementary functions
// exp(x) for x <= 0 (or NaN): every exp the kernels take is of a value <= 0, so there is no
// overflow clamp. exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2 / 2 (Cephes expf
// polynomial); x < -87.3 gives 0, NaN stays NaN
MMIT_INLINE float fast_exp_le0(float x) {
    const float xc = x < -87.3f ? -87.3f : x;
    const float magic = 12582912.0f;
    float n = (xc * 1.44269504088896341f + magic) - magic;
    float r = xc - n * 0.693359375f;
    r = r + n * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    float e = p * r * r + r + 1.0f;
    int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
    float scale;
    std::memcpy(&scale, &bits, sizeof(float));
    float res = e * scale;
    res = x < -87.3f ? 0.0f : res;
    res = (x != x) ? x : res;
    return res;
}
MMIT_INLINE double fast_exp_le0(double x) { return std::exp(x); }

// log1p(t) for t in [0, 1] (all we need: t = exp(-|x|)). u = 1 + t in [1, 2] is reduced to
// [sqrt(1/2), sqrt(2)] without bit tricks, Cephes' logf polynomial gives log(u), and Goldberg's
// log(u) * t / (u - 1) restores the bits of t lost in 1 + t. Branch-free, so it vectorises.
MMIT_INLINE float log1p_01(float t) {
    const float u = 1.0f + t;
    const bool big = u > 1.41421356237309505f;
    const float m = u * (big ? 0.5f : 1.0f);  // constants in the arms: no conditional FP op
    const float e = big ? 1.0f : 0.0f;
    const float xm = m - 1.0f;
    const float z = xm * xm;
    float p = 7.0376836292E-2f;
    p = p * xm - 1.1514610310E-1f;
    p = p * xm + 1.1676998740E-1f;
    p = p * xm - 1.2420140846E-1f;
    p = p * xm + 1.4249322787E-1f;
    p = p * xm - 1.6668057665E-1f;
    p = p * xm + 2.0000714765E-1f;
    p = p * xm - 2.4999993993E-1f;
    p = p * xm + 3.3333331174E-1f;
    float y = p * xm * z;
    y += e * -2.12194440e-4f;
    y += -0.5f * z;
    const float lg = xm + y + e * 0.693359375f;
    const float d = u - 1.0f;
    const float q = t / (d == 0.0f ? 1.0f : d);  // unconditional division: if-convertible
    return d == 0.0f ? t : lg * q;
}
MMIT_INLINE double log1p_01(double t) { return std::log1p(t); }

template <class T>
MMIT_INLINE T softplus(T z) {  // log(1 + e^z), stable for |z| large; softplus(-inf) = 0
    T a = std::fabs(z);
    return (z > T(0) ? z : T(0)) + std::log1p(std::exp(-a));
}
// softplus(z) and sigmoid(z) from one exp (the same formulas as the two functions above)
template <class T>
MMIT_INLINE T softplus_sigmoid(T z, T &sg) {
    const T e = std::exp(-std::fabs(z));
    sg = z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
    return (z > T(0) ? z : T(0)) + std::log1p(e);
}
template <class T>
MMIT_INLINE T sigmoid(T z) {
    T e = std::exp(-std::fabs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <class T, class TY>
struct Row {
    const T *x;
    const TY *y;  // targets: uint8, float or double; positive = nonzero
    const T *w;   // may be null: all ones
    T *g;         // may be null: no gradient wanted
    int64_t C;
    T scale;
    int *bad;     // set to 1 when a target of the row is not 0 or 1
};

// a target value other than 0 and 1 (NaN included), as an int so that it OR-reduces in simd loops
MMIT_INLINE int bad_target(uint8_t v) { return v > 1; }
template <class TY>
MMIT_INLINE int bad_target(TY v) { return static_cast<int>(v != TY(0)) & static_cast<int>(v != TY(1)); }

template <class T, class TY>
MMIT_INLINE void zero_grad(const Row<T, TY> &r) {
    if (r.g) std::fill(r.g, r.g + r.C, T(0));
}

// ---------------------------------------------------------------- BCE
template <class T, class TY, bool HW, bool HG>
MMIT_INLINE T bce_row_impl(const Row<T, TY> &r, T *__restrict__ term) {
    // element terms first (a plain vectorisable map), then their sum
    const T *__restrict__ x = r.x;
    const TY *__restrict__ y = r.y;
    const T *__restrict__ w = r.w;
    T *__restrict__ g = r.g;
    const T scale = r.scale;
    const int64_t C = r.C;
    int bad = 0;
#pragma omp simd reduction(| : bad)
    for (int64_t i = 0; i < C; ++i) {
        T xi = x[i];
        bad |= bad_target(y[i]);
        T yv = T(y[i]) != T(0) ? T(1) : T(0);
        T e = fast_exp_le0(-std::fabs(xi));
        T u = T(1) + e;
        T t = (xi > T(0) ? xi : T(0)) - yv * xi + log1p_01(e);
        if (HW) t *= w[i];
        term[i] = t;
        if (HG) {
            T sg = (xi >= T(0) ? T(1) : e) / u;  // (the division itself is unconditional)
            T gi = scale * (sg - yv);
            if (HW) gi *= w[i];
            g[i] = gi;
        }
    }
    *r.bad |= bad;
    T loss = 0;
#pragma omp simd reduction(+ : loss)
    for (int64_t i = 0; i < C; ++i) loss += term[i];
    return loss;
}
template <class T, class TY>
MMIT_INLINE T bce_row(const Row<T, TY> &r, std::vector<T> &tmp) {
    if (static_cast<int64_t>(tmp.size()) < r.C) tmp.resize(r.C);
    T *t = tmp.data();
    if (r.w) return r.g ? bce_row_impl<T, TY, true, true>(r, t) : bce_row_impl<T, TY, true, false>(r, t);
    return r.g ? bce_row_impl<T, TY, false, true>(r, t) : bce_row_impl<T, TY, false, false>(r, t);
}

// ---------------------------------------------------------------- LSEP
template <class T, class TY, bool HW>
MMIT_INLINE T lsep_row_impl(const Row<T, TY> &r, std::vector<T> &tmp) {
    const T ninf = -std::numeric_limits<T>::infinity();
    const int64_t C = r.C;
    const T *__restrict__ x = r.x;
    const TY *__restrict__ y = r.y;
    const T *__restrict__ w = r.w;
    T mA = ninf, mB = ninf;
    int64_t npos = 0;
    int bad = 0;
#pragma omp simd reduction(max : mA, mB) reduction(+ : npos) reduction(| : bad)
    for (int64_t i = 0; i < C; ++i) {
        bad |= bad_target(y[i]);
        const bool p = T(y[i]) != T(0);
        const bool pw = HW ? (p && w[i] > T(0)) : p;
        const T a = p ? ninf : x[i];
        const T b = pw ? -x[i] : ninf;
        mA = a > mA ? a : mA;
        mB = b > mB ? b : mB;
        npos += p ? 1 : 0;
    }
    *r.bad |= bad;
    if (npos == 0 || npos == C || mB == ninf || mA == ninf) {
        // no negative, no positive, or every positive has weight 0 -> the pair sum is empty
        const bool nan = (mA != mA) || (mB != mB);
        zero_grad(r);
        return nan ? std::numeric_limits<T>::quiet_NaN() : T(0);
    }
    // one exp per element: negatives exp(x - mA), positives w exp(-x - mB); kept in v
    T *__restrict__ v = r.g;
    if (!v) {
        if (static_cast<int64_t>(tmp.size()) < C) tmp.resize(C);
        v = tmp.data();
    }
    T sA = 0, sB = 0;
#pragma omp simd reduction(+ : sA, sB)
    for (int64_t i = 0; i < C; ++i) {
        const bool p = T(y[i]) != T(0);
        const bool pw = HW ? (p && w[i] > T(0)) : p;
        // weight-0 positives take no part: their argument is -inf (exp = 0), never a large
        // positive number whose exp overflows before the zero weight could multiply it
        const T arg = pw ? (-x[i] - mB) : (p ? ninf : (x[i] - mA));
        T e = fast_exp_le0(arg);  // arg <= 0 (or NaN): x - max, -x - max, -inf
        if (HW) e = pw ? w[i] * e : e;
        v[i] = e;
        sA += p ? T(0) : e;
        sB += p ? e : T(0);
    }
    const T z = (mA + std::log(sA)) + (mB + std::log(sB));
    const T loss = softplus(z);
    if (r.g) {
        const T s = sigmoid(z);
        const T ka = r.scale * s / sA, kb = -r.scale * s / sB;
        T *__restrict__ g = r.g;
#pragma omp simd
        for (int64_t i = 0; i < C; ++i) g[i] = (T(y[i]) != T(0) ? kb : ka) * g[i];
    }
    return loss;
}
template <class T, class TY>
MMIT_INLINE T lsep_row(const Row<T, TY> &r, std::vector<T> &tmp) {
    return r.w ? lsep_row_impl<T, TY, true>(r, tmp) : lsep_row_impl<T, TY, false>(r, tmp);
}

// ---------------------------------------------------------------- wLSEP
// calls f(i) for each positive column of a row, skipping 32 target bytes at a time (all-zero
// words hold no positive; a nonzero word is looked at element by element: -0.0 is not positive)
template <class TY, class F>
MMIT_INLINE void for_each_positive(const TY *y, int64_t C, int64_t npos, F &&f) {
    constexpr int64_t K = 32 / sizeof(TY);  // 32 bytes (four words) per step
    int64_t seen = 0, i = 0;
    for (; i + K <= C && seen < npos; i += K) {
        uint64_t w4[4];
        std::memcpy(w4, y + i, 32);
        if (!((w4[0] | w4[1]) | (w4[2] | w4[3]))) continue;
        for (int64_t k = i; k < i + K; ++k)
            if (y[k] != TY(0)) { f(k); ++seen; }
    }
    for (; i < C && seen < npos; ++i)
        if (y[i] != TY(0)) { f(i); ++seen; }
}

template <class T, class TY>
MMIT_INLINE T wlsep_row(const Row<T, TY> &r, bool pair, std::vector<T> &tmp) {
    const T ninf = -std::numeric_limits<T>::infinity();
    const int64_t C = r.C;
    const T *__restrict__ x = r.x;
    const TY *__restrict__ y = r.y;
    // v: the gradient buffer (or scratch); the first pass leaves the negatives' logits in it and
    // -inf at the positives, so the exp pass reads one array and needs no select
    T *__restrict__ v = r.g;
    if (!v) {
        if (static_cast<int64_t>(tmp.size()) < C) tmp.resize(C);
        v = tmp.data();
    }
    T m = ninf;
    int64_t npos = 0;
    int bad = 0;
#pragma omp simd reduction(max : m) reduction(+ : npos) reduction(| : bad)
    for (int64_t i = 0; i < C; ++i) {
        bad |= bad_target(y[i]);
        const bool p = T(y[i]) != T(0);
        const T a = p ? ninf : x[i];
        v[i] = a;
        m = a > m ? a : m;
        npos += p ? 1 : 0;
    }
    *r.bad |= bad;
    if (npos == 0 || npos == C) { zero_grad(r); return T(0); }
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < C; ++i) {
        const T ev = fast_exp_le0(v[i] - m);  // v <= m (or NaN); positives: exp(-inf) = 0
        v[i] = ev;
        sum += ev;
    }
    const T A = m + std::log(sum);
    const T inv = pair ? T(1) : T(1) / T(npos);
    T loss = 0, S = 0;
    for_each_positive(y, C, npos, [&](int64_t i) {
        const T c = (r.w ? r.w[i] : T(1)) * inv;
        const T t = A - x[i];
        T sig;
        loss += c * softplus_sigmoid(t, sig);
        const T sg = c * sig;
        S += sg;
        v[i] = -r.scale * sg;  // final gradient of a positive: <= 0 (or NaN)
    });
    if (r.g) {
        // negatives hold exp(x_j - m) >= 0, positives their final gradient <= 0 (-0.0 when it is
        // 0: k * -0.0 is still -0.0), so the sign tells them apart without reading y again
        const T k = r.scale * S / sum;  // exp(x_j - A) = v_j / sum
        T *__restrict__ g = r.g;
#pragma omp simd
        for (int64_t i = 0; i < C; ++i) g[i] = g[i] >= T(0) ? k * g[i] : g[i];
    }
    return loss;
}

// ---------------------------------------------------------------- WARP
template <class T, class TY>
MMIT_INLINE T warp_row(const Row<T, TY> &r, const double *H, std::vector<T> &xn, std::vector<T> &gn,
                       std::vector<int64_t> &pidx, std::vector<double> &buf) {
    const int64_t C = r.C;
    // branch-free compaction: negatives' logits into xn, positives' columns into pidx
    if (static_cast<int64_t>(xn.size()) < C) xn.resize(C);
    if (static_cast<int64_t>(pidx.size()) < C) pidx.resize(C);
    bool nan = false;
    int bad = 0;
    int64_t npos = 0, nneg = 0;
    {
        T *__restrict__ xnw = xn.data();
        int64_t *__restrict__ pw = pidx.data();
        for (int64_t i = 0; i < C; ++i) {
            const T xi = r.x[i];
            bad |= bad_target(r.y[i]);
            const bool p = r.y[i] != TY(0);
            xnw[nneg] = xi;
            pw[npos] = i;
            nneg += p ? 0 : 1;
            npos += p ? 1 : 0;
            nan |= xi != xi;
        }
    }
    *r.bad |= bad;
    if (npos == 0 || nneg == 0) { zero_grad(r); return T(0); }
    if (nan) {  // NaN logits propagate (as through torch's relu), loss and gradient
        const T qn = std::numeric_limits<T>::quiet_NaN();
        if (r.g) std::fill(r.g, r.g + C, qn);
        return qn;
    }
    double loss = 0.0;
    const T *xnp = xn.data();
    if (npos <= 16 || npos * nneg <= 64 * C) {
        // direct: one vectorised pass over the compacted negatives per positive
        if (r.g) gn.assign(nneg, T(0));
        T *gnp = gn.data();
        for (int64_t a = 0; a < npos; ++a) {
            const int64_t i = pidx[a];
            const T xi = r.x[i];
            T S = 0;
            int64_t R = 0;
#pragma omp simd reduction(+ : S, R)
            for (int64_t k = 0; k < nneg; ++k) {
                T mgn = T(1) + xnp[k] - xi;
                bool v = mgn > T(0);
                R += v;
                S += v ? mgn : T(0);
            }
            const T c = T((r.w ? double(r.w[i]) : 1.0) * H[R] / double(npos));
            loss += double(c) * double(S);
            if (r.g) {
                r.g[i] = -r.scale * c * T(R);
#pragma omp simd
                for (int64_t k = 0; k < nneg; ++k) gnp[k] += (T(1) + xnp[k] - xi > T(0)) ? c : T(0);
            }
        }
        if (r.g) {
            int64_t k = 0;
            for (int64_t j = 0; j < C; ++j)
                if (r.y[j] == TY(0)) r.g[j] = r.scale * gnp[k++];
        }
        return T(loss);
    }
    // sorted: negatives ascending with suffix sums; positives ascending with prefix sums of c
    std::vector<T> xs(xn.begin(), xn.begin() + nneg);
    std::sort(xs.begin(), xs.end());
    buf.assign(nneg + 1, 0.0);
    for (int64_t k = 0; k < nneg; ++k) buf[k + 1] = buf[k] + double(xs[k]);
    const double total = buf[nneg];
    std::vector<std::pair<T, T>> pc(npos);  // (x_i, c_i)
    for (int64_t a = 0; a < npos; ++a) {
        const int64_t i = pidx[a];
        const T xi = r.x[i];
        const T thr = xi - T(1);
        const int64_t le = std::upper_bound(xs.begin(), xs.end(), thr) - xs.begin();  // x_j <= x_i - 1
        const int64_t R = nneg - le;
        const double S = double(R) * (1.0 - double(xi)) + (total - buf[le]);
        const double c = (r.w ? double(r.w[i]) : 1.0) * H[R] / double(npos);
        loss += c * S;
        pc[a] = {xi, T(c)};
        if (r.g) r.g[i] = -r.scale * T(c * double(R));
    }
    if (r.g) {
        std::sort(pc.begin(), pc.end(), [](const std::pair<T, T> &p, const std::pair<T, T> &q) { return p.first < q.first; });
        std::vector<T> xp(npos);
        std::vector<double> cc(npos + 1, 0.0);
        for (int64_t a = 0; a < npos; ++a) { xp[a] = pc[a].first; cc[a + 1] = cc[a] + double(pc[a].second); }
        for (int64_t j = 0; j < C; ++j) {
            if (r.y[j] != TY(0)) continue;
            const int64_t lt = std::lower_bound(xp.begin(), xp.end(), r.x[j] + T(1)) - xp.begin();  // x_i < x_j + 1
            r.g[j] = r.scale * T(cc[lt]);
        }
    }
    return T(loss);
}

// ---------------------------------------------------------------- row loops (ISA variants)
enum Kind { BCE = 0, LSEP = 1, WLSEP = 2, WLSEP_PAIR = 3, WARP = 4 };

// rows [b0, b1) of one loss; returns 1 when a target of these rows is not 0 or 1.
// Byte targets (bool/uint8) are widened row by row into a buffer of the logits' type first (a
// cache-resident copy, values unchanged, so the check still sees a 2 as a 2): the selects in the
// exp loops then run at full vector width, which mixed byte/float lanes do not.
template <class T, class TY>
MMIT_INLINE int run_rows(int kind, const T *x, const TY *y, const T *w, T *rows, T *g, int64_t b0, int64_t b1,
                         int64_t C, T scale, const double *H) {
    std::vector<T> xn, gn;
    std::vector<int64_t> pidx;
    std::vector<double> buf;
    int bad = 0;
    if constexpr (std::is_same<TY, uint8_t>::value) {
        if (kind != WARP) {
            std::vector<T> yw(C);
            T *__restrict__ ywp = yw.data();
            for (int64_t b = b0; b < b1; ++b) {
                const uint8_t *__restrict__ yb = y + b * C;
#pragma omp simd
                for (int64_t i = 0; i < C; ++i) ywp[i] = T(yb[i]);
                bad |= run_rows<T, T>(kind, x + b * C, ywp, w, rows + b, g ? g + b * C : nullptr, 0, 1, C, scale, H);
            }
            return bad;
        }
    }
    for (int64_t b = b0; b < b1; ++b) {
        Row<T, TY> r{x + b * C, y + b * C, w, g ? g + b * C : nullptr, C, scale, &bad};
        switch (kind) {
            case BCE: rows[b] = bce_row(r, gn); break;
            case LSEP: rows[b] = lsep_row(r, gn); break;
            case WLSEP: rows[b] = wlsep_row(r, false, gn); break;
            case WLSEP_PAIR: rows[b] = wlsep_row(r, true, gn); break;
            default: rows[b] = warp_row(r, H, xn, gn, pidx, buf); break;
        }
    }
    return bad;
}

#define MMIT_ROWS_ARGS(T, TY) int kind, const T *x, const TY *y, const T *w, T *rows, T *g, int64_t b0, int64_t b1, \
                              int64_t C, T scale, const double *H
#define MMIT_ROWS_PASS kind, x, y, w, rows, g, b0, b1, C, scale, H

#if defined(__x86_64__) && defined(__GNUC__)
#define MMIT_HAVE_AVX2_VARIANT 1
template <class TY>
__attribute__((target("avx2,fma"), flatten)) int rows_f32_avx2(MMIT_ROWS_ARGS(float, TY)) {
    return run_rows<float, TY>(MMIT_ROWS_PASS);
}
#if !defined(__clang__) && __GNUC__ >= 8
#define MMIT_HAVE_AVX512_VARIANT 1
// 16 float lanes: the exp / log1p polynomials run twice as wide as with AVX2
template <class TY>
__attribute__((target("avx512f,avx512dq,avx512bw,avx512vl,fma,prefer-vector-width=512"), flatten)) int rows_f32_avx512(
    MMIT_ROWS_ARGS(float, TY)) {
    return run_rows<float, TY>(MMIT_ROWS_PASS);
}
#endif
#endif
template <class TY>
__attribute__((flatten)) int rows_f32_base(MMIT_ROWS_ARGS(float, TY)) {
    return run_rows<float, TY>(MMIT_ROWS_PASS);
}
template <class TY>
int rows_f64(MMIT_ROWS_ARGS(double, TY)) {
    return run_rows<double, TY>(MMIT_ROWS_PASS);
}

bool use_avx2() {
#ifdef MMIT_HAVE_AVX2_VARIANT
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return ok;
#else
    return false;
#endif
}

bool use_avx512() {
#ifdef MMIT_HAVE_AVX512_VARIANT
    static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
                           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
                           !std::getenv("MMIT_CPP_NO_AVX512");
    return ok;
#else
    return false;
#endif
}

template <class TY>
int rows_dispatch(MMIT_ROWS_ARGS(float, TY)) {
#ifdef MMIT_HAVE_AVX512_VARIANT
    if (use_avx512()) return rows_f32_avx512<TY>(MMIT_ROWS_PASS);
#endif
#ifdef MMIT_HAVE_AVX2_VARIANT
    if (use_avx2()) return rows_f32_avx2<TY>(MMIT_ROWS_PASS);
#endif
    return rows_f32_base<TY>(MMIT_ROWS_PASS);
}
template <class TY>
int rows_dispatch(MMIT_ROWS_ARGS(double, TY)) {
    return rows_f64<TY>(MMIT_ROWS_PASS);
}

// ---------------------------------------------------------------- Python entry
void check_layout(const py::buffer_info &bi, const char *what, int ndim) {
    if (bi.ndim != ndim) throw std::invalid_argument(std::string(what) + ": wrong number of dimensions");
    int64_t stride = bi.itemsize;
    for (int d = ndim - 1; d >= 0; --d) {
        if (bi.shape[d] > 1 && bi.strides[d] != stride) throw std::invalid_argument(std::string(what) + ": not C-contiguous");
        stride *= bi.shape[d];
    }
}

// flat index of the first target that is not 0 or 1 (only called after a row was flagged)
template <class TY>
int64_t first_bad(const TY *y, int64_t n) {
    for (int64_t i = 0; i < n; ++i)
        if (bad_target(y[i])) return i;
    return -1;
}

template <class T, class TY>
int64_t run_typed(int kind, const T *x, const TY *y, const T *w, T *rows, T *g, int64_t B, int64_t C, double scale,
                  int threads) {
    std::vector<double> H;
    if (kind == WARP) {
        H.assign(C + 1, 0.0);
        for (int64_t k = 1; k <= C; ++k) H[k] = H[k - 1] + 1.0 / double(k);
    }
    const double *Hp = H.data();
    int bad = 0;
    {
        py::gil_scoped_release nogil;
#ifdef _OPENMP
        int nt = threads > 0 ? threads : omp_get_max_threads();
        if (B * C < 32768) nt = 1;  // tiny problems: threading costs more than it saves
        if (nt > B) nt = static_cast<int>(B);
        if (nt <= 1) {
            bad = rows_dispatch<TY>(kind, x, y, w, rows, g, 0, B, C, T(scale), Hp);
        } else {
            const int64_t chunk = std::max<int64_t>(1, (B + 4 * nt - 1) / (4 * nt));
            const int64_t nchunks = (B + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(| : bad)
            for (int64_t c = 0; c < nchunks; ++c) {
                const int64_t b0 = c * chunk, b1 = std::min(B, b0 + chunk);
                bad |= rows_dispatch<TY>(kind, x, y, w, rows, g, b0, b1, C, T(scale), Hp);
            }
        }
#else
        (void)threads;
        bad = rows_dispatch<TY>(kind, x, y, w, rows, g, 0, B, C, T(scale), Hp);
#endif
    }
    return bad ? first_bad(y, B * C) : -1;
}

template <class T>
int64_t run(int kind, py::array x_, py::array y_, py::object w_, py::array rows_, py::object g_, double scale, int threads) {
    py::buffer_info xb = x_.request(), yb = y_.request(), rb = rows_.request(true);
    check_layout(xb, "logits", 2);
    check_layout(yb, "targets", 2);
    check_layout(rb, "rows", 1);
    if (xb.itemsize != sizeof(T) || rb.itemsize != sizeof(T)) throw std::invalid_argument("logits/rows: wrong float type");
    const int64_t B = xb.shape[0], C = xb.shape[1];
    if (yb.shape[0] != B || yb.shape[1] != C || rb.shape[0] != B) throw std::invalid_argument("shape mismatch");
    const T *w = nullptr;
    py::buffer_info wb;
    if (!w_.is_none()) {
        wb = py::cast<py::array>(w_).request();
        check_layout(wb, "weights", 1);
        if (wb.itemsize != sizeof(T) || wb.shape[0] != C) throw std::invalid_argument("weights: wrong type or length");
        w = static_cast<const T *>(wb.ptr);
    }
    T *g = nullptr;
    py::buffer_info gb;
    if (!g_.is_none()) {
        gb = py::cast<py::array>(g_).request(true);
        check_layout(gb, "grad", 2);
        if (gb.itemsize != sizeof(T) || gb.shape[0] != B || gb.shape[1] != C) throw std::invalid_argument("grad: wrong type or shape");
        g = static_cast<T *>(gb.ptr);
    }
    const T *x = static_cast<const T *>(xb.ptr);
    T *rows = static_cast<T *>(rb.ptr);
    const auto yt = y_.dtype();
    if (yt.is(py::dtype::of<uint8_t>()) || yt.is(py::dtype::of<bool>()))
        return run_typed<T, uint8_t>(kind, x, static_cast<const uint8_t *>(yb.ptr), w, rows, g, B, C, scale, threads);
    if (yt.is(py::dtype::of<float>()))
        return run_typed<T, float>(kind, x, static_cast<const float *>(yb.ptr), w, rows, g, B, C, scale, threads);
    if (yt.is(py::dtype::of<double>()))
        return run_typed<T, double>(kind, x, static_cast<const double *>(yb.ptr), w, rows, g, B, C, scale, threads);
    throw std::invalid_argument("targets must be bool, uint8, float32 or float64");
}

int64_t loss_rows(const std::string &name, py::array x, py::array y, py::object w, py::array rows, py::object g,
                  double scale, int threads) {
    int kind;
    if (name == "bce") kind = BCE;
    else if (name == "lsep") kind = LSEP;
    else if (name == "wlsep") kind = WLSEP;
    else if (name == "wlsep_pair") kind = WLSEP_PAIR;
    else if (name == "warp") kind = WARP;
    else throw std::invalid_argument("unknown loss: " + name);
    const auto dt = x.dtype();
    if (dt.is(py::dtype::of<float>())) return run<float>(kind, x, y, w, rows, g, scale, threads);
    if (dt.is(py::dtype::of<double>())) return run<double>(kind, x, y, w, rows, g, scale, threads);
    throw std::invalid_argument("logits must be float32 or float64");
}

// g *= factor[0] in place, unless factor[0] == 1 (the usual loss.backward()): no pass then
template <class T>
bool scale_typed(py::array g_, py::array f_) {
    py::buffer_info gb = g_.request(true), fb = f_.request();
    if (fb.size != 1) throw std::invalid_argument("factor: must hold one number");
    double f;
    if (fb.itemsize == 8) f = *static_cast<const double *>(fb.ptr);
    else if (fb.itemsize == 4) f = *static_cast<const float *>(fb.ptr);
    else throw std::invalid_argument("factor: must be float32 or float64");
    if (f == 1.0) return false;
    T *g = static_cast<T *>(gb.ptr);
    const T ft = T(f);
    const int64_t n = gb.size;
    py::gil_scoped_release nogil;
#pragma omp parallel for simd if (n >= 262144)
    for (int64_t i = 0; i < n; ++i) g[i] *= ft;
    return true;
}

// ---------------------------------------------------------------- pointer entry (the per-call path)
// The same kernels, called with the data pointers of tensors that Python allocated and checked
// (C-contiguous, CPU, the dtypes named by the codes): no buffer-protocol objects per call.
// ycode: 0 bytes (bool/uint8), 1 float32, 2 float64. rows may be 0 (kept in a scratch vector);
// out, when nonzero, receives out_scale * sum_b rows[b] (summed in double) as one number.
template <class T>
int64_t run_ptr_typed(int kind, uintptr_t x, uintptr_t y, int ycode, uintptr_t w, uintptr_t rows_p, uintptr_t g,
                      uintptr_t out, int64_t B, int64_t C, double scale, double out_scale, int threads) {
    std::vector<T> scratch;
    T *rows = reinterpret_cast<T *>(rows_p);
    if (!rows) {
        scratch.resize(static_cast<size_t>(B > 0 ? B : 1));
        rows = scratch.data();
    }
    const T *xp = reinterpret_cast<const T *>(x), *wp = reinterpret_cast<const T *>(w);
    T *gp = reinterpret_cast<T *>(g);
    int64_t k;
    if (ycode == 0) k = run_typed<T, uint8_t>(kind, xp, reinterpret_cast<const uint8_t *>(y), wp, rows, gp, B, C, scale, threads);
    else if (ycode == 1) k = run_typed<T, float>(kind, xp, reinterpret_cast<const float *>(y), wp, rows, gp, B, C, scale, threads);
    else if (ycode == 2) k = run_typed<T, double>(kind, xp, reinterpret_cast<const double *>(y), wp, rows, gp, B, C, scale, threads);
    else throw std::invalid_argument("targets code must be 0 (bytes), 1 (float32) or 2 (float64)");
    if (out) {
        double total = 0.0;
        for (int64_t b = 0; b < B; ++b) total += double(rows[b]);
        *reinterpret_cast<T *>(out) = T(out_scale * total);
    }
    return k;
}

int64_t loss_ptr(int kind, uintptr_t x, uintptr_t y, int ycode, uintptr_t w, uintptr_t rows, uintptr_t g, uintptr_t out,
                 int64_t B, int64_t C, bool f64, double scale, double out_scale, int threads) {
    if (kind < BCE || kind > WARP) throw std::invalid_argument("unknown loss kind");
    if (B < 0 || C < 0 || ((B * C > 0) && (!x || !y))) throw std::invalid_argument("bad shape or null buffer");
    return f64 ? run_ptr_typed<double>(kind, x, y, ycode, w, rows, g, out, B, C, scale, out_scale, threads)
               : run_ptr_typed<float>(kind, x, y, ycode, w, rows, g, out, B, C, scale, out_scale, threads);
}

// g[0:n] *= factor (a float32/float64 number at `factor`) in place, skipped when it is 1
bool scale_ptr(uintptr_t g, int64_t n, bool f64, uintptr_t factor, bool factor_f64) {
    const double f = factor_f64 ? *reinterpret_cast<const double *>(factor) : double(*reinterpret_cast<const float *>(factor));
    if (f == 1.0 || n <= 0) return false;
    py::gil_scoped_release nogil;
    if (f64) {
        double *p = reinterpret_cast<double *>(g);
#pragma omp parallel for simd if (n >= 262144)
        for (int64_t i = 0; i < n; ++i) p[i] *= f;
    } else {
        float *p = reinterpret_cast<float *>(g);
        const float ft = float(f);
#pragma omp parallel for simd if (n >= 262144)
        for (int64_t i = 0; i < n; ++i) p[i] *= ft;
    }
    return true;
}

bool scale_inplace(py::array g, py::array factor) {
    const auto dt = g.dtype();
    if (dt.is(py::dtype::of<float>())) return scale_typed<float>(g, factor);
    if (dt.is(py::dtype::of<double>())) return scale_typed<double>(g, factor);
    throw std::invalid_argument("grad must be float32 or float64");
}

}  // namespace

void register_losses(py::module_ &m) {
    m.def("loss_rows", &loss_rows, py::arg("name"), py::arg("logits"), py::arg("targets"), py::arg("weights"), py::arg("rows"),
          py::arg("grad"), py::arg("scale") = 1.0, py::arg("threads") = 0,
          "Fill rows[B] with the per-row loss `name` (bce, lsep, wlsep, wlsep_pair, warp) of logits[B,C] "
          "(float32/float64, C-contiguous) and targets[B,C] (bool/uint8/float32/float64, validated while read); if grad "
          "is an array, fill it with scale * d rows[b] / d logits[b]. weights: None or [C] of the logits' type. "
          "threads <= 0: OpenMP default. Returns -1, or the flat index of the first target that is not 0 or 1.");
    m.def("scale_inplace", &scale_inplace, py::arg("grad"), py::arg("factor"),
          "grad *= factor[0] in place (float32/float64), skipped when factor[0] == 1; returns whether it scaled.");
    m.def("loss_ptr", &loss_ptr, py::arg("kind"), py::arg("x"), py::arg("y"), py::arg("ycode"), py::arg("w"), py::arg("rows"),
          py::arg("g"), py::arg("out"), py::arg("B"), py::arg("C"), py::arg("f64"), py::arg("scale"), py::arg("out_scale"),
          py::arg("threads"),
          "loss_rows on data pointers (kind 0..4 = bce, lsep, wlsep, wlsep_pair, warp; ycode 0 bytes, 1 float32, "
          "2 float64; rows/g/w/out may be 0; out <- out_scale * sum(rows)). The caller guarantees C-contiguous "
          "buffers of the stated types and sizes. Returns -1 or the flat index of the first bad target.");
    m.def("scale_ptr", &scale_ptr, py::arg("g"), py::arg("n"), py::arg("f64"), py::arg("factor"), py::arg("factor_f64"),
          "g[0:n] *= *factor in place (skipped when it is 1); returns whether it scaled.");
    m.def("has_avx2_kernels", &use_avx2, "True when the CPU has the AVX2+FMA variant of the float32 kernels.");
    m.def("has_avx512_kernels", &use_avx512,
          "True when the AVX-512 variant of the float32 kernels is in use (MMIT_CPP_NO_AVX512=1 turns it off).");
}

}  // namespace mmit
