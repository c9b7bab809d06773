#pragma once
// Loads and stores between a tensor's scalar type and its accumulation type (float for
// float and bfloat16, double for double), one Vectorized<opmath> at a time, so a kernel
// writes its arithmetic once for every dtype; and transposing loads and stores that let
// channels-last tiles run through code written for channels-first rows.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

namespace cnnkit {
namespace cpu {

template <typename scalar_t>
using opmath_t = at::opmath_type<scalar_t>;

template <typename scalar_t>
using OpVec = at::vec::Vectorized<opmath_t<scalar_t>>;

template <typename scalar_t>
inline OpVec<scalar_t> load_opmath(const scalar_t* data) {
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    return OpVec<scalar_t>::loadu(data);
  } else {
    OpVec<scalar_t> out;
    at::vec::load_to_float<scalar_t>(data, out);
    return out;
  }
}

template <typename scalar_t>
inline void store_opmath(scalar_t* data, const OpVec<scalar_t>& value) {
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    value.store(data);
  } else {
    at::vec::convert_from_float<scalar_t>(value, value).store(data, OpVec<scalar_t>::size());
  }
}

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < rows, j < cols.
template <typename T>
inline void transpose(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows,
                      int64_t cols) {
#if defined(CPU_CAPABILITY_AVX512)
  if constexpr (std::is_same_v<T, float>) {  // 16x16 register transposes
    at::vec::transpose_mxn<float>(src, ld_src, dst, ld_dst, static_cast<int>(rows),
                                  static_cast<int>(cols));
    return;
  }
#endif
  // Blocks small enough that the block's source and destination lines stay in L1.
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t i1 = std::min(rows, i0 + kBlock), j1 = std::min(cols, j0 + kBlock);
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
      }
    }
  }
}

// Channels-last tiles: `positions` x `channels` values of a tensor, contiguous (one
// position's channels after another's), to and from `channels` rows of opmath values, row
// stride `ld`, so that code written for channels-first rows runs on them. `staging` holds
// positions * channels opmath values when scalar_t is not its own opmath type (bfloat16),
// and may be null otherwise.
template <typename scalar_t>
inline void load_channel_rows(const scalar_t* src, int64_t positions, int64_t channels,
                              opmath_t<scalar_t>* dst, int64_t ld, opmath_t<scalar_t>* staging) {
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    transpose(src, channels, dst, ld, positions, channels);
  } else {
    constexpr int64_t V = OpVec<scalar_t>::size();
    const int64_t n = positions * channels;
    int64_t i = 0;
    for (; i + V <= n; i += V) load_opmath(src + i).store(staging + i);
    for (; i < n; ++i) staging[i] = static_cast<opmath_t<scalar_t>>(src[i]);
    transpose(staging, channels, dst, ld, positions, channels);
  }
}

template <typename scalar_t>
inline void store_channel_rows(const opmath_t<scalar_t>* src, int64_t ld, int64_t positions,
                               int64_t channels, scalar_t* dst, opmath_t<scalar_t>* staging) {
  if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
    transpose(src, ld, dst, channels, channels, positions);
  } else {
    constexpr int64_t V = OpVec<scalar_t>::size();
    const int64_t n = positions * channels;
    transpose(src, ld, staging, channels, channels, positions);
    int64_t i = 0;
    for (; i + V <= n; i += V) store_opmath(dst + i, OpVec<scalar_t>::loadu(staging + i));
    for (; i < n; ++i) dst[i] = static_cast<scalar_t>(staging[i]);
  }
}

}  // namespace cpu
}  // namespace cnnkit
