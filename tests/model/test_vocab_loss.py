"""The fused, chunked vocabulary cross-entropy equals the plain one: loss, accuracy, gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ptmkit.model import vocab_loss
from ptmkit.model.vocab_loss import linear_cross_entropy


def inputs(rows: int, width: int = 24, vocab: int = 50, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(rows, width, generator=g, requires_grad=True)
    weight = torch.randn(vocab, width, generator=g).mul_(0.3).requires_grad_()
    b = torch.randn(vocab, generator=g).requires_grad_() if bias else None
    targets = torch.randint(0, vocab, (rows,), generator=g)
    return hidden, weight, b, targets


def plain(hidden, weight, bias, targets):
    logits = F.linear(hidden, weight, bias).float()
    return F.cross_entropy(logits, targets), (logits.argmax(-1) == targets).float().mean()


def grads(loss, *tensors):
    return torch.autograd.grad(loss, [t for t in tensors if t is not None])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("chunk_elements", [50 * 7, 1 << 21])  # 7 rows per chunk (uneven last), or one chunk
def test_equals_plain_cross_entropy_in_fp32(monkeypatch, bias, chunk_elements) -> None:
    monkeypatch.setattr(vocab_loss, "CHUNK_ELEMENTS", chunk_elements)
    hidden, weight, b, targets = inputs(40, bias=bias)
    loss, accuracy = linear_cross_entropy(hidden, weight, b, targets)
    ref_loss, ref_accuracy = plain(hidden, weight, b, targets)
    torch.testing.assert_close(loss, ref_loss)
    assert float(accuracy) == float(ref_accuracy)
    # scale the loss so the backward's use of the incoming gradient is checked too
    for ours, ref in zip(grads(3.0 * loss, hidden, weight, b), grads(3.0 * ref_loss, hidden, weight, b)):
        torch.testing.assert_close(ours, ref)


def test_accuracy_counts_argmax_hits() -> None:
    weight = torch.eye(4, requires_grad=True)
    hidden = torch.tensor([[5.0, 0, 0, 0], [0, 5.0, 0, 0], [0, 0, 5.0, 0]], requires_grad=True)
    _, accuracy = linear_cross_entropy(hidden, weight, None, torch.tensor([0, 1, 3]))
    assert float(accuracy) == pytest.approx(2 / 3)
    assert not accuracy.requires_grad


def test_tied_weight_gradient_adds_to_the_embedding_gradient() -> None:
    embedding = torch.nn.Embedding(50, 24)
    ids = torch.randint(0, 50, (30,))
    targets = torch.randint(0, 50, (30,))
    loss, _ = linear_cross_entropy(embedding(ids), embedding.weight, None, targets)
    ours = torch.autograd.grad(loss, embedding.weight)[0]
    ref_loss, _ = plain(embedding(ids), embedding.weight, None, targets)
    torch.testing.assert_close(ours, torch.autograd.grad(ref_loss, embedding.weight)[0])


@pytest.mark.parametrize("group_elements", [50 * 40, 1 << 24])  # two groups (the second partial), or one
def test_bf16_autocast_matches_plain_autocast(monkeypatch, group_elements) -> None:
    monkeypatch.setattr(vocab_loss, "CHUNK_ELEMENTS", 50 * 16)
    monkeypatch.setattr(vocab_loss, "GROUP_ELEMENTS", group_elements)
    hidden, weight, b, targets = inputs(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(hidden, weight, b, targets)
        ref_loss, _ = plain(hidden, weight, b, targets)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, atol=2e-2, rtol=2e-2)
    for ours, ref in zip(grads(loss, hidden, weight, b), grads(ref_loss, hidden, weight, b)):
        assert ours.dtype == ref.dtype
        torch.testing.assert_close(ours, ref, atol=2e-2, rtol=5e-2)


def test_bf16_weight_gradient_is_summed_over_groups_in_fp32(monkeypatch) -> None:
    """64 groups of rows: summing their bf16 products in bf16 lost four times the precision of
    one group (0.98% against 0.25% of the fp32 gradient's norm)."""
    monkeypatch.setattr(vocab_loss, "CHUNK_ELEMENTS", 64 * 1024)
    monkeypatch.setattr(vocab_loss, "GROUP_ELEMENTS", 64 * 1024)
    hidden, weight, b, targets = inputs(4096, width=64, vocab=1024)
    reference = grads(plain(hidden, weight, b, targets)[0], weight)[0]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = linear_cross_entropy(hidden, weight, b, targets)
    ours = grads(loss, weight)[0]
    assert float((ours - reference).norm() / reference.norm()) < 0.005


def test_no_rows_is_a_zero_loss_with_zero_gradients() -> None:
    """A batch whose windows select no token (all special, or too short to mask) must not turn
    the loss and every gradient into NaN."""
    hidden, weight, b, targets = inputs(0)
    loss, accuracy = linear_cross_entropy(hidden, weight, b, targets)
    assert float(loss.detach()) == 0.0 and float(accuracy) == 0.0
    assert all(float(g.abs().sum()) == 0.0 for g in grads(loss + hidden.sum(), weight, b))


def test_without_gradients_only_the_loss_is_computed() -> None:
    hidden, weight, b, targets = inputs(40)
    with torch.no_grad():
        loss, accuracy = linear_cross_entropy(hidden, weight, b, targets)
        ref_loss, ref_accuracy = plain(hidden, weight, b, targets)
    torch.testing.assert_close(loss, ref_loss)
    assert float(accuracy) == float(ref_accuracy)
    assert not loss.requires_grad


def test_gpu_chunks_are_few_and_cpu_chunks_fit_in_cache() -> None:
    """16k rows of an 8,192 vocabulary: two chunks on a GPU (each chunk is a dozen kernel
    launches), a few MB of logits per chunk on CPU."""
    rows, vocab = 32 * 512, 8192
    gpu_chunk, gpu_group = vocab_loss._chunk_sizes(torch.device("cuda"))
    assert len(vocab_loss._chunks(rows, vocab, gpu_chunk)) == 2
    assert len(vocab_loss._chunks(rows, vocab, gpu_group)) == 2
    cpu_chunk, _ = vocab_loss._chunk_sizes(torch.device("cpu"))
    assert cpu_chunk * 4 <= 8 * 2**20
