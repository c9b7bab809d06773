// BatchNorm + activation (+ residual add): CPU kernels.
//
// Channels-first input (N, C, S) is processed in rows of S values of one channel;
// channels-last input (N*S, C) in rows of C values of one position, vectorised over the
// channels with per-channel coefficients. Reductions give each task its own partial sums
// (a channel and a slice of the batch, or a slice of the positions) and merge them after,
// so the result does not depend on the thread count's timing.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <cnnkit/batch_norm.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "cpu/capability.h"
#include "cpu/vec_io.h"
#include "ops/batch_norm.h"

namespace cnnkit {
namespace cpu {
// Compiled once per capability (capability.h).
namespace CPU_CAPABILITY {
namespace {

namespace bn = cnnkit::batch_norm;

// Positions per block of the channels-last statistics: the block is read twice (mean,
// then squared deviations), the second time from cache.
constexpr int64_t kStatsBlock = 16;
// Elements per parallel task in the elementwise passes.
constexpr int64_t kGrainElements = 32768;
// Elements per tile of a span that uses the saved mask: the bool mask is converted to or
// from the sign of a float buffer one tile at a time, in loops the compiler vectorises.
constexpr int64_t kMaskTile = 1024;

// Runs fn(offset, length) over [0, n) in tiles of at most kMaskTile elements.
template <typename Fn>
inline void for_each_tile(int64_t n, const Fn& fn) {
  for (int64_t t = 0; t < n; t += kMaskTile) fn(t, std::min(kMaskTile, n - t));
}

// Number of batch slices per channel so that channels * slices gives every thread work.
int64_t batch_slices(int64_t batch, int64_t channels) {
  if (channels == 0) return 1;  // nothing to reduce
  const int64_t wanted = (4 * at::get_num_threads() + channels - 1) / channels;
  return std::max<int64_t>(1, std::min(batch, wanted));
}

// The statistics kernels work on x - pivot, pivot being one of the channel's own values:
// means of blocks then sit near zero, where float keeps their differences exact enough
// for the merge, even for data far from zero (mean 1000, std 0.01).

// sum(x - pivot) over a row.
template <typename scalar_t>
opmath_t<scalar_t> row_sum(const scalar_t* x, int64_t n, opmath_t<scalar_t> pivot) {
  using Vec = OpVec<scalar_t>;
  const Vec vpivot(pivot);
  Vec acc(0);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) acc += load_opmath(x + i) - vpivot;
  opmath_t<scalar_t> sum = at::vec::vec_reduce_all([](Vec a, Vec b) { return a + b; }, acc);
  for (; i < n; ++i) sum += static_cast<opmath_t<scalar_t>>(x[i]) - pivot;
  return sum;
}

// sum((x - pivot - mean)^2) over a row, mean being that of x - pivot.
template <typename scalar_t>
opmath_t<scalar_t> row_squared_deviation(const scalar_t* x, int64_t n, opmath_t<scalar_t> pivot,
                                         opmath_t<scalar_t> mean) {
  using Vec = OpVec<scalar_t>;
  const Vec vpivot(pivot), vmean(mean);
  Vec acc(0);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec d = (load_opmath(x + i) - vpivot) - vmean;
    acc = at::vec::fmadd(d, d, acc);
  }
  opmath_t<scalar_t> sum = at::vec::vec_reduce_all([](Vec a, Vec b) { return a + b; }, acc);
  for (; i < n; ++i) {
    const opmath_t<scalar_t> d = (static_cast<opmath_t<scalar_t>>(x[i]) - pivot) - mean;
    sum += d * d;
  }
  return sum;
}

// ---------------------------------------------------------------- statistics

template <typename scalar_t>
void stats_channels_first(const scalar_t* x, const DenseLayout& l, const opmath_t<scalar_t>* pivot,
                          opmath_t<scalar_t>* mean, opmath_t<scalar_t>* m2, int64_t* count) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = l.channels, S = l.positions;
  const int64_t slices = batch_slices(l.batch, C);
  std::vector<acc_t> part_mean(C * slices, 0), part_m2(C * slices, 0);
  std::vector<int64_t> part_count(C * slices, 0);
  at::parallel_for(0, C * slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / slices, slice = task % slices;
      acc_t task_mean = 0, task_m2 = 0;
      int64_t task_count = 0;
      for (int64_t n = l.batch * slice / slices; n < l.batch * (slice + 1) / slices; ++n) {
        const scalar_t* row = x + (n * C + c) * S;
        const acc_t row_mean = row_sum(row, S, pivot[c]) / static_cast<acc_t>(S);
        bn::merge_moments(task_mean, task_m2, task_count, row_mean,
                          row_squared_deviation(row, S, pivot[c], row_mean), S);
      }
      part_mean[task] = task_mean;
      part_m2[task] = task_m2;
      part_count[task] = task_count;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t s = 0; s < slices; ++s) {
      const int64_t task = c * slices + s;
      bn::merge_moments(mean[c], m2[c], count[c], part_mean[task], part_m2[task], part_count[task]);
    }
  }
}

template <typename scalar_t>
void stats_channels_last(const scalar_t* x, const DenseLayout& l, const opmath_t<scalar_t>* pivot,
                         opmath_t<scalar_t>* mean, opmath_t<scalar_t>* m2, int64_t* count) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  const int64_t C = l.channels, P = l.batch * l.positions;
  const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(P, at::get_num_threads()));
  // Per slice: running mean and m2 per channel (all channels share the count), and the
  // block's mean and m2.
  std::vector<acc_t> part(4 * C * slices, 0);
  std::vector<int64_t> part_count(slices, 0);
  at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t slice = begin; slice < end; ++slice) {
      acc_t* run_mean = part.data() + 4 * C * slice;
      acc_t* run_m2 = run_mean + C;
      acc_t* block_mean = run_m2 + C;
      acc_t* block_m2 = block_mean + C;
      int64_t run_count = 0;
      const int64_t p_end = P * (slice + 1) / slices;
      for (int64_t p0 = P * slice / slices; p0 < p_end; p0 += kStatsBlock) {
        const int64_t rows = std::min(kStatsBlock, p_end - p0);
        const acc_t inv_rows = acc_t(1) / static_cast<acc_t>(rows);
        std::fill(block_mean, block_mean + 2 * C, acc_t(0));
        for (int64_t p = p0; p < p0 + rows; ++p) {
          const scalar_t* row = x + p * C;
          int64_t c = 0;
          for (; c + Vec::size() <= C; c += Vec::size())
            (Vec::loadu(block_mean + c) + (load_opmath(row + c) - Vec::loadu(pivot + c))).store(block_mean + c);
          for (; c < C; ++c) block_mean[c] += static_cast<acc_t>(row[c]) - pivot[c];
        }
        for (int64_t c = 0; c < C; ++c) block_mean[c] *= inv_rows;
        for (int64_t p = p0; p < p0 + rows; ++p) {
          const scalar_t* row = x + p * C;
          int64_t c = 0;
          for (; c + Vec::size() <= C; c += Vec::size()) {
            const Vec d = (load_opmath(row + c) - Vec::loadu(pivot + c)) - Vec::loadu(block_mean + c);
            at::vec::fmadd(d, d, Vec::loadu(block_m2 + c)).store(block_m2 + c);
          }
          for (; c < C; ++c) {
            const acc_t d = (static_cast<acc_t>(row[c]) - pivot[c]) - block_mean[c];
            block_m2[c] += d * d;
          }
        }
        // Chan's merge with the counts shared by every channel (bn::merge_moments per lane).
        const acc_t share = static_cast<acc_t>(rows) / static_cast<acc_t>(run_count + rows);
        const acc_t cross = static_cast<acc_t>(run_count) * share;
        int64_t c = 0;
        for (; c + Vec::size() <= C; c += Vec::size()) {
          const Vec delta = Vec::loadu(block_mean + c) - Vec::loadu(run_mean + c);
          at::vec::fmadd(delta, Vec(share), Vec::loadu(run_mean + c)).store(run_mean + c);
          (Vec::loadu(run_m2 + c) + Vec::loadu(block_m2 + c) + delta * delta * Vec(cross))
              .store(run_m2 + c);
        }
        for (; c < C; ++c) {
          const acc_t delta = block_mean[c] - run_mean[c];
          run_mean[c] += delta * share;
          run_m2[c] += block_m2[c] + delta * delta * cross;
        }
        run_count += rows;
      }
      part_count[slice] = run_count;
    }
  });
  for (int64_t s = 0; s < slices; ++s) {
    const acc_t* run_mean = part.data() + 4 * C * s;
    for (int64_t c = 0; c < C; ++c)
      bn::merge_moments(mean[c], m2[c], count[c], run_mean[c], run_mean[C + c], part_count[s]);
  }
}

std::tuple<at::Tensor, at::Tensor> batch_norm_stats_cpu(const at::Tensor& input_arg) {
  check_batch_norm_input(input_arg);
  const at::Tensor input = dense_input(input_arg);
  const DenseLayout layout = batch_norm_layout(input);
  const auto options = input.options().dtype(batch_norm_stats_dtype(input));
  at::Tensor mean = at::zeros({layout.channels}, options);
  at::Tensor var = at::zeros({layout.channels}, options);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, input.scalar_type(), "batch_norm_stats", [&] {
    using acc_t = opmath_t<scalar_t>;
    const int64_t C = layout.channels;
    std::vector<int64_t> count(C, 0);
    const scalar_t* x = input.const_data_ptr<scalar_t>();
    // The first value of each channel (zero for an empty batch).
    std::vector<acc_t> pivot(C, acc_t(0));
    if (input.numel() > 0) {
      for (int64_t c = 0; c < C; ++c)
        pivot[c] = static_cast<acc_t>(x[layout.channels_last ? c : c * layout.positions]);
    }
    acc_t* mean_data = mean.data_ptr<acc_t>();
    acc_t* m2_data = var.data_ptr<acc_t>();
    if (layout.channels_last) {
      stats_channels_last(x, layout, pivot.data(), mean_data, m2_data, count.data());
    } else {
      stats_channels_first(x, layout, pivot.data(), mean_data, m2_data, count.data());
    }
    for (int64_t c = 0; c < C; ++c) {
      mean_data[c] = count[c] > 0 ? mean_data[c] + pivot[c] : acc_t(0);
      m2_data[c] = count[c] > 0 ? m2_data[c] / static_cast<acc_t>(count[c]) : acc_t(0);
    }
  });
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_train_stats_cpu(const at::Tensor& input,
                                                              const c10::optional<at::Tensor>& running_mean,
                                                              const c10::optional<at::Tensor>& running_var,
                                                              double momentum, double eps) {
  auto [mean, var] = batch_norm_stats_cpu(input);
  const int64_t count = input.numel() / std::max<int64_t>(input.size(1), 1);
  return batch_norm_finish_train_stats(mean, var, count, running_mean, running_var, momentum, eps);
}

// ---------------------------------------------------------------- forward

// Fills sign[0, n) with +1 where the saved mask is set and -1 elsewhere.
template <typename acc_t>
inline void mask_to_sign(const bool* __restrict mask, int64_t n, acc_t* __restrict sign) {
  const uint8_t* __restrict bytes = reinterpret_cast<const uint8_t*>(mask);
  for (int64_t j = 0; j < n; ++j) sign[j] = static_cast<acc_t>(2 * static_cast<int32_t>(bytes[j]) - 1);
}

// mask[0, n) = pre[0, n) > 0.
template <typename acc_t>
inline void sign_to_mask(const acc_t* __restrict pre, int64_t n, bool* __restrict mask) {
  uint8_t* __restrict bytes = reinterpret_cast<uint8_t*>(mask);
  for (int64_t j = 0; j < n; ++j) bytes[j] = static_cast<uint8_t>(pre[j] > acc_t(0));
}


// One span of `n` values: a row of one channel (kPerLane false: coefficients [0]) or a
// position's channels (kPerLane true: coefficients [i]).
// `pre_out`, when given, receives the pre-activation values (to become the saved mask).
template <bool kPerLane, typename scalar_t>
void forward_span(const scalar_t* x, const scalar_t* residual, scalar_t* y, opmath_t<scalar_t>* pre_out, int64_t n,
                  const opmath_t<scalar_t>* scale, const opmath_t<scalar_t>* shift,
                  int64_t activation, opmath_t<scalar_t> slope) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  const Vec zero(0), vslope(slope), vscale(scale[0]), vshift(shift[0]);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec a = kPerLane ? Vec::loadu(scale + i) : vscale;
    const Vec b = kPerLane ? Vec::loadu(shift + i) : vshift;
    Vec pre = at::vec::fmadd(load_opmath(x + i), a, b);
    if (residual) pre += load_opmath(residual + i);
    Vec out = pre;
    if (activation == bn::kRelu) out = at::vec::maximum(pre, zero);
    if (activation == bn::kLeakyRelu) out = Vec::blendv(pre * vslope, pre, pre > zero);
    store_opmath(y + i, out);
    if (pre_out) pre.store(pre_out + i);
  }
  for (; i < n; ++i) {
    const int64_t k = kPerLane ? i : 0;
    acc_t pre = static_cast<acc_t>(x[i]) * scale[k] + shift[k];
    if (residual) pre += static_cast<acc_t>(residual[i]);
    y[i] = static_cast<scalar_t>(bn::activate(pre, activation, slope));
    if (pre_out) pre_out[i] = pre;
  }
}

template <bool kPerLane, typename scalar_t>
void forward_span_with_mask(const scalar_t* x, const scalar_t* residual, scalar_t* y, bool* mask, int64_t n,
                            const opmath_t<scalar_t>* scale, const opmath_t<scalar_t>* shift,
                            int64_t activation, opmath_t<scalar_t> slope) {
  if (!mask) return forward_span<kPerLane>(x, residual, y, nullptr, n, scale, shift, activation, slope);
  alignas(64) opmath_t<scalar_t> pre[kMaskTile];
  for_each_tile(n, [&](int64_t t, int64_t len) {
    const int64_t k = kPerLane ? t : 0;
    forward_span<kPerLane>(x + t, residual ? residual + t : nullptr, y + t, pre, len, scale + k, shift + k,
                           activation, slope);
    sign_to_mask(pre, len, mask + t);
  });
}

// The per-channel coefficients of the forward: pre = x * scale + shift.
template <typename acc_t>
void forward_coefficients(const ChannelParams& p, std::vector<acc_t>& scale, std::vector<acc_t>& shift) {
  const int64_t C = p.mean.numel();
  scale.resize(C);
  shift.resize(C);
  for (int64_t c = 0; c < C; ++c)
    bn::forward_coefficients(p.mean.data_ptr<acc_t>()[c], p.invstd.data_ptr<acc_t>()[c],
                             p.weight.data_ptr<acc_t>()[c], p.bias.data_ptr<acc_t>()[c], scale[c], shift[c]);
}

// Runs fn(offset, n, c, per_lane) in parallel over the spans of the elementwise passes: the
// rows of n = S values of one channel c (channels-first; per_lane std::false_type) or the
// n = C values of one position (channels-last; c = 0, per_lane std::true_type).
template <typename Fn>
void for_each_span(const DenseLayout& l, const Fn& fn) {
  const int64_t span = l.channels_last ? l.channels : l.positions;
  const int64_t spans = l.channels_last ? l.batch * l.positions : l.batch * l.channels;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(span, 1));
  at::parallel_for(0, spans, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      if (l.channels_last) {
        fn(s * span, span, int64_t{0}, std::true_type{});
      } else {
        fn(s * span, span, s % l.channels, std::false_type{});
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor> batch_norm_act_cpu(
    const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& residual,
    const at::Tensor& mean, const at::Tensor& invstd, bool batch_stats, int64_t activation,
    double negative_slope) {
  check_batch_norm_act(input, weight, bias, residual, mean, invstd, activation);
  const BatchNormActTensors t = batch_norm_act_tensors(input, weight, bias, residual, mean, invstd, activation);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.input.scalar_type(), "batch_norm_act", [&] {
    using acc_t = opmath_t<scalar_t>;
    std::vector<acc_t> scale, shift;
    forward_coefficients(t.params, scale, shift);
    const scalar_t* x = t.input.const_data_ptr<scalar_t>();
    const scalar_t* r = t.residual.defined() ? t.residual.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y = t.output.data_ptr<scalar_t>();
    bool* m = t.save_mask ? t.mask.data_ptr<bool>() : nullptr;
    const acc_t slope = static_cast<acc_t>(negative_slope);
    for_each_span(t.layout, [&](int64_t o, int64_t n, int64_t c, auto per_lane) {
      forward_span_with_mask<decltype(per_lane)::value>(x + o, r ? r + o : nullptr, y + o, m ? m + o : nullptr, n,
                                                        scale.data() + c, shift.data() + c, activation, slope);
    });
  });
  return {t.output, t.mask};
}

// ---------------------------------------------------------------- backward

// g = dy * act'(pre) for one vector, pre recomputed from x or, when `sign` is given, read
// from it (+1 or -1 per element: the saved mask).
template <bool kPerLane, typename scalar_t>
inline OpVec<scalar_t> grad_vec(const scalar_t* dy, const scalar_t* x, const opmath_t<scalar_t>* sign, int64_t i,
                                const opmath_t<scalar_t>* scale, const opmath_t<scalar_t>* shift,
                                int64_t activation, opmath_t<scalar_t> slope) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  const Vec g = load_opmath(dy + i);
  if (activation == bn::kIdentity) return g;
  Vec pre;
  if (sign) {
    pre = Vec::loadu(sign + i);
  } else {
    const Vec a = kPerLane ? Vec::loadu(scale + i) : Vec(scale[0]);
    const Vec b = kPerLane ? Vec::loadu(shift + i) : Vec(shift[0]);
    pre = at::vec::fmadd(load_opmath(x + i), a, b);
  }
  const Vec zero(0);
  const Vec negative = activation == bn::kRelu ? zero : g * Vec(slope);
  return Vec::blendv(negative, g, pre > zero);
}

template <bool kPerLane, typename scalar_t>
inline opmath_t<scalar_t> grad_scalar(const scalar_t* dy, const scalar_t* x, const opmath_t<scalar_t>* sign, int64_t i,
                                      const opmath_t<scalar_t>* scale, const opmath_t<scalar_t>* shift,
                                      int64_t activation, opmath_t<scalar_t> slope) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t k = kPerLane ? i : 0;
  const bool positive = sign ? sign[i] > acc_t(0) : static_cast<acc_t>(x[i]) * scale[k] + shift[k] > acc_t(0);
  return bn::activation_grad(static_cast<acc_t>(dy[i]), positive, activation, slope);
}

// Adds sum(g) and sum(g * (x - mean)) of a span to sums[0] and sums[1] (kPerLane false)
// or to sum_g[i] and sum_gx[i] per lane (kPerLane true).
template <bool kPerLane, typename scalar_t>
void reduce_span(const scalar_t* dy, const scalar_t* x, const opmath_t<scalar_t>* sign, int64_t n,
                 const opmath_t<scalar_t>* scale, const opmath_t<scalar_t>* shift,
                 const opmath_t<scalar_t>* mean, int64_t activation, opmath_t<scalar_t> slope,
                 opmath_t<scalar_t>* sum_g, opmath_t<scalar_t>* sum_gx) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  Vec acc_g(0), acc_gx(0);
  const Vec vmean(mean[0]);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec g = grad_vec<kPerLane>(dy, x, sign, i, scale, shift, activation, slope);
    const Vec centered = load_opmath(x + i) - (kPerLane ? Vec::loadu(mean + i) : vmean);
    if (kPerLane) {
      (Vec::loadu(sum_g + i) + g).store(sum_g + i);
      at::vec::fmadd(g, centered, Vec::loadu(sum_gx + i)).store(sum_gx + i);
    } else {
      acc_g += g;
      acc_gx = at::vec::fmadd(g, centered, acc_gx);
    }
  }
  acc_t tail_g = 0, tail_gx = 0;
  for (; i < n; ++i) {
    const int64_t k = kPerLane ? i : 0;
    const acc_t g = grad_scalar<kPerLane>(dy, x, sign, i, scale, shift, activation, slope);
    const acc_t gx = g * (static_cast<acc_t>(x[i]) - mean[k]);
    if (kPerLane) {
      sum_g[i] += g;
      sum_gx[i] += gx;
    } else {
      tail_g += g;
      tail_gx += gx;
    }
  }
  if (!kPerLane) {
    const auto add = [](Vec a, Vec b) { return a + b; };
    sum_g[0] += at::vec::vec_reduce_all(add, acc_g) + tail_g;
    sum_gx[0] += at::vec::vec_reduce_all(add, acc_gx) + tail_gx;
  }
}


template <bool kPerLane, typename scalar_t>
void reduce_span_with_mask(const scalar_t* dy, const scalar_t* x, const bool* mask, int64_t n,
                           const opmath_t<scalar_t>* scale, const opmath_t<scalar_t>* shift,
                           const opmath_t<scalar_t>* mean, int64_t activation, opmath_t<scalar_t> slope,
                           opmath_t<scalar_t>* sum_g, opmath_t<scalar_t>* sum_gx) {
  if (!mask) return reduce_span<kPerLane>(dy, x, nullptr, n, scale, shift, mean, activation, slope, sum_g, sum_gx);
  alignas(64) opmath_t<scalar_t> sign[kMaskTile];
  for_each_tile(n, [&](int64_t t, int64_t len) {
    const int64_t k = kPerLane ? t : 0;
    mask_to_sign(mask + t, len, sign);
    reduce_span<kPerLane>(dy + t, x + t, sign, len, scale + k, shift + k, mean + k, activation, slope,
                          sum_g + k, sum_gx + k);
  });
}

std::tuple<at::Tensor, at::Tensor> batch_norm_act_backward_reduce_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mask, const at::Tensor& mean,
    const at::Tensor& invstd, int64_t activation, double negative_slope) {
  check_batch_norm_act_backward(grad_output, input, weight, bias, mask, mean, invstd, activation);
  const BatchNormBackwardTensors t =
      batch_norm_backward_tensors(grad_output, input, weight, bias, mask, mean, invstd, activation);
  const DenseLayout& l = t.layout;
  const auto options = t.input.options().dtype(batch_norm_stats_dtype(t.input));
  at::Tensor sum_g = at::zeros({l.channels}, options);
  at::Tensor sum_gx = at::zeros({l.channels}, options);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.input.scalar_type(), "batch_norm_act_backward_reduce", [&] {
    using acc_t = opmath_t<scalar_t>;
    const int64_t C = l.channels;
    std::vector<acc_t> scale, shift;
    forward_coefficients(t.params, scale, shift);
    const acc_t* mu = t.params.mean.data_ptr<acc_t>();
    const scalar_t* dy = t.grad_output.const_data_ptr<scalar_t>();
    const scalar_t* x = t.input.const_data_ptr<scalar_t>();
    const bool* m = t.mask.defined() ? t.mask.const_data_ptr<bool>() : nullptr;
    const acc_t slope = static_cast<acc_t>(negative_slope);
    acc_t* out_g = sum_g.data_ptr<acc_t>();
    acc_t* out_gx = sum_gx.data_ptr<acc_t>();
    if (l.channels_last) {
      const int64_t P = l.batch * l.positions;
      const int64_t slices = std::max<int64_t>(1, std::min<int64_t>(P, at::get_num_threads()));
      std::vector<acc_t> part(2 * C * slices, 0);
      at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
        for (int64_t slice = begin; slice < end; ++slice) {
          acc_t* part_g = part.data() + 2 * C * slice;
          for (int64_t p = P * slice / slices; p < P * (slice + 1) / slices; ++p) {
            const int64_t o = p * C;
            reduce_span_with_mask<true>(dy + o, x + o, m ? m + o : nullptr, C, scale.data(), shift.data(), mu,
                              activation, slope, part_g, part_g + C);
          }
        }
      });
      for (int64_t s = 0; s < slices; ++s)
        for (int64_t c = 0; c < C; ++c) {
          out_g[c] += part[2 * C * s + c];
          out_gx[c] += part[2 * C * s + C + c];
        }
    } else {
      const int64_t S = l.positions;
      const int64_t slices = batch_slices(l.batch, C);
      std::vector<acc_t> part(2 * C * slices, 0);
      at::parallel_for(0, C * slices, 1, [&](int64_t begin, int64_t end) {
        for (int64_t task = begin; task < end; ++task) {
          const int64_t c = task / slices, slice = task % slices;
          for (int64_t n = l.batch * slice / slices; n < l.batch * (slice + 1) / slices; ++n) {
            const int64_t o = (n * C + c) * S;
            reduce_span_with_mask<false>(dy + o, x + o, m ? m + o : nullptr, S, scale.data() + c, shift.data() + c,
                               mu + c, activation, slope, &part[2 * task], &part[2 * task + 1]);
          }
        }
      });
      for (int64_t task = 0; task < C * slices; ++task) {
        out_g[task / slices] += part[2 * task];
        out_gx[task / slices] += part[2 * task + 1];
      }
    }
  });
  return {sum_g, sum_gx};
}

// dx = g * k1 + x * k2 + k3 and, when wanted, grad_residual = g over one span.
template <bool kPerLane, typename scalar_t>
void apply_span(const scalar_t* dy, const scalar_t* x, const opmath_t<scalar_t>* sign, scalar_t* dx, scalar_t* dr,
                int64_t n, const opmath_t<scalar_t>* scale, const opmath_t<scalar_t>* shift,
                const opmath_t<scalar_t>* k1, const opmath_t<scalar_t>* k2, const opmath_t<scalar_t>* k3,
                int64_t activation, opmath_t<scalar_t> slope) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  const Vec v1(k1[0]), v2(k2[0]), v3(k3[0]);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec g = grad_vec<kPerLane>(dy, x, sign, i, scale, shift, activation, slope);
    const Vec a = kPerLane ? Vec::loadu(k1 + i) : v1;
    const Vec b = kPerLane ? Vec::loadu(k2 + i) : v2;
    const Vec c = kPerLane ? Vec::loadu(k3 + i) : v3;
    store_opmath(dx + i, at::vec::fmadd(g, a, at::vec::fmadd(load_opmath(x + i), b, c)));
    if (dr) store_opmath(dr + i, g);
  }
  for (; i < n; ++i) {
    const int64_t k = kPerLane ? i : 0;
    const acc_t g = grad_scalar<kPerLane>(dy, x, sign, i, scale, shift, activation, slope);
    dx[i] = static_cast<scalar_t>(g * k1[k] + static_cast<acc_t>(x[i]) * k2[k] + k3[k]);
    if (dr) dr[i] = static_cast<scalar_t>(g);
  }
}

template <bool kPerLane, typename scalar_t>
void apply_span_with_mask(const scalar_t* dy, const scalar_t* x, const bool* mask, scalar_t* dx, scalar_t* dr,
                          int64_t n, const opmath_t<scalar_t>* scale, const opmath_t<scalar_t>* shift,
                          const opmath_t<scalar_t>* k1, const opmath_t<scalar_t>* k2, const opmath_t<scalar_t>* k3,
                          int64_t activation, opmath_t<scalar_t> slope) {
  if (!mask) return apply_span<kPerLane>(dy, x, nullptr, dx, dr, n, scale, shift, k1, k2, k3, activation, slope);
  alignas(64) opmath_t<scalar_t> sign[kMaskTile];
  for_each_tile(n, [&](int64_t t, int64_t len) {
    const int64_t k = kPerLane ? t : 0;
    mask_to_sign(mask + t, len, sign);
    apply_span<kPerLane>(dy + t, x + t, sign, dx + t, dr ? dr + t : nullptr, len, scale + k, shift + k, k1 + k,
                         k2 + k, k3 + k, activation, slope);
  });
}

std::tuple<at::Tensor, at::Tensor> batch_norm_act_backward_apply_cpu(
    const at::Tensor& grad_output, const at::Tensor& input, const c10::optional<at::Tensor>& weight,
    const c10::optional<at::Tensor>& bias, const at::Tensor& mask, const at::Tensor& mean,
    const at::Tensor& invstd, const at::Tensor& mean_grad, const at::Tensor& mean_grad_centered,
    int64_t activation, double negative_slope, bool residual_grad) {
  check_batch_norm_act_backward_apply(grad_output, input, weight, bias, mask, mean, invstd, mean_grad,
                                      mean_grad_centered, activation);
  const BatchNormBackwardTensors t =
      batch_norm_backward_tensors(grad_output, input, weight, bias, mask, mean, invstd, activation);
  const at::Tensor mg = mean_grad.contiguous(), mgx = mean_grad_centered.contiguous();
  at::Tensor grad_input = at::empty_like(t.input);
  at::Tensor grad_residual = residual_grad ? at::empty_like(t.input) : at::empty({0}, t.input.options());
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, t.input.scalar_type(), "batch_norm_act_backward_apply", [&] {
    using acc_t = opmath_t<scalar_t>;
    const int64_t C = t.layout.channels;
    std::vector<acc_t> scale, shift, k1(C), k2(C), k3(C);
    forward_coefficients(t.params, scale, shift);
    for (int64_t c = 0; c < C; ++c)
      bn::backward_coefficients(t.params.mean.data_ptr<acc_t>()[c], t.params.invstd.data_ptr<acc_t>()[c],
                                t.params.weight.data_ptr<acc_t>()[c], mg.data_ptr<acc_t>()[c],
                                mgx.data_ptr<acc_t>()[c], k1[c], k2[c], k3[c]);
    const scalar_t* dy = t.grad_output.const_data_ptr<scalar_t>();
    const scalar_t* x = t.input.const_data_ptr<scalar_t>();
    const bool* m = t.mask.defined() ? t.mask.const_data_ptr<bool>() : nullptr;
    scalar_t* dx = grad_input.data_ptr<scalar_t>();
    scalar_t* dr = residual_grad ? grad_residual.data_ptr<scalar_t>() : nullptr;
    const acc_t slope = static_cast<acc_t>(negative_slope);
    for_each_span(t.layout, [&](int64_t o, int64_t n, int64_t c, auto per_lane) {
      apply_span_with_mask<decltype(per_lane)::value>(dy + o, x + o, m ? m + o : nullptr, dx + o,
                                                      dr ? dr + o : nullptr, n, scale.data() + c, shift.data() + c,
                                                      k1.data() + c, k2.data() + c, k3.data() + c, activation, slope);
    });
  });
  return {grad_input, grad_residual};
}

}  // namespace
}  // namespace CPU_CAPABILITY

template <>
void register_batch_norm_kernels<Capability::CPU_CAPABILITY>(torch::Library& m) {
  m.impl("batch_norm_stats", &CPU_CAPABILITY::batch_norm_stats_cpu);
  m.impl("batch_norm_train_stats", &CPU_CAPABILITY::batch_norm_train_stats_cpu);
  m.impl("batch_norm_act", &CPU_CAPABILITY::batch_norm_act_cpu);
  m.impl("batch_norm_act_backward", &cnnkit::batch_norm_act_backward);
  m.impl("batch_norm_act_backward_reduce", &CPU_CAPABILITY::batch_norm_act_backward_reduce_cpu);
  m.impl("batch_norm_act_backward_apply", &CPU_CAPABILITY::batch_norm_act_backward_apply_cpu);
}

}  // namespace cpu
}  // namespace cnnkit
