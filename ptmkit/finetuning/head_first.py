"""Fit the task head before fine-tuning the whole model (LP-FT: Kumar et al. 2022, "Fine-Tuning
can Distort Pretrained Features and Underperform Out-of-Distribution").

A freshly initialised head sends large, arbitrary gradients into the backbone during the first
steps of full fine-tuning; with a few hundred labels those steps reshape the pre-trained features
more than the labels justify, and how much depends on the seed. A head that already fits the
fixed features asks the backbone only for corrections. EXPERIMENTS E10, SST-2 at 1,000 labels:
a pre-trained encoder's five seeds spread over 2.9 points with it and 5.9 without, 0.8 higher on
average; a scratch model, whose features carry nothing yet, lost 0.6.
"""

from __future__ import annotations

import numpy as np
from tqdm import tqdm

from ptmkit.finetuning.data import batches_of
from ptmkit.finetuning.model import TaskModel
from ptmkit.finetuning.tasks import Task
from ptmkit.finetuning.step import train_step
from ptmkit.train.loop import TrainConfig, learning_rate, make_optimizer


def fit_head(model: TaskModel, task: Task, train: list, *, epochs: int, lr: float, batch_size: int,
             warmup_ratio: float, weight_decay: float, precision: str, seed: int, progress: bool = False) -> float:
    """Train only `model.head` for `epochs` passes over `train`, the backbone fixed and in eval
    mode (the features as pre-training left them, without dropout); warm-up then linear decay, as
    fine-tuning's own schedule. Returns the last epoch's mean loss. The backbone's parameters
    train again afterwards exactly as they did before."""
    trainable = [p for p in model.backbone.parameters() if p.requires_grad]
    steps_per_epoch = -(-len(train) // batch_size)
    cfg = TrainConfig(steps=epochs * steps_per_epoch, lr=lr, batch_size=batch_size,
                      warmup=max(1, round(warmup_ratio * epochs * steps_per_epoch)), weight_decay=weight_decay,
                      precision=precision, seed=seed)
    rng = np.random.default_rng(seed)
    bar = tqdm(total=cfg.steps, desc="head", unit="step", disable=not progress, mininterval=1.0)
    try:
        model.backbone.requires_grad_(False)
        optimizer = make_optimizer(model, cfg)
        model.backbone.eval()
        model.head.train()
        step, losses = 0, []
        for _ in range(epochs):
            losses = []
            for items in batches_of(train, batch_size, rng):
                losses.append(train_step(model, task, items, optimizer, learning_rate(cfg, step), precision,
                                         clip_norm=None))
                step += 1
                bar.update(1)
    finally:
        bar.close()
        for param in trainable:
            param.requires_grad_(True)
        model.train()
    return float(np.mean(losses))
