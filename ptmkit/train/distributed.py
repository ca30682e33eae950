"""Training on several processes launched by torchrun: the one module that imports torch.distributed.

torchrun starts one process per device and sets RANK, WORLD_SIZE and LOCAL_RANK. `Distributed`
joins them into a process group (nccl on CUDA, each process on the GPU its LOCAL_RANK names; gloo
on CPU) and wraps the model:

* ``ddp``: every process holds the whole model; DistributedDataParallel averages the gradients.
* ``fsdp``: FSDP2 (`fully_shard` on each Transformer block, then on the root) shards parameters,
  gradients and Adam moments over the processes; with ``--precision bf16`` the gathered parameters
  are bf16 and gradients are reduced in fp32.

Objectives compute their loss through model *methods* (``model.encode``, ``model.logits``), which
would bypass the forward hooks DDP and FSDP rely on, so the wrapped module is `ObjectiveForward`:
its ``forward(batch)`` runs ``loss_fn(model, batch)``, and the trainer calls ``wrapped(batch)``.

A process group the caller started (e.g. under ``torch.multiprocessing.spawn``) is joined as it
is: its size decides the mode and each process takes GPU ``rank % GPUs`` unless LOCAL_RANK says
otherwise. Without either (``--distributed`` given in a plain process) the group has one process,
which exercises the same code paths.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Callable, Iterable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ptmkit.errors import UserError
from ptmkit.model.backbone import Block

MODES = ("ddp", "fsdp")
TORCHRUN_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
PATIENT_TIMEOUT = timedelta(days=7)
"""How long `Distributed.main_alone` waits for rank 0."""


def unavailable() -> str | None:
    """Why this machine cannot run a process group (None when it can): no torch.distributed, or
    neither GPUs (nccl) nor gloo."""
    if not dist.is_available():
        return "this torch build has no torch.distributed"
    if not (torch.cuda.is_available() and dist.is_nccl_available()) and not dist.is_gloo_available():
        return "neither nccl with GPUs nor gloo is available"
    return None


def launched_by_torchrun() -> bool:
    return all(name in os.environ for name in TORCHRUN_VARIABLES)


def resolve_mode(flag: str | None) -> str | None:
    """`--distributed` as given; else ddp when several processes run (torchrun's, or a process
    group the caller started); else None."""
    if flag is not None:
        if flag not in MODES:
            raise UserError(f"unknown --distributed mode {flag!r}", "--distributed", "use ddp or fsdp")
        return flag
    return "ddp" if world_size() > 1 else None


def world_size() -> int:
    """How many processes share the training: the caller's process group, else torchrun's."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def _local_rank(rank: int) -> int:
    """This process's GPU on its node: torchrun's LOCAL_RANK, else (a group started without it) the
    global rank modulo the GPUs here, so that processes on one node do not all share cuda:0."""
    if "LOCAL_RANK" in os.environ:
        return int(os.environ["LOCAL_RANK"])
    return rank % torch.cuda.device_count() if torch.cuda.is_available() else 0


class ObjectiveForward(nn.Module):
    """``forward(batch) = loss_fn(model, batch)``: gives DDP/FSDP the forward call they hook into."""

    def __init__(self, model: nn.Module, loss_fn: Callable) -> None:
        super().__init__()
        self.model = model
        self.loss_fn = loss_fn

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        return self.loss_fn(self.model, batch)


class Distributed:
    """This process's place in the group, and the collectives the trainer needs."""

    def __init__(self, mode: str) -> None:
        if mode not in MODES:
            raise UserError(f"unknown --distributed mode {mode!r}", "--distributed", "use ddp or fsdp")
        if not dist.is_available():
            raise UserError("this torch build has no torch.distributed", "--distributed",
                            "install a torch build with distributed support or drop --distributed")
        self.mode = mode
        torchrun = launched_by_torchrun()
        self.owns_group = not dist.is_initialized()
        # which GPU: the caller's group (e.g. mp.spawn) knows its rank, maybe without torchrun's variables
        rank = dist.get_rank() if not self.owns_group else int(os.environ["RANK"]) if torchrun else 0
        self.local_rank = _local_rank(rank)
        if torch.cuda.is_available():
            if self.local_rank >= torch.cuda.device_count():
                raise UserError(f"LOCAL_RANK {self.local_rank} but only {torch.cuda.device_count()} GPUs",
                                "torchrun", "use --nproc_per_node at most the number of GPUs")
            self.device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(self.device)
            backend = "nccl"
        else:
            if not dist.is_gloo_available():
                raise UserError("no gloo backend for CPU processes", "--distributed",
                                "install a torch build with gloo, or train on GPUs")
            self.device = torch.device("cpu")
            backend = "gloo"
        self.backend = backend if self.owns_group else str(dist.get_backend())
        if self.owns_group:
            if torchrun:
                dist.init_process_group(backend, device_id=self.device if backend == "nccl" else None)
            else:  # a group of one: the same code paths without a launcher
                dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        self.rank, self.world = dist.get_rank(), dist.get_world_size()

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory and shows progress."""
        return self.rank == 0

    def close(self) -> None:
        # The finished run's DDP/FSDP wrapper sits in a reference cycle that holds the group; left to
        # the collector it may be torn down during interpreter exit, where gloo aborts the process.
        gc.collect()
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()

    # ---- collectives ---------------------------------------------------------------------
    def barrier(self) -> None:
        if self.backend == "nccl":
            dist.barrier(device_ids=[self.device.index])
        else:
            dist.barrier()

    @contextlib.contextmanager
    def main_alone(self) -> Iterator[None]:
        """Rank 0 does the work in the body alone (e.g. training a tokenizer and preparing the
        shards of a large --corpus, which can take hours); the others wait at its end as long as
        that takes. The group's own collectives (and its store) give up after a timeout (nccl 10
        minutes, gloo 30) that would kill the waiting processes, so they wait in a gloo group of
        their own, set up by every process before rank 0 starts."""
        group = None
        if self.world > 1 and dist.is_gloo_available():
            group = dist.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)
        yield
        if group is not None:
            dist.barrier(group=group)
        elif self.world > 1:
            self.barrier()

    def sum(self, values: list[float | Tensor]) -> list[float]:
        """Element-wise sum over all processes (float64, so token counts stay exact). A value may
        be a one-element tensor on this process's device: it joins the reduction where it is,
        so the result is the one time the host waits for the device."""
        tensor = torch.tensor([0.0 if torch.is_tensor(v) else float(v) for v in values], dtype=torch.float64)
        tensor = tensor.to(self.device, non_blocking=True)  # a GPU copy that waits for nothing
        for index, value in enumerate(values):
            if torch.is_tensor(value):
                tensor[index] = value.reshape(())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def gather(self, value: Any) -> list[Any]:
        """Every process's `value` (any picklable object), in rank order, on every process."""
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    # ---- the model -----------------------------------------------------------------------
    def wrap(self, model: nn.Module, loss_fn: Callable, precision: str) -> nn.Module:
        """`model` (already on `self.device`) inside DDP or FSDP2, called as ``wrapped(batch)``."""
        module = ObjectiveForward(model, loss_fn)
        if self.mode == "ddp":
            from torch.nn.parallel import DistributedDataParallel
            # no buffer changes in training (so no sync per forward: ranks may run different
            # numbers of them), and every objective uses all its parameters
            return DistributedDataParallel(module, device_ids=[self.device.index] if self.device.type == "cuda"
                                           else None, forward_sync_buffers=False)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        policy = (MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
                  if precision == "bf16" else MixedPrecisionPolicy())
        for block in [m for m in model.modules() if isinstance(m, Block)]:
            fully_shard(block, mp_policy=policy)
        fully_shard(module, mp_policy=policy)  # the root: embeddings, heads, final norms
        return module

    def grad_sync(self, module: nn.Module, enabled: bool) -> contextlib.AbstractContextManager:
        """Around a micro-batch's forward and backward: no gradient reduction unless `enabled`
        (gradient accumulation reduces once, on the last micro-batch)."""
        if enabled:
            return contextlib.nullcontext()
        if self.mode == "ddp":
            return module.no_sync()
        return _fsdp_no_sync(module)

    def clip_grad_norm(self, parameters: Iterable[nn.Parameter], max_norm: float) -> float:
        """The global gradient norm (before clipping), the same number on every process."""
        from torch.distributed.tensor import DTensor
        norm = torch.nn.utils.clip_grad_norm_(parameters, max_norm)
        if isinstance(norm, DTensor):
            norm = norm.full_tensor()
        return float(norm)

    def full_state_dict(self, model: nn.Module) -> dict[str, Tensor] | None:
        """The whole model's weights on CPU in rank 0 (None elsewhere); FSDP gathers the shards,
        so every process must call this."""
        if self.mode == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
            state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            return state if self.is_main else None
        return {k: v.detach().cpu() for k, v in model.state_dict().items()} if self.is_main else None

    def save_sharded(self, model: nn.Module, optimizer: torch.optim.Optimizer, path: Path) -> None:
        """Model and optimizer shards through torch.distributed.checkpoint (every process writes)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_state_dict
        model_state, optim_state = get_state_dict(model, optimizer)
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(path))


@contextlib.contextmanager
def _fsdp_no_sync(module: nn.Module):
    module.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        module.set_requires_gradient_sync(True)


def load_sharded(model: nn.Module, optimizer: torch.optim.Optimizer, path: Path,
                 distributed: Distributed | None) -> None:
    """Load a torch.distributed.checkpoint into `model` and `optimizer`, whatever the number of
    processes that wrote it and that read it (FSDP, DDP or one plain process): DCP reshards."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    with warnings.catch_warnings():  # "assuming the intent is to load in a single process": it is
        warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
        dcp.load(state, checkpoint_id=str(path), no_dist=distributed is None)
    from ptmkit.train.checkpoint import keep_kernel_options
    keep_kernel_options(optimizer, state["optim"]["param_groups"])  # fused stays fused
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
