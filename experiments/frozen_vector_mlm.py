"""EXPERIMENTS.md E8 probe: MLM over word vectors that stay where word2vec put them.

    python experiments/frozen_vector_mlm.py VECTORS_RUN --data PREPARED_DIR --minutes 15 \
        --out runs/frozen_vector_mlm

Session 17's MLM continued from word vectors moved them (median cosine 0.25 to where they
started) and lost 6 of their 8 points. Here the token embedding (and the output layer tied to
it) is seeded by the vectors, as `ptmkit pretrain --init` does, and then frozen: only the
encoder, the position embeddings and the LM head's transform learn, so whatever MLM teaches the
encoder is added to the vectors, not traded for them. The run directory is an ordinary `mlm` run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import ptmkit.pretraining as pretraining
from ptmkit.api import pretrain
from ptmkit.model.word_vectors import token_embedding_weights


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("init", help="a word2vec run whose vector size is the model's width")
    ap.add_argument("--data", required=True, help="a `ptmkit prepare` directory with the init's tokenizer")
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    seed_embeddings = pretraining._init_from

    def seed_then_freeze(init, model, objective, spec=None):
        seed_embeddings(init, model, objective, spec)
        for weight in token_embedding_weights(model):
            weight.requires_grad_(False)

    # the one hook between building the model and building its optimizer
    pretraining._init_from = seed_then_freeze
    model = {"size": "tiny", "hidden": 256, "layout": "prenorm"}
    summary = pretrain(objective="mlm", out=Path(args.out), data=args.data, init=args.init, model=model,
                       max_minutes=args.minutes, batch_size=args.batch_size, seq_len=args.seq_len,
                       lr=args.lr, overwrite=True)
    print({k: summary.get(k) for k in ("steps", "tokens", "final_val_loss")})


if __name__ == "__main__":
    main()
