// w/α without a division instruction, bit-exact with the IEEE quotient wherever the result of
// fake quantization depends on it. Shared by fake_quant.cu and its GPU test, which checks the
// reciprocal against the correctly rounded one for every divisor of the fast range.

#pragma once

#include <cstdint>

namespace qat_fake_quant {

// A row's divisor α with y = RN(1/α), so that w/α costs a multiply and four FMAs instead of
// div.rn's reciprocal, Newton steps and per-element range check with its slow-path call.
struct Divisor {
  float value;
  float inverse;  // RN(1/value) when fast
  bool fast;      // value inside the range where divide() below is exact
};

// The reciprocal is the approximate one (MUFU.RCP) and one Newton step: the sequence nvcc 13
// emits for __frcp_rn on a divisor with a normal reciprocal, without its range check and the
// slow-path call behind it. That call site, with a row's first loads already in flight (they
// are issued before α arrives), held the bf16 backward at 70 registers instead of 64. The GPU
// test checks the result against RN(1/α) for every float of the fast range.
__device__ __forceinline__ Divisor make_divisor(float value) {
  float y;
  asm("rcp.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(value));
  y = __fmaf_rn(y, -__fmaf_rn(y, value, -1.f), y);
  // 2^-17 .. 2^20 holds every scale above SCALE_EPS = 1e-5 that training produces.
  return Divisor{value, y, value >= 0x1p-17f && value <= 0x1p20f};
}

// x/d for a divisor in the fast range. For 2^-60 <= |x| < 2^61 this is RN(x/d) bit for bit:
// q0 = RN(x·y) is within 1.5 ulp of x/d, one correction with the exact FMA residual brings it
// within 1 ulp, and then Markstein's theorem (y = RN(1/d), q within 1 ulp of x/d, residual
// exact) makes the second correction the correctly rounded quotient. Outside that range (zero,
// subnormal, huge, inf, NaN) it is q0 itself, which may be an ulp off, but there |x/d| is below
// 2^-43 or above 2^40 (or 0, inf or NaN, which q0 carries exactly): every rounding and clipping
// decision comes out as with the IEEE quotient, so ŵ and dL/dw stay bit-exact, and only dL/dα's
// row sum, compared within fp32 tolerance, can see the last-place difference of a weight below
// 2^-60. A select rather than a branch to __fdiv_rn: that fallback's call site at every element
// held the bf16 backward at 69 registers (64 without: 8 blocks of 128 threads a multiprocessor
// instead of 7), and that pass was 4-20% slower (H200, 4096² to 32768×8192).
__device__ __forceinline__ float divide(float x, const Divisor& d) {
  const uint32_t exponent = (__float_as_uint(x) >> 23) & 0xffu;
  const float q0 = __fmul_rn(x, d.inverse);
  const float q1 = __fmaf_rn(__fmaf_rn(-q0, d.value, x), d.inverse, q0);
  const float q2 = __fmaf_rn(__fmaf_rn(-q1, d.value, x), d.inverse, q1);
  return exponent - 67u <= 120u ? q2 : q0;
}

}  // namespace qat_fake_quant
