// The CUDA execution model on the CPU (see include/cuda_runtime.h): a launch runs its blocks
// one after another, on the launching thread. Each thread of a block is a fiber (ucontext)
// with a stack of its own; a scheduler resumes the live fibers in order, each running until
// its next __syncthreads or its return, round after round until all have returned.
#include <cuda_runtime.h>
#include <ucontext.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <mutex>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#endif

namespace cnnkit {
namespace cuda {
namespace emulation {
namespace {

[[noreturn]] void fail(const char* what) {
  std::fprintf(stderr, "cuda emulation: %s\n", what);
  std::abort();
}

uint64_t volume(dim3 d) { return static_cast<uint64_t>(d.x) * d.y * d.z; }

uint3 unflatten(uint64_t index, dim3 extent) {
  return {static_cast<unsigned>(index % extent.x), static_cast<unsigned>(index / extent.x % extent.y),
          static_cast<unsigned>(index / extent.x / extent.y)};
}

// Switching stacks under AddressSanitizer needs telling it (its fiber annotations).
void start_switch(void** fake_stack, const void* bottom, size_t size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(fake_stack, bottom, size);
#else
  (void)fake_stack, (void)bottom, (void)size;
#endif
}

void finish_switch(void* fake_stack, const void** bottom, size_t* size) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_finish_switch_fiber(fake_stack, bottom, size);
#else
  (void)fake_stack, (void)bottom, (void)size;
#endif
}

constexpr size_t kStackBytes = 256 * 1024;

struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack{new char[kStackBytes]};
  Coordinates coordinates;
  bool alive = false;
  void* fake_stack = nullptr;
};

class Launch {
 public:
  Launch(dim3 grid, dim3 block, const std::function<void()>& body, Schedule schedule)
      : grid_(grid), block_(block), body_(body), fibers_(volume(block)) {
    const size_t threads = fibers_.size();
    for (size_t rank = 0; rank < threads; ++rank)
      order_.push_back(schedule == Schedule::kForward ? rank : threads - 1 - rank);
  }

  void run() {
    for (uint64_t b = 0; b < volume(grid_); ++b) run_block(unflatten(b, grid_));
  }

  const Coordinates& coordinates() const { return fibers_[running_].coordinates; }

  // __syncthreads: back to the scheduler, which resumes this fiber in the next round.
  void barrier() { switch_to_scheduler(fibers_[running_], false); }

 private:
  void run_block(uint3 block_index) {
    for (size_t rank = 0; rank < fibers_.size(); ++rank) {
      Fiber& f = fibers_[rank];
      f.coordinates = {unflatten(rank, block_), block_index, block_, grid_};
      f.alive = true;
      getcontext(&f.context);
      f.context.uc_stack = {f.stack.get(), 0, kStackBytes};
      f.context.uc_link = nullptr;
      makecontext(&f.context, &Launch::entry, 0);
    }
    for (bool any_alive = true; any_alive;) {  // one round: every live thread to its next barrier
      any_alive = false;
      for (size_t rank : order_) {
        if (!fibers_[rank].alive) continue;
        running_ = rank;
        resume(fibers_[rank]);
        any_alive |= fibers_[rank].alive;
      }
    }
  }

  void resume(Fiber& f) {
    void* fake_stack = nullptr;
    start_switch(&fake_stack, f.stack.get(), kStackBytes);
    swapcontext(&scheduler_, &f.context);
    finish_switch(fake_stack, nullptr, nullptr);
  }

  void switch_to_scheduler(Fiber& f, bool returned) {
    // A fiber that returned is never resumed: nullptr lets ASan drop its fake stack.
    start_switch(returned ? nullptr : &f.fake_stack, scheduler_bottom_, scheduler_size_);
    swapcontext(&f.context, &scheduler_);
    finish_switch(f.fake_stack, &scheduler_bottom_, &scheduler_size_);
  }

  static void entry();

  const dim3 grid_, block_;
  const std::function<void()>& body_;
  std::vector<Fiber> fibers_;
  std::vector<size_t> order_;
  size_t running_ = 0;
  ucontext_t scheduler_;
  const void* scheduler_bottom_ = nullptr;
  size_t scheduler_size_ = 0;
};

thread_local Launch* current_launch = nullptr;

void Launch::entry() {
  Launch& launch = *current_launch;
  Fiber& f = launch.fibers_[launch.running_];
  finish_switch(nullptr, &launch.scheduler_bottom_, &launch.scheduler_size_);
  launch.body_();
  f.alive = false;
  launch.switch_to_scheduler(f, true);
  fail("a returned thread was resumed");
}

// __shared__ variables are function statics: one launch at a time, whatever the thread.
std::mutex launch_mutex;
std::atomic<Schedule> schedule{Schedule::kForward};

bool valid(dim3 grid, dim3 block) {
  // The limits of every GPU cnnkit targets (compute capability 7.0 and later).
  if (volume(grid) == 0 || volume(block) == 0) return false;
  if (grid.y > 65535 || grid.z > 65535 || grid.x > 2147483647u) return false;
  return volume(block) <= 1024 && block.z <= 64;
}

}  // namespace

const Coordinates& coordinates() {
  if (current_launch == nullptr) fail("threadIdx, blockIdx, blockDim or gridDim used outside a kernel");
  return current_launch->coordinates();
}

void sync_threads() {
  if (current_launch == nullptr) fail("__syncthreads called outside a kernel");
  current_launch->barrier();
}

void set_schedule(Schedule s) { schedule = s; }

cudaError_t run(dim3 grid, dim3 block, const std::function<void()>& body) {
  if (!valid(grid, block)) return cudaErrorInvalidConfiguration;
  const std::lock_guard<std::mutex> lock(launch_mutex);
  Launch launch(grid, block, body, schedule);
  current_launch = &launch;
  launch.run();
  current_launch = nullptr;
  return cudaSuccess;
}

}  // namespace emulation
}  // namespace cuda
}  // namespace cnnkit
