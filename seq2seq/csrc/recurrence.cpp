// The step loops of seq2seq/recurrence.py (MaskedLSTMRecurrence, the `variational` and `naive` placements) in
// C++, the same bit for bit, without the Python interpreter between them (built on first use by
// seq2seq/native.py). At PTB small's sizes (20 rows a step) an operation's arithmetic takes a few microseconds
// and the Python around it about as much, and so does each operation's own dispatch: so for float32 tensors a
// step's element-wise work (forward: the activations and the cell, seven operations; backward: the masked sums,
// the gates' gradient and dc, six) is one pass over its rows, with ATen's arithmetic: the sigmoid as ATen's CPU
// kernel computes it, tanh through MKL's vector function as torch.tanh calls it, addcmul as a fused
// multiply-add as ATen's addcmul kernel is compiled, every other product and sum rounded on its own
// (aten_arithmetic.h). Other dtypes (float64 in the
// gradient checks) run the same ATen operations as the Python loops. The comments name the Python lines each
// block transliterates; the equations are in recurrence.py.

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "aten_arithmetic.h"

namespace {

at::Tensor step_of(const at::Tensor& x, int64_t t) {  // (T or 1, ...) -> step t's view
  return x.size(0) == 1 ? x.select(0, 0) : x.select(0, t);
}

std::optional<at::Tensor> sum(const std::optional<at::Tensor>& a, const std::optional<at::Tensor>& b) {
  if (!a) return b;
  if (!b) return a;
  return *a + *b;
}

// _through_mask: grad + dh_in * mask, any of them absent
std::optional<at::Tensor> through_mask(const std::optional<at::Tensor>& grad, const std::optional<at::Tensor>& dh_in,
                                       const std::optional<at::Tensor>& mask) {
  if (!dh_in) return grad;
  if (!mask) return sum(grad, dh_in);
  return grad ? at::addcmul(*grad, *dh_in, *mask) : *dh_in * *mask;
}

// bmm(a, b) for a (D, B, k), b (D, k, n): in MKL (at::bmm), or with `onednn` a direction at a time in oneDNN's
// linear layer, b[d] read through its transpose as the weight (no copy), as seq2seq.gemm multiplies fp32 on an
// AMD CPU with AVX-512. Python: recurrence._products
at::Tensor products(const at::Tensor& a, const at::Tensor& b, bool onednn) {
  if (!onednn) return at::bmm(a, b);
  static const auto linear = c10::Dispatcher::singleton()
      .findSchemaOrThrow("mkldnn::_linear_pointwise", "")
      .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
                        c10::List<std::optional<at::Scalar>>, std::optional<c10::string_view>)>();
  std::vector<at::Tensor> out;
  for (int64_t d = 0; d < a.size(0); ++d)
    out.push_back(linear.call(a.select(0, d), b.select(0, d).t(), std::nullopt, "none",
                              c10::List<std::optional<at::Scalar>>(), std::nullopt));
  return out.size() == 1 ? out[0].unsqueeze(0) : at::stack(out);
}

using seq2seq::sigmoid_row;
using seq2seq::tanh_row;

bool fusable(std::initializer_list<const at::Tensor*> tensors) {  // float32, contiguous, on the CPU
  for (const at::Tensor* t : tensors)
    if (t->scalar_type() != at::kFloat || !t->is_contiguous() || !t->device().is_cpu()) return false;
  return true;
}

const float* step_data(const std::optional<at::Tensor>& x, int64_t t, int64_t size) {  // (T or 1, ...) step t
  if (!x) return nullptr;
  return x->data_ptr<float>() + (x->size(0) == 1 ? 0 : t * size);
}

// One forward step's activations and cell over rows (D * B) of u units: gates (rows, 4u) pre-activations, turned
// into activations in place; c_t, tanh_c_t, h_t (rows, u) written from c_prev.
// Python: sigmoid_if.sigmoid_(); g.tanh_(); o.sigmoid_(); c = mul(f, c).addcmul_(i, g); h = mul(o, tanh(c))
void cell_forward(float* gates, const float* c_prev, float* c_t, float* tanh_c_t, float* h_t, int64_t rows,
                  int64_t units) {
  for (int64_t r = 0; r < rows; ++r) {
    float* i = gates + r * 4 * units;
    float *f = i + units, *g = i + 2 * units, *o = i + 3 * units;
    sigmoid_row(i, 2 * units);  // i and f: one row of 2u, as the (D, B, 2u) view is walked
    tanh_row(g, g, units);
    sigmoid_row(o, units);
    const float* c0 = c_prev + r * units;
    float *c = c_t + r * units, *tc = tanh_c_t + r * units, *h = h_t + r * units;
    for (int64_t j = 0; j < units; ++j) c[j] = std::fma(i[j], g[j], f[j] * c0[j]);  // addcmul: one rounding
    tanh_row(c, tc, units);
    for (int64_t j = 0; j < units; ++j) h[j] = o[j] * tc[j];
  }
}

}  // namespace

// MaskedLSTMRecurrence.forward's loop: fills h_in, hs, cs, tanh_cs (T, D, B, u) and turns gates (T, D, B, 4u)
// from x_proj into the activations. w_t: (D, u, 4u); onednn: the products in oneDNN (see products).
void forward_steps(at::Tensor gates, const at::Tensor& w_t, const at::Tensor& h0, const at::Tensor& c0,
                   at::Tensor h_in, at::Tensor hs, at::Tensor cs, at::Tensor tanh_cs,
                   const std::optional<at::Tensor>& h_mask, bool onednn) {
  const int64_t steps = gates.size(0), units = h0.size(-1), rows = gates.size(1) * gates.size(2);
  const bool fused = fusable({&gates, &c0, &hs, &cs, &tanh_cs});
  at::Tensor h = h0, c = c0;
  for (int64_t t = 0; t < steps; ++t) {
    at::Tensor step = gates.select(0, t), h_in_t = h_in.select(0, t);
    h = h_mask ? at::mul_out(h_in_t, h, step_of(*h_mask, t)) : h_in_t.copy_(h);
    if (onednn) step.add_(products(h.to(w_t.scalar_type()), w_t, true));  // (D, B, 4u) pre-activations
    else step.baddbmm_(h.to(w_t.scalar_type()), w_t);
    at::Tensor c_t = cs.select(0, t), h_t = hs.select(0, t), tanh_c_t = tanh_cs.select(0, t);
    if (fused) {
      cell_forward(step.data_ptr<float>(), c.data_ptr<float>(), c_t.data_ptr<float>(), tanh_c_t.data_ptr<float>(),
                   h_t.data_ptr<float>(), rows, units);
      c = c_t;
      h = h_t;
      continue;
    }
    step.narrow(-1, 0, 2 * units).sigmoid_();
    at::Tensor i = step.narrow(-1, 0, units), f = step.narrow(-1, units, units);
    at::Tensor g = step.narrow(-1, 2 * units, units), o = step.narrow(-1, 3 * units, units);
    g.tanh_();
    o.sigmoid_();
    c = at::mul_out(c_t, f, c).addcmul_(i, g);  // (D, B, u)
    h = at::mul_out(h_t, o, at::tanh_out(tanh_c_t, c));
  }
}

namespace {

bool absent_or_float(const std::optional<at::Tensor>& x) { return !x || x->scalar_type() == at::kFloat; }

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& x) {
  return x ? std::optional<at::Tensor>(x->contiguous()) : x;
}

// backward_steps for float32: the loop below with each step's element-wise work in one pass over its rows.
std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>> backward_steps_fused(
    at::Tensor grad_gates, const at::Tensor& gates, const at::Tensor& jac, const at::Tensor& k, const at::Tensor& w,
    const at::Tensor& h_in, const std::optional<at::Tensor>& grad_hs, const std::optional<at::Tensor>& grad_cs,
    const std::optional<at::Tensor>& h_mask, bool onednn) {
  const int64_t steps = gates.size(0), rows = gates.size(1) * gates.size(2), units = gates.size(3) / 4;
  const int64_t size = rows * units;
  at::Tensor dh_buffer = at::empty({gates.size(1), gates.size(2), units}, gates.options());
  at::Tensor dc_buffer = at::empty_like(dh_buffer);
  float *dh = dh_buffer.data_ptr<float>(), *dc = dc_buffer.data_ptr<float>();
  bool has_dc = false;
  std::optional<at::Tensor> dh_in, mask_t;  // the step after's gradient at its h_in (D, B, u) and its mask
  for (int64_t t = steps - 1; t >= 0; --t) {
    const float* grad_h = step_data(grad_hs, t, size);
    const float* grad_c = step_data(grad_cs, t, size);
    const float* in = dh_in ? dh_in->data_ptr<float>() : nullptr;
    const float* mask = mask_t ? mask_t->data_ptr<float>() : nullptr;
    // dh = _through_mask(grad_h, dh_in, mask): grad + dh_in * mask (addcmul: one rounding), any of them absent
    const bool has_dh = grad_h || in;
    for (int64_t e = 0; has_dh && e < size; ++e) {
      if (!in) dh[e] = grad_h[e];
      else if (!mask) dh[e] = grad_h ? grad_h[e] + in[e] : in[e];
      else dh[e] = grad_h ? std::fma(in[e], mask[e], grad_h[e]) : in[e] * mask[e];
    }
    if (grad_c) {  // dc = _sum(grad_c, dc)
      for (int64_t e = 0; e < size; ++e) dc[e] = has_dc ? grad_c[e] + dc[e] : grad_c[e];
      has_dc = true;
    }
    at::Tensor grad_t = grad_gates.select(0, t);
    if (!has_dh && !has_dc) {  // no gradient has reached this step yet
      grad_t.zero_();
      continue;
    }
    float* grad = grad_t.data_ptr<float>();
    const float* jac_t = jac.data_ptr<float>() + t * rows * 4 * units;
    const float* k_t = k.data_ptr<float>() + t * size;
    const float* gates_t = gates.data_ptr<float>() + t * rows * 4 * units;
    for (int64_t r = 0; r < rows; ++r) {
      float* grad_r = grad + r * 4 * units;
      const float* jac_r = jac_t + r * 4 * units;
      const float* f = gates_t + r * 4 * units + units;
      float* dc_r = dc + r * units;
      const float* dh_r = dh + r * units;
      const float* k_r = k_t + r * units;
      for (int64_t j = 0; j < units; ++j) {
        if (has_dh) {  // grad_o = jac_o dh; dc = dc + dh k (addcmul) or dh k
          grad_r[3 * units + j] = jac_r[3 * units + j] * dh_r[j];
          dc_r[j] = has_dc ? std::fma(dh_r[j], k_r[j], dc_r[j]) : dh_r[j] * k_r[j];
        } else {
          grad_r[3 * units + j] = 0.f;
        }
        for (int64_t q = 0; q < 3; ++q) grad_r[q * units + j] = jac_r[q * units + j] * dc_r[j];  // i, f, g
        dc_r[j] = dc_r[j] * f[j];  // to c_{t-1}
      }
    }
    has_dc = true;
    dh_in = products(grad_t, w, onednn).to(h_in.scalar_type());  // (D, B, u)
    if (h_mask) mask_t = step_of(*h_mask, t);
  }
  return {through_mask(std::nullopt, dh_in, mask_t), has_dc ? std::optional<at::Tensor>(dc_buffer) : std::nullopt};
}

}  // namespace

// MaskedLSTMRecurrence.backward's loop: fills grad_gates (T, D, B, 4u); returns the gradients at h0 and c0
// (either may be absent). jac (T, D, B, 4u), k (T, D, B, u): _local_derivatives; w: (D, 4u, u); onednn as above.
std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>> backward_steps(
    at::Tensor grad_gates, const at::Tensor& gates, const at::Tensor& jac, const at::Tensor& k, const at::Tensor& w,
    const at::Tensor& h_in, const std::optional<at::Tensor>& grad_hs, const std::optional<at::Tensor>& grad_cs,
    const std::optional<at::Tensor>& h_mask, bool onednn) {
  if (absent_or_float(grad_hs) && absent_or_float(grad_cs) && absent_or_float(h_mask) &&
      h_in.scalar_type() == at::kFloat && fusable({&grad_gates, &gates, &jac, &k}))
    return backward_steps_fused(grad_gates, gates, jac, k, w, h_in, contiguous(grad_hs), contiguous(grad_cs),
                                contiguous(h_mask), onednn);
  const int64_t steps = gates.size(0), directions = gates.size(1), batch = gates.size(2);
  const int64_t units = gates.size(3) / 4;
  const at::Tensor jac_ifg = jac.view({steps, directions, batch, 4, units}).narrow(3, 0, 3);
  const at::Tensor grad_ifg = grad_gates.view({steps, directions, batch, 4, units}).narrow(3, 0, 3);
  std::optional<at::Tensor> dh_in, mask, dc;
  for (int64_t t = steps - 1; t >= 0; --t) {
    std::optional<at::Tensor> grad_h, grad_c;
    if (grad_hs) grad_h = step_of(*grad_hs, t);
    if (grad_cs) grad_c = step_of(*grad_cs, t);
    std::optional<at::Tensor> dh = through_mask(grad_h, dh_in, mask);
    dc = sum(grad_c, dc);
    at::Tensor grad_t = grad_gates.select(0, t);
    if (!dh && !dc) {  // no gradient has reached this step yet
      grad_t.zero_();
      continue;
    }
    at::Tensor grad_o = grad_t.narrow(-1, 3 * units, units);
    if (!dh) {
      grad_o.zero_();
    } else {
      at::mul_out(grad_o, jac.select(0, t).narrow(-1, 3 * units, units), *dh);
      dc = dc ? at::addcmul(*dc, *dh, k.select(0, t)) : *dh * k.select(0, t);
    }
    at::Tensor grad_ifg_t = grad_ifg.select(0, t);
    at::mul_out(grad_ifg_t, jac_ifg.select(0, t), dc->unsqueeze(-2));
    dc = *dc * gates.select(0, t).narrow(-1, units, units);  // to c_{t-1}
    dh_in = products(grad_t, w, onednn).to(h_in.scalar_type());  // (D, B, u)
    mask.reset();
    if (h_mask) mask = step_of(*h_mask, t);
  }
  return {through_mask(std::nullopt, dh_in, mask), dc};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_steps", &forward_steps, "MaskedLSTMRecurrence's forward loop");
  m.def("backward_steps", &backward_steps, "MaskedLSTMRecurrence's backward loop");
}
