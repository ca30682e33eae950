"""`kill -9` in the middle of a run, then `--resume`: every step's loss is the uninterrupted run's,
bit for bit (DataLoader worker included: noise is seeded per (seed, epoch, window))."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ptmkit.train.checkpoint import latest_checkpoint

pytestmark = pytest.mark.slow


def _last_step(metrics: Path) -> int:
    """Highest step logged so far (a line being written may be cut short)."""
    step = 0
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            try:
                step = max(step, json.loads(line).get("step", 0))
            except ValueError:
                pass
    return step


@pytest.mark.parametrize("objective", ["mlm", "bart", "plm"])
def test_kill_9_then_resume_repeats_every_loss(objective: str, lee_data: Path, tmp_path: Path,
                                                 ptmkit_process, metrics) -> None:
    args = ["pretrain", "--objective", objective, "--data", lee_data, "--model", "tiny", "--batch-size", "8",
            "--seq-len", "64", "--seed", "3", "--save-every", "10", "--steps", "60", "--workers", "1",
            "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"}
    full, killed = tmp_path / "full", tmp_path / "killed"

    def start(out: Path) -> subprocess.Popen:
        # its own session: SIGKILL to the group also takes the DataLoader worker
        return subprocess.Popen([sys.executable, "-m", "ptmkit", *map(str, args), "--out", str(out)], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)

    reference, victim = start(full), start(killed)  # the uninterrupted run goes on meanwhile
    try:
        deadline = time.monotonic() + 120
        while _last_step(killed / "metrics.jsonl") < 30 and victim.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        os.killpg(victim.pid, signal.SIGKILL)
        _, err = victim.communicate(timeout=30)
        assert victim.returncode == -signal.SIGKILL, f"the run ended before the kill ({victim.returncode}): {err[-2000:]}"
        _, err = reference.communicate(timeout=120)
        assert reference.returncode == 0, err[-2000:]
    finally:
        for proc in (reference, victim):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stopped_at = _last_step(killed / "metrics.jsonl")
    assert 30 <= stopped_at < 60
    resumed_from = json.loads((latest_checkpoint(killed) / "state.json").read_text())["trainer"]["step"]
    assert resumed_from in (20, 30, 40, 50) and resumed_from <= stopped_at

    ptmkit_process(["pretrain", "--out", killed, "--resume", "--no-progress"])
    a, b = metrics(full), metrics(killed)
    assert sorted(b) == list(range(1, 61)), "each step logged once after the resume"
    assert a == b, f"resumed at step {resumed_from} (killed at {stopped_at}); losses differ"
    assert not list(killed.glob(".checkpoint.tmp-*")), "no half-written checkpoint left behind"
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-000050", "step-000060"]
