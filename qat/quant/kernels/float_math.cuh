// Float-format fake quantization of one group of consecutive weights of a row: a minifloat
// element (OCP FP4/FP6/FP8), optionally block-scaled (MX: a power-of-two scale per 32 weights;
// NV: an e4m3 scale per 16 weights times a per-tensor scale). Shared by the CUDA kernels
// (float_quant.cu) and the CPU harness of their tests, which compiles this header as plain C++
// with -ffp-contract=off, so the same lines are checked on a machine without a GPU.
//
// The math must match qat/quant/minifloat.py, block_scaled.py and reference.py bit for bit, so
// each rounding of the reference is one IEEE-rounded operation here, in the reference's order:
// mul_rn/sub_rn/div_rn are single roundings that nvcc never contracts into an FMA, and
// round_even rounds half to even as torch.round does. How w/α and u/s are divided is the
// caller's Division (exact IEEE quotients on both sides).

#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define QAT_FLOAT_MATH __device__ __forceinline__
#else
#define QAT_FLOAT_MATH inline
#endif

namespace qat_fake_quant {

// Family codes of the float formats, after the integer ones of fake_quant.cu (0-2).
enum FloatKind : int64_t { kMinifloat = 3, kMx = 4, kNv = 5 };
constexpr int kMxBlock = 32;  // OCP MX v1.0
constexpr int kNvBlock = 16;  // NVFP4

// One minifloat: mantissa bits, the exponent of its smallest normal (subnormals share it) and
// its largest finite value.
struct ElementSpec {
  int man_bits;
  int min_exp;
  float max_normal;
};

struct FloatParams {
  ElementSpec element;
  int emax;              // MX: floor(log2(max_normal)), the element's top exponent (2 for e2m1)
  float eps;             // the per-channel scale α is clamped to at least this
  float nv_denominator;  // NV: max_normal·448; s_t = amax(tensor)/nv_denominator, a true
                         // division (the reference divides by a tensor: no reciprocal on CUDA)
};

// The parameters [man_bits, min_normal_exp, max_normal, block_size, eps] of
// qat.quant.kernels.op.format_params for a float format.
inline FloatParams float_params(const double* v) {
  const float max_normal = static_cast<float>(v[2]);
  int exponent = 0;
  std::frexp(v[2], &exponent);  // max_normal = m·2^exponent, m in [0.5, 1)
  // Python computes max_normal·448 in double; torch converts it to float.
  const float denominator = static_cast<float>(v[2] * 448.0);
  return FloatParams{ElementSpec{static_cast<int>(v[0]), static_cast<int>(v[1]), max_normal},
                     exponent - 1,
                     static_cast<float>(v[4]),
                     denominator};
}

QAT_FLOAT_MATH uint32_t float_bits(float x) {
#if defined(__CUDACC__)
  return __float_as_uint(x);
#else
  uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
#endif
}

QAT_FLOAT_MATH float bits_float(uint32_t b) {
#if defined(__CUDACC__)
  return __uint_as_float(b);
#else
  float x;
  std::memcpy(&x, &b, sizeof x);
  return x;
#endif
}

QAT_FLOAT_MATH float mul_rn(float a, float b) {
#if defined(__CUDACC__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

QAT_FLOAT_MATH float sub_rn(float a, float b) {
#if defined(__CUDACC__)
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}

QAT_FLOAT_MATH float div_rn(float a, float b) {
#if defined(__CUDACC__)
  return __fdiv_rn(a, b);
#else
  return a / b;
#endif
}

QAT_FLOAT_MATH float fma_rn(float a, float b, float c) {
#if defined(__CUDACC__)
  return __fmaf_rn(a, b, c);
#else
  return std::fma(a, b, c);
#endif
}

// Half to even, as torch.round (rintf and nearbyint round in the current mode, to nearest-even).
QAT_FLOAT_MATH float round_even(float x) {
#if defined(__CUDACC__)
  return rintf(x);
#else
  return std::nearbyint(x);
#endif
}

// NV stores its block scales in FP8 e4m3 (a function: device code cannot take a host constant).
QAT_FLOAT_MATH ElementSpec e4m3() { return ElementSpec{3, -6, 448.f}; }

QAT_FLOAT_MATH float infinity() { return bits_float(0x7f800000u); }

// Comparisons rather than fminf/fmaxf, so a NaN propagates as torch.clamp does.
QAT_FLOAT_MATH float clamped_scale(float s, float eps) { return s < eps ? eps : s; }

// 2^k exactly, for -149 <= k <= 127 (subnormal below -126).
QAT_FLOAT_MATH float exp2i(int k) {
  return k >= -126 ? bits_float(static_cast<uint32_t>(k + 127) << 23)
                   : bits_float(1u << (k + 149));
}

// floor(log2(mag)) of a normal mag >= 0, as frexp's exponent − 1; -127 for zero and subnormals,
// where every caller clamps to a larger exponent anyway (an element's smallest normal exponent,
// or E8M0's −127 after subtracting emax), so their true exponent never matters.
QAT_FLOAT_MATH int floor_log2(float mag) {
  return static_cast<int>((float_bits(mag) >> 23) & 0xffu) - 127;
}

// minifloat.round_to_grid: the nearest value of the element (ties to even), saturated at
// ±max_normal, with v's sign (also on a zero). The step of v's binade is a power of two, so
// mag/step is exact and equals mag·(1/step), and round(mag/step)·step is exact too.
QAT_FLOAT_MATH float round_to_grid(float v, const ElementSpec& e) {
  const float mag = fabsf(v);
  int binade = floor_log2(mag);
  binade = binade < e.min_exp ? e.min_exp : binade;
  const float steps = mul_rn(mag, exp2i(e.man_bits - binade));
  float q = mul_rn(round_even(steps), exp2i(binade - e.man_bits));
  q = q > e.max_normal ? e.max_normal : q;
  return copysignf(q, v);
}

// The largest |u| of a group (its zero padding changes nothing); NaN if any is NaN, as amax.
template <int G>
QAT_FLOAT_MATH float group_amax(const float (&u)[G]) {
  float m = 0.f;
#pragma unroll
  for (int j = 0; j < G; ++j) {
    const float a = fabsf(u[j]);
    m = (a > m || a != a) ? a : m;
  }
  return m;
}

// NV's per-tensor scale s_t from the largest |u| of the whole weight; 1 for an all-zero weight.
QAT_FLOAT_MATH float nv_per_tensor(float tensor_amax, const FloatParams& p) {
  if (!(tensor_amax > 0.f)) return 1.f;
  return div_rn(tensor_amax, p.nv_denominator);
}

// A group's block scale s (1 for a plain minifloat), and for MX its exact inverse. For NV, s is
// s_t·e4m3(amax/(max_normal·s_t)), 0 when the e4m3 scale underflowed (the block is all zeros).
template <class Division>
struct GroupScale {
  float s;
  float inverse;                       // MX: 2^-k for s = 2^k
  typename Division::Divisor divisor;  // NV: s as a divisor
};

template <int K, class Division, int G>
QAT_FLOAT_MATH GroupScale<Division> group_scale(const float (&u)[G], float per_tensor,
                                                const FloatParams& p) {
  if constexpr (K == kMinifloat) {
    return GroupScale<Division>{1.f, 1.f, Division::make(1.f)};
  } else if constexpr (K == kMx) {
    const float amax = group_amax(u);
    // 2^(floor(log2 amax) − emax), the exponent clamped to E8M0's [−127, 127]; 1 when all zero.
    int k = 0;
    if (amax > 0.f) {
      k = floor_log2(amax) - p.emax;
      k = k < -127 ? -127 : (k > 127 ? 127 : k);
    }
    return GroupScale<Division>{exp2i(k), exp2i(-k), Division::make(1.f)};
  } else {
    const float amax = group_amax(u);
    const float top = mul_rn(p.element.max_normal, per_tensor);
    const float s = mul_rn(per_tensor, round_to_grid(div_rn(amax, top), e4m3()));
    return GroupScale<Division>{s, 1.f, Division::make(s > 0.f ? s : 1.f)};
  }
}

// q(u) in units of α: s·element(u/s). u/s is exact for MX (s a power of two, so a multiply by
// its inverse) and the IEEE quotient for NV. Where an NV scale is not positive the reference's
// element is +0, so q = s·0: +0 for a zero scale, NaN for a NaN one.
template <int K, class Division>
QAT_FLOAT_MATH float project(float u, const GroupScale<Division>& sc, const FloatParams& p) {
  if constexpr (K == kMinifloat) {
    return round_to_grid(u, p.element);
  } else if constexpr (K == kMx) {
    return mul_rn(sc.s, round_to_grid(mul_rn(u, sc.inverse), p.element));
  } else {
    return mul_rn(sc.s, sc.s > 0.f ? round_to_grid(Division::quotient(u, sc.divisor), p.element)
                                   : 0.f);
  }
}

// The forward pass of one group in place: w in, ŵ = α·q(w/α) out (zero padding included).
template <int K, class Division, int G>
QAT_FLOAT_MATH void forward_group(float (&v)[G], const typename Division::Divisor& alpha,
                                  float alpha_value, float per_tensor, const FloatParams& p) {
#pragma unroll
  for (int j = 0; j < G; ++j) v[j] = Division::quotient(v[j], alpha);
  const GroupScale<Division> sc = group_scale<K, Division>(v, per_tensor, p);
#pragma unroll
  for (int j = 0; j < G; ++j) v[j] = mul_rn(alpha_value, project<K, Division>(v[j], sc, p));
}

// The backward pass of one group: u is w/α on entry (overwritten), g is dL/dŵ in and dL/dw out
// (the STE with the clip mask), and each weight's term dq·g of the row's dL/dα sum is added to
// acc. Clipped weights sit at ±max_normal (minifloats) or ±s·max_normal (block-scaled), which is
// their dq; inside, dq = q − u (the rounding and the block scale pass straight through).
template <int K, class Division, int G>
QAT_FLOAT_MATH void backward_group(float (&u)[G], float (&g)[G], float per_tensor,
                                   const FloatParams& p, float& acc) {
  const GroupScale<Division> sc = group_scale<K, Division>(u, per_tensor, p);
  float hi = p.element.max_normal;
  if constexpr (K != kMinifloat) hi = sc.s > 0.f ? mul_rn(sc.s, p.element.max_normal) : infinity();
  const float lo = -hi;
#pragma unroll
  for (int j = 0; j < G; ++j) {
    const bool small = u[j] < lo;
    const bool big = u[j] > hi;
    const float dq = small ? lo : (big ? hi : sub_rn(project<K, Division>(u[j], sc, p), u[j]));
    acc = fma_rn(dq, g[j], acc);
    g[j] = (small || big) ? 0.f : g[j];
  }
}

}  // namespace qat_fake_quant
