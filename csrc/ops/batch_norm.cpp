// BatchNorm + activation (+ residual add): op schemas and the checks every backend shares.
#include "ops/batch_norm.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <cnnkit/batch_norm.h>
#include <torch/library.h>

#include <algorithm>

namespace cnnkit {

namespace {

void check_same_place(const char* name, const at::Tensor& tensor, const at::Tensor& input) {
  TORCH_CHECK(tensor.device() == input.device(), "batch_norm_act: ", name, " is on ",
              tensor.device(), " but input is on ", input.device());
}

void check_per_channel(const char* name, const at::Tensor& tensor, const at::Tensor& input,
                       at::ScalarType dtype) {
  check_same_place(name, tensor, input);
  TORCH_CHECK_VALUE(tensor.dim() == 1 && tensor.numel() == input.size(1), "batch_norm_act: ",
                    name, " must have shape (", input.size(1), ",), got ", tensor.sizes());
  TORCH_CHECK_TYPE(tensor.scalar_type() == dtype, "batch_norm_act: ", name, " must have dtype ",
                   dtype, ", got ", tensor.scalar_type());
}

// weight and bias have the input's dtype or, for a bfloat16/float16 input, float32: the
// mixed precision of autocast, where the convolution runs in reduced precision and the
// BatchNorm parameters stay float32 (torch's batch_norm accepts the same pairs).
void check_param(const char* name, const at::Tensor& tensor, const at::Tensor& input) {
  const bool reduced = input.scalar_type() == at::kBFloat16 || input.scalar_type() == at::kHalf;
  const bool mixed = reduced && tensor.scalar_type() == at::kFloat;
  check_per_channel(name, tensor, input, mixed ? at::kFloat : input.scalar_type());
}

}  // namespace

DenseLayout batch_norm_layout(const at::Tensor& dense) {
  DenseLayout layout = dense_layout(dense);
  // With one position per sample the two orders coincide; the channels-last kernels then
  // vectorise over channels instead of over rows of length one.
  layout.channels_last = layout.channels_last || layout.positions == 1;
  return layout;
}

at::ScalarType batch_norm_stats_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

void check_batch_norm_input(const at::Tensor& input) {
  TORCH_CHECK_VALUE(input.dim() >= 2, "batch_norm_act: input must have 2 or more dimensions ",
                    "(N, C, ...), got ", input.dim());
  TORCH_CHECK_TYPE(at::isFloatingType(input.scalar_type()),
                   "batch_norm_act: input must be a floating-point tensor, got ",
                   input.scalar_type());
}

void check_batch_norm_act(const at::Tensor& input, const c10::optional<at::Tensor>& weight,
                          const c10::optional<at::Tensor>& bias,
                          const c10::optional<at::Tensor>& residual, const at::Tensor& mean,
                          const at::Tensor& invstd, int64_t activation) {
  check_batch_norm_input(input);
  TORCH_CHECK_VALUE(activation >= batch_norm::kIdentity && activation <= batch_norm::kLeakyRelu,
                    "batch_norm_act: activation must be 0 (identity), 1 (relu) or 2 ",
                    "(leaky_relu), got ", activation);
  if (weight.has_value()) check_param("weight", *weight, input);
  if (bias.has_value()) check_param("bias", *bias, input);
  const at::ScalarType stats = batch_norm_stats_dtype(input);
  check_per_channel("mean", mean, input, stats);
  check_per_channel("invstd", invstd, input, stats);
  if (residual.has_value()) {
    check_same_place("residual", *residual, input);
    TORCH_CHECK_VALUE(residual->sizes() == input.sizes(), "batch_norm_act: residual must have ",
                      "the input's shape ", input.sizes(), ", got ", residual->sizes());
    TORCH_CHECK_TYPE(residual->scalar_type() == input.scalar_type(), "batch_norm_act: residual ",
                     "must have the input's dtype ", input.scalar_type(), ", got ",
                     residual->scalar_type());
  }
}

void check_batch_norm_act_backward(const at::Tensor& grad_output, const at::Tensor& input,
                                   const c10::optional<at::Tensor>& weight,
                                   const c10::optional<at::Tensor>& bias, const at::Tensor& mask,
                                   const at::Tensor& mean, const at::Tensor& invstd,
                                   int64_t activation) {
  check_batch_norm_act(input, weight, bias, c10::nullopt, mean, invstd, activation);
  check_same_place("grad_output", grad_output, input);
  TORCH_CHECK_VALUE(grad_output.sizes() == input.sizes(), "batch_norm_act_backward: ",
                    "grad_output must have the input's shape ", input.sizes(), ", got ",
                    grad_output.sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "batch_norm_act_backward: ",
                   "grad_output must have the input's dtype ", input.scalar_type(), ", got ",
                   grad_output.scalar_type());
  if (has_saved_mask(mask)) {
    check_same_place("mask", mask, input);
    TORCH_CHECK_VALUE(mask.sizes() == input.sizes() && mask.scalar_type() == at::kBool,
                      "batch_norm_act_backward: mask must be empty or a bool tensor of the ",
                      "input's shape ", input.sizes(), ", got ", mask.scalar_type(), " ",
                      mask.sizes());
  }
}

void check_batch_norm_act_backward_apply(const at::Tensor& grad_output, const at::Tensor& input,
                                         const c10::optional<at::Tensor>& weight,
                                         const c10::optional<at::Tensor>& bias,
                                         const at::Tensor& mask, const at::Tensor& mean,
                                         const at::Tensor& invstd, const at::Tensor& mean_grad,
                                         const at::Tensor& mean_grad_centered, int64_t activation) {
  check_batch_norm_act_backward(grad_output, input, weight, bias, mask, mean, invstd, activation);
  const at::ScalarType stats = batch_norm_stats_dtype(input);
  const int64_t channels = input.size(1);
  TORCH_CHECK_VALUE(mean_grad.numel() == channels && mean_grad_centered.numel() == channels &&
                        mean_grad.scalar_type() == stats && mean_grad_centered.scalar_type() == stats &&
                        mean_grad.device() == input.device() &&
                        mean_grad_centered.device() == input.device(),
                    "batch_norm_act_backward_apply: mean_grad and mean_grad_centered must be (",
                    channels, ",) tensors of dtype ", stats, " on the input's device");
}

std::tuple<at::Tensor, at::Tensor> batch_norm_finish_train_stats(
    const at::Tensor& mean, const at::Tensor& var, int64_t count,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    double momentum, double eps) {
  for (const auto* running : {&running_mean, &running_var}) {
    if (!running->has_value()) continue;
    TORCH_CHECK_VALUE((*running)->dim() == 1 && (*running)->numel() == mean.numel(),
                      "batch_norm_train_stats: running statistics must have shape (", mean.numel(),
                      ",), got ", (*running)->sizes());
    TORCH_CHECK((*running)->device() == mean.device(), "batch_norm_train_stats: running ",
                "statistics are on ", (*running)->device(), " but input is on ", mean.device());
  }
  if (count > 0) {
    // running = momentum * batch + (1 - momentum) * running, as ATen's batch norm does.
    if (running_mean.has_value()) {
      running_mean->mul_(1 - momentum).add_(mean.to(running_mean->scalar_type()), momentum);
    }
    if (running_var.has_value()) {
      const double unbiased = static_cast<double>(count) / static_cast<double>(std::max<int64_t>(count - 1, 1));
      running_var->mul_(1 - momentum).add_((var * unbiased).to(running_var->scalar_type()), momentum);
    }
  }
  return {mean, (var + eps).rsqrt()};
}

ChannelParams batch_norm_channel_params(const at::Tensor& input,
                                        const c10::optional<at::Tensor>& weight,
                                        const c10::optional<at::Tensor>& bias,
                                        const at::Tensor& mean, const at::Tensor& invstd) {
  const auto stats = at::TensorOptions().dtype(batch_norm_stats_dtype(input)).device(input.device());
  const int64_t channels = input.size(1);
  ChannelParams params;
  params.mean = mean.contiguous();
  params.invstd = invstd.contiguous();
  params.weight = weight.has_value() ? weight->to(stats.dtype()).contiguous()
                                     : at::ones({channels}, stats);
  params.bias = bias.has_value() ? bias->to(stats.dtype()).contiguous()
                                 : at::zeros({channels}, stats);
  return params;
}

BatchNormActTensors batch_norm_act_tensors(const at::Tensor& input,
                                           const c10::optional<at::Tensor>& weight,
                                           const c10::optional<at::Tensor>& bias,
                                           const c10::optional<at::Tensor>& residual,
                                           const at::Tensor& mean, const at::Tensor& invstd,
                                           int64_t activation) {
  BatchNormActTensors t;
  t.input = dense_input(input);
  t.layout = batch_norm_layout(t.input);
  t.params = batch_norm_channel_params(t.input, weight, bias, mean, invstd);
  if (residual.has_value()) t.residual = dense_like(*residual, t.input);
  t.save_mask = residual.has_value() && activation != batch_norm::kIdentity;
  t.output = at::empty_like(t.input);
  t.mask = t.save_mask ? at::empty_like(t.input, t.input.options().dtype(at::kBool))
                       : at::empty({0}, t.input.options().dtype(at::kBool));
  return t;
}

BatchNormBackwardTensors batch_norm_backward_tensors(const at::Tensor& grad_output,
                                                     const at::Tensor& input,
                                                     const c10::optional<at::Tensor>& weight,
                                                     const c10::optional<at::Tensor>& bias,
                                                     const at::Tensor& mask, const at::Tensor& mean,
                                                     const at::Tensor& invstd, int64_t activation) {
  BatchNormBackwardTensors t;
  t.input = dense_input(input);
  t.grad_output = dense_like(grad_output, t.input);
  if (has_saved_mask(mask) && activation != batch_norm::kIdentity) t.mask = dense_like(mask, t.input);
  t.layout = batch_norm_layout(t.input);
  t.params = batch_norm_channel_params(t.input, weight, bias, mean, invstd);
  return t;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> batch_norm_act_backward(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mask, const at::Tensor& mean,
    const at::Tensor& invstd, bool batch_stats, int64_t activation, double negative_slope,
    bool residual_grad) {
  static const auto reduce =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cnnkit::batch_norm_act_backward_reduce", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
              const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, int64_t, double)>();
  static const auto apply =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("cnnkit::batch_norm_act_backward_apply", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(
              const at::Tensor&, const at::Tensor&, const c10::optional<at::Tensor>&,
              const c10::optional<at::Tensor>&, const at::Tensor&, const at::Tensor&,
              const at::Tensor&, const at::Tensor&, const at::Tensor&, int64_t, double, bool)>();
  auto [sum_g, sum_gx] = reduce.call(grad_output, input, weight, bias, mask, mean, invstd, activation,
                                     negative_slope);
  const int64_t count = input.numel() / std::max<int64_t>(input.size(1), 1);
  const bool use_batch = batch_stats && count > 0;
  const at::Tensor mean_g = use_batch ? sum_g / static_cast<double>(count) : at::zeros_like(sum_g);
  const at::Tensor mean_gx = use_batch ? sum_gx / static_cast<double>(count) : at::zeros_like(sum_gx);
  auto [grad_input, grad_residual] = apply.call(grad_output, input, weight, bias, mask, mean, invstd,
                                                mean_g, mean_gx, activation, negative_slope,
                                                residual_grad);
  const at::ScalarType param_dtype = weight.has_value() ? weight->scalar_type() : input.scalar_type();
  return {grad_input, (sum_gx * invstd).to(param_dtype), sum_g.to(param_dtype), grad_residual};
}

}  // namespace cnnkit

TORCH_LIBRARY_FRAGMENT(cnnkit, m) {
  // Per-channel batch mean and biased variance, in float64 for float64 input and float32
  // otherwise (zero for an empty batch).
  m.def("batch_norm_stats(Tensor input) -> (Tensor mean, Tensor var)");
  // Training statistics in one call: the batch mean and invstd = 1 / sqrt(var + eps), with
  // running_mean / running_var (when given) updated in place as nn.BatchNorm2d does.
  m.def(
      "batch_norm_train_stats(Tensor input, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
      "float momentum, float eps) -> (Tensor mean, Tensor invstd)");
  // act((input - mean) * invstd * weight + bias [+ residual]). `batch_stats` says mean and
  // invstd are the input's own batch statistics (backward then differentiates through
  // them). `mask` is `pre-activation > 0` when a residual and an activation are given (the
  // backward cannot recompute it without the residual), otherwise empty.
  m.def(
      "batch_norm_act(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, Tensor mean, "
      "Tensor invstd, bool batch_stats, int activation, float negative_slope) "
      "-> (Tensor output, Tensor mask)");
  // Gradients of input, weight, bias (per channel, always given) and residual (empty
  // unless residual_grad): the reduce pass, then the apply pass.
  m.def(
      "batch_norm_act_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mask, Tensor mean, Tensor invstd, bool batch_stats, int activation, "
      "float negative_slope, bool residual_grad) "
      "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias, Tensor grad_residual)");
  // The two passes on their own (SyncBatchNorm all-reduces between them): per-channel sums
  // of g = grad_output * act'(pre) and of g * (input - mean), in the stats dtype.
  m.def(
      "batch_norm_act_backward_reduce(Tensor grad_output, Tensor input, Tensor? weight, "
      "Tensor? bias, Tensor mask, Tensor mean, Tensor invstd, int activation, "
      "float negative_slope) -> (Tensor sum_grad, Tensor sum_grad_centered)");
  // grad_input from the batch means of those sums (zeros when the statistics were not the
  // batch's), and grad_residual = g when residual_grad.
  m.def(
      "batch_norm_act_backward_apply(Tensor grad_output, Tensor input, Tensor? weight, "
      "Tensor? bias, Tensor mask, Tensor mean, Tensor invstd, Tensor mean_grad, "
      "Tensor mean_grad_centered, int activation, float negative_slope, bool residual_grad) "
      "-> (Tensor grad_input, Tensor grad_residual)");
}
