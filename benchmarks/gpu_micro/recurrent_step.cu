// One recurrent step's product on tensor cores with W_hh held in registers (issue 16's design
// question): the LSTM's gates = h @ W_hh^T at B = 16, H = 768 (W_hh [3072, 768] bf16), as a
// persistent kernel would run it every step, without the barrier (barriers.cu times those).
// Each warp keeps a 16-row, 384-column slice of W_hh as mma.sync m16n8k16 A fragments in
// registers for the whole run (96 registers a thread); a block of four warps covers 32 rows and
// both halves of K; 96 blocks cover the 3072 rows. Per step every block stages h (16 x 768 bf16,
// 24 KB, from L2) in shared memory, its warps run 24 k-tiles x 2 batch tiles of mma.sync (float32
// accumulation), the two K halves are summed through shared memory and the step's gates written
// out. Checked against a host product; prints the microseconds per step.
//
//   nvcc -O3 -std=c++17 -arch=sm_90a -o recurrent_step recurrent_step.cu && ./recurrent_step
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "../../csrc/mma_fragments.h"
#include "cuda_check.h"

#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>


constexpr int kBatch = 16, kHidden = 768, kRows = 4 * kHidden;  // B, H (= K), 4H
constexpr int kHalfK = kHidden / 2, kKTiles = kHalfK / 16;       // a warp's K slice: 24 tiles
constexpr int kRowsPerBlock = 32, kBlocks = kRows / kRowsPerBlock, kThreads = 128;
constexpr int kPitch = kHidden + 8;  // h's rows in shared memory, padded against bank conflicts

// The fragment maps of mma.sync.m16n8k16: the extension's own, which tests/test_persistent.py
// checks cover each tile once.
using namespace fused_rnn::mma;

__device__ __forceinline__ uint32_t pair_at(const __nv_bfloat16* p) {
  return *reinterpret_cast<const uint32_t*>(p);
}

__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
      "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// w [4H, H] and h [B, H] row-major; gates [4H, B].
__global__ void __launch_bounds__(kThreads) recurrent_steps(const __nv_bfloat16* __restrict__ w,
                                                            const __nv_bfloat16* __restrict__ h,
                                                            float* __restrict__ gates,
                                                            int steps) {
  __shared__ __align__(16) __nv_bfloat16 s_h[kBatch][kPitch];
  __shared__ float s_half[2][16][kBatch];  // the second K half's sums, per row tile
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const int tile = warp & 1, half = warp >> 1;
  const int row0 = blockIdx.x * kRowsPerBlock + 16 * tile, k_base = half * kHalfK;

  uint32_t a[kKTiles][4];  // this warp's W_hh slice, for every step
#pragma unroll
  for (int kt = 0; kt < kKTiles; ++kt) {
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      a[kt][r] = pair_at(w + (row0 + a_row(lane, r)) * kHidden + k_base + 16 * kt + a_col(lane, r));
    }
  }

  for (int s = 0; s < steps; ++s) {
    __syncthreads();  // the last step's readers of s_h and s_half are done
    for (int e = threadIdx.x; e < kBatch * kHidden / 8; e += kThreads) {
      const int n = e / (kHidden / 8), k = 8 * (e % (kHidden / 8));
      *reinterpret_cast<uint4*>(&s_h[n][k]) = *reinterpret_cast<const uint4*>(h + n * kHidden + k);
    }
    __syncthreads();
    float acc[2][4] = {};
#pragma unroll
    for (int kt = 0; kt < kKTiles; ++kt) {
      const int k = k_base + 16 * kt;
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
        const __nv_bfloat16* column = &s_h[8 * nt + b_col(lane)][k];
        mma_bf16(acc[nt], a[kt], pair_at(column + b_row(lane, 0)), pair_at(column + b_row(lane, 1)));
      }
    }
    if (half == 1) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) s_half[tile][c_row(lane, i)][8 * nt + c_col(lane, i)] = acc[nt][i];
      }
    }
    __syncthreads();
    if (half == 0) {
#pragma unroll
      for (int nt = 0; nt < 2; ++nt) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int row = c_row(lane, i), n = 8 * nt + c_col(lane, i);
          gates[(row0 + row) * kBatch + n] = acc[nt][i] + s_half[tile][row][n];
        }
      }
    }
  }
}

int main(int argc, char** argv) {
  const int steps = argc > 1 ? std::atoi(argv[1]) : 2000;
  std::vector<__nv_bfloat16> w(kRows * kHidden), h(kBatch * kHidden);
  std::vector<float> wf(w.size()), hf(h.size());
  uint64_t state = 12345;
  const auto uniform = [&] {  // in [-1, 1)
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    return static_cast<float>(static_cast<int64_t>(state >> 11) % 2000000) / 1e6f - 1.0f;
  };
  for (size_t i = 0; i < w.size(); ++i) {
    w[i] = __float2bfloat16(uniform() / std::sqrt(float(kHidden)));
    wf[i] = __bfloat162float(w[i]);
  }
  for (size_t i = 0; i < h.size(); ++i) {
    h[i] = __float2bfloat16(uniform());
    hf[i] = __bfloat162float(h[i]);
  }
  __nv_bfloat16 *d_w, *d_h;
  float* d_gates;
  CHECK(cudaMalloc(&d_w, w.size() * sizeof(w[0])));
  CHECK(cudaMalloc(&d_h, h.size() * sizeof(h[0])));
  CHECK(cudaMalloc(&d_gates, kRows * kBatch * sizeof(float)));
  CHECK(cudaMemcpy(d_w, w.data(), w.size() * sizeof(w[0]), cudaMemcpyHostToDevice));
  CHECK(cudaMemcpy(d_h, h.data(), h.size() * sizeof(h[0]), cudaMemcpyHostToDevice));

  recurrent_steps<<<kBlocks, kThreads>>>(d_w, d_h, d_gates, 1);
  CHECK(cudaGetLastError());
  std::vector<float> gates(kRows * kBatch);
  CHECK(cudaMemcpy(gates.data(), d_gates, gates.size() * sizeof(float), cudaMemcpyDeviceToHost));
  double worst = 0;
  for (int r = 0; r < kRows; ++r) {
    for (int n = 0; n < kBatch; ++n) {
      double want = 0;
      for (int k = 0; k < kHidden; ++k) want += double(wf[r * kHidden + k]) * hf[n * kHidden + k];
      worst = std::fmax(worst, std::fabs(gates[r * kBatch + n] - want));
    }
  }

  cudaEvent_t start, stop;
  CHECK(cudaEventCreate(&start));
  CHECK(cudaEventCreate(&stop));
  recurrent_steps<<<kBlocks, kThreads>>>(d_w, d_h, d_gates, steps);
  CHECK(cudaEventRecord(start));
  recurrent_steps<<<kBlocks, kThreads>>>(d_w, d_h, d_gates, steps);
  CHECK(cudaEventRecord(stop));
  CHECK(cudaEventSynchronize(stop));
  CHECK(cudaGetLastError());
  float ms = 0;
  CHECK(cudaEventElapsedTime(&ms, start, stop));
  std::printf("| tensor-core step, W_hh in registers | B=%d H=%d bf16 | %d blocks x %d threads | "
              "%.3f us per step | max abs error %.2e |\n",
              kBatch, kHidden, kBlocks, kThreads, 1000.0f * ms / steps, worst);
  return worst < 1e-3 ? 0 : 1;
}
