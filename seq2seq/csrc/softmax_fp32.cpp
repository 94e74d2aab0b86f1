// The float32 softmax cross-entropy's element-wise work in one pass over each row of the (N, V) logits, rounding
// as the eager operators it replaces (seq2seq/softmax.py, _LinearCrossEntropy; built by seq2seq/native.py with
// csrc/aten_arithmetic.h's flags).
//
// The eager forward walks the 16 MB of PTB small's logits (N = 400, V = 10,000) seven times: add the bias, gather
// the target's logit, max, subtract it, exp, sum, divide. Here each row (40 KB, in the core's cache) takes all
// seven in turn, so the logits travel from memory and back once. The backward's target subtraction and scaling
// run in one pass as well; the bias gradient's column sum stays with torch.
//
// Every value is the eager one to the last bit:
// - add, subtract, multiply, divide and max are exact IEEE operations, whatever the order of rows;
// - exp is MKL's vector function (vmsExp, high accuracy), which torch.exp calls on x86 builds;
// - a row's sum is ATen's cascade sum for a contiguous row, reproduced below (ATen's SumKernel.cpp: the row read
//   as vectors, four accumulators in turn, partial sums folded over four levels of 16 or more vectors each, then
//   the row's tail and the vector's lanes added in order).

#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "aten_arithmetic.h"

namespace {

using seq2seq::Vec;

int64_t ceil_log2(int64_t x) {  // as ATen's utils::CeilLog2: 1 for x <= 2
  return x <= 2 ? 1 : 64 - __builtin_clzll(static_cast<uint64_t>(x - 1));
}

// Sums of R interleaved sequences of `size` items each, item (i, k) = load(i, k), in ATen's cascade: running sums
// of `step` items, folded into the next of four levels whenever the item count reaches a multiple of that level's
// span, so that only sums of similar size are added.
template <typename T, int R, typename Load>
std::array<T, R> cascade(Load load, int64_t size) {
  constexpr int kLevels = 4;
  const int64_t power = std::max<int64_t>(4, ceil_log2(size) / kLevels);
  const int64_t step = int64_t(1) << power, mask = step - 1;
  std::array<std::array<T, R>, kLevels> acc;
  for (auto& level : acc) level.fill(T{});
  int64_t i = 0;
  while (i + step <= size) {
    for (int64_t j = 0; j < step; ++j, ++i) {
      for (int k = 0; k < R; ++k) acc[0][k] = acc[0][k] + load(i, k);
    }
    for (int j = 1; j < kLevels; ++j) {
      for (int k = 0; k < R; ++k) {
        acc[j][k] = acc[j][k] + acc[j - 1][k];
        acc[j - 1][k] = T{};
      }
      if ((i & (mask << (j * power))) != 0) break;
    }
  }
  for (; i < size; ++i) {
    for (int k = 0; k < R; ++k) acc[0][k] = acc[0][k] + load(i, k);
  }
  for (int j = 1; j < kLevels; ++j) {
    for (int k = 0; k < R; ++k) acc[0][k] = acc[0][k] + acc[j][k];
  }
  return acc[0];
}

// The sum of `size` items load(i): four interleaved cascades, then the leftover items and the four sums in order.
template <typename T, typename Load>
T ilp_sum(Load load, int64_t size) {
  const int64_t quads = size / 4;
  auto partial = cascade<T, 4>([&](int64_t i, int k) { return load(4 * i + k); }, quads);
  for (int64_t i = 4 * quads; i < size; ++i) partial[0] = partial[0] + load(i);
  for (int k = 1; k < 4; ++k) partial[0] = partial[0] + partial[k];
  return partial[0];
}

// Eight floats added lane by lane: torch.sum's vector on every x86 CPU (on AVX-512 ones torch dispatches its sum
// to the AVX2 kernel, which ATen registers for them instead of an AVX-512 one)
typedef float Lanes __attribute__((vector_size(32)));
constexpr int64_t kSumLanes = 8;

inline Lanes load_lanes(const float* x) {
  Lanes out;
  std::memcpy(&out, x, sizeof out);
  return out;
}

// x[0] + ... + x[n - 1] as torch.sum(dim=-1) computes it for a contiguous row of floats
float row_sum(const float* x, int64_t n) {
  if (n < kSumLanes) return 0.0f + ilp_sum<float>([&](int64_t i) { return x[i]; }, n);
  const int64_t vectors = n / kSumLanes;
  const Lanes sums = ilp_sum<Lanes>([&](int64_t i) { return load_lanes(x + i * kSumLanes); }, vectors);
  float total = 0.0f;
  for (int64_t j = vectors * kSumLanes; j < n; ++j) total += x[j];
  for (int64_t k = 0; k < kSumLanes; ++k) total += sums[k];
  return 0.0f + total;  // the output starts at zero and the row's sum is added to it
}

// row += bias, returning the row's max (NaN if any value is NaN, as torch.amax)
float add_and_max(float* row, const float* bias, int64_t n) {
  constexpr int64_t lanes = Vec::size();
  Vec peaks(-std::numeric_limits<float>::infinity());
  int64_t j = 0;
  for (; j + lanes <= n; j += lanes) {
    const Vec z = Vec::loadu(row + j) + Vec::loadu(bias + j);
    z.store(row + j);
    peaks = at::vec::maximum(peaks, z);
  }
  alignas(64) float lane[lanes];
  peaks.store(lane);
  float peak = -std::numeric_limits<float>::infinity();
  for (int64_t k = 0; k < lanes; ++k) peak = std::isnan(lane[k]) || lane[k] > peak ? lane[k] : peak;
  for (; j < n; ++j) {
    row[j] = row[j] + bias[j];
    peak = std::isnan(row[j]) || row[j] > peak ? row[j] : peak;
  }
  return peak;
}

// row = exp(row - peak), a block at a time while it is in the first-level cache
void shifted_exp(float* row, float peak, int64_t n) {
  constexpr int64_t block = 1024;
  for (int64_t start = 0; start < n; start += block) {
    const int64_t stop = std::min(n, start + block);
    for (int64_t j = start; j < stop; ++j) row[j] = row[j] - peak;
    seq2seq::exp_row(row + start, stop - start);
  }
}

void check(const at::Tensor& probs, const at::Tensor& targets) {
  TORCH_CHECK(probs.dim() == 2 && probs.scalar_type() == at::kFloat && probs.is_contiguous() && probs.is_cpu(),
              "logits must be a contiguous (N, V) float32 CPU tensor");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == probs.size(0) && targets.scalar_type() == at::kLong &&
              targets.is_contiguous() && targets.is_cpu(), "targets must be a contiguous (N,) int64 CPU tensor");
  if (targets.numel() > 0) {
    const auto [low, high] = at::aminmax(targets);
    TORCH_CHECK(low.item<int64_t>() >= 0 && high.item<int64_t>() < probs.size(1), "a target is outside [0, V)");
  }
}

}  // namespace

// logits (N, V) += bias, then in place to exp(logit - row max): the softmax before its division by the row's total,
// which the backward does in its own pass (only it reads the probabilities). Returns, each (N, 1): the target's
// logit, each row's sum of logits (zeros unless with_sum), its max and its total of exp(logit - max), all taken as
// the eager path takes them (after the bias, before the subtraction).
std::vector<at::Tensor> forward(at::Tensor& logits, const at::Tensor& bias, const at::Tensor& targets, bool with_sum) {
  check(logits, targets);
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == logits.size(1) && bias.scalar_type() == at::kFloat &&
              bias.is_contiguous() && bias.is_cpu(), "bias must be a contiguous (V,) float32 CPU tensor");
  const int64_t n = logits.size(0), v = logits.size(1);
  auto stats = at::zeros({4, n, 1}, bias.options());  // target logit, sum, max, total
  float* z = logits.data_ptr<float>();
  const float* b = bias.data_ptr<float>();
  const int64_t* y = targets.data_ptr<int64_t>();
  float* out = stats.data_ptr<float>();
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = z + i * v;
      const float peak = add_and_max(row, b, v);
      out[i] = row[y[i]];
      if (with_sum) out[n + i] = row_sum(row, v);
      shifted_exp(row, peak, v);
      out[2 * n + i] = peak;
      out[3 * n + i] = row_sum(row, v);
    }
  });
  return stats.unbind(0);
}

// forward's exp(logit - max) (N, V) in place to the gradient of the logits: p = exp / total, then p - (1 - eps) at
// the target, - eps / V everywhere when eps is not zero, times keep (N, 1) where given, times grad; each step rounded
// as the eager path rounds it.
void backward(at::Tensor& probs, const at::Tensor& totals, const at::Tensor& targets, double smoothing,
              const c10::optional<at::Tensor>& keep, double grad) {
  check(probs, targets);
  TORCH_CHECK(totals.scalar_type() == at::kFloat && totals.is_contiguous() && totals.numel() == probs.size(0),
              "totals must be a contiguous (N, 1) float32 tensor");
  const bool masked = keep.has_value() && keep->defined();
  if (masked) {
    TORCH_CHECK(keep->scalar_type() == at::kFloat && keep->is_contiguous() && keep->numel() == probs.size(0),
                "keep must be a contiguous (N, 1) float32 tensor");
  }
  const int64_t n = probs.size(0), v = probs.size(1);
  float* p = probs.data_ptr<float>();
  const int64_t* y = targets.data_ptr<int64_t>();
  const float* k = masked ? keep->data_ptr<float>() : nullptr;
  const float* total = totals.data_ptr<float>();
  const float at_target = static_cast<float>(1.0 - smoothing), everywhere = static_cast<float>(smoothing / v);
  const float scale = static_cast<float>(grad);
  at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      float* row = p + i * v;
      for (int64_t j = 0; j < v; ++j) row[j] = row[j] / total[i];
      row[y[i]] = row[y[i]] - at_target;
      if (smoothing != 0.0) {
        for (int64_t j = 0; j < v; ++j) row[j] = row[j] - everywhere;
      }
      if (masked) {
        for (int64_t j = 0; j < v; ++j) row[j] = row[j] * k[i];
      }
      for (int64_t j = 0; j < v; ++j) row[j] = row[j] * scale;
    }
  });
}

// torch.sum(x, dim=-1) of a contiguous (N, V) float32 tensor, by this file's replica of ATen's order (for tests)
at::Tensor row_sums(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == at::kFloat && x.is_contiguous(), "x must be (N, V) float32");
  auto out = at::empty({x.size(0)}, x.options());
  for (int64_t i = 0; i < x.size(0); ++i) out.data_ptr<float>()[i] = row_sum(x.data_ptr<float>() + i * x.size(1), x.size(1));
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "bias, target logit, max, exp and sum of each row, logits to exp(logit - max) in place");
  m.def("backward", &backward, "exp(logit - max) to the logits' gradient in place");
  m.def("row_sums", &row_sums, "torch.sum(x, -1) in ATen's order, for tests");
}
