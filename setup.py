"""Builds resnet_ext._C: the op registrations (C++) and, when a CUDA toolkit and a CUDA build of torch are
present, the fused CUDA kernels (CUTLASS). A GPU is not needed to build the CUDA code.

Environment:
  RESNET_EXT_CUDA=0|1     force the CUDA kernels off / on (default: on when nvcc and a CUDA torch are found)
  RESNET_EXT_EXPERIMENTAL=1  also build csrc/experimental/ (kernels no GPU run has verified yet: the sm_90a conv
                          and GEMM kernels, the NHWC max pool, the opt-in training-BN kernels, the fused training
                          decomposition's cuDNN graphs, which need nvidia-cudnn-frontend) and the test hooks
                          (poisoned outputs, failing launches, kernel selection on fake registries); what
                          benchmarks/gpu_check.sh and CI's experimental build use. Not in the default wheel.
  TORCH_CUDA_ARCH_LIST    archs to build for (default "8.0;9.0a")
  CUDA_HOME               the CUDA toolkit (default: found from /usr/local/cuda or nvcc's real location)
  CUTLASS_PATH            a CUTLASS checkout (default: the headers of the nvidia-cutlass wheel)
  CUDNN_FRONTEND_PATH     a cudnn-frontend checkout (experimental build; default: the nvidia-cudnn-frontend wheel)
  RESNET_EXT_PTXAS_VERBOSE=1  print ptxas register/spill reports for every kernel
  MAX_JOBS                parallel compile jobs (torch's ninja build reads it)
"""
import glob
import importlib.util
import os
import re
import shutil
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).resolve().parent
DEFAULT_ARCHS = "8.0;9.0a"


def _is_toolkit(path):
    return path and (Path(path) / "bin" / "nvcc").exists() and (Path(path) / "include" / "cuda_runtime.h").exists()


def find_cuda_home():
    """torch guesses CUDA_HOME from the first nvcc on PATH; a wrapper script in /usr/local/bin makes that guess
    /usr/local, which holds no toolkit. Look where a toolkit really is before torch is imported."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(os.path.realpath(nvcc))
        candidates.append(str(real.parent.parent))
        # A wrapper script (`exec /usr/local/cuda-X/bin/nvcc "$@"`) names the real compiler inside.
        try:
            for word in real.read_text(errors="ignore").split():
                word = word.strip("'\"")
                if word.endswith("/bin/nvcc"):
                    candidates.append(str(Path(word).parent.parent))
        except OSError:
            pass
    candidates += sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for c in candidates:
        if _is_toolkit(c):
            return str(Path(c).resolve())
    return None


cuda_home = find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home

import torch  # noqa: E402  (after CUDA_HOME is set: cpp_extension reads it at import)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402


def want_cuda():
    forced = os.environ.get("RESNET_EXT_CUDA")
    have = cuda_home is not None and torch.version.cuda is not None
    if forced == "0":
        return False
    if forced == "1":
        if not have:
            sys.exit(f"RESNET_EXT_CUDA=1 but no usable CUDA build: CUDA_HOME={cuda_home}, "
                     f"torch.version.cuda={torch.version.cuda}")
        return True
    return have


def torch_cuda_include_dirs():
    """ATen's CUDA headers include cusparse.h / cublas_v2.h, which the pip CUDA wheels put under
    site-packages/nvidia/cu13/include rather than in the toolkit."""
    dirs = []
    try:
        import nvidia  # namespace package of the nvidia-* wheels torch depends on
        for base in nvidia.__path__:
            dirs += sorted(glob.glob(os.path.join(base, "cu*", "include")))
            dirs += sorted(glob.glob(os.path.join(base, "*", "include")))
    except ImportError:
        pass
    return [d for d in dict.fromkeys(dirs) if os.path.isdir(d)]


def cutlass_include_dirs():
    roots = []
    if os.environ.get("CUTLASS_PATH"):
        roots.append(Path(os.environ["CUTLASS_PATH"]))
    try:
        import importlib.util
        spec = importlib.util.find_spec("cutlass_library")
        if spec and spec.submodule_search_locations:
            roots.append(Path(list(spec.submodule_search_locations)[0]) / "source")
    except (ImportError, ValueError):
        pass
    for root in roots:
        if (root / "include" / "cutlass" / "cutlass.h").exists():
            return [str(root / "include"), str(root / "tools" / "util" / "include")]
    sys.exit("CUTLASS headers not found: pip install nvidia-cutlass, or set CUTLASS_PATH to a CUTLASS checkout "
             "(or build without CUDA kernels: RESNET_EXT_CUDA=0)")


def cudnn_frontend_build():
    """(include dirs, link args) for csrc/experimental/cudnn_graphs.cpp: cudnn-frontend's headers from the
    `nvidia-cudnn-frontend` wheel (or CUDNN_FRONTEND_PATH, a checkout), linked against the libcudnn.so.9 and libnvrtc
    of torch's own nvidia-* wheels (cuDNN's headers come from there too, see torch_cuda_include_dirs)."""
    roots = [Path(os.environ["CUDNN_FRONTEND_PATH"])] if os.environ.get("CUDNN_FRONTEND_PATH") else []
    spec = importlib.util.find_spec("cudnn")  # the wheel's Python package sits next to its include/
    if spec and spec.origin:
        roots.append(Path(spec.origin).parent.parent)
    include = next((str(r / "include") for r in roots if (r / "include" / "cudnn_frontend.h").exists()), None)
    if include is None:
        sys.exit("cudnn-frontend headers not found (the experimental build's fused training graphs need them): pip "
                 "install nvidia-cudnn-frontend, or set CUDNN_FRONTEND_PATH to a cudnn-frontend checkout")
    nvrtc = "libnvrtc.so.1[0-9]"
    return [include], (wheel_library("cudnn/lib/libcudnn.so.9")
                       + wheel_library(f"c*/lib/{nvrtc}", os.path.join(cuda_home or "", "lib64", nvrtc)))


def wheel_library(pattern, fallback=None):
    """Link args for the library that torch's nvidia-* wheels hold at nvidia/PATTERN (else at the FALLBACK glob),
    with an rpath to it: torch need not have loaded it before us (torch 2.11 loads libnvrtc lazily, and
    cudnn-frontend's headers call it)."""
    found = []
    try:
        import nvidia
        for base in nvidia.__path__:
            found += sorted(glob.glob(os.path.join(base, pattern)))
    except ImportError:
        pass
    found += sorted(glob.glob(fallback)) if fallback else []
    if not found:
        sys.exit(f"nvidia/{pattern} not found in the nvidia-* wheels that torch depends on" +
                 (f", nor {fallback}" if fallback else ""))
    where = os.path.dirname(found[0])
    return [f"-L{where}", f"-l:{os.path.basename(found[0])}", f"-Wl,-rpath,{where}"]


def source_build_id():
    """The build id of csrc/, by the function the loader checks it with (resnet_ext/_C_loader.py, loaded under a
    name that skips its import of the extension)."""
    spec = importlib.util.spec_from_file_location("resnet_ext_build_id_only", ROOT / "resnet_ext" / "_C_loader.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_build_id(str(ROOT))


def cuda_images():
    """The images nvcc will put into the binary, e.g. "sm_80;sm_90a" (the dispatcher runs a kernel only on a
    device some image of it loads on): read off torch's -gencode flags for TORCH_CUDA_ARCH_LIST."""
    try:
        from torch.utils.cpp_extension import _get_cuda_arch_flags
        flags = " ".join(_get_cuda_arch_flags())
    except Exception:  # a torch without the helper: the arch list itself ("8.0;9.0a;8.6+PTX")
        return os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS)
    images = []
    for codes in re.findall(r",code=\[?([a-z0-9_,]+)\]?", flags):
        images += [c for c in codes.split(",") if c]
    return ";".join(dict.fromkeys(images))


def want_experimental():
    return os.environ.get("RESNET_EXT_EXPERIMENTAL", "0") == "1"


def build_extension():
    with_cuda = want_cuda()
    experimental = want_experimental()
    archs = os.environ.get("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCHS) if with_cuda else ""
    if with_cuda:
        os.environ["TORCH_CUDA_ARCH_LIST"] = archs
    # csrc/ by role: ops/ (op registration, CPU code), dispatch/ (kernel choice), kernels/ (CUDA, verified),
    # experimental/ (unverified, only with RESNET_EXT_EXPERIMENTAL=1), module.cpp.
    def sources(pattern):
        return sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob(pattern)
                      if experimental or "experimental" not in p.relative_to(ROOT).parts)

    cpp_sources, cu_sources = sources("*.cpp"), sources("*.cu")
    macros = [
        ("RESNET_EXT_TORCH_VERSION", f'"{torch.__version__}"'),
        ("RESNET_EXT_CUDA_ARCHS", f'"{archs}"'),
        ("RESNET_EXT_CUDA_IMAGES", f'"{cuda_images() if with_cuda else ""}"'),
    ]
    if experimental:
        macros.append(("RESNET_EXT_EXPERIMENTAL", "1"))
    cxx_flags = ["-O3"]  # torch picks the C++ standard it needs (C++20 for 2.14, C++17 before)
    link_flags = []
    if sys.platform.startswith("linux") and torch.backends.openmp.is_available():
        # at::parallel_for is inline `#pragma omp parallel` (ATen's OpenMP backend): without -fopenmp it runs on
        # one thread. The library resolves to the libgomp.so.1 torch has already loaded: one thread pool.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    include_dirs = [str(ROOT / "csrc")]
    if not with_cuda:
        return CppExtension("resnet_ext._C", cpp_sources, define_macros=macros, include_dirs=include_dirs,
                            extra_compile_args={"cxx": cxx_flags}, extra_link_args=link_flags)
    macros.append(("RESNET_EXT_WITH_CUDA", "1"))
    nvcc_flags = [
        "-O3", "--expt-relaxed-constexpr", "--expt-extended-lambda", "-lineinfo",
        "-DNDEBUG", "--threads", os.environ.get("NVCC_THREADS", "1"),
        # torch adds -D__CUDA_NO_HALF_OPERATORS__ etc.; CUTLASS brings its own half types, so undo them.
        "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
        "-U__CUDA_NO_HALF2_OPERATORS__",
    ]
    if os.environ.get("RESNET_EXT_PTXAS_VERBOSE") == "1":
        nvcc_flags.append("-Xptxas=-v")
    include_dirs += cutlass_include_dirs() + torch_cuda_include_dirs()
    if experimental:
        frontend_include, cudnn_link = cudnn_frontend_build()
        include_dirs += frontend_include
        link_flags += cudnn_link
    return CUDAExtension("resnet_ext._C", cpp_sources + cu_sources, define_macros=macros,
                         include_dirs=include_dirs, extra_link_args=link_flags,
                         extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags})


class BuildExt(BuildExtension.with_options(use_ninja=True)):
    """Writes the sources' build id into a header in the build directory (only module.cpp includes it, so a
    changed id recompiles one file, not every kernel)."""

    def build_extensions(self):
        generated = Path(self.build_temp).resolve() / "generated"
        generated.mkdir(parents=True, exist_ok=True)
        header = generated / "resnet_ext_build_id.h"
        text = f'#define RESNET_EXT_BUILD_ID "{source_build_id()}"\n'
        if not header.exists() or header.read_text() != text:
            header.write_text(text)
        for ext in self.extensions:
            ext.include_dirs.append(str(generated))
        super().build_extensions()


setup(
    ext_modules=[build_extension()],
    cmdclass={"build_ext": BuildExt},
)
