"""Process-wide settings of the host that training pays for on every step."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import warnings

import torch
from torch import Tensor

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
HEAP_BELOW = 1 << 28
"""Allocations below this size (256 MB) come from the heap, where freed memory is reused."""
KEEP_BELOW = 1 << 30
"""Freed heap memory kept for reuse up to this much (1 GiB), instead of being returned."""


@functools.cache
def keep_freed_memory() -> bool:
    """Serve large tensors from the heap and keep freed memory for the next step (glibc only).

    By default glibc hands every allocation above a threshold (dynamic, at most 32 MB) its own
    mmap and unmaps it when freed, so a training step that allocates the same activations every
    time page-faults through all of them again: 10-12% of a bf16 step of a small GPT-2 here
    (the reason jemalloc or tcmalloc are recommended for PyTorch on CPU). Peak memory is
    unchanged; the process keeps what it freed (up to `KEEP_BELOW`). Returns whether it applied.
    """
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (macOS, musl, Windows)
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, HEAP_BELOW) and mallopt(_M_TRIM_THRESHOLD, KEEP_BELOW))


def compute_device() -> torch.device:
    """The GPU when there is one (single process; under torchrun each process takes its
    `LOCAL_RANK`'s, see `ptmkit.train.distributed`), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def device_of(module: torch.nn.Module) -> torch.device:
    """Where `module`'s weights live (inputs must be moved there)."""
    return next(module.parameters()).device


def to_device(batch: dict[str, Tensor], device: torch.device) -> dict[str, Tensor]:
    """A collated batch's tensors on `device` (a copy from the CPU is queued, not waited for)."""
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def emulated_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls on `device` are emulated: a CPU without AVX512-BF16 or AMX converts
    every bf16 operand to fp32 and back, which makes bf16 training many times slower than fp32
    (see BENCHMARKS.md) instead of faster. Unknown (an older torch, another platform): False."""
    if device.type != "cpu":
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return all(probe is not None for probe in probes) and not any(probe() for probe in probes)


def warn_if_emulated_bf16(precision: str, device: torch.device) -> None:
    """A user who asked for bf16 to go faster on such a CPU gets the opposite: say so, once."""
    if precision == "bf16" and emulated_bf16(device):
        warnings.warn("bf16 on this CPU is emulated (it has neither AVX512-BF16 nor AMX) and runs many "
                      "times slower than fp32: use --precision fp32 (precision: fp32 in a config)", stacklevel=2)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity, which a container or `taskset` narrows),
    not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
