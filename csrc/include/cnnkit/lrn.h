#pragma once
// Local Response Normalization: the per-element math shared by the CPU and CUDA kernels.
//
// For channel c of a position, with the window W(c) = [c - before, c + after] clipped to
// [0, C) (equivalently: zero padding counted),
//   s_c = k + a * sum_{j in W(c)} x_j^2          (the "scale")
//   y_c = x_c * s_c^-beta
// and, since x_j enters s_c exactly when c lies in the mirrored window [j - after, j + before],
//   dL/dx_j = g_j * s_j^-beta - 2 a beta x_j * sum_{c in [j - after, j + before]} g_c x_c s_c^(-beta-1)
// The conventions differ only in the window and in a (alpha or alpha / size).
#include <cnnkit/macros.h>

#include <cmath>
#include <cstdint>

namespace cnnkit {
namespace lrn {

enum Convention : int { kTorch = 0, kCaffe = 1, kCudnn = 2, kTf = 3, kPaper = 4 };

struct Window {
  int64_t before;  // channels below c in the window
  int64_t after;   // channels above c in the window
};

CNNKIT_HOST_DEVICE Window convention_window(int convention, int64_t size) {
  switch (convention) {
    case kCudnn:  // cuDNN: lookBehind = (n - 1) / 2, lookAhead = n - lookBehind - 1
      return {(size - 1) / 2, size / 2};
    case kTf:  // TensorFlow: `size` is depth_radius, the window is 2 * radius + 1 wide
      return {size, size};
    case kPaper:  // AlexNet (2012): sum from i - n/2 to i + n/2
      return {size / 2, size / 2};
    default:  // PyTorch (and Caffe, whose odd sizes make this centred)
      return {size / 2, (size - 1) / 2};
  }
}

// The window of a convention over `channels` (>= 1) channels: a reach beyond the last
// channel adds only zero padding, so it is cut to channels - 1 on each side. Any size then
// gives a window of at most 2 * channels - 1, whose arithmetic cannot overflow.
CNNKIT_HOST_DEVICE Window window(int convention, int64_t size, int64_t channels) {
  const Window w = convention_window(convention, size);
  const int64_t reach = channels - 1;
  return {w.before < reach ? w.before : reach, w.after < reach ? w.after : reach};
}

// The coefficient of the sum of squares: alpha / size where the convention divides.
CNNKIT_HOST_DEVICE double alpha_coefficient(int convention, int64_t size, double alpha) {
  return (convention == kTf || convention == kPaper) ? alpha : alpha / static_cast<double>(size);
}

CNNKIT_HOST_DEVICE float power(float base, float exponent) { return powf(base, exponent); }
CNNKIT_HOST_DEVICE double power(double base, double exponent) { return pow(base, exponent); }

template <typename T>
CNNKIT_HOST_DEVICE T scale(T k, T a, T sum_of_squares) {
  return k + a * sum_of_squares;
}

template <typename T>
CNNKIT_HOST_DEVICE T output(T x, T scale_pow_neg_beta) {
  return x * scale_pow_neg_beta;
}

// g_c x_c s_c^(-beta-1): what output channel c sends back to each input in its window.
template <typename T>
CNNKIT_HOST_DEVICE T backward_term(T g, T x, T scale, T scale_pow_neg_beta) {
  return g * x * scale_pow_neg_beta / scale;
}

template <typename T>
CNNKIT_HOST_DEVICE T grad_input(T g, T x, T scale_pow_neg_beta, T two_a_beta, T term_sum) {
  return g * scale_pow_neg_beta - two_a_beta * x * term_sum;
}

}  // namespace lrn
}  // namespace cnnkit
