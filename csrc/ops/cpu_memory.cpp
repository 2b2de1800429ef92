// The CPU engine's memory reuse: inside a resnet_ext CPU forward (a thread-local scope the engine opens), tensor
// allocations of at least kMinBytes come from blocks kept from earlier forwards instead of fresh memory.
//
// Why: glibc hands large blocks back to the kernel on free (munmap, or trimming the heap's top), so every
// forward touches its activations' pages for the first time again, and each first touch is a page fault that
// zeroes a 4 KiB page. In the project's 2-core VM that cost 2-20 us a page: resnet50 at batch 8 took 13,000-24,000
// faults a forward, and reuse made its frozen forward 1.11x faster (benchmarks/results/2026-12-03-cpu-memory-reuse).
// ONNX Runtime and OpenVINO keep an arena for the same reason; PyTorch's own caching CPU allocator is built only
// for mobile.
//
// How: a c10::Allocator put in front of the CPU allocator that was installed (once, when the first scope opens).
// Outside a scope, and for small blocks, it hands over to that allocator unchanged. Inside, a block of exactly the
// requested size is reused if one is free (a forward's sizes repeat from one forward to the next), else a new one
// is made; a block freed anywhere, any time (the forward's output included) is kept for reuse, the least recently
// kept ones freed to stay within the limit, and any not reused within kMaxAge model forwards (`next_forward`): with
// input sizes that keep changing, blocks of the old sizes would otherwise fill the limit (a resnet18 service on
// random sizes kept 0.9 GB). Nothing of a block is read: it is memory as at::empty gives it.
#include "ops/cpu_memory.h"

#include <c10/core/CPUAllocator.h>
#include <c10/core/impl/alloc_cpu.h>

#include <pthread.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <cstdint>
#include <cstring>
#include <iterator>
#include <list>
#include <mutex>
#include <unordered_map>
#include <vector>

namespace resnet_ext::cpu_memory {
namespace {

constexpr size_t kMinBytes = 64 * 1024;  // smaller blocks come from malloc's heap, already reused without faults
constexpr uint64_t kMaxAge = 4;  // model forwards a kept block may wait (inputs alternating in size keep theirs)

thread_local bool t_in_scope = false;

class ReusingAllocator final : public c10::Allocator {
 public:
  explicit ReusingAllocator(c10::Allocator* next) : next_(next) {}

  c10::DataPtr allocate(size_t n) override {
    if (!t_in_scope || n < kMinBytes) {
      try {
        return next_->allocate(n);
      } catch (const c10::Error&) {  // out of memory outside a forward too: what is kept must not be in the way
        if (!has_kept()) throw;
        empty();
        return next_->allocate(n);
      }
    }
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
    c10::profiledCPUMemoryReporter().New(p, n);  // as PyTorch's allocator reports: torch.profiler's memory view
    return {p, p, &release, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override { std::memcpy(dest, src, count); }

  // raw_allocate/raw_deallocate (oneDNN's buffers through ideep) free any block with this: ours are kept or freed,
  // the next allocator's go back to it.
  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  static void release(void* p) { instance()->keep_or_free(p); }

  void keep_or_free(void* p) {
    std::vector<void*> to_free;
    bool ours = false;
    {
      std::lock_guard<std::mutex> lock(mu_);
      const auto it = size_of_.find(p);
      if (it != size_of_.end()) {
        ours = true;
        c10::profiledCPUMemoryReporter().Delete(p);  // before the block can be handed out (and reported) again
        const size_t n = it->second;
        if (n <= limit_) {
          evict_locked(limit_ - n, to_free);
          lru_.push_back({p, n, forward_});
          free_[n].push_back(std::prev(lru_.end()));
          kept_bytes_ += n;
        } else {
          size_of_.erase(it);
          to_free.push_back(p);
        }
      }
    }
    if (!ours) return next_->raw_deleter()(p);
    for (void* q : to_free) c10::free_cpu(q);
  }

  void empty() { trim(0); }

  bool has_kept() {
    std::lock_guard<std::mutex> lock(mu_);
    return kept_bytes_ > 0;
  }

  void set_limit(size_t bytes) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      limit_ = bytes;
    }
    trim(bytes);
  }

  // Frees the least recently kept blocks until at most `bytes` stay kept, and hands the pages back to the system:
  // glibc keeps freed blocks of this size in its heap, mapped, until malloc_trim returns them.
  void trim(size_t bytes) {
    std::vector<void*> to_free;
    {
      std::lock_guard<std::mutex> lock(mu_);
      evict_locked(bytes, to_free);
    }
    for (void* q : to_free) c10::free_cpu(q);
#if defined(__GLIBC__)
    if (!to_free.empty()) malloc_trim(0);
#endif
  }

  // A model forward starts: blocks kept since before the last kMaxAge forwards were not asked for again; freed.
  void next_forward() {
    std::vector<void*> to_free;
    {
      std::lock_guard<std::mutex> lock(mu_);
      ++forward_;
      while (!lru_.empty() && lru_.front().forward + kMaxAge < forward_) evict_oldest_locked(to_free);
    }
    for (void* q : to_free) c10::free_cpu(q);
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
      // A fork while another thread holds the lock would leave it locked in the child (a DataLoader worker).
      pthread_atfork([] { instance_->mu_.lock(); }, [] { instance_->mu_.unlock(); },
                     [] { instance_->mu_.unlock(); });
    });
    return instance_->installed_;
  }

 private:
  struct Kept {
    void* p;
    size_t n;
    uint64_t forward;  // the model forward under way (`next_forward`) when it was kept
  };

  void* take(size_t n) {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = free_.find(n);
    if (it == free_.end()) return nullptr;
    const auto kept = it->second.back();  // the most recently freed block of this size (warmest in cache)
    it->second.pop_back();
    if (it->second.empty()) free_.erase(it);
    void* p = kept->p;
    lru_.erase(kept);
    kept_bytes_ -= n;
    return p;
  }

  // Frees (into to_free, for after the lock) the least recently kept blocks until at most `bytes` stay kept: with
  // input sizes that change, blocks of sizes no longer asked for go first.
  void evict_locked(size_t bytes, std::vector<void*>& to_free) {
    while (kept_bytes_ > bytes) evict_oldest_locked(to_free);
  }

  void evict_oldest_locked(std::vector<void*>& to_free) {
    const Kept oldest = lru_.front();
    const auto same = free_.find(oldest.n);
    same->second.erase(same->second.begin());  // one size's blocks are kept in the order they were freed
    if (same->second.empty()) free_.erase(same);
    lru_.pop_front();
    kept_bytes_ -= oldest.n;
    size_of_.erase(oldest.p);
    to_free.push_back(oldest.p);
  }

  static inline ReusingAllocator* instance_ = nullptr;
  c10::Allocator* next_;
  std::mutex mu_;
  std::unordered_map<void*, size_t> size_of_;  // every block made here and not freed yet
  std::list<Kept> lru_;                         // the kept ones, least recently kept first
  std::unordered_map<size_t, std::vector<std::list<Kept>::iterator>> free_;  // the same, by size
  size_t kept_bytes_ = 0;
  uint64_t forward_ = 0;
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

void next_forward() {
  if (ReusingAllocator::instance() != nullptr) ReusingAllocator::instance()->next_forward();
}

void empty_cache() {
  if (ReusingAllocator::instance() != nullptr) ReusingAllocator::instance()->empty();
}

Stats stats() {
  if (ReusingAllocator::instance() == nullptr) return {0, kDefaultLimit, 0, false};
  return ReusingAllocator::instance()->stats();
}

}  // namespace resnet_ext::cpu_memory
