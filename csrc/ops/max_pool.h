#pragma once
// Max pooling for inference (the values of torch's max_pool2d, without its indices):
// argument checks and window geometry shared by every backend.
#include <ATen/core/Tensor.h>

#include "ops/layout.h"

namespace cnnkit {

struct PoolWindow {
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t out_h, out_w;
};

// Validates the arguments with torch's max_pool2d rules and messages; returns the window and
// the output size.
PoolWindow check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, bool ceil_mode);

}  // namespace cnnkit
