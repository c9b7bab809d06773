// Local Response Normalization on the CPU.
//
// The window sum over channels slides: entering channel added, leaving channel removed, so a
// position costs O(C) whatever the size. To keep float round-off from drifting along the
// slide, the sum is recomputed from scratch every kRefresh channels.
//
// Channels-first (N, C, S): a task owns a block of positions of one image and walks the
// channels, keeping one running sum per position, vectorised across positions; every row it
// touches is a contiguous run of the block.
// Channels-last (N, S, C): a task owns whole positions; the channel sums slide in scalar code
// (the channels are contiguous but the slide is a recurrence), then the power and the
// products run vectorised across the channels.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <cnnkit/lrn.h>
#include <torch/library.h>

#include <vector>

#include "cpu/vec_io.h"
#include "ops/lrn.h"

namespace cnnkit {
namespace cpu {
namespace {

constexpr int64_t kRefresh = 32;
// Positions per channels-first task: the running sums and the few rows in the window stay
// in L1/L2, and a batch of one image still splits across threads.
constexpr int64_t kPositionBlock = 1024;

struct LrnParams {
  lrn::Window window;
  double a, beta, k;
};

LrnParams make_params(int convention, int64_t size, double alpha, double beta, double k) {
  return {lrn::window(convention, size), lrn::alpha_coefficient(convention, size, alpha), beta, k};
}

// s^-beta, with AlexNet's beta = 0.75 (and 0.5) done in square roots, far cheaper than pow.
template <typename Vec>
inline Vec pow_neg_beta_vec(const Vec& s, double beta) {
  using T = typename Vec::value_type;
  if (beta == 0.75) {
    const Vec root = s.sqrt();
    return Vec(T(1)) / (root * root.sqrt());
  }
  if (beta == 0.5) return s.rsqrt();
  return s.pow(Vec(T(-beta)));
}

template <typename T>
inline T pow_neg_beta_scalar(T s, double beta) {
  if (beta == 0.75) return T(1) / (std::sqrt(s) * std::sqrt(std::sqrt(s)));
  if (beta == 0.5) return T(1) / std::sqrt(s);
  return lrn::power(s, T(-beta));
}

// out[c] = sum over the window of c of value(c'), for c in [0, C); `value` reads channel c'.
// `before`/`after` describe the window; a mirrored window is passed swapped.
template <typename acc_t, typename Value>
inline void sliding_window_sums(int64_t C, int64_t before, int64_t after, const Value& value,
                                acc_t* out) {
  acc_t sum = 0;
  for (int64_t c = 0; c < C; ++c) {
    if (c % kRefresh == 0) {
      sum = 0;
      const int64_t lo = std::max<int64_t>(c - before, 0), hi = std::min(c + after, C - 1);
      for (int64_t j = lo; j <= hi; ++j) sum += value(j);
    } else {
      if (c + after < C) sum += value(c + after);
      if (c - before - 1 >= 0) sum -= value(c - before - 1);
    }
    out[c] = sum;
  }
}

// ---- channels-first ------------------------------------------------------------------

// For a block of `len` positions (rows at stride S), sets acc to the window sum of
// transform(row c') for channel c, sliding from c - 1 unless a refresh is due.
template <typename scalar_t, typename Transform>
inline void slide_rows(int64_t c, int64_t C, int64_t before, int64_t after, int64_t len,
                       opmath_t<scalar_t>* acc, const Transform& row_value) {
  using Vec = OpVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  auto add_row = [&](int64_t channel, bool subtract) {
    int64_t p = 0;
    for (; p + V <= len; p += V) {
      Vec v = row_value(channel, p);
      Vec current = Vec::loadu(acc + p);
      (subtract ? current - v : current + v).store(acc + p);
    }
    for (; p < len; ++p) {
      const auto v = row_value.scalar(channel, p);
      acc[p] = subtract ? acc[p] - v : acc[p] + v;
    }
  };
  if (c % kRefresh == 0) {
    std::fill(acc, acc + len, opmath_t<scalar_t>(0));
    const int64_t lo = std::max<int64_t>(c - before, 0), hi = std::min(c + after, C - 1);
    for (int64_t j = lo; j <= hi; ++j) add_row(j, false);
  } else {
    if (c + after < C) add_row(c + after, false);
    if (c - before - 1 >= 0) add_row(c - before - 1, true);
  }
}

// Squares of row `channel` of a channels-first block, vector and scalar.
template <typename scalar_t>
struct SquaredRow {
  const scalar_t* base;  // element (n, 0, p0)
  int64_t stride;        // S
  OpVec<scalar_t> operator()(int64_t channel, int64_t p) const {
    auto v = load_opmath(base + channel * stride + p);
    return v * v;
  }
  opmath_t<scalar_t> scalar(int64_t channel, int64_t p) const {
    const opmath_t<scalar_t> v = base[channel * stride + p];
    return v * v;
  }
};

// A row of an opmath scratch buffer laid out [C][len].
template <typename acc_t>
struct ScratchRow {
  const acc_t* base;
  int64_t stride;
  at::vec::Vectorized<acc_t> operator()(int64_t channel, int64_t p) const {
    return at::vec::Vectorized<acc_t>::loadu(base + channel * stride + p);
  }
  acc_t scalar(int64_t channel, int64_t p) const { return base[channel * stride + p]; }
};

template <typename scalar_t>
void forward_channels_first(const scalar_t* x, scalar_t* y, const LrnLayout& shape,
                            const LrnParams& prm) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t C = shape.channels, S = shape.positions;
  const int64_t blocks = at::divup(S, kPositionBlock);
  const acc_t k = prm.k, a = prm.a;
  at::parallel_for(0, shape.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(std::min(S, kPositionBlock));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, p0 = (task % blocks) * kPositionBlock;
      const int64_t len = std::min(kPositionBlock, S - p0);
      const scalar_t* xb = x + n * C * S + p0;
      scalar_t* yb = y + n * C * S + p0;
      SquaredRow<scalar_t> squares{xb, S};
      for (int64_t c = 0; c < C; ++c) {
        slide_rows<scalar_t>(c, C, prm.window.before, prm.window.after, len, acc.data(), squares);
        const scalar_t* xr = xb + c * S;
        scalar_t* yr = yb + c * S;
        int64_t p = 0;
        for (; p + V <= len; p += V) {
          const Vec s = Vec(k) + Vec(a) * Vec::loadu(acc.data() + p);
          store_opmath(yr + p, load_opmath(xr + p) * pow_neg_beta_vec(s, prm.beta));
        }
        for (; p < len; ++p) {
          const acc_t s = lrn::scale<acc_t>(k, a, acc[p]);
          yr[p] = static_cast<scalar_t>(lrn::output<acc_t>(xr[p], pow_neg_beta_scalar(s, prm.beta)));
        }
      }
    }
  });
}

template <typename scalar_t>
void backward_channels_first(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                             const LrnLayout& shape, const LrnParams& prm) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t C = shape.channels, S = shape.positions;
  // Scratch holds s^-beta and the backward term for every channel of the block.
  const int64_t block = std::max<int64_t>(V, std::min<int64_t>(kPositionBlock, (1 << 15) / C) / V * V);
  const int64_t blocks = at::divup(S, block);
  const acc_t k = prm.k, a = prm.a, two_a_beta = 2 * prm.a * prm.beta;
  at::parallel_for(0, shape.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    const int64_t width = std::min(S, block);
    std::vector<acc_t> acc(width), spb(C * width), term(C * width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, p0 = (task % blocks) * block;
      const int64_t len = std::min(block, S - p0);
      const int64_t offset = n * C * S + p0;
      SquaredRow<scalar_t> squares{x + offset, S};
      for (int64_t c = 0; c < C; ++c) {  // pass 1: s^-beta and g x s^(-beta-1)
        slide_rows<scalar_t>(c, C, prm.window.before, prm.window.after, len, acc.data(), squares);
        const scalar_t* xr = x + offset + c * S;
        const scalar_t* gr = g + offset + c * S;
        acc_t* spb_r = spb.data() + c * width;
        acc_t* term_r = term.data() + c * width;
        int64_t p = 0;
        for (; p + V <= len; p += V) {
          const Vec s = Vec(k) + Vec(a) * Vec::loadu(acc.data() + p);
          const Vec f = pow_neg_beta_vec(s, prm.beta);
          f.store(spb_r + p);
          (load_opmath(gr + p) * load_opmath(xr + p) * f / s).store(term_r + p);
        }
        for (; p < len; ++p) {
          const acc_t s = lrn::scale<acc_t>(k, a, acc[p]);
          spb_r[p] = pow_neg_beta_scalar(s, prm.beta);
          term_r[p] = lrn::backward_term<acc_t>(gr[p], xr[p], s, spb_r[p]);
        }
      }
      ScratchRow<acc_t> terms{term.data(), width};
      for (int64_t c = 0; c < C; ++c) {  // pass 2: sum the terms over the mirrored window
        slide_rows<scalar_t>(c, C, prm.window.after, prm.window.before, len, acc.data(), terms);
        const scalar_t* xr = x + offset + c * S;
        const scalar_t* gr = g + offset + c * S;
        const acc_t* spb_r = spb.data() + c * width;
        scalar_t* out = gx + offset + c * S;
        int64_t p = 0;
        for (; p + V <= len; p += V) {
          store_opmath(out + p, load_opmath(gr + p) * Vec::loadu(spb_r + p) -
                             Vec(two_a_beta) * load_opmath(xr + p) * Vec::loadu(acc.data() + p));
        }
        for (; p < len; ++p) {
          out[p] = static_cast<scalar_t>(
              lrn::grad_input<acc_t>(gr[p], xr[p], spb_r[p], two_a_beta, acc[p]));
        }
      }
    }
  });
}

// ---- channels-last -------------------------------------------------------------------

// Runs body(position, scratch...) over every (n, position) pair in parallel; each thread
// gets `buffers` scratch arrays of C opmath values.
template <typename acc_t, int buffers, typename Body>
void for_each_position(const LrnLayout& shape, const Body& body) {
  const int64_t C = shape.channels;
  const int64_t grain = std::max<int64_t>(1, 32768 / C);
  at::parallel_for(0, shape.batch * shape.positions, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(buffers * C);
    for (int64_t position = begin; position < end; ++position) body(position * C, scratch.data());
  });
}

template <typename scalar_t>
void forward_channels_last(const scalar_t* x, scalar_t* y, const LrnLayout& shape,
                           const LrnParams& prm) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t C = shape.channels;
  const acc_t k = prm.k, a = prm.a;
  for_each_position<acc_t, 1>(shape, [&](int64_t offset, acc_t* sums) {
    const scalar_t* xp = x + offset;
    scalar_t* yp = y + offset;
    sliding_window_sums<acc_t>(C, prm.window.before, prm.window.after, [&](int64_t j) {
      const acc_t v = xp[j];
      return v * v;
    }, sums);
    int64_t c = 0;
    for (; c + V <= C; c += V) {
      const Vec s = Vec(k) + Vec(a) * Vec::loadu(sums + c);
      store_opmath(yp + c, load_opmath(xp + c) * pow_neg_beta_vec(s, prm.beta));
    }
    for (; c < C; ++c) {
      yp[c] = static_cast<scalar_t>(
          lrn::output<acc_t>(xp[c], pow_neg_beta_scalar(lrn::scale<acc_t>(k, a, sums[c]), prm.beta)));
    }
  });
}

template <typename scalar_t>
void backward_channels_last(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                            const LrnLayout& shape, const LrnParams& prm) {
  using acc_t = opmath_t<scalar_t>;
  using Vec = OpVec<scalar_t>;
  constexpr int64_t V = Vec::size();
  const int64_t C = shape.channels;
  const acc_t k = prm.k, a = prm.a, two_a_beta = 2 * prm.a * prm.beta;
  for_each_position<acc_t, 3>(shape, [&](int64_t offset, acc_t* scratch) {
    const scalar_t* xp = x + offset;
    const scalar_t* gp = g + offset;
    scalar_t* out = gx + offset;
    acc_t* sums = scratch;       // window sums: of x^2, then of the terms
    acc_t* spb = scratch + C;    // s^-beta
    acc_t* term = scratch + 2 * C;
    sliding_window_sums<acc_t>(C, prm.window.before, prm.window.after, [&](int64_t j) {
      const acc_t v = xp[j];
      return v * v;
    }, sums);
    int64_t c = 0;
    for (; c + V <= C; c += V) {
      const Vec s = Vec(k) + Vec(a) * Vec::loadu(sums + c);
      const Vec f = pow_neg_beta_vec(s, prm.beta);
      f.store(spb + c);
      (load_opmath(gp + c) * load_opmath(xp + c) * f / s).store(term + c);
    }
    for (; c < C; ++c) {
      const acc_t s = lrn::scale<acc_t>(k, a, sums[c]);
      spb[c] = pow_neg_beta_scalar(s, prm.beta);
      term[c] = lrn::backward_term<acc_t>(gp[c], xp[c], s, spb[c]);
    }
    sliding_window_sums<acc_t>(C, prm.window.after, prm.window.before,
                               [&](int64_t j) { return term[j]; }, sums);
    c = 0;
    for (; c + V <= C; c += V) {
      store_opmath(out + c, load_opmath(gp + c) * Vec::loadu(spb + c) -
                         Vec(two_a_beta) * load_opmath(xp + c) * Vec::loadu(sums + c));
    }
    for (; c < C; ++c) {
      out[c] = static_cast<scalar_t>(lrn::grad_input<acc_t>(gp[c], xp[c], spb[c], two_a_beta, sums[c]));
    }
  });
}

// ---- ops -----------------------------------------------------------------------------

at::Tensor local_response_norm_cpu(const at::Tensor& input, int64_t size, double alpha,
                                   double beta, double k, c10::string_view convention) {
  const int parsed = check_local_response_norm(input, size, k, std::string(convention));
  const at::Tensor x = lrn_dense(input);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  const LrnLayout shape = lrn_layout(x);
  const LrnParams prm = make_params(parsed, size, alpha, beta, k);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "local_response_norm_cpu", [&] {
    if (shape.channels_last) {
      forward_channels_last(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), shape, prm);
    } else {
      forward_channels_first(x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), shape, prm);
    }
  });
  return y;
}

at::Tensor local_response_norm_backward_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                            int64_t size, double alpha, double beta, double k,
                                            c10::string_view convention) {
  const int parsed = check_local_response_norm(input, size, k, std::string(convention));
  TORCH_CHECK_VALUE(grad_output.sizes() == input.sizes(),
                    "local_response_norm_backward: grad_output has shape ", grad_output.sizes(),
                    " but input has shape ", input.sizes());
  const at::Tensor x = lrn_dense(input);
  const at::Tensor g = lrn_dense_like(grad_output.to(x.scalar_type()), x);
  at::Tensor gx = at::empty_like(x);
  if (x.numel() == 0) return gx;
  const LrnLayout shape = lrn_layout(x);
  const LrnParams prm = make_params(parsed, size, alpha, beta, k);
  AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, x.scalar_type(), "local_response_norm_backward_cpu", [&] {
    const scalar_t* gp = g.const_data_ptr<scalar_t>();
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* out = gx.mutable_data_ptr<scalar_t>();
    if (shape.channels_last) {
      backward_channels_last(gp, xp, out, shape, prm);
    } else {
      backward_channels_first(gp, xp, out, shape, prm);
    }
  });
  return gx;
}

}  // namespace
}  // namespace cpu
}  // namespace cnnkit

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  m.impl("local_response_norm", &cnnkit::cpu::local_response_norm_cpu);
  m.impl("local_response_norm_backward", &cnnkit::cpu::local_response_norm_backward_cpu);
}
