"""An encoder-decoder warm-started from an encoder-only run, so that MLM, WWM, ELECTRA, PLM, MPNet
and word2vec runs can be fine-tuned on seq2seq tasks too (Rothe et al. 2020, "Leveraging
Pre-trained Checkpoints for Sequence Generation Tasks": BERT2BERT).

The encoder keeps the run's weights. Each decoder layer starts as a copy of the encoder layer at
the same depth (self-attention, feed-forward and their norms; the decoder's self-attention is
made causal by the mask, not by the weights), the decoder's position/type embeddings and
embedding norm as copies of the encoder's; only cross-attention starts random. Token embeddings
and the LM head are shared, as in every encoder-decoder here. The result is framed and trained
exactly like a from-scratch seq2seq model (BART's framing), so the two differ only in where the
weights came from; its fine-tuning run records `objective: bart` (the framing, which reloading
needs) and the encoder's run as `init`.
"""

from __future__ import annotations

import dataclasses

import torch

from ptmkit.errors import UserError
from ptmkit.finetuning.model import Backbone
from ptmkit.model.backbone import Transformer
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab

WARM_STARTABLE = ("encoder", "two_stream", "shallow")
"""Architectures whose downstream network is a Transformer encoder (word2vec's is an encoder
seeded with its vectors)."""


def warm_start_encoder_decoder(backbone: Backbone, framing_objective: str) -> Backbone:
    """An encoder-decoder framed as `framing_objective` frames text (seq2seq passes its scratch
    model's, BART), whose encoder is `backbone`'s and whose decoder layers start as copies of the
    encoder's (see the module docstring)."""
    encoder = backbone.network
    if not isinstance(encoder, Transformer) or encoder.cfg.is_encoder_decoder:
        raise UserError(f"cannot warm-start an encoder-decoder from a {backbone.objective_name} model "
                        "(it is not a Transformer encoder)", backbone.source,
                        "pass --init a bart, mass, t5, clm or prefixlm run, or an encoder-only one")
    cfg = dataclasses.replace(encoder.cfg, n_decoder_layers=encoder.cfg.n_layers)
    framing = get_objective(framing_objective)(Vocab.of(backbone.tokenizer), backbone.objective.seq_len)
    network = framing.build_model(cfg)
    with torch.no_grad():
        for part in ("embed", "encoder", "lm_head"):
            getattr(network, part).load_state_dict(getattr(encoder, part).state_dict())
        network.decoder_embed.load_state_dict(encoder.embed.state_dict())  # its tokens are embed's
        for source, target in zip(encoder.encoder.layers, network.decoder.layers):
            missing, unexpected = target.load_state_dict(source.state_dict(), strict=False)
            assert not unexpected and all(k.startswith(("cross.", "cross_norm.")) for k in missing), missing
        if network.decoder.final_norm is not None:
            network.decoder.final_norm.load_state_dict(encoder.encoder.final_norm.state_dict())
    return Backbone(network.train(mode=encoder.training), framing, framing_objective, cfg, backbone.tokenizer,
                    backbone.source)
