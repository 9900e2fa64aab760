// The CPU kernel variant's choice by feature set (isa_choice.h). No torch headers: it is pure.
#include "isa_choice.h"

#include <algorithm>
#include <iterator>

namespace fused_rnn::cpu {
namespace {

// What each variant's source is compiled with (-m flags in setup.py and CMakeLists.txt).
std::vector<std::string> required_features(const std::string& variant) {
  if (variant == "AVX512") {
    return {"avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"};
  }
  if (variant == "AVX2") return {"avx2", "fma", "f16c"};
  return {};
}

}  // namespace

std::vector<std::string> this_cpu_features() {
  std::vector<std::string> features;
#if defined(__x86_64__) || defined(__i386__)
  // GCC's and Clang's runtime check includes the OS's support for the wider registers (XCR0).
  __builtin_cpu_init();
  const auto add_if = [&features](bool present, const char* name) {
    if (present) features.emplace_back(name);
  };
  add_if(__builtin_cpu_supports("avx2"), "avx2");
  add_if(__builtin_cpu_supports("fma"), "fma");
  add_if(__builtin_cpu_supports("f16c"), "f16c");
  add_if(__builtin_cpu_supports("avx512f"), "avx512f");
  add_if(__builtin_cpu_supports("avx512bw"), "avx512bw");
  add_if(__builtin_cpu_supports("avx512vl"), "avx512vl");
  add_if(__builtin_cpu_supports("avx512dq"), "avx512dq");
#endif
  return features;
}

std::vector<std::string> missing_features(const std::string& variant,
                                          const std::vector<std::string>& features) {
  std::vector<std::string> missing;
  for (const std::string& needed : required_features(variant)) {
    if (std::find(features.begin(), features.end(), needed) == features.end()) {
      missing.push_back(needed);
    }
  }
  return missing;
}

const char* variant_for(const std::string& requested, const std::vector<std::string>& features) {
  const auto* first = std::begin(kVariantsBestFirst);
  const auto* last = std::end(kVariantsBestFirst);
  const auto* candidate = std::find(first, last, requested);
  if (candidate == last) return "DEFAULT";
  for (; candidate != last; ++candidate) {
    if (missing_features(*candidate, features).empty()) return *candidate;
  }
  return "DEFAULT";
}

}  // namespace fused_rnn::cpu
