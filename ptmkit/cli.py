"""The `ptmkit` command line: thin parsing that hands over to one function per sub-command.

Bad input exits 2 with ``ptmkit: error: <what> (<where>): <fix>`` and no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any, NoReturn

from ptmkit.errors import UserError
from ptmkit.fileio import check_writable, read_yaml
from ptmkit.recipes import FINETUNE_KEYS as RECIPE_FINETUNE_KEYS, load_recipe
from ptmkit.train.loop import PRECISIONS, TrainConfig

EPILOGS = {
    "ptmkit": ("example (each command has --help with its own examples):\n"
               "  ptmkit tokenizer --corpus wiki.txt.gz --kind bpe --vocab-size 8000 --out tok/\n"
               "  ptmkit prepare --corpus wiki.txt.gz --tokenizer tok/ --out data/ --seq-len 128\n"
               "  ptmkit pretrain --objective mlm --data data/ --model mini --steps 2000 --out runs/mlm"),
    "tokenizer": "example:\n  ptmkit tokenizer --corpus wiki.txt.gz --kind bpe --vocab-size 8000 --out tok/",
    "prepare": "example:\n  ptmkit prepare --corpus wiki.txt.gz --tokenizer tok/ --out data/ --seq-len 128",
    "pretrain": ("examples:\n"
                 "  ptmkit pretrain --objective mlm --data data/ --model mini --steps 2000 --out runs/mlm\n"
                 "  ptmkit pretrain --objective clm --corpus my_texts/ --max-minutes 30 --out runs/clm\n"
                 "  ptmkit pretrain --out runs/mlm --resume      # continue after an interruption\n"
                 "  torchrun --standalone --nproc_per_node 4 -m ptmkit pretrain --objective mlm --data data/ "
                 "--batch-size 32 --out runs/mlm4   # DDP, 4 x 32 per step"),
    "finetune": ("examples:\n"
                 "  ptmkit finetune --task glue:sst2 --data-dir glue/ --init runs/mlm --out runs/sst2 "
                 "--max-train-examples 1000\n"
                 "  ptmkit finetune --task classify --train train.tsv --dev dev.tsv --text-fields "
                 "sentence1,sentence2 --init scratch --tokenizer tok/ --out runs/pair"),
    "evaluate": "example:\n  ptmkit evaluate --run runs/sst2 --data test.tsv --out test.json",
    "generate": ("examples:\n"
                 "  ptmkit finetune --task seq2seq --train train.jsonl --dev dev.jsonl --init runs/bart "
                 "--out runs/sum\n"
                 "  ptmkit finetune --task seq2seq --train train.en.gz,train.de.gz --init runs/bart "
                 "--out runs/mt\n"
                 "  ptmkit generate --run runs/sum --input articles.txt --beam 4 --max-length 48\n"
                 "  echo 'The river' | ptmkit generate --run runs/clm --input - --top-p 0.9 --seed 1"),
    "compare": "examples:\n  ptmkit compare --config experiments/sst2_budget.yaml --out runs/cmp --dry-run\n"
               "  ptmkit compare --config experiments/sst2_budget.yaml --out runs/cmp",
    "demo": "example:\n  ptmkit demo --out demo-run/",
    "export": ("examples:\n  ptmkit export --run runs/mlm --format hf --out hf/mlm\n"
               "  python -c \"from transformers import AutoModelForMaskedLM as M; M.from_pretrained('hf/mlm')\"\n"
               "  ptmkit pretrain --objective mlm --init hf:hf/mlm --corpus more.txt --steps 500 --out runs/mlm2"),
}

TRAIN_FLAGS = {  # CLI flag -> TrainConfig field (flags default to None so a --config file can set them)
    "steps": int, "batch_size": int, "seq_len": int, "lr": float, "warmup": int, "seed": int,
    "precision": str, "max_minutes": float, "save_every": int, "eval_every": int,
    "grad_accum": int, "workers": int, "schedule": str, "log_every": int, "keep_checkpoints": int,
}

TRAIN_FLAG_HELP = {  # the defaults TrainConfig resolves (the others are its field defaults)
    "steps": "default 1000, or as many as --max-minutes allows when it is given",
    "warmup": "default 6%% of the steps (100 under a time budget)", "max_minutes": "default 0: no time limit",
    "seq_len": "default: the one the --data was prepared for, else 128",
    "log_every": "default: about 100 lines per run", "eval_every": "default: ten validations per run",
    "save_every": "default 0: only at the end (and on Ctrl-C / SIGTERM)",
}


FILE_OPTION_TYPES = {  # --config keys outside TrainConfig: accepted types, an example value
    "objective": (str, "mlm"), "data": (str, "data/"), "corpus": ((str, list), "[wiki.txt.gz]"),
    "tokenizer": (str, "tok/"), "text_field": (str, "text"), "model": ((str, dict), "mini"),
    "init": (str, "runs/mlm"), "objective_options": (dict, "{mask_prob: 0.15}"), "distributed": (str, "ddp"),
}


def _add_tokenizer(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "tokenizer", "train a tokenizer (bpe, wordpiece, unigram, char) on a corpus")
    p.add_argument("--corpus", nargs="+", required=True, metavar="PATH")
    p.add_argument("--kind", default="bpe", help="bpe | wordpiece | unigram | char (default bpe)")
    p.add_argument("--vocab-size", type=int, default=8000, help="default 8000 (the special tokens included)")
    p.add_argument("--lowercase", action=argparse.BooleanOptionalAction, default=None,
                   help="default: on for wordpiece, off otherwise")
    p.add_argument("--text-field", default="text", help="jsonl field / csv or dataset column with the text")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_tokenizer)


def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "prepare", "tokenize a corpus into memory-mapped token shards")
    p.add_argument("--corpus", nargs="+", required=True, metavar="PATH")
    p.add_argument("--tokenizer", required=True, type=Path,
                   help="directory of `ptmkit tokenizer`, or hf:DIR (a Hugging Face model's)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--seq-len", type=int, default=128,
                   help="the window `pretrain --data` trains on unless given its own --seq-len")
    p.add_argument("--val-fraction", type=float, default=0.01,
                   help="share of documents held out for validation, by a hash of their index; a corpus "
                        "of 10 or more documents keeps at least its last one there (0: none)")
    p.add_argument("--segment", choices=["jieba"],
                   help="store jieba word boundaries (Chinese whole-word masking)")
    p.add_argument("--text-field", default="text", help="jsonl field / csv or dataset column with the text")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_prepare)


def _add_pretrain(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "pretrain", "pre-train a model with one objective")
    p.add_argument("--objective", help="the objective's name (README lists them all)")
    p.add_argument("--recipe", help="a shipped recipe (e.g. budget: see ptmkit/recipes/) or a recipe YAML: "
                   "its stages, model and tokenizer in its time budget (--max-minutes overrides it)")
    p.add_argument("--noise", help="BART noises, comma-separated: token_mask, token_delete, "
                   "text_infill, sentence_permute, document_rotate")
    p.add_argument("--data", type=Path, help="directory written by `ptmkit prepare`")
    p.add_argument("--corpus", nargs="+", metavar="PATH", help="raw text; prepared inside the run")
    p.add_argument("--tokenizer", type=Path, help="with --corpus; default: train a bpe 8000 one")
    p.add_argument("--domain-data", type=Path, help="with --recipe: prepared text for its `corpus: domain` stages")
    p.add_argument("--domain-corpus", nargs="+", metavar="PATH",
                   help="with --recipe: raw text for its `corpus: domain` stages")
    p.add_argument("--text-field")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--model", help="tiny | mini | small | medium | base | FILE.yaml (default tiny)")
    p.add_argument("--config", type=Path, help="YAML file with any of these options")
    p.add_argument("--init", help="start from an earlier run's weights (RUN), or from a local "
                   "Hugging Face BERT/RoBERTa/GPT-2/BART directory (hf:DIR: its size and tokenizer too)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--distributed", choices=("ddp", "fsdp"),
                   help="under torchrun: ddp (default when torchrun starts several processes) or fsdp; "
                   "--batch-size is then per process")
    for flag, kind in TRAIN_FLAGS.items():
        p.add_argument("--" + flag.replace("_", "-"), type=kind, default=None,
                       help=TRAIN_FLAG_HELP.get(flag, f"default {getattr(TrainConfig, flag)}"))
    p.set_defaults(handler=_run_pretrain)


def _add_finetune(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "finetune", "fine-tune a pre-trained run (or a scratch model) on a labelled task")
    p.add_argument("--task", required=True,
                   help="classify | regress | tag | relation | keyphrase | seq2seq | glue:<sst2|cola|stsb|...>")
    p.add_argument("--init", required=True, help="RUN directory of `ptmkit pretrain`, scratch, or "
                   "hf:DIR (a local Hugging Face BERT/RoBERTa/GPT-2/BART directory)")
    p.add_argument("--train", help="training file (.tsv/.csv/.jsonl[.gz]); seq2seq also SRC,TGT text files; "
                   "CoNLL for tag; a keyphrase zip (or ZIP:train) for keyphrase")
    p.add_argument("--dev", help="dev file; default: a stratified --dev-fraction of --train "
                   "(keyphrase: the zip's fixed dev part)")
    p.add_argument("--negative-label", help="relation: the 'no relation' class left out of f1 "
                   "(default: false/none/other/no_relation when present)")
    p.add_argument("--data-dir", help="GLUE folder for --task glue:<name>")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--tokenizer", type=Path, help="tokenizer of a scratch model")
    p.add_argument("--model", help="size of a scratch model (default tiny; with --recipe, the recipe's)")
    p.add_argument("--text-fields", default="text",
                   help="one field, or two comma-separated for pairs (default text)")
    p.add_argument("--label-field", default="label")
    p.add_argument("--source-field", default="source", help="seq2seq: input text field")
    p.add_argument("--target-field", default="target", help="seq2seq: output text field")
    p.add_argument("--target-list", choices=("references", "join"), default="references",
                   help="seq2seq: a list-valued target is alternative references (default) or "
                   "sentences to join")
    p.add_argument("--max-target-length", type=int, default=64, help="seq2seq: target tokens")
    p.add_argument("--max-train-examples", type=int, help="label budget (stratified, seeded)")
    p.add_argument("--dev-fraction", type=float, default=0.1)
    p.add_argument("--cv-folds", type=int, default=0,
                   help="no --dev: cut --train into K seeded folds and score one of them (--fold)")
    p.add_argument("--fold", type=int, default=0, help="with --cv-folds: the fold scored (0 to K-1)")
    p.add_argument("--recipe", help="fine-tuning settings of a shipped recipe (e.g. budget) or a "
                   "recipe YAML; flags given here override them")
    p.add_argument("--pooling", choices=["auto", "first", "last", "mean"],
                   help="how classification/regression heads read the sequence (default auto: the "
                        "pre-training architecture's choice)")
    p.add_argument("--head-epochs", type=_comma_list(int, "a whole number"),
                   help="first train only the task head this many epochs on the fixed pre-trained features, "
                        "then the whole model (LP-FT; default 0: off); several comma-separated counts are "
                        "each tried with each --lr and the best kept, e.g. 0,5")
    p.add_argument("--head-lr", type=float, help="the head's rate while it trains alone (default 3e-3)")
    p.add_argument("--layer-decay", type=float,
                   help="layer-wise learning-rate decay, e.g. 0.8 (default 1: off)")
    p.add_argument("--dropout", type=float,
                   help="the backbone's hidden and attention dropout while fine-tuning (default: "
                        "the model's own, 0.1 for ptmkit's sizes)")
    p.add_argument("--select-fraction", type=float,
                   help="pick the best epoch (and learning rate) on this held-out share of the "
                        "training examples, then score dev once (default: 0, pick on dev, for one "
                        "--lr; 0.1 for a search over several rates)")
    p.add_argument("--epochs", type=int, help="default 3")
    p.add_argument("--min-steps", type=int, help="at least this many optimizer steps: more epochs "
                   "for small data, still scored about --epochs times (default 0)")
    p.add_argument("--lr", type=_comma_list(float, "a learning rate"), help="default 5e-5; several comma-separated rates are "
                   "each tried and the best kept (see --select-fraction)")
    p.add_argument("--batch-size", type=int, help="default 32")
    p.add_argument("--max-length", type=int, help="default 128")
    p.add_argument("--patience", type=int, help="early stopping; default 0 = off")
    p.add_argument("--keep-epoch", choices=("best", "last"),
                   help="best (default): the epoch that scores best on dev or --select-fraction's slice; "
                        "last: score only the final model (no choice made on the data scored)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", choices=PRECISIONS, help="default fp32")
    p.add_argument("--freeze", action="store_true", help="train only the task head")
    p.add_argument("--freeze-embeddings", action="store_true", default=None,
                   help="keep the pre-trained token embeddings fixed (helps when few labels cover few words)")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run in --out from its last epoch checkpoint (same options)")
    p.add_argument("--checkpoint-seconds", type=float,
                   help="write an epoch checkpoint for --resume at most this often (default 60; 0: every epoch)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_finetune)


def _add_evaluate(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "evaluate", "score a fine-tuned run on a data file")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--data", required=True, help="a file of the run's task format (keyphrase: ZIP:dev)")
    p.add_argument("--out", type=Path, help="also write the metrics to this JSON file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.set_defaults(handler=_run_evaluate, out_is_file=True)


def _add_generate(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "generate", "generate text (one output line per input line) with a seq2seq "
                "fine-tuned run or a clm/prefixlm/bart/mass/t5 pre-training run")
    p.add_argument("--run", required=True, type=Path)
    p.add_argument("--input", required=True, help="text file, one input per line, or - for stdin")
    p.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    p.add_argument("--max-length", type=int, default=64, help="most tokens generated, EOS included (default 64)")
    p.add_argument("--min-length", type=int, default=0)
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="beam search ranks by log p / length**this (0 = raw log-probability)")
    p.add_argument("--top-p", type=float, help="nucleus sampling instead of search")
    p.add_argument("--temperature", type=float, help="sampling temperature (implies --top-p 1)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--batch-size", type=int, default=32)
    p.set_defaults(handler=_run_generate)


def _add_compare(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "compare", "scratch vs pre-training objectives, label budgets, seeds, paths A/B/C")
    p.add_argument("--config", required=True, type=Path, help="compare YAML (see README)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--dry-run", action="store_true",
                   help="list the runs (marking those already finished in --out) and the time left")
    p.add_argument("--workers", type=int, default=1,
                   help="fine-tune this many cells at once, each in its own process with an equal share of "
                        "the cores (default 1; small models on a CPU finish sooner with 2 or more)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_compare)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "export", "write a run as a Hugging Face transformers model directory")
    p.add_argument("--run", required=True, type=Path, help="a pretrain or finetune run directory")
    p.add_argument("--format", default="hf", help="hf (the default and only one: transformers; needs "
                   "`pip install ptmkit[hf]`)")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_export)


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = _parser(sub, "demo", "scratch vs word2vec, mlm, t5 on general text; word2vec, mlm continued on movie reviews "
                "(text shipped in wheels)")
    p.add_argument("--out", type=Path, default=Path("demo-run"))
    p.add_argument("--tokens", type=int, default=1_500_000,
                   help="pre-training budget of each Transformer objective in each stage (general text, "
                        "then reviews), in tokens (default 1.5M)")
    p.add_argument("--workers", type=int, default=None,
                   help="cells fine-tuned at once, each in its own process (default: one per core, at most 2)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=_run_demo)


def _parser(sub: argparse._SubParsersAction, name: str, help_text: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help_text, description=help_text, epilog=EPILOGS.get(name),
                          formatter_class=argparse.RawDescriptionHelpFormatter)


class _OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line, as every other error: argparse's usage block before it hides the
    message in the options of the whole command, which `--help` lists anyway."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (`{self.prog} --help` lists the options)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="ptmkit", description="Pre-train language models with "
                                     "every classic objective on one shared backbone.",
                                     epilog=EPILOGS["ptmkit"], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"ptmkit {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_tokenizer, _add_prepare, _add_pretrain, _add_finetune, _add_evaluate, _add_generate, _add_compare, _add_export, _add_demo):
        add(sub)
    return parser


def _version() -> str:
    from ptmkit import __version__
    return __version__


# ---- sub-commands -----------------------------------------------------------------------

def _run_tokenizer(args: argparse.Namespace) -> None:
    from ptmkit.data.corpus import list_corpus_files, read_texts
    from ptmkit.data.tokenizer import train_tokenizer
    list_corpus_files(args.corpus)
    if args.out.exists() and not args.out.is_dir():  # found now, not after the training
        raise UserError("output path is a file", str(args.out), "choose a directory path for --out")
    if args.out.is_dir() and any(args.out.iterdir()) and not args.overwrite:
        raise UserError("output directory is not empty", str(args.out),
                        "choose a new --out or pass --overwrite")
    tokenizer = train_tokenizer(read_texts(args.corpus, text_field=args.text_field), kind=args.kind,
                                vocab_size=args.vocab_size, lowercase=args.lowercase,
                                show_progress=not args.no_progress and sys.stderr.isatty())  # it draws no bar elsewhere
    tokenizer.save(args.out)
    print(f"tokenizer ({args.kind}, {tokenizer.vocab_size} ids) written to {args.out}/tokenizer.json")


def _run_prepare(args: argparse.Namespace) -> None:
    from ptmkit.data.shards import prepare
    from ptmkit.data.tokenizer import Tokenizer
    from ptmkit.pretraining import check_corpus
    tokenizer = (Tokenizer.from_hf(str(args.tokenizer)[3:]) if str(args.tokenizer).startswith("hf:")
                 else Tokenizer.load(args.tokenizer))
    check_corpus(args.corpus, args.text_field)  # a wrong --text-field fails before the progress bar
    manifest = prepare(args.corpus, tokenizer, args.out, val_fraction=args.val_fraction,
                       seq_len=args.seq_len, text_field=args.text_field, overwrite=args.overwrite,
                       segment=args.segment, progress=not args.no_progress,
                       inputs=[Path(str(args.tokenizer).removeprefix("hf:"))])
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    print(f"prepared {train['tokens']:,} train / {val['tokens']:,} validation tokens "
          f"({train['documents'] + val['documents']:,} documents) in {args.out}")


def _load_config_file(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    values = read_yaml(path, "--config") or {}
    if not isinstance(values, dict):
        raise UserError("config must be a mapping of options", str(path), "write `steps: 1000` style lines")
    return values


def _run_pretrain(args: argparse.Namespace) -> None:
    from ptmkit.pretraining import PretrainSpec, check_run_dir, prepared_seq_len, pretrain, resume_settings
    if args.recipe or (args.resume and (args.out / "recipe.yaml").is_file()):
        _run_recipe(args)
        return
    if args.domain_data or args.domain_corpus:
        flag = "--domain-data" if args.domain_data else "--domain-corpus"
        raise UserError(f"{flag} without --recipe", flag,
                        "drop it, or pass --recipe with stages on `corpus: domain` (one objective "
                        "continues on domain text with --init GENERAL_RUN --corpus DOMAIN_TEXT)")
    if args.resume:  # before reading the run's config.yaml for the objective
        check_run_dir(args.out, resume=True, overwrite=args.overwrite)
    file_values = _load_config_file(args.config)
    where = str(args.config)
    known = set(TRAIN_FLAGS) | {f.name for f in fields(TrainConfig)} | set(FILE_OPTION_TYPES) | {"val_fraction"}
    unknown = sorted(set(file_values) - known)
    if unknown:
        raise UserError(f"unknown option(s) {', '.join(unknown)}", where,
                        f"use only: {', '.join(sorted(known))}")
    for name, (kinds, example) in FILE_OPTION_TYPES.items():
        value = file_values.get(name)
        wrong = value is not None and not isinstance(value, kinds)
        if name == "corpus" and isinstance(value, list):
            wrong = not all(isinstance(v, str) for v in value)
        if wrong:
            raise UserError(f"option {name} has the wrong type ({value!r})", where, f"write e.g. `{name}: {example}`")
    if isinstance(file_values.get("corpus"), str):
        file_values["corpus"] = [file_values["corpus"]]  # one path, not its letters
    defaults = TrainConfig()  # resolved: `steps` is an int there, not its open default
    for f in fields(TrainConfig):
        if f.name in file_values:
            file_values[f.name] = _typed(f.name, file_values[f.name], getattr(defaults, f.name), where)
    if "val_fraction" in file_values:
        file_values["val_fraction"] = _typed("val_fraction", file_values["val_fraction"],
                                             PretrainSpec.val_fraction, where)

    def pick(name: str, default: Any = None) -> Any:
        value = getattr(args, name, None)
        return value if value is not None else file_values.get(name, default)

    if args.resume:  # the run's own settings, under whatever the command line and --config give
        saved = resume_settings(args.out, corpus_given=bool(pick("corpus")))
        file_values = {**{k: v for k, v in saved.items() if v is not None}, **file_values}
    objective = pick("objective")
    if objective is None:
        raise UserError("no objective given", "--objective", "pass e.g. --objective mlm")
    train_values = {f.name: pick(f.name) for f in fields(TrainConfig) if pick(f.name) is not None}
    if "seq_len" not in train_values and pick("data"):  # the window `prepare --seq-len` was asked for
        train_values["seq_len"] = prepared_seq_len(Path(pick("data")))
    spec = PretrainSpec(
        objective=objective, out=args.out,
        data=Path(pick("data")) if pick("data") else None,
        corpus=list(pick("corpus") or []),
        tokenizer=Path(pick("tokenizer")) if pick("tokenizer") else None,
        text_field=pick("text_field", "text"), model=pick("model", "tiny"),
        objective_options=_objective_options(pick("objective_options", {}), args.noise),
        train=_train_config(train_values, where), init=pick("init"),
        resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress,
        distributed=pick("distributed"), val_fraction=pick("val_fraction", PretrainSpec.val_fraction),
    )
    summary = pretrain(spec)
    if os.environ.get("RANK", "0") != "0":  # under torchrun: one line, from rank 0
        return
    print(f"pre-trained {summary['steps']} steps, {summary['tokens']:,} tokens at "
          f"{summary['tokens_per_s']:,.0f} tokens/s; run in {args.out}")


RECIPE_CONFLICTS = {  # pretrain flags a recipe run refuses, and why
    **dict.fromkeys(("objective", "config", "model", "init", "noise", "distributed"),
                    "drop it: the recipe sets the objectives and model"),
    **dict.fromkeys(("steps", "batch_size", "seq_len", "lr", "warmup", "schedule", "grad_accum"),
                    "a recipe sets each stage's length and training; edit the recipe, or use --max-minutes"),
}
RECIPE_RUN_FLAGS = ("precision", "compile", "workers", "save_every", "eval_every", "log_every", "keep_checkpoints")
"""pretrain flags about how the stages run, not what they train: each one given applies to every stage."""


def _run_recipe(args: argparse.Namespace) -> None:
    """`pretrain --recipe NAME`: the recipe's stages in its time budget (--max-minutes overrides it)."""
    from ptmkit.recipes import load_recipe, parse_recipe
    from ptmkit.recipes.pretrain import RecipeRun, pretrain_recipe
    given = [name for name in RECIPE_CONFLICTS if getattr(args, name, None) is not None]  # argparse's default: None
    if given:
        flag = "--" + given[0].replace("_", "-")
        raise UserError(f"{flag} conflicts with {'--recipe' if args.recipe else '--resume of a recipe run'}", flag,
                        RECIPE_CONFLICTS[given[0]])
    if args.resume and not (args.out / "recipe.yaml").is_file():
        raise UserError("nothing to resume with --recipe (no recipe.yaml)", str(args.out),
                        "drop --resume, or point --out at an interrupted recipe run")
    if args.resume:  # the recipe as it was started
        saved = args.out / "recipe.yaml"
        recipe = parse_recipe(read_yaml(saved, "--out") or {}, str(saved))
        if args.recipe and load_recipe(args.recipe) != recipe:
            raise UserError("--recipe differs from the recipe the run started with", "--recipe",
                            f"drop --recipe: --resume continues the run's own {saved}")
    else:
        recipe = load_recipe(args.recipe)
    summary = pretrain_recipe(RecipeRun(
        recipe=recipe, out=args.out, data=args.data, corpus=list(args.corpus or []), domain_data=args.domain_data,
        domain_corpus=list(args.domain_corpus or []), tokenizer=args.tokenizer,
        text_field=args.text_field or "text", minutes=args.max_minutes, seed=args.seed,
        train={name: getattr(args, name) for name in RECIPE_RUN_FLAGS if getattr(args, name) is not None},
        progress=not args.no_progress, overwrite=args.overwrite, resume=args.resume))
    stages = ", ".join(f"{s['objective']} {s['wall_seconds']:.0f}s" for s in summary["stages"])
    print(f"recipe {recipe.name}: {stages} ({summary['train_seconds']:.0f}s of {summary['budget_seconds']:.0f}s); "
          f"run in {args.out}")


def _typed(name: str, value: Any, default: Any, where: str) -> Any:
    """A --config value as the type of its default (YAML reads `lr: 2e-3` as a string)."""
    kind = type(default)
    if isinstance(value, kind) and (kind is bool or not isinstance(value, bool)):
        return value
    if kind in (int, float) and not isinstance(value, bool):
        try:
            number = kind(value) if isinstance(value, str) or kind is float else None
        except (TypeError, ValueError):
            number = None
        if number is not None:
            return number
    raise UserError(f"option {name} must be {kind.__name__}, not {value!r}", where,
                    f"write e.g. `{name}: {default}`")


def _objective_options(values: dict[str, Any] | None, noise: str | None) -> dict[str, Any]:
    options = dict(values or {})
    if noise:  # --noise is shorthand for objective_options.noise
        options["noise"] = [name.strip() for name in noise.split(",") if name.strip()]
    return options


def _train_config(values: dict[str, Any], where: str) -> TrainConfig:
    try:
        return TrainConfig(**values)
    except TypeError as err:
        raise UserError(f"bad training option: {err}", where, "check option names and types") from None


RECIPE_FINETUNE_FLAGS = (*sorted(RECIPE_FINETUNE_KEYS), "checkpoint_seconds")
"""Flags of `finetune` that override a --recipe's settings: those a recipe can hold, and one
about how to run rather than what to train."""


def _comma_list(kind: Callable[[str], Any], what: str) -> Callable[[str], list]:
    """An argparse type: one `kind` value, or several comma-separated (a search)."""
    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError:
            values = []
        if not values:
            raise argparse.ArgumentTypeError(f"not {what} or comma-separated list: {text!r}")
        return values
    return parse


def _run_finetune(args: argparse.Namespace) -> None:
    from ptmkit.finetuning.run import FinetuneSpec
    from ptmkit.finetuning.search import as_head_epochs, as_rates, finetune_search
    from ptmkit.finetuning.tasks import answers_one_class
    settings: dict[str, Any] = {}
    model = args.model or "tiny"
    if args.recipe:
        recipe = load_recipe(args.recipe)
        settings, model = dict(recipe.finetune), args.model or recipe.model
    settings.update({k: getattr(args, k) for k in RECIPE_FINETUNE_FLAGS if getattr(args, k, None) is not None})
    rates = as_rates(settings.pop("lr", FinetuneSpec.lr))
    heads = as_head_epochs(settings.pop("head_epochs", FinetuneSpec.head_epochs))
    spec = FinetuneSpec(
        task=args.task, init=args.init, out=args.out, train=args.train, dev=args.dev,
        data_dir=args.data_dir, tokenizer=args.tokenizer, model=model,
        text_fields=[f.strip() for f in args.text_fields.split(",") if f.strip()],
        label_field=args.label_field, max_train_examples=args.max_train_examples,
        source_field=args.source_field, target_field=args.target_field,
        target_list=args.target_list, max_target_length=args.max_target_length,
        dev_fraction=args.dev_fraction, cv_folds=args.cv_folds, fold=args.fold,
        seed=args.seed, freeze=args.freeze, overwrite=args.overwrite,
        progress=not args.no_progress, resume=args.resume, negative_label=args.negative_label,
        lr=rates[0], head_epochs=heads[0], **settings)
    result = finetune_search(spec, rates, heads)
    print(json.dumps(result))
    if answers_one_class(result):
        print(f"ptmkit: warning: the model answers one class for every dev example, so its {result['main_metric']} "
              "is that class's share: it learned nothing from the labels; give it more steps (--epochs, "
              "--min-steps), another --lr, or more labels", file=sys.stderr)


def _run_evaluate(args: argparse.Namespace) -> None:
    from ptmkit.finetuning.run import evaluate
    print(json.dumps(evaluate(args.run, args.data, args.out, overwrite=args.overwrite)))


def _run_generate(args: argparse.Namespace) -> None:
    from ptmkit.finetuning.seq2seq_task import load_generator
    from ptmkit.model.generate import DecodeOptions
    texts = _input_lines(args.input)
    top_p = args.top_p if args.top_p is not None or args.temperature is None else 1.0
    options = DecodeOptions(max_length=args.max_length, min_length=args.min_length, beam=args.beam,
                            length_penalty=args.length_penalty, top_p=top_p,
                            temperature=1.0 if args.temperature is None else args.temperature, seed=args.seed)
    generator = load_generator(args.run)
    for output in generator(texts, options, batch_size=max(1, args.batch_size)):
        print(" ".join(output.split()))  # one line per input, whatever the model emits


def _input_lines(source: str) -> list[str]:
    """Lines of a UTF-8 file or of stdin (`-`); an input without any line is the user's."""
    if source == "-":
        lines = sys.stdin.read().splitlines()
    elif not Path(source).is_file():
        raise UserError("input file not found", source, "give a text file with one input per line, or -")
    else:
        try:
            lines = Path(source).read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise UserError("input is not UTF-8 text", source, "give a UTF-8 text file") from None
    if not any(line.strip() for line in lines):
        raise UserError("no input lines", source, "give one input text per line")
    return lines


def _run_compare(args: argparse.Namespace) -> None:
    from ptmkit.compare.config import load_compare_config
    from ptmkit.compare.report import summary_lines
    from ptmkit.compare.estimate import estimate
    from ptmkit.compare.runner import Compare
    cfg = load_compare_config(args.config)
    compare = Compare(cfg, args.out, progress=not args.no_progress, workers=args.workers)
    if args.dry_run:
        plan, finished = estimate(cfg, args.out), compare.finished_runs()
        for what, seconds in plan:
            print(f"{'done' if what in finished else f'{seconds / 60:.1f} min':>9}  {what}")
        left = [seconds / (args.workers if what.startswith("finetune") else 1)
                for what, seconds in plan if what not in finished]
        print(f"{sum(left) / 60:5.1f} min  left ({len(left)} of {len(plan)} runs to do, rough estimate)")
        return
    page = compare.run()
    print(summary_lines(args.out))
    print(f"report: {page}")


def _run_export(args: argparse.Namespace) -> None:
    from ptmkit.hf.export import export_run
    if args.no_progress:  # transformers' own bars (writing the weights, checking them)
        from huggingface_hub.utils import disable_progress_bars
        disable_progress_bars()
    result = export_run(args.run, args.out, format=args.format, overwrite=args.overwrite)
    print(f"exported {args.run} as {result['class']} to {args.out} "
          f"(logits within {result['max_logit_difference']:.1e} of ptmkit's)")


def _run_demo(args: argparse.Namespace) -> None:
    from ptmkit.demo import demo
    demo(args.out, tokens=args.tokens, progress=not args.no_progress, workers=args.workers)


INTERRUPT_HINTS = {  # what to do next, where the interrupted run's own message would mislead
    "compare": "run the same command again: finished runs are reused, an interrupted pre-training "
               "continues from its checkpoint",
    "demo": "run the same command again: finished runs are reused",
    "finetune": "pass --resume to continue from the last epoch checkpoint (one is written at most "
                "every --checkpoint-seconds, 60 by default)",
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], None] = args.handler
    try:
        if getattr(args, "out", None) is not None:  # a read-only --out fails before any work
            check_writable(args.out, "--out", directory=not getattr(args, "out_is_file", False))
        handler(args)
    except UserError as err:
        print(f"ptmkit: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt as err:
        hint = INTERRUPT_HINTS.get(args.command, str(err))
        print(f"ptmkit: interrupted{': ' + hint if hint else ''}", file=sys.stderr)
        return 130
    return 0
