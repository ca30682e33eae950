"""Recipes: validation, staged pre-training in one wall-clock budget, and fine-tuning settings."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml
from safetensors.numpy import load_file

from ptmkit.cli import main
from ptmkit.errors import UserError
from ptmkit.recipes import available, load_recipe, parse_recipe
from ptmkit.recipes.pretrain import RecipeRun, pretrain_recipe
from ptmkit.recipes import pretrain as recipe_pretrain

TWO_STAGES = {
    "name": "two-stage", "model": {"size": "tiny", "hidden": 64}, "minutes": 0.25,
    "tokenizer": {"kind": "wordpiece", "vocab_size": 600},
    "stages": [{"objective": "word2vec", "objective_options": {"unit": "tokens", "vector_size": 64, "epochs": 2}},
               {"objective": "mlm", "train": {"batch_size": 8, "seq_len": 32, "lr": 1e-3, "warmup": 5}}],
    "finetune": {"epochs": 2, "lr": [1e-3, 3e-3], "select_fraction": 0.2, "pooling": "mean", "layer_decay": 0.9},
}


@pytest.fixture(scope="module")
def lee() -> Path:
    import gensim
    return Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"


def test_shipped_recipes_parse() -> None:
    assert "budget" in available()
    for name in available():
        recipe = load_recipe(name)
        assert recipe.stages and recipe.minutes > 0 and recipe.name == name


def test_a_recipe_without_tokenizer_or_model_takes_the_defaults() -> None:
    values = {k: v for k, v in TWO_STAGES.items() if k not in ("tokenizer", "model")}
    recipe = parse_recipe(values, "r.yaml")
    assert recipe.tokenizer == {"kind": "wordpiece", "vocab_size": 8192} and recipe.model == "mini"


@pytest.mark.parametrize("change, match", [
    ({"stages": []}, "needs stages"),
    ({"minutes": 0}, "minutes must be a positive number"),
    ({"stages": [{"objective": "mlmm"}]}, "unknown objective 'mlmm'"),
    ({"stages": [{"objective": "mlm", "steps": 3}]}, r"unknown key\(s\) steps \(r.yaml: stages\[0\]\)"),
    ({"finetune": {"lrr": 1}}, r"unknown key\(s\) lrr \(r.yaml: finetune\)"),
    ({"budget": 3}, "unknown key"),
    ({"stages": [{"objective": ["mlm"]}]}, r"unknown objective \['mlm'\]"),
    ({"stages": [{"objective": "mlm", "train": {"steps": 5}}, {"objective": "mlm", "train": {"bogus": 1}}]},
     r"bogus \(r.yaml: stages\[1\].train\)"),  # found before stage 0 trains
    ({"stages": [{"objective": "mlm", "train": {"steps": 5}}, {"objective": "mlm", "train": {"batch_size": 0}}]},
     r"r.yaml: stages\[1\].train.batch_size"),
    ({"stages": [{"objective": "mlm"}, {"objective": "clm"}]},
     r"mlm comes before the last one but has no length \(r.yaml: stages\[0\].train\)"),
    ({"stages": [{"objective": "word2vec"}, {"objective": "mlm"}]}, r"stages\[0\].train"),
    ({"stages": [{"objective": "mlm", "objective_options": {"mask_probb": 0.2}}]},
     r"mask_probb.*r.yaml: stages\[0\].objective_options"),
    # text where a number belongs fails when the recipe is read, not inside stage 1 after stage 0 trained
    ({"stages": [{"objective": "mlm", "train": {"steps": 5}}, {"objective": "mlm", "objective_options": {"mask_prob": "x"}}]},
     r"mask_prob must be a number, not 'x' \(r.yaml: stages\[1\].objective_options.mask_prob\)"),
    ({"stages": [{"objective": "mlm", "train": {"steps": 5}}, {"objective": "word2vec", "objective_options": {"window": "x"}}]},
     r"window must be a number, not 'x' \(r.yaml: stages\[1\].objective_options.window\)"),
    ({"stages": [{"objective": "mlm", "train": {"steps": 5}}, {"objective": "clm", "train": {"max_minutes": 2}}]},
     r"the last stage sets its own max_minutes \(r.yaml: stages\[1\].train.max_minutes\): drop it"),
    ({"stages": [{"objective": "mlm", "corpus": "domian"}]}, r"unknown corpus 'domian' \(r.yaml: stages\[0\].corpus\)"),
    # fine-tuning values are checked when the recipe is read, not by the first cell that uses them
    ({"finetune": {"lr": "1e-4,5e-4"}}, r"not a positive learning rate: '1e-4,5e-4' \(r.yaml: finetune.lr\)"),
    ({"finetune": {"head_epochs": "0,5"}}, r"not a whole number >= 0: '0,5' \(r.yaml: finetune.head_epochs\)"),
    ({"finetune": {"precision": "fp16"}}, r"unknown value 'fp16' \(r.yaml: finetune.precision\)"),
    ({"finetune": {"scratch_lr": 1e-3}}, r"unknown key\(s\) scratch_lr \(r.yaml: finetune\)"),
    ({"tokenizer": "some/tok"}, r"must be a mapping \(r.yaml: tokenizer\)"),
    ({"tokenizer": {"kind": "bpee"}}, r"unknown value 'bpee' \(r.yaml: tokenizer.kind\)"),
    ({"name": "a/b"}, r"recipe name 'a/b' is not a plain name \(r.yaml: name\)"),
])
def test_bad_recipes_name_the_key(change: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        parse_recipe({**TWO_STAGES, **change}, "r.yaml")
    with pytest.raises(UserError, match="unknown recipe 'nope'.*budget"):
        load_recipe("nope")


@pytest.fixture(scope="module")
def recipe_run(lee: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("recipe") / "run"
    summary = pretrain_recipe(RecipeRun(recipe=parse_recipe(TWO_STAGES, "r.yaml"), out=out, corpus=[str(lee)],
                                        progress=False))
    return out, summary


def test_stages_run_in_order_within_one_budget(recipe_run) -> None:
    out, summary = recipe_run
    assert [s["objective"] for s in summary["stages"]] == ["word2vec", "mlm"]
    assert summary["stages"][0]["steps"] == 2 and summary["stages"][1]["stopped_by"] == "time"
    assert summary["train_seconds"] == pytest.approx(sum(s["wall_seconds"] for s in summary["stages"]), abs=0.05)
    assert summary["budget_seconds"] == 15.0
    # each stage's loss: word2vec's epoch loss, the transformer's validation loss (was null)
    assert all(isinstance(s["final_loss"], float) for s in summary["stages"]) and summary["final_loss"] > 0
    mlm = yaml.safe_load((out / "stages" / "1-mlm" / "config.yaml").read_text())
    assert mlm["init"] == str(out / "stages" / "0-word2vec")  # each stage starts from the last
    reserve = 0.15 * 15  # of a budget under 133 s
    # the last stage gets what the first one left, less the reserve for its final evaluation and save
    assert mlm["train"]["max_minutes"] == pytest.approx((15 - summary["stages"][0]["wall_seconds"] - reserve) / 60)
    top = yaml.safe_load((out / "config.yaml").read_text())
    assert top["objective"] == "mlm" and top["recipe"] == "two-stage"
    assert (out / "model.safetensors").read_bytes() == (out / "stages" / "1-mlm" / "model.safetensors").read_bytes()
    assert yaml.safe_load((out / "recipe.yaml").read_text())["stages"][0]["objective"] == "word2vec"


def test_a_malformed_recipe_file_is_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstages: [\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_recipe(str(bad))


@pytest.mark.parametrize("before", ["nothing", "an empty directory", "an old run"])
def test_a_recipe_that_fails_on_its_data_leaves_no_run(before: str, lee: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    if before != "nothing":
        run.mkdir()
    if before == "an old run":
        (run / "model.safetensors").write_bytes(b"keep")
    tiny_vocab = {**TWO_STAGES, "tokenizer": {"kind": "wordpiece", "vocab_size": 200}}
    with pytest.raises(UserError, match="vocab"):
        pretrain_recipe(RecipeRun(recipe=parse_recipe(tiny_vocab, "r.yaml"), out=run, corpus=[str(lee)],
                                  overwrite=before == "an old run", progress=False))
    # a corrected retry needs no --overwrite, and --overwrite removes nothing before the input is known good
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == \
        {"nothing": [], "an empty directory": ["run"], "an old run": ["run", "run/model.safetensors"]}[before]


@pytest.mark.parametrize("existing", [False, True])
def test_a_first_stage_that_cannot_start_leaves_no_run(existing: bool, recipe_run, tmp_path: Path) -> None:
    out, _ = recipe_run
    run = tmp_path / "run"
    if existing:
        run.mkdir()
    short = {**TWO_STAGES, "model": {"size": "tiny", "hidden": 32, "max_positions": 16},
             "stages": [{"objective": "mlm", "train": {"batch_size": 8, "seq_len": 32}}]}
    with pytest.raises(UserError, match="max_positions=16"):
        pretrain_recipe(RecipeRun(recipe=parse_recipe(short, "r.yaml"), out=run, data=out / "data", progress=False))
    assert list(run.iterdir()) == [] if existing else not run.exists()  # no recipe.yaml for --resume to pick up


def test_resume_keeps_the_budget_seed_and_data_it_started_with(recipe_run, tmp_path: Path) -> None:
    out, summary = recipe_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, symlinks=True)
    saved = json.loads((copy / "recipe_run.json").read_text())
    assert saved == {"minutes": 0.25, "seed": 0, "data": None, "domain_data": None, "train": {}}
    (copy / "recipe_run.json").write_text(json.dumps({**saved, "minutes": 0.5, "seed": 3}))
    again = pretrain_recipe(RecipeRun(recipe=parse_recipe(TWO_STAGES, "r.yaml"), out=copy, resume=True,
                                      progress=False))
    assert again["budget_seconds"] == 30.0  # not the recipe's 15 s: what the run was started with


def test_a_long_earlier_stage_leaves_the_last_one_time(recipe_run, tmp_path: Path) -> None:
    out, _ = recipe_run
    greedy = {**TWO_STAGES, "stages": [{"objective": "mlm", "train": {"steps": 100_000, "batch_size": 8,
                                                                       "seq_len": 32, "warmup": 5}},
                                        TWO_STAGES["stages"][1]]}
    summary = pretrain_recipe(RecipeRun(recipe=parse_recipe(greedy, "r.yaml"), out=tmp_path / "run",
                                        data=out / "data", progress=False))
    first, last = summary["stages"]
    assert first["stopped_by"] == "time" and last["steps"] >= 1  # the budget did not run out before it


def test_a_resumed_stage_counts_the_time_it_trained_before(tmp_path: Path) -> None:
    from ptmkit.recipes.pretrain import _trained_before
    assert _trained_before(tmp_path / "stage") == 0.0  # never checkpointed
    step = tmp_path / "stage" / "checkpoints" / "step-000004"
    step.mkdir(parents=True)
    (step / "state.json").write_text(json.dumps({"trainer": {"step": 4, "elapsed_s": 12.5}}))
    assert _trained_before(tmp_path / "stage") == 12.5


def test_resume_repeats_no_finished_stage(recipe_run, tmp_path: Path) -> None:
    out, summary = recipe_run
    before = (out / "stages" / "0-word2vec" / "model.safetensors").stat().st_mtime_ns
    again = pretrain_recipe(RecipeRun(recipe=parse_recipe(TWO_STAGES, "r.yaml"), out=out, resume=True,
                                      progress=False))  # the data is already prepared in the run
    assert again["stages"] == summary["stages"]
    assert (out / "stages" / "0-word2vec" / "model.safetensors").stat().st_mtime_ns == before


def test_cli_recipe_finetune_searches_rates_on_held_out_data(recipe_run, tmp_path: Path, capsys) -> None:
    out, _ = recipe_run
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump(TWO_STAGES))
    lines = ["sentence\tlabel"] + [f"{w} river bank {i}\t{int(w == 'great')}" for i in range(40)
                                   for w in ("great", "awful")]
    (tmp_path / "train.tsv").write_text("\n".join(lines) + "\n")
    (tmp_path / "dev.tsv").write_text("\n".join(lines[:21]) + "\n")
    code = main(["finetune", "--task", "classify", "--init", str(out), "--recipe", str(recipe_file),
                 "--train", str(tmp_path / "train.tsv"), "--dev", str(tmp_path / "dev.tsv"),
                 "--text-fields", "sentence", "--out", str(tmp_path / "ft"), "--no-progress", "--max-length", "16"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["selected_by"] == "select_accuracy" and [s["lr"] for s in result["search"]] == [1e-3, 3e-3]
    best = max(result["search"], key=lambda s: s["select_accuracy"])
    assert result["lr"] == best["lr"] and result["select_examples"] == 16  # 20% of 80
    config = yaml.safe_load((tmp_path / "ft" / "config.yaml").read_text())
    assert config["finetune"]["lr"] == best["lr"] and config["finetune"]["epochs"] == 2
    assert config["task"]["pooling"] == "mean" and config["finetune"]["layer_decay"] == 0.9
    assert config["finetune"]["max_length"] == 16  # a flag given beats the recipe
    code = main(["finetune", "--task", "classify", "--init", "scratch", "--tokenizer", str(out / "tokenizer"),
                 "--recipe", str(recipe_file), "--lr", "1e-3", "--train", str(tmp_path / "train.tsv"),
                 "--text-fields", "sentence", "--out", str(tmp_path / "scratch"), "--no-progress"])
    assert code == 0
    model = yaml.safe_load((tmp_path / "scratch" / "config.yaml").read_text())["model"]
    assert model["hidden"] == 64  # a scratch model takes the recipe's architecture


def test_cli_recipe_conflicts(recipe_run, tmp_path: Path, capsys) -> None:
    code = main(["pretrain", "--recipe", "budget", "--objective", "mlm", "--corpus", "x", "--out", str(tmp_path / "o")])
    assert code == 2 and "--objective conflicts with --recipe" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    out, _ = recipe_run  # refused before anything is read or written
    code = main(["pretrain", "--resume", "--objective", "mlm", "--out", str(out)])
    assert code == 2 and "--objective conflicts with --resume of a recipe run" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--steps", "5"), ("--batch-size", "4"), ("--seq-len", "32"), ("--lr", "1e-3"),
                                         ("--warmup", "0"), ("--schedule", "cosine"), ("--grad-accum", "2")])
def test_cli_recipe_refuses_flags_that_set_what_the_stages_train(flag: str, value: str, tmp_path: Path,
                                                                 capsys) -> None:
    code = main(["pretrain", "--recipe", "budget", flag, value, "--corpus", str(tmp_path / "missing.txt"),
                 "--out", str(tmp_path / "o")])  # --warmup 0: a flag given counts even when it is falsy
    err = capsys.readouterr().err
    assert code == 2 and f"{flag} conflicts with --recipe ({flag}): a recipe sets each stage's length" in err
    assert not (tmp_path / "o").exists()


@pytest.fixture
def fake_stages(monkeypatch: pytest.MonkeyPatch) -> list:
    """Stages that train nothing but use up all of the clock they are given, on a fake clock: the
    budget split, and what each stage is given, without waiting for real training. Returns their specs."""
    now, specs = [0.0], []

    def pretrain(spec) -> dict:
        specs.append(spec)
        now[0] += spec.train.max_minutes * 60
        spec.out.mkdir(parents=True, exist_ok=True)
        (spec.out / "config.yaml").write_text(f"objective: {spec.objective}\n")
        summary = {"steps": 1, "tokens": 1, "tokens_per_s": 1.0, "final_loss": 1.0, "stopped_by": "time"}
        (spec.out / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(recipe_pretrain, "pretrain", pretrain)
    monkeypatch.setattr(recipe_pretrain, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    return specs


def test_every_later_stage_keeps_a_share_of_the_budget(recipe_run, fake_stages: list, tmp_path: Path) -> None:
    out, _ = recipe_run
    three = {**TWO_STAGES, "minutes": 1, "stages": [{"objective": "mlm", "train": {"steps": 100_000}},
                                                    {"objective": "mlm", "train": {"steps": 5}}, {"objective": "mlm"}]}
    run = RecipeRun(recipe=parse_recipe(three, "r.yaml"), out=tmp_path / "run", data=out / "data", progress=False)
    summary = pretrain_recipe(run)
    # 60 s: stage 0 leaves 6 s to each later stage and the last one's 9 s reserve; stage 1 the last one's
    assert [spec.train.max_minutes for spec in fake_stages] == pytest.approx([39 / 60, 6 / 60, 6 / 60])
    assert summary["train_seconds"] == pytest.approx(51)
    pretrain_recipe(dataclasses.replace(run, resume=True))  # the --data it started with, given again, is fine


def test_a_budget_too_small_for_its_stages_fails_before_any_work(recipe_run, fake_stages: list,
                                                                 tmp_path: Path) -> None:
    out, _ = recipe_run
    many = {**TWO_STAGES, "stages": [{"objective": "mlm", "train": {"steps": 1}}] * 9 + [{"objective": "mlm"}]}
    with pytest.raises(UserError, match=r"0.25-minute budget leaves stage 0 \(mlm\) no time \(r.yaml\)"):
        pretrain_recipe(RecipeRun(recipe=parse_recipe(many, "r.yaml"), out=tmp_path / "run", data=out / "data",
                                  progress=False))
    assert fake_stages == [] and not (tmp_path / "run").exists()


def test_cli_recipe_passes_how_to_run_flags_to_every_stage(recipe_run, fake_stages: list, tmp_path: Path) -> None:
    out, _ = recipe_run
    recipe, run = tmp_path / "r.yaml", tmp_path / "run"
    recipe.write_text(yaml.safe_dump(TWO_STAGES))
    code = main(["pretrain", "--recipe", str(recipe), "--data", str(out / "data"), "--out", str(run), "--no-progress",
                 "--workers", "0", "--eval-every", "3", "--save-every", "7", "--keep-checkpoints", "1",
                 "--log-every", "2", "--precision", "fp32", "--compile"])
    assert code == 0

    def given(spec) -> tuple:
        return (spec.train.workers, spec.train.eval_every, spec.train.save_every, spec.train.keep_checkpoints,
                spec.train.log_every, spec.train.compile)
    assert [given(spec) for spec in fake_stages] == [(0, 3, 7, 1, 2, True)] * 2
    (run / "stages" / "1-mlm" / "summary.json").unlink()  # as if interrupted in the last stage
    assert main(["pretrain", "--out", str(run), "--resume", "--no-progress", "--eval-every", "4"]) == 0
    assert given(fake_stages[-1]) == (0, 4, 7, 1, 2, True)  # kept by --resume, unless given again


def test_cli_resume_refuses_other_text_or_another_recipe(recipe_run, tmp_path: Path, capsys) -> None:
    out, _ = recipe_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, symlinks=True)
    other, same = tmp_path / "other.yaml", tmp_path / "same.yaml"
    other.write_text(yaml.safe_dump({**TWO_STAGES, "minutes": 1}))
    same.write_text(yaml.safe_dump(TWO_STAGES))
    for flag, value in (("--corpus", str(tmp_path / "missing.txt")), ("--data", str(out / "data")),
                        ("--tokenizer", str(out / "tokenizer")), ("--recipe", str(other))):
        code = main(["pretrain", "--resume", flag, value, "--out", str(copy), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"ptmkit: error: {flag} ") and f"drop {flag}" in err, err
    assert main(["pretrain", "--resume", "--recipe", str(same), "--out", str(copy), "--no-progress"]) == 0
    assert main(["pretrain", "--resume", "--out", str(copy), "--no-progress"]) == 0


@pytest.mark.parametrize("name, text", [("recipe.yaml", "stages: [\n"), ("recipe_run.json", "{"),
                                        ("stages/0-word2vec/summary.json", "[]")])
def test_cli_resume_of_a_damaged_run_names_the_file(name: str, text: str, recipe_run, tmp_path: Path,
                                                    capsys) -> None:
    out, _ = recipe_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy, symlinks=True)
    (copy / name).write_text(text)
    code = main(["pretrain", "--resume", "--out", str(copy), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and str(copy / name) in err and "Traceback" not in err


@pytest.mark.parametrize("minutes", ["0", "-1"])
def test_cli_recipe_refuses_a_budget_of_no_time(minutes: str, recipe_run, tmp_path: Path, capsys) -> None:
    out, _ = recipe_run
    code = main(["pretrain", "--recipe", "budget", "--data", str(out / "data"), f"--max-minutes={minutes}",
                 "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "positive number of minutes" in err and "(--max-minutes)" in err
    assert not (tmp_path / "o").exists()


def test_numbers_yaml_reads_as_text_are_numbers(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"  # YAML 1.1 reads 1e-3 (no dot) as a string
    path.write_text("minutes: 1\nstages:\n"
                    "  - {objective: mlm, train: {steps: 5, lr: 1e-3}, objective_options: {mask_prob: 15e-2}}\n"
                    "  - {objective: clm}\n")
    stage = load_recipe(str(path)).stages[0]
    assert stage.train["lr"] == 1e-3 and stage.objective_options["mask_prob"] == 0.15


DOMAIN_STAGES = {
    "name": "domain-pairs", "model": {"size": "tiny", "hidden": 32}, "minutes": 0.25,
    "tokenizer": {"kind": "wordpiece", "vocab_size": 600},
    "stages": [{"objective": "word2vec", "objective_options": {"unit": "tokens", "vector_size": 32, "epochs": 1}},
               {"objective": "contrastive", "corpus": "domain", "objective_options": {"freeze_embeddings": True},
                "train": {"batch_size": 8, "seq_len": 32}}],
}


@pytest.mark.parametrize("recipe", [TWO_STAGES, DOMAIN_STAGES])
def test_cli_recipe_with_a_missing_prepared_directory_writes_nothing(recipe: dict, tmp_path: Path, capsys) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    domain = ["--domain-data", str(tmp_path / "missing")] if recipe is DOMAIN_STAGES else []
    code = main(["pretrain", "--recipe", str(path), "--data", str(tmp_path / "missing"), *domain,
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "not a prepared data directory" in err and str(tmp_path / "missing") in err
    assert "Traceback" not in err and not (tmp_path / "o").exists()


@pytest.fixture(scope="module")
def lee_test(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """gensim's 50 Lee test documents (a second news text; the file is latin-1) as UTF-8."""
    import gensim
    source = Path(gensim.__file__).parent / "test" / "test_data" / "lee.cor"
    text = tmp_path_factory.mktemp("lee_test") / "lee_test.txt"
    text.write_text(source.read_text("latin-1"), encoding="utf-8")
    return text


def test_domain_stages_train_on_the_domain_text(lee: Path, lee_test: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    summary = pretrain_recipe(RecipeRun(recipe=parse_recipe(DOMAIN_STAGES, "r.yaml"), out=out, corpus=[str(lee)],
                                        domain_corpus=[str(lee_test)], progress=False))
    assert [(s["objective"], s["corpus"]) for s in summary["stages"]] == [("word2vec", "general"),
                                                                         ("contrastive", "domain")]
    general, domain = (json.loads((out / d / "manifest.json").read_text()) for d in ("data", "data-domain"))
    assert general["corpus"] == [str(lee)] and domain["corpus"] == [str(lee_test)]
    assert general["tokenizer_sha256"] == domain["tokenizer_sha256"]
    stage = yaml.safe_load((out / "stages" / "1-contrastive" / "config.yaml").read_text())
    assert Path(stage["data"]) == out / "data-domain"
    vectors = load_file(str(out / "stages" / "0-word2vec" / "model.safetensors"))["embedding"]
    assert np.array_equal(load_file(str(out / "model.safetensors"))["encoder.embed.tokens.weight"], vectors)
    again = pretrain_recipe(RecipeRun(recipe=parse_recipe(DOMAIN_STAGES, "r.yaml"), out=out, resume=True,
                                      progress=False))  # the domain text it prepared is found again
    assert again["stages"] == summary["stages"]


def test_domain_text_is_given_exactly_when_a_stage_reads_it(lee: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"stage 1 \(contrastive\) .* trains on a domain corpus") as err:
        pretrain_recipe(RecipeRun(recipe=parse_recipe(DOMAIN_STAGES, "r.yaml"), out=tmp_path / "a",
                                  corpus=[str(lee)], progress=False))
    assert err.value.where == "--domain-corpus"
    with pytest.raises(UserError, match="no stage of recipe two-stage reads a domain corpus"):
        pretrain_recipe(RecipeRun(recipe=parse_recipe(TWO_STAGES, "r.yaml"), out=tmp_path / "b",
                                  corpus=[str(lee)], domain_corpus=[str(lee)], progress=False))
    with pytest.raises(UserError, match="missing.txt"):
        pretrain_recipe(RecipeRun(recipe=parse_recipe(DOMAIN_STAGES, "r.yaml"), out=tmp_path / "c",
                                  corpus=[str(lee)], domain_corpus=[str(tmp_path / "missing.txt")], progress=False))
    assert not any(tmp_path.iterdir())
    code = main(["pretrain", "--objective", "mlm", "--corpus", str(lee), "--domain-corpus", str(lee),
                 "--out", str(tmp_path / "d")])
    assert code == 2 and not (tmp_path / "d").exists()


def test_general_and_domain_data_must_share_a_tokenizer(lee: Path, lee_test: Path, tmp_path: Path) -> None:
    from ptmkit.data.corpus import read_texts
    from ptmkit.data.shards import prepare
    from ptmkit.data.tokenizer import train_tokenizer
    for name, size in (("general", 600), ("domain", 700)):
        tokenizer = train_tokenizer(read_texts([lee]), kind="wordpiece", vocab_size=size, show_progress=False)
        prepare([lee if name == "general" else lee_test], tokenizer, tmp_path / name, progress=False)
    with pytest.raises(UserError, match="different tokenizers") as err:
        pretrain_recipe(RecipeRun(recipe=parse_recipe(DOMAIN_STAGES, "r.yaml"), out=tmp_path / "run",
                                  data=tmp_path / "general", domain_data=tmp_path / "domain", progress=False))
    assert "same `ptmkit prepare --tokenizer DIR`" in err.value.fix and not (tmp_path / "run").exists()
