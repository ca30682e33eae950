"""The error contract (architecture.md §7): bad input exits 2 with one line
`ptmkit: error: <what> (<where>): <fix>` on stderr, no traceback, and nothing written or overwritten."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

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


@dataclass
class Case:
    id: str
    args: list[str]
    mentions: tuple[str, ...]
    setups: list[Callable[[Path], None]] = field(default_factory=list)


PRETRAIN = ["pretrain", "--no-progress", "--objective", "mlm"]
PRETRAIN_DATA = [*PRETRAIN, "--data", "{data}", "--steps", "2", "--batch-size", "2", "--seq-len", "32"]
JSONL = _file("docs.jsonl", "".join(json.dumps({"body": f"Sentence number {i} is here."}) + "\n"
                                    for i in range(50)))
CSV = _file("docs.csv", "id,body\n" + "".join(f"{i},Sentence number {i} is here.\n" for i in range(50)))
EMPTY_DIR = [_dir("corpus_dir"), _file("corpus_dir/.hidden", "hidden text is skipped\n"),
             _file("corpus_dir/archive.zip", b"PK\x03\x04")]

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
]


def _format(args: list[str], lee: Path, prepared) -> list[str]:
    return [a.format(lee=lee, tok=prepared.tokenizer, data=prepared.data) for a in args]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(case, lee, prepared, tmp_path, monkeypatch,
                                                            run_cli, user_error, unchanged):
    monkeypatch.chdir(tmp_path)
    for setup in case.setups:
        setup(tmp_path)
    with unchanged(tmp_path, prepared.root):
        code, _, err = run_cli(_format(case.args, lee, prepared))
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
])
def test_usage_errors_are_argparse_lines(args, command, tmp_path, monkeypatch, run_cli, unchanged):
    monkeypatch.chdir(tmp_path)
    with unchanged(tmp_path):
        code, _, err = run_cli(args)
    assert code == 2
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(f"ptmkit {command}: error: "), err


def test_unknown_command_is_a_usage_error(run_cli):
    code, _, err = run_cli(["pretrian"])
    assert code == 2 and "ptmkit: error:" in err and "Traceback" not in err


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
