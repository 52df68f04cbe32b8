// The float-format kernels' math (qat/quant/kernels/float_math.cuh) on the CPU, row by row and
// group by group as float_quant.cu runs it, for tests/quant/test_float_kernel_math.py. Built
// with -ffp-contract=off, so every operation rounds once, as the device intrinsics do.

#include "float_math.cuh"

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace {

using namespace qat_fake_quant;

struct HostDivision {
  using Divisor = float;
  static float make(float value) { return value; }
  static float quotient(float x, float d) { return x / d; }
};

// The kernel's group sizes for fp32: an MX block, an NV block, one 16-byte vector.
template <int K>
constexpr int kGroup = K == kMx ? kMxBlock : (K == kNv ? kNvBlock : 4);

// NV's amax(|w/α|) as weight_amax_kernel computes it: the largest |w| of a row over its α.
float weight_amax(const float* w, const float* scale, int64_t rows, int64_t cols, float eps) {
  float amax = 0.f;
  for (int64_t r = 0; r < rows; ++r) {
    uint32_t m = 0;
    for (int64_t c = 0; c < cols; ++c) m = std::max(m, float_bits(w[r * cols + c]) & 0x7fffffffu);
    amax = std::max(amax, bits_float(m) / clamped_scale(scale[r], eps));
  }
  return amax;
}

template <int K>
void forward_rows(const float* w, const float* scale, int64_t rows, int64_t cols,
                  const FloatParams& p, float per_tensor, float* out) {
  constexpr int G = kGroup<K>;
  for (int64_t r = 0; r < rows; ++r) {
    const float alpha = clamped_scale(scale[r], p.eps);
    for (int64_t start = 0; start < cols; start += G) {
      const int64_t n = std::min<int64_t>(G, cols - start);
      float v[G];
      for (int j = 0; j < G; ++j) v[j] = j < n ? w[r * cols + start + j] : 0.f;
      forward_group<K, HostDivision>(v, alpha, alpha, per_tensor, p);
      for (int j = 0; j < n; ++j) out[r * cols + start + j] = v[j];
    }
  }
}

template <int K>
void backward_rows(const float* grad, const float* w, const float* scale, int64_t rows,
                   int64_t cols, const FloatParams& p, float per_tensor, float grad_factor,
                   float* grad_w, float* grad_scale) {
  constexpr int G = kGroup<K>;
  for (int64_t r = 0; r < rows; ++r) {
    const float alpha = clamped_scale(scale[r], p.eps);
    float acc = 0.f;
    for (int64_t start = 0; start < cols; start += G) {
      const int64_t n = std::min<int64_t>(G, cols - start);
      float u[G];
      float g[G];
      for (int j = 0; j < G; ++j) {
        u[j] = j < n ? w[r * cols + start + j] / alpha : 0.f;
        g[j] = j < n ? grad[r * cols + start + j] : 0.f;
      }
      backward_group<K, HostDivision>(u, g, per_tensor, p, acc);
      for (int j = 0; j < n; ++j) grad_w[r * cols + start + j] = g[j];
    }
    grad_scale[r] = acc * grad_factor;
  }
}

template <typename Fn>
int by_kind(int64_t kind, Fn&& fn) {
  switch (kind) {
    case kMinifloat: fn(std::integral_constant<int, kMinifloat>{}); return 0;
    case kMx: fn(std::integral_constant<int, kMx>{}); return 0;
    case kNv: fn(std::integral_constant<int, kNv>{}); return 0;
    default: return 1;
  }
}

}  // namespace

// params: op.format_params; returns 1 for an unknown family code. The per-tensor scale divides
// as torch does on the CPU, which these results are compared with.
extern "C" int harness_forward(int64_t kind, const float* w, const float* scale, int64_t rows,
                               int64_t cols, const double* params, float* out) {
  const FloatParams p = float_params(params);
  const float per_tensor =
      kind == kNv ? nv_per_tensor(weight_amax(w, scale, rows, cols, p.eps), p) : 1.f;
  return by_kind(kind, [&](auto k) {
    forward_rows<decltype(k)::value>(w, scale, rows, cols, p, per_tensor, out);
  });
}

extern "C" int harness_backward(int64_t kind, const float* grad, const float* w,
                                const float* scale, int64_t rows, int64_t cols,
                                const double* params, float* grad_w, float* grad_scale) {
  const FloatParams p = float_params(params);
  const float per_tensor =
      kind == kNv ? nv_per_tensor(weight_amax(w, scale, rows, cols, p.eps), p) : 1.f;
  const float grad_factor =
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(rows * cols) * params[2]));
  return by_kind(kind, [&](auto k) {
    backward_rows<decltype(k)::value>(grad, w, scale, rows, cols, p, per_tensor, grad_factor,
                                      grad_w, grad_scale);
  });
}
