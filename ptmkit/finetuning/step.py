"""One optimizer step of fine-tuning, shared by the whole model's epochs and the head's own."""

from __future__ import annotations

import torch

from ptmkit.finetuning.model import TaskModel
from ptmkit.finetuning.tasks import Task
from ptmkit.train.host import device_of, to_device
from ptmkit.train.loop import autocast


def train_step(model: TaskModel, task: Task, items: list, optimizer: torch.optim.Optimizer, lr: float,
               precision: str, clip_norm: float | None) -> float:
    """Collate `items`, step `optimizer` at `lr` (times each group's `lr_scale`), gradients
    clipped to `clip_norm` unless None; returns the batch's loss."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
    device = device_of(model)
    batch = to_device(task.collate(items), device)
    with autocast(precision, device):
        loss = task.loss(model(batch), batch)
    loss.backward()
    if clip_norm is not None:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())
