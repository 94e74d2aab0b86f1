// The L2 norm of a row-sparse gradient, bit for bit the norm torch.linalg.vector_norm gives its dense form
// (seq2seq/sparse_grad.py; built on first use by seq2seq/native.py).
//
// A word embedding's gradient in a step touches only the rows of that step's words (400 of PTB's 10,000), yet
// the dense gradient is read whole to take its norm. ATen's float32 2-norm of a contiguous tensor
// (norm_kernel_tensor_iterator_impl, the vectorised last-dim path) runs on one thread: 8 lanes, lane j summing
// x * x (a product, then an add: no FMA) of the elements at j, j + 8, j + 16, ... of the body (numel rounded down
// to 8) in order, then lane 0 + lane 1 + ... + lane 7, then the tail's squares one at a time, then sqrt. The tail's
// scalar loop is compiled so that its first 4 squares (where there are 4 or more) are products then adds and the
// rest fused multiply-adds (found by experiment on torch 2.13's wheel: 3,000 random vectors of each length 2-7).
// Zeros add nothing (acc + 0 * 0 == fma(0, 0, acc) == acc exactly), so the same sums over the touched rows alone,
// in the same lanes and order, give the same bits. seq2seq.sparse_grad checks this against torch once per
// process, tails of every length included, before trusting it.

#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <cmath>
#include <cstdint>

namespace {

constexpr int64_t kLanes = 8;

// values: (rows, width) float32, the touched rows of a (numel / width, width) tensor; rows: their indices,
// increasing and distinct. Returns a 0-dim float32 tensor.
at::Tensor sparse_rows_norm(const at::Tensor& values, const at::Tensor& rows, int64_t numel) {
  TORCH_CHECK(values.dim() == 2 && values.scalar_type() == at::kFloat && values.is_contiguous(),
              "values must be a contiguous (rows, width) float32 tensor");
  TORCH_CHECK(rows.dim() == 1 && rows.scalar_type() == at::kLong && rows.size(0) == values.size(0),
              "rows must be an int64 vector with one index per row of values");
  const int64_t count = values.size(0), width = values.size(1);
  const float* x = values.data_ptr<float>();
  const int64_t* index = rows.contiguous().data_ptr<int64_t>();
  const int64_t body = numel - numel % kLanes, plain_tail = numel % kLanes / 4 * 4;
  float lane[kLanes] = {0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f, 0.f};
  float tail = 0.f;
  bool in_tail = false;
  int64_t previous = -1;
  for (int64_t r = 0; r < count; ++r) {
    TORCH_CHECK(index[r] > previous && (index[r] + 1) * width <= numel, "rows must increase and lie inside numel");
    previous = index[r];
    const float* row = x + r * width;
    const int64_t start = index[r] * width;
    int64_t c = 0;
    if (start % kLanes == 0) {  // lane-aligned row: whole groups of 8, which the compiler vectorises
      for (; c + kLanes <= width && start + c + kLanes <= body; c += kLanes) {
        for (int64_t j = 0; j < kLanes; ++j) lane[j] += row[c + j] * row[c + j];
      }
    }
    for (; c < width && start + c < body; ++c) lane[(start + c) % kLanes] += row[c] * row[c];
    if (c < width && !in_tail) {  // the tail starts in this (the last) row: the lanes are folded first
      for (int64_t j = 1; j < kLanes; ++j) lane[0] = lane[0] + lane[j];
      tail = lane[0];
      in_tail = true;
    }
    for (; c < width; ++c) {  // ATen's build squares the tail's first 4 (if 4 or more) in a vector, FMAs the rest
      tail = start + c - body < plain_tail ? tail + row[c] * row[c] : std::fma(row[c], row[c], tail);
    }
  }
  if (!in_tail) {
    for (int64_t j = 1; j < kLanes; ++j) lane[0] = lane[0] + lane[j];
    tail = lane[0];
  }
  return at::full({}, std::sqrt(tail), values.options());
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("sparse_rows_norm", &sparse_rows_norm,
        "torch.linalg.vector_norm of a row-sparse float32 tensor's dense form, from its touched rows");
}
