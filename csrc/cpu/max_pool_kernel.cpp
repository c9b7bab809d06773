// Max pooling for inference on the CPU: the values of torch's max_pool2d, without the
// int64 indices it also computes and writes (twice the output's bytes in float32) when
// nothing will need them.
// - channels-last (N, H, W, C): each output position takes the maximum over its window of
//   whole channel rows, vectorised across the channels;
// - channels-first (N, C, H, W): each plane is pooled on its own, one output at a time.
// A NaN in a window is the output, as in torch.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>

#include "cpu/capability.h"
#include "cpu/vec_io.h"
#include "ops/max_pool.h"

namespace cnnkit {
namespace cpu {
// Compiled once per capability (capability.h).
namespace CPU_CAPABILITY {
namespace {

struct Image {
  int64_t batch, channels, height, width;
};

// The first window row (or column) inside the input, and one past the last.
struct Span {
  int64_t first, last;
};

inline Span window_span(int64_t out, int64_t stride, int64_t pad, int64_t dilation,
                        int64_t kernel, int64_t size) {
  const int64_t start = out * stride - pad;
  int64_t first = 0, last = kernel;
  while (first < kernel && start + first * dilation < 0) ++first;
  while (last > first && start + (last - 1) * dilation >= size) --last;
  return {first, last};
}

template <typename scalar_t>
inline opmath_t<scalar_t> nan_max(opmath_t<scalar_t> a, opmath_t<scalar_t> b) {
  return (b > a || std::isnan(b)) ? b : a;
}

template <typename scalar_t>
void pool_channels_last(const scalar_t* in, scalar_t* out, const Image& im, const PoolWindow& w) {
  using Vec = OpVec<scalar_t>;
  using acc_t = opmath_t<scalar_t>;
  constexpr int64_t kVec = Vec::size();
  const int64_t C = im.channels, positions = w.out_h * w.out_w;
  const acc_t lowest = -std::numeric_limits<acc_t>::infinity();
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / (C * w.kernel_h * w.kernel_w));
  at::parallel_for(0, im.batch * positions, grain, [&](int64_t begin, int64_t end) {
    for (int64_t index = begin; index < end; ++index) {
      const int64_t n = index / positions, y = index % positions / w.out_w, x = index % w.out_w;
      const Span rows = window_span(y, w.stride_h, w.pad_h, w.dilation_h, w.kernel_h, im.height);
      const Span cols = window_span(x, w.stride_w, w.pad_w, w.dilation_w, w.kernel_w, im.width);
      const int64_t top = y * w.stride_h - w.pad_h, left = x * w.stride_w - w.pad_w;
      const scalar_t* image = in + n * im.height * im.width * C;
      scalar_t* dst = out + index * C;
      int64_t c = 0;
      for (; c + kVec <= C; c += kVec) {
        Vec best(lowest);
        for (int64_t ky = rows.first; ky < rows.last; ++ky) {
          const scalar_t* row = image + (top + ky * w.dilation_h) * im.width * C + c;
          for (int64_t kx = cols.first; kx < cols.last; ++kx) {
            best = at::vec::maximum(best, load_opmath(row + (left + kx * w.dilation_w) * C));
          }
        }
        store_opmath(dst + c, best);
      }
      for (; c < C; ++c) {
        acc_t best = lowest;
        for (int64_t ky = rows.first; ky < rows.last; ++ky) {
          const scalar_t* row = image + (top + ky * w.dilation_h) * im.width * C + c;
          for (int64_t kx = cols.first; kx < cols.last; ++kx) {
            best = nan_max<scalar_t>(best, static_cast<acc_t>(row[(left + kx * w.dilation_w) * C]));
          }
        }
        dst[c] = static_cast<scalar_t>(best);
      }
    }
  });
}

template <typename scalar_t>
void pool_channels_first(const scalar_t* in, scalar_t* out, const Image& im, const PoolWindow& w) {
  using acc_t = opmath_t<scalar_t>;
  const acc_t lowest = -std::numeric_limits<acc_t>::infinity();
  const int64_t plane_in = im.height * im.width, plane_out = w.out_h * w.out_w;
  const int64_t grain = std::max<int64_t>(1, at::internal::GRAIN_SIZE / std::max<int64_t>(1, plane_out));
  at::parallel_for(0, im.batch * im.channels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane) {
      const scalar_t* src = in + plane * plane_in;
      scalar_t* dst = out + plane * plane_out;
      for (int64_t y = 0; y < w.out_h; ++y) {
        const Span rows = window_span(y, w.stride_h, w.pad_h, w.dilation_h, w.kernel_h, im.height);
        const int64_t top = y * w.stride_h - w.pad_h;
        for (int64_t x = 0; x < w.out_w; ++x) {
          const Span cols = window_span(x, w.stride_w, w.pad_w, w.dilation_w, w.kernel_w, im.width);
          const int64_t left = x * w.stride_w - w.pad_w;
          acc_t best = lowest;
          for (int64_t ky = rows.first; ky < rows.last; ++ky) {
            const scalar_t* row = src + (top + ky * w.dilation_h) * im.width;
            for (int64_t kx = cols.first; kx < cols.last; ++kx) {
              best = nan_max<scalar_t>(best, static_cast<acc_t>(row[left + kx * w.dilation_w]));
            }
          }
          dst[y * w.out_w + x] = static_cast<scalar_t>(best);
        }
      }
    }
  });
}

at::Tensor max_pool2d_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                          at::IntArrayRef stride, at::IntArrayRef padding,
                          at::IntArrayRef dilation, bool ceil_mode) {
  const PoolWindow w = check_max_pool2d(input, kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor x = dense_input(input);
  const bool channels_last = dense_layout(x).channels_last;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor y = at::empty({x.size(0), x.size(1), w.out_h, w.out_w}, x.options().memory_format(format));
  if (y.numel() == 0) return y;
  const Image im{x.size(0), x.size(1), x.size(2), x.size(3)};
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "max_pool2d_cpu", [&] {
    const scalar_t* in = x.const_data_ptr<scalar_t>();
    scalar_t* out = y.mutable_data_ptr<scalar_t>();
    if (channels_last) {
      pool_channels_last(in, out, im, w);
    } else {
      pool_channels_first(in, out, im, w);
    }
  });
  return y;
}

}  // namespace
}  // namespace CPU_CAPABILITY

template <>
void register_max_pool_kernels<Capability::CPU_CAPABILITY>(torch::Library& m) {
  m.impl("max_pool2d", &CPU_CAPABILITY::max_pool2d_cpu);
}

}  // namespace cpu
}  // namespace cnnkit
