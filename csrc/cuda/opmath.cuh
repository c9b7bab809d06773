#pragma once
// The element types of the plain-CUDA kernels, for the .cu files (no torch header): the
// type each one computes in, the conversions to and from it, and the dispatch from the
// launchers' ScalarType to the C++ type.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cnnkit/cuda_types.h>

namespace cnnkit {
namespace cuda {

// float for float, half and bfloat16; double for double.
template <typename T> struct Opmath { using type = float; };
template <> struct Opmath<double> { using type = double; };

template <typename T> __device__ __forceinline__ typename Opmath<T>::type to_opmath(T v) { return static_cast<typename Opmath<T>::type>(v); }
template <> __device__ __forceinline__ float to_opmath<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_opmath<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T> __device__ __forceinline__ T from_opmath(typename Opmath<T>::type v) { return static_cast<T>(v); }
template <> __device__ __forceinline__ __half from_opmath<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_opmath<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Returns fn(T{}), T the element type that `type` names.
template <typename Fn>
cudaError_t dispatch_type(ScalarType type, const Fn& fn) {
  switch (type) {
    case ScalarType::kFloat: return fn(float{});
    case ScalarType::kDouble: return fn(double{});
    case ScalarType::kHalf: return fn(__half{});
    case ScalarType::kBFloat16: return fn(__nv_bfloat16{});
  }
  return cudaErrorInvalidValue;
}

}  // namespace cuda
}  // namespace cnnkit
