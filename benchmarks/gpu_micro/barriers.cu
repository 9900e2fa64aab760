// The per-step barrier of a persistent recurrent kernel, measured on the GPU at hand (issue 16's
// design question): how long one step's "every block has written its h slice, now read them"
// takes across all SMs with
//   - a kernel launch per step (what the step-wise path pays),
//   - cooperative groups' grid.sync() (the persistent forward today),
//   - a flag barrier: each block publishes its step number with a release store and waits only
//     for the flags it reads (all blocks, or a few neighbours), polling with acquire loads (each
//     also invalidates L1: CCTL.IVALL in the SASS) or with relaxed loads and one acquire fence,
//   - a thread-block cluster barrier (sm_90): cooperative groups' cluster.sync() (a GPU-scope
//     MEMBAR before arriving, in the SASS), alone and with a value written into the next block's
//     shared memory (distributed shared memory) before it; and the bare barrier.cluster with
//     relaxed arrival (no memory ordering: the latency floor).
// One block per SM, 256 threads, a few thousand steps per launch after a warm-up launch; prints
// one markdown table of microseconds per step.
// Then the whole exchange at the headline shape (H=768, B=16, 16-bit h: 48 blocks of 16 units, as
// the tensor-core forward tiles it): each block writes its units' h and reads all of h into
// shared memory, every value checked, by grid.sync(), by flags, and by tagged words (each 32-bit
// word carries a value and its step, written by one relaxed store, so a reader polls the data
// itself: no flag, no fence; NOTES entry 65).
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -o barriers barriers.cu && ./barriers [steps]
#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include "cuda_check.h"

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <string>

namespace cg = cooperative_groups;


constexpr int kThreads = 256;

__device__ __forceinline__ void store_release(unsigned* p, unsigned v) {
  asm volatile("st.release.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}

__device__ __forceinline__ unsigned load_acquire(const unsigned* p) {
  unsigned v;
  asm volatile("ld.acquire.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__device__ __forceinline__ unsigned load_relaxed(const unsigned* p) {
  unsigned v;
  asm volatile("ld.relaxed.gpu.global.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
  return v;
}

__global__ void empty_step() {}

__global__ void grid_sync_steps(int steps) {
  cg::grid_group grid = cg::this_grid();
  for (int s = 0; s < steps; ++s) grid.sync();
}

// Block b waits for the flags of blocks b+1 .. b+wait_for (mod the grid; wait_for = the grid's
// size: all of them, itself included), one thread a flag. flags start at 0. relaxed: poll with
// relaxed loads, then one acquire fence (fence.acq_rel) once the flag is seen.
__global__ void flag_steps(int steps, unsigned* flags, int wait_for, bool relaxed) {
  const int blocks = gridDim.x, b = blockIdx.x;
  for (int s = 1; s <= steps; ++s) {
    __syncthreads();  // the block's writes of this step are done
    if (threadIdx.x == 0) store_release(flags + b, static_cast<unsigned>(s));
    for (int k = threadIdx.x; k < wait_for; k += blockDim.x) {
      const unsigned* flag = flags + (b + 1 + k) % blocks;
      if (relaxed) {
        while (load_relaxed(flag) < static_cast<unsigned>(s)) {
        }
        asm volatile("fence.acq_rel.gpu;" ::: "memory");
      } else {
        while (load_acquire(flag) < static_cast<unsigned>(s)) {
        }
      }
    }
    __syncthreads();
  }
}

// The bare cluster barrier, relaxed arrival: no memory ordering, the barrier's own latency.
__global__ void cluster_relaxed_steps(int steps) {
  for (int s = 0; s < steps; ++s) {
    asm volatile("barrier.cluster.arrive.relaxed.aligned;\n\tbarrier.cluster.wait.aligned;" :::
                     "memory");
  }
}

__global__ void cluster_steps(int steps, unsigned* sink, bool exchange) {
  cg::cluster_group cluster = cg::this_cluster();
  __shared__ unsigned slot;
  if (threadIdx.x == 0) slot = 0;
  cluster.sync();
  const unsigned next = (cluster.block_rank() + 1) % cluster.num_blocks();
  unsigned* remote = cluster.map_shared_rank(&slot, next);
  for (int s = 1; s <= steps; ++s) {
    if (exchange && threadIdx.x == 0) *remote = static_cast<unsigned>(s);
    cluster.sync();
  }
  if (threadIdx.x == 0 && slot != static_cast<unsigned>(steps) && exchange) atomicAdd(sink, 1u);
}

// Microseconds per step of `launch` (which runs `steps` steps), after one warm-up call.
float per_step_us(const std::function<void()>& launch, int steps) {
  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  launch();
  CHECK(cudaDeviceSynchronize());
  CHECK(cudaEventRecord(start));
  launch();
  CHECK(cudaEventRecord(stop));
  CHECK(cudaEventSynchronize(stop));
  CHECK(cudaGetLastError());
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, start, stop));
  CHECK(cudaEventDestroy(start));
  CHECK(cudaEventDestroy(stop));
  return 1000.0f * ms / steps;
}

void row(const std::string& method, int blocks, float us) {
  std::printf("| %s | %d | %.3f |\n", method.c_str(), blocks, us);
}

// The exchange of one step's h at the headline shape. Block k owns units [16k, 16k+16) of every
// batch row (one value a thread) and writes them into ring slot s % kSlots; then every block
// reads the whole [kBatch, kHidden] slot into shared memory, checking each value. The values are
// bit patterns of the step, row and unit.
constexpr int kBatch = 16, kUnits = 16, kHidden = 768, kExchangeBlocks = kHidden / kUnits;
constexpr int kSlots = 4;  // (a block may run ahead of its readers, not by kSlots steps)
static_assert(kBatch * kUnits == kThreads, "a value a thread");
enum class Exchange { kGrid, kFlags, kTagged };

__device__ __forceinline__ unsigned expected_bits(int s, int row, int unit) {
  return static_cast<unsigned>(s * 31 + row * 7 + unit) & 0x3fffu;
}
__device__ __forceinline__ void store_relaxed(unsigned* p, unsigned v) {
  asm volatile("st.relaxed.gpu.global.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ uint4 load_relaxed(const uint4* p) {
  uint4 v;
  asm volatile("ld.relaxed.gpu.global.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}
__device__ __forceinline__ uint4 load_cg(const uint4* p) {
  uint4 v;
  asm volatile("ld.global.cg.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p)
               : "memory");
  return v;
}
// Whether all four tagged words of v carry `tag` in their low halves.
__device__ __forceinline__ bool tagged(uint4 v, unsigned tag) {
  return ((v.x ^ tag) | (v.y ^ tag) | (v.z ^ tag) | (v.w ^ tag)) % 0x10000u == 0;
}

// h: kSlots x [kBatch, kHidden] of 16-bit values (grid, flags) or of tagged 32-bit words, zeros.
// flags: one per block, zeros. wrong: counts the values read wrong.
template <Exchange kExchange>
__global__ void __launch_bounds__(kThreads) exchange_steps(int steps, void* h, unsigned* flags,
                                                           unsigned* wrong) {
  __shared__ __align__(16) unsigned short staged[kBatch * kHidden];
  const int tid = threadIdx.x, row = tid / kUnits, unit = blockIdx.x * kUnits + tid % kUnits;
  constexpr int kWordsPerVector = kExchange == Exchange::kTagged ? 4 : 8;
  constexpr int kVectors = kBatch * kHidden / kWordsPerVector / kThreads;  // a thread's
  unsigned misses = 0;
  for (int s = 0; s < steps; ++s) {
    const int slot = s % kSlots;
    const unsigned bits = expected_bits(s, row, unit);
    const unsigned tag = static_cast<unsigned>(s + 1) % 0x10000u;
    // Write this block's values, then wait as the exchange does.
    if constexpr (kExchange == Exchange::kTagged) {
      unsigned* words = static_cast<unsigned*>(h) + slot * kBatch * kHidden;
      store_relaxed(words + row * kHidden + unit, bits << 16 | tag);
    } else {
      unsigned short* values = static_cast<unsigned short*>(h) + slot * kBatch * kHidden;
      values[row * kHidden + unit] = static_cast<unsigned short>(bits);
      if constexpr (kExchange == Exchange::kGrid) {
        cg::this_grid().sync();
      } else {
        __syncthreads();
        if (tid == 0) store_release(flags + blockIdx.x, static_cast<unsigned>(s + 1));
        if (tid < kExchangeBlocks) {
          while (load_acquire(flags + tid) < static_cast<unsigned>(s + 1)) {
          }
        }
        __syncthreads();
      }
    }
    // Read the whole slot: every load first, then the checks (polling again where a tagged
    // vector is not yet this step's).
    const uint4* slot_vectors =
        reinterpret_cast<const uint4*>(static_cast<const char*>(h) +
                                       static_cast<size_t>(slot) * kBatch * kHidden *
                                           (kExchange == Exchange::kTagged ? 4 : 2));
    uint4 v[kVectors];
#pragma unroll
    for (int i = 0; i < kVectors; ++i) {
      const uint4* p = slot_vectors + tid + i * kThreads;
      v[i] = kExchange == Exchange::kTagged ? load_relaxed(p) : load_cg(p);
    }
#pragma unroll
    for (int i = 0; i < kVectors; ++i) {
      const int e = (tid + i * kThreads) * kWordsPerVector;  // the vector's first element
      const uint4* p = slot_vectors + tid + i * kThreads;
      unsigned short values[8];
      if constexpr (kExchange == Exchange::kTagged) {
        while (!tagged(v[i], tag)) v[i] = load_relaxed(p);
        const unsigned words[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
        for (int w = 0; w < 4; ++w) values[w] = static_cast<unsigned short>(words[w] >> 16);
      } else {
        const unsigned words[4] = {v[i].x, v[i].y, v[i].z, v[i].w};
        for (int w = 0; w < 4; ++w) {
          values[2 * w] = static_cast<unsigned short>(words[w]);
          values[2 * w + 1] = static_cast<unsigned short>(words[w] >> 16);
        }
      }
      for (int w = 0; w < kWordsPerVector; ++w) {
        const int r = (e + w) / kHidden, j = (e + w) % kHidden;
        misses += values[w] != expected_bits(s, r, j);
        staged[e + w] = values[w];
      }
    }
    __syncthreads();  // (shared memory read by the next step's products, in a real kernel)
  }
  if (misses != 0) atomicAdd(wrong, misses);
}

// Microseconds per step of the exchange, after checking that every value arrived right.
float exchange_us(Exchange exchange, int steps) {
  void* h = nullptr;
  unsigned *flags = nullptr, *wrong = nullptr;
  const size_t h_bytes = static_cast<size_t>(kSlots) * kBatch * kHidden * 4;
  CHECK(cudaMalloc(&h, h_bytes));
  CHECK(cudaMalloc(&flags, kExchangeBlocks * sizeof(unsigned)));
  CHECK(cudaMalloc(&wrong, sizeof(unsigned)));
  CHECK(cudaMemset(wrong, 0, sizeof(unsigned)));
  const void* kernel = exchange == Exchange::kGrid    ? reinterpret_cast<const void*>(
                                                         exchange_steps<Exchange::kGrid>)
                       : exchange == Exchange::kFlags ? reinterpret_cast<const void*>(
                                                            exchange_steps<Exchange::kFlags>)
                                                      : reinterpret_cast<const void*>(
                                                            exchange_steps<Exchange::kTagged>);
  const float us = per_step_us([&] {
    CHECK(cudaMemset(h, 0, h_bytes));
    CHECK(cudaMemset(flags, 0, kExchangeBlocks * sizeof(unsigned)));
    int n = steps;
    void* args[] = {&n, &h, &flags, &wrong};
    // Cooperative: every block resident at once, which spinning needs.
    CHECK(cudaLaunchCooperativeKernel(kernel, kExchangeBlocks, kThreads, args));
  }, steps);
  unsigned misses = 0;
  CHECK(cudaMemcpy(&misses, wrong, sizeof(unsigned), cudaMemcpyDeviceToHost));
  CHECK(cudaFree(h));
  CHECK(cudaFree(flags));
  CHECK(cudaFree(wrong));
  if (misses != 0) {
    std::printf("\nexchange %d: %u values read wrong\n", static_cast<int>(exchange), misses);
    std::exit(1);
  }
  return us;
}

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 5000;
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  const int sms = prop.multiProcessorCount;
  std::printf("%s, %d SMs, %d steps a launch, %d threads a block\n\n", prop.name, sms, steps,
              kThreads);
  std::printf("| barrier | blocks | us per step |\n|---|---|---|\n");

  row("kernel launch per step", sms, per_step_us([&] {
        for (int s = 0; s < steps; ++s) empty_step<<<sms, kThreads>>>();
      }, steps));

  row("grid.sync()", sms, per_step_us([&] {
        int n = steps;
        void* args[] = {&n};
        CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(grid_sync_steps), sms, kThreads,
                                          args));
      }, steps));

  unsigned* flags = nullptr;
  CHECK(cudaMalloc(&flags, sms * sizeof(unsigned)));
  for (bool relaxed : {false, true}) {
    for (int wait_for : {sms, 8, 2}) {
      const std::string name =
          (wait_for == sms ? "flags, every block's" : "flags, " + std::to_string(wait_for) +
                                                          " blocks'") +
          (relaxed ? ", relaxed polls + one fence" : ", acquire polls");
      row(name, sms, per_step_us([&] {
            CHECK(cudaMemset(flags, 0, sms * sizeof(unsigned)));
            int n = steps, w = wait_for;
            bool r = relaxed;
            void* args[] = {&n, &flags, &w, &r};
            // Cooperative: every block resident at once, which spinning on flags needs.
            CHECK(cudaLaunchCooperativeKernel(reinterpret_cast<void*>(flag_steps), sms,
                                              kThreads, args));
          }, steps));
    }
  }
  CHECK(cudaFree(flags));

  unsigned* sink = nullptr;
  CHECK(cudaMalloc(&sink, sizeof(unsigned)));
  CHECK(cudaMemset(sink, 0, sizeof(unsigned)));
  CHECK(cudaFuncSetAttribute(cluster_steps, cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  CHECK(cudaFuncSetAttribute(cluster_relaxed_steps,
                             cudaFuncAttributeNonPortableClusterSizeAllowed, 1));
  for (int size : {2, 4, 8, 16}) {
    for (int variant : {0, 1, 2}) {  // cluster.sync(); with a DSMEM write; relaxed arrival
      const bool exchange = variant == 1;
      cudaLaunchConfig_t config = {};
      config.gridDim = dim3(sms / size * size);
      config.blockDim = dim3(kThreads);
      cudaLaunchAttribute attribute;
      attribute.id = cudaLaunchAttributeClusterDimension;
      attribute.val.clusterDim.x = size;
      attribute.val.clusterDim.y = 1;
      attribute.val.clusterDim.z = 1;
      config.attrs = &attribute;
      config.numAttrs = 1;
      int clusters = 0;
      if (cudaOccupancyMaxActiveClusters(&clusters, cluster_steps, &config) != cudaSuccess ||
          clusters == 0) {
        cudaGetLastError();
        std::printf("| clusters of %d: not launchable here | - | - |\n", size);
        break;
      }
      const std::string clusters_of = "clusters of " + std::to_string(size);
      const std::string name = variant == 2 ? "barrier.cluster relaxed, " + clusters_of
                               : "cluster.sync(), " + clusters_of +
                                     (exchange ? ", with a DSMEM write" : "");
      row(name, static_cast<int>(config.gridDim.x), per_step_us([&] {
            if (variant == 2) {
              CHECK(cudaLaunchKernelEx(&config, cluster_relaxed_steps, steps));
            } else {
              CHECK(cudaLaunchKernelEx(&config, cluster_steps, steps, sink, exchange));
            }
          }, steps));
    }
  }
  unsigned lost = 0;
  CHECK(cudaMemcpy(&lost, sink, sizeof(unsigned), cudaMemcpyDeviceToHost));
  CHECK(cudaFree(sink));
  if (lost != 0) {
    std::printf("\nDSMEM check failed in %u blocks\n", lost);
    return 1;
  }

  std::printf("\nThe exchange of h at H=%d B=%d (16-bit values, %d blocks of %d units): each "
              "block writes its units and reads all of h, checked\n\n",
              kHidden, kBatch, kExchangeBlocks, kUnits);
  std::printf("| exchange | blocks | us per step |\n|---|---|---|\n");
  row("grid.sync(), then the loads", kExchangeBlocks, exchange_us(Exchange::kGrid, steps));
  row("flags (release, acquire polls), then the loads", kExchangeBlocks,
      exchange_us(Exchange::kFlags, steps));
  row("tagged words (relaxed stores, polled loads)", kExchangeBlocks,
      exchange_us(Exchange::kTagged, steps));
  return 0;
}
