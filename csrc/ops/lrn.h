#pragma once
// Local Response Normalization: argument checks shared by every backend.
#include <ATen/core/Tensor.h>

#include <string>

#include "ops/layout.h"

namespace cnnkit {

// Validates the arguments and returns the convention as a cnnkit::lrn::Convention.
int check_local_response_norm(const at::Tensor& input, int64_t size, double k,
                              const std::string& convention);

// check_local_response_norm, then grad_output's shape and device against the input's.
int check_local_response_norm_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                       int64_t size, double k, const std::string& convention);

}  // namespace cnnkit
