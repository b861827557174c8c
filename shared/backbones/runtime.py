"""Facts about the machine an encoder runs on: the CPUs it may use, its compute threads, device and precision."""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch

from shared.errors import BackboneError

#: The torch precisions a speech encoder can run in, by the names options and manifests use.
TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cgroup_cpu_quota() -> float | None:
    """The CPU quota of this process's cgroup in CPUs (Docker ``--cpus``), or None when unlimited."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]  # cgroup v2
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period_us = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota_us / period_us if quota_us > 0 and period_us > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by a cgroup CPU quota (at least 1).

    ``os.cpu_count()`` and the runtimes' own defaults see the host's cores even inside a container
    limited to fewer, and more compute threads than CPUs make every matrix product wait on the slowest.
    """
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        n = min(n, max(1, math.floor(quota)))
    return max(1, n)


def configure_torch_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count (process-wide) and return it.

    ``threads`` > 0 is used as given. ``None`` or 0 keeps the current setting (so an earlier
    ``torch.set_num_threads`` stands) but caps it at ``available_cpus()``.
    """
    current = torch.get_num_threads()
    wanted = int(threads) if threads else min(current, available_cpus())
    if wanted != current:
        torch.set_num_threads(wanted)
    return wanted


def cpu_has_fast_bf16() -> bool:
    """True when this CPU has bf16 matrix instructions (AVX-512 BF16 or AMX).

    AVX-512 BF16 alone is enough to make bf16 the fast precision: the README's speed table has the
    measured ratio on a CPU with it and without AMX.
    """
    checks = ("_is_amx_tile_supported", "_is_avx512_bf16_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in checks)


def cpu_has_int8_dot_products() -> bool:
    """True when this CPU has int8 dot-product instructions (AVX-512 VNNI or AVX-VNNI), which ONNX
    Runtime's int8 matrix products use."""
    return bool(getattr(torch.cpu, "_is_vnni_supported", lambda: False)())


def resolve_device(device: str) -> torch.device:
    """``"auto"`` picks CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(
            f"device {device!r} was asked for, but CUDA is not available here; use 'cpu' or 'auto'"
        )
    return dev


def _fast_dtype(device: torch.device) -> str:
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_fast_bf16() else "fp32"


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """Turn ``"auto"`` into a concrete precision: the fast one of the device, bf16 on GPUs (fp16 where
    bf16 is missing) and on CPUs with bf16 matrix units, else fp32 (bf16 emulated on a CPU without them is
    slower than fp32). Half precision here means half-precision matrix weights with fp32 activations and
    bias correction (``shared.backbones.torch.precision``).

    fp16 is accepted on CUDA only (CPU fp16 matrix work is slow and loses range).

    Raises:
        BackboneError: an unknown precision, or fp16 on a CPU.
    """
    if dtype == "auto":
        return _fast_dtype(device)
    if dtype not in TORCH_DTYPES:
        raise BackboneError(f"unknown dtype {dtype!r}; accepted: auto, fp32, bf16, fp16")
    if dtype == "fp16" and device.type != "cuda":
        raise BackboneError("fp16 is supported on CUDA only; use fp32 or bf16 on a CPU")
    return dtype
