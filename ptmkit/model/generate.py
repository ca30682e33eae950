"""Text generation from the shared backbone: KV-cached decoding, greedy and beam search, nucleus
sampling.

A *session* holds what one batch of prompts needs between steps (the encoder memory, the
`KVCache`, the tokens so far) and answers one question: the next-token logits after feeding
these tokens. The searches only talk to sessions, so they run unchanged on encoder-decoders
(decode from the decoder, the source encoded once), decoder-only models (continue the prompt) and
the hand-made distributions of the tests.

Conventions, from fairseq's `SequenceGenerator` and Hugging Face's `generate`:

* lengths count generated tokens, EOS included; `max_length` caps them, `min_length` forbids EOS
  before that many tokens;
* beam search scores a finished hypothesis `sum log p / length ** length_penalty` (GNMT-style, as
  fairseq's `--lenpen` and HF's `length_penalty`); 0 ranks by raw log-probability, larger values
  favour longer outputs;
* beam search ranks 2K candidates per input, so that K stay alive even if K of them end in EOS,
  and only an EOS among the top K finishes a hypothesis; an input is done once it has K finished
  hypotheses (fairseq; HF's `early_stopping=True`); hypotheses still running at `max_length` are
  finished there. So a beam of 1 is exactly greedy search.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ptmkit.errors import UserError
from ptmkit.model.backbone import KVCache, Transformer, key_padding_mask
from ptmkit.train.host import device_of

ARCHITECTURES = ("encoder_decoder", "decoder", "prefix")
"""Backbone families that can generate: decode from the decoder, or continue the prompt
(causally, or with the prompt seen both ways for a prefix LM)."""


@dataclass(frozen=True)
class DecodeOptions:
    """How to pick tokens. Beam search if `beam > 1`, nucleus sampling if `top_p` is set, else
    greedy."""

    max_length: int = 64
    """Most tokens generated per input, EOS included."""
    min_length: int = 0
    """EOS is forbidden until this many tokens have been generated."""
    beam: int = 1
    length_penalty: float = 1.0
    """Beam search ranks finished hypotheses by `sum log p / length ** length_penalty`."""
    top_p: float | None = None
    """Sample from the smallest set of tokens whose probability reaches top_p (Holtzman et al.)."""
    temperature: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_length < 1 or not 0 <= self.min_length <= self.max_length:
            raise UserError(f"lengths max {self.max_length}, min {self.min_length} are not "
                            "0 <= min <= max, max >= 1", "--max-length/--min-length",
                            "e.g. --max-length 64 --min-length 0")
        if self.beam < 1:
            raise UserError(f"beam size {self.beam} is below 1", "--beam", "use 1 (greedy) or more")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise UserError(f"top_p={self.top_p} is outside (0, 1]", "--top-p", "e.g. --top-p 0.9")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise UserError(f"temperature={self.temperature} is not positive", "--temperature",
                            "e.g. --temperature 0.8")
        if self.top_p is not None and self.beam > 1:
            raise UserError("sampling and beam search exclude each other", "--top-p/--beam",
                            "drop --beam to sample, or --top-p to search")


@dataclass
class Generated:
    """One output: its tokens (EOS not included) and their log-probability under the model
    (EOS included when it `ended` there rather than at max_length)."""

    tokens: list[int]
    logprob: float
    ended: bool


class Session(Protocol):
    """What a search needs from a model for one batch of (N, possibly beam-expanded) rows."""

    def next_logits(self, tokens: Tensor | None) -> Tensor:
        """Append `tokens` (N,) to every row (None on the first call: the prompt alone) and
        return the next-token logits (N, V)."""

    def reorder(self, index: Tensor) -> None:
        """Keep rows `index` (N,): beam search moves hypotheses between the slots of one input
        (a row's new index stays among the `copies` of its prompt)."""


def _right_padded(rows: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    width = max(1, max(len(row) for row in rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.as_tensor(row, dtype=torch.long)
    valid = torch.arange(width)[None, :] < torch.tensor([len(row) for row in rows])[:, None]
    return ids.to(device), valid.to(device)


def _left_padded(rows: list[list[int]], pad: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Prompts aligned on their last token, so every row's next token is the same column."""
    ids, valid = _right_padded([row[::-1] for row in rows], pad, device)
    return ids.flip(1), valid.flip(1)


class EncoderDecoderSession:
    """Encode the sources once, then decode from `decoder_prompt` (the objective's start token,
    plus any forced tokens such as BART's `<s>`); with a cache only the new row is decoded."""

    def __init__(self, model: Transformer, sources: list[list[int]], decoder_prompt: list[int],
                 pad: int, copies: int = 1, use_cache: bool = True) -> None:
        device = device_of(model)
        ids, valid = _right_padded(sources, pad, device)
        ids, valid = ids.repeat_interleave(copies, 0), valid.repeat_interleave(copies, 0)
        mask = None if bool(valid.all()) else key_padding_mask(valid)
        self.model, self.memory_mask = model, mask
        self.memory = model.encode(ids, attn_mask=mask)
        self.tokens = torch.tensor(decoder_prompt, device=device).expand(len(ids), -1)
        self.cache = KVCache(len(model.decoder.layers)) if use_cache else None

    def next_logits(self, tokens: Tensor | None) -> Tensor:
        if tokens is not None:
            self.tokens = torch.cat([self.tokens, tokens[:, None]], dim=1)
        feed = self.tokens if self.cache is None or tokens is None else tokens[:, None]
        hidden = self.model.decode(feed, self.memory, memory_mask=self.memory_mask, cache=self.cache)
        return self.model.logits(hidden[:, -1]).float()

    def reorder(self, index: Tensor) -> None:
        # rows move only among the copies of one source: the memory, its mask and its
        # projections are the same for all of them, so only the decoder's own state follows
        self.tokens = self.tokens[index]
        if self.cache is not None:
            self.cache.reorder(index, cross=False)


class DecoderOnlySession:
    """Continue left-padded prompts. A prefix LM (`prefix=True`) sees its prompt both ways, as
    in pre-training (`masks.prefix`); the continuation is causal in both cases. Positions count
    real tokens only, so padding does not shift them."""

    def __init__(self, model: Transformer, prompts: list[list[int]], pad: int, prefix: bool,
                 copies: int = 1, use_cache: bool = True) -> None:
        device = device_of(model)
        ids, valid = _left_padded(prompts, pad, device)
        self.tokens, self.valid = ids.repeat_interleave(copies, 0), valid.repeat_interleave(copies, 0)
        self.model, self.prefix, self.prompt_width = model, prefix, ids.shape[1]
        self.cache = KVCache(len(model.encoder.layers)) if use_cache else None

    def _mask(self, rows: int) -> Tensor:
        """(N, rows, total): the last `rows` rows over every key so far."""
        total = self.tokens.shape[1]
        query = torch.arange(total - rows, total, device=self.tokens.device)[:, None]
        key = torch.arange(total, device=self.tokens.device)[None, :]
        allow = key <= query
        if self.prefix:
            allow = allow | (key < self.prompt_width)
        # a padding row would see no key at all (NaN); it may see itself, and is never read
        return (allow & self.valid[:, None, :]) | (key == query)

    def next_logits(self, tokens: Tensor | None) -> Tensor:
        if tokens is not None:
            self.tokens = torch.cat([self.tokens, tokens[:, None]], dim=1)
            self.valid = F.pad(self.valid, (0, 1), value=True)
        rows = self.tokens.shape[1] if self.cache is None or tokens is None else 1
        positions = (self.valid.long().cumsum(1) - 1).clamp(min=0)[:, -rows:]
        hidden = self.model.encode(self.tokens[:, -rows:], position_ids=positions,
                                   attn_mask=self._mask(rows), cache=self.cache)
        return self.model.logits(hidden[:, -1]).float()

    def reorder(self, index: Tensor) -> None:
        self.tokens, self.valid = self.tokens[index], self.valid[index]
        if self.cache is not None:
            self.cache.reorder(index)


class Suppressing:
    """A session whose logits never choose `ids` (HF's `suppress_tokens`): special tokens that
    no target contains, which a barely trained model may still favour."""

    def __init__(self, session: Session, ids: Sequence[int]) -> None:
        self.session, self.ids = session, list(ids)

    def next_logits(self, tokens: Tensor | None) -> Tensor:
        logits = self.session.next_logits(tokens)
        logits[:, self.ids] = -torch.inf
        return logits

    def reorder(self, index: Tensor) -> None:
        self.session.reorder(index)


def open_session(model: Transformer, prompts: list[list[int]], *, architecture: str, pad: int,
                 decoder_prompt: list[int] | None = None, copies: int = 1,
                 use_cache: bool = True) -> Session:
    """A session for `prompts`: sources of an encoder-decoder, or prompts to continue."""
    if architecture == "encoder_decoder":
        return EncoderDecoderSession(model, prompts, list(decoder_prompt or []), pad, copies, use_cache)
    if architecture in ("decoder", "prefix"):
        return DecoderOnlySession(model, prompts, pad, architecture == "prefix", copies, use_cache)
    raise ValueError(f"cannot generate with a {architecture!r} backbone (use one of {ARCHITECTURES})")


@torch.no_grad()
def generate(model: Transformer, prompts: list[list[int]], options: DecodeOptions, *,
             architecture: str, eos: int, pad: int, decoder_prompt: list[int] | None = None,
             suppress: Sequence[int] = (), use_cache: bool = True) -> list[Generated]:
    """Generate one output per prompt with the search `options` ask for (model put in eval mode);
    tokens in `suppress` are never generated."""
    model.eval()
    session = open_session(model, prompts, architecture=architecture, pad=pad,
                           decoder_prompt=decoder_prompt, copies=options.beam, use_cache=use_cache)
    if suppress:
        session = Suppressing(session, suppress)
    if options.beam > 1:
        return beam_search(session, len(prompts), options, eos)
    return sample(session, len(prompts), options, eos) if options.top_p is not None \
        else greedy(session, len(prompts), options, eos)


def _forbid_eos(logprobs: Tensor, step: int, options: DecodeOptions, eos: int) -> Tensor:
    if step < options.min_length:
        logprobs = logprobs.clone()
        logprobs[:, eos] = -torch.inf
    return logprobs


def greedy(session: Session, n: int, options: DecodeOptions, eos: int) -> list[Generated]:
    """The most probable token at every step."""
    return _left_to_right(session, n, options, eos, lambda logprobs: logprobs.argmax(-1))


def sample(session: Session, n: int, options: DecodeOptions, eos: int) -> list[Generated]:
    """Nucleus (top-p) sampling at `temperature`, reproducible from `seed` (Holtzman et al. 2019;
    HF's `TopPLogitsWarper`: the most probable token is always kept, so p -> 0 is greedy)."""
    generator = torch.Generator().manual_seed(options.seed)

    def pick(logprobs: Tensor) -> Tensor:
        probs = torch.softmax(logprobs / options.temperature, dim=-1)
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        before = sorted_probs.cumsum(-1) - sorted_probs  # mass of the more probable tokens
        kept = torch.where(before < options.top_p, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(kept.cpu(), 1, generator=generator).to(order.device)
        return order.gather(1, choice).squeeze(1)

    return _left_to_right(session, n, options, eos, pick)


def _left_to_right(session: Session, n: int, options: DecodeOptions, eos: int,
                   pick) -> list[Generated]:
    """One token per row and step until every row has produced EOS or max_length tokens."""
    logits = session.next_logits(None)
    done = torch.zeros(n, dtype=torch.bool, device=logits.device)
    total = torch.zeros(n, device=logits.device)
    steps: list[Tensor] = []
    for step in range(options.max_length):
        logprobs = _forbid_eos(torch.log_softmax(logits, dim=-1), step, options, eos)
        token = torch.where(done, eos, pick(logprobs))  # finished rows idle on EOS
        total += torch.where(done, 0.0, logprobs.gather(1, token[:, None]).squeeze(1))
        steps.append(token)
        done = done | (token == eos)
        if bool(done.all()) or step + 1 == options.max_length:
            break
        logits = session.next_logits(token)
    return [_cut(row, float(score), eos) for row, score in zip(torch.stack(steps, 1).tolist(), total)]


def _cut(tokens: list[int], logprob: float, eos: int) -> Generated:
    if eos in tokens:
        return Generated(tokens[: tokens.index(eos)], logprob, True)
    return Generated(tokens, logprob, False)


class _Finished:
    """The best `size` finished hypotheses of one input (HF `BeamHypotheses`)."""

    def __init__(self, size: int, length_penalty: float) -> None:
        self.size, self.length_penalty = size, length_penalty
        self.items: list[tuple[float, Generated]] = []

    def add(self, tokens: list[int], logprob: float, ended: bool) -> None:
        length = len(tokens) + ended
        self.items.append((logprob / length ** self.length_penalty, Generated(tokens, logprob, ended)))
        self.items.sort(key=lambda item: -item[0])  # stable: earlier hypotheses win ties
        del self.items[self.size:]

    @property
    def full(self) -> bool:
        return len(self.items) >= self.size

    def best(self) -> Generated:
        return self.items[0][1]


def beam_search(session: Session, n: int, options: DecodeOptions, eos: int) -> list[Generated]:
    """Batched beam search over `n` inputs of `options.beam` rows each in `session`
    (conventions in the module docstring)."""
    k = options.beam
    logits = session.next_logits(None)
    device = logits.device
    scores = torch.full((n, k), -torch.inf, device=device)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    history = torch.empty(n * k, 0, dtype=torch.long, device=device)
    finished = [_Finished(k, options.length_penalty) for _ in range(n)]
    for step in range(options.max_length):
        logprobs = _forbid_eos(torch.log_softmax(logits, dim=-1), step, options, eos)
        vocab = logprobs.shape[-1]
        candidates = (scores[:, :, None] + logprobs.view(n, k, vocab)).view(n, k * vocab)
        top_scores, top = candidates.topk(min(2 * k, k * vocab), dim=1)
        rows, tokens, scores = _advance(top_scores.tolist(), top.tolist(), vocab, k, eos,
                                        history.tolist(), finished)
        index = torch.tensor(rows, device=device)
        session.reorder(index)
        new = torch.tensor(tokens, device=device)
        history = torch.cat([history[index], new[:, None]], dim=1)
        scores = torch.tensor(scores, device=device).view(n, k)
        if all(f.full for f in finished):
            break
        if step + 1 < options.max_length:
            logits = session.next_logits(new)
    for b, f in enumerate(finished):  # hypotheses still running at max_length end there
        for j in range(k):
            if not f.full and scores[b, j] > -torch.inf:
                f.add(history[b * k + j].tolist(), float(scores[b, j]), ended=False)
    return [f.best() for f in finished]


def _advance(top_scores: list[list[float]], top: list[list[int]], vocab: int, k: int, eos: int,
             history: list[list[int]], finished: list[_Finished]) -> tuple[list[int], list[int], list[float]]:
    """One beam step for every input: finish the EOS candidates among the top k, keep the k best
    others. Returns the surviving rows (indices into the previous rows), their new tokens and
    scores, k per input; an input already done keeps idle rows scored -inf."""
    rows, tokens, scores = [], [], []
    for b, (cand_scores, cand) in enumerate(zip(top_scores, top)):
        kept = 0
        for rank, (score, flat) in enumerate(zip(cand_scores, cand)):
            if kept == k or finished[b].full:
                break
            row, token = b * k + flat // vocab, flat % vocab
            if token == eos:
                if rank < k and score > -float("inf"):
                    finished[b].add(history[row], score, ended=True)
                continue
            rows.append(row), tokens.append(token), scores.append(score)
            kept += 1
        for _ in range(k - kept):  # done (or starved) inputs: idle rows that never win
            rows.append(b * k), tokens.append(eos), scores.append(-float("inf"))
    return rows, tokens, scores
