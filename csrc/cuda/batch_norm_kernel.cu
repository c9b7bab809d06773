// BatchNorm + activation (+ residual add) on CUDA.
//
// Reductions (batch statistics, backward sums) run in two kernels: blocks of 32 x 8 threads
// each reduce one slice of the batch for their channels into a workspace, then one thread
// per channel merges the slices. In channels-first order a block serves one channel and its
// threads walk consecutive positions; in channels-last order its 32 columns are 32
// consecutive channels and its 8 rows walk positions, so loads are coalesced either way.
// The statistics are moments of x minus a per-channel pivot: each thread sums runs of kRun
// elements as offsets from the run's first element and merges the runs' moments by Chan's
// update (one division per run, not per element); Chan's update merges threads and slices.
// The elementwise passes give each thread the elements of one channel (element_range).
#include <cnnkit/batch_norm.h>

#include <algorithm>

#include "cuda/batch_norm_kernel.h"
#include "cuda/launch.cuh"
#include "cuda/opmath.cuh"

namespace cnnkit {
namespace cuda {
namespace {

namespace bn = cnnkit::batch_norm;

constexpr int kColumns = 32;
constexpr int kRows = 8;
constexpr int kThreads = kColumns * kRows;
constexpr int kRun = 16;
constexpr int kElementsPerThread = 8;
constexpr int64_t kMaxGridY = 65535;
// The reductions' grid: about kReduceBlocks blocks in all (several per multiprocessor on
// GPUs of 100-150 SMs, so that enough loads are in flight), but no slice of a channel's
// positions shorter than kMinSlice (4 per thread), nor more than kMaxSlices slices.
constexpr int64_t kReduceBlocks = 1024;
constexpr int64_t kMinSlice = 4 * kThreads;
constexpr int64_t kMaxSlices = 1024;

// A layout with one position per channel is the same memory in either order; the kernels
// serve it as channels-last, whose mapping puts neighbouring channels on neighbouring threads
// (channels-first's would give each block row a single element).
DenseLayout kernel_layout(DenseLayout s) {
  if (s.positions == 1) s.channels_last = true;
  return s;
}

// Blocks per slice: one per channel (channels-first) or per 32 channels (channels-last).
int64_t reduce_columns(const DenseLayout& s) {
  return s.channels_last ? (s.channels + kColumns - 1) / kColumns : s.channels;
}

int64_t slices_for(const DenseLayout& s) {
  const int64_t columns = std::max<int64_t>(reduce_columns(s), 1);  // no channels: no launch
  const int64_t wanted = (kReduceBlocks + columns - 1) / columns;
  const int64_t longest = (s.batch * s.positions + kMinSlice - 1) / kMinSlice;
  return std::max<int64_t>(1, std::min({wanted, longest, kMaxSlices}));
}

// The addresses of one channel's elements: element p in [0, N*S) of channel c.
struct ChannelWalk {
  int64_t channels, positions;
  bool channels_last;
  __device__ __forceinline__ int64_t offset(int64_t c, int64_t p) const {
    if (channels_last) return p * channels + c;
    const int64_t n = p / positions;
    return (n * channels + c) * positions + (p - n * positions);
  }
};

// Which channel this thread serves, and how it walks the slice [begin, end) of positions.
struct SliceWork {
  int64_t channel, first, step;
  bool active;
};

__device__ __forceinline__ SliceWork slice_work(const DenseLayout& s) {
  const int tid = threadIdx.y * kColumns + threadIdx.x;
  if (s.channels_last) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumns + threadIdx.x;
    return {c, static_cast<int64_t>(threadIdx.y), kRows, c < s.channels};
  }
  return {static_cast<int64_t>(blockIdx.x), static_cast<int64_t>(tid), kThreads, true};
}

__device__ __forceinline__ void slice_bounds(const DenseLayout& s, int64_t& begin, int64_t& end) {
  const int64_t total = s.batch * s.positions;
  begin = total * blockIdx.y / gridDim.y;
  end = total * (blockIdx.y + 1) / gridDim.y;
}

// Merges the partial results of the block's threads that share a channel into the
// thread with threadIdx.y == 0 (channels-last) or threadIdx 0 (channels-first).
// `merge(into, from)` combines two shared-memory slots.
template <typename Merge>
__device__ __forceinline__ void block_merge(bool channels_last, const Merge& merge) {
  const int tid = threadIdx.y * kColumns + threadIdx.x;
  __syncthreads();
  if (channels_last) {
    if (threadIdx.y == 0)
      for (int row = 1; row < kRows; ++row) merge(tid, row * kColumns + threadIdx.x);
  } else {
    for (int half = kThreads / 2; half > 0; half /= 2) {
      if (tid < half) merge(tid, tid + half);
      __syncthreads();
    }
  }
  __syncthreads();
}

__device__ __forceinline__ bool writes_partial(bool channels_last) {
  return channels_last ? threadIdx.y == 0 : (threadIdx.x == 0 && threadIdx.y == 0);
}

// ---------------------------------------------------------------- statistics

template <typename T>
__global__ void stats_partial_kernel(const T* __restrict__ x, DenseLayout s,
                                     typename Opmath<T>::type* __restrict__ workspace) {
  using acc_t = typename Opmath<T>::type;
  __shared__ acc_t sh_mean[kThreads], sh_var[kThreads], sh_count[kThreads];
  const SliceWork w = slice_work(s);
  const ChannelWalk walk{s.channels, s.positions, s.channels_last};
  int64_t begin, end;
  slice_bounds(s, begin, end);
  // Moments of x - pivot, the pivot one of the channel's own values (its first), so that the
  // threads' and slices' means stay within a few standard deviations of zero and Chan's update
  // squares their differences without cancellation, even where |mean| is large against the
  // standard deviation. All threads of a channel share the pivot; the finish adds it back.
  acc_t mean = 0, var = 0;
  int64_t count = 0;  // an integer: a float count stops growing at 2^24
  if (w.active && begin < end) {
    const acc_t pivot = to_opmath(x[walk.offset(w.channel, 0)]);
    for (int64_t p = begin + w.first; p < end;) {
      // One run: offsets from its own first element, summed without a division.
      const acc_t first = to_opmath(x[walk.offset(w.channel, p)]);
      acc_t sum = 0, sum_sq = 0;
      int run = 0;
      for (; run < kRun && p < end; ++run, p += w.step) {
        const acc_t offset = to_opmath(x[walk.offset(w.channel, p)]) - first;
        sum += offset;
        sum_sq += offset * offset;
      }
      const acc_t shift = sum / static_cast<acc_t>(run);
      const acc_t run_var = sum_sq / static_cast<acc_t>(run) - shift * shift;
      bn::merge_moments(mean, var, count, (first - pivot) + shift, run_var < acc_t(0) ? acc_t(0) : run_var,
                        static_cast<int64_t>(run));
    }
  }
  const int tid = threadIdx.y * kColumns + threadIdx.x;
  sh_mean[tid] = mean;
  sh_var[tid] = var;
  sh_count[tid] = static_cast<acc_t>(count);
  block_merge(s.channels_last, [&](int into, int from) {
    bn::merge_moments(sh_mean[into], sh_var[into], sh_count[into], sh_mean[from], sh_var[from], sh_count[from]);
  });
  if (w.active && writes_partial(s.channels_last)) {
    const int64_t slot = (static_cast<int64_t>(blockIdx.y) * s.channels + w.channel) * 3;
    workspace[slot] = sh_mean[tid];
    workspace[slot + 1] = sh_var[tid];
    workspace[slot + 2] = sh_count[tid];
  }
}

template <typename T>
__global__ void stats_finish_kernel(const T* __restrict__ x, const typename Opmath<T>::type* __restrict__ workspace,
                                    int64_t slices, DenseLayout s, typename Opmath<T>::type* __restrict__ mean_out,
                                    typename Opmath<T>::type* __restrict__ var_out) {
  using acc_t = typename Opmath<T>::type;
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= s.channels) return;
  acc_t mean = 0, var = 0, count = 0;
  for (int64_t k = 0; k < slices; ++k) {
    const acc_t* slot = workspace + (k * s.channels + c) * 3;
    bn::merge_moments(mean, var, count, slot[0], slot[1], slot[2]);
  }
  // The partial means are of x - pivot (stats_partial_kernel).
  const ChannelWalk walk{s.channels, s.positions, s.channels_last};
  mean_out[c] = count > acc_t(0) ? to_opmath(x[walk.offset(c, 0)]) + mean : acc_t(0);
  var_out[c] = var;
}

// ---------------------------------------------------------------- elementwise

template <typename acc_t>
struct Channels {
  const acc_t* mean;
  const acc_t* invstd;
  const acc_t* weight;
  const acc_t* bias;
};

// One channel's forward coefficients, loaded once per thread: every pass gives each thread
// the elements of a single channel.
template <typename acc_t>
struct ChannelCoefficients {
  acc_t mean, scale, bias;
  __device__ __forceinline__ ChannelCoefficients(const Channels<acc_t>& ch, int64_t c)
      : mean(ch.mean[c]), scale(ch.weight[c] * ch.invstd[c]), bias(ch.bias[c]) {}
  __device__ __forceinline__ acc_t pre(acc_t x) const { return bn::normalize(x, mean, scale, bias); }
};

// The elements one thread of an elementwise pass serves: all of one channel, so that its
// coefficients are loaded once and no element needs a division to find its channel. Blocks
// of 32 x 8 threads, as the reductions': in channels-first order each of a block's 8 rows is
// one (n, c) plane and its 32 columns walk the plane's positions; in channels-last order the
// 32 columns are 32 consecutive channels and the 8 rows walk positions. Loads are coalesced
// either way; blockIdx.y splits the positions into chunks.
struct ElementRange {
  int64_t channel, first, step, end;  // elements first, first + step, ... below end
  bool active;
};

__device__ __forceinline__ ElementRange element_range(const DenseLayout& s) {
  if (s.channels_last) {
    const int64_t c = static_cast<int64_t>(blockIdx.x) * kColumns + threadIdx.x;
    const int64_t row = static_cast<int64_t>(blockIdx.y) * kRows + threadIdx.y;
    return {c, row * s.channels + c, static_cast<int64_t>(gridDim.y) * kRows * s.channels,
            s.batch * s.positions * s.channels, c < s.channels};
  }
  const int64_t plane = static_cast<int64_t>(blockIdx.x) * kRows + threadIdx.y;  // n * C + c
  const int64_t position = static_cast<int64_t>(blockIdx.y) * kColumns + threadIdx.x;
  return {plane % s.channels, plane * s.positions + position, static_cast<int64_t>(gridDim.y) * kColumns,
          (plane + 1) * s.positions, plane < s.batch * s.channels};
}

template <typename T>
__global__ void forward_kernel(const T* __restrict__ x, const T* __restrict__ residual, T* __restrict__ y,
                               bool* __restrict__ mask, Channels<typename Opmath<T>::type> ch, int64_t activation,
                               typename Opmath<T>::type slope, DenseLayout s) {
  using acc_t = typename Opmath<T>::type;
  const ElementRange r = element_range(s);
  if (!r.active) return;
  const ChannelCoefficients<acc_t> k(ch, r.channel);
  for (int64_t i = r.first; i < r.end; i += r.step) {
    acc_t pre = k.pre(to_opmath(x[i]));
    if (residual) pre += to_opmath(residual[i]);
    y[i] = from_opmath<T>(bn::activate(pre, activation, slope));
    if (mask) mask[i] = pre > acc_t(0);
  }
}

// g = dy * act'(pre) of element i, from the saved mask or from x (already loaded).
template <typename acc_t>
__device__ __forceinline__ acc_t grad_at(acc_t dy, acc_t x, const bool* mask, int64_t i,
                                         const ChannelCoefficients<acc_t>& k, int64_t activation, acc_t slope) {
  const bool positive = mask ? mask[i] : k.pre(x) > acc_t(0);
  return bn::activation_grad(dy, positive, activation, slope);
}

template <typename T>
__global__ void backward_reduce_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                               const bool* __restrict__ mask,
                                               Channels<typename Opmath<T>::type> ch, int64_t activation,
                                               typename Opmath<T>::type slope, DenseLayout s,
                                               typename Opmath<T>::type* __restrict__ workspace) {
  using acc_t = typename Opmath<T>::type;
  __shared__ acc_t sh_g[kThreads], sh_gx[kThreads];
  const SliceWork w = slice_work(s);
  const ChannelWalk walk{s.channels, s.positions, s.channels_last};
  int64_t begin, end;
  slice_bounds(s, begin, end);
  acc_t sum_g = 0, sum_gx = 0;
  if (w.active) {
    const ChannelCoefficients<acc_t> k(ch, w.channel);
    for (int64_t p = begin + w.first; p < end; p += w.step) {
      const int64_t i = walk.offset(w.channel, p);
      const acc_t xi = to_opmath(x[i]);
      const acc_t g = grad_at(to_opmath(dy[i]), xi, mask, i, k, activation, slope);
      sum_g += g;
      sum_gx += g * (xi - k.mean);
    }
  }
  const int tid = threadIdx.y * kColumns + threadIdx.x;
  sh_g[tid] = sum_g;
  sh_gx[tid] = sum_gx;
  block_merge(s.channels_last, [&](int into, int from) {
    sh_g[into] += sh_g[from];
    sh_gx[into] += sh_gx[from];
  });
  if (w.active && writes_partial(s.channels_last)) {
    const int64_t slot = (static_cast<int64_t>(blockIdx.y) * s.channels + w.channel) * 2;
    workspace[slot] = sh_g[tid];
    workspace[slot + 1] = sh_gx[tid];
  }
}

template <typename acc_t>
__global__ void backward_reduce_finish_kernel(const acc_t* __restrict__ workspace, int64_t slices, int64_t channels,
                                              acc_t* __restrict__ sum_g, acc_t* __restrict__ sum_gx) {
  const int64_t c = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c >= channels) return;
  acc_t g = 0, gx = 0;
  for (int64_t k = 0; k < slices; ++k) {
    g += workspace[(k * channels + c) * 2];
    gx += workspace[(k * channels + c) * 2 + 1];
  }
  sum_g[c] = g;
  sum_gx[c] = gx;
}

template <typename T>
__global__ void backward_apply_kernel(const T* __restrict__ dy, const T* __restrict__ x, const bool* __restrict__ mask,
                                      Channels<typename Opmath<T>::type> ch,
                                      const typename Opmath<T>::type* __restrict__ mean_grad,
                                      const typename Opmath<T>::type* __restrict__ mean_grad_centered,
                                      int64_t activation, typename Opmath<T>::type slope, T* __restrict__ dx,
                                      T* __restrict__ dr, DenseLayout s) {
  using acc_t = typename Opmath<T>::type;
  const ElementRange r = element_range(s);
  if (!r.active) return;
  const int64_t c = r.channel;
  const ChannelCoefficients<acc_t> k(ch, c);
  const acc_t mean_g = mean_grad[c];
  acc_t grad_scale, projection;
  bn::backward_coefficients(ch.invstd[c], ch.weight[c], mean_grad_centered[c], grad_scale, projection);
  for (int64_t i = r.first; i < r.end; i += r.step) {
    const acc_t xi = to_opmath(x[i]);
    const acc_t g = grad_at(to_opmath(dy[i]), xi, mask, i, k, activation, slope);
    dx[i] = from_opmath<T>(bn::grad_input(g, xi, k.mean, mean_g, grad_scale, projection));
    if (dr) dr[i] = from_opmath<T>(g);
  }
}

// ---------------------------------------------------------------- launchers

// The elementwise passes' grid (element_range): blockIdx.x over channel columns or planes,
// blockIdx.y over chunks of positions of about kElementsPerThread elements per thread.
dim3 elementwise_grid(const DenseLayout& s) {
  const int64_t rows = s.channels_last ? s.batch * s.positions : s.positions;
  const int64_t per_block = static_cast<int64_t>(s.channels_last ? kRows : kColumns) * kElementsPerThread;
  const int64_t chunks = std::min<int64_t>((rows + per_block - 1) / per_block, kMaxGridY);
  const int64_t columns = s.channels_last ? (s.channels + kColumns - 1) / kColumns
                                          : (s.batch * s.channels + kRows - 1) / kRows;
  return dim3(static_cast<unsigned>(columns), static_cast<unsigned>(chunks));
}

// The finish kernels: one thread per channel.
constexpr int kFinishThreads = 256;

unsigned finish_blocks(const DenseLayout& s) {
  return static_cast<unsigned>((s.channels + kFinishThreads - 1) / kFinishThreads);
}

dim3 reduce_grid(const DenseLayout& s) {
  return dim3(static_cast<unsigned>(reduce_columns(s)), static_cast<unsigned>(slices_for(s)));
}

template <typename T>
Channels<typename Opmath<T>::type> typed(const BatchNormChannels& c) {
  using acc_t = typename Opmath<T>::type;
  return {static_cast<const acc_t*>(c.mean), static_cast<const acc_t*>(c.invstd), static_cast<const acc_t*>(c.weight),
          static_cast<const acc_t*>(c.bias)};
}

}  // namespace

int64_t batch_norm_workspace_elements(DenseLayout shape) {
  // (mean, var, count) per slice and channel, for the slices the reductions launch
  return 3 * slices_for(kernel_layout(shape)) * shape.channels;
}

cudaError_t batch_norm_stats(ScalarType type, const void* input, void* mean, void* var, void* workspace,
                             DenseLayout shape, cudaStream_t stream) {
  if (shape.channels == 0) return cudaSuccess;
  return dispatch_type(type, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename Opmath<T>::type;
    const DenseLayout s = kernel_layout(shape);
    const dim3 grid = reduce_grid(s);
    const cudaError_t partial = launch(stats_partial_kernel<T>, grid, dim3(kColumns, kRows), stream,
                                       static_cast<const T*>(input), s, static_cast<acc_t*>(workspace));
    if (partial != cudaSuccess) return partial;
    return launch(stats_finish_kernel<T>, finish_blocks(s), kFinishThreads, stream, static_cast<const T*>(input),
                  static_cast<const acc_t*>(workspace), static_cast<int64_t>(grid.y), s,
                  static_cast<acc_t*>(mean), static_cast<acc_t*>(var));
  });
}

cudaError_t batch_norm_act_forward(ScalarType type, const void* input, const void* residual, void* output,
                                   bool* mask, BatchNormChannels channels, int64_t activation,
                                   double negative_slope, DenseLayout shape, cudaStream_t stream) {
  const int64_t numel = shape.batch * shape.channels * shape.positions;
  if (numel == 0) return cudaSuccess;
  return dispatch_type(type, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename Opmath<T>::type;
    const DenseLayout s = kernel_layout(shape);
    return launch(forward_kernel<T>, elementwise_grid(s), dim3(kColumns, kRows), stream,
                  static_cast<const T*>(input), static_cast<const T*>(residual), static_cast<T*>(output), mask,
                  typed<T>(channels), activation, static_cast<acc_t>(negative_slope), s);
  });
}

cudaError_t batch_norm_act_backward_reduce(ScalarType type, const void* grad_output, const void* input,
                                           const bool* mask, BatchNormChannels channels, int64_t activation,
                                           double negative_slope, void* sum_grad, void* sum_grad_centered,
                                           void* workspace, DenseLayout shape, cudaStream_t stream) {
  if (shape.channels == 0) return cudaSuccess;
  return dispatch_type(type, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename Opmath<T>::type;
    const DenseLayout s = kernel_layout(shape);
    const dim3 grid = reduce_grid(s);
    const cudaError_t partial =
        launch(backward_reduce_partial_kernel<T>, grid, dim3(kColumns, kRows), stream,
               static_cast<const T*>(grad_output), static_cast<const T*>(input), mask, typed<T>(channels),
               activation, static_cast<acc_t>(negative_slope), s, static_cast<acc_t*>(workspace));
    if (partial != cudaSuccess) return partial;
    return launch(backward_reduce_finish_kernel<acc_t>, finish_blocks(s), kFinishThreads, stream,
                  static_cast<const acc_t*>(workspace), static_cast<int64_t>(grid.y), s.channels,
                  static_cast<acc_t*>(sum_grad), static_cast<acc_t*>(sum_grad_centered));
  });
}

cudaError_t batch_norm_act_backward_apply(ScalarType type, const void* grad_output, const void* input,
                                          const bool* mask, BatchNormChannels channels, const void* mean_grad,
                                          const void* mean_grad_centered, int64_t activation,
                                          double negative_slope, void* grad_input, void* grad_residual,
                                          DenseLayout shape, cudaStream_t stream) {
  const int64_t numel = shape.batch * shape.channels * shape.positions;
  if (numel == 0) return cudaSuccess;
  return dispatch_type(type, [&](auto tag) {
    using T = decltype(tag);
    using acc_t = typename Opmath<T>::type;
    const DenseLayout s = kernel_layout(shape);
    return launch(backward_apply_kernel<T>, elementwise_grid(s), dim3(kColumns, kRows), stream,
                  static_cast<const T*>(grad_output), static_cast<const T*>(input), mask, typed<T>(channels),
                  static_cast<const acc_t*>(mean_grad), static_cast<const acc_t*>(mean_grad_centered), activation,
                  static_cast<acc_t>(negative_slope), static_cast<T*>(grad_input), static_cast<T*>(grad_residual),
                  s);
  });
}

}  // namespace cuda
}  // namespace cnnkit
