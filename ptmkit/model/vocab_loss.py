"""Vocabulary projection fused with its cross-entropy, computed in row chunks.

The plain path (``logits = h @ W.T``, then `F.cross_entropy`) writes the (rows x vocab) logits,
their log-softmax, a zero-filled gradient of the same size and its softmax backward: four or
five passes over a tensor of 64 MB for 2,048 rows of an 8,192 vocabulary, all through main
memory. Here each chunk of rows is projected, turned into its loss, its accuracy and its logit
gradient (``softmax - onehot``) while it is still in cache, and immediately multiplied back into
the hidden-state and weight gradients. The matmuls are the same three; the logits never exist
whole, so memory drops too (the idea of Liger-Kernel's fused linear cross-entropy).

The gradients are computed during the forward (they need only the inputs) and scaled by the
incoming gradient in the backward, so a step costs no extra pass.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_ELEMENTS = 1 << 21
"""Logits per chunk (8 MB in fp32): small enough to stay in this kind of CPU's L3 cache, large
enough for the matmuls to run at full speed."""


def _chunks(rows: int, vocab: int) -> list[slice]:
    step = max(1, CHUNK_ELEMENTS // vocab)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _logits(hidden: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    return F.linear(hidden, weight, bias).float()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None,
                targets: Tensor) -> tuple[Tensor, Tensor]:
        rows = hidden.shape[0]
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if bias is not None else None
        loss, correct = hidden.new_zeros((), dtype=torch.float32), hidden.new_zeros((), dtype=torch.float32)
        for part in _chunks(rows, weight.shape[0]):
            h, t = hidden[part], targets[part]
            logits = _logits(h, weight, bias)
            correct += (logits.argmax(-1) == t).sum()
            logits = torch.log_softmax(logits, dim=-1)
            loss -= logits.gather(1, t[:, None]).sum()
            grad = logits.exp_()  # softmax ...
            grad[torch.arange(grad.shape[0], device=grad.device), t] -= 1.0  # ... minus one-hot
            grad = grad.div_(rows).to(h.dtype)  # under autocast the matmuls cast to its dtype
            grad_hidden[part] = grad @ weight
            grad_weight += grad.t() @ h
            if grad_bias is not None:
                grad_bias += grad.sum(0, dtype=torch.float32)
        ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
        ctx.weight_dtype = weight.dtype
        accuracy = correct / rows
        ctx.mark_non_differentiable(accuracy)
        return loss / rows, accuracy

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_accuracy: Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        scale = grad_loss.to(torch.float32)
        weight_grad = (grad_weight * scale).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        bias_grad = (grad_bias * scale).to(ctx.weight_dtype) \
            if grad_bias is not None and ctx.needs_input_grad[2] else None
        hidden_grad = grad_hidden * scale.to(grad_hidden.dtype) if ctx.needs_input_grad[0] else None
        return hidden_grad, weight_grad, bias_grad, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                         targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of ``F.linear(hidden, weight, bias)`` against `targets` (rows, all
    valid), and the accuracy of its argmax; equal to the plain computation up to float rounding.

    Under autocast the projections run in the autocast dtype and the softmax in fp32, as
    `F.cross_entropy(logits.float(), ...)` would."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets)
    loss, correct = hidden.new_zeros((), dtype=torch.float32), hidden.new_zeros((), dtype=torch.float32)
    for part in _chunks(hidden.shape[0], weight.shape[0]):
        logits = _logits(hidden[part], weight, bias)
        correct += (logits.argmax(-1) == targets[part]).sum()
        loss += F.cross_entropy(logits, targets[part], reduction="sum")
    rows = max(hidden.shape[0], 1)
    return loss / rows, correct / rows
