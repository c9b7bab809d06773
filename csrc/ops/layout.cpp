// The dense memory orders every op family's kernels take and return (no op of its own).
// Out of line on purpose: the CPU kernels' translation units then see only declarations, and
// their optimisation does not depend on these bodies.
#include "ops/layout.h"

namespace cnnkit {

at::Tensor dense_input(const at::Tensor& input) {
  if (input.is_contiguous()) return input;
  if (input.dim() == 4 && input.is_contiguous(at::MemoryFormat::ChannelsLast)) return input;
  if (input.dim() == 5 && input.is_contiguous(at::MemoryFormat::ChannelsLast3d)) return input;
  return input.contiguous();
}

at::Tensor dense_like(const at::Tensor& tensor, const at::Tensor& dense) {
  if (dense.is_contiguous()) return tensor.contiguous();
  return tensor.contiguous(dense.dim() == 4 ? at::MemoryFormat::ChannelsLast
                                            : at::MemoryFormat::ChannelsLast3d);
}

DenseLayout dense_layout(const at::Tensor& dense) {
  int64_t positions = 1;
  for (int64_t d = 2; d < dense.dim(); ++d) positions *= dense.size(d);
  return {dense.size(0), dense.size(1), positions, !dense.is_contiguous()};
}

}  // namespace cnnkit
