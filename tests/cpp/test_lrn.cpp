// C++ users reach cnnkit's ops through the dispatcher, as torch.ops.cnnkit does from Python.
// Checks local_response_norm and its backward against direct loops over the formula, in both
// memory layouts and in float64.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <cstdio>
#include <string>

namespace {

using Forward = at::Tensor(const at::Tensor&, int64_t, double, double, double, c10::string_view);
using Backward = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, double, double, double,
                            c10::string_view);

constexpr int64_t kSize = 4;
constexpr double kAlpha = 0.7, kBeta = 0.75, kK = 1.3;

// PyTorch's window for an even size: [c - size / 2, c + (size - 1) / 2].
double scale_at(const at::Tensor& x, int64_t n, int64_t c, int64_t h, int64_t w) {
  const int64_t C = x.size(1);
  double sum = 0;
  for (int64_t j = std::max<int64_t>(0, c - kSize / 2); j <= std::min(C - 1, c + (kSize - 1) / 2); ++j) {
    const double v = x[n][j][h][w].item<double>();
    sum += v * v;
  }
  return kK + kAlpha / kSize * sum;
}

at::Tensor loop_forward(const at::Tensor& x) {
  at::Tensor y = at::empty_like(x, at::MemoryFormat::Contiguous);
  for (int64_t n = 0; n < x.size(0); ++n)
    for (int64_t c = 0; c < x.size(1); ++c)
      for (int64_t h = 0; h < x.size(2); ++h)
        for (int64_t w = 0; w < x.size(3); ++w)
          y[n][c][h][w] = x[n][c][h][w].item<double>() * std::pow(scale_at(x, n, c, h, w), -kBeta);
  return y;
}

// Differentiates the forward loop numerically: dL/dx for L = sum(g * y).
at::Tensor numeric_backward(const at::Tensor& g, const at::Tensor& x) {
  at::Tensor gx = at::empty_like(x, at::MemoryFormat::Contiguous);
  const double eps = 1e-6;
  at::Tensor probe = x.contiguous().clone();
  auto flat = probe.view({-1});
  for (int64_t i = 0; i < flat.numel(); ++i) {
    const double original = flat[i].item<double>();
    flat[i] = original + eps;
    const double up = (g * loop_forward(probe)).sum().item<double>();
    flat[i] = original - eps;
    const double down = (g * loop_forward(probe)).sum().item<double>();
    flat[i] = original;
    gx.view({-1})[i] = (up - down) / (2 * eps);
  }
  return gx;
}

int check(bool ok, const std::string& what) {
  std::printf("%s: %s\n", ok ? "ok" : "FAILED", what.c_str());
  return ok ? 0 : 1;
}

}  // namespace

int main() {
  auto forward = c10::Dispatcher::singleton()
                     .findSchemaOrThrow("cnnkit::local_response_norm", "")
                     .typed<Forward>();
  auto backward = c10::Dispatcher::singleton()
                      .findSchemaOrThrow("cnnkit::local_response_norm_backward", "")
                      .typed<Backward>();
  at::manual_seed(0);
  const at::Tensor x = at::randn({2, 7, 3, 2}, at::kDouble);
  const at::Tensor g = at::randn({2, 7, 3, 2}, at::kDouble);
  const at::Tensor expected = loop_forward(x);
  const at::Tensor expected_grad = numeric_backward(g, x);
  int failures = 0;
  for (const auto format : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast}) {
    const std::string layout = format == at::MemoryFormat::Contiguous ? "contiguous" : "channels_last";
    const at::Tensor xl = x.contiguous(format), gl = g.contiguous(format);
    const at::Tensor y = forward.call(xl, kSize, kAlpha, kBeta, kK, "torch");
    failures += check(at::allclose(y, expected, 1e-12, 1e-12), "forward, " + layout);
    failures += check(y.is_contiguous(format), "output keeps the layout, " + layout);
    const at::Tensor gx = backward.call(gl, xl, kSize, kAlpha, kBeta, kK, "torch");
    failures += check(at::allclose(gx, expected_grad, 1e-6, 1e-7), "backward, " + layout);
  }
  try {
    forward.call(x, 0, kAlpha, kBeta, kK, "torch");
    failures += check(false, "size 0 is rejected");
  } catch (const c10::ValueError& error) {
    failures += check(std::string(error.what()).find("size") != std::string::npos, "size 0 is rejected");
  }
  return failures == 0 ? 0 : 1;
}
