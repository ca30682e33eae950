"""Generation invariants: the KV cache changes nothing but speed, beam search is at least as good
as greedy, EOS and length rules hold, sampling is reproducible (dropout off)."""

from __future__ import annotations

import math

import pytest
import torch

from ptmkit.errors import UserError
from ptmkit.model.backbone import KVCache, Transformer
from ptmkit.model.config import resolve_model_config
from ptmkit.model.generate import (DecodeOptions, Generated, beam_search, generate, greedy,
                                   open_session)

V, PAD, EOS = 60, 0, 6
ARCHS = ("encoder_decoder", "decoder", "prefix")
PROMPTS = [[11, 12, 13, 14, 15], [21, 22], [31, 32, 33]]  # ragged: padding on every path
DECODER_PROMPT = [EOS, 5]  # BART's: start at </s>, force <s>


def make(architecture: str, seed: int = 0, sharpen: float = 40.0) -> Transformer:
    """A tiny random model with sharpened outputs (a scaled tied embedding), so that searches
    meet real choices instead of near-uniform distributions."""
    torch.manual_seed(seed)
    cfg = resolve_model_config("tiny", vocab_size=V, layout="bart" if architecture == "encoder_decoder"
                               else "gpt2", encoder_decoder=architecture == "encoder_decoder")
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.embed.tokens.weight.mul_(sharpen)
    return model


def run(model: Transformer, architecture: str, options: DecodeOptions, prompts=PROMPTS,
        use_cache: bool = True) -> list[Generated]:
    return generate(model, prompts, options, architecture=architecture, eos=EOS, pad=PAD,
                    decoder_prompt=DECODER_PROMPT, use_cache=use_cache)


def session(model: Transformer, architecture: str, use_cache: bool, copies: int = 1):
    return open_session(model, PROMPTS, architecture=architecture, pad=PAD,
                        decoder_prompt=DECODER_PROMPT, copies=copies, use_cache=use_cache)


@pytest.mark.parametrize("architecture", ARCHS)
def test_cached_and_uncached_logits_agree_step_by_step(architecture: str) -> None:
    model = make(architecture, sharpen=1.0)  # logits of order 1: 1e-5 is well above float32 noise
    fed = torch.randint(7, V, (8, 2 * len(PROMPTS)), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cached, full = session(model, architecture, True, 2), session(model, architecture, False, 2)
        torch.testing.assert_close(cached.next_logits(None), full.next_logits(None), atol=1e-5, rtol=0)
        for step, tokens in enumerate(fed):
            if step == 4:  # beam search reorders rows mid-way, among the two copies of each prompt
                index = torch.tensor([1, 1, 2, 3, 5, 4])
                cached.reorder(index), full.reorder(index)
            torch.testing.assert_close(cached.next_logits(tokens), full.next_logits(tokens),
                                       atol=1e-5, rtol=0)


CHUNKS = ((0, 5), (5, 6), (6, 12))


@torch.no_grad()
def test_backbone_cache_takes_chunks_of_any_size() -> None:
    """Causal rows fed in chunks (5, 1, 6 rows) through a KVCache equal one full causal pass."""
    ids = torch.randint(7, V, (2, 12), generator=torch.Generator().manual_seed(2))
    model = make("decoder", sharpen=1.0)
    cache = KVCache(len(model.encoder.layers))
    parts = [model.encode(ids[:, a:b], is_causal=True, cache=cache) for a, b in CHUNKS]
    torch.testing.assert_close(torch.cat(parts, 1), model.encode(ids, is_causal=True), atol=1e-5, rtol=0)
    model = make("encoder_decoder", sharpen=1.0)
    memory, cache = model.encode(ids[:, :7]), KVCache(len(model.decoder.layers))
    parts = [model.decode(ids[:, a:b], memory, cache=cache) for a, b in CHUNKS]
    torch.testing.assert_close(torch.cat(parts, 1), model.decode(ids, memory), atol=1e-5, rtol=0)


@pytest.mark.parametrize("architecture", ARCHS)
@pytest.mark.parametrize("beam", [1, 3])
def test_cached_and_uncached_decoding_give_the_same_tokens(architecture: str, beam: int) -> None:
    model, options = make(architecture), DecodeOptions(max_length=12, beam=beam)
    cached, full = run(model, architecture, options), run(model, architecture, options, use_cache=False)
    assert [g.tokens for g in cached] == [g.tokens for g in full]


def test_a_single_prompt_decodes_alike_alone_and_in_a_padded_batch() -> None:
    for architecture in ARCHS:
        model, options = make(architecture), DecodeOptions(max_length=10)
        batch = run(model, architecture, options)
        alone = run(model, architecture, options, prompts=[PROMPTS[1]])
        assert batch[1].tokens == alone[0].tokens


@pytest.mark.parametrize("architecture", ARCHS)
@pytest.mark.parametrize("length_penalty", [0.0, 1.0, 2.0])
def test_beam_of_one_is_greedy(architecture: str, length_penalty: float) -> None:
    model = make(architecture, seed=3)
    one = run(model, architecture, DecodeOptions(max_length=12, beam=1, length_penalty=length_penalty))
    searched = beam_search(session(model, architecture, True), len(PROMPTS),
                           DecodeOptions(max_length=12, beam=1, length_penalty=length_penalty), EOS)
    assert [(g.tokens, g.ended) for g in searched] == [(g.tokens, g.ended) for g in one]
    assert [g.logprob for g in searched] == pytest.approx([g.logprob for g in one], abs=1e-4)


@torch.no_grad()
def teacher_forced_logprob(model: Transformer, architecture: str, row: int, out: Generated) -> float:
    """log p(out) recomputed from scratch, without cache, one prompt alone."""
    s = open_session(model, [PROMPTS[row]], architecture=architecture, pad=PAD,
                     decoder_prompt=DECODER_PROMPT, use_cache=False)
    logits, total = s.next_logits(None), 0.0
    for token in out.tokens + ([EOS] if out.ended else []):
        total += float(torch.log_softmax(logits, -1)[0, token])
        logits = s.next_logits(torch.tensor([token]))
    return total


@pytest.mark.parametrize("architecture", ARCHS)
def test_beam_search_is_never_less_probable_than_greedy(architecture: str) -> None:
    """With length_penalty 0 beam search ranks by log-probability; over several random models it
    never returns a less probable output than greedy, and its scores are the model's."""
    for seed in range(4):
        model = make(architecture, seed)
        first = run(model, architecture, DecodeOptions(max_length=10, length_penalty=0.0))
        best = run(model, architecture, DecodeOptions(max_length=10, beam=4, length_penalty=0.0))
        for row, (g, b) in enumerate(zip(first, best)):
            assert b.logprob >= g.logprob - 1e-5, (seed, row)
            assert b.logprob == pytest.approx(teacher_forced_logprob(model, architecture, row, b), abs=1e-3)


class TableSession:
    """A fake model: next-token probabilities looked up by the tokens generated so far."""

    def __init__(self, table: dict[tuple[int, ...], dict[int, float]], rows: int, vocab: int = 8) -> None:
        self.table, self.vocab = table, vocab
        self.history: list[tuple[int, ...]] = [()] * rows

    def _logits(self) -> torch.Tensor:
        out = torch.full((len(self.history), self.vocab), math.log(1e-9))
        for i, prefix in enumerate(self.history):
            for token, p in self.table.get(prefix, {}).items():
                out[i, token] = math.log(p)
        return out

    def next_logits(self, tokens: torch.Tensor | None) -> torch.Tensor:
        if tokens is not None:
            self.history = [h + (int(t),) for h, t in zip(self.history, tokens)]
        return self._logits()

    def reorder(self, index: torch.Tensor) -> None:
        self.history = [self.history[i] for i in index.tolist()]


A, B, C, D, E = 2, 3, 4, 5, 1  # E is EOS here
# "A </s>": p = .6 * .9 (2 tokens);  "B C D </s>": p = .4 * .95**3 (4 tokens)
TABLE = {(): {A: 0.6, B: 0.4}, (A,): {E: 0.9, C: 0.1}, (B,): {C: 0.95, A: 0.05},
         (B, C): {D: 0.95, A: 0.05}, (B, C, D): {E: 0.95, A: 0.05}}  # each row sums to 1


def test_length_penalty_changes_the_ranking_as_expected() -> None:
    short, long = math.log(0.6 * 0.9), math.log(0.4 * 0.95 ** 3)
    assert short > long and short / 2 < long / 4  # raw vs per-token ranking disagree
    raw = beam_search(TableSession(TABLE, 2), 1, DecodeOptions(max_length=6, beam=2, length_penalty=0.0), E)
    normalised = beam_search(TableSession(TABLE, 2), 1, DecodeOptions(max_length=6, beam=2), E)
    assert raw[0].tokens == [A] and raw[0].logprob == pytest.approx(short, abs=1e-6)
    assert normalised[0].tokens == [B, C, D] and normalised[0].logprob == pytest.approx(long, abs=1e-6)
    assert greedy(TableSession(TABLE, 1), 1, DecodeOptions(max_length=6), E)[0].tokens == [A]


def test_eos_stops_a_hypothesis_and_min_length_delays_it() -> None:
    out = greedy(TableSession(TABLE, 1), 1, DecodeOptions(max_length=6), E)[0]
    assert out.tokens == [A] and out.ended
    searched = beam_search(TableSession(TABLE, 3), 1, DecodeOptions(max_length=6, beam=3), E)[0]
    assert searched.ended and E not in searched.tokens
    longer = greedy(TableSession(TABLE, 1), 1, DecodeOptions(max_length=6, min_length=2), E)[0]
    assert longer.tokens[:2] == [A, C] and len(longer.tokens) >= 2
    capped = greedy(TableSession({}, 1), 1, DecodeOptions(max_length=4, min_length=4), E)[0]
    assert len(capped.tokens) == 4 and not capped.ended


@pytest.mark.parametrize("architecture", ARCHS)
def test_nucleus_sampling_tends_to_greedy_and_is_seeded(architecture: str) -> None:
    model = make(architecture, seed=2, sharpen=1.0)  # flat enough for draws to differ
    first = run(model, architecture, DecodeOptions(max_length=10))
    narrow = run(model, architecture, DecodeOptions(max_length=10, top_p=1e-6, seed=5))
    assert [g.tokens for g in narrow] == [g.tokens for g in first]
    wide = DecodeOptions(max_length=10, top_p=0.9, temperature=1.5, seed=7)
    assert [g.tokens for g in run(model, architecture, wide)] == [g.tokens for g in run(model, architecture, wide)]
    draws = {tuple(map(tuple, (g.tokens for g in run(model, architecture, DecodeOptions(
        max_length=10, top_p=0.9, temperature=1.5, seed=s))))) for s in range(3)}
    assert len(draws) > 1  # the seed matters


def test_options_are_validated() -> None:
    with pytest.raises(UserError, match="beam"):
        DecodeOptions(beam=0)
    with pytest.raises(UserError, match="top_p"):
        DecodeOptions(top_p=1.5)
    with pytest.raises(UserError, match="exclude"):
        DecodeOptions(top_p=0.9, beam=2)
    with pytest.raises(UserError, match="min"):
        DecodeOptions(max_length=4, min_length=5)
