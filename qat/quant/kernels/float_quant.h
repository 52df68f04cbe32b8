// The float-format kernels (float_quant.cu), called by fake_quant.cu's entry points for the
// family codes from kFirstFloatFamily on (minifloat 3, MX 4, NV 5: float_math.cuh's FloatKind).

#pragma once

#include <ATen/ATen.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <tuple>
#include <vector>

namespace qat_fake_quant {

constexpr int64_t kFirstFloatFamily = 3;

// w contiguous, scale contiguous float32 with one value a row; params as op.format_params.
at::Tensor float_forward(const at::Tensor& w, const at::Tensor& scale, int64_t family,
                         const std::vector<double>& params, cudaStream_t stream);

// grad and w contiguous; scale as for float_forward; the scale gradient gets scale_in's shape
// and dtype.
std::tuple<at::Tensor, at::Tensor> float_backward(const at::Tensor& grad, const at::Tensor& w,
                                                  const at::Tensor& scale,
                                                  const at::Tensor& scale_in, int64_t family,
                                                  const std::vector<double>& params,
                                                  cudaStream_t stream);

}  // namespace qat_fake_quant
