"""The training loop: schedule, exact resume, checkpoint round trip, time budget."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import gensim
import pytest
import torch

from ptmkit.data.shards import prepare
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.data.corpus import read_texts
from ptmkit.errors import UserError
from ptmkit.pretraining import PretrainSpec, pretrain
from ptmkit.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from ptmkit.train.loop import TrainConfig, Trainer, learning_rate, make_optimizer

LEE = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    tokenizer = train_tokenizer(read_texts([LEE]), kind="bpe", vocab_size=1000, show_progress=False)
    prepare([LEE], tokenizer, root / "d", val_fraction=0.02, progress=False)
    return root / "d"


def losses(run: Path) -> dict[int, float]:
    return {m["step"]: m["loss"] for m in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in m}


def small_spec(objective: str, data: Path, out: Path, **train) -> PretrainSpec:
    cfg = TrainConfig(**{"steps": 12, "batch_size": 4, "seq_len": 32, "lr": 1e-3, "warmup": 2,
                         "schedule": "constant", "log_every": 1, "eval_every": 6, "workers": 0, **train})
    return PretrainSpec(objective=objective, data=data, out=out, train=cfg, progress=False)


def test_schedule_warms_up_then_decays() -> None:
    cfg = TrainConfig(steps=100, lr=1.0, warmup=10, schedule="linear", min_lr_ratio=0.1)
    lrs = [learning_rate(cfg, s) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[9:], lrs[10:]))
    assert learning_rate(cfg, 100) == pytest.approx(0.1)
    cosine = TrainConfig(steps=100, lr=1.0, warmup=0, schedule="cosine")
    assert learning_rate(cosine, 50) == pytest.approx(0.5, abs=0.02)
    assert TrainConfig(steps=1000).warmup == 60
    timed = TrainConfig(steps=10**9, max_minutes=30)  # a pure time budget still logs and evaluates
    assert timed.time_bound and (timed.warmup, timed.log_every, timed.eval_every) == (100, 10, 500)


def test_under_a_time_budget_warm_up_ends_on_the_clock_and_decay_follows_it() -> None:
    """A slow machine (60 s a step in a 10-minute budget) still reaches the peak rate and decays
    over the rest of the clock; a fast one warms up over its 100 steps and holds the peak until
    the clock's warm-up share has passed; the rate never jumps."""
    cfg = TrainConfig(max_minutes=10, lr=1.0, schedule="linear")
    assert cfg.warmup == 100
    slow = [learning_rate(cfg, step, elapsed_s=60.0 * step) for step in range(11)]
    assert slow[0] == pytest.approx(0.01)
    assert slow[1] == pytest.approx(1 - (0.1 - 0.06) / 0.94)  # warm-up ended at 6% of the clock
    assert slow[10] == pytest.approx(0.0)
    assert all(a >= b for a, b in zip(slow[1:], slow[2:]))
    fast = [learning_rate(cfg, step, elapsed_s=0.01 * step) for step in range(200)]
    assert fast[99] == pytest.approx(1.0) and fast[150] == pytest.approx(1.0)
    rates = [learning_rate(cfg, step, elapsed_s=3.0 * step) for step in range(200)]
    peak = rates.index(max(rates))
    assert rates[peak] == pytest.approx(1.0) and rates[-1] < 0.05
    assert all(0 <= a - b < 0.006 for a, b in zip(rates[peak:], rates[peak + 1:]))  # no jump down


def test_a_time_budget_alone_leaves_the_step_count_open() -> None:
    assert TrainConfig().steps == 1000 and not TrainConfig().time_bound
    assert TrainConfig(max_minutes=30).time_bound  # the clock ends the run, not 1000 steps
    assert TrainConfig(steps=50, max_minutes=30).steps == 50  # whichever comes first


@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_resume_continues_bit_exactly(objective: str, data: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    pretrain(small_spec(objective, data, full, workers=1))
    part = tmp_path / "part"
    pretrain(small_spec(objective, data, part, steps=7))
    spec = small_spec(objective, data, part)
    spec.resume = True
    pretrain(spec)
    a, b = losses(full), losses(part)
    assert sorted(b) == list(range(1, 13)), "each step logged once after resume"
    assert a == b, "a resumed run repeats the uninterrupted one exactly"


def test_a_run_resumed_between_metrics_lines_logs_what_it_would_have(data: Path, tmp_path: Path) -> None:
    """Killed after the step-4 checkpoint with lines every 3 steps: the step-6 line still
    averages steps 4-6, not only the steps since the resume."""
    settings = {"log_every": 3, "save_every": 4, "keep_checkpoints": 5}
    full = tmp_path / "full"
    pretrain(small_spec("mlm", data, full, **settings))
    crashed = tmp_path / "crashed"
    shutil.copytree(full, crashed, symlinks=True)
    for later in ("step-000008", "step-000012"):
        shutil.rmtree(crashed / "checkpoints" / later)
    (crashed / "checkpoint").unlink()  # it pointed at step 12: the step-4 checkpoint is the latest
    spec = small_spec("mlm", data, crashed, **settings)
    spec.resume = True
    pretrain(spec)
    assert losses(crashed) == losses(full) and sorted(losses(full)) == [3, 6, 9, 12]


def test_a_checkpoint_without_its_data_position_is_refused_not_resumed_elsewhere(data: Path, tmp_path: Path) -> None:
    """Before `examples`, a checkpoint counted batches of a size it did not record: resuming it
    with another batch size would silently replay or skip data."""
    run = tmp_path / "run"
    pretrain(small_spec("mlm", data, run, steps=3))
    state_file = latest_checkpoint(run) / "state.json"
    state = json.loads(state_file.read_text())
    del state["trainer"]["examples"]
    state_file.write_text(json.dumps(state))
    spec = small_spec("mlm", data, run, steps=6, batch_size=8)
    spec.resume = True
    with pytest.raises(UserError, match="how much data the run has consumed") as err:
        pretrain(spec)
    assert str(latest_checkpoint(run).parent.parent) in str(err.value)


def test_checkpoint_round_trip_restores_optimizer_and_rng(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt = make_optimizer(model, TrainConfig())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    torch.manual_seed(5)
    save_checkpoint(tmp_path, model, opt, {"step": 1})
    expected = torch.rand(3)
    clone = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    opt2 = make_optimizer(clone, TrainConfig())
    state = load_checkpoint(latest_checkpoint(tmp_path), clone, opt2)
    assert state == {"step": 1}
    assert torch.equal(torch.rand(3), expected)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(p, q)
        assert torch.equal(opt.state[p]["exp_avg_sq"], opt2.state[q]["exp_avg_sq"])
    assert opt2.param_groups[0]["betas"] == opt.param_groups[0]["betas"]


def test_interrupted_save_falls_back_to_previous_checkpoint(tmp_path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    opt = make_optimizer(model, TrainConfig())
    save_checkpoint(tmp_path, model, opt, {"step": 3})
    # a crash between the two renames of the next save leaves only the previous one, renamed
    shutil.move(tmp_path / "checkpoint", tmp_path / ".checkpoint.old")
    assert latest_checkpoint(tmp_path) == tmp_path / ".checkpoint.old"


def test_time_budget_stops_and_saves(data: Path, tmp_path: Path) -> None:
    summary = pretrain(small_spec("mlm", data, tmp_path / "r", steps=10_000, max_minutes=0.02))
    assert summary["stopped_by"] == "time" and 0 < summary["steps"] < 10_000
    assert (tmp_path / "r" / "model.safetensors").is_file()
    assert latest_checkpoint(tmp_path / "r") is not None


def test_a_run_its_clock_stopped_trains_no_further_step_when_resumed(data: Path, tmp_path: Path) -> None:
    first = pretrain(small_spec("mlm", data, tmp_path / "r", steps=10_000, max_minutes=0.02))
    weights = (tmp_path / "r" / "model.safetensors").read_bytes()
    spec = small_spec("mlm", data, tmp_path / "r", steps=10_000, max_minutes=0.02)
    again = pretrain(dataclasses.replace(spec, resume=True))
    assert again["steps"] == first["steps"] and again["stopped_by"] == "time"
    assert (tmp_path / "r" / "model.safetensors").read_bytes() == weights


@pytest.mark.parametrize("values, flag", [
    ({"steps": 10, "warmup": 20}, "--warmup"), ({"seq_len": 0}, "--seq-len"), ({"max_minutes": -1}, "--max-minutes"),
    ({"workers": -2}, "--workers"), ({"eval_batches": 0}, "--eval-batches"), ({"save_every": -1}, "--save-every"),
    ({"min_lr_ratio": 1.5}, "--min-lr-ratio"),
    # the Python API and YAML hand over what they were given: a quoted number is named, not compared
    ({"lr": "1e-3"}, "--lr"), ({"steps": "50"}, "--steps"), ({"max_minutes": "5"}, "--max-minutes"),
    ({"batch_size": 8.0}, "--batch-size"), ({"compile": "no"}, "--compile"), ({"beta2": 1.0}, "--beta2"),
    ({"warmup": True}, "--warmup"),
])
def test_settings_that_would_fail_or_mislead_mid_run_are_refused(values: dict, flag: str) -> None:
    with pytest.raises(UserError) as caught:
        TrainConfig(**values)
    assert caught.value.where == flag
    assert TrainConfig(steps=10, warmup=10).warmup == 10 and TrainConfig(max_minutes=1, warmup=500).time_bound


def test_non_finite_steps_are_skipped_then_the_run_stops(data: Path, tmp_path: Path) -> None:
    from ptmkit.errors import UserError
    spec = small_spec("mlm", data, tmp_path / "r", steps=40, lr=1e30, warmup=1, save_every=1, max_bad_steps=3)
    with pytest.raises(UserError, match=r"3 non-finite steps in a row.*last good checkpoint: .*checkpoint \(step \d+\)"):
        pretrain(spec)
    lines = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert any(l.get("skipped", 0) > 0 for l in lines)
    for path in (tmp_path / "r" / "checkpoint" / "model.safetensors",):
        from safetensors.torch import load_file
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values()), "skipped steps never reach the weights"


def test_outputs_follow_the_umask_not_safetensors_0600(data: Path, tmp_path: Path) -> None:
    import os
    import stat
    pretrain(small_spec("mlm", data, tmp_path / "r", steps=2))
    umask = os.umask(0)
    os.umask(umask)
    for path in [tmp_path / "r" / "model.safetensors", *(tmp_path / "r" / "checkpoint").resolve().iterdir()]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask, path


def test_resume_before_the_first_checkpoint_starts_over_without_doubling_metrics(data: Path, tmp_path: Path) -> None:
    """Killed before its first save (the default saves only at the end): --resume trains from
    step 0 again, and metrics.jsonl holds each step once, the fresh run's."""
    fresh = tmp_path / "fresh"
    pretrain(small_spec("mlm", data, fresh, steps=3))
    killed = tmp_path / "killed"
    pretrain(small_spec("mlm", data, killed, steps=5))
    for name in ("checkpoints", "checkpoint", "model.safetensors", "summary.json"):  # as kill -9 at step 5 leaves it
        path = killed / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    with open(killed / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')  # a line cut short by the kill
    spec = small_spec("mlm", data, killed, steps=3)
    spec.resume = True
    with pytest.warns(UserWarning, match="no checkpoint to resume"):
        pretrain(spec)
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3] and losses(killed) == losses(fresh)


@pytest.mark.parametrize("batch_size, grad_accum", [(8, 1), (4, 2), (2, 4)])
def test_count_metrics_are_summed_over_micro_batches(batch_size: int, grad_accum: int, tmp_path: Path) -> None:
    """An objective's `predicted` (labelled positions) is the step's total whatever the
    micro-batching, and its accuracy the mean: 4 x 2 examples log what 1 x 8 does."""
    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple:
        loss = model(batch["x"]).sum() * 0
        return loss, {"predicted": float(batch["x"].shape[0]), "accuracy": 0.5}

    batches = ({"x": torch.randn(batch_size, 4)} for _ in range(100))
    cfg = TrainConfig(steps=1, batch_size=batch_size, grad_accum=grad_accum, warmup=1, log_every=1,
                      eval_every=100, workers=0)
    Trainer(torch.nn.Linear(4, 1), loss_fn, cfg, tmp_path, count_tokens=lambda batch: batch["x"].shape[0],
            progress=False).fit(batches)
    [line] = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert line["predicted"] == 8 and line["accuracy"] == 0.5


class _DeviceCopy(torch.Tensor):
    """Marks the tensors `to_device` made (the device's, on a GPU) and counts the host's reads of
    them and of what is computed from them: on a GPU each read waits for the device."""

    reads = 0

    def __float__(self) -> float:
        _DeviceCopy.reads += 1
        return float(self.as_subclass(torch.Tensor))

    def item(self) -> float:
        _DeviceCopy.reads += 1
        return self.as_subclass(torch.Tensor).item()


def test_a_step_counts_on_the_host_and_reads_its_loss_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With gradient accumulation, tokens and loss weights are counted on the host's batches and
    the step's loss is read once, not once per micro-batch: each of those reads would stall a GPU."""
    import ptmkit.train.loop as loop
    monkeypatch.setattr(loop, "to_device",
                        lambda batch, device: {k: v.as_subclass(_DeviceCopy) for k, v in batch.items()})
    monkeypatch.setattr(_DeviceCopy, "reads", 0)
    counted: list[type] = []

    def count_tokens(batch: dict) -> int:
        counted.append(type(batch["x"]))
        return int((batch["y"] >= 0).sum())

    def loss_weight(batch: dict) -> int:
        counted.append(type(batch["y"]))
        return int((batch["y"] >= 0).sum())

    def loss_fn(model: torch.nn.Module, batch: dict) -> tuple:
        return torch.nn.functional.cross_entropy(model(batch["x"]), batch["y"], ignore_index=-1), {}

    generator = torch.Generator().manual_seed(0)
    batches = ({"x": torch.randn(2, 4, generator=generator),
                "y": torch.tensor([int(torch.randint(0, 3, (), generator=generator)), -1 if i % 2 else 1])}
               for i in range(100))
    torch.manual_seed(0)
    cfg = TrainConfig(steps=3, batch_size=2, grad_accum=4, warmup=1, log_every=1, eval_every=100, workers=0)
    trainer = Trainer(torch.nn.Linear(4, 3), loss_fn, cfg, tmp_path, count_tokens=count_tokens,
                      loss_weight=loss_weight, progress=False)
    summary = trainer.fit(batches)
    assert summary["steps"] == 3 and summary["tokens"] == 6 * 2 + 6 * 1  # 12 micro-batches
    assert counted and set(counted) == {torch.Tensor}, "counted on the host's batches"
    assert _DeviceCopy.reads == 3, "one read of the loss per step"
