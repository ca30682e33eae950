"""The allocator setting (large tensors come from the heap, where freed memory is reused), the
device helpers and the warning about emulated bf16."""

from __future__ import annotations

import platform
import subprocess
import sys
import warnings

import pytest
import torch

from ptmkit.train.host import compute_device, emulated_bf16, to_device, warn_if_emulated_bf16

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


@pytest.mark.parametrize("bf16_units", [(), ("_is_avx512_bf16_supported",), ("_is_amx_tile_supported",),
                                        ("_is_avx512_bf16_supported", "_is_amx_tile_supported")])
def test_bf16_is_emulated_only_on_a_cpu_with_neither_avx512_bf16_nor_amx(bf16_units, monkeypatch) -> None:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda name=name: name in bf16_units)
    cpu = torch.device("cpu")
    assert emulated_bf16(cpu) == (not bf16_units)
    assert not emulated_bf16(torch.device("cuda"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        warn_if_emulated_bf16("bf16", cpu)
        warn_if_emulated_bf16("fp32", cpu)
    assert len(caught) == (0 if bf16_units else 1)  # fp32 never warns
    if caught:
        assert "emulated" in str(caught[0].message) and "--precision fp32" in str(caught[0].message)


def test_an_unknown_cpu_is_not_called_emulated(monkeypatch) -> None:
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # an older or newer torch
    assert not emulated_bf16(torch.device("cpu"))
