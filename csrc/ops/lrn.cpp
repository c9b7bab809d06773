// Local Response Normalization: op schemas and the checks every backend shares.
#include "ops/lrn.h"

#include <ATen/ATen.h>
#include <cnnkit/lrn.h>
#include <torch/library.h>

namespace cnnkit {

namespace {

int parse_convention(const std::string& convention) {
  if (convention == "torch") return lrn::kTorch;
  if (convention == "caffe") return lrn::kCaffe;
  if (convention == "cudnn") return lrn::kCudnn;
  if (convention == "tf") return lrn::kTf;
  if (convention == "paper") return lrn::kPaper;
  TORCH_CHECK_VALUE(false, "local_response_norm: convention must be one of 'torch', 'caffe', ",
                    "'cudnn', 'tf', 'paper', got '", convention, "'");
}

}  // namespace

int check_local_response_norm(const at::Tensor& input, int64_t size, double k,
                              const std::string& convention) {
  const int parsed = parse_convention(convention);
  TORCH_CHECK_VALUE(input.dim() >= 3, "Expected 3D or higher dimensionality input (got ",
                    input.dim(), " dimensions)");
  TORCH_CHECK_VALUE(at::isFloatingType(input.scalar_type()),
                    "local_response_norm: input must be a floating-point tensor, got ",
                    input.scalar_type());
  TORCH_CHECK_VALUE(input.size(1) > 0, "local_response_norm: input must have at least one ",
                    "channel (dimension 1), got shape ", input.sizes());
  if (parsed == lrn::kTf) {
    TORCH_CHECK_VALUE(size >= 0, "local_response_norm: size (the depth radius with the 'tf' ",
                      "convention) must be >= 0, got ", size);
  } else {
    TORCH_CHECK_VALUE(size >= 1, "local_response_norm: size must be >= 1, got ", size);
  }
  TORCH_CHECK_VALUE(parsed != lrn::kCaffe || size % 2 == 1,
                    "local_response_norm: size must be odd with the 'caffe' convention, got ", size);
  TORCH_CHECK_VALUE(std::isfinite(k), "local_response_norm: k must be finite, got ", k);
  return parsed;
}

int check_local_response_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                       int64_t size, double k, const std::string& convention) {
  const int parsed = check_local_response_norm(input, size, k, convention);
  TORCH_CHECK_VALUE(grad_output.sizes() == input.sizes(),
                    "local_response_norm_backward: grad_output has shape ", grad_output.sizes(),
                    " but input has shape ", input.sizes());
  TORCH_CHECK_VALUE(grad_output.device() == input.device(),
                    "local_response_norm_backward: grad_output is on ", grad_output.device(),
                    " but input is on ", input.device());
  return parsed;
}

}  // namespace cnnkit

TORCH_LIBRARY_FRAGMENT(cnnkit, m) {
  m.def(
      "local_response_norm(Tensor input, int size, float alpha=0.0001, float beta=0.75, "
      "float k=1.0, str convention=\"torch\") -> Tensor");
  m.def(
      "local_response_norm_backward(Tensor grad_output, Tensor input, int size, float alpha, "
      "float beta, float k, str convention) -> Tensor");
}
