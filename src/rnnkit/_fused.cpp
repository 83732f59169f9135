// rnnkit's fused LSTM step: the gate math of one time step (forward) or of its backward in one pass over
// the (B, H) units, for the variants torch's fused kernels lack (peephole, coupled input-forget gate,
// softsign). cells.LSTMStep is the reference: the same equations, written as one PyTorch op each.
//
// Built at first use by rnnkit/fused.py with the system C++ compiler (no PyTorch headers: the matrix
// products stay in PyTorch, these loops get raw pointers); rnnkit falls back to the PyTorch ops when no
// compiler is found. exp is written out (range reduction + polynomial) so that the loops vectorise.
#include <cstdint>
#include <cstring>

namespace {

template <typename T> struct Exp;

template <> struct Exp<double> {
    static inline double eval(double x) {
        x = x < -708.0 ? -708.0 : (x > 708.0 ? 708.0 : x);
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
    static inline float eval(float x) {
        x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
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

template <typename T> inline T sigmoid(T v) { return T(1) / (T(1) + Exp<T>::eval(-v)); }

template <typename T> inline T tanh_(T v) {  // 1 - 2 / (e^{2v} + 1), odd by construction
    T a = v < 0 ? -v : v;
    T t = T(1) - T(2) / (Exp<T>::eval(T(2) * a) + T(1));
    return v < 0 ? -t : t;
}

template <typename T> inline T act(T v, bool softsign) {
    T a = v < 0 ? -v : v;
    return softsign ? v / (T(1) + a) : tanh_(v);
}

template <typename T> inline T act_backward(T d, T y, bool softsign) {  // d * act'(v) from y = act(v)
    T a = y < 0 ? -y : y;
    return softsign ? d * (T(1) - a) * (T(1) - a) : d * (T(1) - y * y);
}

// gates (B, G*H): xp + h W_hh^T on entry, the activated gates on exit; G = 3 (f, g, o) when coupled,
// else 4 (i, f, g, o). peep ((G-1)*H) or null. Writes c_new, act_c = act(c_new), h = o * act_c (B, H).
template <typename T, bool coupled, bool softsign, bool has_peep>
void forward(T* gates, const T* c, const T* peep_, T* c_new, T* act_c, T* h, int64_t B, int64_t H) {
    const T* peep = has_peep ? peep_ : nullptr;
    const int64_t G = coupled ? 3 : 4;
    for (int64_t b = 0; b < B; ++b) {
        T* row = gates + b * G * H;
        const T* cb = c + b * H;
        T* i_ = coupled ? nullptr : row;
        T* f_ = row + (G - 3) * H;
        T* g_ = f_ + H;
        T* o_ = g_ + H;
        T* cn = c_new + b * H;
        T* ac = act_c + b * H;
        T* hb = h + b * H;
        const T* p_i = peep;
        const T* p_f = peep ? peep + (G - 3) * H : nullptr;
        const T* p_o = peep ? p_f + H : nullptr;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
            T cp = cb[j];
            T f = sigmoid(has_peep ? f_[j] + p_f[j] * cp : f_[j]);
            T g = act(g_[j], softsign);
            T cj;
            if (coupled) {
                cj = g + f * (cp - g);
            } else {
                T i = sigmoid(has_peep ? i_[j] + p_i[j] * cp : i_[j]);
                i_[j] = i;
                cj = f * cp + i * g;
            }
            T o = sigmoid(has_peep ? o_[j] + p_o[j] * cj : o_[j]);
            T a = act(cj, softsign);
            f_[j] = f;
            g_[j] = g;
            o_[j] = o;
            cn[j] = cj;
            ac[j] = a;
            hb[j] = o * a;
        }
    }
}

// From d_h, d_c (B, H) (the gradients reaching h_t, c_t) and forward()'s results: d_gates (B, G*H), the
// gradient of the gate pre-activations; d_c_prev (B, H); d_peep (B, (G-1)*H) per row, when peep.
template <typename T, bool coupled, bool softsign, bool has_peep>
void backward(const T* d_h, const T* d_c, const T* gates, const T* c, const T* c_new, const T* act_c,
              const T* peep_, T* d_gates, T* d_c_prev, T* d_peep, int64_t B, int64_t H) {
    const T* peep = has_peep ? peep_ : nullptr;
    const int64_t G = coupled ? 3 : 4;
    for (int64_t b = 0; b < B; ++b) {
        const T* row = gates + b * G * H;
        T* d_row = d_gates + b * G * H;
        const int64_t off = (G - 3) * H;
        const T* p_i = peep;
        const T* p_f = peep ? peep + off : nullptr;
        const T* p_o = peep ? p_f + H : nullptr;
        T* dp = peep ? d_peep + b * (G - 1) * H : nullptr;
        const T *dh = d_h + b * H, *dc = d_c + b * H, *cb = c + b * H, *cn = c_new + b * H, *ac = act_c + b * H;
        T* dcp = d_c_prev + b * H;
#pragma GCC ivdep
        for (int64_t j = 0; j < H; ++j) {
            T f = row[off + j], g = row[off + H + j], o = row[off + 2 * H + j];
            T a = ac[j], cp = cb[j];
            T d_o = dh[j] * a * o * (T(1) - o);
            T d_cn = dc[j] + act_backward(dh[j] * o, a, softsign);
            if (has_peep) d_cn += d_o * p_o[j];
            T d_f, d_g, d_prev;
            if (coupled) {
                d_f = d_cn * (cp - g) * f * (T(1) - f);
                d_g = act_backward(d_cn * (T(1) - f), g, softsign);
                d_prev = d_cn * f;
            } else {
                T i = row[j];
                T d_i = d_cn * g * i * (T(1) - i);
                d_f = d_cn * cp * f * (T(1) - f);
                d_g = act_backward(d_cn * i, g, softsign);
                d_prev = d_cn * f;
                d_row[j] = d_i;
                if (has_peep) {
                    d_prev += d_i * p_i[j];
                    dp[j] = d_i * cp;
                }
            }
            if (has_peep) {
                d_prev += d_f * p_f[j];
                dp[off + j] = d_f * cp;
                dp[off + H + j] = d_o * cn[j];
            }
            d_row[off + j] = d_f;
            d_row[off + H + j] = d_g;
            d_row[off + 2 * H + j] = d_o;
            dcp[j] = d_prev;
        }
    }
}

// The variant flags as template arguments, so that each loop is compiled without branches.
template <typename T, typename F>
void dispatch(int coupled, int softsign, int peep, F&& run) {
    const int key = coupled * 4 + softsign * 2 + (peep ? 1 : 0);
    switch (key) {
        case 0: run.template operator()<false, false, false>(); break;
        case 1: run.template operator()<false, false, true>(); break;
        case 2: run.template operator()<false, true, false>(); break;
        case 3: run.template operator()<false, true, true>(); break;
        case 4: run.template operator()<true, false, false>(); break;
        case 5: run.template operator()<true, false, true>(); break;
        case 6: run.template operator()<true, true, false>(); break;
        default: run.template operator()<true, true, true>(); break;
    }
}

template <typename T>
void forward_any(T* gates, const T* c, const T* peep, T* c_new, T* act_c, T* h, int64_t B, int64_t H,
                 int coupled, int softsign) {
    dispatch<T>(coupled, softsign, peep != nullptr, [&]<bool C, bool S, bool P>() {
        forward<T, C, S, P>(gates, c, peep, c_new, act_c, h, B, H);
    });
}

template <typename T>
void backward_any(const T* d_h, const T* d_c, const T* gates, const T* c, const T* c_new, const T* act_c,
                  const T* peep, T* d_gates, T* d_c_prev, T* d_peep, int64_t B, int64_t H, int coupled,
                  int softsign) {
    dispatch<T>(coupled, softsign, peep != nullptr, [&]<bool C, bool S, bool P>() {
        backward<T, C, S, P>(d_h, d_c, gates, c, c_new, act_c, peep, d_gates, d_c_prev, d_peep, B, H);
    });
}

}  // namespace

extern "C" {

void lstm_forward_f32(float* gates, const float* c, const float* peep, float* c_new, float* act_c, float* h,
                      int64_t B, int64_t H, int coupled, int softsign) {
    forward_any<float>(gates, c, peep, c_new, act_c, h, B, H, coupled, softsign);
}

void lstm_forward_f64(double* gates, const double* c, const double* peep, double* c_new, double* act_c,
                      double* h, int64_t B, int64_t H, int coupled, int softsign) {
    forward_any<double>(gates, c, peep, c_new, act_c, h, B, H, coupled, softsign);
}

void lstm_backward_f32(const float* d_h, const float* d_c, const float* gates, const float* c,
                       const float* c_new, const float* act_c, const float* peep, float* d_gates,
                       float* d_c_prev, float* d_peep, int64_t B, int64_t H, int coupled, int softsign) {
    backward_any<float>(d_h, d_c, gates, c, c_new, act_c, peep, d_gates, d_c_prev, d_peep, B, H, coupled, softsign);
}

void lstm_backward_f64(const double* d_h, const double* d_c, const double* gates, const double* c,
                       const double* c_new, const double* act_c, const double* peep, double* d_gates,
                       double* d_c_prev, double* d_peep, int64_t B, int64_t H, int coupled, int softsign) {
    backward_any<double>(d_h, d_c, gates, c, c_new, act_c, peep, d_gates, d_c_prev, d_peep, B, H, coupled,
                     softsign);
}

}  // extern "C"
