// The CPU engine's memory reuse: inside a resnet_ext CPU forward (a thread-local scope the engine opens), tensor
// allocations of at least kMinBytes come from blocks kept from earlier forwards instead of fresh memory.
//
// Why: glibc hands large blocks back to the kernel on free (munmap, or trimming the heap's top), so every
// forward touches its activations' pages for the first time again, and each first touch is a page fault that
// zeroes a 4 KiB page. In the project's 2-core VM that cost 2-20 us a page: resnet50 at batch 8 took 13,000-24,000
// faults a forward, and reuse made its frozen forward 1.11x faster (benchmarks/results/2026-12-03-cpu-memory-reuse). ONNX Runtime and OpenVINO keep an arena for the same reason; PyTorch's
// own caching CPU allocator is built only for mobile.
//
// How: a c10::Allocator put in front of the CPU allocator that was installed (once, when the first scope opens).
// Outside a scope, and for small blocks, it hands over to that allocator unchanged. Inside, a block of exactly the
// requested size is reused if one is free (a forward's sizes repeat from one forward to the next), else a new one
// is made; a block freed anywhere, any time (the forward's output included) is kept for reuse while the kept
// bytes stay within the limit, else freed. Nothing of a block is read: it is memory as at::empty gives it.
#include "ops/cpu_memory.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <cstring>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace resnet_ext::cpu_memory {
namespace {

constexpr size_t kMinBytes = 64 * 1024;  // smaller blocks come from malloc's heap, already reused without faults

thread_local bool t_in_scope = false;

class ReusingAllocator final : public c10::Allocator {
 public:
  explicit ReusingAllocator(c10::Allocator* next) : next_(next) {}

  c10::DataPtr allocate(size_t n) override {
    if (!t_in_scope || n < kMinBytes) return next_->allocate(n);
    void* p = take(n);
    if (p == nullptr) {
      try {
        p = c10::alloc_cpu(n);
      } catch (const c10::Error&) {  // out of memory: give the kept blocks back and try once more
        empty();
        p = c10::alloc_cpu(n);
      }
      std::lock_guard<std::mutex> lock(mu_);
      size_of_[p] = n;
    }
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

  // raw_allocate/raw_deallocate (oneDNN's buffers through ideep) free any block with this: ours are kept or freed,
  // the next allocator's go back to it.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  static void release(void* p) { instance()->keep_or_free(p); }

  void keep_or_free(void* p) {
    bool ours = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = size_of_.find(p);
      if (it != size_of_.end()) {
        const size_t n = it->second;
        if (kept_bytes_ + n <= limit_) {
          free_[n].push_back(p);
          kept_bytes_ += n;
          return;
        }
        size_of_.erase(it);
        ours = true;
      }
    }
    if (ours) {
      c10::free_cpu(p);
    } else {
      next_->raw_deleter()(p);
    }
  }

  void empty() {
    std::vector<void*> blocks;
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (auto& [n, list] : free_)
        for (void* p : list) {
          blocks.push_back(p);
          size_of_.erase(p);
        }
      free_.clear();
      kept_bytes_ = 0;
    }
    for (void* p : blocks) c10::free_cpu(p);
  }

  void set_limit(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes;
      if (kept_bytes_ <= limit_) return;
    }
    empty();
  }

  Stats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {kept_bytes_, limit_, size_of_.size(), installed_};
  }

  static ReusingAllocator* instance() { return instance_; }

  // Puts the allocator in front of the installed CPU allocator, once; never destroyed (blocks may outlive
  // everything else). False where another allocator of higher priority stays installed.
  static bool install() {
    static std::once_flag once;
    std::call_once(once, [] {
      instance_ = new ReusingAllocator(c10::GetCPUAllocator());
      c10::SetCPUAllocator(instance_, /*priority=*/1);
      instance_->installed_ = c10::GetCPUAllocator() == instance_;
    });
    return instance_->installed_;
  }

 private:
  void* take(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(n);
    if (it == free_.end() || it->second.empty()) return nullptr;
    void* p = it->second.back();
    it->second.pop_back();
    kept_bytes_ -= n;
    return p;
  }

  static inline ReusingAllocator* instance_ = nullptr;
  c10::Allocator* next_;
  std::mutex mu_;
  std::unordered_map<void*, size_t> size_of_;            // every block made here and not freed yet
  std::unordered_map<size_t, std::vector<void*>> free_;  // the kept ones, by size
  size_t kept_bytes_ = 0;
  size_t limit_ = kDefaultLimit;
  bool installed_ = false;
};

}  // namespace

bool scope(bool on) {
  const bool was = t_in_scope;
  t_in_scope = on && ReusingAllocator::install();
  return was;
}

void set_limit(size_t bytes) {
  ReusingAllocator::install();
  ReusingAllocator::instance()->set_limit(bytes);
}

void empty_cache() {
  if (ReusingAllocator::instance() != nullptr) ReusingAllocator::instance()->empty();
}

Stats stats() {
  if (ReusingAllocator::instance() == nullptr) return {0, kDefaultLimit, 0, false};
  return ReusingAllocator::instance()->stats();
}

}  // namespace resnet_ext::cpu_memory
