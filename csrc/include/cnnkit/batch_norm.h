#pragma once
// BatchNorm + activation (+ residual add): the per-element math of the CPU and CUDA kernels.
//
// Forward, per channel c with scale = weight * invstd and shift = bias - mean * scale:
//   pre = x * scale + shift [+ residual];   y = act(pre)
// Backward, with g = dy * act'(pre) and, in training, the batch means of g and g * (x - mean):
//   dx = weight * invstd * (g - mean(g) - (x - mean) * invstd^2 * mean(g * (x - mean)))
// which is linear per channel: dx = g * k1 + x * k2 + k3 (see backward_coefficients).
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

// Merges the moments (mean, m2 = sum of squared deviations, count) of a block into a
// running total: Chan, Golub and LeVeque's pairwise update, stable for any count.
template <typename T, typename C>
CNNKIT_HOST_DEVICE void merge_moments(T& mean, T& m2, C& count, T block_mean, T block_m2,
                                      C block_count) {
  const C total = count + block_count;
  if (block_count == C(0)) return;
  const T delta = block_mean - mean;
  const T block_share = T(block_count) / T(total);
  mean += delta * block_share;
  m2 += block_m2 + delta * delta * T(count) * block_share;
  count = total;
}

// Per-channel forward coefficients: pre = x * scale + shift.
template <typename T>
CNNKIT_HOST_DEVICE void forward_coefficients(T mean, T invstd, T weight, T bias, T& scale,
                                             T& shift) {
  scale = weight * invstd;
  shift = bias - mean * scale;
}

// Per-channel backward coefficients: dx = g * k1 + x * k2 + k3. mean_grad and
// mean_grad_centered are the batch means of g and g * (x - mean) in training, zero in eval.
template <typename T>
CNNKIT_HOST_DEVICE void backward_coefficients(T mean, T invstd, T weight, T mean_grad,
                                              T mean_grad_centered, T& k1, T& k2, T& k3) {
  k1 = weight * invstd;
  k2 = -k1 * invstd * invstd * mean_grad_centered;
  k3 = -k1 * mean_grad - mean * k2;
}

}  // namespace batch_norm
}  // namespace cnnkit
