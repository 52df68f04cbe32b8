// Python bindings of the fake-quant CUDA kernels (fake_quant.cu). The torch.library custom ops,
// their autograd and fake implementations are defined in Python (qat/quant/kernels/op.py), so
// the ops exist, and torch.compile can trace them, before this extension is ever built.

#include <torch/extension.h>

#include <tuple>
#include <vector>

namespace qat_fake_quant {
at::Tensor forward(const at::Tensor& w, const at::Tensor& scale, int64_t family,
                   const std::vector<double>& params);
std::tuple<at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& w,
                                            const at::Tensor& scale, int64_t family,
                                            const std::vector<double>& params);
}  // namespace qat_fake_quant

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &qat_fake_quant::forward,
        "ŵ = α·q(w/α) per row (w, scale, family, params: [n, shift, qn, qp, lo, hi, eps] for "
        "the integer families 0-2, [man_bits, min_normal_exp, max_normal, block_size, eps] "
        "for the float ones 3-5)");
  m.def("backward", &qat_fake_quant::backward,
        "(dL/dw, dL/dα) from dL/dŵ (grad, w, scale, family, params)");
}
