"""Build script for videogpt_fast.

``kernels/`` (the Triton kernels) is installed as ``videogpt_fast.kernels`` through
``package_dir``, which works for regular and editable (PEP 660) installs alike.

The CUDA extension ``videogpt_fast._C`` (``csrc/``) is built only when torch is importable in the
build environment, it is a CUDA build and a CUDA toolkit is found, or when forced with
``VIDEOGPT_FAST_BUILD_CUDA=1``; ``VIDEOGPT_FAST_BUILD_CUDA=0`` turns it off. Without it every op
still runs through Triton or PyTorch.
"""
import glob
import os

from setuptools import setup


def _cuda_extension():
    flag = os.environ.get("VIDEOGPT_FAST_BUILD_CUDA", "auto").lower()
    if flag in ("0", "false", "off", "no"):
        return [], {}
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*.cu")))
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError:
        if flag in ("1", "true", "on", "yes"):
            raise RuntimeError("VIDEOGPT_FAST_BUILD_CUDA=1 but torch is not importable in the build "
                               "environment: use pip install --no-build-isolation")
        return [], {}
    usable = torch.version.cuda is not None and CUDA_HOME is not None and bool(sources)
    if not usable:
        if flag in ("1", "true", "on", "yes"):
            raise RuntimeError("VIDEOGPT_FAST_BUILD_CUDA=1 needs a CUDA build of torch, a CUDA "
                               f"toolkit (CUDA_HOME={CUDA_HOME}) and sources in csrc/")
        return [], {}
    ext = CUDAExtension(
        "videogpt_fast._C", sources,
        extra_compile_args={"cxx": ["-O3", "-std=c++17"],
                            "nvcc": ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extension()

setup(
    name="videogpt_fast",
    version="0.1.0",
    description="Fast, faithful drop-in reimplementation of VideoGPT (VQ-VAE + GPT prior)",
    long_description=open("README.md", encoding="utf-8").read() if os.path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["videogpt_fast", "videogpt_fast.checkpoint", "videogpt_fast.data", "videogpt_fast.fvd", "videogpt_fast.kernels",
              "videogpt_fast.train"],
    package_dir={"videogpt_fast.kernels": "kernels"},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "tqdm",
        "einops",
        "av>=12",
        "h5py",
        "scipy",
        "matplotlib",
        "pillow",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-benchmark", "scikit-video", "triton==3.6.0; platform_system == 'Linux'",
                 # DALI's CPU reader runs the DALI pipeline tests without a GPU
                 "nvidia-dali-cuda130; platform_system == 'Linux' and platform_machine == 'x86_64'"],
        "triton": ["triton>=3.1"],
        "dali": ["nvidia-dali-cuda130"],          # CUDA 13 (the GPU machine's); CUDA 12: [dali-cuda12]
        "dali-cuda12": ["nvidia-dali-cuda120"],
        "flash": ["flash-attn"],
        "xformers": ["xformers"],
        "tensorboard": ["tensorboard"],
    },
    entry_points={"console_scripts": ["videogpt-fast=videogpt_fast.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
