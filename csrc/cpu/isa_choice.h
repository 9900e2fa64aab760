// Which instruction-set variant of the CPU kernels runs. ATen's choice (which ATEN_CPU_CAPABILITY
// overrides without asking the CPU) is the request; the CPU's own features bound it, so that an
// override never selects instructions this CPU lacks (that would end the process with SIGILL).
// The choice is a function of a feature set, so tests can ask it about CPUs they do not run on.
#pragma once

#include <string>
#include <vector>

namespace fused_rnn::cpu {

// The variants, best first, as ATen names its capabilities.
inline constexpr const char* kVariantsBestFirst[] = {"AVX512", "AVX2", "DEFAULT"};

// The x86 features the variants need that this CPU (and its OS) has, by their /proc/cpuinfo
// names; empty off x86.
std::vector<std::string> this_cpu_features();

// The features `variant` is compiled to use (setup.py's ISA_SOURCES flags) that `features` lacks.
std::vector<std::string> missing_features(const std::string& variant,
                                          const std::vector<std::string>& features);

// The best variant no better than `requested` whose every feature is in `features`; a request
// that names no variant of ours gets DEFAULT.
const char* variant_for(const std::string& requested, const std::vector<std::string>& features);

}  // namespace fused_rnn::cpu
