#pragma once
// Local Response Normalization: argument checks shared by every backend.
#include <ATen/core/Tensor.h>

#include <string>

namespace cnnkit {

// Validates the arguments and returns the convention as a cnnkit::lrn::Convention.
int check_local_response_norm(const at::Tensor& input, int64_t size, double k,
                              const std::string& convention);

// The input viewed as (N, C, S), S the product of the spatial sizes: dense, in either
// channels-first or channels-last memory order. `channels_last` tells which.
struct LrnLayout {
  int64_t batch, channels, positions;
  bool channels_last;
};
LrnLayout lrn_layout(const at::Tensor& dense_input);

// `input` itself when its memory is dense in channels-first or channels-last order,
// otherwise a channels-first copy. Outputs are allocated with the same order.
at::Tensor lrn_dense(const at::Tensor& input);

// `tensor` laid out in the same memory order as `dense_input` (a result of lrn_dense).
at::Tensor lrn_dense_like(const at::Tensor& tensor, const at::Tensor& dense_input);

}  // namespace cnnkit
