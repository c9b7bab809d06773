// Chooses the CPU kernels' SIMD capability when the library loads and registers that build's
// kernels (capability.h). Compiled portably: it runs before any capability is known to work.
#include "cpu/capability.h"

#include <ATen/Version.h>
#include <torch/library.h>

#include <iterator>
#include <string>

namespace cnnkit {
namespace cpu {
namespace {

// The build defines CNNKIT_CPU_<CAPABILITY> for every capability above DEFAULT it compiles.
constexpr Capability kCompiled[] = {
    Capability::DEFAULT,
#ifdef CNNKIT_CPU_AVX2
    Capability::AVX2,
#endif
#ifdef CNNKIT_CPU_AVX512
    Capability::AVX512,
#endif
};

// torch's capability, as at::get_cpu_capability() names it; anything else (a non-x86 CPU's
// names, or an older CPU) allows DEFAULT alone.
Capability torch_capability() {
  const std::string name = at::get_cpu_capability();
  if (name == "AVX512") return Capability::AVX512;
  if (name == "AVX2") return Capability::AVX2;
  return Capability::DEFAULT;
}

template <Capability capability>
void register_kernels(torch::Library& m) {
  register_lrn_kernels<capability>(m);
  register_batch_norm_kernels<capability>(m);
  register_max_pool_kernels<capability>(m);
}

}  // namespace

const char* capability_name(Capability capability) {
  switch (capability) {
    case Capability::AVX2: return "AVX2";
    case Capability::AVX512: return "AVX512";
    default: return "DEFAULT";
  }
}

std::vector<Capability> compiled_capabilities() {
  return {std::begin(kCompiled), std::end(kCompiled)};
}

Capability active_capability() {
  const Capability allowed = torch_capability();
  Capability best = Capability::DEFAULT;
  for (const Capability capability : kCompiled) {
    if (capability <= allowed) best = capability;
  }
  return best;
}

}  // namespace cpu
}  // namespace cnnkit

TORCH_LIBRARY_IMPL(cnnkit, CPU, m) {
  using cnnkit::cpu::Capability;
  switch (cnnkit::cpu::active_capability()) {
#ifdef CNNKIT_CPU_AVX512
    case Capability::AVX512: cnnkit::cpu::register_kernels<Capability::AVX512>(m); break;
#endif
#ifdef CNNKIT_CPU_AVX2
    case Capability::AVX2: cnnkit::cpu::register_kernels<Capability::AVX2>(m); break;
#endif
    default: cnnkit::cpu::register_kernels<Capability::DEFAULT>(m);
  }
}
