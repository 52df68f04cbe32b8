// Weight storage (fp32, or bf16 carried as raw bits) and the block-wide sum, shared by the
// integer-family kernels (fake_quant.cu) and the float-format ones (float_quant.cu).

#pragma once

#include <cuda_bf16.h>

#include <cstdint>

namespace qat_fake_quant {

// The most threads a block of any fake-quant kernel runs (block_sum's scratch is sized by it).
constexpr int kMaxThreads = 256;

// Element access for the two storage types: float, and bf16 held as uint16_t bits.
template <typename T>
struct Storage;

template <>
struct Storage<float> {
  static constexpr int kPerVec = 4;
  __device__ static float load(const float* p, int64_t i) { return p[i]; }
  __device__ static void store(float* p, int64_t i, float v) { p[i] = v; }
  __device__ static void unpack(const uint4& r, float (&f)[kPerVec]) {
    f[0] = __uint_as_float(r.x);
    f[1] = __uint_as_float(r.y);
    f[2] = __uint_as_float(r.z);
    f[3] = __uint_as_float(r.w);
  }
  __device__ static uint4 pack(const float (&f)[kPerVec]) {
    return make_uint4(__float_as_uint(f[0]), __float_as_uint(f[1]), __float_as_uint(f[2]),
                      __float_as_uint(f[3]));
  }
};

__device__ __forceinline__ uint32_t bf16_bits(float v) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(v));
}

template <>
struct Storage<uint16_t> {
  static constexpr int kPerVec = 8;
  // bf16 is the top half of an fp32, so widening is a shift and exact.
  __device__ static float load(const uint16_t* p, int64_t i) {
    return __uint_as_float(static_cast<uint32_t>(p[i]) << 16);
  }
  __device__ static void store(uint16_t* p, int64_t i, float v) {
    p[i] = static_cast<uint16_t>(bf16_bits(v));
  }
  __device__ static void unpack_word(uint32_t x, float& lo, float& hi) {
    lo = __uint_as_float(x << 16);  // little endian: the lower address is the low half
    hi = __uint_as_float(x & 0xffff0000u);
  }
  __device__ static void unpack(const uint4& r, float (&f)[kPerVec]) {
    unpack_word(r.x, f[0], f[1]);
    unpack_word(r.y, f[2], f[3]);
    unpack_word(r.z, f[4], f[5]);
    unpack_word(r.w, f[6], f[7]);
  }
  __device__ static uint32_t pack_word(float lo, float hi) {
    return bf16_bits(lo) | (bf16_bits(hi) << 16);
  }
  __device__ static uint4 pack(const float (&f)[kPerVec]) {
    return make_uint4(pack_word(f[0], f[1]), pack_word(f[2], f[3]), pack_word(f[4], f[5]),
                      pack_word(f[6], f[7]));
  }
};

// Sum over the block; the result is valid in thread 0. blockDim.x is a multiple of 32.
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float warp_sums[kMaxThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? warp_sums[lane] : 0.f;
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  }
  return v;
}

}  // namespace qat_fake_quant
