// 16 floats in registers, a fast exp over them, bf16 <-> float conversions and the softmax's row passes, for the
// compiled kernels' row loops (csrc/softmax_loss.cpp, csrc/search_cell.cpp's bf16 search functions). Lanes is GCC's
// vector extension: one AVX-512 register, two AVX2 ones, so a loop that keeps its running maxima and sums in a
// Lanes keeps them in registers, where arrays of 16 were stored and reloaded at every step. Functions come for
// float and for Lanes, lane by lane the same arithmetic.
//
// exp_approx is Cephes' single-precision polynomial (about 1 ulp); sigmoid_approx and tanh_approx are built on it
// (within ~2e-7 of torch's). They are not ATen's functions: the kernels that must round as ATen does use
// csrc/aten_arithmetic.h instead.
#pragma once

#include <cstdint>
#include <cstring>
#include <limits>

namespace seq2seq::lanes {

constexpr int64_t kLanes = 16;  // one AVX-512 register of floats

typedef float Lanes __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t LaneInts __attribute__((vector_size(kLanes * sizeof(int32_t))));
typedef uint32_t LaneWords __attribute__((vector_size(kLanes * sizeof(uint32_t))));
typedef uint16_t LaneHalves __attribute__((vector_size(kLanes * sizeof(uint16_t))));

template <typename To, typename From>
inline To bits_as(const From& from) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To to;
  std::memcpy(&to, &from, sizeof to);
  return to;
}

template <typename T>
inline T load_from(const void* address) {  // at any alignment
  T value;
  std::memcpy(&value, address, sizeof value);
  return value;
}

inline Lanes load(const float* x) { return load_from<Lanes>(x); }
inline void store(Lanes value, float* x) { std::memcpy(x, &value, sizeof value); }
inline int32_t to_int(float x) { return static_cast<int32_t>(x); }
inline LaneInts to_int(Lanes x) { return __builtin_convertvector(x, LaneInts); }
inline float splat(float c, float) { return c; }
inline Lanes splat(float c, Lanes) { return Lanes{} + c; }
inline float larger(float a, float b) { return a > b ? a : b; }
inline Lanes larger(Lanes a, Lanes b) { return a > b ? a : b; }

template <typename T>
inline T exp_approx(T x) {  // Cephes expf: e^x = 2^n e^r, |r| <= ln 2 / 2
  x = larger(x, splat(-87.0f, x));
  x = x > 88.0f ? splat(88.0f, x) : x;
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const T n = (x * 1.44269504088896341f + magic) - magic;
  const T r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  T p = splat(1.9875691500e-4f, x);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_as<T>((to_int(n) + 127) << 23);
}

template <typename T>
inline T sigmoid_approx(T x) { return 1.0f / (1.0f + exp_approx(-x)); }

template <typename T>
inline T tanh_approx(T x) { return 1.0f - 2.0f / (exp_approx(2.0f * x) + 1.0f); }  // +-1 at the clamp, exactly

// bf16 <-> float: a bf16 value is a float's upper 16 bits
inline float widen(uint16_t bits) { return bits_as<float>(static_cast<uint32_t>(bits) << 16); }

inline Lanes widen(const uint16_t* bits) {  // 16 bf16 values at bits
  return bits_as<Lanes>(__builtin_convertvector(load_from<LaneHalves>(bits), LaneWords) << 16);
}

inline uint16_t narrow(float f) {  // round to nearest even, as torch's float -> bfloat16 cast (finite inputs)
  const uint32_t u = bits_as<uint32_t>(f);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline void narrow(Lanes f, uint16_t* out) {  // 16 values, rounded as above, to out
  const LaneWords u = bits_as<LaneWords>(f);
  const LaneHalves h = __builtin_convertvector((u + 0x7fffu + ((u >> 16) & 1u)) >> 16, LaneHalves);
  std::memcpy(out, &h, sizeof h);
}

inline float lane_sum(Lanes x) {  // lane 0 + lane 1 + ... in order
  float sum = x[0];
  for (int64_t k = 1; k < kLanes; ++k) sum += x[k];
  return sum;
}

// z = row + b (fp32, into z); returns the row's peak and its sum, over 16 lanes then across them.
inline void widen_row(const uint16_t* row, const float* b, float* z, int64_t v, float& row_peak, float& row_sum) {
  const int64_t full = v - v % kLanes;
  Lanes peak = splat(-std::numeric_limits<float>::max(), Lanes{}), sum_z = Lanes{};
  for (int64_t j = 0; j < full; j += kLanes) {
    const Lanes zj = widen(row + j) + load(b + j);
    store(zj, z + j);
    peak = larger(zj, peak);
    sum_z += zj;
  }
  for (int64_t j = full; j < v; ++j) {  // the last V mod 16 columns
    z[j] = widen(row[j]) + b[j];
    peak[j - full] = larger(z[j], peak[j - full]);
    sum_z[j - full] += z[j];
  }
  row_peak = peak[0], row_sum = lane_sum(sum_z);
  for (int64_t k = 1; k < kLanes; ++k) row_peak = larger(peak[k], row_peak);
}

// sum_j exp(z_j - peak), over 16 lanes then across them; with kKeep each z_j is replaced by its exp(z_j - peak).
template <bool kKeep>
inline float sum_exp(float* z, int64_t v, float row_peak) {
  const int64_t full = v - v % kLanes;
  Lanes total = Lanes{};
  for (int64_t j = 0; j < full; j += kLanes) {
    const Lanes e = exp_approx(load(z + j) - row_peak);
    if (kKeep) store(e, z + j);
    total += e;
  }
  for (int64_t j = full; j < v; ++j) {
    const float e = exp_approx(z[j] - row_peak);
    if (kKeep) z[j] = e;
    total[j - full] += e;
  }
  return lane_sum(total);
}

}  // namespace seq2seq::lanes
