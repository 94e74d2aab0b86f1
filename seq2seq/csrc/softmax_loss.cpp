// Cross-entropy read straight from bf16 logits: the loss and its gradient in one pass each over the (N, V)
// logits, for bf16 autocast on a CPU (seq2seq/softmax.py, built on first use by seq2seq/native.py).
//
// The eager path widens the bf16 logits to fp32 and makes about ten passes over those 16 MB (PTB small: N = 400,
// V = 10,000): bias, max, subtract, exp, sum, divide, the target's -1, the gradient's cast back to bf16 and the
// bias gradient's column sum. Here the forward reads the 8 MB of bf16 logits once and keeps only each row's
// log-partition; the backward reads them once more, recomputes p = exp(z - log Z) and writes the bf16 gradient
// and the bias gradient's column sums in the same pass.
//
// Arithmetic is fp32 throughout, in a fixed order: sums over a row run in 16 lanes, column sums over fixed
// blocks of rows, so a result does not depend on the number of threads. exp is Cephes' single-precision
// polynomial (about 1 ulp), written so that the compiler vectorises it.

#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kLanes = 16;      // one AVX-512 register of floats
constexpr int64_t kBlockRows = 32;  // rows whose column sums are added together before the blocks are

inline float widen(uint16_t bits) {
  const uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline uint16_t narrow(float f) {  // round to nearest even, as torch's float -> bfloat16 cast (finite inputs)
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float exp_approx(float x) {  // Cephes expf: e^x = 2^n e^r, |r| <= ln 2 / 2
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const uint32_t scale_bits = static_cast<uint32_t>(static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof scale);
  return p * scale;
}

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

}  // namespace

// logits (N, V) bf16, bias (V) fp32, targets (N) int64 in [0, V) ->
// (log Z (N), loss (N)): loss_i = (1 - eps) (log Z_i - z_{i, y_i}) + eps (log Z_i - mean_v z_{i, v}), z = logits + bias
std::vector<at::Tensor> forward(const at::Tensor& logits, const at::Tensor& bias, const at::Tensor& targets,
                                double smoothing) {
  check_inputs(logits, bias, targets);
  const int64_t n = logits.size(0), v = logits.size(1), full = v - v % kLanes;
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
      const uint16_t* row = l + i * v;
      float peak[kLanes], sum_z[kLanes], total[kLanes];
      for (int64_t k = 0; k < kLanes; ++k) peak[k] = -std::numeric_limits<float>::max(), sum_z[k] = 0.0f, total[k] = 0.0f;
      for (int64_t j = 0; j < v; ++j) z[j] = widen(row[j]) + b[j];
      for (int64_t j = 0; j < full; j += kLanes) {
        for (int64_t k = 0; k < kLanes; ++k) {
          peak[k] = z[j + k] > peak[k] ? z[j + k] : peak[k];
          sum_z[k] += z[j + k];
        }
      }
      for (int64_t j = full; j < v; ++j) {  // the last V mod 16 columns
        peak[j - full] = z[j] > peak[j - full] ? z[j] : peak[j - full];
        sum_z[j - full] += z[j];
      }
      float row_peak = peak[0], row_sum = sum_z[0];
      for (int64_t k = 1; k < kLanes; ++k) row_peak = peak[k] > row_peak ? peak[k] : row_peak, row_sum += sum_z[k];
      for (int64_t j = 0; j < full; j += kLanes) {
        for (int64_t k = 0; k < kLanes; ++k) total[k] += exp_approx(z[j + k] - row_peak);
      }
      for (int64_t j = full; j < v; ++j) total[j - full] += exp_approx(z[j] - row_peak);
      float row_total = 0.0f;
      for (int64_t k = 0; k < kLanes; ++k) row_total += total[k];
      float lz = std::log(row_total) + row_peak;
      if (!std::isfinite(row_sum) || !std::isfinite(lz)) lz = std::numeric_limits<float>::quiet_NaN();
      log_z_out[i] = lz;
      loss_out[i] = (1.0f - eps) * (lz - z[y[i]]) + eps * (lz - row_sum / static_cast<float>(v));
    }
  });
  return {log_z, loss};
}

// The gradient of sum_i scale_i loss_i: d logits (N, V) bf16 = scale_i (p_iv - eps / V - (1 - eps) [v = y_i]),
// and d bias (V) fp32, its column sums in fp32 before rounding.
std::vector<at::Tensor> backward(const at::Tensor& logits, const at::Tensor& bias, const at::Tensor& targets,
                                 const at::Tensor& log_z, const at::Tensor& scale, double smoothing) {
  check_inputs(logits, bias, targets);
  TORCH_CHECK(log_z.is_contiguous() && scale.is_contiguous() && log_z.numel() == logits.size(0) &&
              scale.numel() == logits.size(0) && log_z.scalar_type() == at::kFloat &&
              scale.scalar_type() == at::kFloat, "log_z and scale must be contiguous (N,) float32 tensors");
  const int64_t n = logits.size(0), v = logits.size(1), blocks = (n + kBlockRows - 1) / kBlockRows;
  auto grad = at::empty_like(logits);
  auto partial = at::zeros({blocks, v}, bias.options());  // each block's column sums
  const auto* l = reinterpret_cast<const uint16_t*>(logits.data_ptr<at::BFloat16>());
  auto* g = reinterpret_cast<uint16_t*>(grad.data_ptr<at::BFloat16>());
  const float* b = bias.data_ptr<float>();
  const int64_t* y = targets.data_ptr<int64_t>();
  const float* lz = log_z.data_ptr<float>();
  const float* s = scale.data_ptr<float>();
  float* columns = partial.data_ptr<float>();
  const float eps = static_cast<float>(smoothing), off = eps / static_cast<float>(v);
  at::parallel_for(0, blocks, 1, [&](int64_t first, int64_t last) {
    for (int64_t block = first; block < last; ++block) {
      float* column = columns + block * v;
      for (int64_t i = block * kBlockRows; i < std::min(n, (block + 1) * kBlockRows); ++i) {
        const uint16_t* row = l + i * v;
        uint16_t* out = g + i * v;
        const float shift = lz[i], si = s[i];
        const int64_t yi = y[i];
        for (int64_t j = 0; j < v; ++j) {
          const float d = (exp_approx(widen(row[j]) + b[j] - shift) - off) * si;
          out[j] = narrow(d);
          column[j] += d;
        }
        const float p = (exp_approx(widen(row[yi]) + b[yi] - shift) - off) * si;
        const float d = p - (1.0f - eps) * si;
        out[yi] = narrow(d);
        column[yi] += d - p;
      }
    }
  });
  auto grad_bias = at::zeros({v}, bias.options());
  float* total = grad_bias.data_ptr<float>();
  for (int64_t block = 0; block < blocks; ++block) {  // in order, whatever the number of threads
    for (int64_t j = 0; j < v; ++j) total[j] += columns[block * v + j];
  }
  return {grad, grad_bias};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "log Z and per-row loss from bf16 logits");
  m.def("backward", &backward, "bf16 gradient of the logits and the bias gradient");
}
