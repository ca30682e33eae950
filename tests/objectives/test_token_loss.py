"""token_cross_entropy: the loss and gradients of plain cross-entropy over the labelled rows,
whether every row is labelled or only some are."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptmkit.model.backbone import Transformer
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives.base import IGNORE, token_cross_entropy


@pytest.mark.parametrize("ignored", [0, 3])
def test_matches_plain_cross_entropy(ignored: int) -> None:
    torch.manual_seed(0)
    model = Transformer(resolve_model_config("tiny", vocab_size=50, layout="bart", encoder_decoder=True))
    hidden = torch.randn(2, 6, model.output_size, requires_grad=True)
    labels = torch.randint(0, 50, (2, 6))
    labels.view(-1)[torch.randperm(12)[:ignored]] = IGNORE
    loss, stats = token_cross_entropy(model, hidden, labels)
    loss.backward()
    got_hidden, got_weight = hidden.grad.clone(), [p.grad.clone() for p in model.parameters() if p.grad is not None]
    hidden.grad = None
    model.zero_grad(set_to_none=True)
    plain = F.cross_entropy(model.logits(hidden).reshape(-1, 50), labels.reshape(-1), ignore_index=IGNORE)
    plain.backward()
    assert torch.allclose(loss, plain, atol=1e-6)
    assert stats["predicted"] == 12 - ignored
    assert torch.allclose(got_hidden, hidden.grad, atol=1e-6)
    assert (got_hidden.reshape(-1, model.output_size)[labels.reshape(-1) == IGNORE] == 0).all()
    expected = [p.grad for p in model.parameters() if p.grad is not None]
    assert len(got_weight) == len(expected)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(got_weight, expected))
