#pragma once
// The element types the plain-CUDA launchers take. The launchers see raw pointers only, so
// the torch-side glue names the type with this enum instead of a template argument.
namespace cnnkit {
namespace cuda {

enum class ScalarType { kFloat, kDouble, kHalf, kBFloat16 };

}  // namespace cuda
}  // namespace cnnkit
