"""Checkpoints without pickle: safetensors for tensors, JSON for everything else, written atomically.

``RUN/checkpoint/`` always holds the latest *complete* checkpoint: a new one is written to a
temporary sibling and swapped in with renames, so a crash mid-save leaves the previous one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, load_model, save_file, save_model
from torch import nn

from ptmkit.errors import UserError

CHECKPOINT = "checkpoint"


def atomic_save_model(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    """Weights as safetensors (shared/tied tensors stored once), via a temp file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    save_model(model, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def load_weights(model: nn.Module, path: Path) -> None:
    """Load safetensors weights strictly; a mismatch is the user's (wrong run or size)."""
    if not path.is_file():
        raise UserError("weights file not found", str(path), "point at a finished run directory")
    try:
        load_model(model, str(path), strict=True)
    except (RuntimeError, KeyError, ValueError) as err:
        first = str(err).strip().splitlines()[0][:200]
        raise UserError(f"weights do not fit this model: {first}", str(path),
                        "use the same --model size and tokenizer as the run that wrote them") from None


def rng_state() -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Python, numpy and torch RNG states as (JSON part, tensor part)."""
    py = random.getstate()
    np_state = np.random.get_state(legacy=False)
    np_state["state"]["key"] = np_state["state"]["key"].tolist()
    return ({"python": [py[0], list(py[1]), py[2]], "numpy": np_state},
            {"rng.torch": torch.get_rng_state()})


def set_rng_state(json_part: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    version, state, gauss = json_part["python"]
    random.setstate((version, tuple(state), gauss))
    np_state = json_part["numpy"]
    np_state["state"]["key"] = np.asarray(np_state["state"]["key"], dtype=np.uint32)
    np.random.set_state(np_state)
    torch.set_rng_state(tensors["rng.torch"])


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{key}"] = value.contiguous()
            else:
                scalars[f"{index}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


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
                    trainer_state: dict[str, Any]) -> Path:
    """Write model, optimizer, RNG and trainer state (step, data position...) atomically."""
    final = run / CHECKPOINT
    tmp = Path(tempfile.mkdtemp(prefix=f".{CHECKPOINT}.tmp-", dir=run))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        optim_tensors, optim_meta = _flatten_optimizer(optimizer.state_dict())
        rng_json, rng_tensors = rng_state()
        save_file({**optim_tensors, **rng_tensors}, str(tmp / "state.safetensors"))
        state = {"trainer": trainer_state, "optimizer": optim_meta, "rng": rng_json}
        (tmp / "state.json").write_text(json.dumps(state))
        old = run / f".{CHECKPOINT}.old"
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def latest_checkpoint(run: Path) -> Path | None:
    """The newest complete checkpoint (the previous one if a crash hit between the renames)."""
    for candidate in (run / CHECKPOINT, run / f".{CHECKPOINT}.old"):
        if (candidate / "state.json").is_file():
            return candidate
    return None


def load_checkpoint(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Restore model, optimizer and RNG states; returns the trainer state."""
    try:
        state = json.loads((path / "state.json").read_text())
        tensors = load_file(str(path / "state.safetensors"))
    except (OSError, ValueError) as err:
        raise UserError(f"corrupt checkpoint ({err.__class__.__name__})", str(path),
                        "delete the checkpoint directory to start over, or restore a backup") from None
    load_weights(model, path / "model.safetensors")
    optimizer.load_state_dict(_unflatten_optimizer(tensors, state["optimizer"]))
    set_rng_state(state["rng"], tensors)
    return state["trainer"]
