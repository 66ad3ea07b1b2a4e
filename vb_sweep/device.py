"""Where and how a trial's networks run: the device, the memory layout, the precision, the seed.

    device = resolve_device("auto")             # "cuda" when there is a GPU, else "cpu"
    model = place_model(model, device)          # on the device, channels_last; or compiled
    dtype = autocast_dtype(amp=True, device)    # bf16 where the hardware computes it, else None
    retain_freed_memory()                        # once per process that trains (glibc only)
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

import torch


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def place_model(model: torch.nn.Module, device: str, channels_last: bool = True,
                compile: bool = False) -> torch.nn.Module:
    """On the device, by default in channels_last, the layout cuDNN and oneDNN convolutions run
    fastest in (on a 2-core AVX-512 CPU the small CNN trains 1.4x faster than in the default
    layout). ``compile``: torch.compile the module in place, so its parameter names and state
    dict stay those of the eager module (a deep copy of it runs eager); every call, with or
    without features, goes through the compiled forward. Batch sizes that vary (a short last
    batch, evaluation) are compiled once more as a dynamic shape, not once per size."""
    model = model.to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        prepare_compiler()
        model.compile()
    return model


# Compiled variants of the networks' one forward that a process may keep: a trial compiles
# about five (train and eval mode, with and without gradients or features, a dynamic batch
# size, each autocast dtype), and a reused sweep worker keeps them for its next trials. Past
# torch's default of 8, torch would run the forward eager from then on.
RECOMPILE_LIMIT = 64


def prepare_compiler() -> None:
    """torch.compile's settings for the trials' networks (process-wide)."""
    import torch._dynamo

    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit,
                                               RECOMPILE_LIMIT)
    match_inductor_to_aten()


def match_inductor_to_aten() -> None:
    """Compiled CPU kernels in the vector width ATen uses. Inductor picks its width from the
    CPU, ATen from ``ATEN_CPU_CAPABILITY``: on an AVX-512 CPU held to AVX2 that way, compiled
    training crashes (a segmentation fault) unless inductor is held to 256 bits too."""
    if os.environ.get("ATEN_CPU_CAPABILITY", "").lower() == "avx2":
        import torch._inductor.config

        torch._inductor.config.cpp.simdlen = 256


def optimizer_kernel_args(kernel: str) -> dict:
    """The torch.optim keyword arguments of a ``config.OPTIMIZER_KERNELS`` entry."""
    return {"default": {}, "for-loop": {"foreach": False}, "foreach": {"foreach": True},
            "fused": {"fused": True}}[kernel]


def cpu_has_native_bf16() -> bool:
    """Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX). Elsewhere bf16 is
    emulated and slower than float32, so autocast stays off."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def autocast_dtype(amp: bool, device: str, cpu_bf16: bool | None = None) -> torch.dtype | None:
    """bf16 autocast when ``amp`` is on and the device computes bf16 natively: any CUDA GPU of
    this project's range, a CPU with AVX512-BF16/AMX. None: float32 throughout."""
    if not amp:
        return None
    if device.startswith("cuda"):
        return torch.bfloat16
    native = cpu_has_native_bf16() if cpu_bf16 is None else cpu_bf16
    return torch.bfloat16 if device == "cpu" and native else None


def precision_name(amp: bool, device: str) -> str:
    """What a trial on ``device`` really computes in: "bf16" or "fp32"."""
    return "bf16" if autocast_dtype(amp, device) else "fp32"


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)


# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
RETURN_FREED_MEMORY_VARIABLE = "VB_SWEEP_RETURN_FREED_MEMORY"


def retain_freed_memory() -> bool:
    """Let glibc keep freed memory for the next step instead of handing it back to the kernel.

    By default glibc maps every block over 32 MiB afresh (the small CNN's activations at batch
    256, an eval batch of 512) and gives the top of its heap back once 2x the map threshold is
    free, so each step zero-fills hundreds of MB of new pages: on 2 cores 100,000 page faults
    per training step at batch 256, which ran at 622-783 img/s instead of 1,430-1,534, and the
    no-grad pass at batch 512 at 1,219-1,684 img/s instead of 3,100. The process keeps its peak
    memory instead. True if glibc took the settings; False on another C library or when
    ``VB_SWEEP_RETURN_FREED_MEMORY=1`` is in the environment (the old behaviour)."""
    if os.environ.get(RETURN_FREED_MEMORY_VARIABLE) == "1" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    return bool(libc.mallopt(M_MMAP_THRESHOLD, 1 << 30)
                and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1))
