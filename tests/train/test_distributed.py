"""Training under torchrun (gloo on CPU): DDP and FSDP follow the one-process loss trajectory of
the same global batch, several nodes rendezvous on loopback, and checkpoints resume on another
number of processes."""

from __future__ import annotations

import math
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ptmkit.train.checkpoint import latest_checkpoint
from ptmkit.train.distributed import unavailable

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(unavailable() is not None, reason=f"no process groups here: {unavailable()}")]

STANDALONE = ["--standalone", "--nproc_per_node", "2"]


def _args(data: Path, out: Path, objective: str = "mlm", steps: int = 6, batch: int = 8, *extra) -> list:
    """A tiny dropout-free run at a constant learning rate (so a shorter run is a prefix)."""
    return ["pretrain", "--objective", objective, "--data", data, "--model", data.parent / "nodrop.yaml",
            "--seq-len", "64", "--batch-size", batch, "--steps", steps, "--seed", "3", "--lr", "1e-3",
            "--warmup", "2", "--schedule", "constant", "--log-every", "1", "--workers", "0",
            "--no-progress", "--out", out, *extra]


def _close(a: dict[int, float], b: dict[int, float], steps: range) -> None:
    for step in steps:
        assert math.isclose(a[step], b[step], rel_tol=2e-6), f"step {step}: {a[step]} vs {b[step]}"


@pytest.fixture(scope="module")
def reference(lee_data: Path, tmp_path_factory: pytest.TempPathFactory, child_env: dict[str, str]) -> Path:
    """One process, batch 8, 6 steps."""
    out = tmp_path_factory.mktemp("ref") / "run"
    proc = subprocess.run([sys.executable, "-m", "ptmkit", *map(str, _args(lee_data, out))],
                          env=child_env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _drop_newest_checkpoint(run: Path) -> Path:
    """A copy of `run` whose newest checkpoint is gone: resuming it starts from the one before."""
    copy = run.parent / f"{run.name}-copy"
    shutil.copytree(run, copy, symlinks=True)
    shutil.rmtree(latest_checkpoint(copy).resolve())
    return copy


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_two_processes_follow_one_process_then_resume_on_one(mode: str, lee_data: Path, reference: Path,
                                                             tmp_path: Path, ptmkit_process, metrics) -> None:
    """2 x batch 4 gives the losses of 1 x batch 8; its step-3 checkpoint (full weights for DDP, a
    DCP for FSDP) resumes on one process with batch 8 and continues the same trajectory."""
    run = tmp_path / mode
    ptmkit_process(_args(lee_data, run, "mlm", 6, 4, "--save-every", "3", "--distributed", mode),
                   launcher=STANDALONE)
    expected, got = metrics(reference), metrics(run)
    assert sorted(got) == list(range(1, 7))
    _close(expected, got, range(1, 7))
    assert metrics(run, "predicted") == metrics(reference, "predicted")  # a count: summed over processes
    assert (run / "model.safetensors").is_file() and (run / "summary.json").is_file()
    checkpoint = latest_checkpoint(run)
    assert checkpoint == run / "checkpoint" and checkpoint.resolve().name == "step-000006"
    assert ((checkpoint / "dcp").is_dir()) == (mode == "fsdp")
    assert ((checkpoint / "model.safetensors").is_file()) == (mode == "ddp")
    _same_weights(reference / "model.safetensors", run / "model.safetensors")

    resumed = _drop_newest_checkpoint(run)
    ptmkit_process(["pretrain", "--out", resumed, "--resume", "--batch-size", "8", "--no-progress"])
    after = metrics(resumed)
    assert sorted(after) == list(range(1, 7))
    _close(expected, after, range(1, 7))


def _same_weights(a: Path, b: Path) -> None:
    from safetensors.torch import load_file
    x, y = load_file(str(a)), load_file(str(b))
    assert sorted(x) == sorted(y), "the gathered weights have the single-process file's names"
    for name in x:
        assert (x[name] - y[name]).abs().max() < 1e-5, name


@pytest.mark.parametrize("objective", ["clm"])  # mlm under FSDP: the test above
def test_fsdp_run_writes_loadable_weights(objective: str, lee_data: Path, tmp_path: Path, ptmkit_process) -> None:
    run = tmp_path / "run"
    ptmkit_process(_args(lee_data, run, objective, 3, 4, "--distributed", "fsdp"), launcher=STANDALONE)
    import ptmkit
    loaded = ptmkit.load_run(run)  # strict load of RUN/model.safetensors into a fresh model
    assert loaded is not None
    assert (latest_checkpoint(run) / "dcp" / ".metadata").is_file()


def test_contrastive_trains_under_ddp(lee_data: Path, tmp_path: Path, ptmkit_process, metrics) -> None:
    """Its loss never reaches the LM head, whose weights DDP would otherwise wait for."""
    run = tmp_path / "run"
    ptmkit_process(_args(lee_data, run, "contrastive", 3, 4, "--distributed", "ddp"), launcher=STANDALONE)
    assert sorted(metrics(run)) == [1, 2, 3] and (run / "model.safetensors").is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_on_loopback(lee_data: Path, tmp_path: Path, metrics, child_env: dict[str, str],
                               torchrun: list[str]) -> None:
    """2 nodes x 1 process, c10d rendezvous on 127.0.0.1 (the run directory is shared)."""
    port, run = _free_port(), tmp_path / "run"
    nodes = [subprocess.Popen([*torchrun, "--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(rank),
                               "--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}",
                               "--rdzv_id", "ptmkit-test", "-m", "ptmkit",
                               *map(str, _args(lee_data, run, "mlm", 3, 4))],
                              env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for rank in (0, 1)]
    try:
        outputs = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.kill()
    for node, (out, err) in zip(nodes, outputs):
        assert node.returncode == 0, err[-3000:]
    assert (run / "model.safetensors").is_file()
    assert sorted(metrics(run)) == [1, 2, 3]
    assert sum("pre-trained" in out for out, _ in outputs) == 1, "one summary line, from rank 0"


def test_a_finished_run_releases_its_process_group(lee_data: Path, tmp_path: Path) -> None:
    """The DDP wrapper that holds the group is freed before the group is destroyed, not later by the
    collector during interpreter exit (where gloo can abort a process whose run succeeded)."""
    import gc

    import ptmkit
    from torch.nn.parallel import DistributedDataParallel
    gc.collect()
    gc.disable()
    try:
        ptmkit.pretrain(objective="mlm", data=lee_data, model=lee_data.parent / "nodrop.yaml", seq_len=64,
                        batch_size=4, steps=2, workers=0, progress=False, distributed="ddp",
                        out=tmp_path / "run")
        alive = sum(type(obj) is DistributedDataParallel for obj in gc.get_objects())
    finally:
        gc.enable()
    assert alive == 0


SLOW_PREPARATION = '''
import datetime, sys, time
import torch.distributed as dist
_init = dist.init_process_group
def _short(*args, **kwargs):  # the group gives up on a collective after 4 s
    return _init(*args, **{**kwargs, "timeout": datetime.timedelta(seconds=4)})
dist.init_process_group = _short
import ptmkit
import ptmkit.pretraining as pretraining
_resolve = pretraining._resolve_data
def _slow(spec):  # rank 0 prepares the corpus for longer than that
    time.sleep(10)
    return _resolve(spec)
pretraining._resolve_data = _slow
ptmkit.pretrain(objective="mlm", corpus=[sys.argv[1]], out=sys.argv[2], model="tiny", seq_len=32, batch_size=4,
                steps=2, workers=0, progress=False, distributed="ddp")
'''


def test_processes_wait_for_a_corpus_preparation_longer_than_a_collective_may(
        tmp_path: Path, child_env: dict[str, str], torchrun: list[str], metrics) -> None:
    """--corpus under torchrun: rank 0 trains the tokenizer and writes the shards alone (hours for
    a large corpus) while the others wait; their wait must not be a collective, which nccl gives
    up after 10 minutes (gloo 30; 4 s here), killing the run."""
    import gensim
    lee = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
    script, run = tmp_path / "slow_preparation.py", tmp_path / "run"
    script.write_text(SLOW_PREPARATION)
    proc = subprocess.run([*torchrun, *STANDALONE, str(script), str(lee), str(run)], env=child_env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(metrics(run)) == [1, 2] and (run / "model.safetensors").is_file()


SPAWNED_GROUP = '''
import json, sys
import torch.distributed as dist
import torch.multiprocessing as mp
import ptmkit

def work(rank, port, data, model, out):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:  # no --distributed and no torchrun variables: the caller's group decides
        summary = ptmkit.pretrain(objective="mlm", data=data, model=model, seq_len=64, batch_size=4,
                                  steps=2, workers=0, progress=False, out=out)
        if rank == 0:
            print(json.dumps(summary["distributed"]))
    finally:
        dist.destroy_process_group()

if __name__ == "__main__":
    mp.spawn(work, args=tuple(sys.argv[1:]), nprocs=2)
'''


def test_a_process_group_the_caller_started_trains_as_one_run(lee_data: Path, tmp_path: Path,
                                                               child_env: dict[str, str], metrics) -> None:
    """mp.spawn sets neither RANK nor WORLD_SIZE nor LOCAL_RANK: the group itself says there are
    two processes, so they share one DDP run (they used to train two runs into one directory)."""
    import json
    script, run = tmp_path / "spawned.py", tmp_path / "run"
    script.write_text(SPAWNED_GROUP)
    proc = subprocess.run([sys.executable, str(script), str(_free_port()), str(lee_data),
                           str(lee_data.parent / "nodrop.yaml"), str(run)],
                          env=child_env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == {"mode": "ddp", "processes": 2, "global_batch": 8}
    assert sorted(metrics(run)) == [1, 2]
