"""The allocator setting (large tensors come from the heap, where freed memory is reused) and
the device helpers."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest
import torch

from ptmkit.train.host import compute_device, to_device

IN_HEAP = """
import sys, torch
from ptmkit.train.host import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else None
tensor = torch.empty(1 << 24)  # 64 MB, an activation of a small model
heap = [line.split()[0] for line in open("/proc/self/maps") if line.rstrip().endswith("[heap]")]
low, high = (int(x, 16) for x in heap[0].split("-"))
print(applied, low <= tensor.data_ptr() < high)
"""


def served_from_heap(mode: str) -> tuple[str, str]:
    out = subprocess.run([sys.executable, "-c", IN_HEAP, mode], capture_output=True, text=True, check=True)
    applied, in_heap = out.stdout.split()
    return applied, in_heap


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="mallopt is glibc's")
def test_large_tensors_come_from_the_heap() -> None:
    assert served_from_heap("default") == ("None", "False")  # glibc maps (and unmaps) each one
    assert served_from_heap("keep") == ("True", "True")


def test_the_gpu_is_used_when_there_is_one(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert compute_device() == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert compute_device() == torch.device("cuda")


def test_every_tensor_of_a_batch_moves() -> None:
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "valid": torch.ones(2, 3, dtype=torch.bool)}
    moved = to_device(batch, torch.device("meta"))
    assert {k: (v.device.type, v.dtype, v.shape) for k, v in moved.items()} == \
        {k: ("meta", v.dtype, v.shape) for k, v in batch.items()}
