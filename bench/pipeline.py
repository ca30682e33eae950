"""How much of a pre-training step the data pipeline (noise + collate in DataLoader workers) costs.

    python bench/pipeline.py --objective bart --model small --batch-size 16 --seq-len 128 --json

The same model and trainer run twice, alternating blocks of steps: once fed by the real loader
(`make_loader` over prepared shards, the objective's noise in `--workers` background processes,
as `ptmkit pretrain` does) and once fed by batches built beforehand and cycled. The pipeline's
share is 1 - (pre-built step time / loader step time): what the loader adds to a step, 0 when
the workers keep up. Data: `--data DIR` from `ptmkit prepare`, or by default gensim's Lee
corpus (`lee_background.cor`, shipped with gensim), with a byte-level BPE of `--vocab-size`
trained on it.
"""

from __future__ import annotations

import argparse
import itertools
import tempfile
import time
from pathlib import Path

import gensim
import torch

from ptmkit.data.loader import WindowDataset, make_loader
from ptmkit.data.shards import TokenShards, prepare
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab
from ptmkit.train.host import keep_freed_memory
from ptmkit.train.loop import TrainConfig, Trainer

from bench_cli import bench_parser, emit

LEE = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"


def default_data(root: Path, vocab_size: int) -> Path:
    tokenizer = train_tokenizer(LEE.read_text().splitlines(), kind="bpe", vocab_size=vocab_size,
                                show_progress=False)
    prepare([str(LEE)], tokenizer, root / "data", val_fraction=0.0, progress=False)
    return root / "data"


def measure(args: argparse.Namespace, data: Path) -> dict:
    shards = TokenShards(data, "train")
    tokenizer = shards.tokenizer()
    objective = get_objective(args.objective)(Vocab.of(tokenizer), args.seq_len)
    cfg = resolve_model_config(args.model, vocab_size=tokenizer.vocab_size, layout=objective.layout,
                               encoder_decoder=objective.architecture == "encoder_decoder")
    dataset = WindowDataset(shards, objective.window_length(), objective.make_example, seed=0)
    loader = iter(make_loader(dataset, objective.collate, args.batch_size, seed=0, workers=args.workers))
    prebuilt = itertools.cycle([next(loader) for _ in range(4)])
    torch.manual_seed(0)
    train = TrainConfig(steps=10**9, batch_size=args.batch_size, seq_len=args.seq_len,
                        precision=args.precision, warmup=1)
    with tempfile.TemporaryDirectory() as run:
        trainer = Trainer(objective.build_model(cfg), objective.loss, train, Path(run),
                          count_tokens=objective.input_tokens, progress=False)
        for stream in (prebuilt, loader):  # warm up both, the loader's workers included
            for _ in range(args.warmup):
                trainer.train_step(stream)
        seconds = {"prebuilt": 0.0, "loader": 0.0}
        for _ in range(args.steps // args.block):
            for name, stream in (("prebuilt", prebuilt), ("loader", loader)):
                start = time.perf_counter()
                for _ in range(args.block):
                    trainer.train_step(stream)
                seconds[name] += time.perf_counter() - start
    steps = args.steps // args.block * args.block
    per_step = {name: s / steps for name, s in seconds.items()}
    return {"objective": args.objective, "model": args.model, "precision": args.precision,
            "batch_size": args.batch_size, "seq_len": args.seq_len, "workers": args.workers,
            "steps": steps, "prebuilt_step_s": round(per_step["prebuilt"], 4),
            "loader_step_s": round(per_step["loader"], 4),
            "pipeline_share": round(1 - per_step["prebuilt"] / per_step["loader"], 4)}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--objective", default="bart")
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader processes (ptmkit pretrain's default)")
    parser.add_argument("--data", type=Path, help="prepared shards (`ptmkit prepare`); default: gensim's Lee corpus")
    parser.add_argument("--vocab-size", type=int, default=8192, help="tokenizer trained for the default data")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--block", type=int, default=2)
    args = parser.parse_args()
    keep_freed_memory()  # as `ptmkit pretrain` does
    with tempfile.TemporaryDirectory() as root:
        result = measure(args, args.data or default_data(Path(root), args.vocab_size))
    emit(result, args.json)


if __name__ == "__main__":
    main()
