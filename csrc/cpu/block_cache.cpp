// The block cache of block_cache.h: a c10::Allocator whose deleter keeps the freed block.
#include "block_cache.h"

#include <ATen/EmptyTensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/Allocator.h>
#include <c10/core/impl/alloc_cpu.h>
#include <c10/util/accumulate.h>

#include <mutex>
#include <vector>

namespace fused_rnn {
namespace cpu {
namespace {

// Smaller blocks come from glibc's heap, which keeps them mapped.
constexpr size_t kMinCachedBytes = size_t{256} << 10;
// Enough for the saved values (cell states among them) and gate gradients of a layer-normalized
// LSTM layer at T=50 B=64 H=512 in both directions (2 x 145 MB), the weight gradients beside them.
constexpr size_t kMaxHeldBytes = size_t{512} << 20;

struct Block {
  void* data;
  size_t bytes;
  bool reused;  // handed out again from the cache, not fresh from the system
};

class BlockCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t bytes) override {
    void* data = take(bytes);
    const bool reused = data != nullptr;
    if (!reused) data = c10::alloc_cpu(bytes);
    return {data, new Block{data, bytes, reused}, &give_back, c10::Device(c10::kCPU)};
  }

  void copy_data(void* dest, const void* src, size_t count) const override {
    default_copy_data(dest, src, count);
  }

  size_t held_bytes() {
    std::lock_guard<std::mutex> lock(mutex_);
    return held_bytes_;
  }

  // Holds `freed` (where given), then returns the oldest held blocks to the system until at
  // most `limit` bytes are held: one lock per freed block.
  void trim(size_t limit, const Block* freed = nullptr) {
    std::vector<Block> evicted;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (freed != nullptr) {
        held_.push_back(*freed);
        held_bytes_ += freed->bytes;
      }
      auto oldest = held_.begin();
      while (held_bytes_ > limit) {
        held_bytes_ -= oldest->bytes;
        evicted.push_back(*oldest++);
      }
      held_.erase(held_.begin(), oldest);
    }
    for (const Block& b : evicted) c10::free_cpu(b.data);
  }

 private:
  // The most recently freed block of exactly `bytes`, or null.
  void* take(size_t bytes) {
    std::lock_guard<std::mutex> lock(mutex_);
    for (auto b = held_.rbegin(); b != held_.rend(); ++b) {
      if (b->bytes != bytes) continue;
      void* data = b->data;
      held_bytes_ -= bytes;
      held_.erase(std::next(b).base());
      return data;
    }
    return nullptr;
  }

  static void give_back(void* context);

  std::mutex mutex_;
  std::vector<Block> held_;  // oldest first
  size_t held_bytes_ = 0;
};

// Never destroyed: tensors may be freed during the process's exit, after static destructors.
BlockCache& cache() {
  static BlockCache* const instance = new BlockCache;
  return *instance;
}

void BlockCache::give_back(void* context) {
  const Block block = *static_cast<Block*>(context);
  delete static_cast<Block*>(context);
  // One past the limit would only push out every held block before itself.
  if (block.bytes > kMaxHeldBytes) {
    c10::free_cpu(block.data);
    return;
  }
  cache().trim(kMaxHeldBytes, &block);
}

}  // namespace

at::Tensor empty_from_block_cache(at::IntArrayRef sizes, const at::TensorOptions& options,
                                  bool* reused) {
  const size_t bytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  if (reused != nullptr) *reused = false;
  if (bytes < kMinCachedBytes) return at::empty(sizes, options);
  at::Tensor t = at::detail::empty_generic(sizes, &cache(),
                                           c10::DispatchKeySet(c10::DispatchKey::CPU),
                                           options.dtype().toScalarType(),
                                           c10::MemoryFormat::Contiguous);
  if (reused != nullptr) {
    *reused = static_cast<const Block*>(t.storage().data_ptr().get_context())->reused;
  }
  return t;
}

int64_t block_cache_held_bytes() { return static_cast<int64_t>(cache().held_bytes()); }

void empty_block_cache() { cache().trim(0); }

}  // namespace cpu
}  // namespace fused_rnn
