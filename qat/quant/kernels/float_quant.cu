// Float-format fake quantization (minifloats, MXFP4, NVFP4) with per-output-channel scales:
// forward and fused backward, bit-equal to qat/quant/reference.py (the math: float_math.cuh).
//
// A block runs one row, and each thread a group of consecutive weights at a time: an MX block
// (32), an NV block (16), or one 16-byte vector for a plain minifloat (four a step). A block scale
// needs the group's largest |w/α|, so a thread holds its whole group; a row whose length is not a
// multiple of the group ends on a short group, zero-padded as the reference pads it. The
// backward pass reduces the row's dL/dα in a fixed order (deterministic), as fake_quant.cu does.
// NV's per-tensor scale needs the largest |w/α| of the whole weight first: one extra read pass.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "division.cuh"
#include "float_math.cuh"
#include "float_quant.h"
#include "storage.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace qat_fake_quant {

static_assert(kMinifloat == kFirstFloatFamily, "float_quant.h and float_math.cuh disagree");

namespace {

// Exact IEEE quotients: divide() (a reciprocal and FMA corrections) where it is the correctly
// rounded quotient (a divisor in its fast range, a dividend of 2^-60 <= |x| < 2^61, or ±0,
// which its first estimate x·(1/d) carries exactly), __fdiv_rn elsewhere. Unlike the integer
// family, every last bit of a tiny w/α matters here: a block scale follows the block's largest
// |w/α| down to 2^-127.
struct DeviceDivision {
  using Divisor = qat_fake_quant::Divisor;
  __device__ __forceinline__ static Divisor make(float value) { return make_divisor(value); }
  __device__ __forceinline__ static float quotient(float x, const Divisor& d) {
    const uint32_t magnitude = __float_as_uint(x) & 0x7fffffffu;
    const bool exact = (magnitude >> 23) - 67u <= 120u || magnitude == 0u;
    return (d.fast && exact) ? divide(x, d) : __fdiv_rn(x, d.value);
  }
};

// Weights a thread handles together.
template <typename T, int K>
constexpr int kGroup = K == kMx ? kMxBlock : (K == kNv ? kNvBlock : Storage<T>::kPerVec);

// Loads a group of G weights starting at p, of which n (>= 1) exist; the rest read as 0.
// kVec: the group is whole and 16-byte aligned, and loads as G/kPerVec vectors.
template <typename T, int G, bool kVec>
__device__ __forceinline__ void load_group(const T* p, int64_t n, float (&v)[G]) {
  using S = Storage<T>;
  if constexpr (kVec) {
    const uint4* pv = reinterpret_cast<const uint4*>(p);
#pragma unroll
    for (int k = 0; k < G / S::kPerVec; ++k) {
      float f[S::kPerVec];
      S::unpack(__ldg(pv + k), f);
#pragma unroll
      for (int j = 0; j < S::kPerVec; ++j) v[k * S::kPerVec + j] = f[j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < G; ++j) v[j] = j < n ? S::load(p, j) : 0.f;
  }
}

// Stores the first n of a group's G values at p.
template <typename T, int G, bool kVec>
__device__ __forceinline__ void store_group(T* p, int64_t n, const float (&v)[G]) {
  using S = Storage<T>;
  if constexpr (kVec) {
    uint4* pv = reinterpret_cast<uint4*>(p);
#pragma unroll
    for (int k = 0; k < G / S::kPerVec; ++k) {
      float f[S::kPerVec];
#pragma unroll
      for (int j = 0; j < S::kPerVec; ++j) f[j] = v[k * S::kPerVec + j];
      pv[k] = S::pack(f);
    }
  } else {
#pragma unroll
    for (int j = 0; j < G; ++j) {
      if (j < n) S::store(p, j, v[j]);
    }
  }
}

// Groups a thread loads before it computes: a plain minifloat's group is a single 16-byte vector,
// and one load in flight a thread is too few to keep the memory busy (kUnroll in fake_quant.cu).
// A block-scaled group already loads 2 to 8 vectors.
template <int K>
constexpr int kGroupsPerStep = K == kMinifloat ? 4 : 1;

// A step of a row is the groups base + k·blockDim.x, k < kGroupsPerStep: calls fn(k, group) for
// each of them that lies before groups.
template <int K, typename Fn>
__device__ __forceinline__ void for_each_group(int64_t base, int64_t groups, Fn&& fn) {
#pragma unroll
  for (int k = 0; k < kGroupsPerStep<K>; ++k) {
    const int64_t group = base + int64_t{k} * blockDim.x;
    if (group < groups) fn(k, group);
  }
}

template <typename T, int K, bool kVec>
__global__ void __launch_bounds__(kMaxThreads)
    float_forward_kernel(const T* __restrict__ w, const float* __restrict__ scale,
                         T* __restrict__ out, int64_t cols, const float* __restrict__ tensor_amax,
                         FloatParams p) {
  constexpr int G = kGroup<T, K>;
  const int64_t row = blockIdx.x;
  const T* w_row = w + row * cols;
  T* out_row = out + row * cols;
  const float alpha_value = clamped_scale(scale[row], p.eps);
  const Divisor alpha = make_divisor(alpha_value);
  float per_tensor = 1.f;
  if constexpr (K == kNv) per_tensor = nv_per_tensor(*tensor_amax, p);
  const int64_t groups = (cols + G - 1) / G;
  const int64_t stride = int64_t{blockDim.x} * kGroupsPerStep<K>;
  for (int64_t base = threadIdx.x; base < groups; base += stride) {
    float v[kGroupsPerStep<K>][G];
    for_each_group<K>(base, groups, [&](int k, int64_t group) {
      load_group<T, G, kVec>(w_row + group * G, cols - group * G, v[k]);
    });
    for_each_group<K>(base, groups, [&](int k, int64_t group) {
      forward_group<K, DeviceDivision>(v[k], alpha, alpha_value, per_tensor, p);
      store_group<T, G, kVec>(out_row + group * G, cols - group * G, v[k]);
    });
  }
}

template <typename T, int K, bool kVec>
__global__ void __launch_bounds__(kMaxThreads)
    float_backward_kernel(const T* __restrict__ grad, const T* __restrict__ w,
                          const float* __restrict__ scale, T* __restrict__ grad_w,
                          float* __restrict__ grad_scale, int64_t cols,
                          const float* __restrict__ tensor_amax, FloatParams p,
                          float grad_factor) {
  constexpr int G = kGroup<T, K>;
  const int64_t row = blockIdx.x;
  const T* g_row = grad + row * cols;
  const T* w_row = w + row * cols;
  T* gw_row = grad_w + row * cols;
  const Divisor alpha = make_divisor(clamped_scale(scale[row], p.eps));
  float per_tensor = 1.f;
  if constexpr (K == kNv) per_tensor = nv_per_tensor(*tensor_amax, p);
  const int64_t groups = (cols + G - 1) / G;
  const int64_t stride = int64_t{blockDim.x} * kGroupsPerStep<K>;
  float acc = 0.f;
  for (int64_t base = threadIdx.x; base < groups; base += stride) {
    float u[kGroupsPerStep<K>][G];
    float g[kGroupsPerStep<K>][G];
    for_each_group<K>(base, groups, [&](int k, int64_t group) {
      load_group<T, G, kVec>(w_row + group * G, cols - group * G, u[k]);
      load_group<T, G, kVec>(g_row + group * G, cols - group * G, g[k]);
    });
    for_each_group<K>(base, groups, [&](int k, int64_t group) {
#pragma unroll
      for (int j = 0; j < G; ++j) u[k][j] = DeviceDivision::quotient(u[k][j], alpha);
      backward_group<K, DeviceDivision>(u[k], g[k], per_tensor, p, acc);
      store_group<T, G, kVec>(gw_row + group * G, cols - group * G, g[k]);
    });
  }
  const float total = block_sum(acc);
  if (threadIdx.x == 0) grad_scale[row] = __fmul_rn(total, grad_factor);
}

// The largest value over the block, valid in thread 0. blockDim.x is a multiple of 32.
__device__ __forceinline__ uint32_t block_max(uint32_t v) {
  __shared__ uint32_t warp_maxes[kMaxThreads / 32];
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  if (lane == 0) warp_maxes[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x >> 5) ? warp_maxes[lane] : 0u;
    for (int offset = 16; offset > 0; offset >>= 1) {
      v = max(v, __shfl_xor_sync(0xffffffffu, v, offset));
    }
  }
  return v;
}

// NV's amax(|w/α|) over the whole weight into *amax_bits (0 before the launch), a block a row.
// Division by α > 0 is monotone, so a row's largest |w|/α is the largest of its quotients, and
// non-negative floats order as their bit patterns (a NaN above all, as torch's amax keeps it).
template <typename T, bool kVec>
__global__ void __launch_bounds__(kMaxThreads)
    weight_amax_kernel(const T* __restrict__ w, const float* __restrict__ scale, int64_t cols,
                       float eps, uint32_t* __restrict__ amax_bits) {
  using S = Storage<T>;
  const int64_t row = blockIdx.x;
  const T* w_row = w + row * cols;
  uint32_t m = 0;
  if constexpr (kVec) {
    const uint4* wv = reinterpret_cast<const uint4*>(w_row);
    for (int64_t i = threadIdx.x; i < cols / S::kPerVec; i += blockDim.x) {
      float f[S::kPerVec];
      S::unpack(__ldg(wv + i), f);
#pragma unroll
      for (int j = 0; j < S::kPerVec; ++j) m = max(m, __float_as_uint(f[j]) & 0x7fffffffu);
    }
  } else {
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
      m = max(m, __float_as_uint(S::load(w_row, i)) & 0x7fffffffu);
    }
  }
  m = block_max(m);
  if (threadIdx.x == 0) {
    const float largest = __fdiv_rn(__uint_as_float(m), clamped_scale(scale[row], eps));
    atomicMax(amax_bits, __float_as_uint(largest));
  }
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Whole warps, enough for `per_thread` groups a thread, at most kMaxThreads.
int threads_for_groups(int64_t groups, int per_thread = 1) {
  const int64_t warps = ((groups + per_thread - 1) / per_thread + 31) / 32;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(warps, 1) * 32, kMaxThreads));
}

FloatParams make_float_params(int64_t kind, const std::vector<double>& v) {
  TORCH_CHECK(v.size() == 5, "qat fake_quant: a float format takes 5 parameters (man_bits, "
              "min_normal_exp, max_normal, block_size, eps), got ", v.size());
  const int64_t block = static_cast<int64_t>(v[3]);
  const int64_t expected = kind == kMx ? kMxBlock : (kind == kNv ? kNvBlock : 0);
  TORCH_CHECK(block == expected, "qat fake_quant: float family ", kind, " needs block_size ",
              expected, ", got ", block);
  return float_params(v.data());
}

template <typename Fn>
void by_kind(int64_t kind, Fn&& fn) {
  switch (kind) {
    case kMinifloat: fn(std::integral_constant<int, kMinifloat>{}); break;
    case kMx: fn(std::integral_constant<int, kMx>{}); break;
    case kNv: fn(std::integral_constant<int, kNv>{}); break;
    default: TORCH_CHECK(false, "qat fake_quant: unknown float family code ", kind);
  }
}

// Calls fn with a null pointer of w's storage type: float, or uint16_t for bf16's raw bits.
template <typename Fn>
void by_storage(const at::Tensor& w, Fn&& fn) {
  if (w.scalar_type() == at::kFloat) {
    fn(static_cast<float*>(nullptr));
  } else {
    fn(static_cast<uint16_t*>(nullptr));
  }
}

template <typename T>
T* data_of(const at::Tensor& t) {
  return reinterpret_cast<T*>(t.data_ptr());
}

// NV's largest |w/α| over the weight, as a one-element float tensor on w's device.
at::Tensor weight_amax(const at::Tensor& w, const at::Tensor& scale, float eps,
                       cudaStream_t stream) {
  at::Tensor amax = at::zeros({1}, w.options().dtype(at::kFloat));
  const int64_t rows = w.size(0), cols = w.size(1);
  uint32_t* out = reinterpret_cast<uint32_t*>(amax.data_ptr<float>());
  by_storage(w, [&](auto* tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    constexpr int kPerVec = Storage<T>::kPerVec;
    const T* w_ptr = data_of<T>(w);
    if (cols % kPerVec == 0 && aligned16(w_ptr)) {
      weight_amax_kernel<T, true><<<static_cast<unsigned>(rows),
                                    threads_for_groups(cols / kPerVec), 0, stream>>>(
          w_ptr, scale.data_ptr<float>(), cols, eps, out);
    } else {
      weight_amax_kernel<T, false><<<static_cast<unsigned>(rows), threads_for_groups(cols), 0,
                                     stream>>>(w_ptr, scale.data_ptr<float>(), cols, eps, out);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return amax;
}

}  // namespace

at::Tensor float_forward(const at::Tensor& w, const at::Tensor& scale, int64_t kind,
                         const std::vector<double>& params, cudaStream_t stream) {
  const FloatParams p = make_float_params(kind, params);
  at::Tensor out = at::empty(w.sizes(), w.options());
  if (w.numel() == 0) return out;
  const int64_t rows = w.size(0), cols = w.size(1);
  const at::Tensor amax = kind == kNv ? weight_amax(w, scale, p.eps, stream) : at::Tensor();
  const float* amax_ptr = kind == kNv ? amax.data_ptr<float>() : nullptr;
  by_kind(kind, [&](auto k) {
    constexpr int K = decltype(k)::value;
    by_storage(w, [&](auto* tag) {
      using T = std::remove_pointer_t<decltype(tag)>;
      constexpr int G = kGroup<T, K>;
      const T* w_ptr = data_of<T>(w);
      T* out_ptr = data_of<T>(out);
      const int threads = threads_for_groups((cols + G - 1) / G, kGroupsPerStep<K>);
      const dim3 grid(static_cast<unsigned>(rows));
      if (cols % G == 0 && aligned16(w_ptr) && aligned16(out_ptr)) {
        float_forward_kernel<T, K, true><<<grid, threads, 0, stream>>>(
            w_ptr, scale.data_ptr<float>(), out_ptr, cols, amax_ptr, p);
      } else {
        float_forward_kernel<T, K, false><<<grid, threads, 0, stream>>>(
            w_ptr, scale.data_ptr<float>(), out_ptr, cols, amax_ptr, p);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> float_backward(const at::Tensor& grad, const at::Tensor& w,
                                                  const at::Tensor& scale,
                                                  const at::Tensor& scale_in, int64_t kind,
                                                  const std::vector<double>& params,
                                                  cudaStream_t stream) {
  const FloatParams p = make_float_params(kind, params);
  at::Tensor grad_w = at::empty(w.sizes(), w.options());
  // Every row is written by the kernel, except for a weight with no columns, whose sums are 0.
  at::Tensor grad_scale = w.numel() > 0 ? at::empty(scale_in.sizes(), scale.options())
                                        : at::zeros(scale_in.sizes(), scale.options());
  if (w.numel() > 0) {
    const int64_t rows = w.size(0), cols = w.size(1);
    // LSQ's 1/sqrt(numel·Qp), Qp = max_normal, in double as Python computes it, then one
    // rounding to float (torch converts the Python number so before multiplying).
    const float grad_factor =
        static_cast<float>(1.0 / std::sqrt(static_cast<double>(w.numel()) * params[2]));
    const at::Tensor amax = kind == kNv ? weight_amax(w, scale, p.eps, stream) : at::Tensor();
    const float* amax_ptr = kind == kNv ? amax.data_ptr<float>() : nullptr;
    by_kind(kind, [&](auto k) {
      constexpr int K = decltype(k)::value;
      by_storage(w, [&](auto* tag) {
        using T = std::remove_pointer_t<decltype(tag)>;
        constexpr int G = kGroup<T, K>;
        const T* g_ptr = data_of<T>(grad);
        const T* w_ptr = data_of<T>(w);
        T* gw_ptr = data_of<T>(grad_w);
        float* gs_ptr = grad_scale.data_ptr<float>();
        const int threads = threads_for_groups((cols + G - 1) / G, kGroupsPerStep<K>);
        const dim3 grid(static_cast<unsigned>(rows));
        if (cols % G == 0 && aligned16(g_ptr) && aligned16(w_ptr) && aligned16(gw_ptr)) {
          float_backward_kernel<T, K, true><<<grid, threads, 0, stream>>>(
              g_ptr, w_ptr, scale.data_ptr<float>(), gw_ptr, gs_ptr, cols, amax_ptr, p,
              grad_factor);
        } else {
          float_backward_kernel<T, K, false><<<grid, threads, 0, stream>>>(
              g_ptr, w_ptr, scale.data_ptr<float>(), gw_ptr, gs_ptr, cols, amax_ptr, p,
              grad_factor);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
    });
  }
  return {grad_w, grad_scale.to(scale_in.scalar_type())};
}

}  // namespace qat_fake_quant
