// CPU kernels of the mmit-fast losses: BCE, WARP, LSEP, wLSEP (paper.md section 2).
//
// No torch headers: the Python side hands over contiguous buffers (py::array_t) that it
// allocated itself -- logits [B, C] (float32 or float64), targets [B, C] uint8 in {0, 1},
// optional class weights [C] (same float type), the output row losses [B] and, when a
// gradient is wanted, the output gradient [B, C] -- and these functions fill the outputs.
// Rows are independent: OpenMP splits them over threads, each row is processed in a few
// cache-resident passes, and every exp is evaluated once per element.
//
// Per row (x logits, Y positives, N negatives, w weights, s = scale on the gradient):
//  BCE   L = sum_i w_i (softplus(x_i) - y_i x_i);         dL/dx_i = w_i (sigmoid(x_i) - y_i)
//  LSEP  A = LSE_N x, B = LSE_Y (log w - x), L = softplus(A + B)
//        dL/dx_j = sigmoid(A+B) exp(x_j - A) (j in N); dL/dx_i = -sigmoid(A+B) w_i exp(-x_i - B)
//  wLSEP L = sum_Y c_i softplus(A - x_i), c_i = w_i / |Y| (w_i for the 'pair' normalisation)
//        dL/dx_i = -c_i sigmoid(A - x_i); dL/dx_j = (sum_Y c_i sigmoid(A - x_i)) exp(x_j - A)
//  WARP  R_i = #{j in N: 1 + x_j - x_i > 0}, S_i = sum_N max(0, 1 + x_j - x_i),
//        c_i = w_i H(R_i) / |Y|, L = sum_Y c_i S_i, dL/dx_i = -c_i R_i,
//        dL/dx_j = sum_{i in Y: 1 + x_j - x_i > 0} c_i.  Exact: for few positives a direct
//        pass over the (compacted) negatives per positive; otherwise sorted negatives with
//        prefix sums + binary search, O(C log C) per row.
// Rows with no positive or no negative: loss 0, gradient 0 (BCE: always defined).
//
// The float kernels are compiled twice, for AVX2+FMA and for the baseline ISA, and picked
// at run time (__builtin_cpu_supports); exp uses a branch-free Cephes-style polynomial that
// the compiler vectorises (max error ~2 ulp for x <= 88; NaN propagates).

#include "losses.h"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
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
MMIT_INLINE float fast_exp(float x) {
    // exp(x) = 2^n * exp(r), n = round(x / ln2), |r| <= ln2 / 2 (Cephes expf polynomial).
    float xc = x < -87.3f ? -87.3f : x;
    xc = xc > 88.3f ? 88.3f : xc;
    const float magic = 12582912.0f;  // 1.5 * 2^23: float add rounds to the nearest integer
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
    res = x > 88.3f ? std::numeric_limits<float>::infinity() : res;
    res = (x != x) ? x : res;
    return res;
}
MMIT_INLINE double fast_exp(double x) { return std::exp(x); }

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
template <class T>
MMIT_INLINE T sigmoid(T z) {
    T e = std::exp(-std::fabs(z));
    return z >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

template <class T>
struct Row {
    const T *x;
    const uint8_t *y;
    const T *w;  // may be null: all ones
    T *g;        // may be null: no gradient wanted
    int64_t C;
    T scale;
};

template <class T>
MMIT_INLINE void zero_grad(const Row<T> &r) {
    if (r.g) std::fill(r.g, r.g + r.C, T(0));
}

// ---------------------------------------------------------------- BCE
template <class T, bool HW, bool HG>
MMIT_INLINE T bce_row_impl(const Row<T> &r, T *__restrict__ term) {
    // element terms first (a plain vectorisable map), then their sum
    const T *__restrict__ x = r.x;
    const uint8_t *__restrict__ y = r.y;
    const T *__restrict__ w = r.w;
    T *__restrict__ g = r.g;
    const T scale = r.scale;
    const int64_t C = r.C;
#pragma omp simd
    for (int64_t i = 0; i < C; ++i) {
        T xi = x[i];
        T yv = y[i] ? T(1) : T(0);
        T e = fast_exp(-std::fabs(xi));
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
    T loss = 0;
#pragma omp simd reduction(+ : loss)
    for (int64_t i = 0; i < C; ++i) loss += term[i];
    return loss;
}
template <class T>
MMIT_INLINE T bce_row(const Row<T> &r, std::vector<T> &tmp) {
    if (static_cast<int64_t>(tmp.size()) < r.C) tmp.resize(r.C);
    T *t = tmp.data();
    if (r.w) return r.g ? bce_row_impl<T, true, true>(r, t) : bce_row_impl<T, true, false>(r, t);
    return r.g ? bce_row_impl<T, false, true>(r, t) : bce_row_impl<T, false, false>(r, t);
}

// ---------------------------------------------------------------- LSEP
template <class T, bool HW>
MMIT_INLINE T lsep_row_impl(const Row<T> &r, std::vector<T> &tmp) {
    const T ninf = -std::numeric_limits<T>::infinity();
    const int64_t C = r.C;
    const T *__restrict__ x = r.x;
    const uint8_t *__restrict__ y = r.y;
    const T *__restrict__ w = r.w;
    T mA = ninf, mB = ninf;
    int64_t npos = 0;
#pragma omp simd reduction(max : mA, mB) reduction(+ : npos)
    for (int64_t i = 0; i < C; ++i) {
        const bool p = y[i] != 0;
        const bool pw = HW ? (p && w[i] > T(0)) : p;
        const T a = p ? ninf : x[i];
        const T b = pw ? -x[i] : ninf;
        mA = a > mA ? a : mA;
        mB = b > mB ? b : mB;
        npos += p ? 1 : 0;
    }
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
        const bool p = y[i] != 0;
        const T arg = p ? (-x[i] - mB) : (x[i] - mA);
        T e = fast_exp(arg);
        if (HW) e = p ? (w[i] > T(0) ? w[i] : T(0)) * e : e;  // weight-0 positives: exactly 0
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
        for (int64_t i = 0; i < C; ++i) g[i] = (y[i] ? kb : ka) * g[i];
    }
    return loss;
}
template <class T>
MMIT_INLINE T lsep_row(const Row<T> &r, std::vector<T> &tmp) {
    return r.w ? lsep_row_impl<T, true>(r, tmp) : lsep_row_impl<T, false>(r, tmp);
}

// ---------------------------------------------------------------- wLSEP
// calls f(i) for each positive column of a row, skipping 8 target bytes at a time
template <class F>
MMIT_INLINE void for_each_positive(const uint8_t *y, int64_t C, int64_t npos, F &&f) {
    int64_t seen = 0, i = 0;
    for (; i + 8 <= C && seen < npos; i += 8) {
        uint64_t word;
        std::memcpy(&word, y + i, 8);
        if (!word) continue;
        for (int64_t k = i; k < i + 8; ++k)
            if (y[k]) { f(k); ++seen; }
    }
    for (; i < C && seen < npos; ++i)
        if (y[i]) { f(i); ++seen; }
}

template <class T>
MMIT_INLINE T wlsep_row(const Row<T> &r, bool pair, std::vector<T> &tmp) {
    const T ninf = -std::numeric_limits<T>::infinity();
    const int64_t C = r.C;
    const T *__restrict__ x = r.x;
    const uint8_t *__restrict__ y = r.y;
    T m = ninf;
    int64_t npos = 0;
#pragma omp simd reduction(max : m) reduction(+ : npos)
    for (int64_t i = 0; i < C; ++i) {
        const bool p = y[i] != 0;
        const T a = p ? ninf : x[i];
        m = a > m ? a : m;
        npos += p ? 1 : 0;
    }
    if (npos == 0 || npos == C) { zero_grad(r); return T(0); }
    T *__restrict__ v = r.g;
    if (!v) {
        if (static_cast<int64_t>(tmp.size()) < C) tmp.resize(C);
        v = tmp.data();
    }
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < C; ++i) {
        const T e = fast_exp(x[i] - m);
        const T ev = y[i] ? T(0) : e;  // positives' lanes may overflow: selected away
        v[i] = ev;
        sum += ev;
    }
    const T A = m + std::log(sum);
    const T inv = pair ? T(1) : T(1) / T(npos);
    T loss = 0, S = 0;
    for_each_positive(y, C, npos, [&](int64_t i) {
        const T c = (r.w ? r.w[i] : T(1)) * inv;
        const T t = A - x[i];
        loss += c * softplus(t);
        const T sg = c * sigmoid(t);
        S += sg;
        v[i] = -r.scale * sg;  // final gradient of a positive
    });
    if (r.g) {
        const T k = r.scale * S / sum;  // exp(x_j - A) = v_j / sum
        T *__restrict__ g = r.g;
#pragma omp simd
        for (int64_t i = 0; i < C; ++i) g[i] = y[i] ? g[i] : k * g[i];
    }
    return loss;
}

// ---------------------------------------------------------------- WARP
template <class T>
MMIT_INLINE T warp_row(const Row<T> &r, const double *H, std::vector<T> &xn, std::vector<T> &gn,
                       std::vector<int64_t> &pidx, std::vector<double> &buf) {
    const int64_t C = r.C;
    // branch-free compaction: negatives' logits into xn, positives' columns into pidx
    if (static_cast<int64_t>(xn.size()) < C) xn.resize(C);
    if (static_cast<int64_t>(pidx.size()) < C) pidx.resize(C);
    bool nan = false;
    int64_t npos = 0, nneg = 0;
    {
        T *__restrict__ xnw = xn.data();
        int64_t *__restrict__ pw = pidx.data();
        for (int64_t i = 0; i < C; ++i) {
            const T xi = r.x[i];
            const bool p = r.y[i] != 0;
            xnw[nneg] = xi;
            pw[npos] = i;
            nneg += p ? 0 : 1;
            npos += p ? 1 : 0;
            nan |= xi != xi;
        }
    }
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
                if (!r.y[j]) r.g[j] = r.scale * gnp[k++];
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
            if (r.y[j]) continue;
            const int64_t lt = std::lower_bound(xp.begin(), xp.end(), r.x[j] + T(1)) - xp.begin();  // x_i < x_j + 1
            r.g[j] = r.scale * T(cc[lt]);
        }
    }
    return T(loss);
}

// ---------------------------------------------------------------- row loops (ISA variants)
enum Kind { BCE = 0, LSEP = 1, WLSEP = 2, WLSEP_PAIR = 3, WARP = 4 };

template <class T>
MMIT_INLINE void run_rows(int kind, const T *x, const uint8_t *y, const T *w, T *rows, T *g,
                          int64_t b0, int64_t b1, int64_t C, T scale, const double *H) {
    std::vector<T> xn, gn;
    std::vector<int64_t> pidx;
    std::vector<double> buf;
    for (int64_t b = b0; b < b1; ++b) {
        Row<T> r{x + b * C, y + b * C, w, g ? g + b * C : nullptr, C, scale};
        switch (kind) {
            case BCE: rows[b] = bce_row(r, gn); break;
            case LSEP: rows[b] = lsep_row(r, gn); break;
            case WLSEP: rows[b] = wlsep_row(r, false, gn); break;
            case WLSEP_PAIR: rows[b] = wlsep_row(r, true, gn); break;
            default: rows[b] = warp_row(r, H, xn, gn, pidx, buf); break;
        }
    }
}

#if defined(__x86_64__) && defined(__GNUC__)
#define MMIT_HAVE_AVX2_VARIANT 1
__attribute__((target("avx2,fma"), flatten)) void rows_f32_avx2(int kind, const float *x, const uint8_t *y, const float *w, float *rows,
                                                                  float *g, int64_t b0, int64_t b1, int64_t C, float scale, const double *H) {
    run_rows<float>(kind, x, y, w, rows, g, b0, b1, C, scale, H);
}
#endif
__attribute__((flatten)) void rows_f32_base(int kind, const float *x, const uint8_t *y, const float *w, float *rows, float *g,
                                            int64_t b0, int64_t b1, int64_t C, float scale, const double *H) {
    run_rows<float>(kind, x, y, w, rows, g, b0, b1, C, scale, H);
}
void rows_f64(int kind, const double *x, const uint8_t *y, const double *w, double *rows, double *g, int64_t b0, int64_t b1,
              int64_t C, double scale, const double *H) {
    run_rows<double>(kind, x, y, w, rows, g, b0, b1, C, scale, H);
}

bool use_avx2() {
#ifdef MMIT_HAVE_AVX2_VARIANT
    static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    return ok;
#else
    return false;
#endif
}

void rows_dispatch(int kind, const float *x, const uint8_t *y, const float *w, float *rows, float *g, int64_t b0, int64_t b1,
                   int64_t C, float scale, const double *H) {
#ifdef MMIT_HAVE_AVX2_VARIANT
    if (use_avx2()) return rows_f32_avx2(kind, x, y, w, rows, g, b0, b1, C, scale, H);
#endif
    rows_f32_base(kind, x, y, w, rows, g, b0, b1, C, scale, H);
}
void rows_dispatch(int kind, const double *x, const uint8_t *y, const double *w, double *rows, double *g, int64_t b0, int64_t b1,
                   int64_t C, double scale, const double *H) {
    rows_f64(kind, x, y, w, rows, g, b0, b1, C, scale, H);
}

// ---------------------------------------------------------------- Python entry
template <class T>
void run(int kind, py::array x_, py::array y_, py::object w_, py::array rows_, py::object g_, double scale, int threads) {
    auto check = [](const py::buffer_info &bi, const char *what, int ndim) {
        if (bi.ndim != ndim) throw std::invalid_argument(std::string(what) + ": wrong number of dimensions");
        int64_t stride = bi.itemsize;
        for (int d = ndim - 1; d >= 0; --d) {
            if (bi.shape[d] > 1 && bi.strides[d] != stride) throw std::invalid_argument(std::string(what) + ": not C-contiguous");
            stride *= bi.shape[d];
        }
    };
    py::buffer_info xb = x_.request(), yb = y_.request(), rb = rows_.request(true);
    check(xb, "logits", 2);
    check(yb, "targets", 2);
    check(rb, "rows", 1);
    if (xb.itemsize != sizeof(T) || rb.itemsize != sizeof(T)) throw std::invalid_argument("logits/rows: wrong float type");
    if (yb.itemsize != 1) throw std::invalid_argument("targets: must be uint8");
    const int64_t B = xb.shape[0], C = xb.shape[1];
    if (yb.shape[0] != B || yb.shape[1] != C || rb.shape[0] != B) throw std::invalid_argument("shape mismatch");
    const T *w = nullptr;
    py::buffer_info wb;
    if (!w_.is_none()) {
        wb = py::cast<py::array>(w_).request();
        check(wb, "weights", 1);
        if (wb.itemsize != sizeof(T) || wb.shape[0] != C) throw std::invalid_argument("weights: wrong type or length");
        w = static_cast<const T *>(wb.ptr);
    }
    T *g = nullptr;
    py::buffer_info gb;
    if (!g_.is_none()) {
        gb = py::cast<py::array>(g_).request(true);
        check(gb, "grad", 2);
        if (gb.itemsize != sizeof(T) || gb.shape[0] != B || gb.shape[1] != C) throw std::invalid_argument("grad: wrong type or shape");
        g = static_cast<T *>(gb.ptr);
    }
    const T *x = static_cast<const T *>(xb.ptr);
    const uint8_t *y = static_cast<const uint8_t *>(yb.ptr);
    T *rows = static_cast<T *>(rb.ptr);
    std::vector<double> H;
    if (kind == WARP) {
        H.assign(C + 1, 0.0);
        for (int64_t k = 1; k <= C; ++k) H[k] = H[k - 1] + 1.0 / double(k);
    }
    const double *Hp = H.data();
    {
        py::gil_scoped_release nogil;
#ifdef _OPENMP
        int nt = threads > 0 ? threads : omp_get_max_threads();
        if (B * C < 32768) nt = 1;  // tiny problems: threading costs more than it saves
        if (nt > B) nt = static_cast<int>(B);
        if (nt <= 1) {
            rows_dispatch(kind, x, y, w, rows, g, 0, B, C, T(scale), Hp);
        } else {
            const int64_t chunk = std::max<int64_t>(1, (B + 4 * nt - 1) / (4 * nt));
            const int64_t nchunks = (B + chunk - 1) / chunk;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
            for (int64_t c = 0; c < nchunks; ++c) {
                const int64_t b0 = c * chunk, b1 = std::min(B, b0 + chunk);
                rows_dispatch(kind, x, y, w, rows, g, b0, b1, C, T(scale), Hp);
            }
        }
#else
        (void)threads;
        rows_dispatch(kind, x, y, w, rows, g, 0, B, C, T(scale), Hp);
#endif
    }
}

void loss_rows(const std::string &name, py::array x, py::array y, py::object w, py::array rows, py::object g, double scale,
               int threads) {
    int kind;
    if (name == "bce") kind = BCE;
    else if (name == "lsep") kind = LSEP;
    else if (name == "wlsep") kind = WLSEP;
    else if (name == "wlsep_pair") kind = WLSEP_PAIR;
    else if (name == "warp") kind = WARP;
    else throw std::invalid_argument("unknown loss: " + name);
    const auto dt = x.dtype();
    if (dt.is(py::dtype::of<float>())) run<float>(kind, x, y, w, rows, g, scale, threads);
    else if (dt.is(py::dtype::of<double>())) run<double>(kind, x, y, w, rows, g, scale, threads);
    else throw std::invalid_argument("logits must be float32 or float64");
}

}  // namespace

void register_losses(py::module_ &m) {
    m.def("loss_rows", &loss_rows, py::arg("name"), py::arg("logits"), py::arg("targets"), py::arg("weights"), py::arg("rows"),
          py::arg("grad"), py::arg("scale") = 1.0, py::arg("threads") = 0,
          "Fill rows[B] with the per-row loss `name` (bce, lsep, wlsep, wlsep_pair, warp) of logits[B,C] "
          "(float32/float64, C-contiguous) and uint8 targets[B,C]; if grad is an array, fill it with "
          "scale * d rows[b] / d logits[b]. weights: None or [C] of the logits' type. threads <= 0: OpenMP default.");
    m.def("has_avx2_kernels", &use_avx2, "True when the AVX2+FMA variant of the float32 kernels is in use.");
}

}  // namespace mmit
