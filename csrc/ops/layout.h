#pragma once
// The dense memory orders every op family's kernels take and return: argument handling
// shared by the ops and their backends.
#include <ATen/core/Tensor.h>
#include <cnnkit/layout.h>

namespace cnnkit {

// `input` itself when its memory is dense in channels-first or channels-last order,
// otherwise a channels-first copy. Outputs are allocated in the same order.
at::Tensor dense_input(const at::Tensor& input);

// `tensor` laid out in the same memory order as `dense` (a result of dense_input).
at::Tensor dense_like(const at::Tensor& tensor, const at::Tensor& dense);

// The layout of `dense` (a result of dense_input). A tensor contiguous in channels-first
// order counts as channels-first even when it is also channels-last contiguous (C == 1 or
// one position): the two orders coincide then.
DenseLayout dense_layout(const at::Tensor& dense);

}  // namespace cnnkit
