"""ELMo's ScalarMix: softmax-normalised layer weights times γ."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptmkit.model.scalar_mix import ScalarMix


def layers(n: int = 3) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randn(2, 5, 8, generator=generator) for _ in range(n)]


def test_weights_are_a_distribution() -> None:
    mix = ScalarMix(3)
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([2.0, -1.0, 0.5]))
    s = mix.normalized_weights()
    assert (s > 0).all() and float(s.detach().sum()) == pytest.approx(1.0)


def test_zero_weights_give_gamma_times_the_mean() -> None:
    mix, hs = ScalarMix(3), layers()
    with torch.no_grad():
        mix.gamma.fill_(2.5)
    torch.testing.assert_close(mix(hs), 2.5 * torch.stack(hs).mean(0))


def test_weighted_sum_and_gradients() -> None:
    mix, hs = ScalarMix(3), layers()
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([0.0, 1.0, -1.0]))
    s = torch.softmax(torch.tensor([0.0, 1.0, -1.0]), 0)
    out = mix(hs)
    torch.testing.assert_close(out, sum(w * h for w, h in zip(s, hs)))
    out.sum().backward()
    assert mix.weights.grad.abs().sum() > 0 and mix.gamma.grad is not None


def test_layer_norm_normalises_each_token_vector() -> None:
    hs = [3 * h + 1 for h in layers(2)]
    out = ScalarMix(2, layer_norm=True)(hs)
    torch.testing.assert_close(out, (F.layer_norm(hs[0], (8,)) + F.layer_norm(hs[1], (8,))) / 2)


def test_layer_count_must_match() -> None:
    with pytest.raises(ValueError, match="3 layers"):
        ScalarMix(3)(layers(2))
