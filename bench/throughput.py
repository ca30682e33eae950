"""Pre-training throughput (tokens/s, MFU) of ptmkit on this machine.

    python bench/throughput.py --objective mlm --model small --batch-size 16 --seq-len 128 \
        --precision bf16 --json

Tokens are input tokens per optimizer step. Windows are random ordinary token ids; a few
batches go through the objective's own noise and collation once and are cycled (what the noise
costs in a real run is `bench/pipeline.py`'s measurement). MFU is relative to `bench/matmul_peak.py`'s
measurement when `--peak-gflops` is given (MFU counts ptmkit's model FLOPs per token for both
sides: the useful work of the architecture, not what each implementation executes).

`--against hf` also builds the same architecture in transformers (bench/hf_models.py: BERT for
mlm, GPT-2 for clm, BART for bart, XLNet for plm) and times it in the same run. Each framework
lives in its own spawned process, which reports its own peak RSS (ru_maxrss); the ptmkit one
applies ptmkit's allocator setting as `ptmkit pretrain` does (`--hf-keep-freed-memory` gives it
to the HF one too, to see how much of the lead it is); the parent warms
both up, then alternates blocks of `--block` steps between them, only one running at a time.
Both run ptmkit's `Trainer.train_step` (same AdamW groups/lr/betas/eps/decay, fused, grad
clipping, autocast for bf16); the HF side's loss is the model's own `model(**batch).loss`.
Tokens per step are the non-pad input ids on both sides (batch x seq_len except for BART's
padded, noised encoder input, whose batches are shared by both sides).

`--device cuda` runs both sides on the GPU (attention then goes through
`F.scaled_dot_product_attention`, whose flash kernel serves causal and unmasked bf16 rows); each
timed block ends with a device synchronisation, and peak memory is the GPU's
(`torch.cuda.max_memory_allocated`) instead of the process's RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing as mp
import resource
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from ptmkit.data.shards import Window
from ptmkit.data.tokenizer import N_SENTINELS, SPECIAL_TOKENS, SpecialIds
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import Vocab
from ptmkit.train.host import keep_freed_memory
from ptmkit.train.loop import TrainConfig, Trainer

from bench_cli import bench_parser, emit, synchronize


N_CACHED = 4
HF_MODELS = {"mlm": "BertForMaskedLM", "clm": "GPT2LMHeadModel", "bart": "BartForConditionalGeneration",
             "plm": "XLNetLMHeadModel"}


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


def build_setup(args: argparse.Namespace):
    objective_cls = get_objective(args.objective)
    special = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4, bos=5, eos=6,
                         sentinels=tuple(range(len(SPECIAL_TOKENS), len(SPECIAL_TOKENS) + N_SENTINELS)))
    objective = objective_cls(Vocab(args.vocab_size, special), args.seq_len)
    cfg = resolve_model_config(args.model, vocab_size=args.vocab_size, layout=objective.layout,
                               encoder_decoder=objective.architecture == "encoder_decoder",
                               dropout=0.0, attention_dropout=0.0)
    return objective, cfg


def build_side(args: argparse.Namespace, side: str):
    """(model, loss_fn, cached batches, token counter) of one framework."""
    objective, cfg = build_setup(args)
    # noise cost is measured by the data pipeline bench: a few batches are built once and cycled
    ptmkit_batches = list(itertools.islice(random_batches(objective, args.batch_size), N_CACHED))
    pad = objective.vocab.special.pad

    def count_tokens(batch: dict) -> int:  # = Objective.input_tokens: non-pad input ids
        return int((batch["input_ids"] != pad).sum())

    if side == "ptmkit":
        return objective.build_model(cfg), objective.loss, ptmkit_batches, objective.input_tokens
    import hf_models  # only the HF side's process imports transformers
    if args.objective == "mlm":
        model, batches = hf_models.bert(cfg, args.batch_size, args.seq_len, N_CACHED)
    elif args.objective == "clm":
        model, batches = hf_models.gpt2(cfg, args.batch_size, args.seq_len, N_CACHED)
    elif args.objective == "bart":
        s = objective.vocab.special
        model, batches = hf_models.bart(cfg, ptmkit_batches, s.pad, s.bos, s.eos)
    elif args.objective == "plm":
        model, batches = hf_models.xlnet(cfg, args.batch_size, args.seq_len, N_CACHED)
    else:
        raise SystemExit(f"--against hf has no counterpart for objective {args.objective!r} "
                         "(mlm, clm, bart, plm)")
    return model, hf_models.loss, batches, count_tokens


@contextlib.contextmanager
def side_trainer(args: argparse.Namespace, side: str, device: torch.device) -> Iterator[tuple[Trainer, Iterator[dict]]]:
    """A ptmkit Trainer (same AdamW, clipping, autocast for both sides) around one framework's
    model, seeded alike, with an endless stream of its cached batches."""
    torch.manual_seed(0)
    model, loss_fn, batches, count_tokens = build_side(args, side)
    train = TrainConfig(steps=10**9, batch_size=args.batch_size, seq_len=args.seq_len,
                        precision=args.precision, compile=args.compile, warmup=1)
    with tempfile.TemporaryDirectory() as run:
        yield (Trainer(model, loss_fn, train, Path(run), count_tokens=count_tokens, progress=False, device=device),
               itertools.cycle(batches))


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(args: argparse.Namespace, side: str, conn) -> None:
    """One framework in its own process (so its peak RSS is its own): builds the model and a
    ptmkit Trainer (same AdamW, clipping, autocast for both sides), then runs the blocks of
    steps the parent asks for and answers (seconds, tokens)."""
    if side == "ptmkit" or args.hf_keep_freed_memory:
        keep_freed_memory()  # as `ptmkit pretrain` does at start
    device = torch.device(args.device)
    with side_trainer(args, side, device) as (trainer, stream):
        conn.send(sum(p.numel() for p in trainer.model.parameters()))
        while (steps := conn.recv()) is not None:
            synchronize(device)
            start, tokens = time.perf_counter(), 0
            for _ in range(steps):
                tokens += trainer.train_step(stream)[2]
            synchronize(device)
            conn.send((time.perf_counter() - start, tokens))
    conn.send(_peak_memory_mb(device))


def measure(args: argparse.Namespace) -> dict:
    """Warm both sides up, then alternate blocks of `--block` steps (ptmkit, hf, ptmkit, ...)
    until each has run `--steps` timed steps, so drifting machine load hits both alike."""
    sides = ["ptmkit"] + (["hf"] if args.against == "hf" else [])
    context = mp.get_context("spawn")
    conns, procs, params = {}, {}, {}
    for side in sides:
        conns[side], child = context.Pipe()
        procs[side] = context.Process(target=worker, args=(args, side, child), daemon=True)
        procs[side].start()
        child.close()  # a crashed worker then ends the parent's recv() with EOFError
    for side in sides:
        params[side] = conns[side].recv()
    for side in sides:
        conns[side].send(args.warmup)
        conns[side].recv()
    seconds, tokens = dict.fromkeys(sides, 0.0), dict.fromkeys(sides, 0)
    done = 0
    while done < args.steps:
        block = min(args.block, args.steps - done)
        for side in sides:
            conns[side].send(block)
            took, count = conns[side].recv()
            seconds[side] += took
            tokens[side] += count
        done += block
    peak = {}
    for side in sides:
        conns[side].send(None)
        peak[side] = conns[side].recv()
        procs[side].join()

    objective, cfg = build_setup(args)
    flops = objective.build_model(cfg).flops_per_token(args.seq_len, objective.predicted_fraction())
    result = {"objective": args.objective, "model": args.model, "precision": args.precision,
              "device": torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else "cpu",
              "compile": args.compile,
              "batch_size": args.batch_size, "seq_len": args.seq_len, "threads": torch.get_num_threads(),
              "steps": args.steps, "block": args.block}
    for side in sides:
        rate = tokens[side] / seconds[side]
        result[f"{side}_tokens_per_s"] = round(rate, 1)
        result[f"{side}_peak_{'gpu_mb' if args.device.startswith('cuda') else 'rss_mb'}"] = round(peak[side], 1)
        result[f"{side}_params"] = params[side]
        result[f"{side}_model_tflops_per_s"] = round(rate * flops / 1e12, 4)
        if args.peak_gflops:
            result[f"{side}_mfu"] = round(rate * flops / (args.peak_gflops * 1e9), 4)
    if "hf" in sides:
        result["hf_model"] = HF_MODELS[args.objective]
        result["ratio"] = round(result["ptmkit_tokens_per_s"] / result["hf_tokens_per_s"], 3)
    result["model_tflops_per_s"] = result["ptmkit_model_tflops_per_s"]  # the keys of ptmkit-only runs
    if args.peak_gflops:
        result["mfu"] = result["ptmkit_mfu"]
    return result


def add_step_arguments(parser: argparse.ArgumentParser, objective: str = "mlm") -> None:
    """The options that define one training step (`build_side`'s `args`)."""
    parser.add_argument("--objective", default=objective)
    parser.add_argument("--model", default="small")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")


def main() -> None:
    parser = bench_parser(__doc__)
    add_step_arguments(parser)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--block", type=int, default=2,
                        help="timed steps per turn when alternating with --against")
    parser.add_argument("--against", choices=("hf",), default=None,
                        help="also time the same architecture in transformers, interleaved")
    parser.add_argument("--hf-keep-freed-memory", action="store_true",
                        help="give the HF side ptmkit's allocator setting too (ptmkit.train.host)")
    parser.add_argument("--peak-gflops", type=float, default=0.0,
                        help="matmul peak for MFU (bench/matmul_peak.py; the figure for --precision)")
    args = parser.parse_args()
    result = measure(args)
    emit(result, args.json)


if __name__ == "__main__":
    main()
