// A CPU emulation of what the CUDA kernels ask of a GPU, so that their own source (csrc/cuda's
// .cuh files: the persistent kernels, the cell and layer-normalized step kernels) runs under the
// CPU tests: every CUDA thread a fiber (ucontext), every block an OS thread running its fibers
// until each waits, every block of a launch resident at once (as a cooperative launch's are);
// grids and blocks of one or two dimensions. It gives the CUDA keywords and built-ins the kernels
// use (static __shared__ arrays a copy per block), and device_primitives.cuh's functions with the
// same names and meanings: __syncthreads, named barriers and __syncwarp as counted barriers,
// __shfl_xor_sync through the warp's exchange; grid.sync() and the cluster barrier over all
// threads of the grid or cluster; mma.sync as the warp's collective product, its fragments placed
// as the PTX ISA documents them (written here apart from csrc/mma_fragments.h, which the kernels
// index with, so that a wrong map there shows); loads and stores with memory-model semantics as
// atomics; distributed shared memory as the peer block's buffer.
// What it checks: results (the tests compare them), barriers that never complete (no thread
// progresses for kStallSeconds: an error naming where each block's threads wait), writes past the
// end of a block's shared memory (a guard after it), peer addresses outside it. What it cannot:
// the GPU's memory ordering (the emulation is sequentially consistent), timing.
#pragma once

#define FUSED_RNN_EMULATED_DEVICE 1

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <ucontext.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

// The CUDA language's keywords, for the host compiler.
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

struct uint2 {
  uint32_t x, y;
};
struct uint4 {
  uint32_t x, y, z, w;
};
struct EmulatedIndex {
  unsigned x, y, z;
};
// A launch's grid or block shape (z unused by the kernels: 1).
struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1) : x(x_), y(y_) {}
};

// Device integer min and max (unqualified in device code).
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }

namespace emu {

constexpr int kMaxWarps = 32;
constexpr size_t kStackBytes = 64 << 10;
constexpr size_t kGuardBytes = 256;
constexpr unsigned char kGuardValue = 0xA5;
constexpr double kStallSeconds = 20.0;

struct Launch;
struct Block;

// One CUDA thread.
struct Fiber {
  ucontext_t context;
  std::unique_ptr<char[]> stack;
  unsigned index = 0;
  bool done = false;
  const char* waiting_at = "not started";
  int64_t grid_syncs = 0;       // grid.sync()s this thread has arrived at
  int64_t cluster_arrives = 0;  // cluster barrier arrivals
};

// A counted barrier of one block (bar.sync id, or a warp's).
struct Barrier {
  int arrived = 0;
  int64_t generation = 0;
};

// A warp's operands of the mma or shuffle it is in.
struct WarpExchange {
  uint32_t a[32][4];
  uint32_t b[32][2];
  double shuffled[32];
  Barrier barrier;
};

struct Block {
  Launch* launch = nullptr;
  unsigned index = 0;
  std::unique_ptr<unsigned char[]> shared;  // shared_bytes, then kGuardBytes of guard
  std::vector<Fiber> fibers;
  Fiber* running = nullptr;
  ucontext_t scheduler;
  Barrier barriers[16];
  WarpExchange warps[kMaxWarps];
};

struct Launch {
  dim3 grid, block;
  unsigned blocks = 0, threads = 0, cluster = 1;  // grid.x * grid.y, block.x * block.y
  size_t shared_bytes = 0;
  std::vector<std::unique_ptr<Block>> all;
  std::atomic<int64_t> grid_arrived{0};
  std::unique_ptr<std::atomic<int64_t>[]> cluster_arrived;
  std::atomic<int64_t> progress{0};  // barriers passed and threads ended, grid-wide
  std::atomic<bool> failed{false};
  std::string failure;  // (written once, by the thread that set failed)
};

inline thread_local Block* t_block = nullptr;

inline Block& block() { return *t_block; }
inline Fiber& fiber() { return *t_block->running; }

// Stops the launch with an error (raised by launch() once every block has stopped).
inline void fail(const std::string& why) {
  bool expected = false;
  if (block().launch->failed.compare_exchange_strong(expected, true)) {
    block().launch->failure = why;
  }
  swapcontext(&fiber().context, &block().scheduler);  // never resumed
}

// Back to the block's scheduler; resumed on its next round.
inline void yield(const char* waiting_at) {
  fiber().waiting_at = waiting_at;
  swapcontext(&fiber().context, &block().scheduler);
  if (block().launch->failed.load()) swapcontext(&fiber().context, &block().scheduler);
}

// Arrives at a block barrier of `count` threads and waits for the rest.
inline void arrive_and_wait(Barrier& barrier, int count, const char* name) {
  const int64_t generation = barrier.generation;
  if (++barrier.arrived == count) {
    barrier.arrived = 0;
    ++barrier.generation;
    block().launch->progress.fetch_add(1);
    return;
  }
  while (barrier.generation == generation) yield(name);
}

inline unsigned thread_index() { return fiber().index; }

// A k-th arrival at a barrier of `count` threads counted in `arrived` waits for k * count.
inline void wait_for_count(std::atomic<int64_t>& arrived, int64_t want, const char* name) {
  while (arrived.load() < want) yield(name);
  block().launch->progress.fetch_add(1);
}

inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// mma.sync: each lane gives its fragments, the warp meets, each lane computes its accumulators
// from everyone's, the warp meets again (before the exchange is reused). element(u): a 16-bit
// input's value; kK: 16 (16-bit inputs, pairs per register) or 8 (TF32, one per register).
template <int kK, typename Element>
inline void warp_mma(float (&d)[4], const uint32_t* a, const uint32_t* b, const Element& element) {
  const unsigned lane = thread_index() % 32, warp = thread_index() / 32;
  WarpExchange& x = block().warps[warp];
  for (int r = 0; r < 4; ++r) x.a[lane][r] = a[r];
  for (int r = 0; r < 2; ++r) x.b[lane][r] = b[r];
  arrive_and_wait(x.barrier, 32, "mma.sync (operands)");
  // The PTX ISA's fragments (lane = 4 * group + t): A 16 x kK, B kK x 8, C 16 x 8.
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    if constexpr (kK == 16) {
      // A: registers (row, columns) = (g, 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..); the
      // lower half holds the lower column. B: (rows 2t.., column g), (rows 2t+8.., column g).
      for (int r = 0; r < 4; ++r) {
        const int row = g + 8 * (r % 2), col = 2 * t + 8 * (r / 2);
        A[row][col] = element(x.a[l][r] & 0xffffu);
        A[row][col + 1] = element(x.a[l][r] >> 16);
      }
      for (int r = 0; r < 2; ++r) {
        B[2 * t + 8 * r][g] = element(x.b[l][r] & 0xffffu);
        B[2 * t + 8 * r + 1][g] = element(x.b[l][r] >> 16);
      }
    } else {
      // A: (g, t), (g+8, t), (g, t+4), (g+8, t+4); B: (t, g), (t+4, g).
      A[g][t] = bits_to_float(x.a[l][0]);
      A[g + 8][t] = bits_to_float(x.a[l][1]);
      A[g][t + 4] = bits_to_float(x.a[l][2]);
      A[g + 8][t + 4] = bits_to_float(x.a[l][3]);
      B[t][g] = bits_to_float(x.b[l][0]);
      B[t + 4][g] = bits_to_float(x.b[l][1]);
    }
  }
  arrive_and_wait(x.barrier, 32, "mma.sync (results)");
  // C: (g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1).
  const int g = static_cast<int>(lane) / 4, t = static_cast<int>(lane) % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i / 2), col = 2 * t + i % 2;
    float sum = d[i];
    for (int k = 0; k < kK; ++k) sum = std::fma(A[row][k], B[k][col], sum);
    d[i] = sum;
  }
}

// W_hh's TF32 operands (A) must come rounded (cvt.rna.tf32 leaves the low 13 bits zero): the
// instruction would drop those bits, rounding toward zero unlike cuBLAS. B's low bits are dropped
// unchecked: B's columns past the step's rows hold whatever shared memory held (their products
// are not read).
inline uint32_t tf32_a_checked(uint32_t u) {
  if ((u & 0x1fffu) != 0) fail("an mma.sync TF32 A operand (W_hh) has its low 13 bits set");
  return u;
}

struct Trampoline {
  void (*run)(void*);
  void* kernel_call;
};
inline void fiber_main(unsigned low, unsigned high) {
  const auto* t = reinterpret_cast<const Trampoline*>(
      (static_cast<uintptr_t>(high) << 32) | static_cast<uintptr_t>(low));
  t->run(t->kernel_call);
  fiber().done = true;
  fiber().waiting_at = "ended";
  block().launch->progress.fetch_add(1);
  swapcontext(&fiber().context, &block().scheduler);
}

// Runs one block: its fibers in turns until each has ended (or the launch failed).
inline void run_block(Block& b, const Trampoline& trampoline) {
  t_block = &b;
  Launch& launch = *b.launch;
  b.fibers.resize(launch.threads);
  const auto address = reinterpret_cast<uintptr_t>(&trampoline);
  for (unsigned t = 0; t < launch.threads; ++t) {
    Fiber& f = b.fibers[t];
    f.index = t;
    f.stack.reset(new char[kStackBytes]);
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack.get();
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = nullptr;
    makecontext(&f.context, reinterpret_cast<void (*)()>(fiber_main), 2,
                static_cast<unsigned>(address & 0xffffffffu), static_cast<unsigned>(address >> 32));
  }
  auto last_change = std::chrono::steady_clock::now();
  int64_t last_progress = -1;
  for (;;) {
    bool all_done = true;
    for (Fiber& f : b.fibers) {
      if (f.done) continue;
      all_done = false;
      b.running = &f;
      swapcontext(&b.scheduler, &f.context);
      if (launch.failed.load()) return;
    }
    if (all_done) return;
    const int64_t progress = launch.progress.load();
    const auto now = std::chrono::steady_clock::now();
    if (progress != last_progress) {
      last_progress = progress;
      last_change = now;
    } else if (std::chrono::duration<double>(now - last_change).count() > kStallSeconds) {
      std::string where = "no thread of the launch progressed for " +
                          std::to_string(static_cast<int>(kStallSeconds)) + " s; block " +
                          std::to_string(b.index) + "'s threads wait at:";
      for (const Fiber& f : b.fibers) {
        if (f.index % 32 == 0) {
          where += " warp " + std::to_string(f.index / 32) + ": " + f.waiting_at + ";";
        }
      }
      bool expected = false;
      if (launch.failed.compare_exchange_strong(expected, true)) launch.failure = where;
      return;
    }
    std::this_thread::yield();  // (blocks waiting for each other: let the others run)
  }
}

// Runs kernel(args...) on a grid of blocks (x, then y) of block threads (x, then y),
// `shared_bytes` of dynamic shared memory each, in clusters of `cluster` blocks; throws
// std::runtime_error where the emulation found the kernel at fault.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, unsigned cluster,
            size_t shared_bytes, const Args&... args) {
  const unsigned blocks = grid.x * grid.y, threads = block.x * block.y;
  if (threads == 0 || threads % 32 != 0 || threads / 32 > kMaxWarps || blocks == 0 ||
      cluster == 0 || blocks % cluster != 0 || grid.z != 1 || block.z != 1) {
    throw std::runtime_error("emulated launch: bad grid");
  }
  Launch launch;
  launch.grid = grid;
  launch.block = block;
  launch.blocks = blocks;
  launch.threads = threads;
  launch.cluster = cluster;
  launch.shared_bytes = shared_bytes;
  launch.cluster_arrived.reset(new std::atomic<int64_t>[blocks / cluster]);
  for (unsigned c = 0; c < blocks / cluster; ++c) launch.cluster_arrived[c] = 0;
  for (unsigned i = 0; i < blocks; ++i) {
    auto b = std::make_unique<Block>();
    b->launch = &launch;
    b->index = i;
    // (Shared memory starts as NaNs of every float type, so that a value read before it is
    // written shows in the results.)
    b->shared.reset(new unsigned char[shared_bytes + kGuardBytes]);
    std::memset(b->shared.get(), 0xff, shared_bytes);
    std::memset(b->shared.get() + shared_bytes, kGuardValue, kGuardBytes);
    launch.all.push_back(std::move(b));
  }
  const auto call = [&] { kernel(args...); };
  using Call = decltype(call);
  const Trampoline trampoline{[](void* c) { (*static_cast<const Call*>(c))(); },
                              const_cast<void*>(static_cast<const void*>(&call))};
  std::vector<std::thread> workers;
  for (unsigned i = 0; i < blocks; ++i) {
    workers.emplace_back([&, i] { run_block(*launch.all[i], trampoline); });
  }
  for (std::thread& w : workers) w.join();
  if (launch.failed.load()) throw std::runtime_error("emulated kernel: " + launch.failure);
  for (unsigned i = 0; i < blocks; ++i) {
    const unsigned char* guard = launch.all[i]->shared.get() + shared_bytes;
    for (size_t k = 0; k < kGuardBytes; ++k) {
      if (guard[k] != kGuardValue) {
        throw std::runtime_error("emulated kernel: block " + std::to_string(i) +
                                 " wrote past its " + std::to_string(shared_bytes) +
                                 " bytes of shared memory (at byte " +
                                 std::to_string(shared_bytes + k) + ")");
      }
    }
  }
}

}  // namespace emu

// (Threads and blocks are numbered x first, as on the GPU.)
#define threadIdx                                                      \
  (EmulatedIndex{::emu::thread_index() % ::emu::block().launch->block.x, \
                 ::emu::thread_index() / ::emu::block().launch->block.x, 0})
#define blockIdx                                                      \
  (EmulatedIndex{::emu::block().index % ::emu::block().launch->grid.x, \
                 ::emu::block().index / ::emu::block().launch->grid.x, 0})
#define blockDim (::emu::block().launch->block)
#define gridDim (::emu::block().launch->grid)
// Static shared memory: one copy per block, that is per OS thread running it (each launch's
// threads are new, so it starts zeroed, not as NaNs as the dynamic shared memory does).
#define __shared__ static thread_local

inline void __syncthreads() {
  emu::arrive_and_wait(emu::block().barriers[0], static_cast<int>(emu::block().launch->threads),
                       "__syncthreads");
}
inline void __syncwarp() {
  emu::arrive_and_wait(emu::block().warps[emu::thread_index() / 32].barrier, 32, "__syncwarp");
}
// Every lane gives v and takes lane ^ lane_mask's (the whole warp, as the kernels call it).
template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  if (mask != 0xffffffffu) emu::fail("__shfl_xor_sync: the emulation takes whole warps only");
  const unsigned lane = emu::thread_index() % 32;
  emu::WarpExchange& x = emu::block().warps[emu::thread_index() / 32];
  x.shuffled[lane] = static_cast<double>(v);
  emu::arrive_and_wait(x.barrier, 32, "__shfl_xor_sync (values)");
  const T theirs = static_cast<T>(x.shuffled[lane ^ static_cast<unsigned>(lane_mask)]);
  emu::arrive_and_wait(x.barrier, 32, "__shfl_xor_sync (taken)");
  return theirs;
}
inline void __trap() { emu::fail("__trap"); }
inline float __uint_as_float(uint32_t u) { return emu::bits_to_float(u); }
// Byte i of the result is byte (s >> 4i) & 7 of the eight bytes of x (0-3) and y (4-7).
inline uint32_t __byte_perm(uint32_t x, uint32_t y, uint32_t s) {
  const uint64_t bytes = static_cast<uint64_t>(y) << 32 | x;
  uint32_t r = 0;
  for (int i = 0; i < 4; ++i) r |= static_cast<uint32_t>(bytes >> (8 * ((s >> (4 * i)) & 7)) & 0xff) << (8 * i);
  return r;
}

// device_primitives.cuh's functions.
namespace fused_rnn::cuda {

inline unsigned char* dynamic_shared_memory() { return emu::block().shared.get(); }

template <typename T>
inline T* launder(T* p) {
  asm volatile("" : "+r"(p)::"memory");
  return p;
}
inline uint32_t load_word(const uint32_t* p) {
  return __atomic_load_n(p, __ATOMIC_RELAXED);
}
inline uint32_t load_l2(const uint32_t* p) { return load_word(p); }
inline uint4 load_l2(const uint4* p) {
  const auto* w = reinterpret_cast<const uint32_t*>(p);
  return {load_word(w), load_word(w + 1), load_word(w + 2), load_word(w + 3)};
}
inline void store_relaxed(uint32_t* p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELAXED); }
// (A poll: the other threads run before it returns.)
inline uint4 load_relaxed(const uint4* p) {
  emu::yield("a poll of tagged words");
  return load_l2(p);
}
inline void publish_steps(unsigned* flag, unsigned steps) {
  __atomic_store_n(flag, steps, __ATOMIC_RELEASE);
}
inline unsigned published_steps(const unsigned* flag) {
  emu::yield("a poll of a flag");
  return __atomic_load_n(flag, __ATOMIC_ACQUIRE);
}
inline void grid_sync() {
  emu::Fiber& f = emu::fiber();
  emu::Launch& launch = *emu::block().launch;
  launch.grid_arrived.fetch_add(1);
  emu::wait_for_count(launch.grid_arrived,
                      ++f.grid_syncs * static_cast<int64_t>(launch.blocks) * launch.threads,
                      "grid.sync()");
}
inline void cluster_arrive() {
  emu::Launch& launch = *emu::block().launch;
  launch.cluster_arrived[emu::block().index / launch.cluster].fetch_add(1);
  ++emu::fiber().cluster_arrives;
}
inline void cluster_wait() {
  emu::Launch& launch = *emu::block().launch;
  emu::wait_for_count(launch.cluster_arrived[emu::block().index / launch.cluster],
                      emu::fiber().cluster_arrives * static_cast<int64_t>(launch.cluster) *
                          launch.threads,
                      "the cluster barrier");
}
template <typename T>
inline const T* cluster_peer(const T* p, unsigned rank) {
  emu::Launch& launch = *emu::block().launch;
  const auto* base = emu::block().shared.get();
  const auto* at = reinterpret_cast<const unsigned char*>(p);
  if (rank >= launch.cluster || at < base || at >= base + launch.shared_bytes) {
    emu::fail("cluster_peer: rank or address outside the cluster's shared memory");
  }
  const unsigned peer = emu::block().index / launch.cluster * launch.cluster + rank;
  return reinterpret_cast<const T*>(launch.all[peer]->shared.get() + (at - base));
}
inline void named_barrier(int id, int threads) {
  if (id < 1 || id > 15 || threads % 32 != 0 || threads <= 0 ||
      threads > static_cast<int>(emu::block().launch->threads)) {
    emu::fail("bar.sync: bad barrier id or thread count");
  }
  emu::arrive_and_wait(emu::block().barriers[id], threads, "a named barrier");
}

inline void mma_bf16_m16n8k16(float (&d)[4], const uint32_t* a, const uint32_t* b) {
  emu::warp_mma<16>(d, a, b, [](uint32_t u) { return emu::bits_to_float(u << 16); });
}
inline void mma_f16_m16n8k16(float (&d)[4], const uint32_t* a, const uint32_t* b) {
  emu::warp_mma<16>(d, a, b, [](uint32_t u) {
    return static_cast<float>(c10::Half(static_cast<uint16_t>(u), c10::Half::from_bits()));
  });
}
inline void mma_tf32_m16n8k8(float (&d)[4], const uint32_t* a, const uint32_t* b) {
  uint32_t checked_a[4], truncated_b[2];
  for (int r = 0; r < 4; ++r) checked_a[r] = emu::tf32_a_checked(a[r]);
  for (int r = 0; r < 2; ++r) truncated_b[r] = b[r] & 0xffffe000u;
  emu::warp_mma<8>(d, checked_a, truncated_b, [](uint32_t) { return 0.0f; });
}
// cvt.rna.tf32.f32: to nearest, ties away from zero, on the 13 low bits (NaN stays NaN).
inline uint32_t to_tf32(float x) {
  const uint32_t u = emu::float_to_bits(x);
  if ((u & 0x7f800000u) == 0x7f800000u) return (u & 0xffffe000u) | ((u & 0x7fffffu) ? 0x400000u : 0u);
  return (u + 0x1000u) & 0xffffe000u;
}

}  // namespace fused_rnn::cuda
