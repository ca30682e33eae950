"""The seq2seq task: metrics, readers, framing, tiny end-to-end fine-tunes and `ptmkit generate`."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from ptmkit.cli import main
from ptmkit.data.shards import Window
from ptmkit.data.tokenizer import Tokenizer, train_tokenizer
from ptmkit.errors import UserError
from ptmkit.finetuning.model import load_backbone
from ptmkit.finetuning.run import FinetuneSpec, evaluate, finetune
from ptmkit.finetuning.search import finetune_search
from ptmkit.finetuning.seq2seq_task import Seq2Seq, text_metrics
from ptmkit.finetuning.tasks import TaskSpec
from ptmkit.model.config import resolve_model_config
from ptmkit.objectives import get_objective
from ptmkit.objectives.base import IGNORE, Vocab
from ptmkit.train.checkpoint import atomic_save_model

WORDS = "river market school music garden winter bridge letter doctor window".split()


def test_metrics_of_identical_and_disjoint_texts() -> None:
    same = text_metrics(["the cat sat on the mat today"], [["the cat sat on the mat today"]])
    assert same == pytest.approx({"rouge1": 1, "rouge2": 1, "rougeL": 1, "bleu": 1, "chrf": 1})
    apart = text_metrics(["river market school music"], [["doctor window letter bridge"]])
    assert apart["rougeL"] == 0 and apart["bleu"] == 0
    # several references: ROUGE takes the best one per example, BLEU scores against all
    multi = text_metrics(["the cat sat on the mat today", "a dog ran in the park now"],
                         [["something else entirely here", "the cat sat on the mat today"],
                          ["a dog ran in the park now"]])
    assert multi["rougeL"] == pytest.approx(1) and multi["bleu"] == pytest.approx(1)


def test_bleu_and_chrf_ignore_case_only_for_a_lowercasing_model() -> None:
    prediction, reference = ["der kleine hund läuft über die grüne wiese"], [["Der kleine Hund läuft über die grüne Wiese"]]
    cased, caseless = text_metrics(prediction, reference), text_metrics(prediction, reference, lowercase=True)
    assert caseless["bleu"] == pytest.approx(1) and caseless["chrf"] == pytest.approx(1)
    assert cased["bleu"] < 0.5 and cased["chrf"] < 0.9 and cased["rougeL"] == caseless["rougeL"] == pytest.approx(1)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=8)) for _ in range(300)]
    path = tmp_path_factory.mktemp("tok") / "tok"
    train_tokenizer(texts, kind="wordpiece", vocab_size=300, show_progress=False).save(path)
    return path


def fake_pretrain_run(root: Path, objective: str, tokenizer: Path, seq_len: int = 32) -> Path:
    """A `ptmkit pretrain` run directory holding a freshly initialised tiny model: fine-tuning
    and generation read nothing else (pre-training itself is tested elsewhere)."""
    tok = Tokenizer.load(tokenizer)
    obj = get_objective(objective)(Vocab.of(tok), seq_len)
    cfg = resolve_model_config("tiny", vocab_size=tok.vocab_size, layout=obj.layout,
                               encoder_decoder=obj.architecture == "encoder_decoder",
                               dropout=0.0, attention_dropout=0.0)  # learns the tasks sooner
    torch.manual_seed(0)
    run = root / objective
    run.mkdir(parents=True)
    atomic_save_model(obj.build_model(cfg), run / "model.safetensors")
    tok.save(run / "tokenizer")
    config = {"kind": "pretrain", "objective": objective, "objective_options":
              dataclasses.asdict(obj.options), "model": cfg.to_dict(), "train": {"seq_len": seq_len}}
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    return run


def write_copy_task(path: Path, n: int, seed: int, references: bool = False) -> None:
    """Copy a few words: the source as a list of two "sentences", the target the joined text
    (with a second, wrong reference on dev files when `references`)."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as f:
        for _ in range(n):
            words = list(rng.choice(WORDS, size=int(rng.integers(3, 6))))
            target = " ".join(words)
            record = {"source": [" ".join(words[:2]), " ".join(words[2:])],
                      "target": [target, "letter letter"] if references else target}
            f.write(json.dumps(record) + "\n")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("copy")
    write_copy_task(root / "train.jsonl", 320, 0)
    write_copy_task(root / "dev.jsonl", 40, 1, references=True)
    return root


def spec(data: Path, init: Path | str, out: Path, **kw) -> FinetuneSpec:
    values = dict(task="seq2seq", init=str(init), out=out, train=str(data / "train.jsonl"),
                  dev=str(data / "dev.jsonl"), epochs=8, lr=1e-3, batch_size=8, max_length=16,
                  max_target_length=12, progress=False)
    return FinetuneSpec(**{**values, **kw})


def task_for(objective: str, tokenizer: Path, tmp_path: Path, **spec_kw) -> Seq2Seq:
    backbone = load_backbone(str(fake_pretrain_run(tmp_path, objective, tokenizer)), max_length=16)
    task = Seq2Seq(TaskSpec(name="seq2seq", max_length=16, **spec_kw), backbone.tokenizer,
                   backbone.pooling, token_types=False)
    task.bind(backbone)
    return task


def test_list_fields_references_and_joining(data, tokenizer, tmp_path) -> None:
    task = task_for("bart", tokenizer, tmp_path)
    records = task.read(str(data / "dev.jsonl"))
    assert len(task.targets(records, "dev")[0]) == 2  # alternatives, first one trained on
    item = task.encode(records[:1], "dev")[0]
    words = " ".join(records[0]["source"])
    assert task.tokenizer.decode(item["input_ids"]) == words == task.tokenizer.decode(item["labels"])
    joined = task_for("t5", tokenizer, tmp_path / "j", target_list="join")
    assert joined.targets(records[:1], "dev") == [[" ".join(records[0]["target"])]]


def test_parallel_files_plain_and_gzip(tokenizer, tmp_path) -> None:
    (tmp_path / "src.txt").write_text("river market\nschool music\n")
    with gzip.open(tmp_path / "tgt.txt.gz", "wt") as f:
        f.write("garden winter\nbridge letter\n")
    task = task_for("mass", tokenizer, tmp_path)
    records = task.read(f"{tmp_path / 'src.txt'},{tmp_path / 'tgt.txt.gz'}")
    assert records == [{"source": "river market", "target": "garden winter"},
                       {"source": "school music", "target": "bridge letter"}]
    (tmp_path / "short.txt").write_text("garden winter\n")
    with pytest.raises(UserError, match="2 source lines but 1 target lines"):
        task.read(f"{tmp_path / 'src.txt'},{tmp_path / 'short.txt'}")
    with pytest.raises(UserError, match="not found"):
        task.read(f"{tmp_path / 'src.txt'},{tmp_path / 'nope.txt'}")


def test_a_translation_dataset_reads_its_nested_fields_by_dotted_name(tokenizer, tmp_path) -> None:
    import datasets
    datasets.disable_progress_bars()
    pairs = [{"en": "river market", "de": "garden winter"}, {"en": "school music", "de": "bridge letter"}]
    datasets.Dataset.from_dict({"translation": pairs}).to_parquet(str(tmp_path / "wmt.parquet"))
    task = task_for("bart", tokenizer, tmp_path, source_field="translation.en", target_field="translation.de")
    records = task.read(str(tmp_path / "wmt.parquet"))
    assert task.targets(records, "wmt") == [["garden winter"], ["bridge letter"]]
    item = task.encode(records[:1], "wmt")[0]
    assert task.tokenizer.decode(item["input_ids"]) == "river market"
    french = task_for("bart", tokenizer, tmp_path / "fr", source_field="translation.en",
                      target_field="translation.fr")
    with pytest.raises(UserError, match="'translation.fr' not found.*translation.en, translation.de"):
        french.read(str(tmp_path / "wmt.parquet"))


@pytest.mark.parametrize("objective, options", [("bart", {}), ("t5", {}), ("mass", {"span_ratio": 1.0})])
def test_framing_matches_pre_training(objective: str, options: dict, tokenizer) -> None:
    """Fine-tuning frames pairs as pre-training frames its examples (a MASS fragment covering
    the whole text is the case that starts the decoder at <s>, position 0)."""
    obj = get_objective(objective)(Vocab.of(Tokenizer.load(tokenizer)), 32, options)
    window = Window(tokens=np.arange(110, 140), sentence_starts=np.array([0]),
                    document_starts=np.array([0]))
    example = obj.make_example(window, np.random.default_rng(0))
    frame = obj.text_frame()
    assert example["decoder_input_ids"][0] == frame.decoder_start
    assert example.get("decoder_position_ids", [0])[0] == 0
    assert list(example["labels"][: len(frame.target_prefix)]) == list(frame.target_prefix)
    assert example["labels"][-1] == frame.eos or objective == "mass"  # MASS never predicts </s>
    assert list(example["input_ids"][: len(frame.source_prefix)]) == list(frame.source_prefix)
    assert example["input_ids"][-1] == frame.eos


def test_decoder_only_examples_score_the_target_only(tokenizer, tmp_path) -> None:
    task = task_for("prefixlm", tokenizer, tmp_path)
    item = task.encode([{"source": "river market", "target": "school"}], "x")[0]
    special, source = task.tokenizer.special, task.tokenizer.encode("river market")
    target = task.tokenizer.encode("school")
    assert list(item["input_ids"]) == [special.eos, *source, special.sep, *target]
    assert list(item["labels"]) == [IGNORE] * (len(source) + 1) + [*target, special.eos]
    batch = task.collate([item])
    prompt = len(source) + 2
    assert batch["attn_mask"][0, 0, :prompt].all() and not batch["attn_mask"][0, 0, prompt:].any()


def test_copy_task_rouge_improves_and_evaluate_agrees(data, tokenizer, tmp_path) -> None:
    run = tmp_path / "ft"
    result = finetune(spec(data, fake_pretrain_run(tmp_path, "bart", tokenizer), run))
    curve = [json.loads(line)["dev_rougeL"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    # copying through cross-attention is learnt suddenly, after ~200 steps (seeds 0-3: 0.87-1.0)
    assert curve[-1] > curve[0] + 0.5 and result["rougeL"] == max(curve) >= 0.8, curve
    assert set(result) >= {"rouge1", "rouge2", "rougeL", "bleu", "chrf"} and result["main_metric"] == "rougeL"
    assert evaluate(run, str(data / "dev.jsonl"))["rougeL"] == pytest.approx(result["rougeL"])

    lines = ["river market school", "", "doctor window letter bridge"]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    for extra in ([], ["--beam", "3"], ["--top-p", "0.9", "--seed", "1"]):
        code, out = run_cli(["generate", "--run", run, "--input", tmp_path / "in.txt",
                             "--max-length", "10", *extra])
        assert code == 0 and len(out.splitlines()) == len(lines)
    code, out = run_cli(["generate", "--run", run, "--input", tmp_path / "in.txt", "--beam", "4"])
    assert out.splitlines()[0] == "river market school"


def test_decoder_only_fine_tune_learns(data, tokenizer, tmp_path) -> None:
    run = tmp_path / "ft"
    result = finetune(spec(data, fake_pretrain_run(tmp_path, "prefixlm", tokenizer), run, epochs=3))
    curve = [json.loads(line)["dev_rougeL"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert curve[-1] > curve[0] and result["rougeL"] >= 0.6, curve


def test_an_lstm_init_is_refused_before_anything_is_written(data, tokenizer, tmp_path) -> None:
    with pytest.raises(UserError, match="needs a model with a decoder.*bart, mass or t5"):
        finetune(spec(data, fake_pretrain_run(tmp_path, "elmo", tokenizer), tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("objective", ["mlm", "electra", "plm"])
def test_warm_start_copies_the_encoder_into_the_decoder(objective: str, tokenizer, tmp_path) -> None:
    encoder = load_backbone(str(fake_pretrain_run(tmp_path, objective, tokenizer)), max_length=16)
    warm = Seq2Seq.adapt(encoder)
    source, network = encoder.network, warm.network
    assert warm.objective.architecture == "encoder_decoder" and warm.objective_name == "bart"
    assert warm.model_cfg.n_decoder_layers == source.cfg.n_layers and warm.model_cfg.layout == source.cfg.layout
    for name, value in source.state_dict().items():  # the encoder, embeddings and LM head unchanged
        assert torch.equal(network.state_dict()[name], value), name
    decoder = network.decoder.state_dict()
    for name, value in source.encoder.state_dict().items():  # each decoder layer starts as its encoder layer
        assert torch.equal(decoder[name], value), name
    assert torch.equal(network.decoder_embed.positions.weight, source.embed.positions.weight)
    assert network.decoder_embed.tokens is network.embed.tokens  # shared, as in every encoder-decoder
    cross = [k for k in decoder if ".cross." in k and k.endswith("weight")]
    assert cross and all(decoder[k].std() > 0 for k in cross)  # fresh, not zeros and not copied
    # the encoder computes exactly what it did: the warm start only adds the decoder
    source.eval(), network.eval()
    ids = torch.randint(5, encoder.tokenizer.vocab_size, (2, 9))
    assert torch.allclose(network.encode(ids), source.encode(ids))


def test_a_warm_started_encoder_learns_the_copy_task_and_reloads(data, tokenizer, tmp_path) -> None:
    run = tmp_path / "ft"
    result = finetune(spec(data, fake_pretrain_run(tmp_path, "mlm", tokenizer), run))
    curve = [json.loads(line)["dev_rougeL"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert curve[-1] > curve[0] + 0.3 and result["rougeL"] >= 0.6, curve
    assert result["objective"] == "bart" and result["init"].endswith("mlm")
    assert evaluate(run, str(data / "dev.jsonl"))["rougeL"] == pytest.approx(result["rougeL"])


def test_scratch_is_a_random_encoder_decoder(data, tokenizer, tmp_path) -> None:
    result = finetune(spec(data, "scratch", tmp_path / "out", tokenizer=tokenizer, epochs=1))
    assert result["objective"] == "bart" and result["init"] == "scratch"


def test_head_epochs_leave_a_seq2seq_task_as_it_was(data, tokenizer, tmp_path) -> None:
    """Its output layer is the backbone's LM head: there is no head to fit alone (a compare's
    head_epochs, meant for its NLU tasks, reaches its NLG tasks too)."""
    import torch
    torch.manual_seed(0)
    plain = finetune(spec(data, "scratch", tmp_path / "plain", tokenizer=tokenizer, epochs=1))
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="--head-epochs 3 ignored: a seq2seq task has no head of its own"):
        headed = finetune(spec(data, "scratch", tmp_path / "headed", tokenizer=tokenizer, epochs=1, head_epochs=3))
    assert headed == plain
    assert ((tmp_path / "headed" / "metrics.jsonl").read_text()
            == (tmp_path / "plain" / "metrics.jsonl").read_text())


def test_a_head_epochs_search_on_a_seq2seq_task_trains_each_rate_once(data, tokenizer, tmp_path) -> None:
    """--head-epochs 0,2 would train every rate twice the same way: the search keeps head 0."""
    with pytest.warns(UserWarning, match="--head-epochs 0,2 ignored: a seq2seq task has no head"):
        result = finetune_search(spec(data, "scratch", tmp_path / "s", tokenizer=tokenizer, epochs=1), [1e-3, 3e-3],
                                 head_epochs=[0, 2])
    assert [(t["lr"], t.get("head_epochs")) for t in result["search"]] == [(1e-3, None), (3e-3, None)]
    assert sorted(p.name for p in (tmp_path / "s" / "search").iterdir()) == ["lr-0.001", "lr-0.003"]


def run_cli(args: list) -> tuple[int, str]:
    import contextlib
    import io
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue() + err.getvalue()


def test_generate_from_pre_training_runs_and_its_errors(tokenizer, tmp_path) -> None:
    (tmp_path / "in.txt").write_text("river market\nschool\n")
    for objective in ("clm", "t5"):
        code, out = run_cli(["generate", "--run", fake_pretrain_run(tmp_path, objective, tokenizer),
                             "--input", tmp_path / "in.txt", "--max-length", "5"])
        assert code == 0 and len(out.splitlines()) == 2, out
    errors = {
        "not a ptmkit run": ["--run", tmp_path / "missing", "--input", tmp_path / "in.txt"],
        "cannot generate from a mlm pre-training run": [
            "--run", fake_pretrain_run(tmp_path, "mlm", tokenizer), "--input", tmp_path / "in.txt"],
        "no input lines": ["--run", tmp_path / "clm", "--input", tmp_path / "empty.txt"],
        "input file not found": ["--run", tmp_path / "clm", "--input", tmp_path / "nope.txt"],
    }
    (tmp_path / "empty.txt").write_text("\n")
    for message, args in errors.items():
        code, out = run_cli(["generate", *args])
        assert code == 2 and out.startswith(f"ptmkit: error: {message}") and len(out.splitlines()) == 1, out
