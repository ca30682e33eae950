"""ELMo: a bidirectional LSTM language model (Peters et al. 2018; allenai/bilm-tf).

Each sentence is wrapped in <s> ... </s> (bilm-tf's <S> </S>) and the sentences of a window are
streamed back to back. Forward position k predicts token k+1, backward position k predicts token
k-1; the loss is the mean of the two directions' cross-entropies (bilm-tf `total_loss`). The
network (`ptmkit.model.bilm.BiLM`, word-input variant: see its docstring) has its own forward
and backward LSTMs and shares only the token embedding and the softmax between them.

Downstream use: `feature_layers` returns the L+1 biLM layers of each token, layer 0 being the
token embedding duplicated as [x; x] and layer j the concatenation [forward_j; backward_j];
a fine-tuning head mixes them with a task-specific `ptmkit.model.scalar_mix.ScalarMix`
(`ScalarMix(len(layers))(objective.feature_layers(model, ids, valid))`), usually with the biLM
frozen. `features` returns the top layer alone for heads that take one representation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmkit.errors import UserError
from ptmkit.model.bilm import BiLM, ELMoFeatures
from ptmkit.model.config import ModelConfig
from ptmkit.objectives.base import IGNORE, Batch, Example, Objective, Window, token_cross_entropy


class ELMo(Objective):
    name = "elmo"
    family = "AR"
    architecture = "lstm"

    @dataclass(kw_only=True)
    class Options:
        layers: int = 2
        """LSTM layers per direction (the released ELMo has 2 whatever the model size)."""

        def __post_init__(self) -> None:
            if self.layers < 1:
                raise UserError(f"invalid layers={self.layers!r}", "objective_options.layers",
                                "use at least 1")

    def window_length(self) -> int:
        return self.seq_len - 2  # <s> ... </s>

    def frame(self, window: Window) -> np.ndarray:
        """<s> s1 </s> <s> s2 </s> ...: </s> <s> goes before every sentence start inside the
        window; the body is cut so the framed example is exactly seq_len long. A start that the
        cut would leave without a token of its sentence gets no pair (no `</s> </s>` or empty
        `<s> </s>` at the end)."""
        return self._frame(window)[0]

    def _frame(self, window: Window) -> tuple[np.ndarray, int, np.ndarray]:
        """The framed example, how many of the window's tokens it kept before the cut, and where
        (framed index) the kept tokens sit that start a sentence the cut left without its pair."""
        special = self.vocab.special
        starts = window.sentence_starts[window.sentence_starts > 0]
        # the k-th pair lands at start + 2k; its sentence's first token must stay inside the cut
        paired = starts[starts + 2 * np.arange(len(starts)) + 2 < self.seq_len - 2]
        body = np.insert(window.tokens, np.repeat(paired, 2), np.tile([special.eos, special.bos], len(paired)))
        framed = np.concatenate([[special.bos], body[: self.seq_len - 2], [special.eos]]).astype(np.int64)
        kept = len(window.tokens) - 2 * len(paired)
        unpaired = starts[len(paired):]  # the condition above fails from some start on
        return framed, kept, unpaired[unpaired < kept] + 1 + 2 * len(paired)

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        """Forward predicts the next token, backward the previous one. The outer <s> and </s>
        are true boundaries only where the window starts a sentence and where the cut falls
        just before one; elsewhere they sit mid-sentence, and predicting them would teach the
        model sentences that end at every window edge, so those two labels are ignored. So are
        the labels across a sentence start left without its pair near the cut: they would
        teach one sentence running into the next."""
        tokens, kept, unpaired = self._frame(window)
        ignore = np.array([IGNORE])
        forward = np.concatenate([tokens[1:], ignore])
        backward = np.concatenate([ignore, tokens[:-1]])
        if not np.isin(0, window.sentence_starts):
            backward[1] = IGNORE
        if not np.isin(kept, window.sentence_starts):  # the end of the window itself is unknown: ignored too
            forward[-2] = IGNORE
        forward[unpaired - 1] = IGNORE
        backward[unpaired] = IGNORE
        return {"input_ids": tokens, "forward_labels": forward, "backward_labels": backward}

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        """Projection = the size's hidden width, LSTM cells = its FFN width (4 x hidden; the
        released ELMo has 4096 cells for a 512 projection), dropout = the size's dropout (0.1,
        as bilm-tf)."""
        return BiLM(cfg.vocab_size, cfg.hidden, cfg.ffn, self.options.layers, cfg.dropout, cfg.pad_id)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        forward, backward = model.directions(batch["input_ids"])
        forward_loss, forward_metrics = token_cross_entropy(model, forward, batch["forward_labels"])
        backward_loss, backward_metrics = token_cross_entropy(model, backward, batch["backward_labels"])
        metrics = {"forward_loss": float(forward_loss.detach()), "backward_loss": float(backward_loss.detach()),
                   "accuracy": (forward_metrics["accuracy"] + backward_metrics["accuracy"]) / 2,
                   "predicted": forward_metrics["predicted"] + backward_metrics["predicted"]}
        return (forward_loss + backward_loss) / 2, metrics

    def feature_layers(self, model: nn.Module, input_ids: Tensor, valid: Tensor) -> list[Tensor]:
        """The L+1 layers (B, L, 2·hidden) of each real token, for a `ScalarMix`.

        The input (right-padded, no special tokens) is wrapped in <s> ... </s> as in
        pre-training and those two positions are dropped again (AllenNLP's
        `add_sentence_boundary_token_ids` / `remove_sentence_boundaries`).
        """
        framed, framed_valid = self._add_boundaries(input_ids, valid)
        return [torch.cat([forward, backward], dim=-1)[:, 1:-1]
                for forward, backward in model.layers(framed, framed_valid)]

    def to_downstream(self, network: nn.Module, cfg: ModelConfig) -> nn.Module:
        """Frozen biLM + learned scalar mix of its L+1 layers."""
        return ELMoFeatures(network, self.options.layers + 1)

    def features(self, model: nn.Module, input_ids: Tensor, valid: Tensor) -> Tensor:
        """The scalar mix of the biLM layers (B, L, 2·hidden); a bare biLM gives its top layer."""
        if isinstance(model, ELMoFeatures):
            return model.mix(self.feature_layers(model.bilm, input_ids, valid))
        return self.feature_layers(model, input_ids, valid)[-1]

    def _add_boundaries(self, input_ids: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
        special = self.vocab.special
        lengths = valid.sum(1)
        framed = F.pad(input_ids.masked_fill(~valid, special.pad), (1, 1), value=special.pad)
        framed[:, 0] = special.bos
        framed.scatter_(1, (lengths + 1)[:, None], special.eos)
        positions = torch.arange(framed.shape[1], device=framed.device)
        return framed, positions[None, :] < (lengths + 2)[:, None]
