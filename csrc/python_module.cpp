// The Python extension module fused_rnn._C. Importing it loads the op library (the ops themselves
// go through the torch dispatcher); its one function reports how the extension was built.
#include "cpu/pointwise.h"

#include <pybind11/pybind11.h>

#ifndef FUSED_RNN_VERSION
#error "setup.py defines FUSED_RNN_VERSION"
#endif
#ifndef FUSED_RNN_TORCH_VERSION
#error "setup.py defines FUSED_RNN_TORCH_VERSION"
#endif
#ifndef FUSED_RNN_CUDA_ARCHS
#define FUSED_RNN_CUDA_ARCHS ""
#endif

namespace py = pybind11;

PYBIND11_MODULE(_C, m) {
  m.def(
      "build_info",
      [] {
        py::dict info;
        info["version"] = FUSED_RNN_VERSION;
        info["torch_version"] = FUSED_RNN_TORCH_VERSION;
#ifdef FUSED_RNN_WITH_CUDA
        info["cuda"] = true;
#else
        info["cuda"] = false;
#endif
        info["cuda_archs"] = FUSED_RNN_CUDA_ARCHS;
        info["cpu_isas"] = fused_rnn::cpu::pointwise_isas_built();
        info["cpu_isa"] = fused_rnn::cpu::pointwise_kernels().isa;
        return info;
      },
      "How this extension was built: its version, the torch it was built against, whether the "
      "CUDA kernels are compiled in and for which architectures, the instruction sets its CPU "
      "kernels are built for and the one chosen for this CPU.");
}
