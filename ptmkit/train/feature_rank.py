"""How many directions the representations a run hands to fine-tuning span: a collapse check.

A pre-training run can end with its top layer confined to a handful of directions whatever the
input. A mini PLM stuck near the unigram plateau after 5M tokens (EXPERIMENTS E3c) measured 3.4 of
256 here, where MLM runs measured about 106 and random weights about 160; as a start for
translation it then lost 6 ROUGE-L points to random weights, while the same objective after 0.6M
tokens (rank 136) gained 4. Its loss curve showed nothing unusual; this number does, so every
pre-training run records it in summary.json (`feature_rank`, of `feature_width`) and warns when
it is low.

Effective rank (Roy & Vetterli 2007): exp of the entropy of the normalised squared singular values
of the centred token features, between 1 (every token the same vector) and the width.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from ptmkit.data.shards import TokenShards
from ptmkit.model.config import ModelConfig
from ptmkit.objectives.base import Objective

COLLAPSED_FRACTION = 1 / 16
"""A rank below this share of the width is reported as collapsed (a random mini network: ~0.3)."""


def effective_rank(features: Tensor) -> float:
    """exp(entropy) of the spectrum of `features` (N, H) after centring; 1.0 when every row is
    the same vector (a single row included)."""
    rows = features.float()
    energy = torch.linalg.svdvals(rows - rows.mean(0)).square()
    if float(energy.sum()) == 0.0:
        return 1.0
    p = energy / energy.sum()
    return float(torch.exp(-(p * torch.log(p.clamp_min(1e-30))).sum()))


@torch.no_grad()
def feature_rank(objective: Objective, network: nn.Module, cfg: ModelConfig, shards: TokenShards,
                 length: int, windows: int = 16) -> dict[str, float | int]:
    """`feature_rank` (effective rank) and `feature_width` of the downstream network's token
    features over up to `windows` plain validation windows spread through the split (nothing
    when the split has no full window)."""
    count = min(windows, shards.n_windows(length))
    if count == 0:
        return {}
    downstream = objective.to_downstream(network, cfg)
    device = next(downstream.parameters()).device
    picks = np.linspace(0, shards.n_windows(length) - 1, count).round().astype(int)
    ids = torch.from_numpy(np.stack([shards.window(int(i), length).tokens for i in picks]).astype(np.int64)).to(device)
    training = downstream.training
    downstream.eval()
    try:
        features = objective.features(downstream, ids, torch.ones_like(ids, dtype=torch.bool))
    finally:
        downstream.train(training)
    return {"feature_rank": effective_rank(features.reshape(-1, features.shape[-1])),
            "feature_width": int(features.shape[-1])}


def collapse_warning(summary: dict) -> str | None:
    """One line for the user when a run summary's feature rank is a collapsed network's."""
    rank, width = summary.get("feature_rank"), summary.get("feature_width")
    if rank is None or rank >= COLLAPSED_FRACTION * width:
        return None
    return (f"the pre-trained features span about {rank:.0f} of {width} directions (feature_rank in "
            "summary.json): fine-tuning may start worse than from random weights; pre-train longer, with "
            "a higher learning rate, or with another objective")
