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
"""Logits per chunk on CPU (8 MB in fp32): small enough to stay in this kind of CPU's L3 cache,
large enough for the matmuls to run at full speed."""

GROUP_ELEMENTS = 1 << 24
"""Logit gradients kept below fp32 before their weight-gradient matmul on CPU (32 MB in bf16)."""

ACCELERATOR_CHUNK_ELEMENTS = 1 << 26
"""Logits per chunk (and per group) on a GPU (256 MB in fp32). No cache to stay in there: each
chunk costs a dozen kernel launches, and CPU-sized chunks (256 rows of an 8,192 vocabulary)
made the loss of a 16k-row batch a thousand launches of tiny kernels. The bound only caps
memory for large vocabularies."""


def _chunk_sizes(device: torch.device) -> tuple[int, int]:
    """(logits per chunk, logits per group) for tensors on `device`."""
    if device.type == "cpu":
        return CHUNK_ELEMENTS, GROUP_ELEMENTS
    return ACCELERATOR_CHUNK_ELEMENTS, ACCELERATOR_CHUNK_ELEMENTS


def _chunks(rows: int, vocab: int, elements: int) -> list[slice]:
    step = max(1, elements // vocab)
    return [slice(i, min(i + step, rows)) for i in range(0, rows, step)]


def _log_softmax_and_hits(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                          targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """fp32 log-probabilities of the rows, the summed loss and how many rows rank their target
    first (a tie counts as a hit). `amax` instead of `argmax`, and the upcast before the softmax
    rather than inside it: each is several times faster on CPU."""
    log_probs = torch.log_softmax(F.linear(hidden, weight, bias).float(), dim=-1)
    picked = log_probs.gather(1, targets[:, None]).squeeze(1)
    return log_probs, -picked.sum(), (picked >= log_probs.amax(-1)).sum()


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None,
                targets: Tensor) -> tuple[Tensor, Tensor]:
        device = hidden.device.type
        # autocast's dtype, applied here by hand: each operand is cast once, not once per chunk
        dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
        with torch.autocast(device, enabled=False):
            loss, accuracy, grads = _loss_and_gradients(hidden.to(dtype), weight.to(dtype),
                                                        bias.to(dtype) if bias is not None else None, targets)
        ctx.save_for_backward(*grads)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(accuracy)
        return loss, accuracy

    @staticmethod
    def backward(ctx, grad_loss: Tensor, grad_accuracy: Tensor):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        (hidden_dtype, weight_dtype), scale = ctx.dtypes, grad_loss.to(torch.float32)
        hidden_grad = (grad_hidden * scale).to(hidden_dtype) if ctx.needs_input_grad[0] else None
        weight_grad = (grad_weight * scale).to(weight_dtype) if ctx.needs_input_grad[1] else None
        bias_grad = (grad_bias * scale).to(weight_dtype) \
            if grad_bias is not None and ctx.needs_input_grad[2] else None
        return hidden_grad, weight_grad, bias_grad, None


def _loss_and_gradients(hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor):
    """Mean loss, accuracy and the gradients of the mean loss for operands of one dtype; the
    softmax runs in fp32.

    In fp32 each chunk's weight gradient is added in place (`addmm_`). In a lower precision the
    chunks' logit gradients are kept for a group of rows (``GROUP_ELEMENTS``) and multiplied
    once: adding many low-precision products into an fp32 sum costs more than the matmuls."""
    rows, vocab = hidden.shape[0], weight.shape[0]
    grad_hidden = torch.empty_like(hidden)
    grad_weight: Tensor | None = None
    grad_bias = torch.zeros(vocab, dtype=torch.float32, device=hidden.device) if bias is not None else None
    loss, correct = hidden.new_zeros((), dtype=torch.float32), hidden.new_zeros((), dtype=torch.float32)
    chunk_elements, group_elements = _chunk_sizes(hidden.device)
    if hidden.dtype == torch.float32:
        group_elements = chunk_elements
    for group in _chunks(rows, vocab, group_elements):
        h_group = hidden[group]
        grad_logits = torch.empty(h_group.shape[0], vocab, dtype=hidden.dtype, device=hidden.device)
        for part in _chunks(h_group.shape[0], vocab, chunk_elements):
            h, t, grad = h_group[part], targets[group][part], grad_logits[part]
            log_probs, part_loss, hits = _log_softmax_and_hits(h, weight, bias, t)
            loss += part_loss
            correct += hits
            probs = log_probs.exp_()  # softmax ...
            probs[torch.arange(probs.shape[0], device=probs.device), t] -= 1.0  # ... minus one-hot
            torch.mul(probs, 1.0 / rows, out=grad)  # scaled and cast in one pass
            torch.mm(grad, weight, out=grad_hidden[group][part])  # straight into the gradient
            if grad_bias is not None:
                grad_bias += grad.sum(0, dtype=torch.float32)
        if grad_weight is None:  # the groups' products are summed in fp32 (a no-op cast in fp32)
            grad_weight = (grad_logits.t() @ h_group).float()
        elif hidden.dtype == torch.float32:
            grad_weight.addmm_(grad_logits.t(), h_group)
        else:
            grad_weight += grad_logits.t() @ h_group
    if grad_weight is None:  # no rows
        grad_weight = torch.zeros_like(weight)
    rows = max(rows, 1)  # no rows: a loss of 0, as without gradients, not 0/0
    return loss / rows, correct / rows, (grad_hidden, grad_weight, grad_bias)


def linear_cross_entropy(hidden: Tensor, weight: Tensor, bias: Tensor | None,
                         targets: Tensor) -> tuple[Tensor, Tensor]:
    """Mean cross-entropy of ``F.linear(hidden, weight, bias)`` against `targets` (rows, all
    valid), and the accuracy of its argmax; equal to the plain computation up to float rounding.

    Under autocast the projections run in the autocast dtype and the softmax in fp32, as
    `F.cross_entropy(logits.float(), ...)` would."""
    if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
        return _LinearCrossEntropy.apply(hidden, weight, bias, targets)
    loss, correct = hidden.new_zeros((), dtype=torch.float32), hidden.new_zeros((), dtype=torch.float32)
    for part in _chunks(hidden.shape[0], weight.shape[0], _chunk_sizes(hidden.device)[0]):
        _, part_loss, hits = _log_softmax_and_hits(hidden[part], weight, bias, targets[part])
        loss += part_loss
        correct += hits
    rows = max(hidden.shape[0], 1)
    return loss / rows, correct / rows
