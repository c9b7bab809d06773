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

// Positions per block of the channels-last statistics, taken kStatsVectors vectors of
// channels at a time: that part of the block is read twice (mean, then squared deviations),
// the second time from L1 (32 positions of 64 float channels under AVX-512: 8 KB).
constexpr int64_t kStatsBlock = 32;
constexpr int kStatsVectors = 4;
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

// Parallel tasks of a reduction: enough for every thread of a many-core CPU, and fixed, not
// taken from the thread count: the tasks' partial results, and so the rounding (and, near
// float's range, an overflow of a partial variance), never depend on the threads.
constexpr int64_t kReductionTasks = 64;

// Number of batch slices per channel so that channels * slices gives every thread work.
int64_t batch_slices(int64_t batch, int64_t channels) {
  if (channels == 0) return 1;  // nothing to reduce
  const int64_t wanted = (kReductionTasks + channels - 1) / channels;
  return std::max<int64_t>(1, std::min(batch, wanted));
}

// Number of slices of the positions of a channels-last reduction: a slice carries C partial
// results, so at least kSlicePositions positions each, and at most kPositionSlices slices.
constexpr int64_t kSlicePositions = 32;
constexpr int64_t kPositionSlices = 16;
int64_t position_slices(int64_t positions) {
  return std::max<int64_t>(1, std::min<int64_t>(positions / kSlicePositions, kPositionSlices));
}

// The statistics kernels work on x - pivot, pivot being one of the channel's own values:
// means of blocks then sit near zero, where float keeps their differences exact enough
// for the merge, even for data far from zero (mean 1000, std 0.01). Each value enters its
// row's sums already divided by the row's length, so the sums overflow only where the mean
// or the variance itself does: float data near 1e19 has a finite variance, while its sum
// of squares is out of range.

// Runs acc[j] = step(load(x + i), acc[j]) over the vectors of a row in four independent
// chains (one chain would wait on each add's latency), and returns their sum.
template <typename scalar_t, typename Step>
inline opmath_t<scalar_t> row_reduce(const scalar_t* x, int64_t n, int64_t& i, const Step& step) {
  using Vec = OpVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  Vec acc[4] = {Vec(0), Vec(0), Vec(0), Vec(0)};
  for (; i + 4 * V <= n; i += 4 * V)
    for (int j = 0; j < 4; ++j) acc[j] = step(load_opmath(x + i + j * V), acc[j]);
  for (; i + V <= n; i += V) acc[0] = step(load_opmath(x + i), acc[0]);
  return at::vec::vec_reduce_all([](Vec a, Vec b) { return a + b; }, (acc[0] + acc[1]) + (acc[2] + acc[3]));
}

// mean(x - pivot) over a row.
template <typename scalar_t>
opmath_t<scalar_t> row_mean(const scalar_t* x, int64_t n, opmath_t<scalar_t> pivot) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(n);
  const Vec vpivot(pivot), vinv_n(inv_n);
  int64_t i = 0;
  acc_t sum = row_reduce(x, n, i, [&](Vec v, Vec acc) { return at::vec::fmadd(v - vpivot, vinv_n, acc); });
  for (; i < n; ++i) sum += (static_cast<acc_t>(x[i]) - pivot) * inv_n;
  return sum;
}

// mean((x - pivot - mean)^2) over a row, mean being that of x - pivot.
template <typename scalar_t>
opmath_t<scalar_t> row_variance(const scalar_t* x, int64_t n, opmath_t<scalar_t> pivot, opmath_t<scalar_t> mean) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  const acc_t inv_n = acc_t(1) / static_cast<acc_t>(n);
  const Vec vpivot(pivot), vmean(mean), vinv_n(inv_n);
  int64_t i = 0;
  acc_t sum = row_reduce(x, n, i, [&](Vec v, Vec acc) {
    const Vec d = (v - vpivot) - vmean;
    return at::vec::fmadd(d * vinv_n, d, acc);
  });
  for (; i < n; ++i) {
    const acc_t d = (static_cast<acc_t>(x[i]) - pivot) - mean;
    sum += d * inv_n * d;
  }
  return sum;
}

// ---------------------------------------------------------------- statistics

template <typename scalar_t>
void stats_channels_first(const scalar_t* x, const DenseLayout& l, const opmath_t<scalar_t>* pivot,
                          opmath_t<scalar_t>* mean, opmath_t<scalar_t>* var, int64_t* count) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = l.channels, S = l.positions;
  const int64_t slices = batch_slices(l.batch, C);
  std::vector<acc_t> part_mean(C * slices, 0), part_var(C * slices, 0);
  std::vector<int64_t> part_count(C * slices, 0);
  at::parallel_for(0, C * slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t c = task / slices, slice = task % slices;
      acc_t task_mean = 0, task_var = 0;
      int64_t task_count = 0;
      for (int64_t n = l.batch * slice / slices; n < l.batch * (slice + 1) / slices; ++n) {
        const scalar_t* row = x + (n * C + c) * S;
        const acc_t mean_of_row = row_mean(row, S, pivot[c]);
        bn::merge_moments(task_mean, task_var, task_count, mean_of_row,
                          row_variance(row, S, pivot[c], mean_of_row), S);
      }
      part_mean[task] = task_mean;
      part_var[task] = task_var;
      part_count[task] = task_count;
    }
  });
  for (int64_t c = 0; c < C; ++c) {
    for (int64_t s = 0; s < slices; ++s) {
      const int64_t task = c * slices + s;
      bn::merge_moments(mean[c], var[c], count[c], part_mean[task], part_var[task], part_count[task]);
    }
  }
}

// bn::merge_moments over the C channels of a channels-last reduction, which share one count.
template <typename acc_t>
void merge_channel_moments(acc_t* mean, acc_t* var, int64_t& count, const acc_t* block_mean, const acc_t* block_var,
                           int64_t block_count, int64_t C) {
  using Vec = at::vec::Vectorized<acc_t>;
  if (block_count == 0) return;
  if (count == 0) {  // not through the update, as in bn::merge_moments
    std::copy(block_mean, block_mean + C, mean);
    std::copy(block_var, block_var + C, var);
    count = block_count;
    return;
  }
  const acc_t share = static_cast<acc_t>(count) / static_cast<acc_t>(count + block_count);
  const acc_t block_share = static_cast<acc_t>(block_count) / static_cast<acc_t>(count + block_count);
  const Vec vshare(share), vblock_share(block_share);
  int64_t c = 0;
  for (; c + Vec::size() <= C; c += Vec::size()) {
    const Vec delta = Vec::loadu(block_mean + c) - Vec::loadu(mean + c);
    at::vec::fmadd(delta, vblock_share, Vec::loadu(mean + c)).store(mean + c);
    (Vec::loadu(var + c) * vshare + Vec::loadu(block_var + c) * vblock_share +
     (delta * vshare) * (delta * vblock_share))
        .store(var + c);
  }
  for (; c < C; ++c) {
    const acc_t delta = block_mean[c] - mean[c];
    mean[c] += delta * block_share;
    var[c] = var[c] * share + block_var[c] * block_share + (delta * share) * (delta * block_share);
  }
  count += block_count;
}

// Mean and variance of x - pivot over a block of `rows` positions, for kVectors vectors of
// channels from `x` on (a position's channels C apart): the sums stay in registers, and the
// second pass reads the block from L1, where the first left it.
template <int kVectors, typename scalar_t>
inline void block_moments(const scalar_t* x, int64_t C, int64_t rows, const opmath_t<scalar_t>* pivot,
                          opmath_t<scalar_t>* block_mean, opmath_t<scalar_t>* block_var) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  const Vec vinv_rows(acc_t(1) / static_cast<acc_t>(rows));
  Vec vpivot[kVectors], mean[kVectors], acc[kVectors];
  for (int j = 0; j < kVectors; ++j) {
    vpivot[j] = Vec::loadu(pivot + j * V);
    acc[j] = Vec(0);
  }
  for (int64_t p = 0; p < rows; ++p)
    for (int j = 0; j < kVectors; ++j)
      acc[j] = at::vec::fmadd(load_opmath(x + p * C + j * V) - vpivot[j], vinv_rows, acc[j]);
  for (int j = 0; j < kVectors; ++j) {
    mean[j] = acc[j];
    mean[j].store(block_mean + j * V);
    acc[j] = Vec(0);
  }
  for (int64_t p = 0; p < rows; ++p)
    for (int j = 0; j < kVectors; ++j) {
      const Vec d = (load_opmath(x + p * C + j * V) - vpivot[j]) - mean[j];
      acc[j] = at::vec::fmadd(d * vinv_rows, d, acc[j]);
    }
  for (int j = 0; j < kVectors; ++j) acc[j].store(block_var + j * V);
}

// The same for one channel.
template <typename scalar_t>
inline void block_moments_scalar(const scalar_t* x, int64_t C, int64_t rows, opmath_t<scalar_t> pivot,
                                 opmath_t<scalar_t>& block_mean, opmath_t<scalar_t>& block_var) {
  using acc_t = opmath_t<scalar_t>;
  const acc_t inv_rows = acc_t(1) / static_cast<acc_t>(rows);
  acc_t mean = 0, var = 0;
  for (int64_t p = 0; p < rows; ++p) mean += (static_cast<acc_t>(x[p * C]) - pivot) * inv_rows;
  for (int64_t p = 0; p < rows; ++p) {
    const acc_t d = (static_cast<acc_t>(x[p * C]) - pivot) - mean;
    var += d * inv_rows * d;
  }
  block_mean = mean;
  block_var = var;
}

template <typename scalar_t>
void stats_channels_last(const scalar_t* x, const DenseLayout& l, const opmath_t<scalar_t>* pivot,
                         opmath_t<scalar_t>* mean, opmath_t<scalar_t>* var, int64_t* count) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int64_t V = OpVec<scalar_t>::size();
  const int64_t C = l.channels, P = l.batch * l.positions;
  const int64_t slices = position_slices(P);
  // Per slice: running mean and variance per channel (all channels share the count), and
  // the block's mean and variance.
  std::vector<acc_t> part(4 * C * slices, 0);
  std::vector<int64_t> part_count(slices, 0);
  at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
    for (int64_t slice = begin; slice < end; ++slice) {
      acc_t* run_mean = part.data() + 4 * C * slice;
      acc_t* run_var = run_mean + C;
      acc_t* block_mean = run_var + C;
      acc_t* block_var = block_mean + C;
      const int64_t p_end = P * (slice + 1) / slices;
      for (int64_t p0 = P * slice / slices; p0 < p_end; p0 += kStatsBlock) {
        const int64_t rows = std::min(kStatsBlock, p_end - p0);
        const scalar_t* block = x + p0 * C;
        int64_t c = 0;
        for (; c + kStatsVectors * V <= C; c += kStatsVectors * V)
          block_moments<kStatsVectors>(block + c, C, rows, pivot + c, block_mean + c, block_var + c);
        for (; c + V <= C; c += V) block_moments<1>(block + c, C, rows, pivot + c, block_mean + c, block_var + c);
        for (; c < C; ++c) block_moments_scalar(block + c, C, rows, pivot[c], block_mean[c], block_var[c]);
        merge_channel_moments(run_mean, run_var, part_count[slice], block_mean, block_var, rows, C);
      }
    }
  });
  int64_t total = 0;
  for (int64_t s = 0; s < slices; ++s) {
    const acc_t* run_mean = part.data() + 4 * C * s;
    merge_channel_moments(mean, var, total, run_mean, run_mean + C, part_count[s], C);
  }
  std::fill(count, count + C, total);
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
    acc_t* var_data = var.data_ptr<acc_t>();
    if (layout.channels_last) {
      stats_channels_last(x, layout, pivot.data(), mean_data, var_data, count.data());
    } else {
      stats_channels_first(x, layout, pivot.data(), mean_data, var_data, count.data());
    }
    for (int64_t c = 0; c < C; ++c) mean_data[c] = count[c] > 0 ? mean_data[c] + pivot[c] : acc_t(0);
  });
  return {mean, var};
}

std::tuple<at::Tensor, at::Tensor> batch_norm_train_stats_cpu(const at::Tensor& input,
                                                              const c10::optional<at::Tensor>& running_mean,
                                                              const c10::optional<at::Tensor>& running_var,
                                                              double momentum, double eps) {
  check_running_stats(input, running_mean, running_var);
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

// The per-channel arrays of pre = (x - mean) * scale + bias (bn::normalize), from a span's
// first channel: [0] for a row of one channel, [i] for lane i of a position's channels.
template <typename acc_t>
struct Normalize {
  const acc_t* mean;
  const acc_t* scale;
  const acc_t* bias;
  Normalize from(int64_t channel) const { return {mean + channel, scale + channel, bias + channel}; }
  template <typename Tiles>
  Normalize tiled(Tiles& tiles) const { return {tiles.tile(mean), tiles.tile(scale), tiles.tile(bias)}; }
};

// Per-channel values of a span as a vector at lane offset i: broadcast (one channel) or loaded.
template <bool kPerLane, typename acc_t>
inline at::vec::Vectorized<acc_t> lanes(const acc_t* values, int64_t i) {
  return kPerLane ? at::vec::Vectorized<acc_t>::loadu(values + i) : at::vec::Vectorized<acc_t>(values[0]);
}

template <bool kPerLane, typename scalar_t>
inline OpVec<scalar_t> pre_vec(const scalar_t* x, int64_t i, const Normalize<opmath_t<scalar_t>>& nz) {
  return at::vec::fmadd(load_opmath(x + i) - lanes<kPerLane>(nz.mean, i), lanes<kPerLane>(nz.scale, i),
                        lanes<kPerLane>(nz.bias, i));
}

template <bool kPerLane, typename scalar_t>
inline opmath_t<scalar_t> pre_scalar(const scalar_t* x, int64_t i, const Normalize<opmath_t<scalar_t>>& nz) {
  const int64_t k = kPerLane ? i : 0;
  return bn::normalize(static_cast<opmath_t<scalar_t>>(x[i]), nz.mean[k], nz.scale[k], nz.bias[k]);
}

// One span of `n` values: a row of one channel (kPerLane false) or a position's channels
// (kPerLane true). `pre_out`, when given, receives the pre-activation values (to become the
// saved mask).
template <bool kPerLane, typename scalar_t>
void forward_span(const scalar_t* x, const scalar_t* residual, scalar_t* y, opmath_t<scalar_t>* pre_out, int64_t n,
                  const Normalize<opmath_t<scalar_t>>& nz, int64_t activation, opmath_t<scalar_t> slope) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  const Vec zero(0), vslope(slope);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    Vec pre = pre_vec<kPerLane>(x, i, nz);
    if (residual) pre += load_opmath(residual + i);
    Vec out = pre;
    if (activation == bn::kRelu) out = at::vec::maximum(pre, zero);
    if (activation == bn::kLeakyRelu) out = Vec::blendv(pre * vslope, pre, pre > zero);
    store_opmath(y + i, out);
    if (pre_out) pre.store(pre_out + i);
  }
  for (; i < n; ++i) {
    acc_t pre = pre_scalar<kPerLane>(x, i, nz);
    if (residual) pre += static_cast<acc_t>(residual[i]);
    y[i] = static_cast<scalar_t>(bn::activate(pre, activation, slope));
    if (pre_out) pre_out[i] = pre;
  }
}

template <bool kPerLane, typename scalar_t>
void forward_span_with_mask(const scalar_t* x, const scalar_t* residual, scalar_t* y, bool* mask, int64_t n,
                            const Normalize<opmath_t<scalar_t>>& nz, int64_t activation, opmath_t<scalar_t> slope) {
  if (!mask) return forward_span<kPerLane>(x, residual, y, nullptr, n, nz, activation, slope);
  alignas(64) opmath_t<scalar_t> pre[kMaskTile];
  for_each_tile(n, [&](int64_t t, int64_t len) {
    forward_span<kPerLane>(x + t, residual ? residual + t : nullptr, y + t, pre, len, nz.from(kPerLane ? t : 0),
                           activation, slope);
    sign_to_mask(pre, len, mask + t);
  });
}

// The per-channel scale of the forward, weight * invstd, and the arrays of pre around it.
template <typename acc_t>
Normalize<acc_t> forward_coefficients(const ChannelParams& p, std::vector<acc_t>& scale) {
  const int64_t C = p.mean.numel();
  const acc_t* invstd = p.invstd.data_ptr<acc_t>();
  const acc_t* weight = p.weight.data_ptr<acc_t>();
  scale.resize(C);
  for (int64_t c = 0; c < C; ++c) scale[c] = weight[c] * invstd[c];
  return {p.mean.data_ptr<acc_t>(), scale.data(), p.bias.data_ptr<acc_t>()};
}

// Positions per channels-last span: one, or, for few channels, enough for kMinSpan values,
// so that a span's fixed work (its call, its tail, a mask tile) is spread over more values;
// the per-channel arrays are then repeated once per position (ChannelTiles).
constexpr int64_t kMinSpan = 256;
inline int64_t span_positions(const DenseLayout& l) {
  return l.channels_last && l.channels > 0 ? std::max<int64_t>(1, kMinSpan / l.channels) : 1;
}

// Per-channel arrays repeated `copies` times, for spans of several positions' channels.
template <typename acc_t>
class ChannelTiles {
 public:
  ChannelTiles(int64_t channels, int64_t copies) : channels_(channels), copies_(copies) {}
  const acc_t* tile(const acc_t* values) {
    if (copies_ == 1) return values;
    std::vector<acc_t>& out = storage_.emplace_back(channels_ * copies_);
    for (int64_t k = 0; k < copies_; ++k) std::copy(values, values + channels_, out.data() + k * channels_);
    return out.data();
  }

 private:
  int64_t channels_, copies_;
  std::vector<std::vector<acc_t>> storage_;  // moving an inner vector keeps its data in place
};

// Runs fn(offset, n, c, per_lane) in parallel over the spans of the elementwise passes: the
// rows of n = S values of one channel c (channels-first; per_lane std::false_type) or the
// channels of span_positions(l) positions (channels-last; c = 0, per_lane std::true_type).
template <typename Fn>
void for_each_span(const DenseLayout& l, const Fn& fn) {
  const int64_t span = l.channels_last ? l.channels * span_positions(l) : l.positions;
  const int64_t total = l.batch * l.channels * l.positions;
  const int64_t spans = span > 0 ? (total + span - 1) / span : 0;
  const int64_t grain = std::max<int64_t>(1, kGrainElements / std::max<int64_t>(span, 1));
  at::parallel_for(0, spans, grain, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) {
      if (l.channels_last) {
        fn(s * span, std::min(span, total - s * span), int64_t{0}, std::true_type{});
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
    std::vector<acc_t> scale;
    ChannelTiles<acc_t> tiles(t.layout.channels, span_positions(t.layout));
    const Normalize<acc_t> nz = forward_coefficients(t.params, scale).tiled(tiles);
    const scalar_t* x = t.input.const_data_ptr<scalar_t>();
    const scalar_t* r = t.residual.defined() ? t.residual.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y = t.output.data_ptr<scalar_t>();
    bool* m = t.save_mask ? t.mask.data_ptr<bool>() : nullptr;
    const acc_t slope = static_cast<acc_t>(negative_slope);
    for_each_span(t.layout, [&](int64_t o, int64_t n, int64_t c, auto per_lane) {
      forward_span_with_mask<decltype(per_lane)::value>(x + o, r ? r + o : nullptr, y + o, m ? m + o : nullptr, n,
                                                        nz.from(c), activation, slope);
    });
  });
  return {t.output, t.mask};
}

// ---------------------------------------------------------------- backward

// g = dy * act'(pre) for one vector, pre recomputed from x or, when `sign` is given, read
// from it (+1 or -1 per element: the saved mask).
template <bool kPerLane, typename scalar_t>
inline OpVec<scalar_t> grad_vec(const scalar_t* dy, const scalar_t* x, const opmath_t<scalar_t>* sign, int64_t i,
                                const Normalize<opmath_t<scalar_t>>& nz, int64_t activation,
                                opmath_t<scalar_t> slope) {
  using Vec = OpVec<scalar_t>;
  const Vec g = load_opmath(dy + i);
  if (activation == bn::kIdentity) return g;
  const Vec pre = sign ? Vec::loadu(sign + i) : pre_vec<kPerLane>(x, i, nz);
  const Vec zero(0);
  const Vec negative = activation == bn::kRelu ? zero : g * Vec(slope);
  return Vec::blendv(negative, g, pre > zero);
}

template <bool kPerLane, typename scalar_t>
inline opmath_t<scalar_t> grad_scalar(const scalar_t* dy, const scalar_t* x, const opmath_t<scalar_t>* sign, int64_t i,
                                      const Normalize<opmath_t<scalar_t>>& nz, int64_t activation,
                                      opmath_t<scalar_t> slope) {
  using acc_t = opmath_t<scalar_t>;
  const bool positive = sign ? sign[i] > acc_t(0) : pre_scalar<kPerLane>(x, i, nz) > acc_t(0);
  return bn::activation_grad(static_cast<acc_t>(dy[i]), positive, activation, slope);
}

// Adds sum(g) and sum(g * (x - mean)) of a span to sums[0] and sums[1] (kPerLane false)
// or to sum_g[i] and sum_gx[i] per lane (kPerLane true).
template <bool kPerLane, typename scalar_t>
void reduce_span(const scalar_t* dy, const scalar_t* x, const opmath_t<scalar_t>* sign, int64_t n,
                 const Normalize<opmath_t<scalar_t>>& nz, int64_t activation, opmath_t<scalar_t> slope,
                 opmath_t<scalar_t>* sum_g, opmath_t<scalar_t>* sum_gx) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  Vec acc_g(0), acc_gx(0);
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec g = grad_vec<kPerLane>(dy, x, sign, i, nz, activation, slope);
    const Vec centered = load_opmath(x + i) - lanes<kPerLane>(nz.mean, i);
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
    const acc_t g = grad_scalar<kPerLane>(dy, x, sign, i, nz, activation, slope);
    const acc_t gx = g * (static_cast<acc_t>(x[i]) - nz.mean[k]);
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
                           const Normalize<opmath_t<scalar_t>>& nz, int64_t activation, opmath_t<scalar_t> slope,
                           opmath_t<scalar_t>* sum_g, opmath_t<scalar_t>* sum_gx) {
  if (!mask) return reduce_span<kPerLane>(dy, x, nullptr, n, nz, activation, slope, sum_g, sum_gx);
  alignas(64) opmath_t<scalar_t> sign[kMaskTile];
  for_each_tile(n, [&](int64_t t, int64_t len) {
    const int64_t k = kPerLane ? t : 0;
    mask_to_sign(mask + t, len, sign);
    reduce_span<kPerLane>(dy + t, x + t, sign, len, nz.from(k), activation, slope, sum_g + k, sum_gx + k);
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
    std::vector<acc_t> scale;
    const Normalize<acc_t> nz = forward_coefficients(t.params, scale);
    const scalar_t* dy = t.grad_output.const_data_ptr<scalar_t>();
    const scalar_t* x = t.input.const_data_ptr<scalar_t>();
    const bool* m = t.mask.defined() ? t.mask.const_data_ptr<bool>() : nullptr;
    const acc_t slope = static_cast<acc_t>(negative_slope);
    acc_t* out_g = sum_g.data_ptr<acc_t>();
    acc_t* out_gx = sum_gx.data_ptr<acc_t>();
    if (l.channels_last) {
      // Spans of `copies` positions, as in for_each_span: per-lane sums of copies * C values
      // per slice, folded onto the C channels after.
      const int64_t P = l.batch * l.positions, copies = span_positions(l), lanes = copies * C;
      ChannelTiles<acc_t> tiles(C, copies);
      const Normalize<acc_t> tiled = nz.tiled(tiles);
      const int64_t slices = position_slices(P);
      std::vector<acc_t> part(2 * lanes * slices, 0);
      at::parallel_for(0, slices, 1, [&](int64_t begin, int64_t end) {
        for (int64_t slice = begin; slice < end; ++slice) {
          acc_t* part_g = part.data() + 2 * lanes * slice;
          const int64_t p_end = P * (slice + 1) / slices;
          for (int64_t p = P * slice / slices; p < p_end; p += copies) {
            const int64_t o = p * C;
            reduce_span_with_mask<true>(dy + o, x + o, m ? m + o : nullptr, std::min(copies, p_end - p) * C, tiled,
                                        activation, slope, part_g, part_g + lanes);
          }
        }
      });
      for (int64_t s = 0; s < slices; ++s)
        for (int64_t k = 0; k < lanes; ++k) {
          out_g[k % C] += part[2 * lanes * s + k];
          out_gx[k % C] += part[2 * lanes * s + lanes + k];
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
            reduce_span_with_mask<false>(dy + o, x + o, m ? m + o : nullptr, S, nz.from(c), activation, slope,
                                         &part[2 * task], &part[2 * task + 1]);
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

// The per-channel arrays of bn::grad_input, from a span's first channel.
template <typename acc_t>
struct GradInput {
  const acc_t* mean_grad;
  const acc_t* grad_scale;
  const acc_t* projection;
  GradInput from(int64_t channel) const { return {mean_grad + channel, grad_scale + channel, projection + channel}; }
  template <typename Tiles>
  GradInput tiled(Tiles& tiles) const {
    return {tiles.tile(mean_grad), tiles.tile(grad_scale), tiles.tile(projection)};
  }
};

// dx (bn::grad_input) and, when wanted, grad_residual = g over one span.
template <bool kPerLane, typename scalar_t>
void apply_span(const scalar_t* dy, const scalar_t* x, const opmath_t<scalar_t>* sign, scalar_t* dx, scalar_t* dr,
                int64_t n, const Normalize<opmath_t<scalar_t>>& nz, const GradInput<opmath_t<scalar_t>>& gi,
                int64_t activation, opmath_t<scalar_t> slope) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  int64_t i = 0;
  for (; i + Vec::size() <= n; i += Vec::size()) {
    const Vec g = grad_vec<kPerLane>(dy, x, sign, i, nz, activation, slope);
    const Vec centered = load_opmath(x + i) - lanes<kPerLane>(nz.mean, i);
    const Vec dxhat = (g - lanes<kPerLane>(gi.mean_grad, i)) - centered * lanes<kPerLane>(gi.projection, i);
    store_opmath(dx + i, dxhat * lanes<kPerLane>(gi.grad_scale, i));
    if (dr) store_opmath(dr + i, g);
  }
  for (; i < n; ++i) {
    const int64_t k = kPerLane ? i : 0;
    const acc_t g = grad_scalar<kPerLane>(dy, x, sign, i, nz, activation, slope);
    dx[i] = static_cast<scalar_t>(
        bn::grad_input(g, static_cast<acc_t>(x[i]), nz.mean[k], gi.mean_grad[k], gi.grad_scale[k], gi.projection[k]));
    if (dr) dr[i] = static_cast<scalar_t>(g);
  }
}

template <bool kPerLane, typename scalar_t>
void apply_span_with_mask(const scalar_t* dy, const scalar_t* x, const bool* mask, scalar_t* dx, scalar_t* dr,
                          int64_t n, const Normalize<opmath_t<scalar_t>>& nz, const GradInput<opmath_t<scalar_t>>& gi,
                          int64_t activation, opmath_t<scalar_t> slope) {
  if (!mask) return apply_span<kPerLane>(dy, x, nullptr, dx, dr, n, nz, gi, activation, slope);
  alignas(64) opmath_t<scalar_t> sign[kMaskTile];
  for_each_tile(n, [&](int64_t t, int64_t len) {
    const int64_t k = kPerLane ? t : 0;
    mask_to_sign(mask + t, len, sign);
    apply_span<kPerLane>(dy + t, x + t, sign, dx + t, dr ? dr + t : nullptr, len, nz.from(k), gi.from(k), activation,
                         slope);
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
    std::vector<acc_t> scale, grad_scale(C), projection(C);
    ChannelTiles<acc_t> tiles(C, span_positions(t.layout));
    const Normalize<acc_t> nz = forward_coefficients(t.params, scale).tiled(tiles);
    for (int64_t c = 0; c < C; ++c)
      bn::backward_coefficients(t.params.invstd.data_ptr<acc_t>()[c], t.params.weight.data_ptr<acc_t>()[c],
                                mgx.data_ptr<acc_t>()[c], grad_scale[c], projection[c]);
    const GradInput<acc_t> gi =
        GradInput<acc_t>{mg.data_ptr<acc_t>(), grad_scale.data(), projection.data()}.tiled(tiles);
    const scalar_t* dy = t.grad_output.const_data_ptr<scalar_t>();
    const scalar_t* x = t.input.const_data_ptr<scalar_t>();
    const bool* m = t.mask.defined() ? t.mask.const_data_ptr<bool>() : nullptr;
    scalar_t* dx = grad_input.data_ptr<scalar_t>();
    scalar_t* dr = residual_grad ? grad_residual.data_ptr<scalar_t>() : nullptr;
    const acc_t slope = static_cast<acc_t>(negative_slope);
    for_each_span(t.layout, [&](int64_t o, int64_t n, int64_t c, auto per_lane) {
      apply_span_with_mask<decltype(per_lane)::value>(dy + o, x + o, m ? m + o : nullptr, dx + o,
                                                      dr ? dr + o : nullptr, n, nz.from(c), gi.from(c), activation,
                                                      slope);
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
