// Local Response Normalization on the CPU.
//
// Every position costs O(C) whatever the window size (see RowWindowSums).
//
// Channels-first (N, C, S): a task owns a block of positions of one image and walks the
// channels, vectorised across positions; every row it touches is a contiguous run.
// Channels-last (N, S, C): a task owns whole positions; the window sums run in scalar code
// (a recurrence along the contiguous channels), the power and products vectorised.
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

// Positions per channels-first task: a multiple of the vector width, small enough that the
// task's scratch (`rows_per_lane` values per position) stays within L2 and that one image
// still splits across threads.
int64_t position_block(int64_t rows_per_lane, int64_t positions) {
  constexpr int64_t kScratchBytes = 256 * 1024, kMaxBlock = 1024, kLanes = 64;
  const int64_t fits = kScratchBytes / (rows_per_lane * static_cast<int64_t>(sizeof(double)));
  const int64_t block = std::max<int64_t>(kLanes, std::min(kMaxBlock, fits) / kLanes * kLanes);
  return std::min(block, positions);
}

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

// Window sums without subtraction (the van Herk / Gil-Werman scheme): the padded channel
// axis is cut into blocks of the window's width W, so every window is a suffix of one block
// plus a prefix of the next. Sums only ever add, so large values leaving the window leave
// no round-off behind (a running add-and-subtract sum does), and each channel costs O(1).
//
// Row form: one "row" per channel holds `len` lanes (positions, vectorised). Calling
// advance(c) for c = 0, 1, ... C-1 in order makes sum(p) the window sum of channel c.
template <typename acc_t, typename Row>
class RowWindowSums {
 public:
  using Vec = at::vec::Vectorized<acc_t>;

  RowWindowSums(int64_t C, int64_t before, int64_t after, int64_t len, const Row& row,
                acc_t* scratch /* (W + 1) * len */)
      : C_(C), before_(before), W_(before + after + 1), len_(len), row_(row),
        prefix_(scratch), suffix_(scratch + len) {}

  void advance(int64_t c) {
    for (const int64_t end = c + W_ - 1; next_ <= end; ++next_) {
      if (next_ % W_ == 0) {
        if (next_ > 0) fill_suffixes(next_ - W_);
        std::fill(prefix_, prefix_ + len_, acc_t(0));
      }
      add_row(next_ - before_, prefix_);
    }
    // A window starting on a block boundary is that block: the prefix alone.
    suffix_row_ = c % W_ == 0 ? nullptr : suffix_ + (c % W_) * len_;
  }

  Vec sum(int64_t p) const {
    const Vec prefix = Vec::loadu(prefix_ + p);
    return suffix_row_ ? prefix + Vec::loadu(suffix_row_ + p) : prefix;
  }
  acc_t sum_scalar(int64_t p) const { return prefix_[p] + (suffix_row_ ? suffix_row_[p] : acc_t(0)); }

 private:
  bool in_range(int64_t channel) const { return channel >= 0 && channel < C_; }

  void add_row(int64_t channel, acc_t* dst) const {
    if (!in_range(channel)) return;
    int64_t p = 0;
    for (; p + Vec::size() <= len_; p += Vec::size()) (Vec::loadu(dst + p) + row_(channel, p)).store(dst + p);
    for (; p < len_; ++p) dst[p] += row_.scalar(channel, p);
  }

  // suffix_[j] = sum of the block's padded rows j .. W-1, for the block starting at `start`.
  void fill_suffixes(int64_t start) {
    for (int64_t j = W_ - 1; j >= 0; --j) {
      acc_t* dst = suffix_ + j * len_;
      if (j == W_ - 1) {
        std::fill(dst, dst + len_, acc_t(0));
      } else {
        std::copy(dst + len_, dst + 2 * len_, dst);
      }
      add_row(start + j - before_, dst);
    }
  }

  const int64_t C_, before_, W_, len_;
  const Row& row_;
  acc_t* prefix_;
  acc_t* suffix_;
  const acc_t* suffix_row_ = nullptr;
  int64_t next_ = 0;  // the next padded channel to enter the prefix
};

// Scalar form for one position whose channels are contiguous: out[c] = window sum of
// value(c') for every channel c, with the same block scheme. scratch holds 2 * (C + W).
template <typename acc_t, typename Value>
inline void window_sums(int64_t C, int64_t before, int64_t after, const Value& value,
                        acc_t* scratch, acc_t* out) {
  const int64_t W = before + after + 1, padded = C + W - 1;
  acc_t* prefix = scratch;
  acc_t* suffix = scratch + padded;
  auto at = [&](int64_t i) { const int64_t c = i - before; return c >= 0 && c < C ? value(c) : acc_t(0); };
  for (int64_t i = 0; i < padded; ++i) prefix[i] = at(i) + (i % W ? prefix[i - 1] : acc_t(0));
  for (int64_t i = padded - 1; i >= 0; --i) {
    suffix[i] = at(i) + ((i + 1) % W && i + 1 < padded ? suffix[i + 1] : acc_t(0));
  }
  for (int64_t c = 0; c < C; ++c) out[c] = c % W ? suffix[c] + prefix[c + W - 1] : suffix[c];
}

// ---- channels-first ------------------------------------------------------------------

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
  const int64_t W = prm.window.before + prm.window.after + 1;
  const int64_t block = position_block(W + 1, S);
  const int64_t blocks = at::divup(S, block);
  const acc_t k = prm.k, a = prm.a;
  at::parallel_for(0, shape.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch((W + 1) * block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, p0 = (task % blocks) * block;
      const int64_t len = std::min(block, S - p0);
      const scalar_t* xb = x + n * C * S + p0;
      scalar_t* yb = y + n * C * S + p0;
      const SquaredRow<scalar_t> squares{xb, S};
      RowWindowSums<acc_t, SquaredRow<scalar_t>> sums(C, prm.window.before, prm.window.after, len,
                                                     squares, scratch.data());
      for (int64_t c = 0; c < C; ++c) {
        sums.advance(c);
        const scalar_t* xr = xb + c * S;
        scalar_t* yr = yb + c * S;
        int64_t p = 0;
        for (; p + V <= len; p += V) {
          const Vec s = Vec(k) + Vec(a) * sums.sum(p);
          store_opmath(yr + p, load_opmath(xr + p) * pow_neg_beta_vec(s, prm.beta));
        }
        for (; p < len; ++p) {
          const acc_t s = lrn::scale<acc_t>(k, a, sums.sum_scalar(p));
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
  const int64_t W = prm.window.before + prm.window.after + 1;
  // Per lane: the window sums' scratch, then s^-beta and the backward term of every channel.
  const int64_t block = position_block(W + 1 + 2 * C, S);
  const int64_t blocks = at::divup(S, block);
  const acc_t k = prm.k, a = prm.a, two_a_beta = 2 * prm.a * prm.beta;
  at::parallel_for(0, shape.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch((W + 1) * block), spb(C * block), term(C * block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, p0 = (task % blocks) * block;
      const int64_t len = std::min(block, S - p0);
      const int64_t offset = n * C * S + p0;
      const SquaredRow<scalar_t> squares{x + offset, S};
      RowWindowSums<acc_t, SquaredRow<scalar_t>> square_sums(C, prm.window.before, prm.window.after,
                                                            len, squares, scratch.data());
      for (int64_t c = 0; c < C; ++c) {  // pass 1: s^-beta and g x s^(-beta-1)
        square_sums.advance(c);
        const scalar_t* xr = x + offset + c * S;
        const scalar_t* gr = g + offset + c * S;
        acc_t* spb_r = spb.data() + c * block;
        acc_t* term_r = term.data() + c * block;
        int64_t p = 0;
        for (; p + V <= len; p += V) {
          const Vec s = Vec(k) + Vec(a) * square_sums.sum(p);
          const Vec f = pow_neg_beta_vec(s, prm.beta);
          f.store(spb_r + p);
          (load_opmath(gr + p) * load_opmath(xr + p) * f / s).store(term_r + p);
        }
        for (; p < len; ++p) {
          const acc_t s = lrn::scale<acc_t>(k, a, square_sums.sum_scalar(p));
          spb_r[p] = pow_neg_beta_scalar(s, prm.beta);
          term_r[p] = lrn::backward_term<acc_t>(gr[p], xr[p], s, spb_r[p]);
        }
      }
      const ScratchRow<acc_t> terms{term.data(), block};
      RowWindowSums<acc_t, ScratchRow<acc_t>> term_sums(C, prm.window.after, prm.window.before,
                                                        len, terms, scratch.data());
      for (int64_t c = 0; c < C; ++c) {  // pass 2: the terms summed over the mirrored window
        term_sums.advance(c);
        const scalar_t* xr = x + offset + c * S;
        const scalar_t* gr = g + offset + c * S;
        const acc_t* spb_r = spb.data() + c * block;
        scalar_t* out = gx + offset + c * S;
        int64_t p = 0;
        for (; p + V <= len; p += V) {
          store_opmath(out + p, load_opmath(gr + p) * Vec::loadu(spb_r + p) -
                                    Vec(two_a_beta) * load_opmath(xr + p) * term_sums.sum(p));
        }
        for (; p < len; ++p) {
          out[p] = static_cast<scalar_t>(
              lrn::grad_input<acc_t>(gr[p], xr[p], spb_r[p], two_a_beta, term_sums.sum_scalar(p)));
        }
      }
    }
  });
}

// ---- channels-last -------------------------------------------------------------------

// Runs body(offset, scratch) over every (n, position) pair in parallel; `offset` is the
// position's first element and each thread owns `scratch_size` opmath values of scratch.
template <typename acc_t, typename Body>
void for_each_position(const LrnLayout& shape, int64_t scratch_size, const Body& body) {
  const int64_t C = shape.channels;
  const int64_t grain = std::max<int64_t>(1, 32768 / C);
  at::parallel_for(0, shape.batch * shape.positions, grain, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(scratch_size);
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
  const int64_t W = prm.window.before + prm.window.after + 1;
  const acc_t k = prm.k, a = prm.a;
  for_each_position<acc_t>(shape, 3 * C + 2 * W, [&](int64_t offset, acc_t* scratch) {
    const scalar_t* xp = x + offset;
    scalar_t* yp = y + offset;
    acc_t* sums = scratch + 2 * (C + W);
    window_sums<acc_t>(C, prm.window.before, prm.window.after, [&](int64_t j) {
      const acc_t v = xp[j];
      return v * v;
    }, scratch, sums);
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
  const int64_t W = prm.window.before + prm.window.after + 1;
  const acc_t k = prm.k, a = prm.a, two_a_beta = 2 * prm.a * prm.beta;
  for_each_position<acc_t>(shape, 5 * C + 2 * W, [&](int64_t offset, acc_t* scratch) {
    const scalar_t* xp = x + offset;
    const scalar_t* gp = g + offset;
    scalar_t* out = gx + offset;
    acc_t* sums = scratch + 2 * (C + W);  // window sums: of x^2, then of the terms
    acc_t* spb = sums + C;                // s^-beta
    acc_t* term = spb + C;
    window_sums<acc_t>(C, prm.window.before, prm.window.after, [&](int64_t j) {
      const acc_t v = xp[j];
      return v * v;
    }, scratch, sums);
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
    window_sums<acc_t>(C, prm.window.after, prm.window.before, [&](int64_t j) { return term[j]; },
                       scratch, sums);
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
