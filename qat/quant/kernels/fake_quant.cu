// ParetoQ-family fake quantization with per-output-channel scales: forward and fused backward.
//
// The forward pass reads each weight and its row's scale and writes the quantized weight, a
// block per segment of a row. The backward pass, a block per row, reads w and dL/dŵ once,
// writes dL/dw and reduces the row's scale-gradient contribution in fp32 inside the block
// (fixed order, so deterministic).
//
// The math must match qat/quant/reference.py bit for bit, so every rounding step of the
// reference is one IEEE-rounded operation here: __fmul_rn/__fadd_rn/__fsub_rn keep nvcc from
// contracting a multiply and an add into one FMA (a single rounding instead of two) and are
// exact whatever fast-math flags the build adds. w/α is the IEEE quotient wherever it can
// change a result, computed without a division (divide() in division.cuh). Weights are fp32
// or bf16; bf16 is carried as its 16 raw bits so the conversions are explicit.

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>

#include "division.cuh"
#include "float_quant.h"
#include "storage.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>
#include <type_traits>
#include <vector>

namespace qat_fake_quant {
namespace {

enum Family : int64_t { kBinary = 0, kSeq = 1, kLsq = 2 };

// Each thread loads kUnroll 16-byte vectors per tensor before the first use, so several loads
// are in flight. Measured on the H100 (bf16 forward+backward, 32768×8192): 4 vectors and up to
// 256 threads a row ran at 2,960 GB/s, 1 vector and up to 1024 threads at 2,415. Evict-first
// hints (__stcs/__ldcs) on the outputs and on dL/dŵ were slower too, and on an H200
// __ldcs on the backward's loads lost 3-6% from 8192×4096 up.
constexpr int kUnroll = 4;
// The forward pass cuts rows into segments of one step of this many threads (1,024 bf16 or 512
// fp32 columns). H200, bf16 4 bits, forward alone: 4096² 19.5 µs against 20.3 for a whole row
// a block, 32768×8192 258.9 against 261.9; 64 threads a segment was between the two.
constexpr int kSegmentThreads = 32;

struct Params {
  float n;      // SEQ stretch
  float shift;  // SEQ shift
  float qn;     // clip level below, in units of α (scale gradient of clipped weights)
  float qp;     // clip level above
  float lo;     // u range where the STE passes the weight gradient (and SEQ's clamp)
  float hi;
  float eps;    // the scale is clamped to at least this
  float inv_n;  // 1/n, for SEQ's scale gradient only
};

// Comparisons rather than fminf/fmaxf, so a NaN propagates as torch.clamp does.
__device__ __forceinline__ float clampf(float x, float lo, float hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

__device__ __forceinline__ float clamp_scale(float s, float eps) { return s < eps ? eps : s; }

// How a row divides by α (and, for SEQ, by n): divide() when the divisors are in the fast range
// (every row in training), and __fdiv_rn otherwise, chosen once per row so the branch is
// uniform across the block.
enum Division : int { kIeee = 0, kFast = 1 };

template <int D>
__device__ __forceinline__ float quotient(float x, const Divisor& d) {
  if constexpr (D == kFast) {
    return divide(x, d);
  } else {
    return __fdiv_rn(x, d.value);
  }
}

// SEQ's round(clamp(u)·n − shift) + shift, which q divides by n.
__device__ __forceinline__ float seq_level(float u, const Params& p) {
  return __fadd_rn(rintf(__fsub_rn(__fmul_rn(clampf(u, p.lo, p.hi), p.n), p.shift)), p.shift);
}

template <int F, int D>
__device__ __forceinline__ float project(float w, float u, const Divisor& stretch,
                                         const Params& p) {
  if constexpr (F == kBinary) {
    // sign from w (not u, which may underflow to -0.0) with sign(0) = +1.
    return w >= 0.f ? 1.f : -1.f;
  } else if constexpr (F == kSeq) {
    const float level = seq_level(u, p);
    if constexpr (D == kFast) {
      // A level is an integer plus the shift, 0 or 1/2 in every SEQ format: 0 or at least 1/2
      // in magnitude, where divide() is the IEEE quotient.
      return divide(level, stretch);
    } else {
      // A zero dividend sends __fdiv_rn to its slow path, and ternary maps most weights to 0:
      // 0/n is 0 with the dividend's sign (n > 0), so return it as is.
      return level == 0.f ? level : __fdiv_rn(level, p.n);
    }
  } else {
    return clampf(rintf(u), p.qn, p.qp);  // rintf rounds half to even, like torch.round
  }
}

// stretch is SEQ's n as a Divisor; the other families ignore it.
template <int F, int D>
__device__ __forceinline__ float forward_one(float w, const Divisor& alpha,
                                             const Divisor& stretch, const Params& p) {
  return __fmul_rn(alpha.value, project<F, D>(w, quotient<D>(w, alpha), stretch, p));
}

// Returns dL/dw for one weight and adds its term of the row's dL/dα sum to acc.
template <int F, int D>
__device__ __forceinline__ float backward_one(float w, float g, const Divisor& alpha,
                                              const Params& p, float& acc) {
  const float u = quotient<D>(w, alpha);
  const bool small = u < p.lo;
  const bool big = u > p.hi;
  float dq;
  if constexpr (F == kBinary) {
    dq = w >= 0.f ? 1.f : -1.f;  // ŵ = α·sign(w): dŵ/dα = sign(w) everywhere
  } else if constexpr (F == kSeq) {
    // dq only feeds the row sum for dL/dα, which matches within fp32 summation tolerance, so
    // q may be one ulp off: a multiply by 1/n saves SEQ's second division here.
    dq = small ? p.qn : (big ? p.qp : fmaf(seq_level(u, p), p.inv_n, -u));
  } else {
    dq = small ? p.qn : (big ? p.qp : __fsub_rn(clampf(rintf(u), p.qn, p.qp), u));
  }
  acc = fmaf(dq, g, acc);
  return (small || big) ? 0.f : g;
}

// A step of a row is the vectors base + k·blockDim.x, k < kUnroll: calls fn(k, i) for each
// vector i of the step that lies before n_vec.
template <typename Fn>
__device__ __forceinline__ void for_each_vector(int64_t base, int64_t n_vec, Fn&& fn) {
#pragma unroll
  for (int k = 0; k < kUnroll; ++k) {
    const int64_t i = base + int64_t{k} * blockDim.x;
    if (i < n_vec) fn(k, i);
  }
}

// Loads one step of a row.
__device__ __forceinline__ void load_step(const uint4* v, int64_t base, int64_t n_vec,
                                          uint4 (&raw)[kUnroll]) {
  for_each_vector(base, n_vec, [&](int k, int64_t i) { raw[k] = __ldg(v + i); });
}

// Quantizes and stores one loaded step of the forward pass.
template <typename T, int F, int D>
__device__ __forceinline__ void forward_step(const uint4 (&raw)[kUnroll], int64_t base,
                                             int64_t n_vec, uint4* ov, const Divisor& alpha,
                                             const Divisor& stretch, const Params& p) {
  using S = Storage<T>;
  for_each_vector(base, n_vec, [&](int k, int64_t i) {
    float f[S::kPerVec];
    S::unpack(raw[k], f);
#pragma unroll
    for (int j = 0; j < S::kPerVec; ++j) f[j] = forward_one<F, D>(f[j], alpha, stretch, p);
    ov[i] = S::pack(f);
  });
}

// One segment of a row in the forward pass, 16-byte vectors, its first step already loaded.
template <typename T, int F, int D>
__device__ __forceinline__ void forward_segment_vec(const uint4 (&first)[kUnroll], const T* w,
                                                    T* out, int64_t len, const Divisor& alpha,
                                                    const Divisor& stretch, const Params& p) {
  const int64_t n_vec = len / Storage<T>::kPerVec;
  const int64_t stride = int64_t{blockDim.x} * kUnroll;
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  uint4* ov = reinterpret_cast<uint4*>(out);
  forward_step<T, F, D>(first, threadIdx.x, n_vec, ov, alpha, stretch, p);
  for (int64_t base = threadIdx.x + stride; base < n_vec; base += stride) {
    uint4 raw[kUnroll];
    load_step(wv, base, n_vec, raw);
    forward_step<T, F, D>(raw, base, n_vec, ov, alpha, stretch, p);
  }
}

// One segment of a row in the forward pass, element by element: any length and alignment.
template <typename T, int F, int D>
__device__ __forceinline__ void forward_segment_scalar(const T* w, T* out, int64_t len,
                                                       const Divisor& alpha,
                                                       const Divisor& stretch, const Params& p) {
  using S = Storage<T>;
  for (int64_t i = threadIdx.x; i < len; i += blockDim.x) {
    S::store(out, i, forward_one<F, D>(S::load(w, i), alpha, stretch, p));
  }
}

// Whether a row can divide with divide(): α, and for SEQ also n, in the fast range.
template <int F>
__device__ __forceinline__ bool fast_row(const Divisor& alpha, const Divisor& stretch) {
  return alpha.fast && (F != kSeq || stretch.fast);
}

// Block b quantizes columns [s, s + seg) of row b / segments, s = (b % segments)·seg. The
// forward pass has no row reduction, so a row can be cut into segments, and many short blocks
// were faster than one block a row at every size measured (kSegmentThreads). The segment's
// first loads are issued before its scale arrives: behind the branch on the scale's range they
// would wait a memory round trip.
template <typename T, int F, bool kVec>
__global__ void __launch_bounds__(kMaxThreads)
    forward_kernel(const T* __restrict__ w, const float* __restrict__ scale, T* __restrict__ out,
                   int64_t cols, int64_t seg, int64_t segments, Params p) {
  const int64_t row = blockIdx.x / segments;
  const int64_t start = (blockIdx.x % segments) * seg;
  const int64_t len = cols - start < seg ? cols - start : seg;
  const T* w_seg = w + row * cols + start;
  T* out_seg = out + row * cols + start;
  uint4 first[kUnroll];
  if constexpr (kVec) {
    load_step(reinterpret_cast<const uint4*>(w_seg), threadIdx.x, len / Storage<T>::kPerVec,
              first);
  }
  const Divisor alpha = make_divisor(clamp_scale(scale[row], p.eps));
  const Divisor stretch = make_divisor(p.n);
  if (!fast_row<F>(alpha, stretch)) {
    forward_segment_scalar<T, F, kIeee>(w_seg, out_seg, len, alpha, stretch, p);
  } else if constexpr (kVec) {
    forward_segment_vec<T, F, kFast>(first, w_seg, out_seg, len, alpha, stretch, p);
  } else {
    forward_segment_scalar<T, F, kFast>(w_seg, out_seg, len, alpha, stretch, p);
  }
}

// Computes and stores dL/dw for one loaded step of the backward pass and adds the step's terms
// of the row's dL/dα sum to acc.
template <typename T, int F, int D>
__device__ __forceinline__ void backward_step(const uint4 (&w_raw)[kUnroll],
                                              const uint4 (&g_raw)[kUnroll], int64_t base,
                                              int64_t n_vec, uint4* ov, const Divisor& alpha,
                                              const Params& p, float& acc) {
  using S = Storage<T>;
  for_each_vector(base, n_vec, [&](int k, int64_t i) {
    float wf[S::kPerVec];
    float gf[S::kPerVec];
    S::unpack(w_raw[k], wf);
    S::unpack(g_raw[k], gf);
#pragma unroll
    for (int j = 0; j < S::kPerVec; ++j) gf[j] = backward_one<F, D>(wf[j], gf[j], alpha, p, acc);
    ov[i] = S::pack(gf);
  });
}

// One row of the backward pass, 16-byte vectors, its first step of w and dL/dŵ already loaded.
// Writes dL/dw and returns this thread's part of the row's dL/dα sum.
template <typename T, int F, int D>
__device__ __forceinline__ float backward_row_vec(const uint4 (&w_first)[kUnroll],
                                                  const uint4 (&g_first)[kUnroll],
                                                  const T* grad, const T* w, T* grad_w,
                                                  int64_t cols, const Divisor& alpha,
                                                  const Params& p) {
  const int64_t n_vec = cols / Storage<T>::kPerVec;
  const int64_t stride = int64_t{blockDim.x} * kUnroll;
  const uint4* gv = reinterpret_cast<const uint4*>(grad);
  const uint4* wv = reinterpret_cast<const uint4*>(w);
  uint4* ov = reinterpret_cast<uint4*>(grad_w);
  float acc = 0.f;
  backward_step<T, F, D>(w_first, g_first, threadIdx.x, n_vec, ov, alpha, p, acc);
  for (int64_t base = threadIdx.x + stride; base < n_vec; base += stride) {
    uint4 w_raw[kUnroll];
    uint4 g_raw[kUnroll];
    load_step(wv, base, n_vec, w_raw);
    load_step(gv, base, n_vec, g_raw);
    backward_step<T, F, D>(w_raw, g_raw, base, n_vec, ov, alpha, p, acc);
  }
  return acc;
}

// One row of the backward pass, element by element: any length and alignment. Also every row
// whose α is outside the fast range, which never happens in training.
template <typename T, int F, int D>
__device__ __forceinline__ float backward_row_scalar(const T* grad, const T* w, T* grad_w,
                                                     int64_t cols, const Divisor& alpha,
                                                     const Params& p) {
  using S = Storage<T>;
  float acc = 0.f;
  for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) {
    S::store(grad_w, i, backward_one<F, D>(S::load(w, i), S::load(grad, i), alpha, p, acc));
  }
  return acc;
}

// One block per row, which reduces the row's dL/dα (splitting rows across a cluster of blocks
// made this pass 20% slower). The row's first loads are issued before its scale arrives, as in
// the forward pass.
template <typename T, int F, bool kVec>
__global__ void __launch_bounds__(kMaxThreads)
    backward_kernel(const T* __restrict__ grad, const T* __restrict__ w,
                    const float* __restrict__ scale, T* __restrict__ grad_w,
                    float* __restrict__ grad_scale, int64_t cols, Params p, float grad_factor) {
  const int64_t row = blockIdx.x;
  const T* g_row = grad + row * cols;
  const T* w_row = w + row * cols;
  T* gw_row = grad_w + row * cols;
  uint4 w_first[kUnroll];
  uint4 g_first[kUnroll];
  if constexpr (kVec) {
    const int64_t n_vec = cols / Storage<T>::kPerVec;
    load_step(reinterpret_cast<const uint4*>(w_row), threadIdx.x, n_vec, w_first);
    load_step(reinterpret_cast<const uint4*>(g_row), threadIdx.x, n_vec, g_first);
  }
  const Divisor alpha = make_divisor(clamp_scale(scale[row], p.eps));
  float acc;
  if (!alpha.fast) {
    acc = backward_row_scalar<T, F, kIeee>(g_row, w_row, gw_row, cols, alpha, p);
  } else if constexpr (kVec) {
    acc = backward_row_vec<T, F, kFast>(w_first, g_first, g_row, w_row, gw_row, cols, alpha, p);
  } else {
    acc = backward_row_scalar<T, F, kFast>(g_row, w_row, gw_row, cols, alpha, p);
  }
  const float total = block_sum(acc);
  if (threadIdx.x == 0) grad_scale[row] = __fmul_rn(total, grad_factor);
}

bool aligned16(const void* ptr) { return reinterpret_cast<uintptr_t>(ptr) % 16 == 0; }

// Enough threads for kUnroll items each (whole warps), at most kMaxThreads.
int threads_for(int64_t items) {
  const int64_t per_thread = (items + kUnroll - 1) / kUnroll;
  const int64_t warps = (per_thread + 31) / 32;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(warps, 1) * 32, kMaxThreads));
}

Params make_params(const std::vector<double>& v) {
  TORCH_CHECK(v.size() == 7, "qat fake_quant: expected 7 parameters (n, shift, qn, qp, lo, hi, "
              "eps), got ", v.size());
  return Params{static_cast<float>(v[0]), static_cast<float>(v[1]), static_cast<float>(v[2]),
                static_cast<float>(v[3]), static_cast<float>(v[4]), static_cast<float>(v[5]),
                static_cast<float>(v[6]), v[0] != 0.0 ? static_cast<float>(1.0 / v[0]) : 0.f};
}

void check_operands(const at::Tensor& w, const at::Tensor& scale) {
  TORCH_CHECK(w.is_cuda(), "qat fake_quant: w must be a CUDA tensor");
  TORCH_CHECK(w.dim() == 2, "qat fake_quant: w must be 2-D, got ", w.dim(), " dims");
  TORCH_CHECK(w.scalar_type() == at::kFloat || w.scalar_type() == at::kBFloat16,
              "qat fake_quant: w must be float32 or bfloat16, got ", w.scalar_type());
  TORCH_CHECK(scale.device() == w.device(), "qat fake_quant: scale is on ", scale.device(),
              ", w on ", w.device());
  TORCH_CHECK(scale.is_floating_point() && scale.numel() == w.size(0),
              "qat fake_quant: scale must hold one float per row of w");
  TORCH_CHECK(w.size(0) <= INT32_MAX, "qat fake_quant: too many rows for one launch");
}

template <int F>
void forward_family(const at::Tensor& w, const at::Tensor& scale, at::Tensor& out,
                    const Params& p, cudaStream_t stream) {
  const int64_t rows = w.size(0), cols = w.size(1);
  const float* s = scale.data_ptr<float>();
  auto launch = [&](auto* w_ptr, auto* out_ptr) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(w_ptr)>>;
    constexpr int kPerVec = Storage<T>::kPerVec;
    if (cols % kPerVec == 0 && aligned16(w_ptr) && aligned16(out_ptr)) {
      const int64_t seg = std::min<int64_t>(cols, int64_t{kSegmentThreads} * kUnroll * kPerVec);
      const int64_t segments = (cols + seg - 1) / seg;
      TORCH_CHECK(rows * segments <= INT32_MAX, "qat fake_quant: too many rows for one launch");
      forward_kernel<T, F, true>
          <<<dim3(static_cast<unsigned>(rows * segments)), threads_for(seg / kPerVec), 0,
             stream>>>(w_ptr, s, out_ptr, cols, seg, segments, p);
    } else {
      forward_kernel<T, F, false><<<dim3(static_cast<unsigned>(rows)), threads_for(cols), 0,
                                    stream>>>(w_ptr, s, out_ptr, cols, cols, 1, p);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (w.scalar_type() == at::kFloat) {
    launch(w.data_ptr<float>(), out.data_ptr<float>());
  } else {
    launch(reinterpret_cast<const uint16_t*>(w.data_ptr()),
           reinterpret_cast<uint16_t*>(out.data_ptr()));
  }
}

template <int F>
void backward_family(const at::Tensor& grad, const at::Tensor& w, const at::Tensor& scale,
                     at::Tensor& grad_w, at::Tensor& grad_scale, const Params& p,
                     float grad_factor, cudaStream_t stream) {
  const int64_t rows = w.size(0), cols = w.size(1);
  const float* s = scale.data_ptr<float>();
  float* gs = grad_scale.data_ptr<float>();
  auto launch = [&](auto* g_ptr, auto* w_ptr, auto* gw_ptr) {
    using T = std::remove_const_t<std::remove_pointer_t<decltype(w_ptr)>>;
    constexpr int kPerVec = Storage<T>::kPerVec;
    const dim3 grid(static_cast<unsigned>(rows));  // one block per row
    if (cols % kPerVec == 0 && aligned16(g_ptr) && aligned16(w_ptr) && aligned16(gw_ptr)) {
      backward_kernel<T, F, true><<<grid, threads_for(cols / kPerVec), 0, stream>>>(
          g_ptr, w_ptr, s, gw_ptr, gs, cols, p, grad_factor);
    } else {
      backward_kernel<T, F, false><<<grid, threads_for(cols), 0, stream>>>(
          g_ptr, w_ptr, s, gw_ptr, gs, cols, p, grad_factor);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  };
  if (w.scalar_type() == at::kFloat) {
    launch(grad.data_ptr<float>(), w.data_ptr<float>(), grad_w.data_ptr<float>());
  } else {
    launch(reinterpret_cast<const uint16_t*>(grad.data_ptr()),
           reinterpret_cast<const uint16_t*>(w.data_ptr()),
           reinterpret_cast<uint16_t*>(grad_w.data_ptr()));
  }
}

template <typename Fn>
void by_family(int64_t family, Fn&& fn) {
  switch (family) {
    case kBinary: fn(std::integral_constant<int, kBinary>{}); break;
    case kSeq: fn(std::integral_constant<int, kSeq>{}); break;
    case kLsq: fn(std::integral_constant<int, kLsq>{}); break;
    default: TORCH_CHECK(false, "qat fake_quant: unknown family code ", family);
  }
}

}  // namespace

at::Tensor forward(const at::Tensor& w_in, const at::Tensor& scale_in, int64_t family,
                   const std::vector<double>& params) {
  check_operands(w_in, scale_in);
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous();
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (family >= kFirstFloatFamily) return float_forward(w, scale, family, params, stream);
  const Params p = make_params(params);
  at::Tensor out = at::empty(w.sizes(), w.options());
  if (w.numel() == 0) return out;
  by_family(family, [&](auto f) { forward_family<decltype(f)::value>(w, scale, out, p, stream); });
  return out;
}

std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad_in, const at::Tensor& w_in,
                                            const at::Tensor& scale_in, int64_t family,
                                            const std::vector<double>& params) {
  check_operands(w_in, scale_in);
  TORCH_CHECK(grad_in.sizes() == w_in.sizes() && grad_in.scalar_type() == w_in.scalar_type() &&
                  grad_in.device() == w_in.device(),
              "qat fake_quant: the gradient must match w in shape, dtype and device");
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  const at::Tensor grad = grad_in.contiguous();
  const at::Tensor scale = scale_in.to(at::kFloat).contiguous();
  if (family >= kFirstFloatFamily) {
    return float_backward(grad, w, scale, scale_in, family, params,
                          c10::cuda::getCurrentCUDAStream());
  }
  const Params p = make_params(params);
  at::Tensor grad_w = at::empty(w.sizes(), w.options());
  // Computed in fp32 and cast to the scale's dtype at the end, as the reference does. Every
  // row is written by the kernel, except for a weight with no columns, whose sums are 0.
  at::Tensor grad_scale = w.numel() > 0 ? at::empty(scale_in.sizes(), scale.options())
                                        : at::zeros(scale_in.sizes(), scale.options());
  if (w.numel() > 0) {
    // LSQ's 1/sqrt(numel·Qp) in double, as Python computes it, then rounded once to float.
    const float grad_factor =
        static_cast<float>(1.0 / std::sqrt(static_cast<double>(w.numel()) * params[3]));
    const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    by_family(family, [&](auto f) {
      backward_family<decltype(f)::value>(grad, w, scale, grad_w, grad_scale, p, grad_factor,
                                          stream);
    });
  }
  return {grad_w, grad_scale.to(scale_in.scalar_type())};
}

}  // namespace qat_fake_quant
