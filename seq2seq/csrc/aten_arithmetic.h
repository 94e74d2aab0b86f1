// The element-wise functions of ATen's CPU kernels, reproduced so that a fused loop rounds as the operators it
// replaces (csrc/search_cell.cpp, csrc/recurrence.cpp). The including file is built by seq2seq/native.py with
// CPU_CAPABILITY_<ISA> (ATen's vector classes for this CPU, as ATen's kernels are built) and -ffp-contract=off
// (a fused multiply-add only where the code asks for one, as std::fma for addcmul). Measured against torch:
// - sigmoid: 1 / (1 + exp(-x)) with Sleef's vector exp, two vectors at a time along a row of the iteration, and
//   std::exp for the row's last n mod (2 x lanes) values, as cpu_kernel_vec walks a row;
// - tanh: MKL's vector function (vmsTanh, high accuracy), which torch.tanh calls on x86 builds; the library is
//   torch's own copy (libtorch_cpu exports it), so where torch has no MKL the module does not load and
//   seq2seq.native falls back to the eager code;
// - exp: MKL's vmsExp (high accuracy), which torch.exp calls (csrc/softmax_fp32.cpp);
// - addcmul(a, b, c) with value 1: fma(b, c, a), one rounding, at every width (ATen's kernel is contracted).
#pragma once

#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <cstdint>

#if defined(__FAST_MATH__)
#error "seq2seq's compiled kernels must be built without -ffast-math: their results are ATen's to the last bit"
#endif

extern "C" void VMSTANH_(const int64_t* n, const float* a, float* r, const int64_t* mode);  // MKL's Fortran entries
extern "C" void VMSEXP_(const int64_t* n, const float* a, float* r, const int64_t* mode);

namespace seq2seq {

using Vec = at::vec::Vectorized<float>;
constexpr int64_t kVmlMode = 0x00000002 | 0x00140000 | 0x00000100;  // VML_HA | VML_FTZDAZ_OFF | VML_ERRMODE_IGNORE

// y = tanh(x) over n values, as torch.tanh computes each (x and y may be the same)
inline void tanh_row(const float* x, float* y, int64_t n) {
  // n is read as MKL_INT: an int64 holding a small count reads the same as an int32 on little-endian x86
  VMSTANH_(&n, x, y, &kVmlMode);
}

// x = exp(x) over n values, as torch.exp computes each
inline void exp_row(float* x, int64_t n) { VMSEXP_(&n, x, x, &kVmlMode); }

inline Vec sigmoid_vec(Vec a) {  // ATen's vectorised sigmoid, operation for operation
  a = Vec(0.f) - a;
  a = a.exp();
  a = a + Vec(1.f);
  return a.reciprocal();
}

// x = sigmoid(x) in place along one row of ATen's iteration: two vectors a turn, the rest scalar
inline void sigmoid_row(float* x, int64_t n) {
  constexpr int64_t lanes = Vec::size();
  int64_t j = 0;
  for (; j <= n - 2 * lanes; j += 2 * lanes) {
    sigmoid_vec(Vec::loadu(x + j)).store(x + j);
    sigmoid_vec(Vec::loadu(x + j + lanes)).store(x + j + lanes);
  }
  for (; j < n; ++j) x[j] = 1.f / (1.f + std::exp(-x[j]));
}

}  // namespace seq2seq
