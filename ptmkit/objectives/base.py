"""The objective protocol: how one pre-training objective plugs into the shared core.

An objective turns a window of raw tokens into one training example (pure numpy, run in
DataLoader workers, unit-testable without a model), stacks examples into a batch, and computes
its loss from the shared backbone. The trainer knows nothing else about it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor, nn

from ptmkit.data.shards import TokenShards, Window
from ptmkit.data.tokenizer import SpecialIds, Tokenizer
from ptmkit.errors import UserError
from ptmkit.model.backbone import Transformer
from ptmkit.model.config import ModelConfig
from ptmkit.model.word_vectors import init_token_embeddings
from ptmkit.train.checkpoint import load_weights

Example = dict[str, np.ndarray]
Batch = dict[str, Tensor]
IGNORE = -100
"""Label value for positions without a target (the `F.cross_entropy` ignore_index)."""


@dataclass(frozen=True)
class Vocab:
    """What an objective needs to know about the tokenizer."""

    size: int
    special: SpecialIds
    word_start: np.ndarray | None = field(default=None, compare=False, repr=False)
    """(size,) bool, True where a token id starts a word (`Tokenizer.word_start_table`): word
    boundaries for whole-word masking. Left out of == and hash (an array is neither), so two
    Vocabs of one tokenizer compare by size and specials."""

    @classmethod
    def of(cls, tokenizer: Tokenizer) -> "Vocab":
        """Everything objectives need from a tokenizer, word-start table included."""
        return cls(tokenizer.vocab_size, tokenizer.special, tokenizer.word_start_table())

    @property
    def first_normal_id(self) -> int:
        """Ids below this are special tokens (ptmkit's own tokenizers: 107)."""
        return max(self.special.all()) + 1

    @property
    def ordinary_range(self) -> tuple[int, int]:
        """[low, high) of ordinary ids that random replacements are drawn from: the longest run
        of ids free of special tokens. For ptmkit's tokenizers that is (107, size); imported ones
        may put specials first and last (RoBERTa: <s> <pad> </s> <unk> ... <mask>) or in between
        (BERT: [PAD] [unused..] [UNK] [CLS] [SEP] [MASK] ...)."""
        edges = sorted(i for i in self.special.all() if 0 <= i < self.size)
        best, low = (0, 0), 0
        for edge in [*edges, self.size]:
            if edge - low > best[1] - best[0]:
                best = (low, edge)
            low = max(low, edge + 1)
        return best


class Objective:
    """Base class; subclasses set the class attributes and implement make_example and loss."""

    name: ClassVar[str]
    architecture: ClassVar[str]
    """Backbone family: encoder, decoder, prefix, two_stream, encoder_decoder."""
    layout: ClassVar[str] = "prenorm"
    """Default layout (see `ptmkit.model.config.LAYOUTS`) so that export maps onto HF exactly."""
    pooling: ClassVar[str | None] = None
    """How fine-tuning reads a sequence by default when the objective trained one pooled state
    (None: what the architecture suggests, see `Backbone.pooling`)."""
    family: ClassVar[str] = ""
    """AR (autoregressive), AE (autoencoding), permuted, denoising or shallow: the survey's axis."""
    standalone: ClassVar[bool] = False
    """True for objectives trained outside the shared loop (word2vec through gensim): pretrain
    then calls `train_standalone` instead of the Trainer."""
    revision: ClassVar[int] = 0
    """Raised when a change makes this objective's runs differ from those of earlier versions,
    so that a compare's cache trains them again (word2vec 1: path C continues the general
    vectors instead of starting afresh)."""
    loss_over_labels: ClassVar[bool] = False
    """True when `loss` is the mean over the batch's ``labels != IGNORE`` positions: a step split
    over processes or gradient-accumulation micro-batches then weights each part by that count
    (`loss_weight`), so it equals the one big batch."""

    @dataclass(kw_only=True)
    class Options:
        """Objective hyper-parameters; subclasses extend this dataclass."""

    def __init__(self, vocab: Vocab, seq_len: int, options: dict[str, Any] | None = None) -> None:
        self.vocab, self.seq_len = vocab, seq_len
        self.options = self.parse_options(options or {})

    @classmethod
    def parse_options(cls, values: dict[str, Any]) -> Any:
        known = {f.name for f in dataclasses.fields(cls.Options)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown option(s) {', '.join(unknown)} for objective {cls.name}",
                            "objective_options", f"known: {', '.join(sorted(known)) or 'none'}")
        return cls.Options(**values)

    # ---- budget (a `tokens:` budget and --dry-run's estimate) ------------------------------
    @classmethod
    def step_tokens(cls, batch_tokens: int, corpus_tokens: int) -> int:
        """Tokens one training step reads: here one batch of windows."""
        return batch_tokens

    @classmethod
    def planned_steps(cls, steps: int, options: dict[str, Any]) -> int:
        """Steps a run given a budget of `steps` takes (an option may set its own)."""
        return steps

    @classmethod
    def cpu_tokens_per_second(cls, options: dict[str, Any]) -> float | None:
        """Tokens a 2-core CPU trains on per second; None: costed by the backbone's FLOPs."""
        return None

    # ---- data side (numpy, DataLoader workers) -------------------------------------------
    def window_length(self) -> int:
        """Raw tokens consumed per example (the rest of seq_len holds special tokens)."""
        return self.seq_len

    def make_example(self, window: Window, rng: np.random.Generator) -> Example:
        raise NotImplementedError

    def data_warning(self, shards: TokenShards, tokenizer: Tokenizer) -> str | None:
        """Why this objective would train on `shards` (encoded by `tokenizer`) other than the user
        expects, or None. Pre-training warns with it before the first step."""
        return None

    def collate(self, examples: list[Example]) -> Batch:
        """Stack equally-shaped examples; objectives with ragged examples override this."""
        return {key: torch.from_numpy(np.stack([ex[key] for ex in examples]))
                for key in examples[0]}

    # ---- model side ---------------------------------------------------------------------
    def build_model(self, cfg: ModelConfig) -> nn.Module:
        return Transformer(cfg)

    def loss(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, float]]:
        raise NotImplementedError

    def train_standalone(self, shards: TokenShards, tokenizer: Tokenizer, run: Path,
                         cfg: Any, progress: bool, init: Path | None = None) -> dict[str, Any]:
        """Train without the shared loop, writing RUN/model.safetensors and RUN/metrics.jsonl;
        returns the summary. `init`: a run of the same objective to continue. Only for
        `standalone` objectives."""
        raise NotImplementedError

    def initialise(self, model: nn.Module, run: Path) -> None:
        """Seed `model` from an earlier run (`--init RUN`): a word2vec run's vectors start every
        token embedding (the rest stays random), any other run's weights load as they are."""
        config = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
        if config.get("objective") == "word2vec":
            init_token_embeddings(model, load_file(str(run / "model.safetensors"))["embedding"], str(run))
            return
        try:
            load_weights(model, run / "model.safetensors")
        except UserError:
            other = config.get("objective")
            if other in (None, self.name):  # the same network: the size or the tokenizer differs
                raise
            from ptmkit.objectives import OBJECTIVES
            kin = sorted(name for name, cls in OBJECTIVES.items() if cls.layout == self.layout and name != "word2vec")
            raise UserError(f"{self.name} cannot start from a {other} run: its network is another one", str(run),
                            f"start {self.name} from a run of {', '.join(kin)} (or word2vec, whose vectors seed "
                            "the embeddings), with the same --model size and tokenizer") from None

    def to_downstream(self, network: nn.Module, cfg: ModelConfig) -> nn.Module:
        """The network fine-tuning builds on, made from the pre-training network (by default
        itself; ELECTRA keeps its discriminator, word2vec seeds a small encoder, ELMo adds a
        scalar mix)."""
        return network

    def downstream_network(self, cfg: ModelConfig) -> nn.Module:
        """A fresh downstream network of the right shape (to load fine-tuned weights into)."""
        return self.to_downstream(self.build_model(cfg), cfg)

    def load_pretrained(self, run: Path, cfg: ModelConfig) -> nn.Module:
        """The downstream network with the pre-training run's weights in it."""
        model = self.build_model(cfg)
        load_weights(model, run / "model.safetensors")
        return self.to_downstream(model, cfg)

    def features(self, model: nn.Module, input_ids: Tensor, valid: Tensor) -> Tensor:
        """Token representations (B, L, H) that downstream tasks build on.

        `valid` (B, L) marks real tokens. Encoders (and two-stream models, whose content stream
        is a plain bidirectional encoder) attend both ways, and so does a prefix LM, whose whole
        input is its prefix (T5 classifies so: the mask pre-training gave the prefix);
        decoder-only models attend causally; encoder-decoders expose their encoder. Objectives
        with another network override this.
        """
        mask = valid[:, None, :]
        if self.architecture == "decoder":
            mask = mask & torch.ones(input_ids.shape[1], input_ids.shape[1], dtype=torch.bool,
                                     device=input_ids.device).tril()
        return model.encode(input_ids, attn_mask=mask)

    def predicted_fraction(self) -> float:
        """Fraction of input positions projected onto the vocabulary (for FLOP accounting)."""
        return 1.0

    def input_tokens(self, batch: Batch) -> int:
        """Tokens counted for throughput: non-padding encoder/decoder-only input tokens, counted
        the same way for every objective (decoder inputs of encoder-decoders are not added)."""
        return int((batch["input_ids"] != self.vocab.special.pad).sum())

    def loss_weight(self, batch: Batch) -> int | None:
        """Positions the batch's loss averages over (None: every batch weighs the same)."""
        if not self.loss_over_labels or "labels" not in batch:
            return None
        return int((batch["labels"] != IGNORE).sum())


def token_cross_entropy(model: nn.Module, hidden: Tensor, labels: Tensor) -> tuple[Tensor, dict[str, float]]:
    """Cross-entropy computed only at rows with a target: the vocabulary projection, the most
    expensive matmul of a small model, is skipped everywhere else (and fused with the loss)."""
    selected = labels != IGNORE
    return rows_cross_entropy(model, hidden[selected], labels[selected])


def rows_cross_entropy(model: nn.Module, rows: Tensor, targets: Tensor) -> tuple[Tensor, dict[str, float]]:
    """`token_cross_entropy` of hidden rows already selected (e.g. by ``encode(select=...)``)."""
    loss, accuracy = model.token_loss(rows, targets)
    return loss, {"accuracy": float(accuracy), "predicted": float(targets.numel())}
