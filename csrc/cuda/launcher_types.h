#pragma once
// Torch-side glue shared by the CUDA ops: the plain-CUDA launchers' name for a tensor dtype.
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <cnnkit/cuda_types.h>

namespace cnnkit {
namespace cuda {

// The exception an op raises for a dtype its kernels do not take: the kind its other dtype
// checks raise (TypeError for batch_norm_act, ValueError for local_response_norm).
enum class DtypeError { kType, kValue };

inline ScalarType launcher_type(at::ScalarType type, const char* op,
                                DtypeError error = DtypeError::kType) {
  switch (type) {
    case at::kFloat: return ScalarType::kFloat;
    case at::kDouble: return ScalarType::kDouble;
    case at::kHalf: return ScalarType::kHalf;
    case at::kBFloat16: return ScalarType::kBFloat16;
    default: break;
  }
  TORCH_CHECK_VALUE(error != DtypeError::kValue, op, ": unsupported dtype ", type);
  TORCH_CHECK_TYPE(false, op, ": unsupported dtype ", type);
}

}  // namespace cuda
}  // namespace cnnkit
