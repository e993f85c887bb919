// gradscope's compiled loops for the CPU, float32 and float64, built on first use by gradscope/native.py.
//
// The LSTM's step loops (tanh/tanh): the equations are those of gradscope/kernels.py's LSTMSequence, whose torch
// loop they replace. Each step is one matrix product (see Recurrent: the kernel's own tiles, oneDNN's or BLAS's) and
// one pass over the step's elements, where torch's operations take seven (forward) or five (backward) passes, each
// with its own call. Gates are in the rows (o, i, f, g). float32's sigmoid and tanh are Cephes' single-precision
// approximations (relative error below 2e-7), written without branches so that the compiler vectorises them; NaN
// propagates as in torch.
//
// Summary recording's per-step statistics: those of gradscope/trace.py's norm_stats, stats_of_norms and
// gates_stats, whose torch operations they replace, in one pass over the values. A step's statistics are its own:
// the steps are split among torch's threads (the same results whatever the split).
//
// A batch's sequences are independent: the LSTM's loops split the batch's rows among torch's threads once per call
// (at::parallel_for; built with OpenMP where native.py can), each thread running every step of its rows, with no
// wait between steps (split per step instead, the forward measured 10 % slower than one thread). oneDNN, where it
// takes the products, then runs on each thread alone. With its own tiles, the backward also computes dL/dx_t and
// adds up the parameters' gradients in its loop, from a few steps' values while they are in the cache, where
// products after the loop would read them all again (oneDNN's, on copies of them: at 2 layers, B 64, T 1000, M 512
// the copies took 1.5 s of a 5.4 s training step).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/addmm_cpu_dispatch.h>
#include <torch/library.h>

// the kernel's own tiles for float32's products: AVX-512's 16 floats a vector, or AVX2's 8 (with FMA)
#if defined(__AVX512F__) || (defined(__AVX2__) && defined(__FMA__))
#define GRADSCOPE_TILES
#include <immintrin.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

namespace {

inline float exp_approx(float x) {
  // exp on [-88.38, 88.38] as 2^n e^r, |r| <= ln(2)/2; beyond, 0 or inf; NaN stays NaN (comparisons are false)
  float c = x > 88.3762626647949f ? 88.3762626647949f : x;
  c = c < -88.3762626647949f ? -88.3762626647949f : c;
  const float n = std::floor(c * 1.44269504088896341f + 0.5f);
  const float r = c - n * 0.693359375f + n * 2.12194440e-4f;
  float y = ((((1.9875691500e-4f * r + 1.3981999507e-3f) * r + 8.3334519073e-3f) * r + 4.1665795894e-2f) * r +
             1.6666665459e-1f) * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n == n ? n : 0.0f) + 127) << 23;  // NaN: y is NaN already
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return y * scale;
}

inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }

inline float tanh_of(float x) {
  // an odd polynomial for |x| < 0.625, else 1 - 2 / (e^{2|x|} + 1) with x's sign
  const float a = x < 0.0f ? -x : x;
  const float z = x * x;
  const float small =
      ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z + 1.33314422036e-1f) * z -
       3.33332819422e-1f) * z * x + x;
  float big = 1.0f - 2.0f / (exp_approx(a + a) + 1.0f);
  big = x < 0.0f ? -big : big;
  return a < 0.625f ? small : big;
}

inline double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }
inline double tanh_of(double x) { return std::tanh(x); }

// one row of the batch forward: o, i, f, g [M] the pre-activations (in place: the gates), less p [4M] where
// kProduct (p: the step's product W_hh h_{t-1}, rows o, i, f, g), c_prev [M] -> c, tanh c, h
template <typename T, bool kProduct>
void forward_row(T* __restrict o, T* __restrict i, T* __restrict f, T* __restrict g, const T* __restrict p,
                 const T* __restrict c_prev, T* __restrict c, T* __restrict tanh_c, T* __restrict h, int64_t m) {
  for (int64_t k = 0; k < m; ++k) {
    const T ov = sigmoid(kProduct ? o[k] + p[k] : o[k]), iv = sigmoid(kProduct ? i[k] + p[m + k] : i[k]);
    const T fv = sigmoid(kProduct ? f[k] + p[2 * m + k] : f[k]), gv = tanh_of(kProduct ? g[k] + p[3 * m + k] : g[k]);
    o[k] = ov;
    i[k] = iv;
    f[k] = fv;
    g[k] = gv;
    const T cv = fv * c_prev[k] + iv * gv;
    const T t = tanh_of(cv);
    c[k] = cv;
    tanh_c[k] = t;
    h[k] = ov * t;
  }
}

// one row backward: the gates, tanh c and c_prev [M], dh [M] the total dL/dh_t less p [M] where kProduct (p: the
// step's product W_hh^T da_{t+1}), the total on return, dc [M] holding f_{t+1} dc_{t+1} (or dL/dc_n, or 0) on entry
// and dc_t on return; da_o, da_i, da_f, da_g [M] are written
template <typename T, bool kProduct>
void backward_row(const T* __restrict o, const T* __restrict i, const T* __restrict f, const T* __restrict g,
                  const T* __restrict tanh_c, const T* __restrict c_prev, T* __restrict dh, const T* __restrict p,
                  T* __restrict dc, T* __restrict da_o, T* __restrict da_i, T* __restrict da_f, T* __restrict da_g,
                  int64_t m) {
  for (int64_t k = 0; k < m; ++k) {
    const T ov = o[k], iv = i[k], fv = f[k], gv = g[k], t = tanh_c[k], d = kProduct ? dh[k] + p[k] : dh[k];
    if (kProduct) dh[k] = d;
    const T dcv = dc[k] + d * ov * (T(1) - t * t);
    dc[k] = dcv;
    da_o[k] = d * t * ov * (T(1) - ov);
    da_i[k] = dcv * gv * iv * (T(1) - iv);
    da_f[k] = dcv * c_prev[k] * fv * (T(1) - fv);
    da_g[k] = dcv * iv * (T(1) - gv * gv);
  }
}

template <typename T>
void carried(const T* __restrict forget_after, const T* __restrict dc_after, T* __restrict dc, int64_t m) {
  for (int64_t k = 0; k < m; ++k) dc[k] = forget_after[k] * dc_after[k];
}

// one forward step: a [B, 4M] the pre-activations less p [B, 4M], the step's product, where p is not null (in place:
// the gates), c_prev [B, M] -> c, tanh c, h [B, M]
template <typename T, bool kProduct>
void forward_step(T* a, const T* p, const T* c_prev, T* c, T* tanh_c, T* h, int64_t batch, int64_t m) {
  for (int64_t b = 0; b < batch; ++b) {
    T* o = a + b * 4 * m;
    forward_row<T, kProduct>(o, o + m, o + 2 * m, o + 3 * m, kProduct ? p + b * 4 * m : nullptr, c_prev + b * m,
                             c + b * m, tanh_c + b * m, h + b * m, m);
  }
}

template <typename T>
void forward_elements(T* a, const T* p, const T* c_prev, T* c, T* tanh_c, T* h, int64_t batch, int64_t m) {
  if (p != nullptr) {
    forward_step<T, true>(a, p, c_prev, c, tanh_c, h, batch, m);
  } else {
    forward_step<T, false>(a, p, c_prev, c, tanh_c, h, batch, m);
  }
}

// one backward step: from dh (the total less p [B, M], the step's product, where p is not null; the total on
// return) and the step after's forget gate and dc (null at the last step run, where dc_after holds dL/dc_n or is
// null), dc and the pre-activations' gradient da [B, 4M]
template <typename T, bool kProduct>
void backward_step(const T* gates, const T* tanh_c, const T* c_prev, T* dh, const T* p, const T* forget_after,
                   const T* dc_after, T* dc, T* da, int64_t batch, int64_t m) {
  for (int64_t b = 0; b < batch; ++b) {
    T* dcb = dc + b * m;
    if (forget_after != nullptr) {
      carried(forget_after + b * 4 * m, dc_after + b * m, dcb, m);
    } else if (dc_after != nullptr) {
      std::memcpy(dcb, dc_after + b * m, m * sizeof(T));
    } else {
      std::memset(dcb, 0, m * sizeof(T));
    }
    const T* o = gates + b * 4 * m;
    T* d = da + b * 4 * m;
    backward_row<T, kProduct>(o, o + m, o + 2 * m, o + 3 * m, tanh_c + b * m, c_prev + b * m, dh + b * m,
                              kProduct ? p + b * m : nullptr, dcb, d, d + m, d + 2 * m, d + 3 * m, m);
  }
}

template <typename T>
void backward_elements(const T* gates, const T* tanh_c, const T* c_prev, T* dh, const T* p, const T* forget_after,
                       const T* dc_after, T* dc, T* da, int64_t batch, int64_t m) {
  if (p != nullptr) {
    backward_step<T, true>(gates, tanh_c, c_prev, dh, p, forget_after, dc_after, dc, da, batch, m);
  } else {
    backward_step<T, false>(gates, tanh_c, c_prev, dh, p, forget_after, dc_after, dc, da, batch, m);
  }
}

// Summary statistics. Quantiles as torch.quantile's (and numpy's) "linear" method, NaN ranked last as both sort it,
// except that between two equal values the quantile is that value (see trace.py's _quantiles).
constexpr double kQuantiles[3] = {0.1, 0.5, 0.9};
constexpr int kLanes = 8;  // rows sorted at once, one to a lane of the vector instructions

// compare-exchanges, elementwise: low, high [n] hold the smaller and the larger values
template <typename T>
void exchange(T* __restrict low, T* __restrict high, int64_t n) {
  for (int64_t k = 0; k < n; ++k) {
    const T a = low[k], b = high[k];
    low[k] = std::min(a, b);
    high[k] = std::max(a, b);
  }
}

// The quantiles of rows of n values, kLanes rows at a time: row r is lane r of a [N, kLanes] block, N = n rounded
// up to a power of two, which a bitonic network sorts, every comparison in all lanes at once. On rows of tens of
// values this is several times faster than sorting one row after another (std::sort, or numpy's vectorised sort).
template <typename T>
class RowQuantiles {
 public:
  explicit RowQuantiles(int64_t n) : n_(n), padded_(1) {
    while (padded_ < n) padded_ <<= 1;
    block_.resize(padded_ * kLanes);
  }

  // row [n] (copied: it may change after), its quantiles written to out[0..2] by the time flush() returns
  void add(const T* row, T* out) {
    int64_t count = 0;
    for (int64_t k = 0; k < n_; ++k) {
      const T v = row[k];
      count += v == v;
      block_[k * kLanes + rows_] = v == v ? v : kLast;  // NaN: last as +inf is, and read as NaN below
    }
    for (int64_t k = n_; k < padded_; ++k) block_[k * kLanes + rows_] = kLast;
    numbers_[rows_] = count;
    out_[rows_++] = out;
    if (rows_ == kLanes) flush();
  }

  void flush() {
    if (rows_ == 0) return;
    for (int64_t size = 2; size <= padded_; size <<= 1) {
      for (int64_t half = size >> 1; half > 0; half >>= 1) {
        // rows i and i + half of each group of 2 half rows: two runs of half kLanes values
        for (int64_t first = 0; first < padded_; first += 2 * half) {
          T* a = &block_[first * kLanes];
          T* b = a + half * kLanes;
          (first & size) == 0 ? exchange(a, b, half * kLanes) : exchange(b, a, half * kLanes);
        }
      }
    }
    for (int r = 0; r < rows_; ++r) {
      for (int q = 0; q < 3; ++q) {
        const double position = kQuantiles[q] * static_cast<double>(n_ - 1);
        const int64_t below = static_cast<int64_t>(std::floor(position));
        const int64_t above = static_cast<int64_t>(std::ceil(position));
        // a rank past the row's numbers holds a NaN's stand-in: NaN (where below is, above is too)
        const T low = block_[below * kLanes + r];
        const T high = above < numbers_[r] ? block_[above * kLanes + r] : kNaN;
        // between two equal values, that value: +inf there gives +inf, not inf - inf (trace.py's _quantiles)
        out_[r][q] = low == high ? low : low + (high - low) * static_cast<T>(position - static_cast<double>(below));
      }
    }
    rows_ = 0;
  }

 private:
  static constexpr T kLast = std::numeric_limits<T>::infinity();
  static constexpr T kNaN = std::numeric_limits<T>::quiet_NaN();
  int64_t n_, padded_;
  std::vector<T> block_;
  int rows_ = 0;
  int64_t numbers_[kLanes] = {};
  T* out_[kLanes] = {};
};

// sums over [n] in kLanes partial sums, which the compiler vectorises (one running sum it may not reorder)
template <typename T>
T sum_of(const T* __restrict v, int64_t n, bool squares) {
  T partial[kLanes] = {};
  int64_t k = 0;
  for (; k + kLanes <= n; k += kLanes) {
    for (int r = 0; r < kLanes; ++r) partial[r] += squares ? v[k + r] * v[k + r] : v[k + r];
  }
  for (; k < n; ++k) partial[0] += squares ? v[k] * v[k] : v[k];
  T total = 0;
  for (int r = 0; r < kLanes; ++r) total += partial[r];
  return total;
}

// The statistics of rows of norms or of gates, a step at a time, for summary recording (gradscope/trace.py's
// norm_stats and gates_stats): their quantiles are written when flush() is called, or when eight rows are pending.
template <typename T>
class NormStats {
 public:
  explicit NormStats(int64_t batch) : norms_(batch), quantiles_(batch) {}

  // one step: B rows of width values, row_stride apart (width 0: the values are the norms themselves) -> s[0..4]
  void add(const T* rows, int64_t row_stride, int64_t width, T* s) {
    const int64_t batch = static_cast<int64_t>(norms_.size());
    for (int64_t b = 0; b < batch; ++b) {
      const T* row = rows + b * row_stride;
      norms_[b] = width == 0 ? row[0] : std::sqrt(sum_of(row, width, true));
    }
    s[0] = sum_of(norms_.data(), batch, false) / static_cast<T>(batch);
    s[4] = std::numeric_limits<T>::quiet_NaN();
    quantiles_.add(norms_.data(), s + 1);
  }

  void flush() { quantiles_.flush(); }

 private:
  std::vector<T> norms_;
  RowQuantiles<T> quantiles_;
};

// unit_sums += row and outer += (|row - middle| > reach, as 0 or 1), over [M]
template <typename T>
void add_gate_row(const T* __restrict row, T* __restrict unit_sums, T* __restrict outer, T middle, T reach,
                  int64_t m) {
  for (int64_t k = 0; k < m; ++k) {
    unit_sums[k] += row[k];
    const T away = row[k] - middle;
    outer[k] += (away < 0 ? -away : away) > reach ? T(1) : T(0);
  }
}

template <typename T>
class GateStats {
 public:
  // G gates of M units, gate g saturated farther than reach[g] from middle[g] (an infinite reach: unbounded,
  // saturation NaN)
  GateStats(int64_t m, std::vector<double> middle, std::vector<double> reach)
      : m_(m), middle_(std::move(middle)), reach_(std::move(reach)), unit_means_(middle_.size() * m),
        outer_(middle_.size() * m), quantiles_(m) {}

  // one step of B rows: gate g's row b at base + g * gate_stride + b * row_stride -> s + g * s_stride, [5] each:
  // the mean over batch and units, the quantiles across units of each unit's batch mean, the fraction saturated
  void add(const T* base, int64_t gate_stride, int64_t row_stride, int64_t batch, T* s, int64_t s_stride) {
    const int64_t gates = static_cast<int64_t>(middle_.size());
    std::fill(unit_means_.begin(), unit_means_.end(), T(0));
    std::fill(outer_.begin(), outer_.end(), T(0));
    for (int64_t b = 0; b < batch; ++b) {  // a step's gates together: one run through a kernel's [B, G, M] rows
      for (int64_t g = 0; g < gates; ++g) {
        add_gate_row(base + g * gate_stride + b * row_stride, &unit_means_[g * m_], &outer_[g * m_],
                     static_cast<T>(middle_[g]), static_cast<T>(reach_[g]), m_);
      }
    }
    for (int64_t g = 0; g < gates; ++g) {
      T* means = &unit_means_[g * m_];
      for (int64_t k = 0; k < m_; ++k) means[k] /= static_cast<T>(batch);
      T* out = s + g * s_stride;
      out[0] = sum_of(means, m_, false) / static_cast<T>(m_);
      out[4] = std::isfinite(reach_[g]) ? sum_of(&outer_[g * m_], m_, false) / static_cast<T>(batch * m_)
                                        : std::numeric_limits<T>::quiet_NaN();
      quantiles_.add(means, out + 1);
    }
  }

  void flush() { quantiles_.flush(); }

 private:
  int64_t m_;
  std::vector<double> middle_, reach_;
  std::vector<T> unit_means_, outer_;
  RowQuantiles<T> quantiles_;
};

// A product summed over segments: out [rows, N] += sum_s x_s [rows, K] w_s [K, N], x_s's element (r, q) at
// x[s][r * xr + q * xq], w_s's row q at w[s] + q * n (row-major, as out). One segment is one product; the backward's
// weight gradients take a segment a step, so that their sums are read and written once per block of steps.
template <typename T>
struct Segments {
  const T* const* x;
  const T* const* w;
  int64_t count, xr, xq, k, n;
};

#if defined(GRADSCOPE_TILES)
#if defined(__AVX512F__)
// The tiles' vectors: AVX-512's 16 floats, 32 registers (a tile's 4 x 4 accumulators take 16 of them)
struct Lanes {
  using Vec = __m512;
  using Mask = __mmask16;
  static constexpr int kWidth = 16, kV = 4;
  static Mask first(int64_t count) { return count >= 16 ? 0xFFFF : static_cast<Mask>((1u << count) - 1); }
  static Vec load(const float* p) { return _mm512_loadu_ps(p); }
  static Vec load(const float* p, Mask mask) { return _mm512_maskz_loadu_ps(mask, p); }
  static void store(float* p, Vec v) { _mm512_storeu_ps(p, v); }
  static void store(float* p, Vec v, Mask mask) { _mm512_mask_storeu_ps(p, mask, v); }
  static Vec broadcast(float x) { return _mm512_set1_ps(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm512_fmadd_ps(a, b, c); }
};
#else
// AVX2's 8 floats, 16 registers: 4 x 3 accumulators, with w's 3 vectors and x's broadcast, take all of them (4 x 3
// measured 1.1-1.2x faster than 4 x 2)
struct Lanes {
  using Vec = __m256;
  using Mask = __m256i;
  static constexpr int kWidth = 8, kV = 3;
  static Mask first(int64_t count) {
    const int n = static_cast<int>(std::min<int64_t>(count, kWidth));
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static Vec load(const float* p) { return _mm256_loadu_ps(p); }
  static Vec load(const float* p, Mask mask) { return _mm256_maskload_ps(p, mask); }
  static void store(float* p, Vec v) { _mm256_storeu_ps(p, v); }
  static void store(float* p, Vec v, Mask mask) { _mm256_maskstore_ps(p, mask, v); }
  static Vec broadcast(float x) { return _mm256_set1_ps(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return _mm256_fmadd_ps(a, b, c); }
};
#endif

// out [R, V vectors] += the segments' product for R rows of x from row offset xo and V vectors of w's columns from
// offset wo, over depth terms of each segment from q0 (Masked: the last vector's columns only those in mask): the
// R x V accumulators stay in registers over every segment, each of w's rows loaded once for the R rows of x
template <int R, int V, bool Masked>
inline void tile(const Segments<float>& in, int64_t xo, int64_t wo, int64_t q0, int64_t depth, float* __restrict out,
                 Lanes::Mask mask) {
  using Vec = Lanes::Vec;
  constexpr int W = Lanes::kWidth;
  const int64_t n = in.n, xr = in.xr, xq = in.xq;
  const auto load = [mask](const float* p, int v) {
    return Masked && v == V - 1 ? Lanes::load(p, mask) : Lanes::load(p);
  };
  Vec acc[R][V];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) acc[r][v] = load(out + r * n + W * v, v);
  for (int64_t s = 0; s < in.count; ++s) {
    const float* __restrict x = in.x[s] + xo + q0 * xq;
    const float* __restrict w = in.w[s] + wo + q0 * n;
    for (int64_t q = 0; q < depth; ++q) {
      Vec wq[V];
#pragma GCC unroll 4
      for (int v = 0; v < V; ++v) {
        wq[v] = load(w + q * n + W * v, v);
        // held in a register: otherwise GCC loads it again into each of the R multiply-adds, which wait on loads
        __asm__("" : "+v"(wq[v]));
      }
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const Vec xr_q = Lanes::broadcast(x[r * xr + q * xq]);
#pragma GCC unroll 4
        for (int v = 0; v < V; ++v) acc[r][v] = Lanes::fma(xr_q, wq[v], acc[r][v]);
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < V; ++v) {
      if (Masked && v == V - 1) {
        Lanes::store(out + r * n + W * v, acc[r][v], mask);
      } else {
        Lanes::store(out + r * n + W * v, acc[r][v]);
      }
    }
}

// w's block taken at once: kDepth rows of kColumns columns, as many whole tiles as fit in 64 (64 with AVX-512, 48
// with AVX2: 48 measured 1.3-1.5x faster than 64), at most 32 KiB, which stay in L1 for all of x's rows
constexpr int64_t kDepth = 128;
constexpr int64_t kColumns = Lanes::kWidth * Lanes::kV * (64 / (Lanes::kWidth * Lanes::kV));

// out [rows, N] += the segments' product. A block of w (kDepth rows of each segment, kColumns columns) is taken for
// every row of x before the next: in tiles of V vectors of columns, then of one vector (the last, masked, may be
// partial).
void add_product(const Segments<float>& in, int64_t rows, float* out) {
  constexpr int64_t W = Lanes::kWidth, V = Lanes::kV;
  const int64_t n = in.n, xr = in.xr;
  for (int64_t col = 0; col < n; col += kColumns) {
    const int64_t end = std::min<int64_t>(n, col + kColumns);
    for (int64_t q = 0; q < in.k; q += kDepth) {
      const int64_t depth = std::min(kDepth, in.k - q);
      int64_t c = col;
      for (; c + W * V <= end; c += W * V) {
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4) tile<4, V, false>(in, r * xr, c, q, depth, out + r * n + c, Lanes::Mask{});
        for (; r < rows; ++r) tile<1, V, false>(in, r * xr, c, q, depth, out + r * n + c, Lanes::Mask{});
      }
      for (; c < end; c += W) {
        const Lanes::Mask mask = Lanes::first(end - c);
        int64_t r = 0;
        for (; r + 4 <= rows; r += 4) tile<4, 1, true>(in, r * xr, c, q, depth, out + r * n + c, mask);
        for (; r < rows; ++r) tile<1, 1, true>(in, r * xr, c, q, depth, out + r * n + c, mask);
      }
    }
  }
}
#endif

// whether the tiles above take T's products in this build
template <typename T>
constexpr bool has_tiles() {
#if defined(GRADSCOPE_TILES)
  return std::is_same_v<T, float>;
#else
  return false;
#endif
}

// out [rows, N] += the segments' product through the tiles, where has_tiles<T>()
template <typename T>
void tiles_product(const Segments<T>& in, int64_t rows, T* out) {
#if defined(GRADSCOPE_TILES)
  if constexpr (std::is_same_v<T, float>) {
    add_product(in, rows, out);
    return;
  }
#endif
  TORCH_CHECK(false, "gradscope's LSTM kernel has no tiles (AVX-512, or AVX2 with FMA) for this dtype in this build");
}

// out [rows, N] += x [rows, K] w [K, N] (one segment) through the tiles
template <typename T>
void tiles_product(const T* x, int64_t xr, int64_t xq, int64_t rows, int64_t k, const T* w, int64_t n, T* out) {
  tiles_product(Segments<T>{&x, &w, 1, xr, xq, k, n}, rows, out);
}

// A step's matrix product x w^T for rows of x [B, K] (row-major), w [N, K], in one of three ways:
// - oneDNN (torch's mkldnn::_linear_pointwise, w reordered once into oneDNN's layout), float32: x w^T is handed
//   back, its own tensor. On this project's AVX-512 CPU, 2-2.6x torch's BLAS at
//   M = 256-512, but about 10 us a call: at M = 64 slower than BLAS.
// - The tiles above (AVX-512's or AVX2's, where the build has them), float32: added in place to out.
//   torch's BLAS (MKL) ran this CPU's products at about 190 GFLOP/s against oneDNN's 500 (B 64, M 512).
// - torch's CPU kernel (BLAS, at::cpu::addmm_, not through the dispatcher): added in place to out.
// Rows may be taken on separate threads. Which way: kernels.py's _ONEDNN_WIDTH.
template <typename T>
class Recurrent {
 public:
  Recurrent(const at::Tensor& w, int64_t batch, bool onednn)
      : onednn_(onednn), tiles_(!onednn && has_tiles<T>()),
        n_(w.size(0)), k_(w.size(1)) {
    TORCH_CHECK(!onednn || w.scalar_type() == at::kFloat, "gradscope's LSTM kernel takes its products through oneDNN ",
                "in float32 only, got ", w.scalar_type());
    if (onednn_) {
      static const auto reorder = c10::Dispatcher::singleton()
                                      .findSchemaOrThrow("mkldnn::_reorder_linear_weight", "")
                                      .typed<at::Tensor(const at::Tensor&, std::optional<int64_t>)>();
      w_ = reorder.call(w.contiguous(), batch);
    } else {
      w_ = tiles_ ? w.t().contiguous() : w.t();  // [K, N]
    }
  }

  // x [rows, K] w^T: through oneDNN handed back (kept in held, one per thread), else added to out [rows, N] (null back)
  const T* add(const T* x, T* out, int64_t rows, at::Tensor& held) {
    if (tiles_) {
      tiles_product(x, k_, 1, rows, k_, w_.const_data_ptr<T>(), n_, out);
      return nullptr;
    }
    const auto options = w_.options().layout(at::kStrided);
    const at::Tensor x_rows = at::from_blob(const_cast<T*>(x), {rows, k_}, options);
    if (onednn_) {
      static const auto linear =
          c10::Dispatcher::singleton()
              .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
              .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                c10::string_view, c10::List<std::optional<at::Scalar>>,
                                std::optional<c10::string_view>)>();
      held = linear.call(x_rows, w_, std::nullopt, "none", c10::List<std::optional<at::Scalar>>(), std::nullopt);
      return held.const_data_ptr<T>();
    }
    at::Tensor out_rows = at::from_blob(out, {rows, n_}, options);
    at::cpu::addmm_(out_rows, x_rows, w_);
    return nullptr;
  }

 private:
  bool onednn_, tiles_;
  int64_t n_, k_;
  at::Tensor w_;
};

constexpr int64_t kRows = 4;         // the fewest of the batch's rows a thread takes
constexpr int64_t kBlockRows = 128;  // a thread's rows (of every step in a block) that the weights' sums take at once
constexpr int64_t kSteps = 16;       // the fewest steps a thread summarises (each step's statistics are its own)

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type() && t.is_contiguous(), "gradscope's LSTM ",
              "kernel takes contiguous CPU tensors of one dtype; ", name, " is not");
}

void check_stats(const at::Tensor& stats, const at::Tensor& like, int64_t rows, int64_t steps) {
  check(stats, like, "stats");
  TORCH_CHECK(stats.dim() == 3 && stats.size(0) == rows && stats.size(1) == steps && stats.size(2) == 5,
              "gradscope's LSTM kernel writes statistics into [", rows, ", ", steps, ", 5], got ", stats.sizes());
}

// gates [T, B, 4M] (or [T, B, 4, M]): W_ih x_t + b on entry, the gates on return; w_hh [4M, M]; h0, c0 [B, M];
// h, c, tanh_c [T, B, M] are written. Steps run from the last to the first where reverse; every tensor is in time
// order. With stats [6, T, 5], summary recording's statistics are written there once every step is computed: the
// gates' (o, i, f, g; saturated beyond reach[g] from middle[g], see GateStats), then h's and c's norms'. A step's
// product: see Recurrent (onednn: through oneDNN, float32 only); its elements are reached by pointer.
void lstm_forward(at::Tensor gates, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
                  at::Tensor h, at::Tensor c, at::Tensor tanh_c, bool reverse, std::optional<at::Tensor> stats,
                  at::ArrayRef<double> middle, at::ArrayRef<double> reach, bool onednn) {
  const int64_t steps = gates.size(0), batch = gates.size(1), m = h.size(2);
  for (const auto& [t, name] : {std::pair{&gates, "gates"}, {&h, "h"}, {&c, "c"}, {&tanh_c, "tanh_c"}})
    check(*t, gates, name);
  const at::Tensor h_first = h0.contiguous(), c_first = c0.contiguous();
  check(h_first, gates, "h0");
  check(c_first, gates, "c0");
  if (stats) {
    check_stats(*stats, gates, 6, steps);
    TORCH_CHECK(middle.size() == 4 && reach.size() == 4, "gradscope's LSTM kernel takes a middle and a reach for ",
                "each of its 4 gates, got ", middle.size(), " and ", reach.size());
  }
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gradscope_lstm_forward", [&] {
    scalar_t *gate_all = gates.data_ptr<scalar_t>(), *cs = c.data_ptr<scalar_t>();
    scalar_t *tanh_cs = tanh_c.data_ptr<scalar_t>(), *h_all = h.data_ptr<scalar_t>();
    Recurrent<scalar_t> recurrent(w_hh, batch, onednn);
    const int64_t state = batch * m;  // a step's values in the states (4 state in the gates)
    at::parallel_for(0, batch, kRows, [&](int64_t lo, int64_t hi) {
      at::Tensor held;  // this thread's product through oneDNN
      const scalar_t* h_prev = h_first.const_data_ptr<scalar_t>() + lo * m;
      const scalar_t* c_prev = c_first.const_data_ptr<scalar_t>() + lo * m;
      for (int64_t s = 0; s < steps; ++s) {
        const int64_t t = reverse ? steps - 1 - s : s, at = t * state + lo * m;  // step t's row lo
        scalar_t* a = gate_all + 4 * at;
        const scalar_t* p = recurrent.add(h_prev, a, hi - lo, held);
        forward_elements<scalar_t>(a, p, c_prev, cs + at, tanh_cs + at, h_all + at, hi - lo, m);
        h_prev = h_all + at;
        c_prev = cs + at;
      }
    });
    if (stats) {
      scalar_t* st = stats->data_ptr<scalar_t>();
      at::parallel_for(0, steps, kSteps, [&](int64_t lo, int64_t hi) {
        GateStats<scalar_t> gate_stats(m, middle.vec(), reach.vec());
        NormStats<scalar_t> norms(batch);
        for (int64_t t = lo; t < hi; ++t) {
          gate_stats.add(gate_all + 4 * t * state, m, 4 * m, batch, st + t * 5, steps * 5);
          norms.add(h_all + t * state, m, m, st + (4 * steps + t) * 5);
          norms.add(cs + t * state, m, m, st + (5 * steps + t) * 5);
        }
        gate_stats.flush();
        norms.flush();
      });
    }
  });
}

// dh [T, B, M]: the gradient arriving at each step's output (and h_n) on entry, the total dL/dh_t on return;
// dc [T, B, M] and da [T, B, 4M] or [T, B, 4, M] (the pre-activations' gradient, rows o, i, f, g) are written;
// with stats [2, T, 5], the statistics of the norms of the total dh and of dc, once every step is computed.
// Where the tiles take the dtype (float32 in a build with them, see tiles(); whichever way the step products go), and
// given x [T, B, D] (any strides), w_ih [4M, D], h [T, B, M] and h0 [B, M], the loop also writes grad_x [T, B, D],
// dL/dx_t = da_t w_ih, and the parameters' gradients given: grad_w_ih [D, 4M] (transposed: sum_t x_t^T da_t),
// grad_w_hh [4M, M] (sum_t da_t^T h_{t-1}) and grad_b [4M] (da_t summed over steps and rows), each thread adding up
// its rows' as their steps are computed, the weights' a block of steps at a time (the threads' sums then added in
// the order of their rows). Returns whether it did; otherwise they are left as they were. Then da may be [B, 4M]:
// each thread keeps the da_t of its block of steps, and da receives the first step's (the last computed).
bool lstm_backward(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& tanh_c, const at::Tensor& c0,
                   const at::Tensor& w_hh, const std::optional<at::Tensor>& grad_cn, at::Tensor dh, at::Tensor dc,
                   at::Tensor da, bool reverse, std::optional<at::Tensor> stats, bool onednn,
                   const std::optional<at::Tensor>& x, const std::optional<at::Tensor>& w_ih,
                   const std::optional<at::Tensor>& h, const std::optional<at::Tensor>& h0,
                   std::optional<at::Tensor> grad_x, std::optional<at::Tensor> grad_w_ih,
                   std::optional<at::Tensor> grad_w_hh, std::optional<at::Tensor> grad_b) {
  const int64_t steps = gates.size(0), batch = gates.size(1), m = dh.size(2);
  for (const auto& [t, name] : {std::pair{&gates, "gates"}, {&c, "c"}, {&tanh_c, "tanh_c"}, {&dh, "dh"},
                                {&dc, "dc"}, {&da, "da"}})
    check(*t, gates, name);
  const at::Tensor c_first = c0.contiguous();
  const std::optional<at::Tensor> dc_n = grad_cn ? std::optional{grad_cn->contiguous()} : std::nullopt;
  check(c_first, gates, "c0");
  if (dc_n) check(*dc_n, gates, "grad_cn");
  if (stats) check_stats(*stats, gates, 2, steps);
  TORCH_CHECK(!grad_x == !x && !grad_x == !w_ih && (grad_x || !(grad_w_ih || grad_w_hh || grad_b)),
              "gradscope's LSTM kernel takes x, w_ih and grad_x together, and the parameters' gradients with them");
  TORCH_CHECK(!grad_w_hh || (h && h0), "gradscope's LSTM kernel takes h and h0 with grad_w_hh");
  const bool first_only = da.dim() == 2;  // da [B, 4M]: the first step's only
  TORCH_CHECK(da.numel() == (first_only ? 1 : steps) * batch * 4 * m && (!first_only || grad_x),
              "gradscope's LSTM kernel writes da [", steps, ", ", batch, ", ", 4 * m, "], or [", batch, ", ", 4 * m,
              "] with grad_x and its tiles, got ", da.sizes());
  const int64_t input = x ? x->size(2) : 0;
  at::Tensor h_first;
  if (grad_x) {
    TORCH_CHECK(x->dim() == 3 && x->size(0) == steps && x->size(1) == batch && x->device().is_cpu() &&
                    x->scalar_type() == gates.scalar_type(),
                "gradscope's LSTM kernel takes x [", steps, ", ", batch, ", D] on the CPU in the gates' dtype, got ",
                x->sizes(), " ", x->scalar_type());
    check(*w_ih, gates, "w_ih");
    check(*grad_x, gates, "grad_x");
    TORCH_CHECK(w_ih->sizes() == at::IntArrayRef({4 * m, input}) && grad_x->sizes() == x->sizes(),
                "gradscope's LSTM kernel takes w_ih [", 4 * m, ", ", input, "] and grad_x shaped as x, got ",
                w_ih->sizes(), " and ", grad_x->sizes());
    for (const auto& [g, name, rows, columns] :
         {std::tuple{&grad_w_ih, "grad_w_ih", input, 4 * m}, {&grad_w_hh, "grad_w_hh", 4 * m, m},
          {&grad_b, "grad_b", 4 * m, int64_t{-1}}}) {
      if (!*g) continue;
      check(**g, gates, name);
      const std::vector<int64_t> shape = columns < 0 ? std::vector{rows} : std::vector{rows, columns};
      TORCH_CHECK((*g)->sizes() == at::IntArrayRef(shape), "gradscope's LSTM kernel writes ", name, " as ",
                  at::IntArrayRef(shape), ", got ", (*g)->sizes());
    }
  }
  if (grad_w_hh) {
    h_first = h0->contiguous();
    check(*h, gates, "h");
    check(h_first, gates, "h0");
  }
  bool whole = false;
  AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gradscope_lstm_backward", [&] {
    const scalar_t *gate_all = gates.const_data_ptr<scalar_t>(), *cs = c.const_data_ptr<scalar_t>();
    const scalar_t* tanh_cs = tanh_c.const_data_ptr<scalar_t>();
    scalar_t *dcs = dc.data_ptr<scalar_t>(), *das = da.data_ptr<scalar_t>(), *dh_all = dh.data_ptr<scalar_t>();
    Recurrent<scalar_t> recurrent(w_hh.t(), batch, onednn);
    whole = grad_x && has_tiles<scalar_t>();
    TORCH_CHECK(whole || !first_only, "gradscope's LSTM kernel has no tiles for ", gates.scalar_type(),
                " in this build: it writes every step's da");
    // each thread's sums, in one buffer: grad_w_ih's, grad_w_hh's, grad_b's
    const int64_t size_ih = whole && grad_w_ih ? input * 4 * m : 0, size_hh = whole && grad_w_hh ? 4 * m * m : 0;
    const int64_t size = size_ih + size_hh + (whole && grad_b ? 4 * m : 0);
    std::mutex done;
    std::vector<std::pair<int64_t, std::vector<scalar_t>>> partials;  // each thread's first row and its sums
    const int64_t state = batch * m;  // a step's values in the states (4 state in the gates)
    at::parallel_for(0, batch, kRows, [&](int64_t lo, int64_t hi) {
      const int64_t rows = hi - lo, first = lo * m;  // row lo of a step's states
      int64_t after = -1;                            // the step run after this one, if any
      at::Tensor held;                               // this thread's product through oneDNN
      std::vector<scalar_t> partial(size);
      scalar_t *sum_ih = partial.data(), *sum_hh = sum_ih + size_ih, *sum_b = sum_hh + size_hh;
      // the weights' sums take a block of steps at once (kBlockRows of the thread's rows in all): the rows of da_t,
      // x_t and h_{t-1} of the steps pending
      const int64_t block = std::max<int64_t>(1, kBlockRows / std::max<int64_t>(rows, 1));
      std::vector<const scalar_t*> da_rows, x_rows, h_rows;
      // with da [B, 4M], the da_t of the block's steps and the step before: block + 1 steps' rows, taken in turn
      std::vector<scalar_t> kept(first_only ? (block + 1) * rows * 4 * m : 0);
      const scalar_t* da_after = nullptr;
      const auto add_block = [&] {
        const int64_t count = static_cast<int64_t>(da_rows.size());
        if (size_ih > 0) {
          const Segments<scalar_t> x_da{x_rows.data(), da_rows.data(), count, x->stride(2), x->stride(1), rows, 4 * m};
          tiles_product(x_da, input, sum_ih);
        }
        if (size_hh > 0) tiles_product(Segments<scalar_t>{da_rows.data(), h_rows.data(), count, 1, 4 * m, rows, m},
                                       4 * m, sum_hh);
        da_rows.clear();
        x_rows.clear();
        h_rows.clear();
      };
      for (int64_t s = steps - 1; s >= 0; --s) {
        const int64_t t = reverse ? steps - 1 - s : s;
        const int64_t before = reverse ? t + 1 : t - 1;
        const bool at_start = before < 0 || before >= steps;
        scalar_t* dh_t = dh_all + t * state + first;
        const scalar_t* p = after >= 0 ? recurrent.add(da_after, dh_t, rows, held) : nullptr;
        const scalar_t* c_prev = (at_start ? c_first.const_data_ptr<scalar_t>() : cs + before * state) + first;
        const scalar_t* forget_after = after >= 0 ? gate_all + 4 * (after * state + first) + 2 * m : nullptr;
        const scalar_t* dc_after = after >= 0 ? dcs + after * state + first
                                   : dc_n     ? dc_n->const_data_ptr<scalar_t>() + first
                                              : nullptr;
        scalar_t* da_t = first_only ? kept.data() + ((steps - 1 - s) % (block + 1)) * rows * 4 * m
                                    : das + 4 * (t * state + first);
        backward_elements<scalar_t>(gate_all + 4 * (t * state + first), tanh_cs + t * state + first, c_prev, dh_t, p,
                                    forget_after, dc_after, dcs + t * state + first, da_t, rows, m);
        after = t;
        da_after = da_t;
        if (!whole) continue;
        scalar_t* dx_t = grad_x->data_ptr<scalar_t>() + (t * batch + lo) * input;
        std::fill(dx_t, dx_t + rows * input, scalar_t(0));
        tiles_product(da_t, 4 * m, 1, rows, 4 * m, w_ih->const_data_ptr<scalar_t>(), input, dx_t);
        da_rows.push_back(da_t);
        x_rows.push_back(x->const_data_ptr<scalar_t>() + t * x->stride(0) + lo * x->stride(1));
        h_rows.push_back(size_hh == 0 ? nullptr
                         : at_start   ? h_first.const_data_ptr<scalar_t>() + first
                                      : h->const_data_ptr<scalar_t>() + before * state + first);
        if (static_cast<int64_t>(da_rows.size()) == block) add_block();
        if (grad_b) {
          for (int64_t b = 0; b < rows; ++b) {
            const scalar_t* row = da_t + b * 4 * m;
            for (int64_t k = 0; k < 4 * m; ++k) sum_b[k] += row[k];
          }
        }
      }
      if (!da_rows.empty()) add_block();
      if (first_only && da_after != nullptr) std::copy(da_after, da_after + rows * 4 * m, das + lo * 4 * m);
      if (size > 0) {
        const std::lock_guard<std::mutex> lock(done);
        partials.emplace_back(lo, std::move(partial));
      }
    });
    if (size > 0) {
      std::sort(partials.begin(), partials.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
      std::vector<scalar_t> total(size, scalar_t(0));
      for (const auto& part : partials) {
        for (int64_t e = 0; e < size; ++e) total[e] += part.second[e];
      }
      const scalar_t* from = total.data();
      for (const std::optional<at::Tensor>* g : {&grad_w_ih, &grad_w_hh, &grad_b}) {
        if (!*g) continue;
        std::copy(from, from + (*g)->numel(), (*g)->data_ptr<scalar_t>());
        from += (*g)->numel();
      }
    }
    if (stats) {
      scalar_t* st = stats->data_ptr<scalar_t>();
      at::parallel_for(0, steps, kSteps, [&](int64_t lo, int64_t hi) {
        NormStats<scalar_t> norms(batch);
        for (int64_t t = lo; t < hi; ++t) {
          norms.add(dh_all + t * state, m, m, st + t * 5);
          norms.add(dcs + t * state, m, m, st + (steps + t) * 5);
        }
        norms.flush();
      });
    }
  });
  return whole;
}

// values [T, B, F] (the L2 norm over F of each row) or [T, B] (the norms themselves) -> [T, 5]: per step the mean
// and quantiles over the batch, and NaN (saturation is not defined for norms)
at::Tensor norm_stats(const at::Tensor& values) {
  TORCH_CHECK(values.dim() == 2 || values.dim() == 3, "gradscope's norm_stats takes [T, B, F] or [T, B] values, got ",
              values.dim(), " dimensions");
  const bool given = values.dim() == 2;
  const at::Tensor v = given || values.stride(2) == 1 ? values : values.contiguous();
  const int64_t steps = v.size(0), batch = v.size(1), width = given ? 0 : v.size(2);
  at::Tensor out = at::empty({steps, 5}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "gradscope_norm_stats", [&] {
    const scalar_t* base = v.const_data_ptr<scalar_t>();
    scalar_t* stats = out.data_ptr<scalar_t>();
    at::parallel_for(0, steps, kSteps, [&](int64_t lo, int64_t hi) {
      NormStats<scalar_t> norms(batch);
      for (int64_t t = lo; t < hi; ++t) norms.add(base + t * v.stride(0), v.stride(1), width, stats + t * 5);
      norms.flush();
    });
  });
  return out;
}

// values [G, T, B, M] (M contiguous, any layout otherwise) of G gates -> [G, T, 5]: see GateStats
at::Tensor gates_stats(const at::Tensor& values, at::ArrayRef<double> middle, at::ArrayRef<double> reach) {
  TORCH_CHECK(values.dim() == 4, "gradscope's gates_stats takes [G, T, B, M] values, got ", values.dim(),
              " dimensions");
  TORCH_CHECK(static_cast<int64_t>(middle.size()) == values.size(0) &&
                  static_cast<int64_t>(reach.size()) == values.size(0),
              "gradscope's gates_stats takes a middle and a reach for each of the ", values.size(0), " gates, got ",
              middle.size(), " and ", reach.size());
  const at::Tensor v = values.stride(3) == 1 ? values : values.contiguous();
  const int64_t gates = v.size(0), steps = v.size(1), batch = v.size(2), m = v.size(3);
  at::Tensor out = at::empty({gates, steps, 5}, v.options());
  AT_DISPATCH_FLOATING_TYPES(v.scalar_type(), "gradscope_gates_stats", [&] {
    const scalar_t* base = v.const_data_ptr<scalar_t>();
    scalar_t* stats = out.data_ptr<scalar_t>();
    at::parallel_for(0, steps, kSteps, [&](int64_t lo, int64_t hi) {
      GateStats<scalar_t> gate_stats(m, middle.vec(), reach.vec());
      for (int64_t t = lo; t < hi; ++t) {
        gate_stats.add(base + t * v.stride(1), v.stride(0), v.stride(2), batch, stats + t * 5, steps * 5);
      }
      gate_stats.flush();
    });
  });
  return out;
}

// whether this build's tiles take the dtype's products (and the LSTM's backward its gradients)
bool tiles(at::ScalarType dtype) { return dtype == at::kFloat && has_tiles<float>(); }

}  // namespace

TORCH_LIBRARY(gradscope, lib) {
  lib.def(
      "lstm_forward(Tensor(a!) gates, Tensor w_hh, Tensor h0, Tensor c0, Tensor(b!) h, Tensor(c!) c, "
      "Tensor(d!) tanh_c, bool reverse, Tensor(e!)? stats=None, float[] middle=[], float[] reach=[], "
      "bool onednn=False) -> ()");
  lib.def(
      "lstm_backward(Tensor gates, Tensor c, Tensor tanh_c, Tensor c0, Tensor w_hh, Tensor? grad_cn, "
      "Tensor(a!) dh, Tensor(b!) dc, Tensor(c!) da, bool reverse, Tensor(d!)? stats=None, bool onednn=False, "
      "Tensor? x=None, Tensor? w_ih=None, Tensor? h=None, Tensor? h0=None, Tensor(e!)? grad_x=None, "
      "Tensor(f!)? grad_w_ih=None, Tensor(g!)? grad_w_hh=None, Tensor(h!)? grad_b=None) -> bool");
  lib.def("tiles(ScalarType dtype) -> bool", tiles);
  lib.def("norm_stats(Tensor values) -> Tensor");
  lib.def("gates_stats(Tensor values, float[] middle, float[] reach) -> Tensor");
}

TORCH_LIBRARY_IMPL(gradscope, CPU, lib) {
  lib.impl("lstm_forward", lstm_forward);
  lib.impl("lstm_backward", lstm_backward);
  lib.impl("norm_stats", norm_stats);
  lib.impl("gates_stats", gates_stats);
}
