"""Where and in what precision a run computes: the device, the compute dtype, thread counts, and what
about the machine changes a run's numbers (recorded with every record)."""

from __future__ import annotations

import contextlib
import platform as host
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run with `n` intra-op threads (fixed thread counts keep CPU float reductions reproducible)."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)



def attention(device: str) -> str:
    """PyTorch's fused attention on a GPU; on the CPU, eager attention: for the short sequences of
    instruction data it measured about twice as fast in training as the CPU flash-attention kernel."""
    return "sdpa" if device.startswith("cuda") else "eager"



def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"



def platform(device: str) -> dict[str, Any]:
    """What changes a run's numbers from one machine to another, though the code and inputs are the same:
    the libraries that compute it, the attention kernel, and the processor (its vector unit decides the
    CPU's float reductions: the same run gave 1.3746 on an AMD EPYC and 1.3307 on an Intel Xeon)."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for name in ("torch", "transformers", "peft", "gptqmodel"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    if device.startswith("cuda"):
        processor = torch.cuda.get_device_name(torch.device(device))
    else:
        names = [line.split(":", 1)[1].strip() for line in _cpuinfo().splitlines() if line.startswith("model name")]
        processor = f"{names[0] if names else 'cpu'} ({torch.backends.cpu.get_cpu_capability()})"
    return {"versions": versions, "attention": attention(device), "processor": processor}



def _cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # macOS, Windows
        return f"model name: {host.processor() or host.machine()}"


X86 = {"x86_64", "amd64", "i386", "i686"}  # `platform.machine()`, lower-cased


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 natively (AVX-512 BF16 or AMX on x86, BF16 on Arm), where bf16 beats
    fp32. Not oneDNN's "bf16 supported": on x86 that holds on every AVX-512 CPU, which without AVX-512 BF16
    converts to fp32 and back (an Intel Xeon without it trained 2.6x slower in bf16: bench/dtype_speed.py)."""
    try:
        if host.machine().lower() in X86:  # the hardware's flags, not the kernels torch was told to use
            return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False



def compute_dtype(choice: str, device: str) -> torch.dtype:
    """`finetune.dtype` resolved: 'auto' is bf16 on a GPU and on a CPU with native bf16, else fp32."""
    if choice == "fp32":
        return torch.float32
    if choice == "bf16" or device.startswith("cuda") or cpu_has_bf16():
        return torch.bfloat16
    return torch.float32



def device_and_dtype() -> tuple[str, torch.dtype]:
    """bf16 on a GPU when one is present, fp32 on the CPU (GPTQ and priors; training: `compute_dtype`)."""
    if torch.cuda.is_available():
        return "cuda", torch.bfloat16
    return "cpu", torch.float32
