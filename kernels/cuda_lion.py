"""A fused Lion step written in CUDA C++ and compiled at first use (the ``cuda`` backend of
``lion_step``): the same update as optimizer_steps.lion_step_reference (Chen et al. 2023,
Algorithm 2), one grid-stride kernel over flat param/grad/state buffers, fp32 arithmetic.

It is built with ``torch.utils.cpp_extension.load_inline`` where a CUDA device, a CUDA build of
torch, nvcc and ninja exist; where ninja is missing but nvcc is not, the same source is compiled
with nvcc directly into a shared library and loaded with ``torch.ops.load_library``. Anywhere else
``cuda_extension_status()`` says why not, and calling the op raises ``CudaExtensionUnavailable``
with that reason (the tests skip with it). The op registers as ``torch.ops.benchbed_cuda.lion_step``.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
import tempfile

import torch

from benchbed.kernels.optimizer_steps import _check_flat

CPP_DECL = ""  # the op is declared with TORCH_LIBRARY in the CUDA source

CUDA_SOURCE = r"""
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

template <typename scalar_t>
__global__ void lion_kernel(scalar_t* __restrict__ p, const scalar_t* __restrict__ g, float* __restrict__ m,
                            int64_t n, float lr, float beta1, float beta2, float wd) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n; i += (int64_t)blockDim.x * gridDim.x) {
    const float gi = static_cast<float>(g[i]);
    const float mi = m[i];
    const float c = mi * beta1 + gi * (1.f - beta1);
    const float update = (c > 0.f) ? 1.f : ((c < 0.f) ? -1.f : 0.f);
    p[i] = static_cast<scalar_t>(static_cast<float>(p[i]) * (1.f - lr * wd) - lr * update);
    m[i] = mi * beta2 + gi * (1.f - beta2);
  }
}

void lion_step(at::Tensor p, const at::Tensor& g, at::Tensor m, double lr, double beta1, double beta2,
               double wd) {
  TORCH_CHECK(p.is_cuda() && g.is_cuda() && m.is_cuda(), "lion_step: CUDA tensors expected");
  TORCH_CHECK(p.is_contiguous() && g.is_contiguous() && m.is_contiguous(), "lion_step: contiguous buffers");
  TORCH_CHECK(m.scalar_type() == at::kFloat, "lion_step: the state is float32");
  TORCH_CHECK(g.scalar_type() == p.scalar_type(), "lion_step: grads have the params' dtype");
  const int64_t n = p.numel();
  if (n == 0) return;
  const int threads = 256;
  const int blocks = (int)std::min<int64_t>((n + threads - 1) / threads, 8 * 65535);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.scalar_type(), "lion_step", [&] {
    lion_kernel<scalar_t><<<blocks, threads, 0, stream>>>(p.data_ptr<scalar_t>(), g.data_ptr<scalar_t>(),
        m.data_ptr<float>(), n, (float)lr, (float)beta1, (float)beta2, (float)wd);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

TORCH_LIBRARY(benchbed_cuda, lib) {
  lib.def("lion_step(Tensor(a!) p, Tensor g, Tensor(b!) m, float lr, float beta1, float beta2, float wd) -> ()");
}
TORCH_LIBRARY_IMPL(benchbed_cuda, CUDA, lib) { lib.impl("lion_step", &lion_step); }
"""


class CudaExtensionUnavailable(RuntimeError):
    """The CUDA C++ op cannot be built here; the message says why."""


def _nvcc() -> str | None:
    from torch.utils.cpp_extension import CUDA_HOME

    found = shutil.which("nvcc")
    if found:
        return found
    candidate = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else None
    return candidate if candidate and os.path.exists(candidate) else None


def cuda_extension_status() -> tuple[bool, str]:
    """(buildable, reason or the nvcc path)."""
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} is not a CUDA build"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    nvcc = _nvcc()
    if nvcc is None:
        return False, "nvcc not found (not on PATH, no CUDA_HOME)"
    return True, nvcc


def _build_dir() -> str:
    root = os.environ.get("BENCHBED_EXTENSIONS_DIR") or os.path.join(
        tempfile.gettempdir(), "benchbed-extensions"
    )
    path = os.path.join(root, f"lion-torch{torch.__version__}-cuda{torch.version.cuda}".replace("+", "_"))
    os.makedirs(path, exist_ok=True)
    return path


def _build_with_nvcc(nvcc: str, build_dir: str) -> None:
    """No ninja: one nvcc call producing a shared library, loaded into torch.ops."""
    from torch.utils.cpp_extension import include_paths, library_paths

    source = os.path.join(build_dir, "lion.cu")
    library = os.path.join(build_dir, "lion.so")
    with open(source, "w") as f:
        f.write(CUDA_SOURCE)
    major, minor = torch.cuda.get_device_capability()
    abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
    cmd = [nvcc, "-O3", "-shared", "-std=c++17", "-Xcompiler", "-fPIC", f"-D_GLIBCXX_USE_CXX11_ABI={abi}",
           f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}", source, "-o", library,
           *(f"-I{p}" for p in include_paths("cuda")), f"-I{sysconfig_include()}",
           *(f"-L{p}" for p in library_paths("cuda")), "-lc10", "-lc10_cuda", "-ltorch", "-ltorch_cpu",
           "-ltorch_cuda"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode:
        raise CudaExtensionUnavailable(f"nvcc failed: {done.stderr.strip()[-800:]}")
    torch.ops.load_library(library)


def sysconfig_include() -> str:
    import sysconfig

    return sysconfig.get_paths()["include"]


@functools.cache
def _load() -> None:
    ok, why = cuda_extension_status()
    if not ok:
        raise CudaExtensionUnavailable(f"lion_step backend 'cuda': {why}")
    from torch.utils.cpp_extension import is_ninja_available, load_inline

    build_dir = _build_dir()
    if is_ninja_available():
        load_inline(
            name="benchbed_lion_cuda",
            cpp_sources=CPP_DECL,
            cuda_sources=CUDA_SOURCE,
            extra_cuda_cflags=["-O3"],
            build_directory=build_dir,
            is_python_module=False,
            verbose=False,
        )
    else:
        print("cuda_lion: ninja is not installed; compiling with nvcc directly", file=sys.stderr)
        _build_with_nvcc(why, build_dir)


@torch.no_grad()
def lion_step_cuda(params, grads, exp_avg, lr, betas, weight_decay) -> None:
    _check_flat(params, grads, exp_avg)
    _load()
    torch.ops.benchbed_cuda.lion_step(params, grads, exp_avg, lr, betas[0], betas[1], weight_decay)
