"""The acceptance flow of the issue, end to end through the CLI:

    ptmkit tokenizer --corpus $C --kind bpe --vocab-size 2000 --out T
    ptmkit prepare   --corpus $C --tokenizer T --out D --seq-len 64
    ptmkit pretrain  --objective {mlm,clm} --data D --model tiny --steps 80 --batch-size 16 \\
                     --seq-len 64 --lr 2e-3 --out R --no-progress

(the first two run once, in the session fixture `prepared`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from ptmkit.data.tokenizer import Tokenizer

RUN_FILES = ("config.yaml", "model.safetensors", "metrics.jsonl", "tokenizer/tokenizer.json")


def _loss_lines(run: Path) -> list[dict]:
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [line for line in lines if "loss" in line]


def test_tokenizer_and_prepare_outputs(prepared):
    tokenizer = Tokenizer.load(prepared.tokenizer)
    assert tokenizer.kind == "bpe" and tokenizer.vocab_size == 2000
    manifest = json.loads((prepared.data / "manifest.json").read_text())
    assert manifest["seq_len"] == 64 and manifest["vocab_size"] == 2000
    assert manifest["splits"]["train"]["tokens"] > 50_000
    assert (prepared.data / "tokenizer" / "tokenizer.json").is_file()


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["mlm", "clm"])
def test_pretrain_from_prepared_data_learns(objective, prepared, tmp_path, run_cli):
    run = tmp_path / f"run-{objective}"
    code, out, err = run_cli(["pretrain", "--objective", objective, "--data", prepared.data,
                              "--model", "tiny", "--steps", "80", "--batch-size", "16",
                              "--seq-len", "64", "--lr", "2e-3", "--out", run, "--no-progress"])
    assert code == 0, err
    assert "Traceback" not in err and "pre-trained 80 steps" in out
    for name in RUN_FILES:
        assert (run / name).is_file(), name

    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["objective"] == objective
    assert config["model"]["n_layers"] == 2 and config["model"]["hidden"] == 128
    assert config["model"]["vocab_size"] == 2000
    train = config["train"]
    assert (train["steps"], train["batch_size"], train["seq_len"], train["lr"]) == (80, 16, 64, 2e-3)
    assert Path(config["data"]) == prepared.data.resolve()
    assert config["versions"]["ptmkit"]
    assert Tokenizer.load(run / "tokenizer").sha256() == Tokenizer.load(prepared.tokenizer).sha256()

    lines = _loss_lines(run)
    assert len(lines) >= 10 and lines[-1]["step"] == 80
    first = sum(line["loss"] for line in lines[:5]) / 5
    last = sum(line["loss"] for line in lines[-5:]) / 5
    assert last <= 0.95 * first, f"{objective}: loss {first:.3f} -> {last:.3f} (needs a 5% drop)"


@pytest.mark.slow
def test_pretrain_from_raw_corpus_trains_its_own_tokenizer(lee, tmp_path, run_cli):
    run = tmp_path / "run"
    code, out, err = run_cli(["pretrain", "--objective", "clm", "--corpus", lee, "--steps", "5",
                              "--batch-size", "4", "--seq-len", "32", "--out", run, "--no-progress"])
    assert code == 0, err
    for name in RUN_FILES:
        assert (run / name).is_file(), name
    tokenizer = Tokenizer.load(run / "tokenizer")
    assert tokenizer.kind == "bpe" and tokenizer.vocab_size == 8000  # the documented default
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["objective"] == "clm" and config["train"]["steps"] == 5
    assert config["model"]["vocab_size"] == 8000
    assert (run / "data" / "manifest.json").is_file()  # prepared inside the run
    assert _loss_lines(run)[-1]["step"] == 5


@pytest.mark.slow
def test_config_file_values_and_flags(prepared, tmp_path, run_cli):
    """`--config` sets options (YAML's `2e-3` string is read as a number); flags win over it."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("objective: mlm\nsteps: 3\nbatch_size: 4\nseq_len: 32\nlr: 2e-3\nwarmup: 1\n")
    run = tmp_path / "run"
    code, _, err = run_cli(["pretrain", "--config", cfg, "--data", prepared.data, "--steps", "4",
                            "--out", run, "--no-progress"])
    assert code == 0, err
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["objective"] == "mlm"
    assert config["train"]["lr"] == 2e-3 and config["train"]["batch_size"] == 4
    assert config["train"]["steps"] == 4


def test_max_minutes_alone_trains_until_the_time_is_up(prepared, tmp_path, run_cli):
    """No step count with --max-minutes: the clock ends the run, not a default number of steps."""
    run = tmp_path / "run"
    code, _, err = run_cli(["pretrain", "--objective", "mlm", "--data", prepared.data, "--batch-size", "4",
                            "--seq-len", "32", "--max-minutes", "0.03", "--out", run, "--no-progress"])
    assert code == 0, err
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped_by"] == "time" and summary["train_seconds"] >= 1.8


@pytest.mark.slow
def test_resume_and_overwrite_of_a_finished_run(prepared, tmp_path, run_cli, user_error, unchanged):
    run = tmp_path / "run"
    base = ["--data", prepared.data, "--steps", "3", "--batch-size", "4", "--seq-len", "32",
            "--out", run, "--no-progress"]
    assert run_cli(["pretrain", "--objective", "clm", *base])[0] == 0
    with unchanged(run):  # a second call without --resume/--overwrite refuses
        code, _, err = run_cli(["pretrain", "--objective", "clm", *base])
    user_error(code, err, str(run), "--overwrite")
    code, out, err = run_cli(["pretrain", "--out", run, "--resume", "--no-progress", "--steps", "5"])
    assert code == 0, err
    assert _loss_lines(run)[-1]["step"] == 5
    code, _, err = run_cli(["pretrain", "--objective", "mlm", *base, "--overwrite"])
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["objective"] == "mlm"
    assert _loss_lines(run)[-1]["step"] == 3


@pytest.mark.slow
def test_resume_with_part_of_the_original_command_keeps_the_runs_settings(prepared, tmp_path, run_cli):
    """Naming the objective again with --resume must not drop the run's batch size, length and
    data for the defaults (a resumed run must be the run that was started)."""
    run = tmp_path / "run"
    assert run_cli(["pretrain", "--objective", "clm", "--data", prepared.data, "--steps", "3", "--batch-size", "4",
                    "--seq-len", "32", "--out", run, "--no-progress"])[0] == 0
    code, _, err = run_cli(["pretrain", "--objective", "clm", "--out", run, "--resume", "--steps", "5",
                            "--no-progress"])
    assert code == 0, err
    train = yaml.safe_load((run / "config.yaml").read_text())["train"]
    assert (train["batch_size"], train["seq_len"], train["steps"]) == (4, 32, 5)
    assert [line["step"] for line in _loss_lines(run)][-1] == 5


def test_a_corpus_run_resumes_with_its_command_repeated(lee, tmp_path, run_cli):
    """The natural retry, the same command plus --resume, used to fail as "both --data and
    --corpus": the run's saved data (prepared from that corpus) joined the corpus given again."""
    corpus, run = tmp_path / "c.txt", tmp_path / "run"
    corpus.write_text(lee.read_text(encoding="utf-8", errors="replace")[:20_000])
    base = ["pretrain", "--objective", "mlm", "--corpus", corpus, "--model", "tiny", "--seq-len", "32",
            "--batch-size", "4", "--workers", "0", "--out", run, "--no-progress"]
    assert run_cli([*base, "--steps", "2"])[0] == 0
    code, _, err = run_cli([*base, "--steps", "4", "--resume"])
    assert code == 0, err
    assert [line["step"] for line in _loss_lines(run)][-1] == 4


def test_every_long_command_can_run_without_progress_bars(lee, tmp_path, run_cli):
    for command in ("tokenizer", "prepare", "pretrain", "finetune", "compare", "demo"):
        code, out, _ = run_cli([command, "--help"])
        assert code == 0 and "--no-progress" in out, command
    tok, data = tmp_path / "tok", tmp_path / "data"
    assert run_cli(["tokenizer", "--corpus", lee, "--kind", "wordpiece", "--vocab-size", "500", "--out", tok,
                    "--no-progress"])[0] == 0
    code, out, err = run_cli(["prepare", "--corpus", lee, "--tokenizer", tok, "--out", data, "--no-progress"])
    assert code == 0 and "prepared" in out and err == ""


def test_a_config_corpus_may_be_one_path(lee, tmp_path, run_cli):
    """`corpus: one.txt` in a --config file is that file, not a list of its letters."""
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(f"objective: clm\ncorpus: {lee}\nsteps: 2\nbatch_size: 2\nseq_len: 32\nval_fraction: 0\n")
    code, _, err = run_cli(["pretrain", "--config", cfg, "--out", tmp_path / "run", "--no-progress"])
    assert code == 0, err


def test_pretrain_trains_on_the_window_prepare_was_given(prepared, tmp_path, run_cli):
    """`prepare --seq-len 64` then `pretrain --data D` without --seq-len: windows of 64, not 128."""
    run = tmp_path / "run"
    code, _, err = run_cli(["pretrain", "--objective", "clm", "--data", prepared.data, "--steps", "1",
                            "--batch-size", "2", "--model", "tiny", "--out", run, "--no-progress"])
    assert code == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["seq_len"] == 64
    code, _, err = run_cli(["pretrain", "--objective", "clm", "--data", prepared.data, "--steps", "1",
                            "--batch-size", "2", "--seq-len", "32", "--out", tmp_path / "own", "--no-progress"])
    assert code == 0 and yaml.safe_load((tmp_path / "own" / "config.yaml").read_text())["train"]["seq_len"] == 32


def test_a_negative_seed_is_a_one_line_error_before_the_run_directory(prepared, tmp_path, run_cli, user_error):
    code, _, err = run_cli(["pretrain", "--objective", "clm", "--data", prepared.data, "--seed", "-1",
                            "--out", tmp_path / "run", "--no-progress"])
    user_error(code, err, "--seed")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("command", "hint"), [
    ("compare", "run the same command again"), ("finetune", "pass --resume"), ("pretrain", "checkpoint saved")])
def test_an_interrupted_command_says_how_to_continue(command, hint, tmp_path, run_cli, monkeypatch):
    """compare has no --resume (running it again continues), though the pre-training it was in
    said "continue with --resume"; finetune said nothing of its checkpoint."""
    import ptmkit.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt("stopped at step 7, checkpoint saved, continue with --resume")

    monkeypatch.setattr(cli, {"compare": "_run_compare", "finetune": "_run_finetune",
                              "pretrain": "_run_pretrain"}[command], interrupted)
    required = {"compare": ["--config", "c.yaml"], "finetune": ["--task", "classify", "--init", "scratch"],
                "pretrain": []}[command]
    code, _, err = run_cli([command, *required, "--out", tmp_path / "out"])
    assert code == 130 and err.startswith("ptmkit: interrupted: ") and hint in err
    assert (command == "pretrain") == ("continue with --resume" in err)


def test_finetune_warns_when_the_model_answers_one_class(tmp_path, run_cli, monkeypatch):
    import ptmkit.finetuning.search as search
    one_class = {"accuracy": 0.51, "top_class_share": 1.0, "main_metric": "accuracy"}
    monkeypatch.setattr(search, "finetune_search", lambda spec, rates, heads: one_class)
    code, out, err = run_cli(["finetune", "--task", "classify", "--init", "scratch", "--out", tmp_path / "ft"])
    assert code == 0 and json.loads(out) == one_class
    assert "warning: the model answers one class for every dev example, so its accuracy" in err
    monkeypatch.setattr(search, "finetune_search", lambda spec, rates, heads: {**one_class, "top_class_share": 0.6})
    assert "warning" not in run_cli(["finetune", "--task", "classify", "--init", "scratch",
                                     "--out", tmp_path / "ft2"])[2]
