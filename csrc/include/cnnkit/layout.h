#pragma once
// How every kernel sees its input of shape (N, C, *): as (N, C, S), S the product of the
// spatial sizes, dense in channels-first memory order (x[n][c][s]) or channels-last order
// (x[n][s][c]). Plain C++, so that the torch-side glue, the CPU kernels and the plain-CUDA
// launchers all take this one struct.
#include <cstdint>

namespace cnnkit {

struct DenseLayout {
  int64_t batch, channels, positions;
  bool channels_last;  // memory order (N, S, C) instead of (N, C, S)
};

}  // namespace cnnkit
