"""Checkpoint layout: RUN/checkpoints/step-N kept N at a time, RUN/checkpoint pointing at the newest
complete one whatever moment a crash hits, the older single-directory layout, sharded (DCP)
checkpoints loading into a plain model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ptmkit.train.checkpoint import (atomic_save_model, atomic_save_state, latest_checkpoint, load_checkpoint,
                                     save_checkpoint)
from ptmkit.train.loop import TrainConfig, make_optimizer


class Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(5, 4)
        self.norm = torch.nn.LayerNorm(4)
        self.head = torch.nn.Linear(4, 5, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.embed(ids)))


def _trained() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = Tied()
    opt = make_optimizer(model, TrainConfig())
    model(torch.tensor([[1, 2, 3]])).sum().backward()
    opt.step()
    return model, opt


def test_keeps_the_newest_and_points_at_the_latest(tmp_path: Path) -> None:
    model, opt = _trained()
    for step in (10, 20, 30):
        save_checkpoint(tmp_path, model, opt, {"step": step}, keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-000020", "step-000030"]
    assert os.readlink(tmp_path / "checkpoint") == "checkpoints/step-000030"
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint"
    save_checkpoint(tmp_path, model, opt, {"step": 30, "again": True}, keep=2)  # the same step: replaced
    assert json.loads((tmp_path / "checkpoint" / "state.json").read_text())["trainer"]["again"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary left"


def test_crash_moments_leave_a_complete_latest(tmp_path: Path) -> None:
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    save_checkpoint(tmp_path, model, opt, {"step": 2})
    # a crash before the link was swapped: the newer complete directory wins
    os.remove(tmp_path / "checkpoint")
    os.symlink("checkpoints/step-000001", tmp_path / "checkpoint")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000002"
    # a dangling link (the directory it named is gone): the newest complete one
    shutil.rmtree(tmp_path / "checkpoints" / "step-000001")
    os.remove(tmp_path / "checkpoint")
    os.symlink("checkpoints/step-000009", tmp_path / "checkpoint")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000002"
    # a half-written temporary is never taken for a checkpoint
    (tmp_path / ".checkpoint.tmp-step-000003").mkdir()
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoints" / "step-000002"


def test_older_single_directory_layout_is_read_then_converted(tmp_path: Path) -> None:
    model, opt = _trained()
    save_checkpoint(tmp_path, model, opt, {"step": 5})
    target = (tmp_path / "checkpoint").resolve()
    os.remove(tmp_path / "checkpoint")
    shutil.move(target, tmp_path / "checkpoint")  # RUN/checkpoint/ as a plain directory
    shutil.rmtree(tmp_path / "checkpoints")
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint"
    clone = Tied()
    clone_opt = make_optimizer(clone, TrainConfig())
    assert load_checkpoint(tmp_path / "checkpoint", clone, clone_opt) == {"step": 5}
    for name, tensor in model.state_dict().items():  # the weights and the optimizer's moments came back
        assert torch.equal(clone.state_dict()[name], tensor), name
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(opt.state[p]["exp_avg"], clone_opt.state[q]["exp_avg"])
    save_checkpoint(tmp_path, model, opt, {"step": 6})
    assert (tmp_path / "checkpoint").is_symlink() and not (tmp_path / ".checkpoint.old").exists()


def test_gathered_state_is_written_like_save_model(tmp_path: Path) -> None:
    model, _ = _trained()
    atomic_save_model(model, tmp_path / "a.safetensors")
    atomic_save_state({k: v.clone() for k, v in model.state_dict().items()}, model, tmp_path / "b.safetensors")
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert sorted(a) == sorted(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_sharded_checkpoint_loads_into_a_plain_model(tmp_path: Path) -> None:
    """FSDP in a group of one writes a DCP checkpoint; a plain process resumes from it exactly."""
    from ptmkit.train.distributed import Distributed, unavailable
    if unavailable():
        pytest.skip(unavailable())
    model, opt = _trained()
    dist = Distributed("fsdp")
    try:
        sharded = Tied()
        sharded.load_state_dict(model.state_dict())
        wrapped = dist.wrap(sharded, lambda m, ids: m(ids).sum(), "fp32")
        sharded_opt = make_optimizer(sharded, TrainConfig())
        wrapped(torch.tensor([[1, 2, 3]])).backward()
        sharded_opt.step()
        save_checkpoint(tmp_path, sharded, sharded_opt, {"step": 1}, distributed=dist)
        expected = dist.full_state_dict(sharded)
    finally:
        dist.close()
    assert (tmp_path / "checkpoint" / "dcp" / ".metadata").is_file()
    plain = Tied()
    plain_opt = make_optimizer(plain, TrainConfig())
    assert load_checkpoint(latest_checkpoint(tmp_path), plain, plain_opt) == {"step": 1}
    for name, value in plain.state_dict().items():
        assert torch.equal(value, expected[name]), name
    assert int(plain_opt.state[plain.embed.weight]["step"]) == 1


def test_a_sharded_checkpoint_resumes_on_the_fused_kernel(tmp_path: Path) -> None:
    """FSDP's optimizer runs `foreach` (its parameters are sharded); a plain (or DDP) process
    resuming that checkpoint keeps its own fused kernel (4x faster on CPU), not the writer's."""
    from ptmkit.train.distributed import Distributed, unavailable
    if unavailable():
        pytest.skip(unavailable())
    start, ids = _trained()[0].state_dict(), torch.tensor([[1, 2, 3]])
    dist = Distributed("fsdp")
    try:
        sharded = Tied()
        sharded.load_state_dict(start)
        wrapped = dist.wrap(sharded, lambda m, x: m(x).sum(), "fp32")
        sharded_opt = make_optimizer(sharded, TrainConfig())
        assert sharded_opt.param_groups[0]["foreach"] and not sharded_opt.param_groups[0]["fused"]
        wrapped(ids).backward()
        sharded_opt.step()
        save_checkpoint(tmp_path, sharded, sharded_opt, {"step": 1}, distributed=dist)
    finally:
        dist.close()
    plain = Tied()
    plain_opt = make_optimizer(plain, TrainConfig())
    kernel = [(g["fused"], g["foreach"]) for g in plain_opt.param_groups]
    load_checkpoint(latest_checkpoint(tmp_path), plain, plain_opt)
    assert [(g["fused"], g["foreach"]) for g in plain_opt.param_groups] == kernel == [(True, None)] * len(kernel)
    # and steps on from the restored moments as one process that never stopped
    reference = Tied()
    reference.load_state_dict(start)
    reference_opt = make_optimizer(reference, TrainConfig())
    for _ in range(2):
        reference(ids).sum().backward()
        reference_opt.step()
        reference_opt.zero_grad()
    plain(ids).sum().backward()
    plain_opt.step()
    for name, value in plain.state_dict().items():
        assert torch.allclose(value, reference.state_dict()[name], atol=1e-6), name


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="names open files through /proc")
def test_a_checkpoint_is_on_the_disk_before_a_rename_makes_it_the_latest(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A power loss or node reset keeps a rename but not the data written before it unless that
    was flushed: every file of the checkpoint is fsynced before its directory is renamed into
    checkpoints/, and that directory's entry before RUN/checkpoint points at it."""
    model, opt = _trained()
    synced: list[str] = []
    renames: list[tuple[Path, Path, set[str]]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        fsync(fd)

    def recording_replace(src, dst) -> None:
        renames.append((Path(src), Path(dst), set(synced)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    final = tmp_path / "checkpoints" / "step-000001"
    (src, _, before), = [r for r in renames if r[1] == final]
    files = {str(src / p.relative_to(final)) for p in final.rglob("*") if p.is_file()}
    assert files and files <= before, f"renamed before being flushed: {sorted(files - before)}"
    (_, _, at_link), = [r for r in renames if r[1] == tmp_path / "checkpoint"]
    assert str(final.parent) in at_link, "the step directory's entry was flushed before the link"
    synced.clear()
    atomic_save_model(model, tmp_path / "model.safetensors")
    (src, _, before), = [r for r in renames if r[1] == tmp_path / "model.safetensors"]
    assert str(src) in before
