// BatchNorm + activation (+ residual add): op schemas and the checks every backend shares.
#include "ops/batch_norm.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <cnnkit/batch_norm.h>
#include <torch/library.h>

#include <ATen/MemoryOverlap.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <limits>
#include <utility>

namespace cnnkit {

namespace {

void check_same_place(const char* name, const at::Tensor& tensor, const at::Tensor& input) {
  TORCH_CHECK(tensor.device() == input.device(), "batch_norm_act: ", name, " is on ",
              tensor.device(), " but input is on ", input.device());
}

// Shapes are read as SymInts throughout: the check ops run these checks on the fake
// tensors of torch.compile and torch.export, whose sizes may be symbolic.
void check_channel_count(const char* name, const at::Tensor& tensor, const at::Tensor& input) {
  check_same_place(name, tensor, input);
  // torch.nn.functional.batch_norm's check (one element per channel, in any shape), wording
  // and type (RuntimeError).
  TORCH_CHECK(tensor.sym_numel() == input.sym_size(1), "batch_norm_act: ", name, " should contain ",
              input.sym_size(1), " elements not ", tensor.sym_numel());
}

void check_per_channel(const char* name, const at::Tensor& tensor, const at::Tensor& input,
                       at::ScalarType dtype) {
  check_channel_count(name, tensor, input);
  TORCH_CHECK_TYPE(tensor.scalar_type() == dtype, "batch_norm_act: ", name, " must have dtype ",
                   dtype, ", got ", tensor.scalar_type());
}

// weight and bias have the input's dtype or, for a bfloat16/float16 input, float32: the
// mixed precision of autocast, where the convolution runs in reduced precision and the
// BatchNorm parameters stay float32 (torch's batch_norm accepts the same pairs).
void check_param(const char* name, const at::Tensor& tensor, const at::Tensor& input) {
  check_channel_count(name, tensor, input);
  const bool reduced = input.scalar_type() == at::kBFloat16 || input.scalar_type() == at::kHalf;
  const bool mixed = reduced && tensor.scalar_type() == at::kFloat;
  // torch raises a RuntimeError ("mixed dtype") for any other pair.
  TORCH_CHECK(tensor.scalar_type() == input.scalar_type() || mixed, "batch_norm_act: ", name, " has dtype ",
              tensor.scalar_type(), " but input has ", input.scalar_type());
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
  // As torch's kernels do for a dtype they have no code for.
  TORCH_CHECK_NOT_IMPLEMENTED(at::isFloatingType(input.scalar_type()),
                              "batch_norm_act: not implemented for ", input.scalar_type(),
                              ": input must be a floating-point tensor");
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
    TORCH_CHECK_VALUE(residual->sym_sizes() == input.sym_sizes(), "batch_norm_act: residual must have ",
                      "the input's shape ", input.sym_sizes(), ", got ", residual->sym_sizes());
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
  TORCH_CHECK_VALUE(grad_output.sym_sizes() == input.sym_sizes(), "batch_norm_act_backward: ",
                    "grad_output must have the input's shape ", input.sym_sizes(), ", got ",
                    grad_output.sym_sizes());
  TORCH_CHECK_TYPE(grad_output.scalar_type() == input.scalar_type(), "batch_norm_act_backward: ",
                   "grad_output must have the input's dtype ", input.scalar_type(), ", got ",
                   grad_output.scalar_type());
  if (has_saved_mask(mask)) {
    check_same_place("mask", mask, input);
    TORCH_CHECK_VALUE(mask.sym_sizes() == input.sym_sizes() && mask.scalar_type() == at::kBool,
                      "batch_norm_act_backward: mask must be empty or a bool tensor of the ",
                      "input's shape ", input.sym_sizes(), ", got ", mask.scalar_type(), " ",
                      mask.sym_sizes());
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
  const c10::SymInt channels = input.sym_size(1);
  TORCH_CHECK_VALUE(mean_grad.sym_numel() == channels && mean_grad_centered.sym_numel() == channels &&
                        mean_grad.scalar_type() == stats && mean_grad_centered.scalar_type() == stats &&
                        mean_grad.device() == input.device() &&
                        mean_grad_centered.device() == input.device(),
                    "batch_norm_act_backward_apply: mean_grad and mean_grad_centered must be (",
                    channels, ",) tensors of dtype ", stats, " on the input's device");
}

void check_running_stats(const at::Tensor& input, const c10::optional<at::Tensor>& running_mean,
                         const c10::optional<at::Tensor>& running_var) {
  check_batch_norm_input(input);
  for (const auto& [name, running] :
       {std::pair{"running_mean", &running_mean}, std::pair{"running_var", &running_var}}) {
    if (!running->has_value()) continue;
    const at::Tensor& stat = **running;
    TORCH_CHECK(stat.device() == input.device(), "batch_norm_train_stats: ", name, " is on ", stat.device(),
                " but input is on ", input.device());
    TORCH_CHECK(stat.sym_numel() == input.sym_size(1), "batch_norm_train_stats: ", name, " should contain ",
                input.sym_size(1), " elements not ", stat.sym_numel());
    TORCH_CHECK_TYPE(at::isFloatingType(stat.scalar_type()), "batch_norm_train_stats: ", name,
                     " must be a floating-point tensor, got ", stat.scalar_type());
    // Updated in place: two channels must not share one element (an expanded tensor). The
    // contiguous case first: it needs no strides, which a fake tensor's may not have.
    TORCH_CHECK_VALUE(stat.is_contiguous() || at::has_internal_overlap(stat) != at::MemOverlap::Yes,
                      "batch_norm_train_stats: ", name, " has channels sharing memory (an expanded ",
                      "tensor?), which its update in place would overwrite with each other; pass a tensor ",
                      "with one element per channel");
    TORCH_CHECK(!(stat.requires_grad() && at::GradMode::is_enabled()), "batch_norm_train_stats: ", name,
                " requires grad; running statistics are updated in place and cannot be differentiated "
                "(call under torch.no_grad(), or detach it)");
  }
}

std::tuple<at::Tensor, at::Tensor> batch_norm_finish_train_stats(
    const at::Tensor& mean, const at::Tensor& var, int64_t count,
    const c10::optional<at::Tensor>& running_mean, const c10::optional<at::Tensor>& running_var,
    double momentum, double eps) {
  if (count > 0) {
    // The op itself is the in-place update that autograd and inference mode see (its schema
    // marks the running statistics as written); below that, as in torch's own kernels, the
    // update is plain arithmetic, also on an inference tensor.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    // running = momentum * batch + (1 - momentum) * running, as ATen's batch norm does.
    if (running_mean.has_value()) {
      running_mean->mul_(1 - momentum).add_(mean.to(running_mean->scalar_type()), momentum);
    }
    if (running_var.has_value()) {
      // n / (n - 1); for a single value per channel that is infinite, and the update NaN, as in
      // torch's batch norm (the modules refuse such a batch in training, as torch.nn does).
      const double unbiased = count > 1 ? static_cast<double>(count) / static_cast<double>(count - 1)
                                        : std::numeric_limits<double>::infinity();
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

// The check ops: the argument checks of the ops below, for the Python side (fake kernels,
// the fallback to cnnkit.reference) to run without a kernel. Composite, so they run on any
// device and on fake tensors; their names start with an underscore (not part of the API).
TORCH_LIBRARY_IMPL(cnnkit, CompositeImplicitAutograd, m) {
  m.impl("_check_batch_norm_input", &cnnkit::check_batch_norm_input);
  m.impl("_check_batch_norm_running_stats", &cnnkit::check_running_stats);
  m.impl("_check_batch_norm_act", &cnnkit::check_batch_norm_act);
  m.impl("_check_batch_norm_act_backward", &cnnkit::check_batch_norm_act_backward);
  m.impl("_check_batch_norm_act_backward_apply", &cnnkit::check_batch_norm_act_backward_apply);
}

TORCH_LIBRARY_FRAGMENT(cnnkit, m) {
  m.def("_check_batch_norm_input(Tensor input) -> ()");
  m.def("_check_batch_norm_running_stats(Tensor input, Tensor? running_mean, Tensor? running_var) -> ()");
  m.def(
      "_check_batch_norm_act(Tensor input, Tensor? weight, Tensor? bias, Tensor? residual, Tensor mean, "
      "Tensor invstd, int activation) -> ()");
  m.def(
      "_check_batch_norm_act_backward(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mask, Tensor mean, Tensor invstd, int activation) -> ()");
  m.def(
      "_check_batch_norm_act_backward_apply(Tensor grad_output, Tensor input, Tensor? weight, Tensor? bias, "
      "Tensor mask, Tensor mean, Tensor invstd, Tensor mean_grad, Tensor mean_grad_centered, "
      "int activation) -> ()");
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
