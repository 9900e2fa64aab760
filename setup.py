"""Builds fused_rnn._C: the op library (CPU, plus CUDA when enabled) and its small pybind11 module.

The CUDA kernels are built when torch sees a GPU, or when FUSED_RNN_FORCE_CUDA=1 asks for them on a
GPU-less machine (a compile-and-link check); an installed toolkit alone never switches them on.
FUSED_RNN_SKIP_CUDA=1 builds the CPU library even where a GPU is visible. TORCH_CUDA_ARCH_LIST is
respected; without it the targets are sm_80 and sm_90, plus PTX for newer GPUs. NVCC_THREADS sets
nvcc's parallel compilation threads (default 2); FUSED_RNN_PTXAS_VERBOSE=1 prints each kernel's
registers, shared memory and spills. FUSED_RNN_SANITIZE=1 builds the C++ code with AddressSanitizer
and UndefinedBehaviorSanitizer (for CI's sanitizer step: run it with libasan preloaded).
"""

import os
import platform
import subprocess
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent
VERSION = "0.1.0"
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"
# CPU pointwise kernels built once per x86 instruction set, each with its own flags (ATen picks
# among them at run time); the portable variant is an ordinary source of the extension.
ISA_SOURCES = {
    "csrc/cpu/pointwise_avx2.cpp": ["-mavx2", "-mfma", "-mf16c"],
    "csrc/cpu/pointwise_avx512.cpp": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
                                      "-mfma", "-mf16c"],
}
X86 = platform.machine().lower() in ("x86_64", "amd64")


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _want_cuda() -> bool:
    if _flag("FUSED_RNN_SKIP_CUDA"):
        return False
    return _flag("FUSED_RNN_FORCE_CUDA") or torch.cuda.is_available()


def _shared_cxx_runtime() -> list[str]:
    """The shared libstdc++, named on the link line ahead of the compiler's implicit -lstdc++.

    torch and the interpreter use the shared C++ runtime; a second, static copy linked into the
    extension (seen on the H200 machine, where the link took libstdc++.a) keeps its own locale
    facets, and formatting a number in an error message then crashes. Named first, the shared
    library supplies every symbol and the static archive is never used. Empty where the compiler
    does not know the file (e.g. libc++ toolchains).
    """
    try:
        path = subprocess.run([os.environ.get("CXX", "c++"), "-print-file-name=libstdc++.so.6"],
                              capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return []
    return [path] if os.path.isabs(path) else []


def _sources(pattern: str) -> list[str]:
    return sorted(str(p.relative_to(ROOT)) for p in ROOT.glob(pattern))


def _extension():
    with_cuda = _want_cuda()
    # -Wno-psabi: GCC's note that Vectorized arguments' ABI changed in GCC 4.6 is not actionable.
    cxx = ["-O3", "-std=c++20", "-Wno-psabi"]
    # at::parallel_for is a header template: it only runs on ATen's OpenMP threads where the
    # extension itself is compiled and linked with OpenMP; without it, it runs serially.
    openmp = ["-fopenmp"]
    link = openmp + _shared_cxx_runtime()
    if _flag("FUSED_RNN_SANITIZE"):
        sanitize = ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined",
                    "-fno-omit-frame-pointer", "-g"]
        cxx += sanitize
        link += sanitize
    macros = [
        ("FUSED_RNN_VERSION", f'"{VERSION}"'),
        ("FUSED_RNN_TORCH_VERSION", f'"{torch.__version__}"'),
    ]
    sources = ["csrc/fused_rnn.cpp", "csrc/cell_common.cpp", "csrc/layer_common.cpp",
               "csrc/layernorm_cell_ops.cpp", "csrc/autograd.cpp", "csrc/autocast.cpp", "csrc/composite.cpp",
               "csrc/python_module.cpp"]
    sources += [s for s in _sources("csrc/cpu/*.cpp") if s not in ISA_SOURCES]
    if X86:
        macros.append(("FUSED_RNN_CPU_X86_VARIANTS", None))
    if not with_cuda:
        return CppExtension("fused_rnn._C", sources, define_macros=macros,
                            extra_compile_args={"cxx": cxx + openmp}, extra_link_args=link)

    archs = os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
    macros += [("FUSED_RNN_WITH_CUDA", None), ("FUSED_RNN_CUDA_ARCHS", f'"{archs}"')]
    nvcc = ["-O3", "-std=c++20", "-lineinfo", "--threads", os.environ.get("NVCC_THREADS", "2")]
    if _flag("FUSED_RNN_PTXAS_VERBOSE"):
        nvcc.append("-Xptxas=-v")
    return CUDAExtension("fused_rnn._C", sources + _sources("csrc/cuda/*.cu"), define_macros=macros,
                         extra_compile_args={"cxx": cxx + openmp, "nvcc": nvcc},
                         extra_link_args=link)


class BuildWithIsaVariants(BuildExtension):
    """Compiles each ISA_SOURCES file with its own -m flags, then builds the extension with them.

    setuptools gives all sources of an extension the same flags, so these objects are compiled
    first, through the same (ninja) compiler, and linked in as extra objects.
    """

    def build_extension(self, ext):
        if X86:
            cxx = ext.extra_compile_args["cxx"]
            for source, isa_flags in ISA_SOURCES.items():
                ext.extra_objects += self.compiler.compile(
                    [source], output_dir=self.build_temp, macros=ext.define_macros,
                    include_dirs=ext.include_dirs,
                    extra_postargs={"cxx": cxx + isa_flags, "nvcc": []})
        super().build_extension(ext)


setup(
    name="fused_rnn",
    version=VERSION,
    packages=["fused_rnn"],
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildWithIsaVariants},
)
