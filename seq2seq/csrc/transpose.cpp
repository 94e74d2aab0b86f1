// A float32 matrix transposed into a new contiguous one, in cache-sized tiles on every thread (seq2seq/gemm.py;
// built on first use by seq2seq/native.py).
//
// seq2seq.gemm takes a weight's gradient dW = dY^T X as (X^T dY)^T on oneDNN, whose result (H, V) must then be
// laid out as the weight's (V, H). ATen's transposing copy does that on one thread in 60 x 60 blocks: PTB small's
// (200 x 10,000) took 1.1 ms alone and 1.75 ms inside a training step. Here 64 x 64 tiles (16 KB, in L1; 16 and
// 128 were slower) go to both cores: 0.6 ms.
// A copy: every value moves unchanged.

#include <ATen/ATen.h>
#include <torch/csrc/utils/pybind.h>

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace {

constexpr int64_t kTile = 64;

// src: (rows, cols) float32 with unit column stride (any row stride). Returns (cols, rows) contiguous.
at::Tensor transposed(const at::Tensor& src) {
  TORCH_CHECK(src.dim() == 2 && src.scalar_type() == at::kFloat && src.stride(1) == 1,
              "src must be a (rows, cols) float32 tensor with unit column stride");
  const int64_t rows = src.size(0), cols = src.size(1), stride = src.stride(0);
  auto out = at::empty({cols, rows}, src.options());
  const float* x = src.data_ptr<float>();
  float* y = out.data_ptr<float>();
  const int64_t col_tiles = (cols + kTile - 1) / kTile;
  // Each task: a band of the output's rows (the source's columns), written whole while its lines are in cache.
  at::parallel_for(0, col_tiles, 4, [&](int64_t first, int64_t last) {
    float tile[kTile][kTile];  // tile[c][r]: read along the source's rows, written out along the output's
    for (int64_t ct = first; ct < last; ++ct) {
      const int64_t c0 = ct * kTile, width = std::min(cols, c0 + kTile) - c0;
      for (int64_t r0 = 0; r0 < rows; r0 += kTile) {
        const int64_t height = std::min(rows, r0 + kTile) - r0;
        for (int64_t r = 0; r < height; ++r) {
          const float* in_row = x + (r0 + r) * stride + c0;
          for (int64_t c = 0; c < width; ++c) tile[c][r] = in_row[c];
        }
        for (int64_t c = 0; c < width; ++c) std::copy(tile[c], tile[c] + height, y + (c0 + c) * rows + r0);
      }
    }
  });
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("transposed", &transposed, "a (rows, cols) float32 matrix as a new contiguous (cols, rows) one");
}
