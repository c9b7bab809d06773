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

#ifndef CPU_CAPABILITY
#error "vec_io.h is for the kernel builds, which define CPU_CAPABILITY (capability.h)"
#endif

namespace cnnkit {
namespace cpu {
namespace CPU_CAPABILITY {

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

#if defined(CPU_CAPABILITY_AVX512)
// One 16x16 float block through registers: unpack pairs of rows at 32 then 64 bits, then
// shuffle 128-bit lanes twice (the sequence of ATen's transpose_block, fixed at 16x16 so
// that it inlines with no bounds logic).
inline void transpose_16x16(const float* src, int64_t ld_src, float* dst, int64_t ld_dst) {
  __m512 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * ld_src);
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 2; ++i) {
    for (int j = 0; j < 4; ++j) {
      t[8 * i + j] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0x88);
      t[8 * i + j + 4] = _mm512_shuffle_f32x4(r[8 * i + j], r[8 * i + j + 4], 0xdd);
    }
  }
  for (int i = 0; i < 8; ++i) {
    _mm512_storeu_ps(dst + i * ld_dst, _mm512_shuffle_f32x4(t[i], t[8 + i], 0x88));
    _mm512_storeu_ps(dst + (8 + i) * ld_dst, _mm512_shuffle_f32x4(t[i], t[8 + i], 0xdd));
  }
}
#endif

// dst[j * ld_dst + i] = src[i * ld_src + j] for i < rows, j < cols.
template <typename T>
inline void transpose(const T* src, int64_t ld_src, T* dst, int64_t ld_dst, int64_t rows,
                      int64_t cols) {
  // Blocks small enough that the block's source and destination lines stay in L1.
  constexpr int64_t kBlock = 16;
  for (int64_t i0 = 0; i0 < rows; i0 += kBlock) {
    for (int64_t j0 = 0; j0 < cols; j0 += kBlock) {
      const int64_t i1 = std::min(rows, i0 + kBlock), j1 = std::min(cols, j0 + kBlock);
#if defined(CPU_CAPABILITY_AVX512)
      if constexpr (std::is_same_v<T, float>) {
        if (i1 - i0 == 16 && j1 - j0 == 16) {
          transpose_16x16(src + i0 * ld_src + j0, ld_src, dst + j0 * ld_dst + i0, ld_dst);
          continue;
        }
      }
#endif
      for (int64_t i = i0; i < i1; ++i) {
        for (int64_t j = j0; j < j1; ++j) dst[j * ld_dst + i] = src[i * ld_src + j];
      }
    }
  }
}

// Asks for `bytes` from `data` on into L2, one request per cache line.
inline void prefetch_to_l2(const void* data, int64_t bytes) {
  const char* p = static_cast<const char*>(data);
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset, 0, 2);
}

// Channels-last tiles: `positions` x `channels` values of a tensor, contiguous (one
// position's channels after another's), to and from `channels` rows of opmath values, row
// stride `ld`, so that code written for channels-first rows runs on them. `staging` holds
// positions * channels opmath values (16 * channels to load) when scalar_t is not its own
// opmath type (bfloat16), and may be null otherwise. `next`, when not null, is the next
// tile's source, `next_positions` long: it is prefetched band by band while this tile is
// transposed, so that it arrives as a stream instead of the transpose's scattered first
// touches.
template <typename scalar_t>
inline void load_channel_rows(const scalar_t* src, int64_t positions, int64_t channels,
                              opmath_t<scalar_t>* dst, int64_t ld, opmath_t<scalar_t>* staging,
                              const scalar_t* next = nullptr, int64_t next_positions = 0) {
  constexpr int64_t kBand = 16;  // positions per band: the transpose's block
  for (int64_t p0 = 0; p0 < positions; p0 += kBand) {
    const int64_t band = std::min(kBand, positions - p0);
    const scalar_t* band_src = src + p0 * channels;
    if constexpr (std::is_same_v<scalar_t, opmath_t<scalar_t>>) {
      transpose(band_src, channels, dst + p0, ld, band, channels);
    } else {
      constexpr int64_t V = OpVec<scalar_t>::size();
      const int64_t n = band * channels;
      int64_t i = 0;
      for (; i + V <= n; i += V) load_opmath(band_src + i).store(staging + i);
      for (; i < n; ++i) staging[i] = static_cast<opmath_t<scalar_t>>(band_src[i]);
      transpose(staging, channels, dst + p0, ld, band, channels);
    }
    const int64_t next_band = std::min(band, next_positions - p0);
    if (next && next_band > 0) {
      prefetch_to_l2(next + p0 * channels, next_band * channels * int64_t(sizeof(scalar_t)));
    }
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

}  // namespace CPU_CAPABILITY
}  // namespace cpu
}  // namespace cnnkit
