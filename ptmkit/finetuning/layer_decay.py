"""Layer-wise learning-rate decay for fine-tuning (Howard & Ruder 2018; ELECTRA, Clark et al.
2020): the head learns at the full rate, each backbone layer at `decay` times the rate of the
layer above, the embeddings lowest. Lower layers hold the general features pre-training paid
for; with few labels, updating them as fast as the fresh head mostly adds noise."""

from __future__ import annotations

import re

from torch import nn

_LAYER = re.compile(r"\blayers\.(\d+)\.")


def layer_depth(name: str, n_layers: int) -> int:
    """0 for embeddings, i + 1 for layer i, n_layers + 1 for everything above the layers."""
    match = _LAYER.search(name)
    if match:
        return int(match.group(1)) + 1
    return 0 if ".embed." in f".{name}" or "embedding" in name else n_layers + 1


def layerwise_scales(model: nn.Module, decay: float) -> dict[str, float]:
    """Learning-rate factor of every parameter of a `TaskModel` (empty when decay is 1)."""
    if decay == 1.0:
        return {}
    names = [name for name, _ in model.named_parameters()]
    n_layers = 1 + max((int(m.group(1)) for n in names if (m := _LAYER.search(n))), default=-1)
    return {name: decay ** (n_layers + 1 - layer_depth(name, n_layers)) if name.startswith("backbone.") else 1.0
            for name in names}
