"""Document-contrastive pre-training: two spans of one document, told apart from the batch's others.

Each example is a pair of views drawn from one document of a window: two different complete
sentences when the document shows two (of at least `min_tokens` tokens) inside the window, else
the two halves of the window's longest document piece (DeCLUTR's adjacent spans, Giorgi et al.
2021, for corpora of one-sentence documents). Both views are framed `[CLS] span [SEP]`, mean-pooled
over their tokens (the pooling fine-tuning reads), passed through a small projection head and
normalised; the loss is in-batch InfoNCE over the 2B views (SimCLR's NT-Xent): each view must pick
its partner out of the other 2B - 2 views, i.e. the other documents' spans. No label is read.

Why: what a document's sentences share — its subject, and in a review its verdict — is what a
sentence classifier trained on a few hundred labels needs in the pooled state, and a masked LM of
a small budget does not put it there (EXPERIMENTS E8: on 2 CPU cores, pairs of IMDB review
sentences over frozen word vectors added 1.8-3.3 SST-2 points at every fine-tuning rate; MLM over
the same vectors lost points, and pairs from different reviews taught nothing).

`--init RUN` starts the encoder from the network RUN hands to fine-tuning (for a word2vec run: the
encoder its vectors seed, vectors as they are), so this objective can continue any run whose
downstream network is a Transformer encoder of this run's model config. With
`freeze_embeddings` the token embedding stays as the init left it: word vectors keep their
neighbourhoods, the encoder above them learns.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from ptmkit.errors import UserError
from ptmkit.model.backbone import Transformer
from ptmkit.model.config import ModelConfig
from ptmkit.objectives.base import Batch, Example, Objective, Window

_SHAPE_FREE = ("dropout", "attention_dropout")
"""Config fields no weight depends on: an init may differ in them."""


def sentence_spans(window: Window) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(starts, ends, document) of the sentences that lie wholly inside the window. A sentence
    ends where the next sentence or document starts; the last one runs past the window and the
    piece before the first boundary started before it, so neither is whole. `document` numbers
    the window's document pieces (0: the piece before the first document start)."""
    bounds = np.union1d(window.sentence_starts, window.document_starts)
    starts, ends = bounds[:-1], bounds[1:]
    document = np.searchsorted(window.document_starts, starts, side="right")
    return starts, ends, document


def pick_views(window: Window, min_tokens: int, rng: np.random.Generator) -> tuple[slice, slice]:
    """Two spans of one document in the window (see the module docstring), in random order."""
    starts, ends, document = sentence_spans(window)
    long_enough = ends - starts >= min_tokens
    starts, ends, document = starts[long_enough], ends[long_enough], document[long_enough]
    ids, counts = np.unique(document, return_counts=True)
    if (counts >= 2).any():
        chosen = rng.choice(ids[counts >= 2])
        a, b = rng.choice(np.flatnonzero(document == chosen), size=2, replace=False)
        return slice(starts[a], ends[a]), slice(starts[b], ends[b])
    edges = np.union1d(window.document_starts, [0, len(window.tokens)])
    longest = int(np.argmax(np.diff(edges)))
    low, high = int(edges[longest]), int(edges[longest + 1])
    middle = (low + high + 1) // 2
    first, second = slice(low, middle), slice(middle, high)
    return (first, second) if rng.random() < 0.5 else (second, first)


class PairEncoder(nn.Module):
    """The shared encoder, mean-pooled, plus the projection head the loss compares in."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.encoder = Transformer(cfg)
        self.projection = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden), nn.GELU(),
                                        nn.Linear(cfg.hidden, cfg.hidden))

    def forward(self, input_ids: Tensor, valid: Tensor) -> Tensor:
        """(B, L) ids and their real-token mask -> (B, H) unit vectors."""
        states = self.encoder.encode(input_ids, attn_mask=valid[:, None, :])
        weights = valid.unsqueeze(-1).to(states.dtype)
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return F.normalize(self.projection(pooled), dim=-1)

    def flops_per_token(self, seq_len: int, predicted_fraction: float = 0.0) -> float:
        return self.encoder.flops_per_token(seq_len, predicted_fraction)


class DocumentContrastive(Objective):
    name = "contrastive"
    architecture = "encoder"
    pooling = "mean"  # the state its loss compared: [CLS] was never trained to summarise
    layout = "prenorm"  # word2vec's downstream encoder's, so a word2vec run continues exactly
    family = "contrastive"

    @dataclass(kw_only=True)
    class Options:
        temperature: float = 0.05
        """Softmax temperature of the cosine similarities (SimCSE's 0.05)."""
        min_tokens: int = 4
        """Shorter sentences ("Wow!") are never a view."""
        window: int = 1024
        """Tokens read per example, the views drawn from the documents in them: wide enough to hold
        whole reviews, so that two sentences share what the review as a whole says (EXPERIMENTS E9:
        from 192-token windows, sentences a few lines apart, SST-2 gained nothing over the
        vectors at the chosen rate; from 1,024-token ones, 1.2 points)."""
        freeze_embeddings: bool = False
        """Keep the token embedding as the init left it (word vectors stay word2vec's)."""

        def __post_init__(self) -> None:
            if not self.temperature > 0:
                raise UserError(f"temperature must be > 0, not {self.temperature}",
                                "objective_options.temperature", "e.g. 0.05")
            if self.min_tokens < 1 or self.window < 2:
                raise UserError(f"min_tokens must be >= 1 and window >= 2 (got {self.min_tokens}, {self.window})",
                                "objective_options", "e.g. min_tokens: 4, window: 1024")

    def window_length(self) -> int:
        return self.options.window

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        special, body = self.vocab.special, self.seq_len - 2
        return {key: np.concatenate([[special.cls], window.tokens[view][:body], [special.sep]]).astype(np.int64)
                for key, view in zip(("first", "second"), pick_views(window, self.options.min_tokens, rng))}

    def collate(self, examples: list[Example]) -> Batch:
        """One (2B, L) batch: rows i and B + i are partners, padded to the longest view."""
        views = [ex["first"] for ex in examples] + [ex["second"] for ex in examples]
        ids = np.full((len(views), max(map(len, views))), self.vocab.special.pad, dtype=np.int64)
        for row, view in zip(ids, views):
            row[: len(view)] = view
        return {"input_ids": torch.from_numpy(ids)}

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        model = PairEncoder(cfg)
        tokens = model.encoder.embed.tokens.weight
        tokens.requires_grad_(not self.options.freeze_embeddings)
        # the loss never reaches the LM head: fixed, it asks DDP for no gradient it cannot get
        for weight in model.encoder.lm_head.parameters():
            if weight is not tokens:
                weight.requires_grad_(False)
        return model

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        ids = batch["input_ids"]
        views = model(ids, ids != self.vocab.special.pad)
        logits = views @ views.T / self.options.temperature
        logits = logits.masked_fill(torch.eye(len(ids), dtype=torch.bool, device=ids.device), float("-inf"))
        partners = (torch.arange(len(ids), device=ids.device) + len(ids) // 2) % len(ids)
        accuracy = (logits.argmax(1) == partners).float().mean()
        return F.cross_entropy(logits, partners), {"pair_accuracy": float(accuracy)}

    def initialise(self, model: nn.Module, run: Path) -> None:
        """Start the encoder as the network `run` hands to fine-tuning (see the module docstring)."""
        from ptmkit.objectives import get_objective  # the registry imports this module
        config = yaml.safe_load((run / "config.yaml").read_text())
        source = get_objective(config["objective"])(self.vocab, self.seq_len, config.get("objective_options") or {})
        network = source.load_pretrained(run, ModelConfig.from_dict(config["model"], str(run / "config.yaml")))
        if not isinstance(network, Transformer) or network.cfg.is_encoder_decoder:
            raise UserError(f"a {config['objective']} run hands fine-tuning no Transformer encoder to continue",
                            str(run), "initialise contrastive from an encoder run (word2vec, mlm, electra, ...)")
        theirs, ours = network.cfg.to_dict(), model.encoder.cfg.to_dict()
        differ = sorted(k for k in ours if k not in _SHAPE_FREE and theirs[k] != ours[k])
        if differ:
            raise UserError("the --init run's encoder has " + ", ".join(f"{k}={theirs[k]}" for k in differ)
                            + " where this run's model has " + ", ".join(f"{k}={ours[k]}" for k in differ),
                            str(run), "give this run the init's model (e.g. model: {size: tiny, hidden: "
                            f"{theirs['hidden']}}} for vectors of {theirs['hidden']} dims)")
        model.encoder.load_state_dict(network.state_dict())

    def to_downstream(self, network: nn.Module, cfg: ModelConfig) -> nn.Module:
        # what pre-training held fixed, fine-tuning trains (unless told otherwise: its own freeze_embeddings)
        return network.encoder.requires_grad_(True)

    def predicted_fraction(self) -> float:
        return 0.0  # nothing is projected onto the vocabulary
