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
  // As torch's kernels do for a dtype they have no code for.
  TORCH_CHECK_NOT_IMPLEMENTED(at::isFloatingType(input.scalar_type()),
                              "local_response_norm: not implemented for ", input.scalar_type(),
                              ": input must be a floating-point tensor");
  // Read as a SymInt: the check op runs this on the fake tensors of torch.compile.
  TORCH_CHECK_VALUE(input.sym_size(1) > 0, "local_response_norm: input must have at least one ",
                    "channel (dimension 1), got shape ", input.sym_sizes());
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
  TORCH_CHECK_VALUE(grad_output.sym_sizes() == input.sym_sizes(),
                    "local_response_norm_backward: grad_output has shape ", grad_output.sym_sizes(),
                    " but input has shape ", input.sym_sizes());
  TORCH_CHECK_VALUE(grad_output.device() == input.device(),
                    "local_response_norm_backward: grad_output is on ", grad_output.device(),
                    " but input is on ", input.device());
  return parsed;
}

namespace {

// The check ops (see csrc/ops/batch_norm.cpp): the checks for the Python side to run
// without a kernel, on any device and on fake tensors.
void check_local_response_norm_op(const at::Tensor& input, int64_t size, double k,
                                  c10::string_view convention) {
  check_local_response_norm(input, size, k, std::string(convention));
}

void check_local_response_norm_backward_op(const at::Tensor& grad_output, const at::Tensor& input,
                                           int64_t size, double k, c10::string_view convention) {
  check_local_response_norm_backward(grad_output, input, size, k, std::string(convention));
}

}  // namespace
}  // namespace cnnkit

TORCH_LIBRARY_IMPL(cnnkit, CompositeImplicitAutograd, m) {
  m.impl("_check_local_response_norm", &cnnkit::check_local_response_norm_op);
  m.impl("_check_local_response_norm_backward", &cnnkit::check_local_response_norm_backward_op);
}

TORCH_LIBRARY_FRAGMENT(cnnkit, m) {
  m.def("_check_local_response_norm(Tensor input, int size, float k, str convention) -> ()");
  m.def(
      "_check_local_response_norm_backward(Tensor grad_output, Tensor input, int size, float k, "
      "str convention) -> ()");
  m.def(
      "local_response_norm(Tensor input, int size, float alpha=0.0001, float beta=0.75, "
      "float k=1.0, str convention=\"torch\") -> Tensor");
  m.def(
      "local_response_norm_backward(Tensor grad_output, Tensor input, int size, float alpha, "
      "float beta, float k, str convention) -> Tensor");
}
