// The CPU engine's memory reuse (cpu_memory.cpp): a thread-local scope in which large tensor allocations reuse
// blocks kept from earlier forwards, and the limit on the bytes kept.
#pragma once

#include <cstddef>

namespace resnet_ext::cpu_memory {

constexpr size_t kDefaultLimit = size_t(1) << 30;

struct Stats {
  size_t kept_bytes;  // free blocks kept for reuse
  size_t limit;       // at most this many bytes kept
  size_t blocks;      // blocks made by the scope and not freed (kept or in use)
  bool installed;     // false where another CPU allocator of higher priority is installed: nothing is reused
};

// Opens (on) or closes the scope on this thread; returns whether it was open.
bool scope(bool on);
// A model forward starts (the engine calls it as it opens the scope for one): kept blocks not reused within the
// last few forwards are freed.
void next_forward();
void set_limit(size_t bytes);
void empty_cache();
Stats stats();

}  // namespace resnet_ext::cpu_memory
