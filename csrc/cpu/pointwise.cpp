// The variant of pointwise.h's kernels for this CPU: ATen's choice, bounded by what this CPU can
// run (isa_choice.h).
#include "isa_choice.h"
#include "pointwise.h"

#include <ATen/Version.h>
#include <c10/util/Exception.h>
#include <c10/util/StringUtil.h>

#include <string>
#include <vector>

namespace fused_rnn::cpu {

const PointwiseKernels& pointwise_kernels() {
  // ATen's choice ("AVX512", "AVX2", "DEFAULT", ...), bounded by what this CPU can run
  // (isa_choice.h); read once, as ATen does.
  static const PointwiseKernels& chosen = []() -> const PointwiseKernels& {
#ifdef FUSED_RNN_CPU_X86_VARIANTS
    const std::string requested = at::get_cpu_capability();
    const std::vector<std::string> features = this_cpu_features();
    const std::string variant = variant_for(requested, features);
    const std::vector<std::string> missing = missing_features(requested, features);
    if (!missing.empty()) {
      TORCH_WARN("fused_rnn: ATen's CPU capability is ", requested,
                 " (as ATEN_CPU_CAPABILITY may set it), but this CPU lacks ",
                 c10::Join(", ", missing), "; fused_rnn runs its ", variant, " kernels instead");
    }
    if (variant == "AVX512") return AVX512::kKernels;
    if (variant == "AVX2") return AVX2::kKernels;
#endif
    return DEFAULT::kKernels;
  }();
  return chosen;
}

const char* pointwise_isas_built() {
#ifdef FUSED_RNN_CPU_X86_VARIANTS
  return "DEFAULT;AVX2;AVX512";
#else
  return "DEFAULT";
#endif
}
}  // namespace fused_rnn::cpu
