"""The error contract (architecture.md §7): bad input exits 2 with one line
`ptmkit: error: <what> (<where>): <fix>` on stderr, no traceback, and nothing written or overwritten."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ptmkit.cli import main
from ptmkit.objectives import OBJECTIVES

KEEP = b"precious bytes that must survive\n"


def _file(name: str, content: str | bytes = "") -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return setup


def _dir(name: str) -> Callable[[Path], None]:
    return lambda root: (root / name).mkdir(parents=True)


def _existing_run(name: str) -> Callable[[Path], None]:
    """A directory that looks like an earlier run: --overwrite must not destroy it on bad input."""
    def setup(root: Path) -> None:
        for part in ("config.yaml", "model.safetensors", "metrics.jsonl", "tokenizer/tokenizer.json"):
            _file(f"{name}/{part}", KEEP)(root)
    return setup


def _read_only_dir(name: str) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        if os.geteuid() == 0:
            pytest.skip("running as root, which writes into read-only directories: "
                        "run the tests as an ordinary user to check a non-writable --out")
        (root / name).mkdir()
        (root / name).chmod(0o500)
    return setup


@dataclass
class Case:
    id: str
    args: list[str]
    mentions: tuple[str, ...]
    setups: list[Callable[[Path], None]] = field(default_factory=list)

    def placeholders(self) -> set[str]:
        return {name for arg in self.args for name in re.findall(r"\{(\w+)\}", arg)}


@dataclass(frozen=True)
class Runs:
    """A real (tiny, 2-step bart) pre-training run, and broken variants of it, made once."""

    root: Path
    run: Path
    garbage_run: Path  # model.safetensors is not safetensors at all
    truncated_run: Path  # model.safetensors cut in half (an interrupted copy)
    other_tok: Path  # a tokenizer that is not the run's (nor the prepared data's)
    other_tok_run: Path  # the run, saved with other_tok


RUN_PLACEHOLDERS = {f.name for f in dataclasses.fields(Runs)} - {"root"}


PRETRAIN = ["pretrain", "--no-progress", "--objective", "mlm"]
PRETRAIN_DATA = [*PRETRAIN, "--data", "{data}", "--steps", "2", "--batch-size", "2", "--seq-len", "32"]
JSONL = _file("docs.jsonl", "".join(json.dumps({"body": f"Sentence number {i} is here."}) + "\n"
                                    for i in range(50)))
CSV = _file("docs.csv", "id,body\n" + "".join(f"{i},Sentence number {i} is here.\n" for i in range(50)))
EMPTY_DIR = [_dir("corpus_dir"), _file("corpus_dir/.hidden", "hidden text is skipped\n"),
             _file("corpus_dir/archive.zip", b"PK\x03\x04")]

BART_DATA = ["pretrain", "--no-progress", "--objective", "bart", "--data", "{data}", "--steps", "2",
             "--batch-size", "2", "--seq-len", "32"]
BINARY = _file("bad.txt", b"\xff\xfe\x00\x81\x00binary\x00\x9c\xd3 not text\n" * 4)
LATIN1 = _file("latin1.txt", "Un café très crème, s'il vous plaît.\n".encode("latin-1"))
BAD_JSONL = _file("bad.jsonl", '{"text": "A fine first line."}\n{"text": "A second one."}\n'
                               '{"text": "an unclosed string}\n{"text": "A fourth."}\n')
TRAIN_TSV = _file("train.tsv", "text\tlabel\n" + "".join(f"good film {i}\tpos\nbad film {i}\tneg\n"
                                                      for i in range(20)))
ONE_DOC = _file("one.txt", "The only document. It has two sentences.\n")
TWO_DOCS = _file("two.txt", "The first document is one line.\nThe second document is another.\n")

CASES = [
    # --- objective
    Case("pretrain-unknown-objective",
         ["pretrain", "--objective", "no_such_objective", "--data", "{data}", "--out", "run"],
         ("no_such_objective", "--objective", *sorted(OBJECTIVES))),
    # --- corpus paths
    Case("tokenizer-missing-corpus", ["tokenizer", "--corpus", "missing.txt", "--out", "tok"],
         ("missing.txt",)),
    Case("prepare-missing-corpus",
         ["prepare", "--corpus", "missing.txt", "--tokenizer", "{tok}", "--out", "out"], ("missing.txt",)),
    Case("pretrain-missing-corpus", [*PRETRAIN, "--corpus", "missing.txt", "--out", "run"],
         ("missing.txt",)),
    Case("tokenizer-empty-corpus", ["tokenizer", "--corpus", "empty.txt", "--out", "tok"],
         ("empty.txt",), [_file("empty.txt")]),
    Case("tokenizer-blank-corpus", ["tokenizer", "--corpus", "blank.txt", "--out", "tok"],
         ("blank.txt",), [_file("blank.txt", "\n   \n\t\n")]),
    Case("prepare-empty-corpus",
         ["prepare", "--corpus", "empty.txt", "--tokenizer", "{tok}", "--out", "out"],
         ("empty.txt",), [_file("empty.txt")]),
    Case("pretrain-empty-corpus",
         [*PRETRAIN, "--corpus", "empty.txt", "--tokenizer", "{tok}", "--out", "run"],
         ("empty.txt",), [_file("empty.txt")]),
    Case("tokenizer-dir-without-files", ["tokenizer", "--corpus", "corpus_dir", "--out", "tok"],
         ("corpus_dir",), EMPTY_DIR),
    Case("prepare-dir-without-files",
         ["prepare", "--corpus", "corpus_dir", "--tokenizer", "{tok}", "--out", "out"],
         ("corpus_dir",), EMPTY_DIR),
    Case("tokenizer-jsonl-missing-field", ["tokenizer", "--corpus", "docs.jsonl", "--out", "tok"],
         ("docs.jsonl", "'text'", "--text-field", "body"), [JSONL]),
    Case("prepare-jsonl-missing-field",
         ["prepare", "--corpus", "docs.jsonl", "--tokenizer", "{tok}", "--out", "out"],
         ("docs.jsonl", "'text'", "--text-field"), [JSONL]),
    Case("pretrain-jsonl-missing-field",
         [*PRETRAIN, "--corpus", "docs.jsonl", "--tokenizer", "{tok}", "--out", "run"],
         ("docs.jsonl", "'text'", "--text-field"), [JSONL]),
    Case("prepare-csv-missing-column",
         ["prepare", "--corpus", "docs.csv", "--tokenizer", "{tok}", "--out", "out"],
         ("docs.csv", "'text'", "--text-field"), [CSV]),
    # --- tokenizer options
    Case("tokenizer-unknown-kind",
         ["tokenizer", "--corpus", "{lee}", "--kind", "sentencepiece", "--out", "tok"],
         ("sentencepiece", "--kind", "bpe", "wordpiece")),
    Case("tokenizer-vocab-too-small",
         ["tokenizer", "--corpus", "{lee}", "--vocab-size", "50", "--out", "tok"], ("--vocab-size",)),
    Case("prepare-tokenizer-missing",
         ["prepare", "--corpus", "{lee}", "--tokenizer", "no_tok", "--out", "out"], ("no_tok",)),
    Case("prepare-tokenizer-not-a-tokenizer",
         ["prepare", "--corpus", "{lee}", "--tokenizer", "not_tok", "--out", "out"], ("not_tok",),
         [_file("not_tok/tokenizer.json", "{not json")]),
    Case("pretrain-tokenizer-missing",
         [*PRETRAIN, "--corpus", "{lee}", "--tokenizer", "no_tok", "--out", "run"], ("no_tok",)),
    Case("prepare-bad-val-fraction",
         ["prepare", "--corpus", "{lee}", "--tokenizer", "{tok}", "--out", "out", "--val-fraction", "1.5"],
         ("--val-fraction",)),
    # --- data
    Case("pretrain-data-not-prepared", [*PRETRAIN, "--data", "not_prepared", "--out", "run"],
         ("not_prepared", "prepare"), [_file("not_prepared/notes.txt", "hello\n")]),
    Case("pretrain-data-missing", [*PRETRAIN, "--data", "no_data", "--out", "run"], ("no_data",)),
    Case("pretrain-data-and-corpus", [*PRETRAIN, "--data", "{data}", "--corpus", "{lee}", "--out", "run"],
         ("--data", "--corpus")),
    Case("pretrain-no-data", [*PRETRAIN, "--out", "run"], ("--data",)),
    # --- output directories
    Case("tokenizer-out-not-empty",
         ["tokenizer", "--corpus", "{lee}", "--vocab-size", "2000", "--out", "busy"],
         ("busy", "--overwrite"), [_file("busy/keep.txt", KEEP)]),
    Case("tokenizer-out-is-a-file",
         ["tokenizer", "--corpus", "{lee}", "--vocab-size", "2000", "--out", "taken"],
         ("taken", "--out"), [_file("taken", KEEP)]),
    Case("prepare-out-not-empty",
         ["prepare", "--corpus", "{lee}", "--tokenizer", "{tok}", "--out", "busy"],
         ("busy", "--overwrite"), [_file("busy/keep.txt", KEEP)]),
    Case("pretrain-out-not-empty", [*PRETRAIN_DATA, "--out", "busy"], ("busy", "--overwrite"),
         [_file("busy/keep.txt", KEEP)]),
    Case("pretrain-out-is-a-run", [*PRETRAIN_DATA, "--out", "old"], ("old", "--overwrite"),
         [_existing_run("old")]),
    Case("pretrain-out-is-a-file", [*PRETRAIN_DATA, "--out", "afile"], ("afile",),
         [_file("afile", KEEP)]),
    Case("pretrain-resume-no-run", ["pretrain", "--no-progress", "--out", "run", "--resume"],
         ("run", "resume")),
    Case("pretrain-resume-not-a-run", [*PRETRAIN_DATA, "--out", "busy", "--resume"], ("busy", "resume"),
         [_file("busy/keep.txt", KEEP)]),
    # --- model
    Case("pretrain-unknown-model-size", [*PRETRAIN_DATA, "--model", "huge", "--out", "run"],
         ("huge", "--model", "tiny")),
    Case("pretrain-model-file-missing", [*PRETRAIN_DATA, "--model", "nomodel.yaml", "--out", "run"],
         ("nomodel.yaml",)),
    Case("pretrain-model-unknown-field", [*PRETRAIN_DATA, "--model", "model.yaml", "--out", "run"],
         ("model.yaml", "width"), [_file("model.yaml", "n_layers: 1\nhidden: 64\nheads: 2\nwidth: 3\n")]),
    Case("pretrain-model-unknown-size-in-file", [*PRETRAIN_DATA, "--model", "model.yaml", "--out", "run"],
         ("model.yaml", "huge"), [_file("model.yaml", "size: huge\n")]),
    *(Case(f"pretrain-model-file-{field}", [*PRETRAIN_DATA, "--model", "model.yaml", "--out", "run"],
           ("model.yaml", field), [_file("model.yaml", f"size: tiny\n{field}: {value}\n")])
      for field, value in [("heads", "0"), ("hidden", "'256'"), ("n_layers", "2.5"), ("ffn", "-5"),
                           ("dropout", "1.5"), ("norm_eps", "-1"), ("tie_embeddings", "'no'"), ("size", "[1]"),
                           ("layout", "[1]"), ("n_decoder_layers", "-2")]),
    Case("pretrain-seq-len-too-long", [*PRETRAIN_DATA, "--seq-len", "1000", "--out", "run"],
         ("--seq-len", "512")),
    Case("pretrain-seq-len-too-long-overwrite",
         [*PRETRAIN_DATA, "--seq-len", "1000", "--out", "old", "--overwrite"], ("--seq-len", "512"),
         [_existing_run("old")]),
    Case("pretrain-seq-len-too-long-corpus",
         [*PRETRAIN, "--corpus", "{lee}", "--seq-len", "1000", "--out", "run"], ("--seq-len", "512")),
    Case("pretrain-seq-len-too-long-for-model-file",
         [*PRETRAIN_DATA, "--seq-len", "64", "--model", "model.yaml", "--out", "run"],
         ("--seq-len", "32"), [_file("model.yaml", "size: tiny\nmax_positions: 32\n")]),
    Case("pretrain-batch-larger-than-data", [*PRETRAIN_DATA, "--batch-size", "100000", "--out", "run"],
         ("--batch-size",)),
    Case("pretrain-batch-larger-than-data-overwrite",
         [*PRETRAIN_DATA, "--batch-size", "100000", "--out", "old", "--overwrite"], ("--batch-size",),
         [_existing_run("old")]),
    # --- --config files
    Case("pretrain-config-syntax-error", [*PRETRAIN_DATA, "--config", "bad.yaml", "--out", "run"],
         ("bad.yaml", "YAML"), [_file("bad.yaml", "steps: [1, 2\nlr: 0.1\n")]),
    Case("pretrain-config-unknown-key", [*PRETRAIN_DATA, "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml", "stepz"), [_file("cfg.yaml", "stepz: 5\n")]),
    Case("pretrain-config-not-a-mapping", [*PRETRAIN_DATA, "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml",), [_file("cfg.yaml", "- steps\n- 5\n")]),
    Case("pretrain-config-bad-value", [*PRETRAIN_DATA, "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml", "warmup"), [_file("cfg.yaml", "warmup: lots\n")]),
    Case("pretrain-config-bad-number", [*PRETRAIN_DATA, "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml", "lr", "fast"), [_file("cfg.yaml", "lr: fast\n")]),
    Case("pretrain-config-float-for-int", [*PRETRAIN_DATA, "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml", "steps", "2.5"), [_file("cfg.yaml", "steps: 2.5\n")]),
    Case("pretrain-config-bad-range", [*PRETRAIN_DATA, "--config", "cfg.yaml", "--out", "run"],
         ("--grad-accum",), [_file("cfg.yaml", "grad_accum: 0\n")]),
    Case("pretrain-config-missing", [*PRETRAIN_DATA, "--config", "nocfg.yaml", "--out", "run"],
         ("nocfg.yaml",)),
    Case("pretrain-config-not-utf8", [*PRETRAIN_DATA, "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml", "UTF-8"), [_file("cfg.yaml", b"corpus: caf\xe9.txt\n")]),
    Case("pretrain-config-objective-options-not-a-mapping", [*PRETRAIN_DATA, "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml", "objective_options"), [_file("cfg.yaml", "objective_options: 5\n")]),
    Case("pretrain-config-objective-a-list", [*PRETRAIN, "--data", "{data}", "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml", "objective"), [_file("cfg.yaml", "objective: [mlm]\n")]),
    Case("pretrain-config-corpus-of-numbers", [*PRETRAIN, "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml", "corpus"), [_file("cfg.yaml", "corpus: [5]\n")]),
    # --- training flags
    Case("pretrain-negative-steps", [*PRETRAIN_DATA, "--steps", "-5", "--out", "run"], ("--steps",)),
    Case("pretrain-zero-batch", [*PRETRAIN_DATA, "--batch-size", "0", "--out", "run"], ("--batch-size",)),
    Case("pretrain-negative-lr", [*PRETRAIN_DATA, "--lr=-1e-3", "--out", "run"], ("--lr",)),
    Case("pretrain-bad-precision", [*PRETRAIN_DATA, "--precision", "fp8", "--out", "run"],
         ("--precision", "fp8", "bf16")),
    Case("pretrain-bad-schedule", [*PRETRAIN_DATA, "--schedule", "exp", "--out", "run"], ("--schedule",)),
    Case("pretrain-init-missing", [*PRETRAIN_DATA, "--init", "no_run", "--out", "run"], ("no_run",)),
    Case("pretrain-init-missing-overwrite",
         [*PRETRAIN_DATA, "--init", "no_run", "--out", "old", "--overwrite"], ("no_run",), [_existing_run("old")]),
    Case("pretrain-unknown-model-corpus-overwrite",
         [*PRETRAIN, "--corpus", "{lee}", "--model", "huge", "--out", "old", "--overwrite"], ("huge", "--model"),
         [_existing_run("old")]),
    # --- binary / non-UTF-8 corpus files (read with errors="replace" they would train on noise)
    Case("tokenizer-binary-corpus", ["tokenizer", "--corpus", "bad.txt", "--out", "tok"],
         ("bad.txt", "UTF-8"), [BINARY]),
    Case("prepare-binary-corpus", ["prepare", "--corpus", "bad.txt", "--tokenizer", "{tok}", "--out", "out"],
         ("bad.txt", "UTF-8"), [BINARY]),
    Case("pretrain-binary-corpus", [*PRETRAIN, "--corpus", "bad.txt", "--tokenizer", "{tok}", "--out", "run"],
         ("bad.txt", "UTF-8"), [BINARY]),
    Case("prepare-latin1-corpus",
         ["prepare", "--corpus", "latin1.txt", "--tokenizer", "{tok}", "--out", "out"],
         ("latin1.txt", "UTF-8", "iconv"), [LATIN1]),
    # --- malformed JSON lines: the line number is part of <where>
    Case("tokenizer-jsonl-malformed-line", ["tokenizer", "--corpus", "bad.jsonl", "--out", "tok"],
         ("bad.jsonl:3", "JSON"), [BAD_JSONL]),
    Case("prepare-jsonl-malformed-line",
         ["prepare", "--corpus", "bad.jsonl", "--tokenizer", "{tok}", "--out", "out"],
         ("bad.jsonl:3", "JSON"), [BAD_JSONL]),
    Case("pretrain-jsonl-malformed-line",  # found while preparing inside the run: the run is removed
         [*PRETRAIN, "--corpus", "bad.jsonl", "--tokenizer", "{tok}", "--out", "run"],
         ("bad.jsonl:3", "JSON"), [BAD_JSONL]),
    # --- objective options
    Case("pretrain-bart-unknown-noise", [*BART_DATA, "--noise", "nosuchnoise", "--out", "run"],
         ("nosuchnoise", "noise", "text_infill", "sentence_permute")),
    # --- corrupt or truncated weights
    Case("pretrain-init-garbage-weights", [*BART_DATA, "--init", "{garbage_run}", "--out", "run"],
         ("model.safetensors", "corrupt")),
    Case("pretrain-init-truncated-weights-overwrite",
         [*BART_DATA, "--init", "{truncated_run}", "--out", "old", "--overwrite"],
         ("model.safetensors", "truncated"), [_existing_run("old")]),
    Case("finetune-init-truncated-weights",
         ["finetune", "--no-progress", "--task", "classify", "--train", "train.tsv", "--init", "{truncated_run}",
          "--out", "ft"], ("model.safetensors", "truncated"), [TRAIN_TSV]),
    Case("generate-garbage-weights", ["generate", "--run", "{garbage_run}", "--input", "in.txt"],
         ("model.safetensors", "corrupt"), [_file("in.txt", "The river\n")]),
    Case("export-truncated-weights", ["export", "--run", "{truncated_run}", "--out", "hf"],
         ("model.safetensors", "truncated")),
    # --- tokenizer / model vocabulary mismatch
    Case("pretrain-init-other-tokenizer-than-data", [*BART_DATA, "--init", "{other_tok_run}", "--out", "run"],
         ("other_tok_run", "tokenizer", "ptmkit prepare --tokenizer")),
    Case("pretrain-init-other-tokenizer-than-corpus",  # before the corpus is prepared
         ["pretrain", "--no-progress", "--objective", "bart", "--corpus", "{lee}", "--tokenizer", "{other_tok}",
          "--init", "{run}", "--out", "run"], ("other_tok", "--init", "--tokenizer")),
    Case("finetune-init-other-tokenizer",
         ["finetune", "--no-progress", "--task", "classify", "--train", "train.tsv", "--init", "{run}",
          "--tokenizer", "{other_tok}", "--out", "ft"], ("other_tok", "--tokenizer"), [TRAIN_TSV]),
    # --- fine-tuning searches
    Case("finetune-resume-a-head-search",
         ["finetune", "--no-progress", "--task", "classify", "--train", "train.tsv", "--init", "{run}",
          "--head-epochs", "0,5", "--resume", "--out", "ft"], ("--lr/--head-epochs", "--resume"), [TRAIN_TSV]),
    Case("finetune-negative-head-epochs",
         ["finetune", "--no-progress", "--task", "classify", "--train", "train.tsv", "--init", "{run}",
          "--head-epochs", "0,-2", "--out", "ft"], ("--head-epochs", "0 or more"), [TRAIN_TSV]),
    # --- export and generate
    Case("export-unknown-format", ["export", "--run", "{run}", "--format", "nosuch", "--out", "hf"],
         ("nosuch", "--format", "hf")),
    Case("generate-input-missing", ["generate", "--run", "{run}", "--input", "missing.txt"],
         ("missing.txt", "-")),
    # --- non-writable output location (checked before any work)
    Case("tokenizer-out-not-writable", ["tokenizer", "--corpus", "{lee}", "--out", "ro/tok"],
         ("ro/tok", "--out"), [_read_only_dir("ro")]),
    Case("prepare-out-not-writable", ["prepare", "--corpus", "{lee}", "--tokenizer", "{tok}", "--out", "ro/data"],
         ("ro/data", "--out"), [_read_only_dir("ro")]),
    Case("pretrain-out-not-writable", [*PRETRAIN_DATA, "--out", "ro/run"], ("ro/run", "--out"),
         [_read_only_dir("ro")]),
    Case("export-out-not-writable", ["export", "--run", "{run}", "--out", "ro/hf"], ("ro/hf", "--out"),
         [_read_only_dir("ro")]),
    Case("evaluate-out-not-writable", ["evaluate", "--run", "{run}", "--data", "train.tsv", "--out", "ro/m.json"],
         ("ro/m.json", "--out"), [TRAIN_TSV, _read_only_dir("ro")]),
    # --- a validation split that leaves nothing to train on
    Case("prepare-val-split-takes-every-document",
         ["prepare", "--corpus", "two.txt", "--tokenizer", "{tok}", "--out", "out", "--val-fraction", "0.9"],
         ("--val-fraction", "2 document"), [TWO_DOCS]),
    Case("pretrain-corpus-val-split-takes-every-document",
         [*PRETRAIN, "--corpus", "one.txt", "--tokenizer", "{tok}", "--config", "cfg.yaml", "--out", "run"],
         ("--val-fraction", "1 document"), [ONE_DOC, _file("cfg.yaml", "val_fraction: 0.9\n")]),
    Case("pretrain-config-bad-val-fraction", [*PRETRAIN_DATA, "--config", "cfg.yaml", "--out", "run"],
         ("cfg.yaml", "val_fraction"), [_file("cfg.yaml", "val_fraction: most\n")]),
    # --- conflicting flags
    Case("pretrain-recipe-and-objective",
         ["pretrain", "--recipe", "budget", "--objective", "mlm", "--data", "{data}", "--out", "run"],
         ("--objective", "--recipe")),
    Case("pretrain-recipe-data-and-corpus",
         ["pretrain", "--recipe", "budget", "--data", "{data}", "--corpus", "{lee}", "--out", "run"],
         ("--data", "--corpus")),
    Case("generate-beam-and-top-p", ["generate", "--run", "{run}", "--input", "in.txt", "--beam", "4",
                                     "--top-p", "0.9"], ("--beam", "--top-p"), [_file("in.txt", "The river\n")]),
    Case("demo-no-tokens", ["demo", "--out", "d", "--tokens", "0"], ("--tokens",)),
    Case("demo-no-workers", ["demo", "--out", "d", "--workers", "0"], ("--workers",)),
    Case("demo-out-is-a-file", ["demo", "--out", "afile"], ("afile", "--out"), [_file("afile", KEEP)]),
    Case("compare-out-is-a-file", ["compare", "--config", "cmp.yaml", "--out", "afile", "--dry-run"],
         ("afile", "--out"), [_file("afile", KEEP), _file("cmp.yaml", "corpus: [{lee}]\nobjectives: [mlm]\n"
                                                        "task: {{type: classify, train: t.csv}}\n")]),
    Case("finetune-out-under-a-file", ["finetune", "--task", "sst2", "--init", "scratch", "--out", "afile/run"],
         ("afile", "not under a file"), [_file("afile", KEEP)]),
    *(Case(f"generate-temperature-{value}", ["generate", "--run", "{run}", "--input", "in.txt",
                                               "--temperature", value], ("--temperature",),
           [_file("in.txt", "The river\n")]) for value in ("0", "nan")),
]


@pytest.fixture(scope="module")
def runs(lee: Path, prepared, tmp_path_factory: pytest.TempPathFactory) -> Runs:
    root = tmp_path_factory.mktemp("runs")
    run, other_tok = root / "run", root / "other_tok"
    assert main(["pretrain", "--no-progress", "--objective", "bart", "--data", str(prepared.data), "--steps", "2",
                 "--batch-size", "2", "--seq-len", "32", "--out", str(run)]) == 0
    assert main(["tokenizer", "--corpus", str(lee), "--kind", "wordpiece", "--vocab-size", "500",
                 "--out", str(other_tok)]) == 0
    runs = Runs(root, run, root / "garbage_run", root / "truncated_run", other_tok, root / "other_tok_run")
    for copy in (runs.garbage_run, runs.truncated_run, runs.other_tok_run):
        shutil.copytree(run, copy, ignore=shutil.ignore_patterns("checkpoint*"))
    weights = (run / "model.safetensors").read_bytes()
    (runs.garbage_run / "model.safetensors").write_bytes(b"\x89PNG garbage, not safetensors" * 10)
    (runs.truncated_run / "model.safetensors").write_bytes(weights[:len(weights) // 2])
    shutil.rmtree(runs.other_tok_run / "tokenizer")
    shutil.copytree(other_tok, runs.other_tok_run / "tokenizer")
    return runs


def _format(args: list[str], lee: Path, prepared, runs: Runs | None = None) -> list[str]:
    paths = {"lee": lee, "tok": prepared.tokenizer, "data": prepared.data}
    paths.update({name: getattr(runs, name) for name in RUN_PLACEHOLDERS} if runs else {})
    return [a.format(**paths) for a in args]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, lee, prepared, tmp_path, monkeypatch, request,
                                                            run_cli, user_error, unchanged):
    monkeypatch.chdir(tmp_path)
    for setup in case.setups:
        setup(tmp_path)
    # the runs are built (and watched) only for the cases that use them
    runs = request.getfixturevalue("runs") if case.placeholders() & RUN_PLACEHOLDERS else None
    watched = [tmp_path, prepared.root, *([runs.root] if runs else [])]
    with unchanged(*watched):
        code, _, err = run_cli(_format(case.args, lee, prepared, runs))
    user_error(code, err, *case.mentions)


def test_unknown_objective_lists_every_known_objective(prepared, tmp_path, run_cli, user_error):
    code, _, err = run_cli(["pretrain", "--objective", "nope", "--data", prepared.data, "--out", tmp_path / "r"])
    line = user_error(code, err)
    listed = line.rsplit(":", 1)[1]
    assert all(name in listed for name in OBJECTIVES), line


@pytest.mark.parametrize("args, command", [
    (["tokenizer", "--corpus", "x.txt"], "tokenizer"),                     # missing --out
    (["prepare", "--corpus", "x.txt", "--out", "d"], "prepare"),           # missing --tokenizer
    (["pretrain", "--objective", "mlm", "--data", "d"], "pretrain"),       # missing --out
    (["pretrain", "--out", "r", "--steps", "many"], "pretrain"),           # not an int
    (["tokenizer", "--corpus", "x.txt", "--out", "t", "--vocab-size", "1e3"], "tokenizer"),
    (["finetune", "--task", "sst2", "--init", "scratch", "--out", "f", "--lr", "1e-3,x"], "finetune"),
    (["finetune", "--task", "sst2", "--init", "scratch", "--out", "f", "--head-epochs", ","], "finetune"),
])
def test_usage_errors_are_one_argparse_line(args, command, tmp_path, monkeypatch, run_cli, unchanged):
    monkeypatch.chdir(tmp_path)
    with unchanged(tmp_path):
        code, _, err = run_cli(args)
    assert code == 2
    [line] = err.strip().splitlines()  # no usage block before it
    assert line.startswith(f"ptmkit {command}: error: ") and f"`ptmkit {command} --help`" in line, err


def test_unknown_command_is_a_usage_error(run_cli):
    code, _, err = run_cli(["pretrian"])
    [line] = err.strip().splitlines()
    assert code == 2 and line.startswith("ptmkit: error:") and "'pretrain'" in line


# --- the real entry point: exit status and stderr of `python -m ptmkit` --------------------------

@pytest.mark.parametrize("args, mentions", [
    (["pretrain", "--objective", "no_such_objective", "--data", "{data}", "--out", "run"],
     ("no_such_objective", "mlm", "clm")),
    (["tokenizer", "--corpus", "missing.txt", "--out", "tok"], ("missing.txt",)),
], ids=["unknown-objective", "missing-corpus"])
def test_console_entry_point_exit_code_and_single_line(args, mentions, lee, prepared, tmp_path,
                                                       cli_subprocess, user_error, unchanged):
    with unchanged(tmp_path, prepared.root):
        code, out, err = cli_subprocess(_format(args, lee, prepared), cwd=tmp_path)
    user_error(code, err, *mentions)
    assert out == ""


def test_top_level_help_shows_commands_and_an_example(tmp_path, cli_subprocess):
    code, out, err = cli_subprocess(["--help"], cwd=tmp_path)
    assert code == 0, err
    for command in ("tokenizer", "prepare", "pretrain", "demo"):
        assert command in out
    assert "example" in out.lower() and "ptmkit pretrain --objective" in out


@pytest.mark.parametrize("command", ["tokenizer", "prepare", "pretrain", "demo"])
def test_subcommand_help_shows_an_example(command, run_cli):
    code, out, _ = run_cli([command, "--help"])
    assert code == 0
    assert "example" in out.lower()
    assert f"ptmkit {command} " in out.split("example", 1)[1]


@pytest.mark.parametrize("kind", ["UserError", "RunStopped"])
def test_a_user_error_keeps_its_parts_across_processes(kind) -> None:
    import pickle

    import ptmkit.errors as errors
    err = getattr(errors, kind)("loss is NaN", "runs/x/metrics.jsonl", "lower --lr")
    back = pickle.loads(pickle.dumps(err))  # how a compare worker's error reaches the main process
    assert type(back) is type(err) and (back.what, back.where, back.fix) == (err.what, err.where, err.fix)
    assert str(back) == "loss is NaN (runs/x/metrics.jsonl): lower --lr"
