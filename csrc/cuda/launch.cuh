#pragma once
// The one place a kernel of csrc/cuda is launched. With CNNKIT_CUDA_EMULATION (defined only
// by the tests' host build, tests/cuda_emulation) the kernel runs on the CPU instead: the
// `<<<>>>` syntax is not C++, a function call is.
#include <cuda_runtime.h>

namespace cnnkit {
namespace cuda {

template <typename... Params, typename... Args>
cudaError_t launch(void (*kernel)(Params...), dim3 grid, dim3 block, cudaStream_t stream, const Args&... args) {
#ifdef CNNKIT_CUDA_EMULATION
  (void)stream;
  return emulation::run(grid, block, [&] { kernel(args...); });
#else
  kernel<<<grid, block, 0, stream>>>(args...);
  return cudaGetLastError();
#endif
}

}  // namespace cuda
}  // namespace cnnkit
