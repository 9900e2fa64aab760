// Zoneout's training weights drawn on the CPU (the schema's bernoulli_weights, fused_rnn.cpp):
// torch's own draws (mt19937, about 2 ns a number) took a quarter of an LSTM's training call at
// T=200 B=32 H=256 (NOTES entry 51). Elements 2k and 2k+1 are 1 where 24 bits of SplitMix64's
// k-th output for seed (its top 24, and the 24 below them) fall below keep * 2^24, else 0: a
// uniform draw of torch.rand's 24-bit resolution compared with keep, independent per element;
// seed comes from torch's CPU generator, so torch.manual_seed reproduces the draws.
#include "../cell_ops.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>

namespace fused_rnn::cpu {
namespace {

// SplitMix64 (Steele, Lea and Flood 2014): the e-th output of the generator seeded with `seed`.
inline uint64_t splitmix64(uint64_t seed, uint64_t e) {
  uint64_t z = seed + (e + 1) * 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

// Pairs of elements a task of the parallel loop: about a hundred microseconds of draws.
constexpr int64_t kDrawGrain = 1 << 15;

Tensor bernoulli_weights_cpu(const Tensor& seed, at::IntArrayRef size, double keep,
                             at::ScalarType dtype) {
  TORCH_CHECK(seed.numel() == 1 && seed.scalar_type() == at::kLong && seed.device().is_cpu(),
              "fused_rnn.bernoulli_weights: expected seed to be one int64 on the CPU, got ",
              seed.numel(), " ", seed.scalar_type(), " on ", seed.device());
  TORCH_CHECK(keep >= 0.0 && keep <= 1.0,
              "fused_rnn.bernoulli_weights: expected keep in [0, 1], got ", keep);
  Tensor out = at::empty(size, at::TensorOptions(dtype));
  const auto base = static_cast<uint64_t>(seed.item<int64_t>());
  // keep * 2^24 rounded up would draw 1 with probability above keep; down, below it by at most
  // 2^-24 (torch.rand(...) < keep's own resolution).
  const auto threshold = static_cast<uint64_t>(std::floor(keep * double(1 << 24)));
  FUSED_RNN_DISPATCH_FLOATING_TYPES(dtype, "bernoulli_weights_cpu", [&] {
    scalar_t* p = out.data_ptr<scalar_t>();
    const int64_t n = out.numel();
    const auto draw = [&](uint64_t bits) { return scalar_t(bits < threshold ? 1.0f : 0.0f); };
    at::parallel_for(0, (n + 1) / 2, kDrawGrain, [&](int64_t begin, int64_t end) {
      for (int64_t k = begin; k < end; ++k) {
        const uint64_t z = splitmix64(base, k);
        p[2 * k] = draw(z >> 40);
        if (2 * k + 1 < n) p[2 * k + 1] = draw((z >> 16) & 0xFFFFFF);
      }
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fused_rnn, CPU, m) { m.impl("bernoulli_weights", &bernoulli_weights_cpu); }

}  // namespace fused_rnn::cpu
