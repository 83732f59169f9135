// rnnkit's fused CPU loops. The whole-sequence loop (run_forward, run_backward below) runs one direction of one
// layer of any cell (LSTM, GRU, RNN; cells.py's equations) with the recurrent products on weights packed once per
// call (Repeated, this file's own kernel), the weight gradients' sums on it or on PyTorch's BLAS gemm (whichever
// is faster on the machine: summed_product) and the other products on the gemm, each cell supplying its step's
// products and gate math; the LSTM's gate math of one step (forward, backward) also runs alone, for the engine's
// step loop where no gemm is found. cells.py's PyTorch ops are the reference.
//
// Built at first use by rnnkit/fused.py with the system C++ compiler (no PyTorch headers: these loops get raw
// pointers); rnnkit falls back to the PyTorch ops when no compiler is found. exp is written out (range reduction +
// polynomial) so that the loops vectorise.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

// The arguments of a whole-sequence call (run_forward, run_backward below), filled by fused.py (its SequenceArgs and
// BackwardArgs: the same fields in the same order): the configuration, the sizes, PyTorch's gemm and the buffers,
// a cell's own buffers null for the other cells. Plain C types, which ctypes lays out as the compiler does.
extern "C" {
struct SequenceArgs {
    int32_t cell;        // 0 LSTM, 1 GRU, 2 RNN
    int32_t activation;  // Activation: TANH, SOFTSIGN, RELU
    int32_t keep;        // keep every step's values for the backward (else one step's, reused)
    int32_t clear;       // kept, zero the values of rows that have ended (else left as the memory held them)
    int32_t coupled, reset_after, peephole, layer_norm;  // the LSTM's and the GRU's variants
    int64_t steps, batch, hidden, proj, input, chunk, n_gates;  // T, B, H, P (h's size), I (inference's x), chunk, G
    void* gemm;                                                  // the Fortran-interface gemm of this dtype
    void* sum_gemm;  // the gemm that sums the weight gradients (summed_product), or null for this file's kernel
    const int64_t* batch_sizes;                                  // every cell's buffers (see Sequence)
    void *w_hh, *mask, *xp, *h0, *h, *out, *hr, *x, *w_ih, *b, *ln_w_ih, *work;
    void *gates, *extra, *b_hh;                                                  // GRU (gates also LSTM)
    void *c, *act_c, *h_new, *a, *stats, *w_hr, *peep, *ln_w_hh, *ln_w_c, *ln_b_c;  // LSTM
};
struct BackwardArgs {  // the backward's own buffers (see run_backward and the cells' backward)
    void *d_out, *d_h, *d_c, *d_xp, *d_hout, *d_vec, *d_w_hh, *work, *d_extra;
};
}

namespace {

#define INLINE inline __attribute__((always_inline))  // the loops vectorise only with everything inlined

// Built with OpenMP (fused.py tries -fopenmp first), a step's rows are split among PyTorch's threads (its
// OpenMP runtime is the one already loaded) from this many rows on. Without OpenMP the pragmas are ignored.
constexpr int64_t PARALLEL_ROWS = 16;

// Inside a parallel region (a slice of an inference's rows, `sequence`), every loop runs on its own thread.
INLINE bool in_parallel() {
#ifdef _OPENMP
    return omp_in_parallel();
#else
    return false;
#endif
}
INLINE bool parallel_rows(int64_t rows) { return rows >= PARALLEL_ROWS && !in_parallel(); }

template <typename T> struct Exp;

template <> struct Exp<double> {
    static INLINE double eval(double x) {
        x = x < -708.0 ? -708.0 : x;  // NaN passes through
        x = x > 708.0 ? 708.0 : x;
        const double shift = 6755399441055744.0;  // 1.5 * 2^52: adding it rounds to an integer
        double k = (x * 1.4426950408889634 + shift) - shift;
        double r = x - k * 6.93147180369123816490e-01 - k * 1.90821492927058770002e-10;
        double p = 1.0 / 479001600.0;  // Taylor series to r^12 on |r| <= ln2 / 2: error < 2e-16
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        int64_t bits = (static_cast<int64_t>(k) + 1023) << 52;
        double scale;
        std::memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
};

template <> struct Exp<float> {
    static INLINE float eval(float x) {
        x = x < -87.0f ? -87.0f : x;
        x = x > 88.0f ? 88.0f : x;
        const float shift = 12582912.0f;  // 1.5 * 2^23
        float k = (x * 1.44269504f + shift) - shift;
        float r = x - k * 0.693145752f - k * 1.42860677e-06f;
        float p = 1.0f / 40320.0f;  // to r^8: error < 1e-9
        p = p * r + 1.0f / 5040.0f;
        p = p * r + 1.0f / 720.0f;
        p = p * r + 1.0f / 120.0f;
        p = p * r + 1.0f / 24.0f;
        p = p * r + 1.0f / 6.0f;
        p = p * r + 0.5f;
        p = p * r + 1.0f;
        p = p * r + 1.0f;
        int32_t bits = (static_cast<int32_t>(k) + 127) << 23;
        float scale;
        std::memcpy(&scale, &bits, sizeof scale);
        return p * scale;
    }
};

template <typename T> INLINE T sigmoid(T v) { return T(1) / (T(1) + Exp<T>::eval(-v)); }

template <typename T> INLINE T tanh_(T v) {  // 1 - 2 / (e^{2|v|} + 1), with v's sign: odd by construction
    return std::copysign(T(1) - T(2) / (Exp<T>::eval(T(2) * std::fabs(v)) + T(1)), v);
}

// The activations, by kind: TANH, SOFTSIGN (v / (1 + |v|)) and RELU; the LSTM's `softsign` flag is its kind.
enum Activation { TANH = 0, SOFTSIGN = 1, RELU = 2 };

template <int kind, typename T> INLINE T act(T v) {
    if constexpr (kind == SOFTSIGN) return v / (T(1) + std::fabs(v));
    else if constexpr (kind == RELU) return v < T(0) ? T(0) : v;  // NaN passes through, as torch.relu's
    else return tanh_(v);
}

template <int kind, typename T> INLINE T act_backward(T d, T y) {  // d * act'(v) from y = act(v)
    if constexpr (kind == SOFTSIGN) return d * (T(1) - std::fabs(y)) * (T(1) - std::fabs(y));
    else if constexpr (kind == RELU) return y > T(0) ? d : T(0);  // torch's threshold_backward(d, y, 0)
    else return d * (T(1) - y * y);
}

// The widest vector of the build (-march=native), in bytes.
#if defined(__AVX512F__)
constexpr int VEC_BYTES = 64;
#elif defined(__AVX__)
constexpr int VEC_BYTES = 32;
#else
constexpr int VEC_BYTES = 16;
#endif

// Mean and 1/sqrt(var + eps) of x[0..n) (the biased variance, as torch.native_layer_norm), in one pass: the sums
// of d = x - x[0] and of d^2 (shifted by a value of x, so that a mean far from zero costs no precision), 4 vectors
// of partial sums each (which keep the adds from waiting on each other), added in a different order than torch's.
template <typename T> INLINE void moments(const T* x, int64_t n, T eps, T& mean, T& rstd) {
    constexpr int V = VEC_BYTES / sizeof(T);
    typedef T vec __attribute__((vector_size(VEC_BYTES), aligned(sizeof(T))));
    const T k = x[0];
    vec s1[4] = {vec{}, vec{}, vec{}, vec{}}, s2[4] = {vec{}, vec{}, vec{}, vec{}};
    int64_t j = 0;
    for (; j + 4 * V <= n; j += 4 * V)
#pragma GCC unroll 4
        for (int p = 0; p < 4; ++p) {
            const vec d = *(const vec*)(x + j + p * V) - k;
            s1[p] += d, s2[p] += d * d;
        }
    const vec a1 = (s1[0] + s1[1]) + (s1[2] + s1[3]), a2 = (s2[0] + s2[1]) + (s2[2] + s2[3]);
    T sum = 0, sq = 0;
    for (int i = 0; i < V; ++i) sum += a1[i], sq += a2[i];
    for (; j < n; ++j) sum += x[j] - k, sq += (x[j] - k) * (x[j] - k);
    const T m = sum / T(n);
    mean = k + m;
    rstd = T(1) / std::sqrt(std::max(sq / T(n) - m * m, T(0)) + eps);
}

// d LN(x) / d x applied to d_xhat (the gradient reaching the normalised x_hat = (x - mean) * rstd):
// rstd * (d_xhat - mean(d_xhat) - x_hat * mean(d_xhat * x_hat)). d_xhat is overwritten by the result.
template <typename T> INLINE void ln_backward(T* d_xhat, const T* x, int64_t n, T mean, T rstd) {
    T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
    for (int64_t j = 0; j < n; ++j) {
        s1 += d_xhat[j];
        s2 += d_xhat[j] * (x[j] - mean) * rstd;
    }
    s1 /= T(n);
    s2 /= T(n);
#pragma omp simd
    for (int64_t j = 0; j < n; ++j) d_xhat[j] = rstd * (d_xhat[j] - s1 - (x[j] - mean) * rstd * s2);
}

// ---- The LSTM step's gate math, in one pass over the units ----
namespace lstm {

// A row's layer-norm moments (mean, 1/sqrt(var + eps)): of a = h W_hh^T, of c', and of x W_ih^T where the gate
// math normalises it (Step::ln_x)
constexpr int64_t STATS = 6;

// The parameters and options of one step; pointers a layer does not have are null.
template <typename T> struct Step {
    int64_t B, H;
    const T* peep;  // ((G-1)*H): p_i, p_f, p_o (p_f, p_o when coupled)
    // layer norm: a = h W_hh^T (B, G*H) is normalised with gain w_hh; c' is normalised with w_c, b_c
    const T* a;
    const T *w_hh, *w_c, *b_c;
    T eps;
    const T* xp = nullptr;  // xp (B, G*H) read from here and added (else the gates hold it already)
    const T* bx = nullptr;  // without layer norm, a bias (G*H) added (with xp, where given)
    const T* ln_x = nullptr;  // layer norm: xp is x W_ih^T, normalised here with this gain (G*H), and then
    const T* b = nullptr;     // this bias (G*H) or none added (else xp is already LN(x W_ih^T) * ln_w_ih + b)
};

// The offsets in d_vec, the batch sums of the vector parameters' gradients: [d_peep ((G-1)*H), d_w_hh (G*H),
// d_w_c (H), d_b_c (H), d_ln_x (G*H), d_b (G*H)], those the step has, in that order.
struct Vectors {
    int64_t peep, w_hh, w_c, b_c, ln_x, b, size;
    template <typename T> Vectors(const Step<T>& s, int64_t G, bool has_peep, bool ln) {
        const int64_t H = s.H;
        peep = 0;
        w_hh = has_peep ? (G - 1) * H : 0;
        w_c = w_hh + (ln ? G * H : 0);
        b_c = w_c + (ln ? H : 0);
        ln_x = b_c + (ln && s.b_c ? H : 0);
        b = ln_x + (ln && s.ln_x ? G * H : 0);
        size = b + (ln && s.ln_x && s.b ? G * H : 0);
    }
};

// gates (B, G*H): the gate pre-activations on entry (xp + h W_hh^T, or h W_hh^T with s.xp given, xp and s.bx then
// added here; with layer norm nothing, xp and LN(a) are added here), the activated gates on exit; G = 3 (f, g, o)
// when coupled, else 4 (i, f, g, o).
// Writes c_new, act_c (the activation of c_new, or of LN(c_new)), h = o * act_c (B, H), and with layer
// norm the moments of each row (B, STATS).
template <typename T, bool coupled, bool softsign, bool has_peep, bool ln>
void forward(const Step<T>& s, T* gates, const T* c, T* c_new, T* act_c, T* h, T* stats) {
    const int64_t G = coupled ? 3 : 4, H = s.H, off = (G - 3) * H;
    const T* p_i = s.peep;
    const T* p_f = has_peep ? s.peep + off : nullptr;
    const T* p_o = has_peep ? p_f + H : nullptr;
#pragma omp parallel for if (parallel_rows(s.B)) schedule(static)  // rows are independent
    for (int64_t b = 0; b < s.B; ++b) {
        T* row = gates + b * G * H;
        if (ln) {
            const T* ab = s.a + b * G * H;
            T mean, rstd;
            moments(ab, G * H, s.eps, mean, rstd);
            stats[STATS * b] = mean;
            stats[STATS * b + 1] = rstd;
            const T* xb = s.xp ? s.xp + b * G * H : row;
            if (s.ln_x) {
                T x_mean, x_rstd;
                moments(xb, G * H, s.eps, x_mean, x_rstd);
                stats[STATS * b + 4] = x_mean;
                stats[STATS * b + 5] = x_rstd;
#pragma GCC ivdep
                for (int64_t j = 0; j < G * H; ++j)
                    row[j] = (xb[j] - x_mean) * x_rstd * s.ln_x[j] + (s.b ? s.b[j] : T(0)) +
                             (ab[j] - mean) * rstd * s.w_hh[j];
            } else {
                stats[STATS * b + 4] = stats[STATS * b + 5] = T(0);  // (kept: no value as the memory held them)
#pragma GCC ivdep
                for (int64_t j = 0; j < G * H; ++j) row[j] = xb[j] + (ab[j] - mean) * rstd * s.w_hh[j];
            }
        } else if (s.xp && s.bx) {
            const T* xb = s.xp + b * G * H;
#pragma GCC ivdep
            for (int64_t j = 0; j < G * H; ++j) row[j] += xb[j] + s.bx[j];
        } else if (s.xp) {
            const T* xb = s.xp + b * G * H;
#pragma GCC ivdep
            for (int64_t j = 0; j < G * H; ++j) row[j] += xb[j];
        } else if (s.bx) {
#pragma GCC ivdep
            for (int64_t j = 0; j < G * H; ++j) row[j] += s.bx[j];
        }
        const T* cb = c + b * H;
        T *f_ = row + off, *g_ = f_ + H, *o_ = g_ + H;
        T *cn = c_new + b * H, *ac = act_c + b * H, *hb = h + b * H;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
            T cp = cb[j];
            T f = sigmoid(has_peep ? f_[j] + p_f[j] * cp : f_[j]);
            T g = act<softsign>(g_[j]);
            T cj;
            if (coupled) {
                cj = g + f * (cp - g);
            } else {
                T i = sigmoid(has_peep ? row[j] + p_i[j] * cp : row[j]);
                row[j] = i;
                cj = f * cp + i * g;
            }
            T o = sigmoid(has_peep ? o_[j] + p_o[j] * cj : o_[j]);
            f_[j] = f;
            g_[j] = g;
            o_[j] = o;
            cn[j] = cj;
            if (!ln) {
                T a = act<softsign>(cj);
                ac[j] = a;
                hb[j] = o * a;
            }
        }
        if (ln) {
            T mean, rstd;
            moments(cn, H, s.eps, mean, rstd);
            stats[STATS * b + 2] = mean;
            stats[STATS * b + 3] = rstd;
#pragma GCC ivdep
            for (int64_t j = 0; j < H; ++j) {
                T a = act<softsign>((cn[j] - mean) * rstd * s.w_c[j] + (s.b_c ? s.b_c[j] : T(0)));
                ac[j] = a;
                hb[j] = o_[j] * a;
            }
        }
    }
}

// From d_h, d_c (B, H) (the gradients reaching h_t, c_t) and forward()'s results: d_gates (B, G*H), the
// gradient of xp (the gate pre-activations', or with s.ln_x that of x W_ih^T, s.xp); d_c_prev (B, H); the batch
// sums of the vector parameters' gradients, added to d_vec (Vectors); with layer norm d_a (B, G*H), the
// gradient of a = h W_hh^T. work: (G*H).
template <typename T, bool coupled, bool softsign, bool has_peep, bool ln>
void backward_rows(const Step<T>& s, int64_t first, int64_t end, const T* d_h, const T* d_c, const T* gates,
                   const T* c, const T* c_new, const T* act_c, const T* stats, T* d_gates, T* d_c_prev, T* d_vec,
                   T* d_a, T* work) {
    const int64_t G = coupled ? 3 : 4, H = s.H, off = (G - 3) * H;
    const T* p_i = s.peep;
    const T* p_f = has_peep ? s.peep + off : nullptr;
    const T* p_o = has_peep ? p_f + H : nullptr;
    const Vectors at(s, G, has_peep, ln);
    T* d_peep = has_peep ? d_vec + at.peep : nullptr;
    T* d_w_hh = ln ? d_vec + at.w_hh : nullptr;
    T* d_w_c = ln ? d_vec + at.w_c : nullptr;
    T* d_b_c = ln && s.b_c ? d_vec + at.b_c : nullptr;
    T* d_ln_x = ln && s.ln_x ? d_vec + at.ln_x : nullptr;
    T* d_b = ln && s.ln_x && s.b ? d_vec + at.b : nullptr;
    for (int64_t b = first; b < end; ++b) {
        const T* row = gates + b * G * H;
        T* d_row = d_gates + b * G * H;
        const T *dh = d_h + b * H, *dc = d_c + b * H, *cb = c + b * H, *cn = c_new + b * H, *ac = act_c + b * H;
        T* dcp = d_c_prev + b * H;
        T* d_cn = work;  // (H): the gradient reaching c_new from h
        const T *o_ = row + off + 2 * H;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) d_cn[j] = act_backward<softsign>(dh[j] * o_[j], ac[j]);
        if (ln) {
            T mean = stats[STATS * b + 2], rstd = stats[STATS * b + 3];
#pragma GCC ivdep
            for (int64_t j = 0; j < H; ++j) {
                T x_hat = (cn[j] - mean) * rstd;
                d_w_c[j] += d_cn[j] * x_hat;
                if (d_b_c) d_b_c[j] += d_cn[j];
                d_cn[j] *= s.w_c[j];
            }
            ln_backward(d_cn, cn, H, mean, rstd);
        }
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
            T f = row[off + j], g = row[off + H + j], o = o_[j];
            T cp = cb[j];
            T d_o = dh[j] * ac[j] * o * (T(1) - o);
            T dcn = dc[j] + d_cn[j];
            if (has_peep) dcn += d_o * p_o[j];
            T d_f, d_g, d_prev;
            if (coupled) {
                d_f = dcn * (cp - g) * f * (T(1) - f);
                d_g = act_backward<softsign>(dcn * (T(1) - f), g);
                d_prev = dcn * f;
            } else {
                T i = row[j];
                T d_i = dcn * g * i * (T(1) - i);
                d_f = dcn * cp * f * (T(1) - f);
                d_g = act_backward<softsign>(dcn * i, g);
                d_prev = dcn * f;
                d_row[j] = d_i;
                if (has_peep) {
                    d_prev += d_i * p_i[j];
                    d_peep[j] += d_i * cp;
                }
            }
            if (has_peep) {
                d_prev += d_f * p_f[j];
                d_peep[off + j] += d_f * cp;
                d_peep[off + H + j] += d_o * cn[j];
            }
            d_row[off + j] = d_f;
            d_row[off + H + j] = d_g;
            d_row[off + 2 * H + j] = d_o;
            dcp[j] = d_prev;
        }
        if (ln) {
            const T* ab = s.a + b * G * H;
            T* da = d_a + b * G * H;
            T mean = stats[STATS * b], rstd = stats[STATS * b + 1];
#pragma GCC ivdep
            for (int64_t j = 0; j < G * H; ++j) {
                d_w_hh[j] += d_row[j] * (ab[j] - mean) * rstd;
                da[j] = d_row[j] * s.w_hh[j];
            }
            ln_backward(da, ab, G * H, mean, rstd);
            if (s.ln_x) {  // the gradient of x W_ih^T (s.xp), in place of the normalised one's
                const T* xb = s.xp + b * G * H;
                T x_mean = stats[STATS * b + 4], x_rstd = stats[STATS * b + 5];
#pragma GCC ivdep
                for (int64_t j = 0; j < G * H; ++j) {
                    d_ln_x[j] += d_row[j] * (xb[j] - x_mean) * x_rstd;
                    if (d_b) d_b[j] += d_row[j];
                    d_row[j] *= s.ln_x[j];
                }
                ln_backward(d_row, xb, G * H, x_mean, x_rstd);
            }
        }
    }
}

// backward_rows over all rows; from PARALLEL_ROWS rows on (with OpenMP), each thread takes a block of rows and
// sums the vector parameters' gradients apart, added to d_vec in thread order afterwards: the same sums for
// the same number of threads, run after run.
template <typename T, bool coupled, bool softsign, bool has_peep, bool ln>
void backward(const Step<T>& s, const T* d_h, const T* d_c, const T* gates, const T* c, const T* c_new,
              const T* act_c, const T* stats, T* d_gates, T* d_c_prev, T* d_vec, T* d_a, T* work) {
#ifdef _OPENMP
    const int threads = parallel_rows(s.B) ? omp_get_max_threads() : 1;
#else
    const int threads = 1;
#endif
    if (threads == 1) {
        backward_rows<T, coupled, softsign, has_peep, ln>(s, 0, s.B, d_h, d_c, gates, c, c_new, act_c, stats,
                                                          d_gates, d_c_prev, d_vec, d_a, work);
        return;
    }
    const int64_t G = coupled ? 3 : 4, H = s.H;
    const int64_t n_vec = Vectors(s, G, has_peep, ln).size;
    std::vector<T> partial(threads * n_vec, T(0)), works(threads * G * H);
#pragma omp parallel num_threads(threads)
    {
#ifdef _OPENMP
        const int64_t id = omp_get_thread_num(), n = omp_get_num_threads();
#else
        const int64_t id = 0, n = 1;
#endif
        backward_rows<T, coupled, softsign, has_peep, ln>(s, s.B * id / n, s.B * (id + 1) / n, d_h, d_c, gates, c,
                                                          c_new, act_c, stats, d_gates, d_c_prev,
                                                          partial.data() + id * n_vec, d_a, works.data() + id * G * H);
    }
    for (int t = 0; t < threads; ++t)
        for (int64_t j = 0; j < n_vec; ++j) d_vec[j] += partial[t * n_vec + j];
}

// The variant flags as template arguments, so that each loop is compiled without branches.
template <typename F> void dispatch(int coupled, int softsign, bool peep, bool ln, F&& run) {
    switch (coupled * 8 + softsign * 4 + peep * 2 + ln) {
        case 0: run.template operator()<false, false, false, false>(); break;
        case 1: run.template operator()<false, false, false, true>(); break;
        case 2: run.template operator()<false, false, true, false>(); break;
        case 3: run.template operator()<false, false, true, true>(); break;
        case 4: run.template operator()<false, true, false, false>(); break;
        case 5: run.template operator()<false, true, false, true>(); break;
        case 6: run.template operator()<false, true, true, false>(); break;
        case 7: run.template operator()<false, true, true, true>(); break;
        case 8: run.template operator()<true, false, false, false>(); break;
        case 9: run.template operator()<true, false, false, true>(); break;
        case 10: run.template operator()<true, false, true, false>(); break;
        case 11: run.template operator()<true, false, true, true>(); break;
        case 12: run.template operator()<true, true, false, false>(); break;
        case 13: run.template operator()<true, true, false, true>(); break;
        case 14: run.template operator()<true, true, true, false>(); break;
        default: run.template operator()<true, true, true, true>(); break;
    }
}

template <typename T>
void forward_any(const Step<T>& s, T* gates, const T* c, T* c_new, T* act_c, T* h, T* stats, int coupled,
                 int softsign) {
    dispatch(coupled, softsign, s.peep != nullptr, s.a != nullptr, [&]<bool C, bool S, bool P, bool L>() {
        forward<T, C, S, P, L>(s, gates, c, c_new, act_c, h, stats);
    });
}

template <typename T>
void backward_any(const Step<T>& s, const T* d_h, const T* d_c, const T* gates, const T* c, const T* c_new,
                  const T* act_c, const T* stats, T* d_gates, T* d_c_prev, T* d_vec, T* d_a, T* work,
                  int coupled, int softsign) {
    dispatch(coupled, softsign, s.peep != nullptr, s.a != nullptr, [&]<bool C, bool S, bool P, bool L>() {
        backward<T, C, S, P, L>(s, d_h, d_c, gates, c, c_new, act_c, stats, d_gates, d_c_prev, d_vec, d_a, work);
    });
}

}  // namespace lstm

// ---- Whole sequences: the time loop with the recurrent matrix products, for one direction of one layer ----
// The products repeated at every step run on weights packed once per call (Repeated, below), the others call the
// BLAS that PyTorch itself links (its Fortran-interface gemm, whose address fused.py looks up and checks against
// torch.matmul), so a sequence runs without returning to Python between steps.
// One loop (run_forward, run_backward) serves every cell: time, lengths, recurrent dropout, the input
// projection of inference and the carried h are handled there; a cell (LSTM, GRU, RNN below) supplies one
// step's products and gate math, forward and backward.

template <typename T> using Gemm = void (*)(const char*, const char*, const int*, const int*, const int*,
                                            const T*, const T*, const int*, const T*, const int*, const T*, T*,
                                            const int*);

// Row-major C (m, n) = A (m, k) B (k, n) + beta * C through the column-major gemm (C^T = B^T A^T, a row-major
// matrix being its transpose in column-major order). A is stored as (m, k), or (k, m) if ta, with row stride
// lda; B as (k, n), or (n, k) if tb, with row stride ldb; C with row stride ldc.
template <typename T> INLINE void matmul(Gemm<T> gemm, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A,
                                         int64_t lda, const T* B, int64_t ldb, T beta, T* C, int64_t ldc) {
    if (m == 0 || n == 0) return;
    const int m_ = int(m), n_ = int(n), k_ = int(k), lda_ = int(lda), ldb_ = int(ldb), ldc_ = int(ldc);
    const T one = 1;
    gemm(tb ? "T" : "N", ta ? "T" : "N", &n_, &m_, &k_, &one, B, &ldb_, A, &lda_, &beta, C, &ldc_);
}

template <typename T> INLINE void matmul(Gemm<T> gemm, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A,
                                         const T* B, T beta, T* C) {  // contiguous operands
    matmul(gemm, ta, tb, m, n, k, A, ta ? m : k, B, tb ? k : n, beta, C, n);
}

// The right operand B (k, n) of a product repeated at every step (W_hh^T in the forward, W_hh in the backward, the
// projection's W_hr) or chunk of steps (inference's W_ih^T), stored as (k, n), or (n, k) if tb, with row stride
// ldb. Where more than one product will use it (`pack`), it is packed once into panels of NR columns (k rows of NR
// contiguous values each, the last panel zero-padded), which this file's own kernel (`panel`) multiplies with: a
// step's product then reads its operand in the order the kernel uses it, and each thread the same panels at every
// step (static schedule: they stay in its cache), instead of the gemm packing its operand again at each call.
// Otherwise every product is the gemm's.
template <typename T> class Repeated {
  public:
    // MR rows by NR = 2 of the widest vectors of accumulators in registers
    static constexpr int MR = VEC_BYTES == 64 ? 8 : 6;
    static constexpr int V = VEC_BYTES / sizeof(T), NR = 2 * V;
    typedef T vec __attribute__((vector_size(VEC_BYTES), aligned(sizeof(T))));  // loads and stores unaligned

    // With B2 (k2 rows, stored as B, row stride ldb2; packed only), the operand is B stacked on B2, (k + k2, n),
    // multiplied by two left operands side by side (times2): [A A2] [B; B2] = A B + A2 B2 in one pass.
    Repeated(Gemm<T> gemm, bool tb, int64_t k, int64_t n, const T* B, int64_t ldb, bool pack, int64_t k2 = 0,
             const T* B2 = nullptr, int64_t ldb2 = 0)
        : gemm_(gemm), tb_(tb), k_(k), k2_(B2 ? k2 : 0), n_(n), B_(B), ldb_(ldb) {
        if (!pack || !B || k == 0 || n == 0) return;
        panels_ = (n + NR - 1) / NR;
        const int64_t K = k_ + k2_;
        packed_.assign(panels_ * K * NR, T(0));
        for (int64_t p = 0; p < panels_; ++p) {  // in the order of the reads (B's rows, or with tb its columns)
            const int64_t j0 = p * NR, j1 = std::min(n, j0 + NR);
            T* panel = packed_.data() + p * K * NR - j0;
            if (tb) {
                for (int64_t j = j0; j < j1; ++j) {
                    for (int64_t l = 0; l < k; ++l) panel[l * NR + j] = B[j * ldb + l];
                    for (int64_t l = 0; l < k2_; ++l) panel[(k + l) * NR + j] = B2[j * ldb2 + l];
                }
            } else {
                for (int64_t l = 0; l < k; ++l)
                    for (int64_t j = j0; j < j1; ++j) panel[l * NR + j] = B[l * ldb + j];
                for (int64_t l = 0; l < k2_; ++l)
                    for (int64_t j = j0; j < j1; ++j) panel[(k + l) * NR + j] = B2[l * ldb2 + j];
            }
        }
    }
    Repeated(const Repeated&) = delete;
    Repeated& operator=(const Repeated&) = delete;

    bool packed() const { return !packed_.empty(); }

    // C (m, n) (row stride ldc) = A (m, k) (row stride lda) B + beta * C, beta 0 or 1; with a second operand
    // stacked (packed only), C = A B + A2 (m, k2) (row stride lda2) B2 + beta * C.
    void times(int64_t m, const T* A, int64_t lda, T beta, T* C, int64_t ldc, const T* A2 = nullptr,
               int64_t lda2 = 0) const {
        if (m == 0 || n_ == 0) return;
        if (packed_.empty()) return matmul(gemm_, false, tb_, m, n_, k_, A, lda, B_, ldb_, beta, C, ldc);
        const int64_t blocks = (m + MR - 1) / MR;
        const bool parallel = m * n_ * (k_ + k2_) >= (1 << 16) && !in_parallel();
        if (blocks > 2 * panels_) {  // many rows (a chunk's input projection): each thread its rows, all of B
#pragma omp parallel for if (parallel) schedule(static)
            for (int64_t r = 0; r < blocks; ++r)
                for (int64_t p = 0; p < panels_; ++p)
                    panel(p, r * MR, std::min<int64_t>(MR, m - r * MR), A, lda, A2, lda2, beta, C, ldc, 0, k_);
        } else {  // a step's rows: each thread its panels, the same at every step, in the opposite order each time
            const bool back = reversed_ = !reversed_;
#pragma omp parallel if (parallel)
            {
                const int64_t tiles = panels_ * blocks;
#ifdef _OPENMP
                const int64_t id = omp_get_thread_num(), n = omp_get_num_threads();
#else
                const int64_t id = 0, n = 1;
#endif
                const int64_t first = tiles * id / n, end = tiles * (id + 1) / n;
                for (int64_t i = first; i < end; ++i) {
                    const int64_t tile = back ? first + end - 1 - i : i, p = tile / blocks, r = tile % blocks;
                    panel(p, r * MR, std::min<int64_t>(MR, m - r * MR), A, lda, A2, lda2, beta, C, ldc, 0, k_);
                }
            }
        }
    }

    // Packed, without B2: C = A^T B + beta * C, A stored transposed, (k, m) with row stride lda. The sum over k
    // (e.g. a sequence's T*B rows) runs in blocks of KC rows, every thread's tiles of C (the same at every block)
    // summing over one block before the next, so that the block's rows of A and of the panels stay in the caches
    // while every tile reads them.
    void times_transposed(int64_t m, const T* A, int64_t lda, T beta, T* C, int64_t ldc) const {
        constexpr int64_t KC = 128;
        const int64_t blocks = (m + MR - 1) / MR;
#pragma omp parallel if (m * n_ * k_ >= (1 << 16) && !in_parallel())
        for (int64_t l = 0; l < k_; l += KC) {
#pragma omp for collapse(2) schedule(static) nowait  // the same tiles for each thread at every block
            for (int64_t r = 0; r < blocks; ++r)
                for (int64_t p = 0; p < panels_; ++p)
                    panel<true>(p, r * MR, std::min<int64_t>(MR, m - r * MR), A + l * lda, lda, nullptr, 0,
                                l ? T(1) : beta, C, ldc, l, std::min(KC, k_ - l));
        }
    }

  private:
    // rows row .. row+rows (rows <= MR) of C's panel p, in registers over all of k, then stored (the last panel's
    // columns past n dropped), the sum over B's rows l0 .. l0+k (A's first k); with TA, A's rows are its columns
    template <bool TA = false>
    void panel(int64_t p, int64_t row, int64_t rows, const T* A, int64_t lda, const T* A2, int64_t lda2, T beta, T* C,
               int64_t ldc, int64_t l0, int64_t k) const {
        vec acc[MR][2];
        const T *b = packed_.data() + (p * (k_ + k2_) + l0) * NR, *a = TA ? A + row : A + row * lda;
        const T* a2 = A2 ? A2 + row * lda2 : nullptr;
        [&]<int... R>(std::integer_sequence<int, R...>) {  // tile<rows>: every row count its own unrolled loop
            ((rows == R + 1 ? tile<R + 1, TA>(b, a, lda, k, a2, lda2, acc) : void()), ...);
        }(std::make_integer_sequence<int, MR>{});
        const int64_t col = p * NR, cols = std::min<int64_t>(NR, n_ - col);
        for (int i = 0; i < rows; ++i) {
            T* c = C + (row + i) * ldc + col;
            if (cols == NR) {
                vec *c0 = (vec*)c, *c1 = (vec*)(c + V);
                if (beta != T(0)) *c0 += acc[i][0], *c1 += acc[i][1];
                else *c0 = acc[i][0], *c1 = acc[i][1];
            } else {
                T tile[NR];
                std::memcpy(tile, &acc[i][0], sizeof(vec));
                std::memcpy(tile + V, &acc[i][1], sizeof(vec));
                for (int64_t j = 0; j < cols; ++j) c[j] = beta != T(0) ? c[j] + tile[j] : tile[j];
            }
        }
    }

    // acc[0 .. R) = R rows of A (row stride lda) times a packed panel b (k, NR). With one or two rows the sums over
    // k run as 4 or 2 interleaved partial sums, which keep the FMAs from waiting on each other's results.
    template <int R, bool TA> INLINE void tile(const T* b, const T* a, int64_t lda, int64_t k, const T* a2,
                                               int64_t lda2, vec (&acc)[MR][2]) const {
        constexpr int KS = R == 1 ? 4 : R == 2 ? 2 : 1;
        vec part[KS][R][2];
#pragma GCC unroll 16
        for (int i = 0; i < KS * R * 2; ++i) (&part[0][0][0])[i] = vec{};  // (= {} is a call to memset)
        sums<R, KS, TA>(b, a, lda, k, part);
        if (a2) sums<R, KS, false>(b + k_ * NR, a2, lda2, k2_, part);
        for (int i = 0; i < R; ++i) {
            acc[i][0] = part[0][i][0], acc[i][1] = part[0][i][1];
            for (int s = 1; s < KS; ++s) acc[i][0] += part[s][i][0], acc[i][1] += part[s][i][1];
        }
    }

    // part[s] += R rows of A (k columns; with TA, A^T's: A[l * lda + i]) times b (k, NR), the terms l = s mod KS
    // in part[s]
    template <int R, int KS, bool TA>
    INLINE void sums(const T* b, const T* a, int64_t lda, int64_t k, vec (&part)[KS][R][2]) const {
        const auto at = [a, lda](int i, int64_t l) { return TA ? a[l * lda + i] : a[i * lda + l]; };
        int64_t l = 0;
        for (; l + KS <= k; l += KS) {
#pragma GCC unroll 4
            for (int s = 0; s < KS; ++s) {
                const vec b0 = *(const vec*)(b + (l + s) * NR), b1 = *(const vec*)(b + (l + s) * NR + V);
#pragma GCC unroll 16
                for (int i = 0; i < R; ++i) {
                    const T x = at(i, l + s);
                    part[s][i][0] += x * b0, part[s][i][1] += x * b1;
                }
            }
        }
        for (; l < k; ++l) {
            const vec b0 = *(const vec*)(b + l * NR), b1 = *(const vec*)(b + l * NR + V);
            for (int i = 0; i < R; ++i) part[0][i][0] += at(i, l) * b0, part[0][i][1] += at(i, l) * b1;
        }
    }

    Gemm<T> gemm_;
    bool tb_;
    int64_t k_, k2_, n_;
    const T* B_;
    int64_t ldb_;
    int64_t panels_ = 0;
    std::vector<T> packed_;
    mutable bool reversed_ = false;  // the order of the last step product's tiles
};

// C (m, n) = A^T B + beta * C, A (k, m) and B (k, n) with row strides lda, ldb: the weight gradients' sums over a
// sequence's steps and rows (d_pre^T h), through `gemm` where given, else on this file's kernel (Repeated's, B
// packed, the sum over k in blocks): whichever is faster depends on the machine (fused.py's sums_kernel).
template <typename T> void summed_product(int64_t m, int64_t n, int64_t k, const T* A, int64_t lda, const T* B,
                                          int64_t ldb, T beta, T* C, int64_t ldc, Gemm<T> gemm) {
    if (m == 0 || n == 0) return;
    if (k == 0) {
        for (int64_t i = 0; i < m; ++i)
            for (int64_t j = 0; j < n; ++j) C[i * ldc + j] = beta != T(0) ? C[i * ldc + j] : T(0);
        return;
    }
    if (gemm) return matmul(gemm, true, false, m, n, k, A, lda, B, ldb, beta, C, ldc);
    Repeated<T>(nullptr, false, k, n, B, ldb, true).times_transposed(m, A, lda, beta, C, ldc);
}

// A sequence: T steps, B rows, sorted longest first when batch_sizes is given (step t runs the first
// batch_sizes[t] rows; a row that has ended keeps its state). A per-step buffer holds all T steps when the
// sequence is kept for the backward, else one step, reused (inference keeps nothing). The buffers' steps are ld
// rows apart: B, or in a call split into slices of rows (`slices`), the whole batch's (the buffers then start at
// the slice's first row).
template <typename T> struct Sequence {
    int64_t steps, B, ld, H, P, GH, I, chunk;  // P: the size of h (the LSTM's projection, else H); GH: G*H, xp's width
    bool keep, clear;  // clear: kept values of ended rows are zeroed (`zero_rows`)
    const SequenceArgs& args;    // the cells read their own buffers from it
    const int64_t* batch_sizes;  // (T) or null: every row runs every step
    const T *w_hh, *mask, *h0;  // (G*H, P); (B, P) or null; (B, P)
    T *xp, *h, *out, *hr;  // (T, B, G*H) the input projections; (B, P): h_0 on entry, the final h on exit;
                           // (T, B, P): zero past a row's end; h masked (mask only)
    // With ln_w_ih and no x (the LSTM's layer norm, train), xp is x W_ih^T, which the cell normalises, adding b.
    // Inference may project the input here instead (x non-null): xp is then a buffer of `chunk` steps, filled with
    // x W_ih^T for `chunk` steps at a time, each step's rows then getting the bias b (G*H) and with ln_w_ih (the
    // LSTM's layer norm) normalised first: LN(x W_ih^T) * ln_w_ih + b. (The LSTM may project x with each step
    // instead, `takes_x`: xp is then unused, or with layer norm a step's x W_ih^T.)
    const T *x, *w_ih, *b, *ln_w_ih;  // (T, B, I); (G*H, I); (G*H) or null; (G*H) or null
    T* work;                            // (B, G*H), for a cell's forward
    const T* bx;                        // the bias the cell adds to the step's input pre-activations, or null

    Sequence(const SequenceArgs& a, int64_t ld)
        : steps(a.steps), B(a.batch), ld(ld), H(a.hidden), P(a.proj), GH(a.n_gates * a.hidden), I(a.input),
          chunk(a.chunk), keep(a.keep != 0), clear(a.keep && a.clear), args(a), batch_sizes(a.batch_sizes),
          w_hh((T*)a.w_hh), mask((T*)a.mask), h0((T*)a.h0), xp((T*)a.xp), h((T*)a.h), out((T*)a.out),
          hr((T*)a.hr), x((T*)a.x), w_ih((T*)a.w_ih), b((T*)a.b), ln_w_ih((T*)a.ln_w_ih), work((T*)a.work),
          bx(x && !ln_w_ih ? b : nullptr) {}
    int64_t rows(int64_t t) const { return batch_sizes ? batch_sizes[t] : B; }
    T* step_of(T* buffer, int64_t t, int64_t width) const { return buffer + (keep ? t * ld * width : 0); }
    // Zeroes rows bs.. (rows that have ended) of step t of a kept per-step buffer, where the kept buffers are outputs
    // of rnnkit's ops, which hold no value as the memory happened to (`clear`).
    void zero_rows(T* buffer, int64_t t, int64_t bs, int64_t width) const {
        std::memset(buffer + (t * ld + bs) * width, 0, (B - bs) * width * sizeof(T));
    }

    // The right operands of the recurrent products, packed where there is more than one step and `pack` (a cell
    // builds its forward's operands in the forward, its backward's in the backward; see Repeated):
    // the forward's, of h_r (bs, P): the columns col .. col+n of W_hh^T;
    Repeated<T> w_hh_t_columns(int64_t col, int64_t n, bool pack) const {
        return Repeated<T>((Gemm<T>)args.gemm, true, P, n, w_hh + col * P, P, pack && steps > 1);
    }
    // the backward's: the rows row .. row+k of W_hh (k, P), whose products d (bs, k) W_hh[row:row+k] reach h_r.
    Repeated<T> w_hh_rows(int64_t row, int64_t k, bool pack) const {
        return Repeated<T>((Gemm<T>)args.gemm, false, k, P, w_hh + row * P, P, pack && steps > 1);
    }
};

// Step t's input pre-activations (bs, G*H): xp's step, or with the input projected here (q.x) the chunk's step,
// projected with the chunk's first step and then, with the LSTM's layer norm, its rows normalised (and the bias
// added) in place, all of the chunk's at once; else the cell adds q.bx to them.
template <typename T> const T* step_input(const Sequence<T>& q, int64_t t, const Repeated<T>& w_ih_t, T eps) {
    const int64_t B = q.B, ld = q.ld, GH = q.GH;
    if (!q.x) return q.xp + t * ld * GH;
    if (t % q.chunk == 0) {  // project the next chunk of steps (rows past their end included)
        const int64_t steps = std::min(q.chunk, q.steps - t), rows = steps * B;
        if (ld == B) w_ih_t.times(rows, q.x + t * B * q.I, q.I, T(0), q.xp, GH);
        else  // a slice: its rows of each step
            for (int64_t u = 0; u < steps; ++u)
                w_ih_t.times(B, q.x + (t + u) * ld * q.I, q.I, T(0), q.xp + u * ld * GH, GH);
        if (q.ln_w_ih) {
#pragma omp parallel for if (parallel_rows(rows)) schedule(static)
            for (int64_t r = 0; r < rows; ++r) {
                T* row = q.xp + (r / B * ld + r % B) * GH;
                T mean, rstd;
                moments(row, GH, eps, mean, rstd);
#pragma GCC ivdep
                for (int64_t j = 0; j < GH; ++j)
                    row[j] = (row[j] - mean) * rstd * q.ln_w_ih[j] + (q.b ? q.b[j] : T(0));
            }
        }
    }
    return q.xp + (t % q.chunk) * ld * GH;
}

// x[k] *= mask[k] over bs rows of P: recurrent dropout's mask on the gradient reaching h through W_hh.
template <typename T> INLINE void apply_mask(const Sequence<T>& q, int64_t bs, T* x) {
    if (q.mask)
        for (int64_t k = 0; k < bs * q.P; ++k) x[k] *= q.mask[k];
}

// The forward loop: for each step, the rows that have ended carry their state and output zero, the active ones
// run the cell's step on their input pre-activations, h_{t-1} (the previous output, or h_0) and h_r (h_{t-1},
// masked with recurrent dropout). A row's final h is copied out once, when it ends.
template <typename T, class Cell> void run_forward(const Sequence<T>& q, Cell& cell, Gemm<T> gemm) {
    const int64_t B = q.B, ld = q.ld, P = q.P;
    int64_t active = B;  // the rows that ran the previous step
    // inference's input projection, unless the cell's step product includes it
    const Repeated<T> w_ih_t(gemm, true, q.I, q.GH, q.w_ih, q.I, q.x && q.steps > 1 && !cell.takes_x);
    for (int64_t t = 0; t < q.steps; ++t) {
        const int64_t bs = q.rows(t);
        const T* h = t ? q.out + (t - 1) * ld * P : q.h0;
        T* out = q.out + t * ld * P;
        if (bs < active) {  // rows bs .. active ended at the previous step
            std::memcpy(q.h + bs * P, h + bs * P, (active - bs) * P * sizeof(T));
            active = bs;
        }
        if (bs < B) {
            std::memset(out + bs * P, 0, (B - bs) * P * sizeof(T));
            cell.carry(t, bs);
        }
        if (bs == 0) continue;  // the lengths are sorted: every later step is empty too
        const T* hr = h;
        if (q.mask) {
            T* m = q.step_of(q.hr, t, P);
            for (int64_t k = 0; k < bs * P; ++k) m[k] = h[k] * q.mask[k];
            hr = m;
        }
        cell.forward(t, bs, cell.takes_x ? nullptr : step_input(q, t, w_ih_t, T(1e-5)), hr, h, out, gemm);
    }
    if (q.steps > 0) std::memcpy(q.h, q.out + (q.steps - 1) * ld * P, active * P * sizeof(T));
}

// The backward loop over a kept sequence: d_h (B, P) holds the gradient of the final h on entry, of h_0 on exit;
// each step adds d_out's and the cell turns the gradient reaching h_t into d_xp's step (rows past their end
// untouched: zero them beforehand) and the gradient reaching h_{t-1} (rows that have ended keep theirs, which
// waits for their last step). The cell's `finish` runs after every step, empty or not.
template <typename T, class Cell> void run_backward(const Sequence<T>& q, Cell& cell, Gemm<T> gemm, const T* d_out,
                                                    T* d_h, T* d_xp) {
    const int64_t ld = q.ld, P = q.P;
    for (int64_t t = q.steps - 1; t >= 0; --t) {
        const int64_t bs = q.rows(t);
        if (bs > 0) {
            const T* d_o = d_out + t * ld * P;
            for (int64_t k = 0; k < bs * P; ++k) d_h[k] += d_o[k];
            const T* h_prev = t ? q.out + (t - 1) * ld * P : q.h0;  // the rows active now were active then
            cell.backward(t, bs, h_prev, q.mask ? q.hr + t * ld * P : h_prev, d_h, d_xp + t * ld * q.GH, gemm);
        }
        cell.finish(t, bs);
    }
}

// ---- LSTM: the gate math of forward()/backward() above, the products around it ----
// Per step it keeps the activated gates (G*H), c (the T+1 cell states), act_c (H), with a projection h before it
// (H), with layer norm a = h_r W_hh^T (G*H) and the moments (STATS). The backward also writes d_hout (T, B, P) with a
// projection (the gradient reaching its output, for W_hr's gradient) and adds the vector parameters' gradients
// to d_vec (see backward). W_hh's gradient, the sum over steps of d_pre^T h_r: without layer norm d_pre is d_xp,
// and the product over all steps is left to the caller; with layer norm d_pre is d_a, the gradient of a, kept for
// `chunk` steps at a time and added to d_w_hh (G*H, P) one product per chunk (the saved tensors are never
// written: a second backward through the same graph gives the same gradients).
// The backward's work: (B, H) + (B, H) + with layer norm (chunk, B, G*H).
template <typename T, bool coupled, bool softsign, bool has_peep, bool ln> struct LSTM {
    const Sequence<T>& q;
    lstm::Step<T> s;
    const T* w_hr;
    T *gates, *c, *act_c, *h_new, *a, *stats;
    T *d_c, *d_hout, *d_vec, *d_w_hh, *d_hn, *d_cp, *d_a_chunk;  // the backward's
    std::vector<T> row_work;  // (G*H), the backward's gate math's
    // Inference projects each step's input x_t with the step (takes_x), not a chunk of steps ahead, so that x W_ih^T
    // is not written out and read back: without layer norm in the step's product, [h_r x_t] [W_hh^T; W_ih^T] (the
    // bias added with the gate math); with layer norm, which normalises x W_ih^T apart, into a step's buffer (xp).
    // That reads W_ih (G*H, I) at every step instead of once per chunk, against writing and reading x W_ih^T's
    // (B, G*H): with fewer rows than half the input's width the chunks are cheaper (e.g. a batch of one).
    const bool takes_x;
    // the right operands: h_r's W_hh^T (with takes_x and no layer norm, on W_ih^T), x_t's W_ih^T (takes_x with layer
    // norm) and h's W_hr^T (forward), the backward's W_hh and W_hr
    Repeated<T> by_w_hh_t, by_w_ih_t, by_w_hr_t, by_w_hh, by_w_hr;

    LSTM(const Sequence<T>& q, const BackwardArgs* g)
        : q(q), s{q.B, q.H, (T*)q.args.peep, nullptr, (T*)q.args.ln_w_hh, (T*)q.args.ln_w_c, (T*)q.args.ln_b_c,
                  T(1e-5)},
          w_hr((T*)q.args.w_hr), gates((T*)q.args.gates), c((T*)q.args.c), act_c((T*)q.args.act_c),
          h_new((T*)q.args.h_new), a((T*)q.args.a), stats((T*)q.args.stats),
          takes_x(q.x && q.steps > 1 && !g && 2 * q.B >= q.I),
          by_w_hh_t(takes_x && !ln ? Repeated<T>((Gemm<T>)q.args.gemm, true, q.P, q.GH, q.w_hh, q.P, true, q.I, q.w_ih, q.I)
                                   : q.w_hh_t_columns(0, q.GH, !g)),
          by_w_ih_t((Gemm<T>)q.args.gemm, true, q.I, q.GH, q.w_ih, q.I, takes_x && ln),
          by_w_hr_t((Gemm<T>)q.args.gemm, true, q.H, q.P, w_hr, q.H, !g && q.steps > 1), by_w_hh(q.w_hh_rows(0, q.GH, g)),
          by_w_hr((Gemm<T>)q.args.gemm, false, q.P, q.H, w_hr, q.H, g && q.steps > 1) {
        if (!g) return;
        d_c = (T*)g->d_c, d_hout = (T*)g->d_hout, d_vec = (T*)g->d_vec, d_w_hh = (T*)g->d_w_hh;
        d_hn = (T*)g->work, d_cp = d_hn + q.B * q.H, d_a_chunk = d_cp + q.B * q.H;
        row_work.resize(q.GH);
    }
    T* c_at(int64_t t) const { return c + (q.keep ? t : t % 2) * q.ld * q.H; }
    // layer norm with xp given as x W_ih^T (train), not LN(x W_ih^T) * ln_w_ih + b: the gate math normalises it, the
    // backward reads it (kept) and its d_xp is that of x W_ih^T, with ln_w_ih's and b's gradients in d_vec
    bool raw_input() const { return ln && q.ln_w_ih && !q.x; }

    // For a slice's backward (sequence_backward): the work's size per row (its part of the whole work), d_vec's and
    // d_w_hh's sizes (summed apart)
    static int64_t work_per_row(const SequenceArgs& a) {
        return 2 * a.hidden + (ln ? a.chunk * a.n_gates * a.hidden : 0);
    }
    static int64_t vector_size(const SequenceArgs& a) {
        lstm::Step<T> s{a.batch, a.hidden, (T*)a.peep, nullptr, (T*)a.ln_w_hh, (T*)a.ln_w_c, (T*)a.ln_b_c, T(1e-5)};
        if (ln && a.ln_w_ih && !a.x) s.ln_x = (T*)a.ln_w_ih, s.b = (T*)a.b;  // as raw_input()
        return lstm::Vectors(s, a.n_gates, has_peep, ln).size;
    }
    static int64_t weight_size(const SequenceArgs& a) { return ln ? a.n_gates * a.hidden * a.proj : 0; }

    void carry(int64_t t, int64_t bs) {  // ended rows: their cell state carries (their kept values: see clear)
        std::memcpy(c_at(t + 1) + bs * q.H, c_at(t) + bs * q.H, (q.B - bs) * q.H * sizeof(T));
        if (!q.clear) return;
        q.zero_rows(gates, t, bs, q.GH);
        q.zero_rows(act_c, t, bs, q.H);
        if (ln) q.zero_rows(a, t, bs, q.GH), q.zero_rows(stats, t, bs, lstm::STATS);
    }

    void forward(int64_t t, int64_t bs, const T* in, const T* hr, const T*, T* out, Gemm<T> gemm) {
        const int64_t GH = q.GH, P = q.P, H = q.H;
        T* g = q.step_of(gates, t, GH);
        s.xp = in;  // the kernel adds it, and the bias
        s.bx = q.bx;  // with x projected here (takes_x or not) its bias, added with the gate math
        const T* x = takes_x ? q.x + t * q.ld * q.I : nullptr;
        if (ln) {
            s.a = q.step_of(a, t, GH);
            by_w_hh_t.times(bs, hr, P, T(0), (T*)s.a, GH);
            if (x) {
                by_w_ih_t.times(bs, x, q.I, T(0), q.xp, GH);
                s.xp = q.xp;
            }
            if (x || raw_input()) s.ln_x = q.ln_w_ih, s.b = q.b;
        } else {
            by_w_hh_t.times(bs, hr, P, T(0), g, GH, x, q.I);
        }
        s.B = bs;
        T* hn = w_hr ? q.step_of(h_new, t, H) : out;
        lstm::forward<T, coupled, softsign, has_peep, ln>(s, g, c_at(t), c_at(t + 1), q.step_of(act_c, t, H), hn,
                                                          ln ? q.step_of(stats, t, lstm::STATS) : nullptr);
        if (w_hr) by_w_hr_t.times(bs, hn, H, T(0), out, P);  // h W_hr^T
    }

    void backward(int64_t t, int64_t bs, const T*, const T*, T* d_h, T* dx, Gemm<T> gemm) {
        const int64_t B = q.B, ld = q.ld, GH = q.GH, P = q.P, H = q.H;
        const T* dh = d_h;
        if (w_hr) {
            std::memcpy(d_hout + t * ld * P, d_h, bs * P * sizeof(T));
            by_w_hr.times(bs, d_h, P, T(0), d_hn, H);  // d_hn (bs, H) = d_h (bs, P) W_hr
            dh = d_hn;
        }
        s.B = bs;
        s.a = ln ? a + t * ld * GH : nullptr;
        if (raw_input()) s.xp = q.xp + t * ld * GH, s.ln_x = q.ln_w_ih, s.b = q.b;
        T* d_a = ln ? d_a_chunk + (t % q.chunk) * B * GH : nullptr;  // (the chunk's own rows: B apart)
        T* st = ln ? stats + t * ld * lstm::STATS : nullptr;
        lstm::backward<T, coupled, softsign, has_peep, ln>(s, dh, d_c, gates + t * ld * GH, c_at(t), c_at(t + 1),
                                                           act_c + t * ld * H, st, dx, d_cp, d_vec, d_a,
                                                           row_work.data());
        std::memcpy(d_c, d_cp, bs * H * sizeof(T));
        by_w_hh.times(bs, ln ? d_a : dx, GH, T(0), d_h, P);  // d_h = d_pre (bs, G*H) W_hh
        apply_mask(q, bs, d_h);
    }

    void finish(int64_t t, int64_t bs) {  // layer norm: d_a of the chunk t .. t+K-1 into d_w_hh
        if (!ln) return;
        const int64_t B = q.B, ld = q.ld, GH = q.GH, P = q.P, K = q.chunk;
        const Gemm<T> sums = (Gemm<T>)q.args.sum_gemm;
        if (bs < B) std::memset(d_a_chunk + (t % K) * B * GH + bs * GH, 0, (B - bs) * GH * sizeof(T));
        if (t % K) return;
        const int64_t n = std::min(K, q.steps - t);
        const auto h_r = [&](int64_t u) -> const T* {  // step u's h_r: the masked h, or the previous output, or h_0
            return q.mask ? q.hr + u * ld * P : u ? q.out + (u - 1) * ld * P : q.h0;
        };
        if (ld != B) {  // a slice: its rows of each step (not contiguous from step to step)
            for (int64_t u = 0; u < n; ++u)
                summed_product(GH, P, B, d_a_chunk + u * B * GH, GH, h_r(t + u), P, T(1), d_w_hh, P, sums);
        } else if (q.mask || t > 0) {
            summed_product(GH, P, n * B, d_a_chunk, GH, h_r(t), P, T(1), d_w_hh, P, sums);
        } else {  // step 0 reads h_0, the others the outputs before them
            summed_product(GH, P, B, d_a_chunk, GH, q.h0, P, T(1), d_w_hh, P, sums);
            summed_product(GH, P, (n - 1) * B, d_a_chunk + B * GH, GH, q.out, P, T(1), d_w_hh, P, sums);
        }
    }
};

// ---- GRU (gates r, z, n; cells.GRUStep) ----
// reset_after (torch.nn): rec = h_r W_hh^T + b_hh, r, z = sigmoid(xp + rec), n = act(xp_n + r * rec_n);
// else (Cho et al.): r, z = sigmoid(xp + h_r W_hz^T), n = act(xp_n + (r * h_r) W_hn^T), b_hh hoisted into xp.
// h' = n + z * (h - n). Per step it keeps the activated gates r, z, n (3H) and `extra` (H): rec_n (reset_after)
// or r * h_r. The backward writes d_xp; W_hh's gradient is left to the caller: the r, z rows are d_xp's r, z
// blocks times h_r, the n rows d_extra times h_r (reset_after: d_extra = d_n * r, the gradient at rec_n, written
// here, (T, B, H)) or d_xp's n block times r * h_r. b_hh's gradient (reset_after) is the sum of the same blocks.
// Forward work: (B, 3H); backward work: (B, 3H) + (B, H).
template <typename T, bool reset_after, int kind> struct GRU {
    static constexpr bool takes_x = false;  // its step's input pre-activations come from run_forward
    const Sequence<T>& q;
    T *gates, *extra, *d_extra, *d_work;
    const T* b_hh;
    // W_hh^T's columns for h_r (reset_after: all 3H; else r, z's and n's apart) and the backward's W_hh rows
    Repeated<T> by_w_hh_t, by_w_hn_t, by_w_hh, by_w_hn;

    GRU(const Sequence<T>& q, const BackwardArgs* g)
        : q(q), gates((T*)q.args.gates), extra((T*)q.args.extra), d_extra(g ? (T*)g->d_extra : nullptr),
          d_work(g ? (T*)g->work : nullptr), b_hh((T*)q.args.b_hh),
          by_w_hh_t(q.w_hh_t_columns(0, reset_after ? 3 * q.H : 2 * q.H, !g)),
          by_w_hn_t(q.w_hh_t_columns(2 * q.H, reset_after ? 0 : q.H, !g)),
          by_w_hh(q.w_hh_rows(0, reset_after ? 3 * q.H : 2 * q.H, g)), by_w_hn(q.w_hh_rows(2 * q.H, reset_after ? 0 : q.H, g)) {}

    static int64_t work_per_row(const SequenceArgs& a) { return 4 * a.hidden; }  // (as LSTM's)
    static int64_t vector_size(const SequenceArgs&) { return 0; }
    static int64_t weight_size(const SequenceArgs&) { return 0; }

    void carry(int64_t t, int64_t bs) {  // h, the only state, carries in the loop (ended rows' kept values: clear)
        if (q.clear) q.zero_rows(gates, t, bs, 3 * q.H), q.zero_rows(extra, t, bs, q.H);
    }

    void forward(int64_t t, int64_t bs, const T* in, const T* hr, const T* h, T* out, Gemm<T> gemm) {
        const int64_t H = q.H, GH = 3 * H;
        T *g = q.step_of(gates, t, GH), *e = q.step_of(extra, t, H), *rec = q.work;
        const T* bx = q.bx;
        if (reset_after) {
            by_w_hh_t.times(bs, hr, H, T(0), rec, GH);  // (bs, 3H) = h_r W_hh^T
#pragma omp parallel for if (parallel_rows(bs)) schedule(static)
            for (int64_t b = 0; b < bs; ++b) {
                const T *x = in + b * GH, *rc = rec + b * GH, *hb = h + b * H;
                T *gb = g + b * GH, *eb = e + b * H, *ob = out + b * H;
#pragma GCC ivdep
                for (int64_t j = 0; j < H; ++j) {
                    T r = sigmoid(x[j] + rc[j] + (b_hh ? b_hh[j] : T(0)) + (bx ? bx[j] : T(0)));
                    T z = sigmoid(x[H + j] + rc[H + j] + (b_hh ? b_hh[H + j] : T(0)) + (bx ? bx[H + j] : T(0)));
                    T hn = rc[2 * H + j] + (b_hh ? b_hh[2 * H + j] : T(0));
                    T n = act<kind>(x[2 * H + j] + (bx ? bx[2 * H + j] : T(0)) + r * hn);
                    gb[j] = r, gb[H + j] = z, gb[2 * H + j] = n, eb[j] = hn;
                    ob[j] = n + z * (hb[j] - n);
                }
            }
        } else {
            by_w_hh_t.times(bs, hr, H, T(0), rec, 2 * H);  // h_r W_h{r,z}^T
#pragma omp parallel for if (parallel_rows(bs)) schedule(static)
            for (int64_t b = 0; b < bs; ++b) {
                const T *x = in + b * GH, *rc = rec + b * 2 * H, *hb = hr + b * H;
                T *gb = g + b * GH, *eb = e + b * H;
#pragma GCC ivdep
                for (int64_t j = 0; j < H; ++j) {
                    T r = sigmoid(x[j] + rc[j] + (bx ? bx[j] : T(0)));
                    gb[j] = r, gb[H + j] = sigmoid(x[H + j] + rc[H + j] + (bx ? bx[H + j] : T(0))), eb[j] = r * hb[j];
                }
            }
            by_w_hn_t.times(bs, e, H, T(0), rec, H);  // (r * h_r) W_hn^T
#pragma omp parallel for if (parallel_rows(bs)) schedule(static)
            for (int64_t b = 0; b < bs; ++b) {
                const T *x = in + b * GH, *rc = rec + b * H, *hb = h + b * H;
                T *gb = g + b * GH, *ob = out + b * H;
#pragma GCC ivdep
                for (int64_t j = 0; j < H; ++j) {
                    T z = gb[H + j], n = act<kind>(x[2 * H + j] + rc[j] + (bx ? bx[2 * H + j] : T(0)));
                    gb[2 * H + j] = n;
                    ob[j] = n + z * (hb[j] - n);
                }
            }
        }
    }

    void backward(int64_t t, int64_t bs, const T* h_prev, const T* hr, T* d_h, T* dx, Gemm<T> gemm) {
        const int64_t B = q.B, ld = q.ld, H = q.H, GH = 3 * H;
        const T *g = gates + t * ld * GH, *e = extra + t * ld * H;
        T *d_rec = d_work, *d_hr = d_work + B * GH;
        if (reset_after) {
            T* d_nr = d_extra + t * ld * H;
#pragma omp parallel for if (parallel_rows(bs)) schedule(static)
            for (int64_t b = 0; b < bs; ++b) {
                const T *gb = g + b * GH, *eb = e + b * H, *hp = h_prev + b * H;
                T *dh = d_h + b * H, *dxb = dx + b * GH, *drb = d_rec + b * GH, *dnb = d_nr + b * H;
#pragma GCC ivdep
                for (int64_t j = 0; j < H; ++j) {
                    T r = gb[j], z = gb[H + j], n = gb[2 * H + j], d = dh[j];
                    T d_n = act_backward<kind>(d * (T(1) - z), n);
                    T d_z = d * (hp[j] - n) * z * (T(1) - z);
                    T d_r = d_n * eb[j] * r * (T(1) - r);
                    dxb[j] = drb[j] = d_r;
                    dxb[H + j] = drb[H + j] = d_z;
                    dxb[2 * H + j] = d_n;
                    drb[2 * H + j] = dnb[j] = d_n * r;
                    dh[j] = d * z;  // the direct path; the recurrent one is added below
                }
            }
            if (q.mask) {
                by_w_hh.times(bs, d_rec, GH, T(0), d_hr, H);  // d_rec (bs, 3H) W_hh
                for (int64_t k = 0; k < bs * H; ++k) d_h[k] += q.mask[k] * d_hr[k];
            } else {
                by_w_hh.times(bs, d_rec, GH, T(1), d_h, H);
            }
            return;
        }
#pragma omp parallel for if (parallel_rows(bs)) schedule(static)
        for (int64_t b = 0; b < bs; ++b) {
            const T *gb = g + b * GH, *hp = h_prev + b * H;
            T *dh = d_h + b * H, *dxb = dx + b * GH;
#pragma GCC ivdep
            for (int64_t j = 0; j < H; ++j) {
                T z = gb[H + j], n = gb[2 * H + j], d = dh[j];
                dxb[2 * H + j] = act_backward<kind>(d * (T(1) - z), n);
                dxb[H + j] = d * (hp[j] - n) * z * (T(1) - z);
                dh[j] = d * z;
            }
        }
        // d_rh (bs, H) = d_n W_hn, W_hn the last H rows of W_hh (3H, H)
        by_w_hn.times(bs, dx + 2 * H, GH, T(0), d_hr, H);
#pragma omp parallel for if (parallel_rows(bs)) schedule(static)
        for (int64_t b = 0; b < bs; ++b) {
            const T *gb = g + b * GH, *hb = hr + b * H;
            T *dxb = dx + b * GH, *drh = d_hr + b * H;
#pragma GCC ivdep
            for (int64_t j = 0; j < H; ++j) {
                T r = gb[j];
                dxb[j] = drh[j] * hb[j] * r * (T(1) - r);
                drh[j] *= r;
            }
        }
        by_w_hh.times(bs, dx, GH, T(1), d_hr, H);  // + d_{r,z} W_h{r,z}
        if (q.mask)
            for (int64_t k = 0; k < bs * H; ++k) d_h[k] += q.mask[k] * d_hr[k];
        else
            for (int64_t k = 0; k < bs * H; ++k) d_h[k] += d_hr[k];
    }

    void finish(int64_t, int64_t) {}
};

// ---- Elman RNN (cells.RNNStep): h' = act(xp + h_r W_hh^T); it keeps nothing but the outputs ----
template <typename T, int kind> struct RNN {
    static constexpr bool takes_x = false;
    const Sequence<T>& q;
    Repeated<T> by_w_hh_t, by_w_hh;  // W_hh^T (forward), W_hh (backward)

    RNN(const Sequence<T>& q, const BackwardArgs* g)
        : q(q), by_w_hh_t(q.w_hh_t_columns(0, q.H, !g)), by_w_hh(q.w_hh_rows(0, q.H, g)) {}
    static int64_t work_per_row(const SequenceArgs&) { return 0; }  // (as LSTM's)
    static int64_t vector_size(const SequenceArgs&) { return 0; }
    static int64_t weight_size(const SequenceArgs&) { return 0; }

    void carry(int64_t, int64_t) {}

    void forward(int64_t, int64_t bs, const T* in, const T* hr, const T*, T* out, Gemm<T> gemm) {
        const int64_t H = q.H;
        by_w_hh_t.times(bs, hr, H, T(0), out, H);
#pragma omp parallel for if (parallel_rows(bs)) schedule(static)
        for (int64_t b = 0; b < bs; ++b) {
            T* ob = out + b * H;
            const T* x = in + b * H;
#pragma GCC ivdep
            for (int64_t j = 0; j < H; ++j) ob[j] = act<kind>(x[j] + ob[j] + (q.bx ? q.bx[j] : T(0)));
        }
    }

    void backward(int64_t t, int64_t bs, const T*, const T*, T* d_h, T* dx, Gemm<T> gemm) {
        const int64_t H = q.H;
        const T* y = q.out + t * q.ld * H;
#pragma omp parallel for if (parallel_rows(bs)) schedule(static)
        for (int64_t b = 0; b < bs; ++b) {
#pragma GCC ivdep
            for (int64_t j = 0; j < H; ++j) dx[b * H + j] = act_backward<kind>(d_h[b * H + j], y[b * H + j]);
        }
        by_w_hh.times(bs, dx, H, T(0), d_h, H);  // d_h = d_pre W_hh
        apply_mask(q, bs, d_h);
    }

    void finish(int64_t, int64_t) {}
};

// The cell and its variants as template arguments: each combination compiled as its own loop, without branches.
template <typename T, typename F> void with_cell(const SequenceArgs& a, F&& run) {
    const int activation = a.activation;
    if (a.cell == 0) {
        lstm::dispatch(a.coupled, activation, a.peephole, a.layer_norm, [&]<bool C, bool S, bool P, bool L>() {
            run.template operator()<LSTM<T, C, S, P, L>>();
        });
    } else if (a.cell == 1) {
        auto gru = [&]<bool reset_after>() {
            if (activation == SOFTSIGN) run.template operator()<GRU<T, reset_after, SOFTSIGN>>();
            else run.template operator()<GRU<T, reset_after, TANH>>();
        };
        if (a.reset_after) gru.template operator()<true>();
        else gru.template operator()<false>();
    } else {
        if (activation == SOFTSIGN) run.template operator()<RNN<T, SOFTSIGN>>();
        else if (activation == RELU) run.template operator()<RNN<T, RELU>>();
        else run.template operator()<RNN<T, TANH>>();
    }
}

// A sequence call (forward or backward) of at least this many rows per thread runs each thread's slice of the rows
// as a sequence of its own: the rows are independent, so the threads never wait for each other, and each keeps its
// rows' states and its own packed weights in its caches, instead of every step's product and gate math being split
// among the threads.
constexpr int64_t SLICE_ROWS = 16;

// The first row of slice id of n (id = n: the end), at a multiple of `block` rows: with lengths (batch_sizes, the
// rows sorted longest first), so that the slices run about as many row-steps each.
int64_t slice_start(const SequenceArgs& a, int64_t id, int64_t n, int64_t block) {
    const int64_t B = a.batch;
    if (id == 0 || id == n) return id ? B : 0;
    const auto work = [&a](int64_t rows) {  // the row-steps of rows 0 .. rows
        if (!a.batch_sizes) return rows * a.steps;
        int64_t sum = 0;
        for (int64_t t = 0; t < a.steps; ++t) sum += std::min(a.batch_sizes[t], rows);
        return sum;
    };
    const int64_t target = work(B) * id / n;
    int64_t lo = 0, hi = B;  // the fewest rows with at least target row-steps
    while (lo < hi) {
        const int64_t mid = (lo + hi) / 2;
        if (work(mid) < target) lo = mid + 1;
        else hi = mid;
    }
    return std::min(B, (lo + block / 2) / block * block);
}

// The slices a sequence call of a's rows runs as: starts[0 .. n] (n + 1 values, at most max_slices() + 1), n
// returned, 1 where the rows are not split.
int max_slices() {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}
template <typename T> int64_t slices(const SequenceArgs& a, int64_t* starts) {
    const int threads = max_slices();
    const int64_t n = threads > 1 && a.batch >= threads * SLICE_ROWS && !in_parallel() ? threads : 1;
    for (int64_t id = 0; id <= n; ++id) starts[id] = slice_start(a, id, n, Repeated<T>::MR);
    return n;
}

// Rows r0 .. r0+rows of a sequence: its buffers from row r0 on (their steps still a.batch rows apart,
// Sequence::ld), lengths (sizes, T) clipped to the slice.
template <typename T> SequenceArgs slice(const SequenceArgs& a, int64_t r0, int64_t rows, std::vector<int64_t>& sizes) {
    SequenceArgs s = a;
    s.batch = rows;
    if (a.batch_sizes) {
        sizes.resize(a.steps);
        for (int64_t t = 0; t < a.steps; ++t) sizes[t] = std::clamp<int64_t>(a.batch_sizes[t] - r0, 0, rows);
        s.batch_sizes = sizes.data();
    }
    const int64_t H = a.hidden, P = a.proj, GH = a.n_gates * a.hidden;
    const auto from = [r0](void*& p, int64_t width) {
        if (p) p = (T*)p + r0 * width;
    };
    from(s.mask, P), from(s.xp, GH), from(s.h0, P), from(s.h, P), from(s.out, P), from(s.hr, P), from(s.x, a.input);
    from(s.work, GH), from(s.gates, GH), from(s.extra, H), from(s.c, H), from(s.act_c, H), from(s.h_new, H);
    from(s.a, GH), from(s.stats, lstm::STATS);
    return s;
}

// run(id, r0, rows) for every non-empty slice id < n (starts as `slices` gives them), each on its own thread (a team
// smaller than asked for runs every slice still).
template <typename F> void for_each_slice(int64_t n, const int64_t* starts, F&& run) {
#pragma omp parallel num_threads(n)
    {
#ifdef _OPENMP
        const int64_t first = omp_get_thread_num(), team = omp_get_num_threads();
#else
        const int64_t first = 0, team = 1;
#endif
        for (int64_t id = first; id < n; id += team)
            if (starts[id + 1] > starts[id]) run(id, starts[id], starts[id + 1] - starts[id]);
    }
}

template <typename T> void sequence(const SequenceArgs& a) {
    const auto run = [](const SequenceArgs& s, int64_t ld) {
        const Sequence<T> q(s, ld);
        with_cell<T>(s, [&]<class Cell>() {
            Cell cell(q, nullptr);
            run_forward(q, cell, (Gemm<T>)s.gemm);
        });
    };
    std::vector<int64_t> starts(max_slices() + 1);
    const int64_t n = slices<T>(a, starts.data());
    if (n == 1) return run(a, a.batch);
    for_each_slice(n, starts.data(), [&](int64_t, int64_t r0, int64_t rows) {
        std::vector<int64_t> sizes;
        run(slice<T>(a, r0, rows, sizes), a.batch);
    });
}

// The backward's buffers of a slice of rows from r0 on (see slice): their steps still a.batch rows apart.
template <typename T> BackwardArgs slice_grads(const BackwardArgs& g, const SequenceArgs& a, int64_t r0) {
    BackwardArgs b = g;
    const auto from = [r0](void*& p, int64_t width) {
        if (p) p = (T*)p + r0 * width;
    };
    from(b.d_out, a.proj), from(b.d_h, a.proj), from(b.d_c, a.hidden), from(b.d_xp, a.n_gates * a.hidden);
    from(b.d_hout, a.proj), from(b.d_extra, a.hidden);
    return b;
}

// The backward, in the slices of rows its forward ran (slices): each its part of the work, and each its own sums of
// the vector parameters' gradients (d_vec) and, with layer norm, of W_hh's (the first slice's in g's, the others'
// added to them in slice order afterwards: the same sums for the same number of threads, run after run).
template <typename T> void sequence_backward(const SequenceArgs& a, const BackwardArgs& g) {
    std::vector<int64_t> starts(max_slices() + 1);
    const int64_t n = slices<T>(a, starts.data());
    with_cell<T>(a, [&]<class Cell>() {
        if (n == 1) {
            const Sequence<T> q(a, a.batch);
            Cell cell(q, &g);
            return run_backward(q, cell, (Gemm<T>)a.gemm, (const T*)g.d_out, (T*)g.d_h, (T*)g.d_xp);
        }
        const int64_t n_vec = Cell::vector_size(a), n_w = g.d_w_hh ? Cell::weight_size(a) : 0, per = n_vec + n_w;
        std::vector<T> sums((n - 1) * per, T(0));
        for_each_slice(n, starts.data(), [&](int64_t id, int64_t r0, int64_t rows) {
            std::vector<int64_t> sizes;
            const SequenceArgs s = slice<T>(a, r0, rows, sizes);
            BackwardArgs b = slice_grads<T>(g, a, r0);
            b.work = (T*)g.work + r0 * Cell::work_per_row(a);
            if (id > 0) {
                T* own = sums.data() + (id - 1) * per;
                b.d_vec = own, b.d_w_hh = n_w ? own + n_vec : nullptr;
            }
            const Sequence<T> q(s, a.batch);
            Cell cell(q, &b);
            run_backward(q, cell, (Gemm<T>)a.gemm, (const T*)b.d_out, (T*)b.d_h, (T*)b.d_xp);
        });
        T *d_vec = (T*)g.d_vec, *d_w_hh = (T*)g.d_w_hh;
        for (int64_t id = 1; id < n; ++id) {
            const T* own = sums.data() + (id - 1) * per;
            for (int64_t j = 0; j < n_vec; ++j) d_vec[j] += own[j];
            for (int64_t j = 0; j < n_w; ++j) d_w_hh[j] += own[n_vec + j];
        }
    });
}

}  // namespace

extern "C" {

// One LSTM step's gate math: params = [peep, a, w_hh, w_c, b_c] (null where absent), dims = [B, H],
// flags = [coupled, softsign].
#define RNNKIT_ENTRIES(T, suffix)                                                                           \
    void lstm_forward_##suffix(void* const* params, const int64_t* dims, const int* flags, T* gates,         \
                               const T* c, T* c_new, T* act_c, T* h, T* stats) {                             \
        lstm::Step<T> s{dims[0], dims[1], (const T*)params[0], (const T*)params[1], (const T*)params[2],    \
                        (const T*)params[3], (const T*)params[4], T(1e-5)};                                 \
        lstm::forward_any<T>(s, gates, c, c_new, act_c, h, stats, flags[0], flags[1]);                       \
    }                                                                                                       \
    void lstm_backward_##suffix(void* const* params, const int64_t* dims, const int* flags, const T* d_h,   \
                                const T* d_c, const T* gates, const T* c, const T* c_new, const T* act_c,   \
                                const T* stats, T* d_gates, T* d_c_prev, T* d_vec, T* d_a, T* work) {        \
        lstm::Step<T> s{dims[0], dims[1], (const T*)params[0], (const T*)params[1], (const T*)params[2],    \
                        (const T*)params[3], (const T*)params[4], T(1e-5)};                                 \
        lstm::backward_any<T>(s, d_h, d_c, gates, c, c_new, act_c, stats, d_gates, d_c_prev, d_vec, d_a,     \
                              work, flags[0], flags[1]);                                                    \
    }                                                                                                       \
    /* C (m, n) = A (m, k) B (+ C if accumulate), B (k, n) or (n, k) if tb, as a sequence's repeated operand */ \
    /* (packed if pack); dims = [m, n, k, lda, ldb, ldc, times]: the product repeated `times` times, as over */ \
    /* a sequence's steps (fused.repeated_product, for the tests and benchmarks/bench_kernels.py) */           \
    void repeated_product_##suffix(const int64_t* dims, int tb, int accumulate, int pack, const T* A,          \
                                   const T* B, T* C, void* gemm) {                                          \
        const Repeated<T> b((Gemm<T>)gemm, tb, dims[2], dims[1], B, dims[4], pack);                         \
        for (int64_t i = 0; i < dims[6]; ++i) b.times(dims[0], A, dims[3], T(accumulate), C, dims[5]);      \
    }                                                                                                       \
    /* C (m, n) = A^T B (+ C if accumulate), A (k, m), B (k, n); dims = [m, n, k, lda, ldb, ldc]; gemm or null */\
    void summed_product_##suffix(const int64_t* dims, int accumulate, const T* A, const T* B, T* C,         \
                                 void* gemm) {                                                              \
        summed_product<T>(dims[0], dims[1], dims[2], A, dims[3], B, dims[4], T(accumulate), C, dims[5],      \
                          (Gemm<T>)gemm);                                                                   \
    }                                                                                                       \
    /* Whole sequences of any cell (the backward's chunk, for the LSTM's layer norm, is args->chunk). */   \
    void sequence_##suffix(const SequenceArgs* args) { sequence<T>(*args); }                                 \
    /* The slices a call with args->batch rows runs as: starts (max_slices() + 1 values), n returned */          \
    int64_t sequence_slices_##suffix(const SequenceArgs* args, int64_t* starts) { return slices<T>(*args, starts); } \
    void sequence_backward_##suffix(const SequenceArgs* args, const BackwardArgs* grads) {                  \
        sequence_backward<T>(*args, *grads);                                                                \
    }

RNNKIT_ENTRIES(float, f32)
RNNKIT_ENTRIES(double, f64)

int sequence_max_slices() { return max_slices(); }  // at most this many slices (PyTorch's thread count)

}  // extern "C"
