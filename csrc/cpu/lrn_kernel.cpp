// Local Response Normalization on the CPU.
//
// Every position costs O(C) whatever the window size (see RowWindowSums). The kernels work
// on blocks of channel rows, vectorised across the positions of a row:
// - channels-first (N, C, S): a block is a run of positions of one image, read in place
//   (row stride S);
// - channels-last (N, S, C): a block is a tile of consecutive positions, transposed into
//   channel rows in a per-thread scratch, run through the same row code, transposed back.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <cnnkit/lrn.h>
#include <torch/library.h>

#include <cfloat>
#include <vector>

#if defined(__linux__)
#include <sys/mman.h>
#endif

#include "cpu/capability.h"
#include "cpu/vec_io.h"
#include "ops/lrn.h"

namespace cnnkit {
namespace cpu {
// Compiled once per capability (capability.h).
namespace CPU_CAPABILITY {
namespace {

struct LrnParams {
  lrn::Window window;
  double a, beta, k;
  int64_t width() const { return window.before + window.after + 1; }
};

LrnParams make_params(int convention, int64_t size, int64_t channels, double alpha, double beta, double k) {
  return {lrn::window(convention, size, channels), lrn::alpha_coefficient(convention, size, alpha), beta, k};
}

// ---- s^-beta -------------------------------------------------------------------------

// beta as the power functions see it: AlexNet's 0.75 and the common 0.5 are types, so the
// vector loops built on them carry no test of beta; any other value is a run-time double.
struct BetaThreeQuarters {
  static constexpr double value = 0.75;
};
struct BetaHalf {
  static constexpr double value = 0.5;
};
struct BetaAny {
  double value;
};

// Calls body(beta) with beta as one of the types above.
template <typename Body>
void dispatch_beta(double beta, const Body& body) {
  if (beta == BetaThreeQuarters::value) return body(BetaThreeQuarters{});
  if (beta == BetaHalf::value) return body(BetaHalf{});
  body(BetaAny{beta});
}

// s^-beta, with AlexNet's beta = 0.75 (and 0.5) done in square roots, far cheaper than pow.
template <typename Vec, typename Beta>
inline Vec exact_pow_neg_beta(const Vec& s, const Beta& b) {
  const double beta = b.value;
  using T = typename Vec::value_type;
  if (beta == 0.75) {
    const Vec root = s.sqrt();
    return Vec(T(1)) / (root * root.sqrt());
  }
  if (beta == 0.5) return s.rsqrt();
  return s.pow(Vec(T(-beta)));
}

template <typename T, typename Beta>
inline T pow_neg_beta_scalar(T s, const Beta& b) {
  const double beta = b.value;
  if (beta == 0.75) return T(1) / (std::sqrt(s) * std::sqrt(std::sqrt(s)));
  if (beta == 0.5) return T(1) / std::sqrt(s);
  return lrn::power(s, T(-beta));
}

// float s^-0.5 from the hardware's reciprocal square root estimate (relative error below
// 2^-14 with AVX512, 1.5 * 2^-12 with AVX2) and one Newton step, written as
// y + y/2 (1 - s y^2) so that the correction is computed with a fused multiply-add: about
// one float ulp (worst 1.5e-7 relative over s in [1e-38, 1e38]) for a few multiplies, where
// a sqrt or a division takes many cycles per vector. Valid for normal, finite, positive
// s: `fast_rsqrt_domain` tells whether every lane is; otherwise the exact path runs.
#if defined(CPU_CAPABILITY_AVX512)
#define CNNKIT_LRN_FAST_RSQRT 1
inline at::vec::Vectorized<float> fast_rsqrt(const at::vec::Vectorized<float>& s) {
  const __m512 y = _mm512_rsqrt14_ps(s);
  const __m512 error = _mm512_fnmadd_ps(_mm512_mul_ps(s, y), y, _mm512_set1_ps(1.f));
  return _mm512_fmadd_ps(_mm512_mul_ps(y, _mm512_set1_ps(0.5f)), error, y);
}
inline bool fast_rsqrt_domain(const at::vec::Vectorized<float>& s) {
  // 0xff: the classes NaN, zero, infinite, subnormal and negative; no lane may be one.
  return _mm512_fpclass_ps_mask(s, 0xff) == 0;
}
#elif defined(CPU_CAPABILITY_AVX2)
#define CNNKIT_LRN_FAST_RSQRT 1
inline at::vec::Vectorized<float> fast_rsqrt(const at::vec::Vectorized<float>& s) {
  const __m256 y = _mm256_rsqrt_ps(s);
  const __m256 error = _mm256_fnmadd_ps(_mm256_mul_ps(s, y), y, _mm256_set1_ps(1.f));
  return _mm256_fmadd_ps(_mm256_mul_ps(y, _mm256_set1_ps(0.5f)), error, y);
}
inline bool fast_rsqrt_domain(const at::vec::Vectorized<float>& s) {
  const __m256 normal = _mm256_and_ps(_mm256_cmp_ps(s, _mm256_set1_ps(FLT_MIN), _CMP_GE_OQ),
                                      _mm256_cmp_ps(s, _mm256_set1_ps(FLT_MAX), _CMP_LE_OQ));
  return _mm256_movemask_ps(normal) == 0xff;
}
#endif

#if defined(CPU_CAPABILITY_AVX512)
// s^-3/4 for the forward, where it is most of the arithmetic: f0 = t (s t)^-1/2 from two
// 14-bit estimates t ~ s^-1/2 (relative error below 3 * 2^-14), then one Newton step on
// s^3 f^4 = 1, f = f0 (1 + (1 - s^3 f0^4) / 4), which squares the error. s^3 f0^4 is
// formed as (s f0)^2 (s f0 f0), every factor near s^(+-1/2), so nothing overflows.
inline at::vec::Vectorized<float> fast_pow_neg_three_quarters(const at::vec::Vectorized<float>& s) {
  const __m512 t = _mm512_rsqrt14_ps(s);
  const __m512 f0 = _mm512_mul_ps(t, _mm512_rsqrt14_ps(_mm512_mul_ps(s, t)));
  const __m512 sf = _mm512_mul_ps(s, f0);
  const __m512 residual =
      _mm512_fnmadd_ps(_mm512_mul_ps(sf, sf), _mm512_mul_ps(sf, f0), _mm512_set1_ps(1.f));
  return _mm512_fmadd_ps(_mm512_mul_ps(f0, _mm512_set1_ps(0.25f)), residual, f0);
}
#endif

// s^-beta, and s^(-beta-1) for the backward, of a vector of scales s = k + a * sum.
template <typename Vec, typename Beta>
inline Vec pow_neg_beta_vec(const Vec& s, const Beta& b) {
  const double beta = b.value;
#ifdef CNNKIT_LRN_FAST_RSQRT
  if constexpr (std::is_same_v<Vec, at::vec::Vectorized<float>>) {
    if ((beta == 0.75 || beta == 0.5) && fast_rsqrt_domain(s)) {
      if (beta == 0.5) return fast_rsqrt(s);
#if defined(CPU_CAPABILITY_AVX512)
      return fast_pow_neg_three_quarters(s);
#else
      const Vec u = fast_rsqrt(s);
      return u * fast_rsqrt(s * u);  // s^-1/2 (s^1/2)^-1/2
#endif
    }
  }
#endif
  return exact_pow_neg_beta(s, b);
}

template <typename Vec, typename Beta>
inline void pow_neg_beta_and_next_vec(const Vec& s, const Beta& b, Vec& pow_neg_beta, Vec& pow_next) {
  const double beta = b.value;
#ifdef CNNKIT_LRN_FAST_RSQRT
  if constexpr (std::is_same_v<Vec, at::vec::Vectorized<float>>) {
    if ((beta == 0.75 || beta == 0.5) && fast_rsqrt_domain(s)) {
      const Vec u = fast_rsqrt(s);
      pow_neg_beta = beta == 0.5 ? u : u * fast_rsqrt(s * u);
      pow_next = pow_neg_beta * (u * u);  // s^-beta / s without a division
      return;
    }
  }
#endif
  pow_neg_beta = exact_pow_neg_beta(s, b);
  pow_next = pow_neg_beta / s;
}

// ---- window sums ---------------------------------------------------------------------

// Window sums without subtraction (the van Herk / Gil-Werman scheme): the padded channel
// axis is cut into blocks of the window's width W, so every window is a suffix of one block
// plus a prefix of the next. Sums only ever add, so large values leaving the window leave
// no round-off behind (a running add-and-subtract sum does), and each channel costs O(1).
//
// One "row" per channel holds `len` lanes (positions, vectorised). Each call of advance()
// moves to the next channel (the first call to channel 0); sum(p) is then the window sum
// of that channel at lanes p .. p + V - 1.
template <typename acc_t, typename Row>
class RowWindowSums {
 public:
  using Vec = at::vec::Vectorized<acc_t>;

  RowWindowSums(int64_t C, int64_t before, int64_t after, int64_t len, const Row& row,
                acc_t* scratch /* (W + 1) * len */)
      : C_(C), before_(before), W_(before + after + 1), len_(len), row_(row),
        prefix_(scratch), suffix_(scratch + len) {}

  void advance() {
    ++channel_;
    phase_ = phase_ + 1 == W_ ? 0 : phase_ + 1;
    // The window of channel c spans the padded rows c .. c + W - 1.
    for (const int64_t end = channel_ + W_ - 1; next_ <= end; ++next_) {
      next_phase_ = next_phase_ + 1 == W_ ? 0 : next_phase_ + 1;
      if (next_phase_ == 0) {
        if (next_ > 0) fill_suffixes(next_ - W_);
        set_row(next_ - before_, prefix_);
      } else {
        add_row(next_ - before_, prefix_, prefix_);
      }
    }
    // A window starting on a block boundary is that block: the prefix alone.
    suffix_row_ = phase_ == 0 ? nullptr : suffix_ + phase_ * len_;
  }

  Vec sum(int64_t p) const {
    const Vec prefix = Vec::loadu(prefix_ + p);
    return suffix_row_ ? prefix + Vec::loadu(suffix_row_ + p) : prefix;
  }
  acc_t sum_scalar(int64_t p) const { return prefix_[p] + (suffix_row_ ? suffix_row_[p] : acc_t(0)); }

 private:
  bool in_range(int64_t channel) const { return channel >= 0 && channel < C_; }

  // dst = row(channel), zero outside the channels.
  void set_row(int64_t channel, acc_t* dst) const {
    if (!in_range(channel)) {
      std::fill(dst, dst + len_, acc_t(0));
      return;
    }
    int64_t p = 0;
    for (; p + Vec::size() <= len_; p += Vec::size()) row_(channel, p).store(dst + p);
    for (; p < len_; ++p) dst[p] = row_.scalar(channel, p);
  }

  // dst = src + row(channel), in one pass.
  void add_row(int64_t channel, const acc_t* src, acc_t* dst) const {
    if (!in_range(channel)) {
      if (src != dst) std::copy(src, src + len_, dst);
      return;
    }
    int64_t p = 0;
    for (; p + Vec::size() <= len_; p += Vec::size()) (Vec::loadu(src + p) + row_(channel, p)).store(dst + p);
    for (; p < len_; ++p) dst[p] = src[p] + row_.scalar(channel, p);
  }

  // suffix_[j] = sum of the block's padded rows j .. W-1, for the block starting at `start`.
  // suffix_[0] (the whole block) is never read: a window starting there is a prefix.
  void fill_suffixes(int64_t start) {
    set_row(start + W_ - 1 - before_, suffix_ + (W_ - 1) * len_);
    for (int64_t j = W_ - 2; j >= 1; --j) {
      add_row(start + j - before_, suffix_ + (j + 1) * len_, suffix_ + j * len_);
    }
  }

  const int64_t C_, before_, W_, len_;
  const Row& row_;
  acc_t* prefix_;
  acc_t* suffix_;
  const acc_t* suffix_row_ = nullptr;
  int64_t channel_ = -1, phase_ = -1;     // the current channel, and its offset in its block
  int64_t next_ = 0, next_phase_ = -1;    // the next padded row to enter the prefix, likewise
};

// Squares of row `channel` of a block, vector and scalar.
template <typename T>
struct SquaredRow {
  const T* base;   // the block's first element
  int64_t stride;  // between channel rows
  OpVec<T> operator()(int64_t channel, int64_t p) const {
    auto v = load_opmath(base + channel * stride + p);
    return v * v;
  }
  opmath_t<T> scalar(int64_t channel, int64_t p) const {
    const opmath_t<T> v = base[channel * stride + p];
    return v * v;
  }
};

// A row of an opmath buffer laid out [C][stride].
template <typename acc_t>
struct ScratchRow {
  const acc_t* base;
  int64_t stride;
  at::vec::Vectorized<acc_t> operator()(int64_t channel, int64_t p) const {
    return at::vec::Vectorized<acc_t>::loadu(base + channel * stride + p);
  }
  acc_t scalar(int64_t channel, int64_t p) const { return base[channel * stride + p]; }
};

// ---- one block of channel rows -------------------------------------------------------
// A block is C rows of `len` positions; in_t and out_t are the tensor's scalar type
// (channels-first, in place) or its opmath type (a transposed channels-last tile).

template <typename in_t, typename out_t>
void forward_block(const in_t* x, int64_t x_stride, out_t* y, int64_t y_stride, int64_t C,
                   int64_t len, const LrnParams& prm, opmath_t<in_t>* window_scratch) {
  using acc_t = opmath_t<in_t>;
  using Vec = OpVec<in_t>;
  constexpr int64_t V = Vec::size();
  const acc_t k = prm.k, a = prm.a;
  const SquaredRow<in_t> squares{x, x_stride};
  RowWindowSums<acc_t, SquaredRow<in_t>> sums(C, prm.window.before, prm.window.after, len, squares,
                                             window_scratch);
  dispatch_beta(prm.beta, [&](const auto& beta) {
    for (int64_t c = 0; c < C; ++c) {
      sums.advance();
      const in_t* xr = x + c * x_stride;
      out_t* yr = y + c * y_stride;
      int64_t p = 0;
      for (; p + V <= len; p += V) {
        const Vec s = at::vec::fmadd(Vec(a), sums.sum(p), Vec(k));
        store_opmath(yr + p, load_opmath(xr + p) * pow_neg_beta_vec(s, beta));
      }
      for (; p < len; ++p) {
        const acc_t s = lrn::scale<acc_t>(k, a, sums.sum_scalar(p));
        yr[p] = static_cast<out_t>(lrn::output<acc_t>(xr[p], pow_neg_beta_scalar(s, beta)));
      }
    }
  });
}

// The backward's per-block scratch: the window sums', and C rows each of s^-beta and of
// the terms g x s^(-beta-1), row stride `stride` >= len.
template <typename acc_t>
struct BackwardScratch {
  acc_t* window;
  acc_t* pow_neg_beta;
  acc_t* term;
  int64_t stride;
};

template <typename in_t, typename out_t>
void backward_block(const in_t* g, const in_t* x, int64_t in_stride, out_t* gx, int64_t out_stride,
                    int64_t C, int64_t len, const LrnParams& prm,
                    const BackwardScratch<opmath_t<in_t>>& scratch) {
  using acc_t = opmath_t<in_t>;
  using Vec = OpVec<in_t>;
  constexpr int64_t V = Vec::size();
  const acc_t k = prm.k, a = prm.a, two_a_beta = 2 * prm.a * prm.beta;
  const SquaredRow<in_t> squares{x, in_stride};
  RowWindowSums<acc_t, SquaredRow<in_t>> square_sums(C, prm.window.before, prm.window.after, len,
                                                    squares, scratch.window);
  dispatch_beta(prm.beta, [&](const auto& beta) {
    for (int64_t c = 0; c < C; ++c) {  // pass 1: s^-beta and g x s^(-beta-1)
      square_sums.advance();
      const in_t* xr = x + c * in_stride;
      const in_t* gr = g + c * in_stride;
      acc_t* spb_r = scratch.pow_neg_beta + c * scratch.stride;
      acc_t* term_r = scratch.term + c * scratch.stride;
      int64_t p = 0;
      for (; p + V <= len; p += V) {
        const Vec s = at::vec::fmadd(Vec(a), square_sums.sum(p), Vec(k));
        Vec f, f_over_s;
        pow_neg_beta_and_next_vec(s, beta, f, f_over_s);
        f.store(spb_r + p);
        (load_opmath(gr + p) * load_opmath(xr + p) * f_over_s).store(term_r + p);
      }
      for (; p < len; ++p) {
        const acc_t s = lrn::scale<acc_t>(k, a, square_sums.sum_scalar(p));
        spb_r[p] = pow_neg_beta_scalar(s, beta);
        term_r[p] = lrn::backward_term<acc_t>(gr[p], xr[p], s, spb_r[p]);
      }
    }
  });
  const ScratchRow<acc_t> terms{scratch.term, scratch.stride};
  RowWindowSums<acc_t, ScratchRow<acc_t>> term_sums(C, prm.window.after, prm.window.before, len,
                                                    terms, scratch.window);
  for (int64_t c = 0; c < C; ++c) {  // pass 2: the terms summed over the mirrored window
    term_sums.advance();
    const in_t* xr = x + c * in_stride;
    const in_t* gr = g + c * in_stride;
    const acc_t* spb_r = scratch.pow_neg_beta + c * scratch.stride;
    out_t* out = gx + c * out_stride;
    int64_t p = 0;
    for (; p + V <= len; p += V) {
      store_opmath(out + p, load_opmath(gr + p) * Vec::loadu(spb_r + p) -
                                Vec(two_a_beta) * load_opmath(xr + p) * term_sums.sum(p));
    }
    for (; p < len; ++p) {
      out[p] = static_cast<out_t>(
          lrn::grad_input<acc_t>(gr[p], xr[p], spb_r[p], two_a_beta, term_sums.sum_scalar(p)));
    }
  }
}

// ---- channels-first ------------------------------------------------------------------

// Positions per channels-first block: a multiple of the vector width; long, since each
// channel row of a block carries a fixed cost (the window bookkeeping, a stream restart),
// but with the block's scratch (`rows_per_lane` opmath values per position) within about
// an L2 cache, and enough blocks that every thread gets several.
template <typename acc_t>
int64_t position_block(int64_t rows_per_lane, const DenseLayout& shape) {
  constexpr int64_t kScratchBytes = 1024 * 1024, kMaxBlock = 4096, kLanes = 64;
  const int64_t fits = kScratchBytes / (rows_per_lane * static_cast<int64_t>(sizeof(acc_t)));
  const int64_t per_image = at::divup(4 * at::get_num_threads(), shape.batch);
  const int64_t balanced = at::divup(at::divup(shape.positions, per_image), kLanes) * kLanes;
  const int64_t block = std::min({kMaxBlock, fits / kLanes * kLanes, balanced});
  return std::min(std::max(kLanes, block), shape.positions);
}

template <typename scalar_t>
void forward_channels_first(const scalar_t* x, scalar_t* y, const DenseLayout& shape,
                            const LrnParams& prm) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = shape.channels, S = shape.positions;
  const int64_t block = position_block<acc_t>(prm.width() + 1, shape);
  const int64_t blocks = at::divup(S, block);
  at::parallel_for(0, shape.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> window((prm.width() + 1) * block);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, p0 = (task % blocks) * block;
      const int64_t offset = n * C * S + p0;
      forward_block(x + offset, S, y + offset, S, C, std::min(block, S - p0), prm, window.data());
    }
  });
}

template <typename scalar_t>
void backward_channels_first(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                             const DenseLayout& shape, const LrnParams& prm) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = shape.channels, S = shape.positions;
  // Per lane: the window sums' scratch, C values each of s^-beta and of the terms, and the
  // C values each of g and x that pass 2 reads again (from cache, when they fit).
  const int64_t block = position_block<acc_t>(prm.width() + 1 + 4 * C, shape);
  const int64_t blocks = at::divup(S, block);
  at::parallel_for(0, shape.batch * blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> window((prm.width() + 1) * block), spb(C * block), term(C * block);
    const BackwardScratch<acc_t> scratch{window.data(), spb.data(), term.data(), block};
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks, p0 = (task % blocks) * block;
      const int64_t offset = n * C * S + p0;
      backward_block(g + offset, x + offset, S, gx + offset, S, C, std::min(block, S - p0), prm,
                     scratch);
    }
  });
}

// ---- channels-last -------------------------------------------------------------------

// Positions per channels-last tile: a multiple of the vector width where it fits, so that
// the tile's `rows_per_position` opmath values per position stay within L2.
template <typename acc_t>
int64_t tile_positions(int64_t rows_per_position) {
  constexpr int64_t kScratchBytes = 512 * 1024, kMaxTile = 128;
  constexpr int64_t V = at::vec::Vectorized<acc_t>::size();
  const int64_t fits = kScratchBytes / (rows_per_position * static_cast<int64_t>(sizeof(acc_t)));
  if (fits < V) return std::max<int64_t>(1, fits);  // very many channels: correct, not fast
  return std::min(kMaxTile, fits / V * V);
}

// Runs body(first_position, positions, next_positions, scratch) over tiles of consecutive
// positions of the (N * S, C) channels-last tensor in parallel; `next_positions` is the
// length of the tile the same thread takes next (0 if none), which follows this one in
// memory; each thread owns `scratch_size` opmath values of scratch.
template <typename acc_t, typename Body>
void for_each_tile(const DenseLayout& shape, int64_t tile, int64_t scratch_size, const Body& body) {
  const int64_t total = shape.batch * shape.positions;
  at::parallel_for(0, at::divup(total, tile), 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(scratch_size);
    for (int64_t t = begin; t < end; ++t) {
      const int64_t first = t * tile, next = first + tile;
      const int64_t next_positions = t + 1 < end ? std::min(tile, total - next) : 0;
      body(first, std::min(tile, total - first), next_positions, scratch.data());
    }
  });
}

template <typename scalar_t>
void forward_channels_last(const scalar_t* x, scalar_t* y, const DenseLayout& shape,
                           const LrnParams& prm) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = shape.channels, W = prm.width();
  // Per position: the tile's input rows, output rows and bfloat16 staging; plus the window.
  const int64_t P = tile_positions<acc_t>(3 * C + W + 1);
  for_each_tile<acc_t>(shape, P, (3 * C + W + 1) * P, [&](int64_t first, int64_t len,
                                                         int64_t next_len, acc_t* scratch) {
    acc_t* xt = scratch;
    acc_t* yt = xt + C * P;
    acc_t* staging = yt + C * P;
    acc_t* window = staging + C * P;
    const scalar_t* tile_x = x + first * C;
    load_channel_rows(tile_x, len, C, xt, P, staging, tile_x + len * C, next_len);
    forward_block(xt, P, yt, P, C, len, prm, window);
    store_channel_rows(yt, P, len, C, y + first * C, staging);
  });
}

template <typename scalar_t>
void backward_channels_last(const scalar_t* g, const scalar_t* x, scalar_t* gx,
                            const DenseLayout& shape, const LrnParams& prm) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t C = shape.channels, W = prm.width();
  // Per position: rows of g, x, s^-beta, the terms, the result and bfloat16 staging.
  const int64_t P = tile_positions<acc_t>(6 * C + W + 1);
  for_each_tile<acc_t>(shape, P, (6 * C + W + 1) * P, [&](int64_t first, int64_t len,
                                                         int64_t next_len, acc_t* scratch) {
    acc_t* gt = scratch;
    acc_t* xt = gt + C * P;
    acc_t* out = xt + C * P;
    acc_t* staging = out + C * P;
    acc_t* window = staging + C * P;
    acc_t* spb = window + (W + 1) * P;
    const BackwardScratch<acc_t> rows{window, spb, spb + C * P, P};
    const int64_t offset = first * C, next = (first + len) * C;
    load_channel_rows(g + offset, len, C, gt, P, staging, g + next, next_len);
    load_channel_rows(x + offset, len, C, xt, P, staging, x + next, next_len);
    backward_block(gt, xt, P, out, P, C, len, prm, rows);
    store_channel_rows(out, P, len, C, gx + first * C, staging);
  });
}

// ---- ops -----------------------------------------------------------------------------

// A fresh output of 32 MB or more is a new mapping on every call (glibc serves such sizes
// with mmap and unmaps them on free), so writing it page-faults once per 4 KB page, which
// for AlexNet's first LRN costs more than the kernel itself. Asking for transparent huge
// pages before the first write makes that one fault per 2 MB; the hint is ignored where
// THP is off, and touches nothing but the tensor's own pages.
void advise_huge_pages(const at::Tensor& fresh) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHugePage = uintptr_t(2) << 20;
  constexpr size_t kFreshMapping = size_t(32) << 20;
  const size_t bytes = fresh.nbytes();
  if (bytes < kFreshMapping) return;
  const auto begin = reinterpret_cast<uintptr_t>(fresh.data_ptr());
  const uintptr_t first = (begin + kHugePage - 1) & ~(kHugePage - 1);
  const uintptr_t last = (begin + bytes) & ~(kHugePage - 1);
  if (last > first) madvise(reinterpret_cast<void*>(first), last - first, MADV_HUGEPAGE);
#endif
}

at::Tensor local_response_norm_cpu(const at::Tensor& input, int64_t size, double alpha,
                                   double beta, double k, c10::string_view convention) {
  const int parsed = check_local_response_norm(input, size, k, std::string(convention));
  const at::Tensor x = dense_input(input);
  at::Tensor y = at::empty_like(x);
  if (x.numel() == 0) return y;
  advise_huge_pages(y);
  const DenseLayout shape = dense_layout(x);
  const LrnParams prm = make_params(parsed, size, shape.channels, alpha, beta, k);
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
  const int parsed =
      check_local_response_norm_backward(grad_output, input, size, k, std::string(convention));
  const at::Tensor x = dense_input(input);
  const at::Tensor g = dense_like(grad_output.to(x.scalar_type()), x);
  at::Tensor gx = at::empty_like(x);
  if (x.numel() == 0) return gx;
  advise_huge_pages(gx);
  const DenseLayout shape = dense_layout(x);
  const LrnParams prm = make_params(parsed, size, shape.channels, alpha, beta, k);
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
}  // namespace CPU_CAPABILITY

template <>
void register_lrn_kernels<Capability::CPU_CAPABILITY>(torch::Library& m) {
  m.impl("local_response_norm", &CPU_CAPABILITY::local_response_norm_cpu);
  m.impl("local_response_norm_backward", &CPU_CAPABILITY::local_response_norm_backward_cpu);
}

}  // namespace cpu
}  // namespace cnnkit
