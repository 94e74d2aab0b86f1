// Cross-entropy read straight from bf16 logits, for bf16 autocast on a CPU (seq2seq/softmax.py, built on first use
// by seq2seq/native.py).
//
// The eager path widens the bf16 logits to fp32 and makes about ten passes over those 16 MB (PTB small: N = 400,
// V = 10,000): bias, max, subtract, exp, sum, divide, the target's -1, the gradient's cast back to bf16 and the
// bias gradient's column sum. Here one pass over each row does all of it while the row is in cache: in training
// (`loss_and_gradient`) it writes each row's loss and, over the logits, the bf16 gradient of the loss, with the
// bias gradient's column sums in the same pass; the exponentials are computed once, in the forward, since the
// gradient of a loss is known as soon as the loss is (its scale, d total / d loss, is applied by the caller to
// the products that read it). For evaluation `forward` gives the loss alone.
//
// Arithmetic is fp32 throughout, in a fixed order: sums over a row run in 16 lanes, column sums over fixed
// blocks of rows, so a result does not depend on the number of threads. exp is Cephes' single-precision
// polynomial (about 1 ulp) over 16 lanes in registers (csrc/lanes.h).

#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "lanes.h"

namespace {

using namespace seq2seq::lanes;

constexpr int64_t kBlockRows = 32;  // rows whose column sums are added together before the blocks are

void check_inputs(const at::Tensor& logits, const at::Tensor& bias, const at::Tensor& targets) {
  TORCH_CHECK(logits.dim() == 2 && logits.scalar_type() == at::kBFloat16 && logits.is_contiguous(),
              "logits must be a contiguous (N, V) bfloat16 tensor");
  TORCH_CHECK(bias.dim() == 1 && bias.size(0) == logits.size(1) && bias.scalar_type() == at::kFloat &&
              bias.is_contiguous(), "bias must be a contiguous (V,) float32 tensor");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == logits.size(0) && targets.scalar_type() == at::kLong &&
              targets.is_contiguous(), "targets must be a contiguous (N,) int64 tensor");
  TORCH_CHECK(logits.device().is_cpu() && bias.device().is_cpu() && targets.device().is_cpu(), "CPU tensors only");
  if (targets.numel() > 0) {
    const auto [low, high] = at::aminmax(targets);
    TORCH_CHECK(low.item<int64_t>() >= 0 && high.item<int64_t>() < logits.size(1), "a target is outside [0, V)");
  }
}

// log Z from a row's peak and sum of exps; NaN where the row held a NaN or an infinity.
inline float log_partition(float row_total, float row_peak, float row_sum) {
  const float lz = std::log(row_total) + row_peak;
  return std::isfinite(row_sum) && std::isfinite(lz) ? lz : std::numeric_limits<float>::quiet_NaN();
}

// (1 - eps) (log Z - z_y) + eps (log Z - mean_v z_v): one row's label-smoothed cross-entropy
inline float row_loss(float lz, float target_z, float row_sum, int64_t v, float eps) {
  return (1.0f - eps) * (lz - target_z) + eps * (lz - row_sum / static_cast<float>(v));
}

}  // namespace

// logits (N, V) bf16, bias (V) fp32, targets (N) int64 in [0, V) ->
// (log Z (N), loss (N)): loss_i = (1 - eps) (log Z_i - z_{i, y_i}) + eps (log Z_i - mean_v z_{i, v}), z = logits + bias
std::vector<at::Tensor> forward(const at::Tensor& logits, const at::Tensor& bias, const at::Tensor& targets,
                                double smoothing) {
  check_inputs(logits, bias, targets);
  const int64_t n = logits.size(0), v = logits.size(1);
  auto log_z = at::empty({n}, bias.options());
  auto loss = at::empty({n}, bias.options());
  const auto* l = reinterpret_cast<const uint16_t*>(logits.data_ptr<at::BFloat16>());
  const float* b = bias.data_ptr<float>();
  const int64_t* y = targets.data_ptr<int64_t>();
  float* log_z_out = log_z.data_ptr<float>();
  float* loss_out = loss.data_ptr<float>();
  const float eps = static_cast<float>(smoothing);
  at::parallel_for(0, n, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> z(v);
    for (int64_t i = begin; i < end; ++i) {
      float row_peak, row_sum;
      widen_row(l + i * v, b, z.data(), v, row_peak, row_sum);
      const float lz = log_partition(sum_exp<false>(z.data(), v, row_peak), row_peak, row_sum);
      log_z_out[i] = lz;
      loss_out[i] = row_loss(lz, z[y[i]], row_sum, v, eps);
    }
  });
  return {log_z, loss};
}

// The same loss rows, and in place of the logits the gradient of sum_i scale_i loss_i, in bf16:
// d z_iv = scale_i (p_iv - eps / V - (1 - eps) [v = y_i]), p = softmax(z); returns (loss (N), d bias (V)), the bias
// gradient's column sums taken in fp32 before rounding.
std::vector<at::Tensor> loss_and_gradient(at::Tensor& logits, const at::Tensor& bias, const at::Tensor& targets,
                                          const at::Tensor& scale, double smoothing) {
  check_inputs(logits, bias, targets);
  TORCH_CHECK(scale.is_contiguous() && scale.numel() == logits.size(0) && scale.scalar_type() == at::kFloat,
              "scale must be a contiguous (N,) float32 tensor");
  const int64_t n = logits.size(0), v = logits.size(1), blocks = (n + kBlockRows - 1) / kBlockRows;
  auto loss = at::empty({n}, bias.options());
  auto partial = at::zeros({blocks, v}, bias.options());  // each block's column sums
  auto* l = reinterpret_cast<uint16_t*>(logits.data_ptr<at::BFloat16>());
  const float* b = bias.data_ptr<float>();
  const int64_t* y = targets.data_ptr<int64_t>();
  const float* s = scale.data_ptr<float>();
  float* loss_out = loss.data_ptr<float>();
  float* columns = partial.data_ptr<float>();
  const float eps = static_cast<float>(smoothing), off = eps / static_cast<float>(v);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    std::vector<float> z(v);
    for (int64_t block = first; block < last; ++block) {
      float* column = columns + block * v;
      for (int64_t i = block * kBlockRows; i < std::min(n, (block + 1) * kBlockRows); ++i) {
        uint16_t* row = l + i * v;
        const int64_t yi = y[i];
        float row_peak, row_sum;
        widen_row(row, b, z.data(), v, row_peak, row_sum);
        const float target_z = z[yi];
        const float row_total = sum_exp<true>(z.data(), v, row_peak);  // z now holds exp(z - peak)
        const float lz = log_partition(row_total, row_peak, row_sum);
        loss_out[i] = row_loss(lz, target_z, row_sum, v, eps);
        const float inverse = 1.0f / row_total, si = s[i];
        const int64_t full = v - v % kLanes;
        for (int64_t j = 0; j < full; j += kLanes) {
          const Lanes d = (load(z.data() + j) * inverse - off) * si;
          narrow(d, row + j);
          store(load(column + j) + d, column + j);
        }
        for (int64_t j = full; j < v; ++j) {
          const float d = (z[j] * inverse - off) * si;
          row[j] = narrow(d);
          column[j] += d;
        }
        const float p = (z[yi] * inverse - off) * si;
        const float d = p - (1.0f - eps) * si;
        row[yi] = narrow(d);
        column[yi] += d - p;
      }
    }
  });
  auto grad_bias = at::zeros({v}, bias.options());
  float* total = grad_bias.data_ptr<float>();
  for (int64_t block = 0; block < blocks; ++block) {  // in order, whatever the number of threads
    for (int64_t j = 0; j < v; ++j) total[j] += columns[block * v + j];
  }
  return {loss, grad_bias};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "log Z and per-row loss from bf16 logits");
  m.def("loss_and_gradient", &loss_and_gradient,
        "per-row loss, the bf16 gradient written over the logits and the bias gradient");
}
