// Local Response Normalization, CUDA glue: tensors in, checks, stream, dtype, then the
// plain-CUDA launchers of lrn_kernel.cu.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda/launcher_types.h"
#include "cuda/lrn_kernel.h"
#include "ops/lrn.h"

namespace cnnkit {
namespace cuda {
namespace {

at::Tensor local_response_norm_cuda(const at::Tensor& input, int64_t size, double alpha,
                                    double beta, double k, c10::string_view convention) {
  const int parsed = check_local_response_norm(input, size, k, std::string(convention));
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = dense_input(input);
  at::Tensor y = at::empty_like(x);
  C10_CUDA_CHECK(lrn_forward(launcher_type(x.scalar_type(), "local_response_norm", DtypeError::kValue),
                             x.const_data_ptr(), y.mutable_data_ptr(), dense_layout(x),
                             {parsed, size, alpha, beta, k}, c10::cuda::getCurrentCUDAStream()));
  return y;
}

at::Tensor local_response_norm_backward_cuda(const at::Tensor& grad_output, const at::Tensor& input,
                                             int64_t size, double alpha, double beta, double k,
                                             c10::string_view convention) {
  const int parsed =
      check_local_response_norm_backward(grad_output, input, size, k, std::string(convention));
  const c10::cuda::CUDAGuard guard(input.device());
  const at::Tensor x = dense_input(input);
  const at::Tensor g = dense_like(grad_output.to(x.scalar_type()), x);
  at::Tensor gx = at::empty_like(x);
  const auto term_type = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor term = at::empty_like(x, x.options().dtype(term_type));
  C10_CUDA_CHECK(lrn_backward(launcher_type(x.scalar_type(), "local_response_norm", DtypeError::kValue),
                              g.const_data_ptr(), x.const_data_ptr(), gx.mutable_data_ptr(),
                              term.mutable_data_ptr(), dense_layout(x), {parsed, size, alpha, beta, k},
                              c10::cuda::getCurrentCUDAStream()));
  return gx;
}

}  // namespace
}  // namespace cuda
}  // namespace cnnkit

TORCH_LIBRARY_IMPL(cnnkit, CUDA, m) {
  m.impl("local_response_norm", &cnnkit::cuda::local_response_norm_cuda);
  m.impl("local_response_norm_backward", &cnnkit::cuda::local_response_norm_backward_cuda);
}
