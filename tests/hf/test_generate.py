"""ptmkit's KV-cached beam search picks what Hugging Face's `generate` picks on the same BART
weights (converted by `ptmkit.hf.export`), with and without EOS allowed (bench/generate.py
relies on the settings matched here)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ptmkit.api import RunModel
from ptmkit.data.tokenizer import SpecialIds
from ptmkit.hf.export import build_hf_model, plan_export
from ptmkit.model.config import resolve_model_config
from ptmkit.model.generate import DecodeOptions, generate
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install ptmkit[hf])")

V = 60
SPECIAL = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4, bos=5, eos=6, sentinels=())
SOURCES = [[11, 12, 13, 14, 15, 16], [21, 22, 23]]  # ragged: the encoder's padding mask too


def random_bart() -> RunModel:
    """A tiny random bart as the exporter sees a run. Its layers are widened and its outputs
    sharpened (else the tied embeddings make it copy its last input token forever) and EOS is
    raised a little: input 0 then ends early, input 1 runs to max_length."""
    objective = get_objective("bart")(Vocab(V, SPECIAL), 32)
    cfg = resolve_model_config("tiny", vocab_size=V, layout="bart", encoder_decoder=True,
                               dropout=0.0, attention_dropout=0.0)
    torch.manual_seed(0)
    network = objective.build_model(cfg)
    with torch.no_grad():
        for name, weight in network.named_parameters():
            if weight.dim() == 2 and "embed" not in name:
                weight.normal_(0.0, 0.3)
        network.embed.tokens.weight.mul_(3.0)
        network.lm_head.proj.bias[SPECIAL.eos] += 0.1
    tokenizer = SimpleNamespace(special=SPECIAL, borrowed={}, vocab_size=V)
    return RunModel(Path("<random>"), "pretrain", {"objective": "bart"}, objective, tokenizer, cfg,
                    network, network)


@pytest.mark.parametrize("min_length", [0, 5])
def test_beam_search_with_the_cache_equals_hf_generate(min_length: int) -> None:
    run = random_bart()
    hf = build_hf_model(run, plan_export(run), transformers)
    prompt = run.objective_impl.text_frame().decoder_prompt  # </s> <s>
    options = DecodeOptions(max_length=5, min_length=min_length, beam=3, length_penalty=1.0)
    ours = generate(run.network, SOURCES, options, architecture="encoder_decoder", eos=SPECIAL.eos,
                    pad=SPECIAL.pad, decoder_prompt=prompt)
    ids = torch.full((2, 6), SPECIAL.pad)
    for i, source in enumerate(SOURCES):
        ids[i, : len(source)] = torch.tensor(source)
    with torch.no_grad():
        out = hf.generate(input_ids=ids, attention_mask=ids != SPECIAL.pad,
                          decoder_input_ids=torch.tensor([prompt] * 2), num_beams=3, max_new_tokens=5,
                          min_new_tokens=min_length, do_sample=False, use_cache=True, length_penalty=1.0,
                          early_stopping=True, no_repeat_ngram_size=0, eos_token_id=SPECIAL.eos,
                          pad_token_id=SPECIAL.pad)
    theirs = [row[len(prompt):] for row in out.tolist()]
    theirs = [row[: row.index(SPECIAL.eos)] if SPECIAL.eos in row else row for row in theirs]
    assert [g.tokens for g in ours] == theirs
    assert [g.ended for g in ours] == ([False, False] if min_length else [True, False])
