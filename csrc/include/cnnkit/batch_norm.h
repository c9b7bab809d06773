#pragma once
// BatchNorm + activation (+ residual add): the per-element math of the CPU and CUDA kernels.
//
// Forward, per channel c with scale = weight * invstd:
//   pre = (x - mean) * scale + bias [+ residual];   y = act(pre)
// Backward, with g = dy * act'(pre) and, in training, the batch means of g and g * (x - mean):
//   dx = weight * invstd * ((g - mean(g)) - (x - mean) * invstd^2 * mean(g * (x - mean)))
// Both stay centred on the mean: folding them into x * scale + shift (or g * k1 + x * k2 + k3)
// saves one operation per element but cancels catastrophically when |mean| is large
// against the standard deviation.
#include <cnnkit/macros.h>

#include <cstdint>

namespace cnnkit {
namespace batch_norm {

// The `activation` argument of the ops (cnnkit/reference/batch_norm.py, ACTIVATIONS).
enum Activation : int64_t { kIdentity = 0, kRelu = 1, kLeakyRelu = 2 };

template <typename T>
CNNKIT_HOST_DEVICE T activate(T pre, int64_t activation, T negative_slope) {
  if (activation == kRelu) return pre > T(0) || pre != pre ? pre : T(0);  // NaN stays NaN
  if (activation == kLeakyRelu) return pre > T(0) ? pre : pre * negative_slope;
  return pre;
}

// dy * act'(pre); only the sign of pre matters, so a saved mask can stand in for it.
template <typename T>
CNNKIT_HOST_DEVICE T activation_grad(T grad, bool positive, int64_t activation, T negative_slope) {
  if (activation == kRelu) return positive ? grad : T(0);
  if (activation == kLeakyRelu) return positive ? grad : grad * negative_slope;
  return grad;
}

// Merges the moments (mean, biased variance, count) of a block into a running total: Chan,
// Golub and LeVeque's pairwise update, stable for any count. It carries the variance, not the
// sum of squared deviations, and multiplies the cross term as (delta * share) * (delta *
// block_share): no intermediate overflows where the variance itself does not.
template <typename T, typename C>
CNNKIT_HOST_DEVICE void merge_moments(T& mean, T& var, C& count, T block_mean, T block_var,
                                      C block_count) {
  if (block_count == C(0)) return;
  if (count == C(0)) {  // not through the update: an infinite variance times a zero share is NaN
    mean = block_mean;
    var = block_var;
    count = block_count;
    return;
  }
  const C total = count + block_count;
  const T share = T(count) / T(total), block_share = T(block_count) / T(total);
  const T delta = block_mean - mean;
  mean += delta * block_share;
  var = var * share + block_var * block_share + (delta * share) * (delta * block_share);
  count = total;
}

// The pre-activation of one element.
template <typename T>
CNNKIT_HOST_DEVICE T normalize(T x, T mean, T scale, T bias) {
  return (x - mean) * scale + bias;
}

// Per-channel backward coefficients: dx = ((g - mean_grad) - (x - mean) * projection) *
// grad_scale. mean_grad and mean_grad_centered are the batch means of g and g * (x - mean)
// in training, zero in eval.
template <typename T>
CNNKIT_HOST_DEVICE void backward_coefficients(T invstd, T weight, T mean_grad_centered, T& grad_scale,
                                              T& projection) {
  grad_scale = weight * invstd;
  // invstd * invstd alone underflows for standard deviations above about 1e19.
  projection = invstd * (invstd * mean_grad_centered);
}

template <typename T>
CNNKIT_HOST_DEVICE T grad_input(T g, T x, T mean, T mean_grad, T grad_scale, T projection) {
  return ((g - mean_grad) - (x - mean) * projection) * grad_scale;
}

}  // namespace batch_norm
}  // namespace cnnkit
