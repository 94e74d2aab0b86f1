// One decoder layer's LSTM cell at a beam-search step, with the row gathers around it, in one pass (built on
// first use by seq2seq/native.py; called from seq2seq.translator.decoder_step). For each new row n:
//   gates = hh[rows[n]] + inputs[input_rows[n]]    (N, 4H): W_hh h of the row's parent + the input half (layer 0:
//                                                  a row of the per-token table, looked up here)
//   c_n   = sigmoid(f) * c[parents[n]] + sigmoid(i) * tanh(g)
//   h_n   = tanh(c_n) * sigmoid(o)
// written straight into h_out and c_out (a layer of the step's (L, N, H) outputs: no stack afterwards).
//
// Eager PyTorch spends a beam step's element-wise work in about fourteen operations a layer (three gathers, an
// addition, four activations, three products and sums, the stacks), each with its own pass over memory and its
// own dispatch; at a beam's sizes (320 x 256) that costs more than their arithmetic. The arithmetic here is
// ATen's own (aten_arithmetic.h: its sigmoid along rows of H, MKL's tanh, each product and sum rounded on its
// own), so h and c are the same to the last bit as seq2seq.lstm.lstm_pointwise after the gathers.
//
// With exact = false (bf16 search, whose products already round to bf16) the activations are csrc/lanes.h's,
// 16 lanes at a time: within ~2e-7 of ATen's, and about four times faster at a beam's sizes, where the exact
// functions (MKL's tanh called per row, Sleef's exp) were most of a step's element-wise time.
//
// bf16 search's other element-wise work, with the same approximations (seq2seq.products):
//   tanh_approx_(x)                      attention's h~ = tanh(W_c [c; h]) in place
//   log_softmax_rows(z, bias, mask)      log_softmax(float(z) + bias + mask[sentence]) per row: the output layer's
//                                        bf16 product to fp32 log-probs a row at a time, while it is in cache (four
//                                        whole-matrix operations in eager PyTorch: widen, bias, mask, log_softmax)

#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/Parallel.h>
#include <ATen/record_function.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <tuple>
#include <vector>

#include "aten_arithmetic.h"
#include "lanes.h"

namespace {

using seq2seq::sigmoid_row;
using seq2seq::tanh_row;

// c_n = sigmoid(f) c_prev + sigmoid(i) tanh(g), h_n = tanh(c_n) sigmoid(o) with lanes.h's approximations
void approximate_cell(const float* gates, const float* c_prev, float* c_n, float* h_n, int64_t units) {
  using namespace seq2seq::lanes;
  const float *i = gates, *f = gates + units, *g = gates + 2 * units, *o = gates + 3 * units;
  int64_t j = 0;
  for (; j + kLanes <= units; j += kLanes) {
    const Lanes c =
        sigmoid_approx(load(f + j)) * load(c_prev + j) + sigmoid_approx(load(i + j)) * tanh_approx(load(g + j));
    store(c, c_n + j);
    store(tanh_approx(c) * sigmoid_approx(load(o + j)), h_n + j);
  }
  for (; j < units; ++j) {
    c_n[j] = sigmoid_approx(f[j]) * c_prev[j] + sigmoid_approx(i[j]) * tanh_approx(g[j]);
    h_n[j] = tanh_approx(c_n[j]) * sigmoid_approx(o[j]);
  }
}

const int64_t* index_data(const std::optional<at::Tensor>& index, int64_t rows, int64_t bound, const char* what) {
  if (!index) return nullptr;
  TORCH_CHECK(index->scalar_type() == at::kLong && index->dim() == 1 && index->is_contiguous() &&
                  index->size(0) == rows, what, " must be a contiguous int64 vector of ", rows, " entries");
  const int64_t* data = index->data_ptr<int64_t>();
  for (int64_t n = 0; n < rows; ++n)
    TORCH_CHECK(data[n] >= 0 && data[n] < bound, what, "[", n, "] = ", data[n], " is outside [0, ", bound, ")");
  return data;
}

void check_matrix(const at::Tensor& t, int64_t cols, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.dim() == 2 && t.is_contiguous() &&
                  t.size(1) == cols, what, " must be a contiguous float32 CPU matrix with ", cols, " columns");
}

}  // namespace

// hh (D, 4H); rows (N,) into hh, or none (row n of hh); inputs (N or V, 4H) or none; input_rows (N,) into inputs,
// or none (row n of inputs); c (B, H); parents (N,) into c, or none (row n of c); h_out, c_out (N, H), written;
// exact: ATen's activations (else lanes.h's).
void cell(const at::Tensor& hh, const std::optional<at::Tensor>& rows, const std::optional<at::Tensor>& inputs,
          const std::optional<at::Tensor>& input_rows, const at::Tensor& c, const std::optional<at::Tensor>& parents,
          at::Tensor h_out, at::Tensor c_out, bool exact) {
  RECORD_FUNCTION("seq2seq::search_cell_kernel", std::vector<c10::IValue>());  // named in the profiler's tables
  const int64_t units = c.size(-1), n_rows = h_out.size(0), width = 4 * units;
  check_matrix(hh, width, "hh");
  check_matrix(c, units, "c");
  check_matrix(h_out, units, "h_out");
  check_matrix(c_out, units, "c_out");
  TORCH_CHECK(c_out.size(0) == n_rows, "h_out and c_out must have the same rows");
  if (inputs) check_matrix(*inputs, width, "inputs");
  TORCH_CHECK(!input_rows || inputs, "input_rows needs inputs");
  const int64_t* input_row_of = inputs ? index_data(input_rows, n_rows, inputs->size(0), "input_rows") : nullptr;
  TORCH_CHECK(!inputs || input_row_of || inputs->size(0) == n_rows,
              "without input_rows, inputs must have one row per output row");
  const int64_t* row_of = index_data(rows, n_rows, hh.size(0), "rows");
  const int64_t* parent_of = index_data(parents, n_rows, c.size(0), "parents");
  TORCH_CHECK(row_of || hh.size(0) == n_rows, "without rows, hh must have one row per output row");
  TORCH_CHECK(parent_of || c.size(0) == n_rows, "without parents, c must have one row per output row");
  const float* hh_data = hh.data_ptr<float>();
  const float* in_data = inputs ? inputs->data_ptr<float>() : nullptr;
  const float* c_data = c.data_ptr<float>();
  float* h_data = h_out.data_ptr<float>();
  float* c_new = c_out.data_ptr<float>();

  at::parallel_for(0, n_rows, 16, [&](int64_t begin, int64_t end) {
    std::vector<float> buffer(width + units);
    float* gates = buffer.data();          // [i f g o], then tanh(c) in the last H
    float* tanh_c = gates + width;
    for (int64_t n = begin; n < end; ++n) {
      const float* source = hh_data + (row_of ? row_of[n] : n) * width;
      if (in_data) {
        const float* in = in_data + (input_row_of ? input_row_of[n] : n) * width;
        for (int64_t j = 0; j < width; ++j) gates[j] = source[j] + in[j];
      } else {
        std::copy(source, source + width, gates);
      }
      const float* c_prev = c_data + (parent_of ? parent_of[n] : n) * units;
      float* c_n = c_new + n * units;
      float* h_n = h_data + n * units;
      if (!exact) {
        approximate_cell(gates, c_prev, c_n, h_n, units);
        continue;
      }
      float *i = gates, *f = gates + units, *g = gates + 2 * units, *o = gates + 3 * units;
      sigmoid_row(i, units);
      sigmoid_row(f, units);
      tanh_row(g, g, units);
      sigmoid_row(o, units);
      for (int64_t j = 0; j < units; ++j) c_n[j] = f[j] * c_prev[j] + i[j] * g[j];
      tanh_row(c_n, tanh_c, units);
      for (int64_t j = 0; j < units; ++j) h_n[j] = tanh_c[j] * o[j];
    }
  });
}

// x = tanh(x) in place with lanes.h's tanh (x: float32, contiguous, CPU)
void tanh_approx_(at::Tensor x) {
  RECORD_FUNCTION("seq2seq::tanh_approx_", std::vector<c10::IValue>());
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat && x.is_contiguous(),
              "x must be a contiguous float32 CPU tensor");
  float* data = x.data_ptr<float>();
  at::parallel_for(0, x.numel(), 16384, [&](int64_t begin, int64_t end) {
    using namespace seq2seq::lanes;
    int64_t j = begin;
    for (; j + kLanes <= end; j += kLanes) store(tanh_approx(load(data + j)), data + j);
    for (; j < end; ++j) data[j] = tanh_approx(data[j]);
  });
}

// z (N, V) bf16; bias (V,) float32; mask (B, V) float32 or none, row n taking mask[n / (N / B)] (B divides N).
// Returns log_softmax(float(z) + bias + mask) along rows, (N, V) float32: each row widened onto its sentence's
// bias + mask (a shortlist's 0 or -inf, so the sum is exact) and its exps summed by lanes.h's softmax passes.
at::Tensor log_softmax_rows(const at::Tensor& z, const at::Tensor& bias, const std::optional<at::Tensor>& mask) {
  RECORD_FUNCTION("seq2seq::log_softmax_rows", std::vector<c10::IValue>());
  TORCH_CHECK(z.device().is_cpu() && z.scalar_type() == at::kBFloat16 && z.dim() == 2 && z.is_contiguous(),
              "z must be a contiguous bfloat16 CPU matrix");
  const int64_t n_rows = z.size(0), v = z.size(1);
  TORCH_CHECK(bias.device().is_cpu() && bias.scalar_type() == at::kFloat && bias.dim() == 1 && bias.size(0) == v &&
                  bias.is_contiguous(), "bias must be a contiguous float32 CPU vector of ", v, " entries");
  if (mask) {
    check_matrix(*mask, v, "mask");
    TORCH_CHECK(mask->size(0) > 0 && n_rows % mask->size(0) == 0, "mask's rows must divide z's ", n_rows);
  }
  const int64_t per_mask = mask ? n_rows / mask->size(0) : n_rows;
  const at::Tensor row_bias = mask ? (*mask + bias).contiguous() : bias;  // (B or 1, V)
  at::Tensor out = at::empty({n_rows, v}, bias.options());
  const uint16_t* z_data = reinterpret_cast<const uint16_t*>(z.data_ptr<at::BFloat16>());
  const float* bias_data = row_bias.data_ptr<float>();
  float* out_data = out.data_ptr<float>();
  at::parallel_for(0, n_rows, 16, [&](int64_t begin, int64_t end) {
    using namespace seq2seq::lanes;
    for (int64_t n = begin; n < end; ++n) {
      float* row = out_data + n * v;
      float peak, sum;
      widen_row(z_data + n * v, bias_data + (n / per_mask) * v, row, v, peak, sum);
      const float log_z = peak + std::log(sum_exp<false>(row, v, peak));
      int64_t j = 0;
      for (; j + kLanes <= v; j += kLanes) store(load(row + j) - log_z, row + j);
      for (; j < v; ++j) row[j] -= log_z;
    }
  });
  return out;
}

// torch.unique(parents, sorted=True, return_inverse=True) for row indices below `bound`: the distinct parents in
// ascending order (D,) and each row's place among them (N,), by marking, not sorting (N is a beam's few hundred
// rows, bound the previous step's).
std::tuple<at::Tensor, at::Tensor> unique_rows(const at::Tensor& parents, int64_t bound) {
  RECORD_FUNCTION("seq2seq::unique_rows", std::vector<c10::IValue>());
  const int64_t n_rows = parents.size(0);
  const int64_t* parent_of = index_data(parents, n_rows, bound, "parents");
  std::vector<int64_t> place(bound, -1);  // parent row -> its place among the distinct ones (0: seen, unnumbered)
  for (int64_t n = 0; n < n_rows; ++n) place[parent_of[n]] = 0;
  int64_t distinct = 0;
  for (int64_t b = 0; b < bound; ++b)
    if (place[b] == 0) place[b] = distinct++;
  at::Tensor rows = at::empty({distinct}, parents.options()), inverse = at::empty({n_rows}, parents.options());
  int64_t* rows_data = rows.data_ptr<int64_t>();
  for (int64_t b = 0; b < bound; ++b)
    if (place[b] >= 0) rows_data[place[b]] = b;
  int64_t* inverse_data = inverse.data_ptr<int64_t>();
  for (int64_t n = 0; n < n_rows; ++n) inverse_data[n] = place[parent_of[n]];
  return {rows, inverse};
}

// Each call lets go of Python's interpreter lock while it runs, as torch's own operators do: seq2seq-translate's
// workers are threads, and a batch's Python can run while the other batch's cell runs.
PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  const auto unlocked = py::call_guard<py::gil_scoped_release>();
  m.def("cell", &cell, "one decoder layer's LSTM cell at a search step, gathers included (see the file's head)",
        py::arg("hh"), py::arg("rows"), py::arg("inputs"), py::arg("input_rows"), py::arg("c"), py::arg("parents"),
        py::arg("h_out"), py::arg("c_out"), py::arg("exact") = true, unlocked);
  m.def("tanh_approx_", &tanh_approx_, "x = tanh(x) in place, lanes.h's approximation (bf16 search)", unlocked);
  m.def("log_softmax_rows", &log_softmax_rows, "log_softmax(float(z) + bias + mask per sentence) along rows",
        py::arg("z"), py::arg("bias"), py::arg("mask") = py::none(), unlocked);
  m.def("unique_rows", &unique_rows, "torch.unique(parents, sorted=True, return_inverse=True), rows below bound",
        unlocked);
}
