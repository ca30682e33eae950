"""ELECTRA replaced-token detection (Clark et al., arXiv 2003.10555; google-research/electra
`run_pretraining.py`, `pretrain/pretrain_helpers.py`).

A small generator is trained as a masked LM; its samples replace the masked tokens, and the
discriminator (the shared `Transformer`, the network kept for fine-tuning) labels every token
as original (0) or replaced (1). `L = L_MLM + disc_weight * L_Disc`.

Data (MLM's framing and `corrupt`): `mask_prob` of the non-special tokens are selected,
85% become [MASK], 15% stay, none is swapped for a random token. Differences from
`pretrain_helpers.mask`: the count is `max(1, round(mask_prob * #eligible))` drawn without
replacement (ELECTRA: over all non-pad tokens incl. [CLS]/[SEP], with replacement, capped at
`int((mask_prob + 0.005) * L)`, a cap our frames never reach).

Model (`ElectraModel`): the generator has the discriminator's depth and `generator_fraction`
of its width (`max(1, width // 64)` heads, FFN 4x width: `get_generator_config`); it shares the
discriminator's whole embedding module (token, position, type embeddings and their LayerNorm)
through a projection to its width (`embeddings_project` of HF's ELECTRA generators). Its output goes
back to the embedding width and through the backbone's LM head, whose decoder is tied to the
shared token embeddings: with the BERT layout that is ELECTRA's `generator_predictions` (dense,
activation, LayerNorm, tied projection + output bias) with the dense factored in two. So every
parameter is trained and `model.discriminator` is exactly `Transformer(cfg)`; the backbone's LM
head, though, learns only from the generator's loss.

Sampling: Gumbel-max at temperature `temperature`, without gradient; special ids are never
sampled, so the discriminator never sees [MASK] (ELECTRA samples the whole vocabulary).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmkit.model.backbone import _ACTIVATIONS, Stack, Transformer
from ptmkit.model.config import ModelConfig
from ptmkit.objectives.base import IGNORE, Batch
from ptmkit.objectives.mlm import MaskedLM


def generator_config(cfg: ModelConfig, fraction: float) -> ModelConfig:
    """The discriminator's config at `fraction` of its width (google-research/electra
    `get_generator_config`): same depth, FFN 4x, one head per 64 dims (fewer if they do not
    divide the width)."""
    hidden = max(1, int(round(cfg.hidden * fraction)))
    heads = max(1, hidden // 64)
    while hidden % heads:
        heads -= 1
    return dataclasses.replace(cfg, hidden=hidden, heads=heads, ffn=4 * hidden)


class Generator(nn.Module):
    """The small masked-LM network: shared embeddings -> its width -> layers -> embedding width."""

    def __init__(self, cfg: ModelConfig, fraction: float) -> None:
        super().__init__()
        self.cfg = generator_config(cfg, fraction)
        self.project_in = nn.Linear(cfg.hidden, self.cfg.hidden)
        self.encoder = Stack(self.cfg, self.cfg.n_layers, cross=False)
        self.project_out = nn.Linear(self.cfg.hidden, cfg.hidden)

    def forward(self, embedded: Tensor) -> Tensor:
        """(B, L, H) shared embeddings -> (B, L, generator width) hidden states."""
        return self.encoder(self.project_in(embedded))


class DiscriminatorHead(nn.Module):
    """Per-token replaced/original logit: dense -> activation -> dense(1) (ELECTRA
    `discriminator_predictions`)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(cfg.hidden, cfg.hidden)
        self.act = _ACTIVATIONS[cfg.activation]
        self.out = nn.Linear(cfg.hidden, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.out(self.act(self.dense(hidden))).squeeze(-1)


class ElectraModel(nn.Module):
    """Generator + discriminator on one set of embeddings; `discriminator` is a plain
    `Transformer` (export and fine-tuning use it alone)."""

    def __init__(self, cfg: ModelConfig, generator_fraction: float) -> None:
        super().__init__()
        self.discriminator = Transformer(cfg)
        self.generator = Generator(cfg, generator_fraction)
        self.discriminator_head = DiscriminatorHead(cfg)
        self.generator.apply(Transformer._init)
        self.discriminator_head.apply(Transformer._init)

    def generate(self, input_ids: Tensor) -> Tensor:
        """Generator hidden states (B, L, generator width) of the masked input."""
        return self.generator(self.discriminator.embed(input_ids))

    def logits(self, generator_hidden: Tensor) -> Tensor:
        """Vocabulary logits of generator hidden states (only the rows passed in)."""
        return self.discriminator.logits(self.generator.project_out(generator_hidden))

    def discriminate(self, input_ids: Tensor) -> Tensor:
        """(B, L) logits that each token was replaced."""
        return self.discriminator_head(self.discriminator.encode(input_ids))

    def flops_per_token(self, seq_len: int, predicted_fraction: float) -> float:
        """Training FLOPs per input token: the discriminator (and its head) everywhere, the
        generator everywhere, the vocabulary projection at the masked rows only."""
        gen, width = self.generator.cfg, self.discriminator.cfg.hidden
        generator = gen.n_layers * (4 * gen.hidden**2 + 2 * gen.hidden * gen.ffn + 2 * seq_len * gen.hidden)
        generator += 2 * gen.hidden * width  # projections in and out of the generator's width
        heads = width * width + width + predicted_fraction * self.discriminator.cfg.vocab_size * width
        return self.discriminator.flops_per_token(seq_len, 0.0) + 6 * (generator + heads)


def replace_with_samples(input_ids: Tensor, labels: Tensor, logits: Tensor,
                         forbidden: list[int], temperature: float = 1.0) -> tuple[Tensor, Tensor]:
    """The discriminator's input and targets from the generator's logits at the masked rows.

    `logits` (n_masked, V) belong to the positions where `labels != IGNORE`, in row-major order.
    A token is sampled there by Gumbel-max (no gradient; `forbidden` ids never), and the target
    is 1 exactly where the result differs from the original token: a sample that happens to equal
    the original is labelled original (ELECTRA `_get_fake_data`).
    """
    selected = labels != IGNORE
    with torch.no_grad():
        scores = logits.float() / temperature
        scores = scores - torch.empty_like(scores).exponential_().log()  # -log(Exp(1)) ~ Gumbel(0, 1)
        # after the noise: an Exp(1) sample of 0 gives +inf, and -inf + inf would be NaN, which argmax picks
        scores[:, forbidden] = float("-inf")
        corrupted = input_ids.clone()
        corrupted[selected] = scores.argmax(-1)
        original = torch.where(selected, labels, input_ids)
    return corrupted, (corrupted != original).float()


class Electra(MaskedLM):
    name = "electra"
    family = "AE"
    loss_over_labels = False  # generator (masked positions) + discriminator (all tokens)

    @dataclass(kw_only=True)
    class Options(MaskedLM.Options):
        mask_share: float = 0.85
        random_share: float = 0.0
        generator_fraction: float = 0.25
        """Generator width / discriminator width (ELECTRA-Small 0.25, Base 1/3)."""
        disc_weight: float = 50.0
        """lambda in L_MLM + lambda * L_Disc."""
        temperature: float = 1.0
        """Generator sampling temperature."""

    def build_model(self, cfg: ModelConfig) -> ElectraModel:
        return ElectraModel(cfg, self.options.generator_fraction)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        inputs, labels = batch["input_ids"], batch["labels"]
        selected = labels != IGNORE
        logits = model.logits(model.generate(inputs)[selected])
        targets = labels[selected]
        mlm = F.cross_entropy(logits.float(), targets)
        corrupted, replaced = replace_with_samples(inputs, labels, logits,
                                                   sorted(self.vocab.special.all()),
                                                   self.options.temperature)
        disc, disc_metrics = self.discriminator_loss(model, corrupted, replaced)
        with torch.no_grad():
            metrics = {"mlm_loss": float(mlm.detach()), "generator_accuracy":
                       float((logits.argmax(-1) == targets).float().mean()),
                       "replaced": float(replaced[selected].mean()), **disc_metrics}
        return mlm + self.options.disc_weight * disc, metrics

    def discriminator_loss(self, model: ElectraModel, corrupted: Tensor,
                           replaced: Tensor) -> tuple[Tensor, dict[str, float]]:
        """Sigmoid BCE over every non-pad position, [CLS]/[SEP] and unmasked tokens included,
        averaged over the batch's tokens (ELECTRA `_get_discriminator_output`)."""
        valid = (corrupted != self.vocab.special.pad).float()
        logits = model.discriminate(corrupted)
        losses = F.binary_cross_entropy_with_logits(logits.float(), replaced, reduction="none")
        loss = (losses * valid).sum() / valid.sum()
        with torch.no_grad():
            correct = ((logits > 0).float() == replaced).float()
            accuracy = (correct * valid).sum() / valid.sum()
        return loss, {"disc_loss": float(loss.detach()), "disc_accuracy": float(accuracy)}

    def to_downstream(self, network: nn.Module, cfg: ModelConfig) -> nn.Module:
        """The discriminator, a plain encoder: the network ELECTRA keeps (the generator goes)."""
        return network.discriminator
