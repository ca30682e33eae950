"""Beam-search generation speed (tokens/s) of ptmkit against Hugging Face `generate`, same BART.

    python bench/generate.py --model small --beam 4 --batch-size 8 --source-len 64 --max-length 32 --json

One BART model (a random `--model` init, built as bench/throughput.py builds it, or a trained
bart/mass/t5 run with `--run RUN`) is converted by `ptmkit.hf.export` into a transformers
`BartForConditionalGeneration` with the same weights (its logit difference on the exporter's probe
is reported). Both decode the same `--batch-size` sources of `--source-len` random ordinary ids
from the objective's decoder prompt (bart: `</s> <s>`, given to HF as `decoder_input_ids`), fp32,
`--threads` threads, under `torch.inference_mode()`, with the KV cache: ptmkit's
`ptmkit.model.generate.generate` and HF's `generate(num_beams, do_sample=False, use_cache=True,
length_penalty=1.0, early_stopping=True, no_repeat_ngram_size=0)`. EOS is forbidden until
`--max-length` tokens (ptmkit's `min_length`, HF's `min_new_tokens`), so both generate exactly
`--max-length` tokens per input: tokens/s = batch x max_length / seconds. After one warm-up call
each, `--repeats` calls alternate ptmkit, HF, ...; each side's median is reported, with whether
both chose the same best hypothesis for input 0 (`same_output`; reported, not asserted).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
import transformers

from ptmkit.api import RunModel, load_run
from ptmkit.hf.export import build_hf_model, max_logit_difference, plan_export, probe_ids
from ptmkit.model.generate import DecodeOptions, generate

from bench_cli import bench_parser, emit
from throughput import build_setup


def random_run(model: str, vocab_size: int) -> RunModel:
    """A freshly initialised bart model as the exporter sees a run (no run directory)."""
    args = argparse.Namespace(objective="bart", model=model, vocab_size=vocab_size, seq_len=128)
    objective, cfg = build_setup(args)
    network = objective.build_model(cfg)
    tokenizer = SimpleNamespace(special=objective.vocab.special, borrowed={}, vocab_size=vocab_size)
    return RunModel(Path(f"<random {model}>"), "pretrain", {"objective": "bart"}, objective, tokenizer,
                    cfg, network, network)


def timed(call: Callable[[], list[list[int]]]) -> tuple[float, list[list[int]]]:
    start = time.perf_counter()
    out = call()
    return time.perf_counter() - start, out


def measure(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    run = load_run(args.run) if args.run else random_run(args.model, args.vocab_size)
    target = plan_export(run)
    if target.family != "bart":
        raise SystemExit(f"{run.run} exports as {target.hf_class}: this benchmark times BartForConditionalGeneration "
                         "(a bart, mass or t5 run, or --model for a random one)")
    hf = build_hf_model(run, target, transformers)
    difference = max_logit_difference(run, target, hf, probe_ids(run))

    frame, vocab = run.objective_impl.text_frame(), run.objective_impl.vocab
    sources = torch.randint(vocab.first_normal_id, vocab.size, (args.batch_size, args.source_len),
                            generator=torch.Generator().manual_seed(1))
    prompt = torch.tensor(frame.decoder_prompt).expand(args.batch_size, -1)
    options = DecodeOptions(max_length=args.max_length, min_length=args.max_length, beam=args.beam,
                            length_penalty=1.0)

    def ptmkit_call() -> list[list[int]]:
        outputs = generate(run.network, sources.tolist(), options, architecture=run.architecture,
                           eos=frame.eos, pad=vocab.special.pad, decoder_prompt=frame.decoder_prompt)
        return [out.tokens for out in outputs]

    def hf_call() -> list[list[int]]:
        out = hf.generate(input_ids=sources, attention_mask=torch.ones_like(sources),
                          decoder_input_ids=prompt, num_beams=args.beam, num_return_sequences=1,
                          max_new_tokens=args.max_length, min_new_tokens=args.max_length,
                          do_sample=False, use_cache=True, length_penalty=1.0, early_stopping=True,
                          no_repeat_ngram_size=0, eos_token_id=frame.eos, pad_token_id=vocab.special.pad)
        return out[:, prompt.shape[1]:].tolist()

    seconds: dict[str, list[float]] = {"ptmkit": [], "hf": []}
    calls = {"ptmkit": ptmkit_call, "hf": hf_call}
    with torch.inference_mode():
        first = {side: call() for side, call in calls.items()}  # warm-up
        for _ in range(args.repeats):
            for side, call in calls.items():
                took, out = timed(call)
                seconds[side].append(took)
                if any(len(row) != args.max_length for row in out):
                    raise RuntimeError(f"{side} generated {sorted({len(row) for row in out})} tokens, "
                                       f"not {args.max_length}")
    tokens = args.batch_size * args.max_length
    rate = {side: tokens / statistics.median(times) for side, times in seconds.items()}
    return {"model": str(args.run) if args.run else args.model, "beam": args.beam,
            "batch_size": args.batch_size, "source_len": args.source_len, "max_length": args.max_length,
            "threads": torch.get_num_threads(), "repeats": args.repeats,
            "ptmkit_tokens_per_s": round(rate["ptmkit"], 1), "hf_tokens_per_s": round(rate["hf"], 1),
            "ratio": round(rate["ptmkit"] / rate["hf"], 3),
            "same_output": first["ptmkit"][0] == first["hf"][0], "max_logit_difference": difference,
            "transformers": transformers.__version__}


def main() -> None:
    parser = bench_parser(__doc__)
    parser.add_argument("--model", default="small", help="size of the random init (without --run)")
    parser.add_argument("--run", type=Path, help="a trained bart/mass/t5 ptmkit run instead")
    parser.add_argument("--vocab-size", type=int, default=8192, help="of the random init")
    parser.add_argument("--beam", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--source-len", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=32, help="tokens generated per input")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    emit(measure(args), args.json)


if __name__ == "__main__":
    main()
