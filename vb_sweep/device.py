"""Where and how a trial's networks run: the device, the memory layout, the precision, the seed.

    device = resolve_device("auto")             # "cuda" when there is a GPU, else "cpu"
    model = place_model(model, device)          # on the device, channels_last
    dtype = autocast_dtype(amp=True, device)    # bf16 where the hardware computes it, else None
"""

from __future__ import annotations

import torch


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def place_model(model: torch.nn.Module, device: str) -> torch.nn.Module:
    """On the device in channels_last, the layout cuDNN and oneDNN convolutions run fastest in
    (on a 2-core AVX-512 CPU the small CNN trains 1.4x faster than in the default layout)."""
    return model.to(device).to(memory_format=torch.channels_last)


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

