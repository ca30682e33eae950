"""Where a training process goes without a launcher's help: its GPU and its share of the batch."""

from __future__ import annotations

import pytest
import torch

from ptmkit.train import distributed
from ptmkit.train.distributed import resolve_mode, world_size


@pytest.fixture
def no_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in distributed.TORCHRUN_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(("rank", "gpu"), [(0, 0), (1, 1), (2, 0), (5, 1)])
def test_a_group_without_local_rank_spreads_its_processes_over_the_gpus(rank: int, gpu: int, no_launcher,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert distributed._local_rank(rank) == gpu


def test_torchrun_local_rank_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert distributed._local_rank(0) == 3


def test_one_process_alone_has_no_mode(no_launcher) -> None:
    assert world_size() == 1 and resolve_mode(None) is None


def test_torchrun_with_several_processes_means_ddp(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert world_size() == 4 and resolve_mode(None) == "ddp"
    assert resolve_mode("fsdp") == "fsdp"
