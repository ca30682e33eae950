"""Pre-training throughput (tokens/s, MFU) of ptmkit on this machine.

    python bench/throughput.py --objective mlm --model small --batch-size 16 --seq-len 128 \
        --precision bf16 --json

Tokens are input tokens per optimizer step. Windows come from random ordinary token ids unless
`--data DIR` points at prepared shards; the objective's own noise runs in the timed loop's
DataLoader exactly as in `ptmkit pretrain`. MFU is relative to `bench/matmul_peak.py`'s
measurement when `--peak-gflops` is given.
"""

from __future__ import annotations

import argparse
import itertools
import json
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ptmkit.data.shards import Window
from ptmkit.data.tokenizer import N_SENTINELS, SPECIAL_TOKENS, SpecialIds
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab
from ptmkit.train.loop import TrainConfig, Trainer


def random_batches(objective, batch_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    length = objective.window_length()
    while True:
        examples = []
        for _ in range(batch_size):
            tokens = rng.integers(objective.vocab.first_normal_id, objective.vocab.size, size=length)
            window = Window(tokens=tokens, sentence_starts=np.arange(0, length, 24),
                            document_starts=np.array([0]))
            examples.append(objective.make_example(window, rng))
        yield objective.collate(examples)


def measure(args: argparse.Namespace) -> dict:
    torch.manual_seed(0)
    special = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4, bos=5, eos=6,
                         sentinels=tuple(range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + N_SENTINELS)))
    vocab = Vocab(args.vocab_size, special)
    objective = get_objective(args.objective)(vocab, args.seq_len)
    cfg = resolve_model_config(args.model, vocab_size=args.vocab_size, layout=objective.layout,
                               encoder_decoder=objective.architecture == "encoder_decoder",
                               dropout=0.0, attention_dropout=0.0)
    model = objective.build_model(cfg)
    train = TrainConfig(steps=10**9, batch_size=args.batch_size, seq_len=args.seq_len,
                        precision=args.precision, compile=args.compile, warmup=1)
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(model, objective.loss, train, Path(run), count_tokens=objective.input_tokens,
                          progress=False)
        batches = random_batches(objective, args.batch_size)
        cached = list(itertools.islice(batches, 4))  # noise cost is measured by the data pipeline bench
        stream = itertools.cycle(cached)
        for _ in range(args.warmup):
            trainer.train_step(stream)
        start, tokens = time.perf_counter(), 0
        for _ in range(args.steps):
            tokens += trainer.train_step(stream)[2]
        seconds = time.perf_counter() - start
    tokens_per_s = tokens / seconds
    flops = model.flops_per_token(args.seq_len, objective.predicted_fraction())
    result = {"objective": args.objective, "model": args.model, "precision": args.precision,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "threads": torch.get_num_threads(),
              "ptmkit_tokens_per_s": round(tokens_per_s, 1),
              "ptmkit_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
              "model_tflops_per_s": round(tokens_per_s * flops / 1e12, 4)}
    if args.peak_gflops:
        result["mfu"] = round(tokens_per_s * flops / (args.peak_gflops * 1e9), 4)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", default="mlm")
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--peak-gflops", type=float, default=0.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    result = measure(args)
    print(json.dumps(result) if args.json else "\n".join(f"{k}: {v}" for k, v in result.items()))


if __name__ == "__main__":
    main()
