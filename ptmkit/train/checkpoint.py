"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

Each checkpoint is a directory ``RUN/checkpoints/step-NNNNNN/`` written under a temporary name
and renamed into place once complete; ``RUN/checkpoint`` is then re-pointed (a relative symlink,
swapped atomically) at the newest one and all but the last `keep` are deleted. A crash at any
moment therefore leaves a complete latest checkpoint: `latest_checkpoint` follows the link, and
falls back to the newest complete ``checkpoints/step-*``. Runs written before this layout (a
plain ``RUN/checkpoint/`` directory, ``RUN/.checkpoint.old``) are still read.

A checkpoint holds ``state.json`` (trainer state: step, tokens, data position; optimizer scalars;
Python/numpy RNG), ``state.safetensors`` (optimizer moments, torch RNG of each process) and the
weights: ``model.safetensors`` (single process, DDP: every process holds the full model), or
``dcp/`` for FSDP runs, a torch.distributed.checkpoint of the sharded model and optimizer that
loads onto any number of processes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ptmkit.errors import UserError
from ptmkit.fileio import share
from ptmkit.train.distributed import load_sharded

CHECKPOINT = "checkpoint"
"""RUN/checkpoint: the newest complete checkpoint (a link into RUN/checkpoints/)."""
CHECKPOINTS = "checkpoints"
SHARDED = "dcp"


def _fsync(path: Path) -> None:
    """Flush `path` (a file, or a directory's entries) to the disk. A rename is only atomic
    across a power loss or a node reset if what it makes visible was on the disk before it:
    otherwise the renamed checkpoint can come back with empty or partial files."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. directories cannot be opened on Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # a file system without fsync
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    """`_fsync` every file under the directory `path`, then the directories themselves."""
    for root, _, files in os.walk(path):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def _replace_durably(tmp: Path, path: Path) -> None:
    """Rename the complete file `tmp` over `path`, its data on the disk first."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def atomic_save_model(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Weights as safetensors (shared/tied tensors stored once), via a temp file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_model(model, str(tmp), metadata=metadata)
    _replace_durably(share(tmp), path)


def atomic_save_state(state: dict[str, torch.Tensor], model: nn.Module, path: Path) -> None:
    """A full state dict (e.g. gathered from FSDP shards) written as `save_model` would write
    `model`: tied parameters stored once, under the same name, so `load_weights` reads it."""
    state, metadata = dict(state), {}
    groups: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(param), []).append(name)
    for names in groups.values():
        keep, *others = sorted(names)
        for name in others:
            if name in state:
                del state[name]
                metadata[name] = keep
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_file({k: v.contiguous() for k, v in state.items()}, str(tmp), metadata={**metadata, "format": "pt"})
    _replace_durably(share(tmp), path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights strictly; a mismatch is the user's (wrong run or size)."""
    if not path.is_file():
        raise UserError("weights file not found", str(path), "point at a finished run directory")
    check_weights_file(path)
    try:
        load_model(model, str(path), strict=True)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise UserError(f"weights do not fit this model: {first}", str(path),
                        "use the same --model size and tokenizer as the run that wrote them") from None


def check_weights_file(path: Path) -> None:
    """A complete, readable safetensors file: opening it checks the header and that the data covers
    it, without reading the tensors (cheap enough to run before anything is written)."""
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except SafetensorError as err:
        raise UserError(f"corrupt or truncated weights file ({err})", str(path),
                        "copy the run again, or re-run the training that wrote it") from None


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python, numpy and torch (CPU, and the current GPU's) RNG states as (JSON part, tensor part)."""
    py = random.getstate()
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return ({"python": [py[0], list(py[1]), py[2]], "numpy": np_state}, _torch_rng())


def _torch_rng() -> dict[str, torch.Tensor]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors["rng.cuda"] = torch.cuda.get_rng_state()
    return tensors


def set_rng_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor], rank: int = 0) -> None:
    """Restore the states `rng_state` saved; process `rank` of a distributed run takes its own
    torch states (``rng.torch.rank1``...), or, written by fewer processes, states derived from
    rank 0's and its rank."""
    version, state, gauss = json_part["python"]
    random.setstate((version, tuple(state), gauss))
    np_state = json_part["numpy"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    suffix = f".rank{rank}" if rank else ""
    if rank and f"rng.torch{suffix}" not in tensors:
        torch.set_rng_state(tensors["rng.torch"])
        torch.manual_seed(int(torch.randint(0, 2**62, (1,))) + rank)
        return
    torch.set_rng_state(tensors[f"rng.torch{suffix}"])
    if f"rng.cuda{suffix}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"])


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


KERNEL_OPTIONS = ("fused", "foreach", "capturable", "differentiable")
"""Optimizer options that say how this process runs the update, not what it computes: a
checkpoint written by FSDP (``foreach``, for sharded parameters) must not turn the fused kernel of
the plain or DDP process that resumes it into the 4-5x slower ``foreach`` loop."""


def keep_kernel_options(optimizer: torch.optim.Optimizer, groups: list[dict[str, Any]]) -> None:
    """Overwrite the kernel options of saved param `groups` (about to be loaded into
    `optimizer`) with the optimizer's own."""
    for current, saved in zip(optimizer.param_groups, groups):
        for key in KERNEL_OPTIONS:
            if key in current:
                saved[key] = current[key]


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optim."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for name, value in meta["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    # JSON turned tuples such as AdamW's betas into lists; "params" is the only real list
    groups = [{k: (tuple(v) if isinstance(v, list) and k != "params" else v) for k, v in g.items()}
              for g in meta["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(run: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    trainer_state: dict[str, Any], *, keep: int = 2, distributed: Any = None,
                    extra: dict[str, torch.Tensor] | None = None) -> Path:
    """Write model, optimizer, RNG and trainer state (step, data position...) atomically as
    RUN/checkpoints/step-NNNNNN, point RUN/checkpoint at it and keep the newest `keep`.
    `extra` tensors (e.g. the best epoch's weights) come back from `load_extra`.

    With `distributed` (a `ptmkit.train.distributed.Distributed`) every process must call this:
    rank 0 writes, except that FSDP shards go through torch.distributed.checkpoint from every
    process into the temporary directory, which rank 0 renames after a barrier."""
    main = distributed is None or distributed.is_main
    sharded = distributed is not None and distributed.mode == "fsdp"
    name = f"step-{int(trainer_state.get('step', 0)):06d}"
    tmp = run / f".{CHECKPOINT}.tmp-{name}"
    final = run / CHECKPOINTS / name
    if main:
        _remove(tmp)  # left by a crash while saving this same step
        tmp.mkdir(parents=True)
    try:
        if distributed is not None:
            distributed.barrier()
        if sharded:
            distributed.save_sharded(model, optimizer, tmp / SHARDED)
        rng_json, rng_tensors = rng_state()
        if distributed is not None:  # each process's torch RNG: dropout differs across ranks
            for rank, states in enumerate(distributed.gather(rng_tensors)):
                if rank:
                    rng_tensors.update({f"{key}.rank{rank}": value for key, value in states.items()})
        if main:
            optim_tensors, optim_meta = {}, None
            if not sharded:
                save_model(model, str(tmp / "model.safetensors"))
                optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
            extra_tensors, aliases = _dedupe(extra or {})
            save_file({**optim_tensors, **rng_tensors, **{f"extra.{k}": v for k, v in extra_tensors.items()}},
                      str(tmp / "state.safetensors"))
            state = {"trainer": trainer_state, "optimizer": optim_meta, "rng": rng_json, "extra_aliases": aliases,
                     "format": SHARDED if sharded else "safetensors",
                     "world_size": distributed.world if distributed is not None else 1}
            (tmp / "state.json").write_text(json.dumps(state))
            share(tmp)
            _fsync_tree(tmp)  # on the disk before the renames make it the latest
            final.parent.mkdir(exist_ok=True)
            _swap_in(tmp, final, run / f".{CHECKPOINT}.trash-{name}")  # the same step saved again
            _fsync(final.parent)
            _point_latest(run, final)
            _fsync(run)
            _prune(run, keep, final)
    except BaseException:
        if main:
            _remove(tmp)
        raise
    if distributed is not None:
        distributed.barrier()
    return run / CHECKPOINT


def _dedupe(tensors: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Copies of the tensors, each storage once (tied weights): (kept, {alias: kept name})."""
    kept, aliases, seen = {}, {}, {}
    for name, tensor in tensors.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            kept[name] = tensor.detach().to("cpu", copy=True).contiguous()
    return kept, aliases


def load_extra(path: Path) -> dict[str, torch.Tensor]:
    """The `extra` tensors saved with a checkpoint."""
    tensors = load_file(str(path / "state.safetensors"))
    extra = {name[len("extra."):]: value for name, value in tensors.items() if name.startswith("extra.")}
    aliases = json.loads((path / "state.json").read_text()).get("extra_aliases", {})
    extra.update({alias: extra[name] for alias, name in aliases.items()})
    return extra


def remove_checkpoints(run: Path) -> None:
    """Delete every checkpoint of the run (a finished fine-tuning keeps only its weights)."""
    for path in (run / CHECKPOINT, run / f".{CHECKPOINT}.old", run / CHECKPOINTS):
        _remove(path)
    remove_partial_checkpoints(run)


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path, ignore_errors=True)


def _point_latest(run: Path, target: Path) -> None:
    """Swap RUN/checkpoint to a relative link to `target` in one rename."""
    link = run / CHECKPOINT
    tmp_link = run / f".{CHECKPOINT}.link-{os.getpid()}"
    _remove(tmp_link)
    os.symlink(os.path.relpath(target, run), tmp_link)
    _swap_in(tmp_link, link, run / f".{CHECKPOINT}.old")  # a directory: the older layout


def _swap_in(new: Path, target: Path, trash: Path) -> None:
    """Rename `new` to `target`. A directory already at `target` cannot be renamed over, so it
    is moved aside to `trash` first and removed once `new` is in place."""
    if target.is_dir() and not target.is_symlink():
        _remove(trash)
        os.replace(target, trash)
        os.replace(new, target)
        _remove(trash)
    else:
        os.replace(new, target)


def _step_dirs(run: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete RUN/checkpoints/step-* directories, oldest first."""
    found = []
    for path in (run / CHECKPOINTS).glob("step-*"):
        suffix = path.name[len("step-"):]
        if suffix.isdigit() and (path / "state.json").is_file():
            found.append((int(suffix), path))
    return sorted(found)


def _prune(run: Path, keep: int, current: Path) -> None:
    for _, path in _step_dirs(run)[:-max(1, keep)]:
        if path != current:
            _remove(path)


def remove_partial_checkpoints(run: Path) -> None:
    """Delete what a crash while saving left behind (temporary directories and links)."""
    for pattern in (f".{CHECKPOINT}.tmp-*", f".{CHECKPOINT}.trash-*", f".{CHECKPOINT}.link-*"):
        for path in run.glob(pattern):
            _remove(path)


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint: RUN/checkpoint, else (a crash between renames, or the
    older layout) RUN/.checkpoint.old, else the newest complete RUN/checkpoints/step-*."""
    found = _step_dirs(run)
    for candidate in (run / CHECKPOINT, run / f".{CHECKPOINT}.old"):
        if (candidate / "state.json").is_file():
            # a crash after renaming a new step directory into place but before re-pointing
            if found and candidate.resolve() != found[-1][1].resolve() and found[-1][0] > _step_of(candidate):
                return found[-1][1]
            return candidate
    return found[-1][1] if found else None


def _step_of(path: Path) -> int:
    try:
        return int(json.loads((path / "state.json").read_text())["trainer"].get("step", 0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return -1


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer,
                    distributed: Any = None) -> dict[str, Any]:
    """Restore model, optimizer and RNG states; returns the trainer state.

    A sharded (FSDP) checkpoint loads onto any number of processes and into DDP or a plain
    model; a full-weights checkpoint into a plain or DDP model, whatever its number of processes."""
    try:
        state = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "state.safetensors"))
    except (OSError, ValueError) as err:
        raise UserError(f"corrupt checkpoint ({err.__class__.__name__})", str(path),
                        "delete the checkpoint directory to start over, or restore a backup") from None
    if (path / SHARDED).is_dir():
        load_sharded(model, optimizer, path / SHARDED, distributed)
    else:
        if distributed is not None and distributed.mode == "fsdp":
            raise UserError("the checkpoint holds full weights (written by one process or by ddp)",
                            str(path), "resume it with --distributed ddp (or in one process)")
        load_weights(model, path / "model.safetensors")
        optim_state = _unflatten_optimizer(tensors, state["optimizer"])
        keep_kernel_options(optimizer, optim_state["param_groups"])
        optimizer.load_state_dict(optim_state)
    set_rng_state(state["rng"], tensors, distributed.rank if distributed is not None else 0)
    return state["trainer"]
