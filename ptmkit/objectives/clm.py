"""GPT causal language modelling: every position predicts the next token.

Documents are packed into windows and separated by </s> (GPT-2's end-of-text), which stays a
target so the model learns to end a document (the pad = eos pitfall of transformers #23530).
Labels are shifted here, once; the loss does not shift again.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch import Tensor, nn

from ptmkit.objectives.base import Batch, Example, Objective, Window, token_cross_entropy
from ptmkit.objectives.noise import insert_before


class CausalLM(Objective):
    name = "clm"
    architecture = "decoder"
    layout = "gpt2"
    family = "AR"
    loss_over_labels = True

    @dataclass(kw_only=True)
    class Options:
        pass

    def window_length(self) -> int:
        return self.seq_len + 1  # inputs and their next-token targets overlap by all but one

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        tokens = insert_before(window.tokens, window.document_starts, self.vocab.special.eos)
        tokens = tokens[: self.seq_len + 1].astype(np.int64)
        return {"input_ids": tokens[:-1], "labels": tokens[1:]}

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        hidden = model.encode(batch["input_ids"], is_causal=True)
        return token_cross_entropy(model, hidden, batch["labels"])
