// Max pooling for inference: op schema and the checks every backend shares.
#include "ops/max_pool.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <utility>

namespace cnnkit {

namespace {

// torch's pooling_output_shape: with ceil_mode the last window must start inside the input
// or its left padding.
int64_t pooled_size(int64_t size, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation,
                    bool ceil_mode) {
  const int64_t span = size + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (span >= 0 ? span / stride : -((-span + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= size + pad) --out;
  return out;
}

int64_t pair_value(at::IntArrayRef values, int index) {
  return values.size() == 1 ? values[0] : values[index];
}

// The checks of everything but the output size, which reads no size of the input.
PoolWindow check_max_pool2d_arguments(const at::Tensor& input, at::IntArrayRef kernel_size,
                                      at::IntArrayRef stride, at::IntArrayRef padding,
                                      at::IntArrayRef dilation) {
  TORCH_CHECK_VALUE(input.dim() == 4, "max_pool2d: expected a 4-D (N, C, H, W) input, got a ",
                    input.dim(), "-D tensor of shape ", input.sym_sizes());
  TORCH_CHECK_VALUE(at::isFloatingType(input.scalar_type()),
                    "max_pool2d: input must be a floating-point tensor, got ", input.scalar_type());
  for (auto [name, values] : {std::pair{"kernel_size", kernel_size}, {"padding", padding},
                              {"dilation", dilation}}) {
    TORCH_CHECK(values.size() == 1 || values.size() == 2, "max_pool2d: ", name,
                " must either be a single int, or a tuple of two ints");
  }
  TORCH_CHECK(stride.empty() || stride.size() == 1 || stride.size() == 2,
              "max_pool2d: stride must either be omitted, a single int, or a tuple of two ints");
  PoolWindow w{};
  w.kernel_h = pair_value(kernel_size, 0);
  w.kernel_w = pair_value(kernel_size, 1);
  w.stride_h = stride.empty() ? w.kernel_h : pair_value(stride, 0);
  w.stride_w = stride.empty() ? w.kernel_w : pair_value(stride, 1);
  w.pad_h = pair_value(padding, 0);
  w.pad_w = pair_value(padding, 1);
  w.dilation_h = pair_value(dilation, 0);
  w.dilation_w = pair_value(dilation, 1);
  TORCH_CHECK(w.kernel_h > 0 && w.kernel_w > 0, "kernel size should be greater than zero, but got ",
              "kH: ", w.kernel_h, " kW: ", w.kernel_w);
  TORCH_CHECK(w.stride_h > 0 && w.stride_w > 0, "stride should be greater than zero, but got dH: ",
              w.stride_h, " dW: ", w.stride_w);
  TORCH_CHECK(w.dilation_h > 0 && w.dilation_w > 0,
              "dilation should be greater than zero, but got dilationH: ", w.dilation_h,
              " dilationW: ", w.dilation_w);
  TORCH_CHECK(w.pad_h >= 0 && w.pad_w >= 0 && w.pad_h <= ((w.kernel_h - 1) * w.dilation_h + 1) / 2 &&
                  w.pad_w <= ((w.kernel_w - 1) * w.dilation_w + 1) / 2,
              "pad should be at most half of effective kernel size, but got pad=", padding,
              ", kernel_size=", kernel_size, " and dilation=", dilation);
  return w;
}

// The check op (see csrc/ops/batch_norm.cpp), for the fake kernel. With symbolic sizes
// (dynamic shapes) the output-size check is left to the kernel at run time.
void check_max_pool2d_op(const at::Tensor& input, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                         at::IntArrayRef padding, at::IntArrayRef dilation, bool ceil_mode) {
  if (input.unsafeGetTensorImpl()->has_symbolic_sizes_strides()) {
    check_max_pool2d_arguments(input, kernel_size, stride, padding, dilation);
  } else {
    check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  }
}

}  // namespace

PoolWindow check_max_pool2d(const at::Tensor& input, at::IntArrayRef kernel_size,
                            at::IntArrayRef stride, at::IntArrayRef padding,
                            at::IntArrayRef dilation, bool ceil_mode) {
  PoolWindow w = check_max_pool2d_arguments(input, kernel_size, stride, padding, dilation);
  const int64_t height = input.size(2), width = input.size(3);
  w.out_h = pooled_size(height, w.kernel_h, w.stride_h, w.pad_h, w.dilation_h, ceil_mode);
  w.out_w = pooled_size(width, w.kernel_w, w.stride_w, w.pad_w, w.dilation_w, ceil_mode);
  TORCH_CHECK(w.out_h > 0 && w.out_w > 0, "Given input size: (", input.size(1), "x", height, "x",
              width, "). Calculated output size: (", input.size(1), "x", w.out_h, "x", w.out_w,
              "). Output size is too small");
  return w;
}

}  // namespace cnnkit

TORCH_LIBRARY_IMPL(cnnkit, CompositeImplicitAutograd, m) {
  m.impl("_check_max_pool2d", &cnnkit::check_max_pool2d_op);
}

TORCH_LIBRARY_FRAGMENT(cnnkit, m) {
  m.def(
      "_check_max_pool2d(Tensor input, int[] kernel_size, int[] stride, int[] padding, int[] dilation, "
      "bool ceil_mode) -> ()");
  m.def(
      "max_pool2d(Tensor input, int[] kernel_size, int[] stride=[], int[] padding=[0], "
      "int[] dilation=[1], bool ceil_mode=False) -> Tensor");
}
