"""word2vec: skip-gram or CBOW with negative sampling, trained by gensim on the run's shards.

Not a network of the shared trainer: `pretrain` calls `train_standalone`, which streams the
prepared shards to gensim `Word2Vec` (Mikolov et al. 2013; word2vec.c) and writes

* ``vectors.txt``: the word vectors in word2vec text format (`KeyedVectors.load_word2vec_format`);
* ``model.safetensors``: ``embedding``, a (tokenizer vocab, vector_size) float32 matrix aligned
  to the run's tokenizer, ready to initialise a downstream token embedding (see `token_keys`);
* ``metrics.jsonl``: one line per epoch; ``eval.json``: intrinsic scores and coverage;
* ``context.safetensors``: gensim's output (negative-sampling) vectors and word counts, aligned to
  ``vectors.txt``, which a later run needs to continue this one.

Continued training (``--init RUN``, a compare's path C): the new run starts from RUN's vocabulary,
vectors and output weights, adds the words of its own corpus that reach min_count (gensim's
online training, ``build_vocab(update=True)``: counts of known words add up), and trains on its
own corpus only, so words it never sees keep RUN's vectors. The tokenizer must be RUN's.

Units. With ``unit: words`` (default) each corpus sentence is decoded back to text and split
into lowercase alphabetic words (gensim `simple_preprocess`), one gensim sentence per corpus
sentence, so windows never cross a sentence. ``unit: tokens`` trains on the tokenizer's pieces
instead (the choice for text without spaces between words, e.g. Chinese).

Budget. One ``--steps`` step is one epoch over the training split (``epochs`` overrides it);
gensim's per-epoch loss is the natural unit of progress, and each epoch is one `train()` call
whose learning rate continues gensim's linear decay from ``alpha`` to ``min_alpha`` over the
whole run, so the schedule equals a single call's while the loss, which gensim accumulates per
call (in float32), is read per epoch. ``--max-minutes`` stops after the epoch that crosses it.
``--lr``, ``--batch-size`` and ``--seq-len`` configure the Transformer trainer and are unused:
SGD on word2vec needs its own rate (``alpha``).

Determinism: with ``workers: 1`` (the default here; gensim's is 3) and a fixed ``--seed`` the
vectors are reproducible; gensim 4 seeds its initial vectors from the seed alone, so
PYTHONHASHSEED does not matter. More workers are faster but thread scheduling changes the result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gensim.models import KeyedVectors
from gensim.models import Word2Vec as GensimWord2Vec
from gensim.test.utils import datapath
from gensim.utils import simple_preprocess
from safetensors.numpy import load_file, save_file
from torch import nn
from tqdm import tqdm

from ptmkit.data.shards import TokenShards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import UserError, check_values
from ptmkit.fileio import read_yaml
from ptmkit.model.backbone import Transformer
from ptmkit.model.config import ModelConfig
from ptmkit.model.word_vectors import WordVectors
from ptmkit.objectives.base import Objective
from ptmkit.train.checkpoint import atomic_save_model
from ptmkit.train.loop import TrainConfig

MAX_WORD_LENGTH = 100
"""Longest word kept (word2vec.c MAX_STRING); gensim's simple_preprocess default of 15 drops
ordinary long words."""
AUTO_MIN_COUNT, MIN_VOCAB = 5, 1000
"""min_count 0 means 5 (word2vec.c / gensim), lowered until at least 1000 words (or every word of
a smaller corpus) stay in the vocabulary, so tiny corpora still train."""
ANALOGY_VOCAB = 30_000
"""Analogies are answered among the 30k most frequent words (word2vec.c compute-accuracy)."""
DECODE_CHUNK = 4096
"""Sentences decoded per tokenizer call while streaming."""
CONTEXT_FILE = "context.safetensors"
"""The output vectors (`context`) and word counts (`counts`) of a run, in vectors.txt order."""
_WORD_START = {"bpe": "Ġ", "unigram": "▁"}
"""Piece prefix that marks a word start (wordpiece marks continuations with ## instead)."""


def split_words(text: str) -> list[str]:
    """Lowercase alphabetic words of `text` (gensim `simple_preprocess`, any length 1..100)."""
    return simple_preprocess(text, min_len=1, max_len=MAX_WORD_LENGTH)


def token_word(tokenizer: Tokenizer, token_id: int) -> str | None:
    """The word a token spells on its own: a word-initial piece (Ġ / ▁ prefix, or no ## prefix)
    whose text is exactly one lowercase word; None for continuations, punctuation, specials."""
    piece = tokenizer.hf.id_to_token(token_id)
    if tokenizer.kind == "wordpiece":
        starts = not piece.startswith("##")
    else:
        starts = piece.startswith(_WORD_START.get(tokenizer.kind, ""))
    text = tokenizer.decode([token_id]).strip().lower()
    return text if starts and split_words(text) == [text] else None


def token_keys(tokenizer: Tokenizer, unit: str) -> list[str | None]:
    """For each token id, the gensim key whose vector becomes its embedding row: the token's word
    (unit words) or the piece itself (unit tokens); None for special tokens and non-words."""
    if unit == "words":
        return [token_word(tokenizer, i) for i in range(tokenizer.vocab_size)]
    special = tokenizer.special.all()
    return [None if i in special else tokenizer.hf.id_to_token(i) for i in range(tokenizer.vocab_size)]


class ShardSentences:
    """Restartable stream of gensim sentences, one per corpus sentence of the shards; decoded
    chunk by chunk on every pass, so the corpus is never held in memory as strings."""

    def __init__(self, shards: TokenShards, tokenizer: Tokenizer, unit: str) -> None:
        self.shards, self.tokenizer, self.unit = shards, tokenizer, unit
        self.pieces = token_keys(tokenizer, "tokens") if unit == "tokens" else []

    def __iter__(self) -> Iterator[list[str]]:
        offsets = self.shards.sentence_offsets
        for first in range(0, len(offsets) - 1, DECODE_CHUNK):
            bounds = offsets[first: first + DECODE_CHUNK + 1]
            ids = [self.shards.tokens[a:b].tolist() for a, b in zip(bounds[:-1], bounds[1:])]
            yield from self._units(ids)

    def _units(self, sentences: list[list[int]]) -> Iterator[list[str]]:
        if self.unit == "tokens":
            for ids in sentences:
                yield [self.pieces[i] for i in ids if self.pieces[i] is not None]
        else:
            for text in self.tokenizer.hf.decode_batch(sentences, skip_special_tokens=True):
                yield split_words(text)


def effective_min_count(counts: Counter, requested: int) -> int:
    """`requested` when given (> 0); else see AUTO_MIN_COUNT."""
    if requested > 0:
        return requested
    wanted = min(MIN_VOCAB, len(counts))
    frequencies = np.fromiter(counts.values(), dtype=np.int64, count=len(counts))
    return next((m for m in range(AUTO_MIN_COUNT, 1, -1) if (frequencies >= m).sum() >= wanted), 1)


def epoch_alphas(alpha: float, min_alpha: float, epochs: int, epoch: int, *, elapsed: float = 0.0,
                 budget: float = 0.0, epoch_seconds: float = 0.0) -> tuple[float, float]:
    """Learning rate at the start and end of `epoch`: gensim's linear decay over the run.

    The run's progress is its share of the epochs or, under a time budget of `budget` seconds
    (`elapsed` of them spent), its share of the wall clock, the epoch assumed to take as long as
    the last one (`epoch_seconds`): whichever is further. A time budget alone sets `epochs` to an
    unreachable count, over which the rate would never decay."""
    def progress(epochs_done: int, seconds: float) -> float:
        share = epochs_done / epochs
        return min(1.0, max(share, seconds / budget) if budget > 0 else share)

    def at(fraction: float) -> float:
        return alpha - (alpha - min_alpha) * fraction
    return at(progress(epoch, elapsed)), at(progress(epoch + 1, elapsed + epoch_seconds))


def embedding_matrix(wv: KeyedVectors, keys: list[str | None],
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(len(keys), dim) float32: the vector of each row's key where known, else a random normal
    row of the trained vectors' scale. Returns the matrix and the per-row `known` mask."""
    known = np.array([key is not None and key in wv.key_to_index for key in keys])
    matrix = rng.normal(0.0, float(wv.vectors.std()), (len(keys), wv.vector_size)).astype(np.float32)
    matrix[known] = wv.vectors[[wv.key_to_index[key] for key, ok in zip(keys, known) if ok]]
    return matrix, known


def word_vectors_of_tokens(wv: KeyedVectors, tokenizer: Tokenizer) -> KeyedVectors:
    """unit tokens: word -> vector of the (most frequent) whole-word token spelling it, so the
    word-level benchmarks can score token vectors."""
    ids = tokenizer.hf.get_vocab()
    words: dict[str, np.ndarray] = {}
    for piece in wv.index_to_key:  # most frequent first
        word = token_word(tokenizer, ids[piece])
        if word is not None:
            words.setdefault(word, wv[piece])
    kv = KeyedVectors(wv.vector_size)
    if words:
        kv.add_vectors(list(words), np.stack(list(words.values())))
    return kv


def _number(value: float) -> float | None:
    """JSON has no NaN: a score with nothing to score (every pair out of vocabulary) is null."""
    return None if np.isnan(value) else float(value)


def _pair_scores(kv: KeyedVectors, file: str) -> dict[str, float | None]:
    """Spearman and Pearson correlation with human similarity judgements; null when fewer than
    two pairs are in the vocabulary (gensim then fails inside scipy)."""
    try:
        pearson, spearman, oov_percent = kv.evaluate_word_pairs(datapath(file))
    except ValueError:
        return {"spearman": None, "pearson": None, "oov_ratio": None}
    return {"spearman": _number(spearman[0]), "pearson": _number(pearson[0]), "oov_ratio": oov_percent / 100}


def intrinsic_eval(kv: KeyedVectors) -> dict[str, dict[str, Any]]:
    """Spearman ρ on WordSim-353 and SimLex-999 and analogy accuracy on Google's
    questions-words, from gensim's copies; OOV pairs/questions are skipped and their share kept."""
    scores = {name: _pair_scores(kv, file)
              for name, file in (("wordsim353", "wordsim353.tsv"), ("simlex999", "simlex999.txt"))}
    path = datapath("questions-words.txt")
    accuracy, sections = kv.evaluate_word_analogies(path, restrict_vocab=ANALOGY_VOCAB)
    total = sections[-1]
    answered = len(total["correct"]) + len(total["incorrect"])
    with open(path, encoding="utf-8") as f:
        questions = sum(1 for line in f if line.strip() and not line.startswith(":"))
    scores["analogy"] = {"accuracy": float(accuracy), "answered": answered, "questions": questions,
                         "oov_ratio": 1 - answered / questions, "restrict_vocab": ANALOGY_VOCAB}
    return scores


def _atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write` on a temp sibling of `path`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Word2Vec(Objective):
    name = "word2vec"
    family = "shallow"
    architecture = "shallow"
    standalone = True
    revision = 1

    @dataclass(kw_only=True)
    class Options:
        """gensim's defaults (= word2vec.c's, but for its CBOW alpha of 0.05) unless noted."""

        mode: str = "skipgram"
        """skipgram or cbow (gensim sg=1 / sg=0; gensim's own default is CBOW)."""
        unit: str = "words"
        """words (decoded, lowercase) or tokens (the tokenizer's pieces)."""
        vector_size: int = 100
        window: int = 5
        """Largest distance to a context word; the radius is drawn from 1..window per word."""
        negative: int = 5
        ns_exponent: float = 0.75
        sample: float = 1e-3
        min_count: int = 0
        """0 = automatic (see AUTO_MIN_COUNT)."""
        alpha: float = 0.025
        min_alpha: float = 1e-4
        cbow_mean: bool = True
        epochs: int = 0
        """0 = one epoch per --steps step."""
        workers: int = 1
        """gensim threads; 1 keeps runs reproducible."""

        def __post_init__(self) -> None:
            checks = [("mode", self.mode in ("skipgram", "cbow"), "use skipgram or cbow"),
                      ("unit", self.unit in ("words", "tokens"), "use words or tokens"),
                      ("vector_size", self.vector_size >= 1, "use at least 1"),
                      ("window", self.window >= 1, "use at least 1"),
                      ("negative", self.negative >= 1, "use at least 1 (hierarchical softmax is not offered)"),
                      ("sample", self.sample >= 0, "use 0 (off) or a small positive value such as 1e-3"),
                      ("min_count", self.min_count >= 0, "use 0 (automatic) or a positive count"),
                      ("alpha", self.alpha > self.min_alpha > 0, "use 0 < min_alpha < alpha"),
                      ("epochs", self.epochs >= 0, "use 0 (= --steps) or a positive count"),
                      ("workers", self.workers >= 1, "use at least 1")]
            check_values(self, checks, "objective_options.{}".format)

        def epochs_for(self, steps: int) -> int:
            return self.epochs or steps

    @classmethod
    def step_tokens(cls, batch_tokens: int, corpus_tokens: int) -> int:
        return corpus_tokens  # one step is one epoch

    @classmethod
    def planned_steps(cls, steps: int, options: dict[str, Any]) -> int:
        return cls.parse_options(options).epochs_for(steps)

    @classmethod
    def cpu_tokens_per_second(cls, options: dict[str, Any]) -> float | None:
        # skip-gram, 5 negatives, window 5, 256-d: 190k tokens/s with one thread on a Zen 4 core,
        # 270k with two on an AVX2 EPYC (EXPERIMENTS E3, E8). About 40% of the time (streaming and
        # decoding the shards) does not grow with the vector size: 100-d ran 1.7x faster (the
        # demo), 512-d 1.5x slower (E8).
        opts = cls.parse_options(options)
        return 1.5e5 * opts.workers / (0.4 + 0.6 * opts.vector_size / 256)

    def build_model(self, cfg: ModelConfig) -> nn.Module:
        return WordVectors(cfg.vocab_size, self.options.vector_size)

    def to_downstream(self, network: nn.Module, cfg: ModelConfig) -> nn.Module:
        """A small encoder of the run's size whose token embedding starts as the word vectors
        (width = vector_size): static vectors alone cannot tell "not good" from "good"."""
        width = network.embedding.shape[1]
        heads = max(h for h in range(1, cfg.heads + 1) if width % h == 0)
        encoder_cfg = dataclasses.replace(cfg, hidden=width, heads=heads, ffn=4 * width, n_decoder_layers=0)
        encoder = Transformer(encoder_cfg)
        with torch.no_grad():
            encoder.embed.tokens.weight.copy_(network.embedding)
        return encoder

    def train_standalone(self, shards: TokenShards, tokenizer: Tokenizer, run: Path,
                         cfg: TrainConfig, progress: bool, init: Path | None = None) -> dict[str, Any]:
        opts = self.options
        sentences = ShardSentences(shards, tokenizer, opts.unit)
        model, min_count = self._build_gensim(sentences, cfg.seed, init)
        epochs = opts.epochs_for(cfg.steps)
        log = self._train(model, sentences, epochs, cfg.max_minutes, run / "metrics.jsonl", progress)
        wv = model.wv
        matrix, known = embedding_matrix(wv, token_keys(tokenizer, opts.unit), np.random.default_rng(cfg.seed))
        occurrences = np.bincount(shards.tokens, minlength=len(known))
        coverage = {"vocab_rows": float(known.mean()),
                    "corpus_tokens": float(occurrences[known].sum() / max(occurrences.sum(), 1))}
        scores = intrinsic_eval(wv if opts.unit == "words" else word_vectors_of_tokens(wv, tokenizer))
        self._save(run, model, matrix, {**scores, "coverage": coverage})
        return {**log, "unit": opts.unit, "vocabulary": len(wv), "min_count": min_count,
                "vector_size": opts.vector_size, "coverage": coverage,
                "wordsim353_spearman": scores["wordsim353"]["spearman"],
                "simlex999_spearman": scores["simlex999"]["spearman"],
                "analogy_accuracy": scores["analogy"]["accuracy"]}

    def _build_gensim(self, sentences: ShardSentences, seed: int,
                      init: Path | None) -> tuple[GensimWord2Vec, int]:
        """A gensim model with its vocabulary built from one counting pass over the stream (added
        to `init`'s, whose weights it starts from)."""
        opts = self.options
        counts: Counter = Counter()
        n_sentences = 0
        for sentence in sentences:
            counts.update(sentence)
            n_sentences += 1
        min_count = effective_min_count(counts, opts.min_count)
        if not any(c >= min_count for c in counts.values()):
            raise UserError(f"no {opts.unit[:-1]} occurs {min_count} times in the training split",
                            "objective_options.min_count",
                            "use more text, a lower min_count, or unit: tokens for text without spaces")
        model = GensimWord2Vec(
            vector_size=opts.vector_size, window=opts.window, min_count=min_count,
            sample=opts.sample, seed=seed, workers=opts.workers, sg=int(opts.mode == "skipgram"),
            hs=0, negative=opts.negative, ns_exponent=opts.ns_exponent, cbow_mean=int(opts.cbow_mean),
            alpha=opts.alpha, min_alpha=opts.min_alpha)
        if init is not None:
            self._start_from(model, init)
        model.build_vocab_from_freq(counts, corpus_count=n_sentences, update=init is not None)
        return model, min_count

    def _start_from(self, model: GensimWord2Vec, init: Path) -> None:
        """Give `model` the vocabulary, counts, vectors and output vectors of the run `init`."""
        config = read_yaml(init / "config.yaml", str(init)) or {}
        fix = "pass --init a word2vec run made by this ptmkit (re-run an older one)"
        if config.get("objective") != self.name:
            raise UserError(f"word2vec continues a word2vec run; {init} is a {config.get('objective')} run",
                            str(init), fix)
        if not (init / CONTEXT_FILE).is_file():
            raise UserError(f"the word2vec run has no {CONTEXT_FILE} (made before ptmkit saved it)", str(init), fix)
        saved = config.get("objective_options") or {}
        for option in ("unit", "vector_size"):
            if saved.get(option) != getattr(self.options, option):
                raise UserError(f"the --init run has {option} {saved.get(option)!r}, this one "
                                f"{getattr(self.options, option)!r}", f"objective_options.{option}",
                                f"use the --init run's {option}")
        vectors = KeyedVectors.load_word2vec_format(str(init / "vectors.txt"))
        context = load_file(str(init / CONTEXT_FILE))
        min_count, model.min_count = model.min_count, 1  # every word of the init run stays
        model.build_vocab_from_freq(dict(zip(vectors.index_to_key, context["counts"].tolist())))
        model.min_count = min_count
        order = [vectors.key_to_index[key] for key in model.wv.index_to_key]
        model.wv.vectors[:] = vectors.vectors[order]
        model.syn1neg[:] = context["context"][order]

    def _train(self, model: GensimWord2Vec, sentences: ShardSentences, epochs: int,
               max_minutes: float, metrics_path: Path, progress: bool) -> dict[str, Any]:
        """One gensim `train()` per epoch, one metrics line per epoch (see the module docstring).
        `loss` is the epoch's summed negative-sampling loss per trained (kept) word."""
        opts, tokens, elapsed, stopped_by = self.options, 0, 0.0, "steps"
        loss, took = float("nan"), 0.0
        with open(metrics_path, "w") as metrics, tqdm(total=epochs, desc="word2vec", unit="epoch",
                                                        disable=not progress) as bar:
            for epoch in range(epochs):
                start_alpha, end_alpha = epoch_alphas(opts.alpha, opts.min_alpha, epochs, epoch, elapsed=elapsed,
                                                      budget=max_minutes * 60, epoch_seconds=took)
                start = time.perf_counter()
                trained, raw = model.train(sentences, total_examples=model.corpus_count, epochs=1,
                                           start_alpha=start_alpha, end_alpha=end_alpha, compute_loss=True)
                took = time.perf_counter() - start
                tokens, elapsed = tokens + raw, elapsed + took
                loss = model.get_latest_training_loss() / max(trained, 1)
                metrics.write(json.dumps({"step": epoch + 1, "loss": loss, "lr": start_alpha, "tokens": tokens,
                                          "trained": trained, "tokens_per_s": raw / max(took, 1e-9),
                                          "elapsed_s": round(elapsed, 3)}) + "\n")
                metrics.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}")
                if max_minutes and elapsed >= max_minutes * 60:
                    stopped_by = "time"
                    break
        return {"steps": epoch + 1, "tokens": tokens, "train_seconds": round(elapsed, 2),
                "tokens_per_s": tokens / max(elapsed, 1e-9), "stopped_by": stopped_by, "final_loss": loss}

    def _save(self, run: Path, model: GensimWord2Vec, matrix: np.ndarray, evaluation: dict[str, Any]) -> None:
        wv = model.wv
        _atomic(run / "vectors.txt", lambda tmp: wv.save_word2vec_format(str(tmp), binary=False))
        counts = np.array([wv.get_vecattr(key, "count") for key in wv.index_to_key], dtype=np.int64)
        _atomic(run / CONTEXT_FILE, lambda tmp: save_file({"context": model.syn1neg, "counts": counts}, str(tmp)))
        holder = WordVectors(*matrix.shape)
        holder.embedding.data = torch.from_numpy(matrix)
        atomic_save_model(holder, run / "model.safetensors", metadata={"unit": self.options.unit})
        _atomic(run / "eval.json", lambda tmp: tmp.write_text(json.dumps(evaluation, indent=2) + "\n"))
