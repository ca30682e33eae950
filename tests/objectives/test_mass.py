"""MASS: one contiguous fragment, 80/10/10 in the encoder, shifted decoder at original positions."""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ptmkit.data.shards import Window
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective

from ptmkit.objectives.mass import fragment_start
from ptmkit.objectives.seq2seq import framed

SEQ_LEN = 64


def within(p_hat: float, p: float, n: int) -> bool:
    return abs(p_hat - p) <= 4 * np.sqrt(p * (1 - p) / n)


def sample(vocab, random_window, n, seq_len=SEQ_LEN):
    objective = get_objective("mass")(vocab, seq_len)
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        window = random_window(rng, objective.window_length(), vocab)
        original = framed(window.tokens, vocab.special.bos, vocab.special.eos, seq_len)
        out.append((original, objective.make_example(window, rng)))
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(length=st.integers(0, SEQ_LEN - 2), ratio=st.floats(0.01, 1), seed=st.integers(0, 2**32 - 1))
def test_one_fragment_of_round_ratio_len(vocab, length, ratio, seed) -> None:
    rng = np.random.default_rng(seed)
    objective = get_objective("mass")(vocab, SEQ_LEN, {"span_ratio": ratio})
    window = Window(tokens=rng.integers(vocab.first_normal_id, vocab.size, size=length),
                    sentence_starts=np.array([0]), document_starts=np.array([0]))
    ex = objective.make_example(window, rng)
    original = framed(window.tokens, vocab.special.bos, vocab.special.eos, SEQ_LEN)
    k = min(length, max(1, round(ratio * length)))
    positions = ex["decoder_position_ids"] + 1  # the fragment's positions in the frame
    assert all(ex[key].dtype == np.int64 for key in ex)
    assert len(positions) == len(ex["labels"]) == len(ex["decoder_input_ids"]) == k
    assert (np.diff(positions) == 1).all() and (k == 0 or 1 <= positions[0] <= positions[-1] <= length)
    assert (ex["labels"] == original[positions]).all()
    assert (ex["decoder_input_ids"] == original[positions - 1]).all()  # shifted right, clean
    outside = np.setdiff1d(np.arange(len(original)), positions)
    assert (ex["input_ids"][outside] == original[outside]).all()
    assert ((ex["input_ids"] >= 0) & (ex["input_ids"] < vocab.size)).all()


def test_80_10_10_inside_the_fragment(vocab, random_window) -> None:
    masked = random = kept = 0
    for original, ex in sample(vocab, random_window, n=800, seq_len=256):
        positions = ex["decoder_position_ids"] + 1
        inputs = ex["input_ids"][positions]
        masked += int((inputs == vocab.special.mask).sum())
        same = inputs == original[positions]
        kept += int(same.sum())
        random += int(((inputs != vocab.special.mask) & ~same).sum())
    total = masked + random + kept
    assert total == 800 * 127 >= 1e5  # round(0.5 * 254) per example
    # a random replacement equal to the original (p = 1/vocab) counts as kept
    assert within(masked / total, 0.8, total)
    assert within(random / total, 0.1, total)
    assert within(kept / total, 0.1, total)


def test_fragment_start_histogram() -> None:
    # 20% at the start, 20% at the end, 60% uniform over the n - k + 1 starts (MASS
    # shuffle_segments), so each end gets 0.2 + 0.6 / (n - k + 1).
    rng = np.random.default_rng(0)
    n, k, draws = 62, 31, 100_000
    starts = np.array([fragment_start(n, k, rng) for _ in range(draws)])
    edge = 0.2 + 0.6 / (n - k + 1)
    assert within(float((starts == 0).mean()), edge, draws)
    assert within(float((starts == n - k).mean()), edge, draws)
    assert within(float((starts == 10).mean()), 0.6 / (n - k + 1), draws)
    assert starts.min() == 0 and starts.max() == n - k


def test_cross_attention_skips_masked_encoder_positions(vocab, random_window) -> None:
    objective = get_objective("mass")(vocab, 32)
    examples = [ex for _, ex in sample(vocab, random_window, n=3, seq_len=32)]
    batch = objective.collate(examples)
    keys = objective.memory_keys(batch["input_ids"])
    assert (keys == (batch["input_ids"] != vocab.special.mask)).all()
    # and these are exactly the keys the decoder's cross-attention gets
    model = objective.build_model(resolve_model_config("tiny", vocab_size=vocab.size, layout="bart",
                                                       encoder_decoder=True)).eval()
    seen = []
    model.decoder.layers[0].cross.register_forward_hook(lambda m, args, out: seen.append(args[2]))
    with torch.no_grad():
        objective.loss(model, batch)
    assert (seen[0][:, 0, :] == keys).all()
