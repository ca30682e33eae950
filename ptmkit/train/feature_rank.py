"""How many directions the representations a run hands to fine-tuning span, against the same
network at random initialisation: a collapse check.

A pre-training run can end with its top layer confined to a handful of directions whatever the
input. A mini PLM stuck near the unigram plateau after 5M tokens (EXPERIMENTS E3c) measured an
effective rank of 3.4 where the same network at initialisation measures 163; as a start for
translation it then lost 6 ROUGE-L points to random weights, while the same objective after 0.6M
tokens (rank 136) gained 4. Its loss curve showed nothing unusual; this number does, so every
pre-training run records it in summary.json (`feature_rank`, `feature_rank_at_init`,
`feature_width`) and warns when it fell below `COLLAPSED_SHARE` of its initial value.

The baseline is the same architecture's, not the width: causal features span fewer directions by
nature (a random mini decoder measures 84 of 256, a trained clm 14, which is 17% of that and
transfers well: +3.3 ROUGE-L in E3b), bidirectional ones more (random 160-165; mlm 106, bart 137).

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

COLLAPSED_SHARE = 0.05
"""A rank below this share of the initial network's is reported as collapsed. E3c's checks: plm after
5M tokens 0.02 (then 6 ROUGE-L below scratch), electra after 5M 0.049 (still 2.8 above scratch at
2,000 pairs: a warning, not a verdict); t5 0.13, clm 0.17 and the bidirectional objectives
0.6-0.9 transferred well."""


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
    features over up to `windows` plain validation windows spread through the split, and
    `feature_rank_at_init` of a freshly initialised network of the same objective and config
    (seeded, without touching the caller's random state); nothing when the split has no full
    window. Windows longer than the model's positions are cut to them: an objective may read more
    text than it feeds the model (contrastive draws its views from 1,024-token windows)."""
    length = min(length, cfg.max_positions)
    count = min(windows, shards.n_windows(length))
    if count == 0:
        return {}
    device = next(network.parameters()).device
    picks = np.linspace(0, shards.n_windows(length) - 1, count).round().astype(int)
    ids = torch.from_numpy(np.stack([shards.window(int(i), length).tokens for i in picks]).astype(np.int64)).to(device)
    with torch.random.fork_rng(devices=[]):  # a downstream wrapper may draw its own weights too
        trained = _rank(objective, objective.to_downstream(network, cfg), ids)
        torch.manual_seed(0)
        fresh = objective.build_model(cfg).to(device)
        initial = _rank(objective, objective.to_downstream(fresh, cfg), ids)
    return {"feature_rank": trained[0], "feature_rank_at_init": initial[0], "feature_width": trained[1]}


def _rank(objective: Objective, downstream: nn.Module, ids: Tensor) -> tuple[float, int]:
    training = downstream.training
    downstream.eval()
    try:
        features = objective.features(downstream, ids, torch.ones_like(ids, dtype=torch.bool))
    finally:
        downstream.train(training)
    return effective_rank(features.reshape(-1, features.shape[-1])), int(features.shape[-1])


def collapse_warning(summary: dict) -> str | None:
    """One line for the user when a run summary's feature rank is a collapsed network's."""
    rank, initial = summary.get("feature_rank"), summary.get("feature_rank_at_init")
    if rank is None or initial is None or rank >= COLLAPSED_SHARE * initial:
        return None
    return (f"the pre-trained features span about {rank:.0f} directions where the network at "
            f"initialisation spanned {initial:.0f} (feature_rank in summary.json): fine-tuning may start "
            "worse than from random weights; pre-train longer, with a higher learning rate, or with "
            "another objective")
