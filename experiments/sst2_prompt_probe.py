"""A probe of EXPERIMENTS.md E2 (row B13): PET-style prompt fine-tuning on SST-2 at 1,000 labels.

    python experiments/sst2_prompt_probe.py RUN --lrs 1e-4,5e-4 --seeds 0 [--words bad,great]

Each sentence becomes `[CLS] sentence it was [MASK] [SEP]`; the class score is the MLM head's
logit for the class's word at [MASK] (Schick & Schütze 2021), so fine-tuning starts from what
pre-training taught the head instead of a random classifier. The whole network is fine-tuned.
Same protocol as `sst2_probe.py`: 1,000 stratified labels per seed, 10% held out to pick the
epoch, dev (all 872) scored at that epoch; 5 epochs but at least 150 steps, batch 32, AdamW,
10% warm-up then linear decay. RUN is an MLM-family pre-training run (its head is used).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from ptmkit.finetuning.model import load_backbone

SST2 = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2"


def read(path: Path) -> tuple[list[str], np.ndarray]:
    with open(path, newline="") as stream:
        rows = list(csv.DictReader(stream, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r["sentence"] for r in rows], np.array([int(r["label"]) for r in rows])


def run(init: str, lr: float, seed: int, words: list[str], budget: int) -> tuple[float, float]:
    """(held-out accuracy, dev accuracy) at the epoch the held-out slice picks."""
    torch.manual_seed(seed)
    backbone = load_backbone(init, model="mini", max_length=64)
    net, tokenizer, special = backbone.network, backbone.tokenizer, backbone.tokenizer.special
    pieces = tokenizer.encode_batch(words)
    if any(len(p) != 1 for p in pieces):
        raise SystemExit(f"every class word must be one token of the vocabulary: {dict(zip(words, pieces))}")
    verbalizer = torch.tensor([p[0] for p in pieces])
    texts, labels = read(SST2 / "train.tsv")
    chosen, _ = train_test_split(np.arange(len(labels)), train_size=budget, stratify=labels, random_state=seed)
    train, held = train_test_split(chosen, test_size=0.1, stratify=labels[chosen], random_state=seed)
    suffix = tokenizer.encode("it was")

    def encode(sentences: list[str]) -> list[list[int]]:
        return [[special.cls, *ids[: 64 - 3 - len(suffix)], *suffix, special.mask, special.sep]
                for ids in tokenizer.encode_batch(sentences)]

    def batches(ids: list[list[int]], y: np.ndarray, size: int, order: np.ndarray):
        for start in range(0, len(order), size):
            rows = order[start:start + size]
            x = torch.full((len(rows), max(len(ids[r]) for r in rows)), special.pad)
            for i, r in enumerate(rows):
                x[i, : len(ids[r])] = torch.tensor(ids[r])
            yield x, torch.from_numpy(y[rows])

    def scores(x: torch.Tensor) -> torch.Tensor:
        hidden = backbone.objective.features(net, x, x != special.pad)
        at_mask = hidden[torch.arange(len(x)), (x == special.mask).int().argmax(1)]
        return net.logits(at_mask)[:, verbalizer]

    def accuracy(ids: list[list[int]], y: np.ndarray) -> float:
        net.eval()
        with torch.no_grad():
            right = sum(int((scores(x).argmax(-1) == t).sum()) for x, t in batches(ids, y, 128, np.arange(len(y))))
        net.train()
        return 100 * right / len(y)

    x_train, y_train = encode([texts[i] for i in train]), labels[train]
    x_held, y_held = encode([texts[i] for i in held]), labels[held]
    dev_texts, y_dev = read(SST2 / "dev.tsv")
    x_dev = encode(dev_texts)
    per_epoch = -(-len(train) // 32)
    epochs = max(5, -(-150 // per_epoch))
    total = epochs * per_epoch
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / (0.1 * total), max(0.0, (total - s) / (0.9 * total))))
    rng, best = np.random.default_rng(seed), (-1.0, 0.0)
    for _ in range(epochs):
        for x, t in batches(x_train, y_train, 32, rng.permutation(len(y_train))):
            loss = F.cross_entropy(scores(x).float(), t)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        held_acc = accuracy(x_held, y_held)
        if held_acc > best[0]:
            best = (held_acc, accuracy(x_dev, y_dev))
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("init", help="an MLM-family pre-training run directory")
    ap.add_argument("--lrs", default="1e-4,5e-4")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--words", default="bad,great", help="the class words, in label order (0, 1)")
    ap.add_argument("--budget", type=int, default=1000)
    args = ap.parse_args()
    for lr in map(float, args.lrs.split(",")):
        dev = [run(args.init, lr, int(seed), args.words.split(","), args.budget)[1] for seed in args.seeds.split(",")]
        print(f"{Path(args.init).name} lr={lr:g}: dev {np.mean(dev):.1f} ± {np.std(dev):.1f}  per seed "
              f"{[round(d, 1) for d in dev]}", flush=True)


if __name__ == "__main__":
    main()
