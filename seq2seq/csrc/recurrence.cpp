// The step loops of seq2seq/recurrence.py (MaskedLSTMRecurrence, the `variational` and `naive` placements) in
// C++: the same ATen operations on the same buffers in the same order, so the results are the same bit for bit,
// without the Python interpreter between them (built on first use by seq2seq/native.py). At PTB small's sizes
// (20 rows a step) an operation's arithmetic takes a few microseconds and the Python around it about as much.
// The comments name the Python lines each block transliterates; the equations are in recurrence.py.

#include <torch/extension.h>

#include <optional>
#include <tuple>

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

}  // namespace

// MaskedLSTMRecurrence.forward's loop: fills h_in, hs, cs, tanh_cs (T, D, B, u) and turns gates (T, D, B, 4u)
// from x_proj into the activations. w_t: (D, u, 4u).
void forward_steps(at::Tensor gates, const at::Tensor& w_t, const at::Tensor& h0, const at::Tensor& c0,
                   at::Tensor h_in, at::Tensor hs, at::Tensor cs, at::Tensor tanh_cs,
                   const std::optional<at::Tensor>& h_mask) {
  const int64_t steps = gates.size(0), units = h0.size(-1);
  at::Tensor h = h0, c = c0;
  for (int64_t t = 0; t < steps; ++t) {
    at::Tensor step = gates.select(0, t), h_in_t = h_in.select(0, t);
    h = h_mask ? at::mul_out(h_in_t, h, step_of(*h_mask, t)) : h_in_t.copy_(h);
    step.baddbmm_(h.to(w_t.scalar_type()), w_t);  // (D, B, 4u) pre-activations
    step.narrow(-1, 0, 2 * units).sigmoid_();
    at::Tensor i = step.narrow(-1, 0, units), f = step.narrow(-1, units, units);
    at::Tensor g = step.narrow(-1, 2 * units, units), o = step.narrow(-1, 3 * units, units);
    g.tanh_();
    o.sigmoid_();
    at::Tensor c_t = cs.select(0, t), h_t = hs.select(0, t), tanh_c_t = tanh_cs.select(0, t);
    c = at::mul_out(c_t, f, c).addcmul_(i, g);  // (D, B, u)
    h = at::mul_out(h_t, o, at::tanh_out(tanh_c_t, c));
  }
}

// MaskedLSTMRecurrence.backward's loop: fills grad_gates (T, D, B, 4u); returns the gradients at h0 and c0
// (either may be absent). jac (T, D, B, 4u), k (T, D, B, u): _local_derivatives; w: (D, 4u, u).
std::tuple<std::optional<at::Tensor>, std::optional<at::Tensor>> backward_steps(
    at::Tensor grad_gates, const at::Tensor& gates, const at::Tensor& jac, const at::Tensor& k, const at::Tensor& w,
    const at::Tensor& h_in, const std::optional<at::Tensor>& grad_hs, const std::optional<at::Tensor>& grad_cs,
    const std::optional<at::Tensor>& h_mask) {
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
    dh_in = at::bmm(grad_t, w).to(h_in.scalar_type());  // (D, B, u)
    mask.reset();
    if (h_mask) mask = step_of(*h_mask, t);
  }
  return {through_mask(std::nullopt, dh_in, mask), dc};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward_steps", &forward_steps, "MaskedLSTMRecurrence's forward loop");
  m.def("backward_steps", &backward_steps, "MaskedLSTMRecurrence's backward loop");
}
