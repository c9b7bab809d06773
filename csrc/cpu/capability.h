#pragma once
// Runtime CPU dispatch, as ATen does it. Every csrc/cpu/*_kernel.cpp is compiled once per
// SIMD capability in csrc/cpu/capabilities.txt, each build into its own namespace
// cnnkit::cpu::<CAPABILITY> (named by the macro CPU_CAPABILITY), so that no two builds share
// a symbol. Each build defines its family's registrar, register_<family>_kernels<CAPABILITY>,
// and capability.cpp calls, when the library loads, the registrars of active_capability().
#include <vector>

namespace torch {
class Library;
}

namespace cnnkit {
namespace cpu {

// ATen's names, so that Capability::CPU_CAPABILITY is the one a kernel build is for.
enum class Capability { DEFAULT, AVX2, AVX512 };

const char* capability_name(Capability capability);

// The capabilities compiled into this library, lowest first; DEFAULT always.
std::vector<Capability> compiled_capabilities();

// The highest compiled capability not above torch's own (torch.backends.cpu.
// get_cpu_capability(): the CPU's, or what ATEN_CPU_CAPABILITY asks for).
Capability active_capability();

template <Capability>
void register_lrn_kernels(torch::Library& m);
template <Capability>
void register_batch_norm_kernels(torch::Library& m);
template <Capability>
void register_max_pool_kernels(torch::Library& m);

}  // namespace cpu
}  // namespace cnnkit
