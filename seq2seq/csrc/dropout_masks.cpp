// Dropout masks drawn from torch's own CPU generator, the same masks as
// (torch.rand(shape, dtype=float64, generator=g) < 1 - p) / (1 - p), bit for bit, with the generator left in the
// same state, but several times faster (seq2seq/dropout.py; built on first use by seq2seq/native.py).
//
// torch's CPU generator is MT19937 (ATen/core/MT19937RNGEngine.h); torch.rand draws one double per element, in
// order, from two 32-bit outputs: u = ((w1 << 32 | w2) mod 2^53) 2^-53. It draws them one call at a time. Here the
// generator's state is taken under its lock, the 624-word state is regenerated ("twisted") and tempered a block at
// a time in loops the compiler vectorises, the doubles are compared with 1 - p in the same way, and the state is put
// back where 2 n single calls would have left it. Recorded runs therefore repeat exactly with or without it.

#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>
#include <ATen/CPUGeneratorImpl.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <vector>

namespace {

constexpr int kN = 624, kM = 397;  // MT19937's state size and shift
constexpr uint32_t kMatrixA = 0x9908b0dfu, kUpper = 0x80000000u, kLower = 0x7fffffffu;
constexpr int64_t kChunk = 4096;  // doubles per pass: 32 KB of words

inline uint32_t twist(uint32_t u, uint32_t v) {
  return (((u & kUpper) | (v & kLower)) >> 1) ^ ((0u - (v & 1u)) & kMatrixA);
}

void next_state(uint32_t* s) {  // as mt19937_engine::next_state, loop by loop
  for (int i = 0; i < kN - kM; ++i) s[i] = s[i + kM] ^ twist(s[i], s[i + 1]);
  for (int i = kN - kM; i < kN - 1; ++i) s[i] = s[i + kM - kN] ^ twist(s[i], s[i + 1]);
  s[kN - 1] = s[kM - 1] ^ twist(s[kN - 1], s[0]);
}

// `count` outputs, exactly those of `count` calls of mt19937_engine::operator() on `data`, which is advanced.
void draw_words(at::mt19937_data_pod& data, uint32_t* out, int64_t count) {
  uint32_t* s = data.state_.data();
  for (int64_t done = 0; done < count;) {
    if (data.left_ == 1) {  // the next call would twist: do it, and N words are ready
      next_state(s);
      data.left_ = kN + 1;
      data.next_ = 0;
    }
    const int64_t take = std::min<int64_t>(data.left_ - 1, count - done);
    const uint32_t* from = s + data.next_;
    uint32_t* to = out + done;
    for (int64_t k = 0; k < take; ++k) {
      uint32_t y = from[k];
      y ^= y >> 11;
      y ^= (y << 7) & 0x9d2c5680u;
      y ^= (y << 15) & 0xefc60000u;
      y ^= y >> 18;
      to[k] = y;
    }
    data.next_ += static_cast<uint32_t>(take);
    data.left_ -= static_cast<int>(take);
    done += take;
  }
}

}  // namespace

// A float32 tensor of `shape`: 1 / (1 - p) where the unit is kept (u < 1 - p), else 0.
at::Tensor keep_mask(at::Generator generator, std::vector<int64_t> shape, double p) {
  TORCH_CHECK(p >= 0.0 && p < 1.0, "p must be in [0, 1)");
  auto mask = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  float* out = mask.data_ptr<float>();
  const int64_t n = mask.numel();
  const double keep = 1.0 - p;
  const float kept = 1.0f / static_cast<float>(keep);  // as (keep_tensor).div_(1 - p) computes it in float32
  const double unit = 1.0 / static_cast<double>(uint64_t{1} << 53);
  auto* cpu = at::check_generator<at::CPUGeneratorImpl>(generator);
  std::lock_guard<std::mutex> lock(generator.mutex());
  at::mt19937 engine = cpu->engine();
  at::mt19937_data_pod data = engine.data();
  std::vector<uint32_t> words(2 * kChunk);
  for (int64_t start = 0; start < n; start += kChunk) {
    const int64_t m = std::min(kChunk, n - start);
    draw_words(data, words.data(), 2 * m);
    const uint32_t* w = words.data();
    float* o = out + start;
    for (int64_t i = 0; i < m; ++i) {
      const uint64_t bits = ((static_cast<uint64_t>(w[2 * i]) << 32) | w[2 * i + 1]) & ((uint64_t{1} << 53) - 1);
      o[i] = static_cast<double>(bits) * unit < keep ? kept : 0.0f;
    }
  }
  engine.set_data(data);
  cpu->set_engine(engine);
  return mask;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("keep_mask", &keep_mask, "scaled dropout keep-mask from torch's CPU generator, as torch.rand would draw it");
}
