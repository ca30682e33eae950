"""EXPERIMENTS.md E8 probe: teach the encoder over word vectors that two sentences of one review
belong together (in-batch InfoNCE, no labels read), then fine-tune it like any pre-trained run.

    python experiments/review_contrastive.py VECTORS_RUN --reviews runs/imdb/imdb_reviews.txt \
        --minutes 10 --out runs/contrastive

A review's sentences share its film and its verdict; telling them from other reviews' sentences
asks the encoder to carry both into its mean-pooled state, which is what a 900-sentence SST-2
fine-tuning reads. Writes an `mlm`-format run directory (the encoder's weights, an untrained LM
head), so `experiments/sst2_probe.py` and `ptmkit finetune --init` read it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import Tensor, nn

from ptmkit.data.sentences import split_sentences
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.finetuning.model import Backbone, load_backbone, read_run_config
from ptmkit.finetuning.tasks import pad_batch
from ptmkit.train.checkpoint import atomic_save_model


def review_sentences(path: Path, tokenizer: Tokenizer, max_len: int, min_tokens: int) -> list[list[np.ndarray]]:
    """Each review's sentences as [CLS] ids [SEP] arrays; reviews with fewer than two kept sentences
    give no pair and are dropped."""
    special = tokenizer.special
    reviews = []
    for line in path.read_text(encoding="utf-8").splitlines():
        sentences = split_sentences(line.replace("<br />", " "))
        ids = [row for row in tokenizer.encode_batch(sentences) if len(row) >= min_tokens] if sentences else []
        if len(ids) >= 2:
            reviews.append([np.array([special.cls, *row[: max_len - 2], special.sep]) for row in ids])
    return reviews


def mean_state(backbone: Backbone, ids: Tensor, valid: Tensor) -> Tensor:
    states = backbone.objective.features(backbone.network, ids, valid)
    weights = valid.unsqueeze(-1).to(states.dtype)
    return (states * weights).sum(1) / weights.sum(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("init", type=Path, help="a word2vec (or other) pre-training run")
    ap.add_argument("--reviews", type=Path, required=True, help="one review per line")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--pairs", type=int, default=64, help="review pairs per batch")
    ap.add_argument("--max-len", type=int, default=48)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--temperature", type=float, default=0.05)
    ap.add_argument("--train-embeddings", action="store_true",
                    help="let the loss move the word vectors too (default: fixed, so they stay word2vec's)")
    ap.add_argument("--control", action="store_true",
                    help="pair sentences of different reviews: the same training with nothing to learn")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    backbone = load_backbone(str(args.init), max_length=args.max_len)
    network = backbone.network.train()
    if not args.train_embeddings:
        network.embed.tokens.weight.requires_grad_(False)
    width = network.cfg.hidden  # a word2vec run's encoder is as wide as its vectors, not its config
    projection = nn.Sequential(nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
    params = [p for p in [*network.parameters(), *projection.parameters()] if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)

    started = time.time()
    reviews = review_sentences(args.reviews, backbone.tokenizer, args.max_len, min_tokens=4)
    print(f"{len(reviews)} reviews with 2+ sentences, {sum(map(len, reviews))} sentences "
          f"({time.time() - started:.0f} s to split and tokenize)", flush=True)

    deadline, step, tokens, log = time.time() + 60 * args.minutes, 0, 0, []
    started = time.time()
    while time.time() < deadline:
        chosen = rng.choice(len(reviews), size=args.pairs, replace=False)
        first, second = [], []
        partners = rng.permutation(chosen) if args.control else chosen
        for r, q in zip(chosen, partners):
            a, b = rng.choice(len(reviews[r]), size=2, replace=False)
            first.append(reviews[r][a])
            second.append(reviews[q][b % len(reviews[q])])
        batch = pad_batch([{"input_ids": row} for row in first + second], backbone.tokenizer.special.pad)
        ids, valid = batch["input_ids"], batch["valid"]
        z = F.normalize(projection(mean_state(backbone, ids, valid)), dim=-1)
        logits = z @ z.T / args.temperature
        logits.fill_diagonal_(float("-inf"))
        n = args.pairs
        target = torch.cat([torch.arange(n, 2 * n), torch.arange(n)])
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        step += 1
        tokens += int(valid.sum())
        accuracy = float((logits.argmax(1) == target).float().mean())
        log.append({"step": step, "loss": loss.item(), "pair_accuracy": accuracy})
        if step % 50 == 0:
            recent = log[-50:]
            print(f"step {step}: loss {np.mean([r['loss'] for r in recent]):.3f}  pair acc "
                  f"{np.mean([r['pair_accuracy'] for r in recent]):.3f}  {tokens / (time.time() - started):.0f} tok/s",
                  flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    config = read_run_config(args.init)
    config.update(objective="mlm", objective_options={}, model=network.cfg.to_dict(), init=str(args.init),
                  contrastive={k: str(v) for k, v in vars(args).items()})
    atomic_save_model(network, args.out / "model.safetensors")
    shutil.copytree(args.init / "tokenizer", args.out / "tokenizer", dirs_exist_ok=True)
    (args.out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    summary = {"steps": step, "tokens": tokens, "seconds": time.time() - started,
               "final_loss": float(np.mean([r["loss"] for r in log[-50:]]))}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
