// gradscope's LSTM step loops (tanh/tanh) for the CPU, built on first use by gradscope/native.py.
//
// The equations are those of gradscope/kernels.py's LSTMSequence, whose torch loop they replace for float32 and
// float64: each step is one matrix product (at::addmm_) and one pass over the step's elements, where torch's
// operations take seven (forward) or five (backward) passes, each with its own call. Gates are in the rows
// (o, i, f, g). float32's sigmoid and tanh are Cephes' single-precision approximations (relative error below
// 2e-7), written without branches so that the compiler vectorises them; NaN propagates as in torch.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>

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

// one row of the batch forward: o, i, f, g [M] pre-activations (in place: the gates), c_prev [M] -> c, tanh c, h
template <typename T>
void forward_row(T* __restrict o, T* __restrict i, T* __restrict f, T* __restrict g, const T* __restrict c_prev,
                 T* __restrict c, T* __restrict tanh_c, T* __restrict h, int64_t m) {
  for (int64_t k = 0; k < m; ++k) {
    const T ov = sigmoid(o[k]), iv = sigmoid(i[k]), fv = sigmoid(f[k]), gv = tanh_of(g[k]);
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

// one row backward: the gates, tanh c and c_prev [M], dh [M] (total), dc [M] holding f_{t+1} dc_{t+1} (or dL/dc_n,
// or 0) on entry and dc_t on return; da_o, da_i, da_f, da_g [M] are written
template <typename T>
void backward_row(const T* __restrict o, const T* __restrict i, const T* __restrict f, const T* __restrict g,
                  const T* __restrict tanh_c, const T* __restrict c_prev, const T* __restrict dh, T* __restrict dc,
                  T* __restrict da_o, T* __restrict da_i, T* __restrict da_f, T* __restrict da_g, int64_t m) {
  for (int64_t k = 0; k < m; ++k) {
    const T ov = o[k], iv = i[k], fv = f[k], gv = g[k], t = tanh_c[k], d = dh[k];
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

// rows of the batch per task: at least 2^13 elements of a gate, below which threads cost more than they save
int64_t grain(int64_t width) { return std::max<int64_t>(1, (int64_t{1} << 13) / width); }

// one forward step: a [B, 4M] pre-activations (in place: the gates), c_prev [B, M] -> c, tanh c, h [B, M]
template <typename T>
void forward_elements(T* a, const T* c_prev, T* c, T* tanh_c, T* h, int64_t batch, int64_t m) {
  at::parallel_for(0, batch, grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      T* o = a + b * 4 * m;
      forward_row(o, o + m, o + 2 * m, o + 3 * m, c_prev + b * m, c + b * m, tanh_c + b * m, h + b * m, m);
    }
  });
}

// one backward step: from dh (total) and the step after's forget gate and dc (null at the last step run, where
// dc_after holds dL/dc_n or is null), dc and the pre-activations' gradient da [B, 4M]
template <typename T>
void backward_elements(const T* gates, const T* tanh_c, const T* c_prev, const T* dh, const T* forget_after,
                       const T* dc_after, T* dc, T* da, int64_t batch, int64_t m) {
  at::parallel_for(0, batch, grain(m), [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
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
      backward_row(o, o + m, o + 2 * m, o + 3 * m, tanh_c + b * m, c_prev + b * m, dh + b * m, dcb, d, d + m,
                   d + 2 * m, d + 3 * m, m);
    }
  });
}

void check(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == like.scalar_type() && t.is_contiguous(), "gradscope's LSTM ",
              "kernel takes contiguous CPU tensors of one dtype; ", name, " is not");
}

// gates [T, B, 4M] (or [T, B, 4, M]): W_ih x_t + b on entry, the gates on return; w_hh [4M, M]; h0, c0 [B, M];
// h, c, tanh_c [T, B, M] are written. Steps run from the last to the first where reverse; every tensor is in time
// order.
void lstm_forward(at::Tensor gates, const at::Tensor& w_hh, const at::Tensor& h0, const at::Tensor& c0,
                  at::Tensor h, at::Tensor c, at::Tensor tanh_c, bool reverse) {
  const int64_t steps = gates.size(0), batch = gates.size(1), m = h.size(2);
  for (const auto& [t, name] : {std::pair{&gates, "gates"}, {&h, "h"}, {&c, "c"}, {&tanh_c, "tanh_c"}})
    check(*t, gates, name);
  const at::Tensor w_t = w_hh.t(), h_first = h0.contiguous(), c_first = c0.contiguous();
  check(c_first, gates, "c0");
  const at::Tensor rows = gates.view({steps, batch, 4 * m});
  at::Tensor h_prev = h_first, c_prev = c_first;
  for (int64_t s = 0; s < steps; ++s) {
    const int64_t t = reverse ? steps - 1 - s : s;
    at::Tensor row = rows[t];
    row.addmm_(h_prev, w_t);
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gradscope_lstm_forward", [&] {
      forward_elements<scalar_t>(row.data_ptr<scalar_t>(), c_prev.const_data_ptr<scalar_t>(),
                                 c[t].data_ptr<scalar_t>(), tanh_c[t].data_ptr<scalar_t>(),
                                 h[t].data_ptr<scalar_t>(), batch, m);
    });
    h_prev = h[t];
    c_prev = c[t];
  }
}

// dh [T, B, M]: the gradient arriving at each step's output (and h_n) on entry, the total dL/dh_t on return;
// dc [T, B, M] and da [T, B, 4M] or [T, B, 4, M] (the pre-activations' gradient, rows o, i, f, g) are written.
void lstm_backward(const at::Tensor& gates, const at::Tensor& c, const at::Tensor& tanh_c, const at::Tensor& c0,
                   const at::Tensor& w_hh, const std::optional<at::Tensor>& grad_cn, at::Tensor dh, at::Tensor dc,
                   at::Tensor da, bool reverse) {
  const int64_t steps = gates.size(0), batch = gates.size(1), m = dh.size(2);
  for (const auto& [t, name] : {std::pair{&gates, "gates"}, {&c, "c"}, {&tanh_c, "tanh_c"}, {&dh, "dh"},
                                {&dc, "dc"}, {&da, "da"}})
    check(*t, gates, name);
  const at::Tensor c_first = c0.contiguous();
  const std::optional<at::Tensor> dc_n = grad_cn ? std::optional{grad_cn->contiguous()} : std::nullopt;
  check(c_first, gates, "c0");
  if (dc_n) check(*dc_n, gates, "grad_cn");
  const at::Tensor da_rows = da.view({steps, batch, 4 * m});
  int64_t after = -1;  // the step run after this one, if any
  for (int64_t s = steps - 1; s >= 0; --s) {
    const int64_t t = reverse ? steps - 1 - s : s;
    const int64_t before = reverse ? t + 1 : t - 1;
    at::Tensor dh_t = dh[t];
    if (after >= 0) dh_t.addmm_(da_rows[after], w_hh);
    AT_DISPATCH_FLOATING_TYPES(gates.scalar_type(), "gradscope_lstm_backward", [&] {
      const scalar_t* c_prev = (before < 0 || before >= steps) ? c_first.const_data_ptr<scalar_t>()
                                                                 : c[before].const_data_ptr<scalar_t>();
      const scalar_t* forget_after = after >= 0 ? gates[after].const_data_ptr<scalar_t>() + 2 * m : nullptr;
      const scalar_t* dc_after = after >= 0 ? dc[after].const_data_ptr<scalar_t>()
                                 : dc_n      ? dc_n->const_data_ptr<scalar_t>()
                                             : nullptr;
      backward_elements<scalar_t>(gates[t].const_data_ptr<scalar_t>(), tanh_c[t].const_data_ptr<scalar_t>(), c_prev,
                                  dh_t.const_data_ptr<scalar_t>(), forget_after, dc_after, dc[t].data_ptr<scalar_t>(),
                                  da[t].data_ptr<scalar_t>(), batch, m);
    });
    after = t;
  }
}

}  // namespace

TORCH_LIBRARY(gradscope, lib) {
  lib.def(
      "lstm_forward(Tensor(a!) gates, Tensor w_hh, Tensor h0, Tensor c0, Tensor(b!) h, Tensor(c!) c, "
      "Tensor(d!) tanh_c, bool reverse) -> ()");
  lib.def(
      "lstm_backward(Tensor gates, Tensor c, Tensor tanh_c, Tensor c0, Tensor w_hh, Tensor? grad_cn, "
      "Tensor(a!) dh, Tensor(b!) dc, Tensor(c!) da, bool reverse) -> ()");
}

TORCH_LIBRARY_IMPL(gradscope, CPU, lib) {
  lib.impl("lstm_forward", lstm_forward);
  lib.impl("lstm_backward", lstm_backward);
}
