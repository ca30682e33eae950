"""The one training loop, for every objective: batch -> objective.loss -> backward -> AdamW step.

The loop never looks at which objective it runs. It owns the optimizer, the learning-rate
schedule, precision, gradient accumulation and clipping, logging to ``metrics.jsonl``,
validation, checkpoints and the time budget.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from tqdm import tqdm

from ptmkit.errors import RunStopped, UserError, check_values, is_number, is_whole
from ptmkit.train.checkpoint import (atomic_save_model, atomic_save_state, latest_checkpoint, load_checkpoint,
                                     remove_partial_checkpoints, save_checkpoint)
from ptmkit.train.host import to_device, warn_if_emulated_bf16

LossFn = Callable[[nn.Module, dict[str, Tensor]], tuple[Tensor, dict[str, float]]]
LossWeight = Callable[[dict[str, Tensor]], "int | None"]
PRECISIONS = ("fp32", "bf16")
"""No fp16: it needs loss scaling, which the loop does not do."""


@dataclass(kw_only=True)
class TrainConfig:
    """Optimisation settings shared by pre-training and fine-tuning."""

    steps: int | None = None
    """Optimizer steps; None = 1000, or unbounded when `max_minutes` is set (the wall clock ends
    the run)."""
    batch_size: int = 32
    """Examples per batch *per process*: one optimizer step sees batch_size x processes x
    grad_accum examples."""
    seq_len: int = 128
    lr: float = 5e-4
    warmup: int = -1
    """Linear warm-up steps; -1 means 6% of the steps (100 under a pure time budget). Under a
    time budget warm-up also ends at 6% of the clock."""
    schedule: str = "linear"
    """Decay after warm-up: linear, cosine or constant."""
    min_lr_ratio: float = 0.0
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-6
    grad_clip: float = 1.0
    grad_accum: int = 1
    precision: str = "fp32"
    compile: bool = False
    max_minutes: float = 0.0
    """Stop (and save) after this much wall clock; 0 = no limit."""
    seed: int = 0
    log_every: int = 0
    """Steps between metrics lines; 0 = about 100 lines per run."""
    eval_every: int = 0
    """Steps between validation losses; 0 = ten times per run."""
    eval_batches: int = 20
    save_every: int = 0
    """Steps between checkpoints; 0 = only at the end (and on SIGTERM/SIGINT)."""
    keep_checkpoints: int = 2
    """Checkpoints kept in RUN/checkpoints/ (the newest ones)."""
    workers: int = 1
    """DataLoader processes building the noise; 0 = in the main process."""
    max_bad_steps: int = 5
    """Consecutive non-finite steps (skipped) after which the run stops."""

    def __post_init__(self) -> None:
        if self.steps is None:
            self.steps = UNBOUNDED_STEPS if is_number(self.max_minutes) and self.max_minutes > 0 else 1000

        def whole(name: str, least: int, fix: str) -> tuple[str, bool, str]:
            value = getattr(self, name)  # a quoted "4" (Python API, YAML) is refused, not compared
            return name, is_whole(value) and value >= least, fix

        def number(name: str, ok: Callable[[float], bool], fix: str) -> tuple[str, bool, str]:
            value = getattr(self, name)
            return name, is_number(value) and ok(value), fix

        checks = [whole("steps", 1, "use at least 1"), whole("batch_size", 1, "use at least 1"),
                  number("lr", lambda v: v > 0, "use a positive learning rate"),
                  whole("warmup", -1, "use warm-up steps, or -1 (6% of the steps)"),
                  whole("grad_accum", 1, "use at least 1"),
                  whole("seed", 0, "use 0 or more (numpy seeds the data order with it)"),
                  whole("keep_checkpoints", 1, "use at least 1"), whole("seq_len", 1, "use at least 1"),
                  number("max_minutes", lambda v: v >= 0, "use minutes > 0, or 0 for no limit"),
                  whole("workers", 0, "use 0 (in the main process) or more"),
                  whole("eval_batches", 1, "use at least 1"),
                  whole("save_every", 0, "use steps between checkpoints, or 0 (at the end)"),
                  whole("log_every", 0, "use steps between metrics lines, or 0 (about 100 lines)"),
                  whole("eval_every", 0, "use steps between validations, or 0 (ten per run)"),
                  whole("max_bad_steps", 1, "use at least 1"),
                  number("min_lr_ratio", lambda v: 0 <= v <= 1, "use a share of the peak rate in [0, 1]"),
                  *(number(name, lambda v: v >= 0, "use a number >= 0")
                    for name in ("weight_decay", "eps", "grad_clip")),
                  *(number(name, lambda v: 0 <= v < 1, "use a number in [0, 1)") for name in ("beta1", "beta2")),
                  ("compile", isinstance(self.compile, bool), "use true or false"),
                  ("precision", self.precision in PRECISIONS, "use fp32 or bf16"),
                  ("schedule", self.schedule in ("linear", "cosine", "constant"),
                   "use linear, cosine or constant")]
        check_values(self, checks, lambda name: "--" + name.replace("_", "-"))
        if self.warmup > self.steps and not self.time_bound:  # the rate would never reach its peak or decay
            raise UserError(f"--warmup {self.warmup} is longer than the run's {self.steps} steps", "--warmup",
                            f"use fewer warm-up steps than --steps (or -1: 6% of them, {max(1, round(0.06 * self.steps))})")
        if self.warmup < 0:  # a pure time budget has no step count to take 6% of
            self.warmup = 100 if self.time_bound else max(1, round(0.06 * self.steps))
        # a time budget has no meaningful step count to divide: log and evaluate at fixed steps
        if self.log_every <= 0:
            self.log_every = 10 if self.time_bound else max(1, self.steps // 100)
        if self.eval_every <= 0:
            self.eval_every = 500 if self.time_bound else max(1, self.steps // 10)

    @property
    def time_bound(self) -> bool:
        """True when the wall-clock budget, not the step count, ends the run."""
        return self.max_minutes > 0 and self.steps >= UNBOUNDED_STEPS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


COUNT_METRICS = frozenset({"predicted"})
"""Metrics a loss reports that are counts (the objectives' labelled positions): a step sums them
over its micro-batches and processes, where the others are averaged, so that 2 processes x 4
examples log what 1 x 8 does."""

UNBOUNDED_STEPS = 10**8
"""`steps` at or above this with `max_minutes` means "as many steps as the time allows"."""


WARMUP_CLOCK_SHARE = 0.06
"""Under a time budget, warm-up ends after this share of the clock if its steps have not: at a
few seconds a step on a slow machine, 100 warm-up steps were a 5-minute budget's whole run."""


def learning_rate(cfg: TrainConfig, step: int, elapsed_s: float = 0.0) -> float:
    """Warm-up then linear/cosine decay to lr * min_lr_ratio.

    A function of the step alone (so resuming is exact), except under a time budget, where
    warm-up ends after `warmup` steps or WARMUP_CLOCK_SHARE of the clock, whichever comes first,
    and the decay follows whichever of steps and wall clock is further along past warm-up.
    """
    clock = elapsed_s / (cfg.max_minutes * 60) if cfg.max_minutes > 0 else 0.0
    warm = (step + 1) / cfg.warmup if cfg.warmup > 0 else 1.0
    if cfg.max_minutes > 0:
        warm = max(warm, clock / WARMUP_CLOCK_SHARE)
    if warm < 1:
        return cfg.lr * warm
    if cfg.schedule == "constant":
        return cfg.lr
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.max_minutes > 0:
        progress = max(progress, (clock - WARMUP_CLOCK_SHARE) / (1 - WARMUP_CLOCK_SHARE))
    progress = min(1.0, max(0.0, progress))
    shape = 1 - progress if cfg.schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return cfg.lr * (cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * shape)


def make_optimizer(model: nn.Module, cfg: TrainConfig,
                   lr_scales: dict[str, float] | None = None) -> torch.optim.Optimizer:
    """AdamW; matrices decay, biases and norms do not (the BERT convention). `lr_scales` maps
    parameter names to learning-rate factors (default 1); each group keeps its `lr_scale`."""
    scales = lr_scales or {}
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((scales.get(name, 1.0), param.ndim >= 2), []).append(param)
    return torch.optim.AdamW(
        [{"params": params, "weight_decay": cfg.weight_decay if decays else 0.0, "lr_scale": scale}
         for (scale, decays), params in sorted(groups.items(), key=lambda g: (-g[0][0], not g[0][1]))],
        lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, **_adamw_kernel(model))


def _adamw_kernel(model: nn.Module) -> dict[str, bool]:
    """The fused AdamW kernel where it applies (plain CPU/CUDA tensors: on CPU it is 5x faster
    than `foreach`, whose CPU version loops over the tensors); `foreach` for sharded (DTensor)
    parameters."""
    from torch.distributed.tensor import DTensor
    if all(not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda") for p in model.parameters()):
        return {"fused": True}
    return {"foreach": True}


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class _StopRequest:
    """Turns SIGTERM/SIGINT into a flag so the loop can save a checkpoint before exiting."""

    def __init__(self) -> None:
        self.signal: int | None = None

    def __enter__(self) -> "_StopRequest":
        self.previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signal = signum

    def __exit__(self, *exc: Any) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Trainer:
    """Runs `loss_fn` over `batches` for cfg.steps optimizer steps, writing into `run`.

    `loss_weight(batch)`, when given and not None, is the number of positions the batch's loss
    averages over: a step split into micro-batches (gradient accumulation) or over processes then
    weights each part by it, so the step's loss and gradient are those of the one big batch.

    With `distributed` (a `ptmkit.train.distributed.Distributed`) the model runs wrapped in DDP or
    FSDP, logged numbers are reduced over the processes (loss: token mean of the global batch,
    tokens: summed), validation batches are spread over the processes and their losses averaged,
    and only rank 0 writes to `run` (metrics, checkpoints, weights) and shows progress.
    """

    def __init__(self, model: nn.Module, loss_fn: LossFn, cfg: TrainConfig, run: Path, *,
                 count_tokens: Callable[[dict[str, Tensor]], int],
                 validation: Iterable[dict[str, Tensor]] = (), device: torch.device | None = None,
                 progress: bool = True, loss_weight: LossWeight | None = None,
                 distributed: Any = None) -> None:
        self.cfg, self.run = cfg, run
        self.dist = distributed
        self.is_main = distributed is None or distributed.is_main
        self.world = distributed.world if distributed is not None else 1
        self.progress = progress and self.is_main
        self.device = device or torch.device("cpu")
        if self.is_main:
            warn_if_emulated_bf16(cfg.precision, self.device)
        self.model = model.to(self.device)
        self.loss_fn = torch.compile(loss_fn) if cfg.compile else loss_fn
        self.wrapped = distributed.wrap(self.model, self.loss_fn, cfg.precision) if distributed is not None else None
        self.optimizer = make_optimizer(model, cfg)  # after wrapping: FSDP replaced the parameters
        self.count_tokens, self.validation = count_tokens, list(validation)
        self.loss_weight = loss_weight
        self.step, self.tokens, self.elapsed, self.bad_steps = 0, 0, 0.0, 0
        self.examples = 0
        # what the next metrics line averages (values since the last line, their tokens and
        # time); checkpointed, so a resumed run logs the lines an uninterrupted one would
        self.window: dict[str, Any] = {"values": {}, "tokens": 0, "seconds": 0.0}
        """Examples consumed by all processes together: the data position, whatever the split."""
        self._saved_step = -1

    # ---- state --------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {"step": self.step, "tokens": self.tokens, "elapsed_s": self.elapsed,
                "examples": self.examples,
                "world_size": self.world, "metrics_window": self.window}

    def skip_batches(self) -> int:
        """Batches this process's sampler skips to continue the data stream where it stopped
        (exact when the number of examples per step is unchanged, e.g. 2 x 4 resumed as 1 x 8)."""
        return self.examples // self.cfg.batch_size // self.world

    def resume(self) -> bool:
        """Restore the latest checkpoint of the run, if any. Returns whether one was found.

        Without one (a run killed before its first save) training starts again from step 0, and
        the lines the killed run logged are dropped: metrics.jsonl never holds a step twice."""
        path = latest_checkpoint(self.run)
        if path is None:
            if self.is_main:
                warnings.warn(f"{self.run}: no checkpoint to resume (the run stopped before its first "
                              "save; --save-every N saves every N steps): training starts from step 0",
                              stacklevel=2)
                remove_partial_checkpoints(self.run)
                self._truncate_metrics()
            return False
        state = load_checkpoint(path, self.model, self.optimizer, self.dist)
        self.step, self.tokens, self.elapsed = state["step"], state["tokens"], state["elapsed_s"]
        if "examples" not in state:  # written since the first release: older ones knew batches, not their size
            raise UserError("the checkpoint does not record how much data the run has consumed", str(path),
                            "start the run again (--overwrite) or resume it with the ptmkit that wrote it")
        self.examples = state["examples"]
        self.window = state.get("metrics_window", self.window)
        self._saved_step = self.step
        if self.is_main:
            remove_partial_checkpoints(self.run)
            self._truncate_metrics()
        return True

    def _truncate_metrics(self) -> None:
        """Drop lines logged after the checkpoint: the resumed run logs those steps again (a
        line cut short by a crash is dropped too)."""
        path = self.run / "metrics.jsonl"
        if path.is_file():
            kept = []
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue
                if isinstance(record, dict) and record.get("step", math.inf) <= self.step:
                    kept.append(line)
            tmp = path.with_name(f".{path.name}.tmp")  # a kill now must not lose the kept lines
            tmp.write_text("".join(line + "\n" for line in kept))
            os.replace(tmp, path)

    def save(self) -> None:
        if self._saved_step == self.step:  # e.g. --save-every then the end at the same step
            return
        save_checkpoint(self.run, self.model, self.optimizer, self.state(),
                        keep=self.cfg.keep_checkpoints, distributed=self.dist)
        self._saved_step = self.step

    def save_model(self, path: Path) -> None:
        """The weights alone (gathered from every process under FSDP), written by rank 0."""
        if self.dist is None:
            atomic_save_model(self.model, path)
            return
        state = self.dist.full_state_dict(self.model)
        if self.is_main:
            atomic_save_state(state, self.model, path)
        self.dist.barrier()

    # ---- loop ---------------------------------------------------------------------------
    def _loss(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        if self.wrapped is not None:
            return self.wrapped(batch)
        return self.loss_fn(self.model, batch)

    def _weights(self, batches: list[dict[str, Tensor]]) -> list[float] | None:
        """Each micro-batch's share of the step (its loss is scaled by it before backward), or
        None for equal shares. Scaled by the number of processes, as DDP/FSDP average gradients."""
        if self.loss_weight is None or len(batches) * self.world == 1:
            return None
        counts = [self.loss_weight(batch) for batch in batches]
        if any(c is None for c in counts):
            return None
        total = sum(counts)
        if self.dist is not None:
            total = self.dist.sum([float(total)])[0]
        return [c * self.world / total for c in counts] if total > 0 else None

    def train_step(self, batches: Iterator[dict[str, Tensor]]) -> tuple[float, dict[str, float], int]:
        lr = learning_rate(self.cfg, self.step, self.elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        extras: dict[str, float] = {}
        accum = self.cfg.grad_accum
        host = [next(batches) for _ in range(accum)]
        # counted on the host's batches: counting their device copies would make the CPU wait
        # for the GPU on every micro-batch
        weights = self._weights(host)
        tokens = sum(self.count_tokens(batch) for batch in host)
        micro = [to_device(batch, self.device) for batch in host]
        # the step's loss stays on the device (float64, as Python floats would add it) and is
        # read once, after the last backward
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for i, batch in enumerate(micro):
            sync = self.dist.grad_sync(self.wrapped, i == accum - 1) if self.dist is not None \
                else contextlib.nullcontext()
            with sync:
                with autocast(self.cfg.precision, self.device):
                    loss, metrics = self._loss(batch)
                (loss / accum if weights is None else loss * weights[i]).backward()
            share = 1 / accum if weights is None else weights[i]
            detached = loss.detach().double()
            total += detached / accum if weights is None else detached * share
            for key, value in metrics.items():
                part = value if key in COUNT_METRICS else value / accum if weights is None else value * share
                extras[key] = extras.get(key, 0.0) + part
        self.examples += accum * self.world * self.cfg.batch_size
        if self.dist is not None:  # the global batch's numbers, the same on every process
            reduced = self.dist.sum([total, *extras.values(), float(tokens)])
            total = reduced[0] / self.world
            extras = {key: value if key in COUNT_METRICS else value / self.world
                      for key, value in zip(extras, reduced[1:-1])}
            tokens = int(reduced[-1])
        else:
            total = float(total)
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        if self.dist is not None:
            grad_norm = self.dist.clip_grad_norm(self.model.parameters(), max_norm)
        else:
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm))
        finite = math.isfinite(total) and math.isfinite(grad_norm)
        if finite:  # a non-finite step is skipped: the weights and Adam moments stay clean
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps = 0 if finite else self.bad_steps + 1
        extras.update(lr=lr, grad_norm=grad_norm, skipped=float(not finite))
        return total, extras, tokens

    def _give_up(self, metrics_file: Any, bar: Any) -> None:
        """Too many non-finite steps in a row: stop without overwriting the last good state."""
        metrics_file.close()
        bar.close()
        last = latest_checkpoint(self.run)
        where = f"{last} (step {json.loads((last / 'state.json').read_text())['trainer']['step']})" \
            if last else "no checkpoint yet"
        raise RunStopped(f"{self.bad_steps} non-finite steps in a row at step {self.step}", str(self.run),
                        f"lower --lr or use --precision fp32; last good checkpoint: {where}")

    @torch.no_grad()
    def evaluate(self) -> float | None:
        """Mean loss over the validation batches; processes take every world-th batch (all run
        the same number of forwards, as FSDP needs) and the sums are reduced."""
        if not self.validation:
            return None
        root = self.wrapped if self.wrapped is not None else self.model
        root.eval()
        losses = []
        n = len(self.validation)
        rank = self.dist.rank if self.dist is not None else 0
        for index in range(rank, -(-n // self.world) * self.world, self.world):
            with autocast(self.cfg.precision, self.device):
                loss = float(self._loss(to_device(self.validation[index % n], self.device))[0])
            if index < n:  # past the end: a repeat that only keeps FSDP's collectives in step
                losses.append(loss)
        root.train()
        if self.dist is not None:
            total, count = self.dist.sum([sum(losses), float(len(losses))])
            return total / count
        return sum(losses) / len(losses)

    def fit(self, batches: Iterable[dict[str, Tensor]]) -> dict[str, Any]:
        """Train to cfg.steps (or the time budget); returns the final summary."""
        cfg, iterator = self.cfg, iter(batches)
        (self.wrapped if self.wrapped is not None else self.model).train()
        # rank 0 alone writes the run directory
        metrics_file = open(self.run / "metrics.jsonl" if self.is_main else os.devnull, "a")
        bar = tqdm(total=None if cfg.time_bound else cfg.steps, initial=self.step, desc="train", unit="step",
                   disable=not self.progress, dynamic_ncols=True, mininterval=1.0)
        window = self.window

        def out_of_time() -> bool:
            return bool(cfg.max_minutes) and self.elapsed >= cfg.max_minutes * 60

        # a resumed run that its clock had already stopped trains no further step
        stopped_by = "time" if out_of_time() else "steps"
        with _StopRequest() as stop:
            while self.step < cfg.steps and not out_of_time():
                start = time.perf_counter()
                loss, extras, tokens = self.train_step(iterator)
                took = time.perf_counter() - start
                stop_requested = stop.signal is not None
                if self.dist is not None:  # one clock and one decision to stop for all processes
                    took, stops = self.dist.sum([took, float(stop_requested)])
                    took, stop_requested = took / self.world, stops > 0
                self.step += 1
                self.tokens += tokens
                self.elapsed += took
                window["tokens"] += tokens
                window["seconds"] += took
                for key, value in {"loss": loss, **extras}.items():
                    if math.isfinite(value):  # a skipped step's NaN would poison the average
                        window["values"].setdefault(key, []).append(value)
                if self.bad_steps >= cfg.max_bad_steps:
                    self._give_up(metrics_file, bar)
                line: dict[str, Any] = {}
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    line = {k: sum(v) / len(v) for k, v in window["values"].items()}
                    line.update(step=self.step, tokens=self.tokens,
                                tokens_per_s=window["tokens"] / max(window["seconds"], 1e-9),
                                elapsed_s=round(self.elapsed, 3))
                    bar.set_postfix(loss=f"{line.get('loss', math.nan):.3f}", tok_s=f"{line['tokens_per_s']:.0f}")
                    window = self.window = {"values": {}, "tokens": 0, "seconds": 0.0}
                if self.step % cfg.eval_every == 0 or self.step == cfg.steps:
                    val = self.evaluate()
                    if val is not None:
                        line = {**line, "step": self.step, "val_loss": val}
                if line:
                    metrics_file.write(json.dumps(line) + "\n")
                    metrics_file.flush()
                bar.update(1)
                if cfg.save_every and self.step % cfg.save_every == 0:
                    self.save()
                if out_of_time():
                    stopped_by = "time"
                    break
                if stop_requested:
                    stopped_by = signal.Signals(stop.signal or signal.SIGTERM).name
                    break
        bar.close()
        metrics_file.close()
        self.save()
        self.save_model(self.run / "model.safetensors")
        summary = {"steps": self.step, "tokens": self.tokens, "train_seconds": round(self.elapsed, 2),
                   "tokens_per_s": self.tokens / max(self.elapsed, 1e-9), "stopped_by": stopped_by,
                   "final_val_loss": self.evaluate()}
        if stopped_by not in ("steps", "time"):
            raise KeyboardInterrupt(f"stopped by {stopped_by} at step {self.step}; "
                                    f"checkpoint saved, continue with --resume")
        return summary
