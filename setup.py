"""Build script for fastep.

fastep ships one compiled extension, ``fastep._C``:

* the C++ CPU kernels in ``csrc/*.cpp`` are always built;
* the CUDA kernels in ``csrc/*.cu`` are built when a CUDA toolkit is found (``CUDA_HOME`` or
  ``nvcc`` on PATH) and torch is a CUDA build, or when ``FORCE_CUDA=1``.

Installing must never fail on a CPU-only machine, so an automatic (not forced) CUDA build that
fails falls back to a CPU-only build, and ``FASTEP_NO_EXT=1`` skips the extension entirely;
``fastep info`` always tells what was built.

pip's default isolated build cannot see the user's torch (pyproject.toml deliberately does not
list torch as a build requirement: pip would download a torch into the throw-away build
environment, multi-GB and not necessarily the version fastep then runs with, and an extension
built for another torch does not load).  There the wheel ships the sources instead
(``fastep/csrc``) and fastep compiles ``fastep._C`` on first use against the running torch
(``fastep/_build.py``).  ``pip install --no-build-isolation .`` builds it here, at install.  ``FORCE_CUDA=1`` turns every CUDA build failure
into an install failure, which is what CI uses to prove the CUDA sources compile.

The Triton kernels live in the top-level ``kernels/`` folder and install as ``fastep.kernels``.
"""
import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "0").strip().lower() in ("1", "true", "yes", "on")


def _find_cuda_home(cpp_extension):
    """A CUDA toolkit root that really holds the headers and libcudart, or None.

    torch guesses CUDA_HOME from the location of ``nvcc``; where nvcc is a link in
    /usr/local/bin, that guess is /usr/local, which has neither include/cuda_runtime_api.h nor
    lib64/libcudart: the .cu files compile and the link fails.  So verify the guess and otherwise
    look at the usual install locations, and tell torch what we found.
    """
    def is_toolkit(root):
        return bool(root) and os.path.isfile(os.path.join(root, "include", "cuda_runtime_api.h"))

    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), cpp_extension.CUDA_HOME]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    candidates += ["/usr/local/cuda"] + sorted(glob.glob("/usr/local/cuda-*"), reverse=True)
    for root in candidates:
        if is_toolkit(root):
            root = os.path.realpath(root)
            if cpp_extension.CUDA_HOME != root:
                cpp_extension.CUDA_HOME = root  # read by CUDAExtension / BuildExtension
                os.environ["CUDA_HOME"] = root
            return root
    return None


def _extensions():
    if _env_flag("FASTEP_NO_EXT"):
        print("fastep: FASTEP_NO_EXT=1, not building fastep._C", file=sys.stderr)
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:  # pragma: no cover - torch is a hard requirement at build time
        print("fastep: torch is not importable at build time (pip's isolated build); fastep._C "
              "will be built on first use against the installed torch (or install with "
              "`pip install --no-build-isolation .` to build it now).", file=sys.stderr)
        return [], {}

    cpp_sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu_sources = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    force_cuda = _env_flag("FORCE_CUDA")
    cuda_home = _find_cuda_home(cpp_extension)
    with_cuda = force_cuda or (cuda_home is not None and torch.version.cuda is not None)

    openmp = ["-fopenmp"] if sys.platform.startswith("linux") else []
    # No -std flag: torch picks the standard its headers need (C++17 up to 2.9, C++20 after).
    cxx_flags = ["-O3"] + openmp
    define_macros = []
    kwargs = dict(extra_link_args=openmp)
    if with_cuda and cu_sources:
        # The .cu files include no torch headers (plain CUDA + a C ABI), so they compile in
        # seconds; default to Hopper unless the user chose their own architectures.
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "9.0")
        define_macros.append(("FASTEP_WITH_CUDA", None))
        ext = cpp_extension.CUDAExtension(
            "fastep._C",
            cpp_sources + cu_sources,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", "--use_fast_math",
                                                           "-lineinfo"]},
            **kwargs,
        )
    else:
        ext = cpp_extension.CppExtension(
            "fastep._C", cpp_sources, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags}, **kwargs,
        )
    ext._fastep_cuda = bool(with_cuda and cu_sources)  # read by the fault-tolerant build_ext

    base = cpp_extension.BuildExtension.with_options(use_ninja=True)

    class TolerantBuildExtension(base):
        """Build fastep._C; an automatic CUDA build that fails falls back to the CPU kernels."""

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
                return
            except Exception as err:  # noqa: BLE001 - we re-raise unless the fallback applies
                if force_cuda or not getattr(extension, "_fastep_cuda", False):
                    raise
                print(f"fastep: CUDA build of fastep._C failed ({err}); building the CPU "
                      "kernels only. Set FORCE_CUDA=1 to make this an error.", file=sys.stderr)
            # Turn the same (already finalized) Extension into the CPU-only build.
            cuda_libs = {"cudart", "c10_cuda", "torch_cuda"}
            extension.sources = list(cpp_sources)
            extension.define_macros = [m for m in extension.define_macros if m[0] != "FASTEP_WITH_CUDA"]
            extension.extra_compile_args = {"cxx": list(cxx_flags)}
            extension.libraries = [lib for lib in extension.libraries if lib not in cuda_libs]
            extension.library_dirs = [d for d in extension.library_dirs
                                      if not (cuda_home and os.path.realpath(d).startswith(cuda_home))]
            extension._fastep_cuda = False
            super().build_extension(extension)

    return [ext], {"build_ext": TolerantBuildExtension}


def _version():
    with open(os.path.join(ROOT, "fastep", "version.py")) as f:
        scope = {}
        exec(f.read(), scope)
        return scope["__version__"]


ext_modules, cmdclass = _extensions()

setup(
    name="fastep",
    version=_version(),
    description="Fast StEP: style-based encoder pre-training for multi-modal image-to-image "
                "translation, with fused Gram / triplet-mining / perceptual-loss kernels",
    long_description=open(os.path.join(ROOT, "README.md")).read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.9",
    packages=find_packages(include=["fastep", "fastep.*"]) + ["fastep.kernels", "fastep.csrc"],
    package_dir={"fastep.kernels": "kernels", "fastep.csrc": "csrc"},
    # the C++/CUDA sources travel with the package: fastep builds _C from them on first use
    # where the install could not (fastep/_build.py)
    package_data={"fastep.csrc": ["*.cpp", "*.cu", "*.h", "*.cuh"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    install_requires=[
        "torch>=2.4",
        "torchvision>=0.19",
        "ninja",  # torch.utils.cpp_extension's builds (at install and on first use)
        "lpips>=0.1.4",  # LPIPS's linear heads (fastep eval, fastep.losses.LPIPS)
        "numpy",
        "pillow",
        "tqdm",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark>=4", "scikit-image",
                 "matplotlib", "tensorboard"],
        "bench": ["pytest-benchmark>=4", "matplotlib"],
        "eval": ["matplotlib", "scikit-learn"],
    },
    entry_points={"console_scripts": ["fastep=fastep.cli:main"]},
    zip_safe=False,
)
