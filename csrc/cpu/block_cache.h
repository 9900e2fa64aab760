// A cache of freed CPU blocks for the fresh buffers of every call: the outputs of the backward's
// products, above all the weight gradients (a cell backward makes two new [G*H, I] tensors every
// call), and the layers' saved values and gate gradients (LinearKernels::empty_buffer, tens to
// hundreds of MB). glibc hands blocks of these sizes back to the system and maps them afresh, so
// their pages fault in again, about 1.5 us a page on this VM: more than a small cell's products
// take (NOTES entry 37), a third of a layer-normalized LSTM's training forward (entry 59). Freed
// blocks are held, up to kMaxHeldBytes in all, for the next buffer of the same size.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace fused_rnn {
namespace cpu {

// An uninitialised contiguous CPU tensor; from 256 KB, its storage is a held block of the same
// byte size where there is one, and goes back to the cache when freed. `reused`, where given,
// says whether it is a held block (its pages mapped already).
at::Tensor empty_from_block_cache(at::IntArrayRef sizes, const at::TensorOptions& options,
                                  bool* reused = nullptr);

// The bytes the cache holds (freed blocks, not in use), and returning them all to the system.
int64_t block_cache_held_bytes();
void empty_block_cache();

}  // namespace cpu
}  // namespace fused_rnn
