#pragma once
// Loads and stores between a tensor's scalar type and its accumulation type (float for
// float and bfloat16, double for double), one Vectorized<opmath> at a time, so a kernel
// writes its arithmetic once for every dtype.
#include <ATen/OpMathType.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

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

}  // namespace cpu
}  // namespace cnnkit
