// rnnkit's fused LSTM step: the gate math of one time step (forward) or of its backward in one pass over
// the (B, H) units, for every LSTM variant the engine runs (peephole, coupled input-forget gate, softsign,
// layer norm). cells.LSTMStep is the reference: the same equations, written as one PyTorch op each.
//
// Built at first use by rnnkit/fused.py with the system C++ compiler (no PyTorch headers: the matrix
// products stay in PyTorch, these loops get raw pointers); rnnkit falls back to the PyTorch ops when no
// compiler is found. exp is written out (range reduction + polynomial) so that the loops vectorise.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>
#ifdef _OPENMP
#include <omp.h>
#endif

namespace {

#define INLINE inline __attribute__((always_inline))  // the loops vectorise only with everything inlined

// Built with OpenMP (fused.py tries -fopenmp first), a step's rows are split among PyTorch's threads (its
// OpenMP runtime is the one already loaded) from this many rows on. Without OpenMP the pragmas are ignored.
constexpr int64_t PARALLEL_ROWS = 16;

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

template <bool softsign, typename T> INLINE T act(T v) {
    if constexpr (softsign) return v / (T(1) + std::fabs(v));
    else return tanh_(v);
}

template <bool softsign, typename T> INLINE T act_backward(T d, T y) {  // d * act'(v) from y = act(v)
    if constexpr (softsign) return d * (T(1) - std::fabs(y)) * (T(1) - std::fabs(y));
    else return d * (T(1) - y * y);
}

// Mean and 1/sqrt(var + eps) of x[0..n), as torch.native_layer_norm (biased variance). The sums are
// vectorised (omp simd reduction: partial sums per lane), so they add in a different order than torch.
template <typename T> INLINE void moments(const T* x, int64_t n, T eps, T& mean, T& rstd) {
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int64_t j = 0; j < n; ++j) sum += x[j];
    mean = sum / T(n);
    T sq = 0;
#pragma omp simd reduction(+ : sq)
    for (int64_t j = 0; j < n; ++j) sq += (x[j] - mean) * (x[j] - mean);
    rstd = T(1) / std::sqrt(sq / T(n) + eps);
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

// The parameters and options of one step; pointers a layer does not have are null.
template <typename T> struct Step {
    int64_t B, H;
    const T* peep;  // ((G-1)*H): p_i, p_f, p_o (p_f, p_o when coupled)
    // layer norm: a = h W_hh^T (B, G*H) is normalised with gain w_hh; c' is normalised with w_c, b_c
    const T* a;
    const T *w_hh, *w_c, *b_c;
    T eps;
    const T* xp = nullptr;  // layer norm: xp (B, G*H) read from here, the gates written only (else gates hold xp)
};

// gates (B, G*H): the gate pre-activations on entry (xp + h W_hh^T; with layer norm xp alone, LN(a) is
// added here), the activated gates on exit; G = 3 (f, g, o) when coupled, else 4 (i, f, g, o).
// Writes c_new, act_c (the activation of c_new, or of LN(c_new)), h = o * act_c (B, H), and with layer
// norm the moments of each row of a and of c_new (B,).
template <typename T, bool coupled, bool softsign, bool has_peep, bool ln>
void forward(const Step<T>& s, T* gates, const T* c, T* c_new, T* act_c, T* h, T* stats) {
    const int64_t G = coupled ? 3 : 4, H = s.H, off = (G - 3) * H;
    const T* p_i = s.peep;
    const T* p_f = has_peep ? s.peep + off : nullptr;
    const T* p_o = has_peep ? p_f + H : nullptr;
#pragma omp parallel for if (s.B >= PARALLEL_ROWS) schedule(static)  // rows are independent
    for (int64_t b = 0; b < s.B; ++b) {
        T* row = gates + b * G * H;
        if (ln) {
            const T* ab = s.a + b * G * H;
            T mean, rstd;
            moments(ab, G * H, s.eps, mean, rstd);
            stats[4 * b] = mean;
            stats[4 * b + 1] = rstd;
            const T* xb = s.xp ? s.xp + b * G * H : row;
#pragma GCC ivdep
            for (int64_t j = 0; j < G * H; ++j) row[j] = xb[j] + (ab[j] - mean) * rstd * s.w_hh[j];
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
            stats[4 * b + 2] = mean;
            stats[4 * b + 3] = rstd;
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
// gradient of the gate pre-activations (= of xp); d_c_prev (B, H); the batch sums of the vector
// parameters' gradients, added to d_vec = [d_peep ((G-1)*H), d_w_hh (G*H), d_w_c (H), d_b_c (H)] (those
// the layer has, in that order); with layer norm d_a (B, G*H), the gradient of a = h W_hh^T. work: (G*H).
template <typename T, bool coupled, bool softsign, bool has_peep, bool ln>
void backward_rows(const Step<T>& s, int64_t first, int64_t end, const T* d_h, const T* d_c, const T* gates,
                   const T* c, const T* c_new, const T* act_c, const T* stats, T* d_gates, T* d_c_prev, T* d_vec,
                   T* d_a, T* work) {
    const int64_t G = coupled ? 3 : 4, H = s.H, off = (G - 3) * H;
    const T* p_i = s.peep;
    const T* p_f = has_peep ? s.peep + off : nullptr;
    const T* p_o = has_peep ? p_f + H : nullptr;
    T* d_peep = has_peep ? d_vec : nullptr;
    T* d_w_hh = ln ? d_vec + (has_peep ? (G - 1) * H : 0) : nullptr;
    T* d_w_c = ln ? d_w_hh + G * H : nullptr;
    T* d_b_c = ln && s.b_c ? d_w_c + H : nullptr;
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
            T mean = stats[4 * b + 2], rstd = stats[4 * b + 3];
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
            T mean = stats[4 * b], rstd = stats[4 * b + 1];
#pragma GCC ivdep
            for (int64_t j = 0; j < G * H; ++j) {
                d_w_hh[j] += d_row[j] * (ab[j] - mean) * rstd;
                da[j] = d_row[j] * s.w_hh[j];
            }
            ln_backward(da, ab, G * H, mean, rstd);
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
    const int threads = s.B >= PARALLEL_ROWS ? omp_get_max_threads() : 1;
#else
    const int threads = 1;
#endif
    if (threads == 1) {
        backward_rows<T, coupled, softsign, has_peep, ln>(s, 0, s.B, d_h, d_c, gates, c, c_new, act_c, stats,
                                                          d_gates, d_c_prev, d_vec, d_a, work);
        return;
    }
    const int64_t G = coupled ? 3 : 4, H = s.H;
    const int64_t n_vec = (has_peep ? (G - 1) * H : 0) + (ln ? G * H + H + (s.b_c ? H : 0) : 0);
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

// ---- Whole sequences: the time loop with the recurrent matrix products, for one direction of one layer ----
// The products call the BLAS that PyTorch itself links (its Fortran-interface gemm, whose address fused.py
// looks up and checks against torch.matmul), so a sequence runs without returning to Python between steps.

template <typename T> using Gemm = void (*)(const char*, const char*, const int*, const int*, const int*,
                                            const T*, const T*, const int*, const T*, const int*, const T*, T*,
                                            const int*);

// Row-major C (m, n) = A (m, k) B (k, n) + beta * C, with A stored as (k, m) if ta and B as (n, k) if tb, through
// the column-major gemm: C^T = B^T A^T, a row-major matrix being its transpose in column-major order.
template <typename T> INLINE void matmul(Gemm<T> gemm, bool ta, bool tb, int64_t m, int64_t n, int64_t k, const T* A,
                                         const T* B, T beta, T* C) {
    if (m == 0 || n == 0) return;
    const int m_ = int(m), n_ = int(n), k_ = int(k), lda = ta ? m_ : k_, ldb = tb ? k_ : n_;
    const T one = 1;
    gemm(tb ? "T" : "N", ta ? "T" : "N", &n_, &m_, &k_, &one, B, &ldb, A, &lda, &beta, C, &n_);
}

// The buffers of a sequence (T steps, B rows, sorted longest first when batch_sizes is given: step t runs the
// first batch_sizes[t] rows; a row that has ended keeps its state). A per-step buffer holds all T steps
// when its stride is a step's size, or one step, reused, when its stride is 0 (inference keeps nothing).
template <typename T> struct Sequence {
    int64_t steps, B, H, P;
    const int64_t* batch_sizes;  // (T) or null: every row runs every step
    const T *w_hh, *w_hr, *mask;  // (G*H, P); (P, H) with a projection, else null; (B, P) recurrent dropout or null
    const T* w_hh_t;              // (P, G*H): W_hh^T, contiguous, for the forward's products
    const T* xp;                 // (T, B, G*H): the input projections
    T* gates;                    // the pre-activations, then the activated gates
    T* c;                        // (T+1, B, H) when kept, else (2, B, H); c[0] = c_0 on entry
    const T* h0;                 // (B, P): the initial h
    T *h, *out;                  // (B, P): h_0 on entry, the final h on exit; (T, B, P): zero past a row's end
    T *hr, *act_c, *h_new, *a, *stats;  // h masked (mask only), act(c'), o * act(c') (projection only),
                                        // h W_hh^T and moments (layer norm only)
    int64_t s_gates, s_hr, s_act, s_h_new, s_a, s_stats;  // per-step strides of those buffers (0: one step)
    bool keep_c;
    // Inference may project the input here instead (x non-null): xp is then a buffer of `chunk` steps,
    // filled with x W_ih^T for `chunk` steps at a time; each step's gates add the bias b (G*H), and with
    // ln_w_ih (layer norm) the projection of each row is normalised first: LN(x W_ih^T) * ln_w_ih + b.
    const T *x, *w_ih_t, *b, *ln_w_ih;  // (T, B, I); (I, G*H); (G*H) or null; (G*H) or null
    int64_t I, chunk;
};

// gates (bs rows) from the step's projection: a copy, or with the input projected here (q.x) the bias
// added and, with layer norm, each row normalised first.
template <typename T> INLINE void gates_from_projection(const Sequence<T>& q, int64_t bs, int64_t GH, const T* xp,
                                                        T* gates, T eps) {
    if (!q.x) {
        std::memcpy(gates, xp, bs * GH * sizeof(T));
        return;
    }
#pragma omp parallel for if (bs >= PARALLEL_ROWS) schedule(static)
    for (int64_t r = 0; r < bs; ++r) {
        const T* in = xp + r * GH;
        T* g = gates + r * GH;
        if (q.ln_w_ih) {
            T mean, rstd;
            moments(in, GH, eps, mean, rstd);
#pragma GCC ivdep
            for (int64_t j = 0; j < GH; ++j) g[j] = (in[j] - mean) * rstd * q.ln_w_ih[j] + (q.b ? q.b[j] : T(0));
        } else if (q.b) {
#pragma GCC ivdep
            for (int64_t j = 0; j < GH; ++j) g[j] = in[j] + q.b[j];
        } else {
            std::memcpy(g, in, GH * sizeof(T));
        }
    }
}

template <typename T, bool coupled, bool softsign, bool has_peep, bool ln>
void sequence_forward(Step<T> s, const Sequence<T>& q, Gemm<T> gemm) {
    const int64_t G = coupled ? 3 : 4, B = q.B, H = q.H, P = q.P, GH = G * H;
    for (int64_t t = 0; t < q.steps; ++t) {
        const int64_t bs = q.batch_sizes ? q.batch_sizes[t] : B;
        const T* c_prev = q.c + (q.keep_c ? t : t % 2) * B * H;
        T* c_next = q.c + (q.keep_c ? t + 1 : (t + 1) % 2) * B * H;
        T* out = q.out + t * B * P;
        if (bs < B) {  // ended rows: their cell state carries, their output is zero
            std::memcpy(c_next + bs * H, c_prev + bs * H, (B - bs) * H * sizeof(T));
            std::memset(out + bs * P, 0, (B - bs) * P * sizeof(T));
        }
        if (bs == 0) continue;
        const T* hr = q.h;
        if (q.mask) {
            T* m = q.hr + t * q.s_hr;
            for (int64_t k = 0; k < bs * P; ++k) m[k] = q.h[k] * q.mask[k];
            hr = m;
        }
        T* gates = q.gates + t * q.s_gates;
        const T* xp = q.xp + (q.x ? t % q.chunk : t) * B * GH;
        if (q.x && t % q.chunk == 0) {  // project the next chunk of steps (rows past their end included)
            const int64_t n = std::min(q.chunk, q.steps - t);
            matmul(gemm, false, false, n * B, GH, q.I, q.x + t * B * q.I, q.w_ih_t, T(0), (T*)q.xp);
        }
        if (ln && !q.x)  // the kernel reads xp itself
            s.xp = xp;
        else
            gates_from_projection(q, bs, GH, xp, gates, s.eps);
        if (ln) {
            T* a = q.a + t * q.s_a;
            matmul(gemm, false, false, bs, GH, P, hr, q.w_hh_t, T(0), a);
            s.a = a;
        } else {
            matmul(gemm, false, false, bs, GH, P, hr, q.w_hh_t, T(1), gates);
        }
        s.B = bs;
        T* h_new = q.w_hr ? q.h_new + t * q.s_h_new : out;
        forward<T, coupled, softsign, has_peep, ln>(s, gates, c_prev, c_next, q.act_c + t * q.s_act, h_new,
                                                    ln ? q.stats + t * q.s_stats : nullptr);
        if (q.w_hr) matmul(gemm, false, true, bs, P, H, h_new, q.w_hr, T(0), out);  // h W_hr^T
        std::memcpy(q.h, out, bs * P * sizeof(T));
    }
}

// The gradients of a kept sequence (every buffer kept) from d_out (T, B, P) and those of the final state,
// d_h (B, P) and d_c (B, H) on entry, of the initial state on exit. Writes d_xp (T, B, G*H) (rows past a
// row's end untouched: zero them beforehand), d_hout (T, B, P) with a projection (the gradient reaching its
// output, for W_hr's gradient) and adds the vector parameters' gradients to d_vec (see backward). W_hh's
// gradient, the sum over steps of d_pre^T h_r: without layer norm d_pre is d_xp, and the product over all
// steps is left to the caller; with layer norm d_pre is d_a, the gradient of a = h_r W_hh^T, kept for
// `chunk` steps at a time and added to d_w_hh (G*H, P) one product per chunk (the saved tensors are never
// written: a second backward through the same graph gives the same gradients).
// work: (B, H) + (B, H) + (G*H) + with layer norm (chunk, B, G*H).
template <typename T, bool coupled, bool softsign, bool has_peep, bool ln>
void sequence_backward(Step<T> s, const Sequence<T>& q, Gemm<T> gemm, const T* d_out, T* d_h, T* d_c, T* d_xp,
                       T* d_hout, T* d_vec, T* d_w_hh, T* work) {
    const int64_t G = coupled ? 3 : 4, B = q.B, H = q.H, P = q.P, GH = G * H, K = q.chunk;
    T *d_hn = work, *d_cp = work + B * H, *row_work = d_cp + B * H, *d_a_chunk = row_work + GH;
    // layer norm: d_a of steps t .. t+n-1 (rows past their end zero) times their h_r, added to d_w_hh
    auto add_chunk = [&](int64_t t) {
        const int64_t n = std::min(K, q.steps - t);
        if (q.mask) {
            matmul(gemm, true, false, GH, P, n * B, d_a_chunk, q.hr + t * q.s_hr, T(1), d_w_hh);
        } else if (t > 0) {
            matmul(gemm, true, false, GH, P, n * B, d_a_chunk, q.out + (t - 1) * B * P, T(1), d_w_hh);
        } else {  // step 0 reads h_0, the others the outputs before them
            matmul(gemm, true, false, GH, P, B, d_a_chunk, q.h0, T(1), d_w_hh);
            matmul(gemm, true, false, GH, P, (n - 1) * B, d_a_chunk + B * GH, q.out, T(1), d_w_hh);
        }
    };
    for (int64_t t = q.steps - 1; t >= 0; --t) {
        const int64_t bs = q.batch_sizes ? q.batch_sizes[t] : B;
        T* d_a = ln ? d_a_chunk + (t % K) * B * GH : nullptr;
        if (ln && bs < B) std::memset(d_a + bs * GH, 0, (B - bs) * GH * sizeof(T));  // rows that have ended
        if (bs == 0) {
            if (ln && t % K == 0) add_chunk(t);
            continue;
        }
        const T* d_o = d_out + t * B * P;
        for (int64_t k = 0; k < bs * P; ++k) d_h[k] += d_o[k];
        const T* dh = d_h;
        if (q.w_hr) {
            T* dho = d_hout + t * B * P;
            std::memcpy(dho, d_h, bs * P * sizeof(T));
            matmul(gemm, false, false, bs, H, P, d_h, q.w_hr, T(0), d_hn);  // d_hn (bs, H) = d_h (bs, P) W_hr
            dh = d_hn;
        }
        s.B = bs;
        s.a = ln ? q.a + t * q.s_a : nullptr;
        T* dx = d_xp + t * B * GH;
        backward<T, coupled, softsign, has_peep, ln>(s, dh, d_c, q.gates + t * q.s_gates, q.c + t * B * H,
                                                     q.c + (t + 1) * B * H, q.act_c + t * q.s_act,
                                                     ln ? q.stats + t * q.s_stats : nullptr, dx, d_cp, d_vec, d_a,
                                                     row_work);
        std::memcpy(d_c, d_cp, bs * H * sizeof(T));
        const T* d_pre = ln ? d_a : dx;
        if (ln && t % K == 0) add_chunk(t);  // the chunk of steps t .. t+K-1 is complete
        matmul(gemm, false, false, bs, P, GH, d_pre, q.w_hh, T(0), d_h);  // d_h (bs, P) = d_pre (bs, G*H) W_hh
        if (q.mask)
            for (int64_t k = 0; k < bs * P; ++k) d_h[k] *= q.mask[k];
    }
}

template <typename T>
void sequence_any(const Step<T>& s, const Sequence<T>& q, Gemm<T> gemm, int coupled, int softsign) {
    dispatch(coupled, softsign, s.peep != nullptr, s.w_hh != nullptr, [&]<bool C, bool S, bool P, bool L>() {
        sequence_forward<T, C, S, P, L>(s, q, gemm);
    });
}

template <typename T>
void sequence_backward_any(const Step<T>& s, const Sequence<T>& q, Gemm<T> gemm, int coupled, int softsign,
                           const T* d_out, T* d_h, T* d_c, T* d_xp, T* d_hout, T* d_vec, T* d_w_hh, T* work) {
    dispatch(coupled, softsign, s.peep != nullptr, s.w_hh != nullptr, [&]<bool C, bool S, bool P, bool L>() {
        sequence_backward<T, C, S, P, L>(s, q, gemm, d_out, d_h, d_c, d_xp, d_hout, d_vec, d_w_hh, work);
    });
}

}  // namespace

extern "C" {

// One entry per direction of the data: params = [peep, a, w_hh, w_c, b_c] (null where absent), dims = [B, H],
// flags = [coupled, softsign].
#define RNNKIT_ENTRIES(T, suffix)                                                                           \
    void lstm_forward_##suffix(void* const* params, const int64_t* dims, const int* flags, T* gates,         \
                               const T* c, T* c_new, T* act_c, T* h, T* stats) {                             \
        Step<T> s{dims[0], dims[1], (const T*)params[0], (const T*)params[1], (const T*)params[2],          \
                  (const T*)params[3], (const T*)params[4], T(1e-5)};                                       \
        forward_any<T>(s, gates, c, c_new, act_c, h, stats, flags[0], flags[1]);                             \
    }                                                                                                       \
    void lstm_backward_##suffix(void* const* params, const int64_t* dims, const int* flags, const T* d_h,   \
                                const T* d_c, const T* gates, const T* c, const T* c_new, const T* act_c,   \
                                const T* stats, T* d_gates, T* d_c_prev, T* d_vec, T* d_a, T* work) {        \
        Step<T> s{dims[0], dims[1], (const T*)params[0], (const T*)params[1], (const T*)params[2],          \
                  (const T*)params[3], (const T*)params[4], T(1e-5)};                                       \
        backward_any<T>(s, d_h, d_c, gates, c, c_new, act_c, stats, d_gates, d_c_prev, d_vec, d_a, work,     \
                        flags[0], flags[1]);                                                                \
    }

// Whole sequences: params as above; dims = [T, B, H, P, I, chunk]; flags = [coupled, softsign, keep_c];
// bufs = [batch_sizes, w_hh, w_hr, mask, xp, gates, c, h0, h, out, hr, act_c, h_new, a, stats, w_hh_t, x, w_ih_t,
// b, ln_w_ih] (see Sequence);
// strides = [gates, hr, act_c, h_new, a, stats]; grads = [d_out, d_h, d_c, d_xp, d_hout, d_vec, d_w_hh, work]; backward's chunk is dims[5].
#define RNNKIT_SEQUENCE_ENTRIES(T, suffix)                                                                  \
    static Sequence<T> sequence_of_##suffix(const int64_t* dims, const int* flags, void* const* b,          \
                                            const int64_t* st) {                                            \
        return Sequence<T>{dims[0], dims[1], dims[2], dims[3], (const int64_t*)b[0], (const T*)b[1],        \
                           (const T*)b[2], (const T*)b[3], (const T*)b[15], (const T*)b[4], (T*)b[5], (T*)b[6], \
                           (const T*)b[7], (T*)b[8], (T*)b[9], (T*)b[10], (T*)b[11], (T*)b[12], (T*)b[13],  \
                           (T*)b[14], st[0], st[1], st[2], st[3], st[4], st[5], flags[2] != 0,              \
                           (const T*)b[16], (const T*)b[17], (const T*)b[18], (const T*)b[19], dims[4], dims[5]}; \
    }                                                                                                       \
    void lstm_sequence_##suffix(void* const* params, const int64_t* dims, const int* flags,                 \
                                void* const* bufs, const int64_t* strides, void* gemm) {                    \
        Step<T> s{dims[1], dims[2], (const T*)params[0], nullptr, (const T*)params[1], (const T*)params[2], \
                  (const T*)params[3], T(1e-5)};                                                            \
        sequence_any<T>(s, sequence_of_##suffix(dims, flags, bufs, strides), (Gemm<T>)gemm, flags[0],       \
                        flags[1]);                                                                          \
    }                                                                                                       \
    void lstm_sequence_backward_##suffix(void* const* params, const int64_t* dims, const int* flags,        \
                                         void* const* bufs, const int64_t* strides, void* gemm,             \
                                         void* const* g) {                                                  \
        Step<T> s{dims[1], dims[2], (const T*)params[0], nullptr, (const T*)params[1], (const T*)params[2], \
                  (const T*)params[3], T(1e-5)};                                                            \
        sequence_backward_any<T>(s, sequence_of_##suffix(dims, flags, bufs, strides), (Gemm<T>)gemm,        \
                                 flags[0], flags[1], (const T*)g[0], (T*)g[1], (T*)g[2], (T*)g[3], (T*)g[4], \
                                 (T*)g[5], (T*)g[6], (T*)g[7]);                                              \
    }

RNNKIT_ENTRIES(float, f32)
RNNKIT_SEQUENCE_ENTRIES(float, f32)
RNNKIT_SEQUENCE_ENTRIES(double, f64)
RNNKIT_ENTRIES(double, f64)

}  // extern "C"
