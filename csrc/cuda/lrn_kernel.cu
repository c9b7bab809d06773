// Local Response Normalization on CUDA.
//
// One thread per element, in memory order, so loads and stores are coalesced in either
// layout: with (N, C, S) neighbouring threads walk positions, with (N, S, C) channels. Each
// thread sums its window directly (at most `size` reads, served by L1), which needs no
// running sum and so has no cancellation. The backward runs in two kernels: the first
// writes the term g x s^(-beta-1) of every element, the second sums it over the mirrored
// window.
#include <cnnkit/lrn.h>

#include <limits>

#include "cuda/launch.cuh"
#include "cuda/lrn_kernel.h"
#include "cuda/opmath.cuh"

namespace cnnkit {
namespace cuda {
namespace {

// Where element `index` sits: its channel, and the distance between neighbouring channels.
template <typename index_t>
struct Indexer {
  index_t channels, positions;
  bool channels_last;
  __device__ __forceinline__ index_t channel(index_t index) const {
    return channels_last ? index % channels : (index / positions) % channels;
  }
  __device__ __forceinline__ index_t channel_stride() const { return channels_last ? 1 : positions; }
  static Indexer of(const DenseLayout& s) {
    return {static_cast<index_t>(s.channels), static_cast<index_t>(s.positions), s.channels_last};
  }
};

template <typename acc_t, typename Load, typename index_t>
__device__ __forceinline__ acc_t window_sum(index_t index, index_t c, index_t channels, index_t stride,
                                            int64_t before, int64_t after, const Load& load) {
  const index_t lo = c >= before ? c - before : 0;
  const index_t hi = c + after < channels ? c + after : channels - 1;
  acc_t sum = 0;
  for (index_t j = lo; j <= hi; ++j) sum += load(index + (j - c) * stride);
  return sum;
}

// The scale of element `index` (channel c, channels `stride` apart): s = k + a * (the sum
// of x^2 over its window).
template <typename T, typename index_t>
__device__ __forceinline__ typename Opmath<T>::type scale_at(const T* __restrict__ x, index_t index, index_t c,
                                                             index_t channels, index_t stride,
                                                             const lrn::Window& window, typename Opmath<T>::type a,
                                                             typename Opmath<T>::type k) {
  using acc_t = typename Opmath<T>::type;
  auto square = [&](index_t i) { const acc_t v = to_opmath(x[i]); return v * v; };
  return lrn::scale<acc_t>(k, a, window_sum<acc_t>(index, c, channels, stride, window.before, window.after, square));
}

template <typename T, typename index_t>
__global__ void lrn_forward_kernel(const T* __restrict__ x, T* __restrict__ y, index_t numel,
                                   Indexer<index_t> at, lrn::Window window,
                                   typename Opmath<T>::type a, typename Opmath<T>::type beta,
                                   typename Opmath<T>::type k) {
  using acc_t = typename Opmath<T>::type;
  const index_t stride = at.channel_stride();
  for (index_t index = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; index < numel;
       index += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const acc_t s = scale_at(x, index, at.channel(index), at.channels, stride, window, a, k);
    y[index] = from_opmath<T>(lrn::output<acc_t>(to_opmath(x[index]), lrn::power(s, -beta)));
  }
}

template <typename T, typename index_t>
__global__ void lrn_backward_term_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                         typename Opmath<T>::type* __restrict__ term, index_t numel,
                                         Indexer<index_t> at, lrn::Window window,
                                         typename Opmath<T>::type a, typename Opmath<T>::type beta,
                                         typename Opmath<T>::type k) {
  using acc_t = typename Opmath<T>::type;
  const index_t stride = at.channel_stride();
  for (index_t index = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; index < numel;
       index += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const acc_t s = scale_at(x, index, at.channel(index), at.channels, stride, window, a, k);
    term[index] = lrn::backward_term<acc_t>(to_opmath(g[index]), to_opmath(x[index]), s, lrn::power(s, -beta));
  }
}

template <typename T, typename index_t>
__global__ void lrn_backward_input_kernel(const T* __restrict__ g, const T* __restrict__ x,
                                          const typename Opmath<T>::type* __restrict__ term,
                                          T* __restrict__ gx, index_t numel, Indexer<index_t> at,
                                          lrn::Window window, typename Opmath<T>::type a,
                                          typename Opmath<T>::type beta, typename Opmath<T>::type k) {
  using acc_t = typename Opmath<T>::type;
  const index_t stride = at.channel_stride();
  auto term_at = [&](index_t i) { return term[i]; };
  for (index_t index = blockIdx.x * static_cast<index_t>(blockDim.x) + threadIdx.x; index < numel;
       index += static_cast<index_t>(gridDim.x) * blockDim.x) {
    const index_t c = at.channel(index);
    const acc_t s = scale_at(x, index, c, at.channels, stride, window, a, k);
    // The mirrored window: the outputs whose windows contain this channel.
    const acc_t terms = window_sum<acc_t>(index, c, at.channels, stride, window.after, window.before, term_at);
    gx[index] = from_opmath<T>(lrn::grad_input<acc_t>(to_opmath(g[index]), to_opmath(x[index]),
                                                      lrn::power(s, -beta), 2 * a * beta, terms));
  }
}

constexpr int kThreads = 256;

unsigned int blocks_for(int64_t numel) {
  const int64_t blocks = (numel + kThreads - 1) / kThreads;
  return static_cast<unsigned int>(blocks < (1 << 20) ? blocks : (1 << 20));  // grid-stride beyond
}

template <typename T, typename index_t>
cudaError_t forward_typed(const void* input, void* output, const DenseLayout& shape,
                          const LrnCoefficients& co, cudaStream_t stream) {
  using acc_t = typename Opmath<T>::type;
  const int64_t numel = shape.batch * shape.channels * shape.positions;
  const Indexer<index_t> at = Indexer<index_t>::of(shape);
  return launch(lrn_forward_kernel<T, index_t>, blocks_for(numel), kThreads, stream, static_cast<const T*>(input),
                static_cast<T*>(output), static_cast<index_t>(numel), at,
                lrn::window(co.convention, co.size, shape.channels),
                static_cast<acc_t>(lrn::alpha_coefficient(co.convention, co.size, co.alpha)),
                static_cast<acc_t>(co.beta), static_cast<acc_t>(co.k));
}

template <typename T, typename index_t>
cudaError_t backward_typed(const void* grad_output, const void* input, void* grad_input, void* term,
                           const DenseLayout& shape, const LrnCoefficients& co, cudaStream_t stream) {
  using acc_t = typename Opmath<T>::type;
  const int64_t numel = shape.batch * shape.channels * shape.positions;
  const Indexer<index_t> at = Indexer<index_t>::of(shape);
  const lrn::Window window = lrn::window(co.convention, co.size, shape.channels);
  const acc_t a = static_cast<acc_t>(lrn::alpha_coefficient(co.convention, co.size, co.alpha));
  const T* g = static_cast<const T*>(grad_output);
  const T* x = static_cast<const T*>(input);
  acc_t* t = static_cast<acc_t*>(term);
  const acc_t beta = static_cast<acc_t>(co.beta), k = static_cast<acc_t>(co.k);
  const cudaError_t terms = launch(lrn_backward_term_kernel<T, index_t>, blocks_for(numel), kThreads, stream, g, x,
                                   t, static_cast<index_t>(numel), at, window, a, beta, k);
  if (terms != cudaSuccess) return terms;
  return launch(lrn_backward_input_kernel<T, index_t>, blocks_for(numel), kThreads, stream, g, x,
                static_cast<const acc_t*>(t), static_cast<T*>(grad_input), static_cast<index_t>(numel), at, window,
                a, beta, k);
}

// Calls fn.run<T, index_t>() for the element type and the narrowest index
// type that addresses every element: the grid-stride loop's last step (up to one grid
// past numel) must not overflow it either.
template <typename Fn>
cudaError_t dispatch(ScalarType type, int64_t numel, const Fn& fn) {
  const int64_t grid_threads = static_cast<int64_t>(blocks_for(numel)) * kThreads;
  const bool narrow = numel + grid_threads <= std::numeric_limits<int32_t>::max();
  return dispatch_type(type, [&](auto tag) {
    using T = decltype(tag);
    return narrow ? fn.template run<T, int32_t>() : fn.template run<T, int64_t>();
  });
}

struct ForwardLaunch {
  const void* input;
  void* output;
  const DenseLayout& shape;
  const LrnCoefficients& co;
  cudaStream_t stream;
  template <typename T, typename index_t>
  cudaError_t run() const {
    return forward_typed<T, index_t>(input, output, shape, co, stream);
  }
};

struct BackwardLaunch {
  const void* grad_output;
  const void* input;
  void* grad_input;
  void* term;
  const DenseLayout& shape;
  const LrnCoefficients& co;
  cudaStream_t stream;
  template <typename T, typename index_t>
  cudaError_t run() const {
    return backward_typed<T, index_t>(grad_output, input, grad_input, term, shape, co, stream);
  }
};

}  // namespace

cudaError_t lrn_forward(ScalarType type, const void* input, void* output, DenseLayout shape,
                        LrnCoefficients coefficients, cudaStream_t stream) {
  const int64_t numel = shape.batch * shape.channels * shape.positions;
  if (numel == 0) return cudaSuccess;
  return dispatch(type, numel, ForwardLaunch{input, output, shape, coefficients, stream});
}

cudaError_t lrn_backward(ScalarType type, const void* grad_output, const void* input,
                         void* grad_input, void* term, DenseLayout shape,
                         LrnCoefficients coefficients, cudaStream_t stream) {
  const int64_t numel = shape.batch * shape.channels * shape.positions;
  if (numel == 0) return cudaSuccess;
  return dispatch(type, numel,
                  BackwardLaunch{grad_output, input, grad_input, term, shape, coefficients, stream});
}

}  // namespace cuda
}  // namespace cnnkit
