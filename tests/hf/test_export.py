"""`ptmkit export --format hf`: every exportable run loads into transformers without a weight
left out or made up, with ptmkit's logits, its tokenizer and a model card; the rest is refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import ptmkit
from ptmkit.cli import main
from ptmkit.errors import UserError
from ptmkit.hf.export import export_run

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install ptmkit[hf])")

AUTO = {"mlm": "AutoModelForMaskedLM", "wwm": "AutoModelForMaskedLM", "electra": "AutoModelForPreTraining",
        "clm": "AutoModelForCausalLM", "prefixlm": "AutoModelForCausalLM",
        "bart": "AutoModelForSeq2SeqLM", "mass": "AutoModelForSeq2SeqLM", "t5": "AutoModelForSeq2SeqLM"}
CLASS = {"mlm": "BertForMaskedLM", "wwm": "BertForMaskedLM", "electra": "ElectraForPreTraining",
         "clm": "GPT2LMHeadModel", "prefixlm": "GPT2LMHeadModel", "bart": "BartForConditionalGeneration",
         "mass": "BartForConditionalGeneration", "t5": "BartForConditionalGeneration"}


def _pretrain(data: Path, out: Path, objective: str, model: dict, train: dict) -> Path:
    ptmkit.pretrain(objective=objective, data=data, out=out, model=model, **train)
    return out


def _load(auto: str, directory: Path, hf_messages, problems):
    with hf_messages() as messages:
        model, info = getattr(transformers, auto).from_pretrained(directory, output_loading_info=True)
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    assert problems(messages) == [], problems(messages)
    return model.eval()


def _ids(vocab: int, batch: int = 3, length: int = 24) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("objective", sorted(AUTO))
def test_pretraining_run_exports_with_identical_logits(objective, data, tmp_path, tiny, train, hf_messages, problems):
    run = _pretrain(data, tmp_path / "run", objective, tiny, train)
    result = export_run(run, tmp_path / "hf")
    assert result["class"] == CLASS[objective] and result["max_logit_difference"] <= 1e-4
    model = _load(AUTO[objective], tmp_path / "hf", hf_messages, problems)
    assert type(model).__name__ == CLASS[objective]
    ids = _ids(600)
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    ours = ptmkit.load_run(run).logits(ids)
    assert ours.shape == theirs.shape == ((3, 24) if objective == "electra" else (3, 24, 600))
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_exported_tokenizer_has_the_special_tokens_and_frames_like_ptmkit(data, tmp_path, tiny, train):
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    export_run(run, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = ptmkit.load_run(run).tokenizer
    roles = {"pad": "[PAD]", "unk": "[UNK]", "cls": "[CLS]", "sep": "[SEP]", "mask": "[MASK]",
             "bos": "<s>", "eos": "</s>"}
    for role, token in roles.items():
        assert getattr(hf_tok, f"{role}_token") == token
        assert getattr(hf_tok, f"{role}_token_id") == getattr(ours.special, role)
    extra = getattr(hf_tok, "extra_special_tokens", None) or hf_tok.additional_special_tokens
    assert [hf_tok.convert_tokens_to_ids(t) for t in extra] == list(ours.special.sentinels)
    text = "The fire spread across the Blue Mountains."
    assert hf_tok(text)["input_ids"] == [ours.special.cls, *ours.encode(text), ours.special.sep]
    assert hf_tok.decode(hf_tok(text)["input_ids"], skip_special_tokens=True) == text
    literal = "The [CLS] fire [SEP] and [MASK] here"  # special strings in a text stay text, as in ptmkit
    assert hf_tok(literal)["input_ids"] == [ours.special.cls, *ours.encode(literal), ours.special.sep]


def test_seq2seq_tokenizer_frames_as_the_objective(data, tmp_path, tiny, train):
    run = _pretrain(data, tmp_path / "run", "t5", tiny, train)
    export_run(run, tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ours = ptmkit.load_run(run).tokenizer
    assert hf_tok("the fire")["input_ids"] == [*ours.encode("the fire"), ours.special.eos]
    config = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config["decoder_start_token_id"] == ours.special.pad  # T5 starts decoding from pad


def test_model_card_records_objective_data_steps_and_metrics(data, tmp_path, tiny, train):
    run = _pretrain(data, tmp_path / "run", "clm", tiny, train)
    export_run(run, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    summary = json.loads((run / "summary.json").read_text())
    assert "library_name: transformers" in card and "GPT2LMHeadModel" in card
    assert "| objective | clm |" in card and str(data.resolve()) in card
    assert f"| steps | {summary['steps']} " in card
    assert f"{summary['final_val_loss']:.4f}" in card


def _classify_file(path: Path) -> Path:
    labels = ["negative", "neutral", "positive"]
    path.write_text("sentence\tlabel\n" + "".join(
        f"the fire {['ended', 'stayed', 'spread'][i % 3]} today number {i}\t{labels[i % 3]}\n" for i in range(30)))
    return path


def test_finetuned_classifier_exports_with_id2label(data, tmp_path, tiny, train, hf_messages, problems):
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    ft = tmp_path / "ft"
    result = ptmkit.finetune(task="classify", init=run, out=ft, train=_classify_file(tmp_path / "t.tsv"),
                             text_fields="sentence", epochs=1, batch_size=8, max_length=16, progress=False)
    assert 0 <= result["accuracy"] <= 1
    assert export_run(ft, tmp_path / "hf")["class"] == "BertForSequenceClassification"
    model = _load("AutoModelForSequenceClassification", tmp_path / "hf", hf_messages, problems)
    assert model.config.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    loaded = ptmkit.load_run(ft)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tok(["the fire spread today", "the fire ended"], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model(**batch).logits
    ours = torch.cat([loaded.logits(tok(t, return_tensors="pt")["input_ids"])
                      for t in ["the fire spread today", "the fire ended"]])
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)  # padding masked away in HF
    assert tok.model_max_length == 16 and tok.model_input_names == ["input_ids", "attention_mask"]
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "| task | classify (labels: negative, neutral, positive) |" in card
    assert "| epochs | 1 of 1, scored: the epoch that scores best on dev itself |" in card  # what it was scored as


def test_finetuned_tagger_exports_as_token_classification(data, tmp_path, tiny, train, hf_messages, problems):
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    conll = tmp_path / "train.conll"
    conll.write_text("".join(f"Fire\tB-EV\nin\tO\nSydney\tB-LOC\nnumber\tO\n{i}\tO\n\n" for i in range(20)))
    ptmkit.finetune(task="tag", init=run, out=tmp_path / "ft", train=conll, dev=conll, epochs=1,
                    batch_size=8, max_length=16, progress=False)
    assert export_run(tmp_path / "ft", tmp_path / "hf")["class"] == "BertForTokenClassification"
    model = _load("AutoModelForTokenClassification", tmp_path / "hf", hf_messages, problems)
    assert set(model.config.id2label.values()) == {"O", "B-EV", "I-EV", "B-LOC", "I-LOC"}  # a type's B- and I-
    ids = _ids(600, 2, 12)
    with torch.no_grad():
        theirs = model(input_ids=ids).logits
    torch.testing.assert_close(ptmkit.load_run(tmp_path / "ft").logits(ids), theirs, atol=1e-4, rtol=0)


def test_positions_offset_and_missing_token_types_export_exactly(data, tmp_path, tiny, train):
    """A RoBERTa-style position offset is cut away and an absent type embedding becomes zeros."""
    run = _pretrain(data, tmp_path / "run", "mlm", {**tiny, "position_offset": 2, "type_vocab_size": 0}, train)
    export_run(run, tmp_path / "hf")
    gpt = _pretrain(data, tmp_path / "gpt", "clm", {**tiny, "position_offset": 1, "type_vocab_size": 2}, train)
    export_run(gpt, tmp_path / "hf-gpt")  # types folded in
    ids = _ids(600)
    for source, exported, auto in ((run, "hf", AUTO["mlm"]), (gpt, "hf-gpt", AUTO["clm"])):  # the saved files
        model = getattr(transformers, auto).from_pretrained(tmp_path / exported).eval()
        with torch.no_grad():
            torch.testing.assert_close(ptmkit.load_run(source).logits(ids), model(input_ids=ids).logits,
                                       atol=1e-4, rtol=0)
    bert = transformers.AutoModel.from_pretrained(tmp_path / "hf")
    assert not bert.embeddings.token_type_embeddings.weight.any()  # the absent type table: zeros
    assert bert.embeddings.position_embeddings.weight.shape[0] == tiny["max_positions"]  # offset cut


# ---- refusals ---------------------------------------------------------------------------------

def _cli_error(args: list, capsys) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ptmkit: error: "), err
    return lines[0]


def test_prenorm_run_is_refused_naming_the_option(data, tmp_path, tiny, train, capsys):
    run = _pretrain(data, tmp_path / "run", "mlm", {**tiny, "layout": "prenorm"}, train)
    line = _cli_error(["export", "--run", run, "--format", "hf", "--out", tmp_path / "hf"], capsys)
    assert "model.norm" in line and "BERT" in line
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("objective, mention", [("plm", "relative positions"), ("elmo", "no Transformer"),
                                               ("contrastive", "no language-model head")])
def test_objectives_without_an_hf_equivalent_are_refused(objective, mention, data, tmp_path, tiny, train):
    run = _pretrain(data, tmp_path / "run", objective, tiny, train)
    with pytest.raises(UserError, match=mention) as err:
        export_run(run, tmp_path / "hf")
    assert "objective" in err.value.where
    if objective == "contrastive":  # a pair encoder: no LM logits through the API either
        with pytest.raises(UserError, match="no Transformer language-model logits"):
            ptmkit.load_run(run).logits([[5, 6, 7]])


def test_a_run_with_nan_weights_is_not_exported(data, tmp_path, tiny, train):
    """NaN > tolerance is False: the logit check let a diverged model through, its card saying
    "logits equal ptmkit's within nan"."""
    from safetensors.torch import load_file, save_file
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    weights = load_file(run / "model.safetensors")
    name = next(k for k in weights if k.endswith("fc_in.weight"))
    weights[name][0, 0] = float("nan")
    save_file(weights, run / "model.safetensors")
    with pytest.raises(UserError, match="logits are NaN"):
        export_run(run, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_gpt2_layout_with_an_lm_head_bias_is_refused(data, tmp_path, tiny, train):
    run = _pretrain(data, tmp_path / "run", "clm", {**tiny, "lm_head_bias": True}, train)
    with pytest.raises(UserError, match="lm_head_bias"):
        export_run(run, tmp_path / "hf")


@pytest.mark.parametrize("pooling", ["auto", "first"])
def test_decoder_classifier_is_refused(data, tmp_path, tiny, train, pooling):
    """Pooling the first token of a causal model does not make BERT's bidirectional reading of it
    the same model: refused whatever the pooling (it used to export and fail the logit check)."""
    run = _pretrain(data, tmp_path / "run", "clm", {**tiny, "layout": "bert"}, train)
    ptmkit.finetune(task="classify", init=run, out=tmp_path / "ft", train=_classify_file(tmp_path / "t.tsv"),
                    text_fields="sentence", epochs=1, batch_size=8, max_length=16, progress=False, pooling=pooling)
    with pytest.raises(UserError, match="is decoder-only: its features are causal"):
        export_run(tmp_path / "ft", tmp_path / "hf")


def test_output_directory_rules_and_cli(data, tmp_path, tiny, train, capsys):
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    out = tmp_path / "hf"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert "not empty" in _cli_error(["export", "--run", run, "--out", out], capsys)
    assert main(["export", "--run", str(run), "--format", "hf", "--out", str(out), "--overwrite"]) == 0
    assert "BertForMaskedLM" in capsys.readouterr().out
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert "unknown export format" in _cli_error(["export", "--run", run, "--format", "onnx", "--out", tmp_path / "x"], capsys)
    assert "not a ptmkit run" in _cli_error(["export", "--run", tmp_path, "--out", tmp_path / "y"], capsys)


def test_missing_transformers_says_how_to_install(data, tmp_path, tiny, train, monkeypatch):
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now fails
    with pytest.raises(UserError, match=r"pip install ptmkit\[hf\]"):
        export_run(run, tmp_path / "hf")


def test_the_load_check_sees_missing_weights(data, tmp_path, tiny, train, hf_messages, problems):
    """The capture used above does catch transformers' complaints (a head loaded from elsewhere)."""
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    export_run(run, tmp_path / "hf")
    with hf_messages() as messages:
        transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf")
    assert problems(messages)


def test_core_never_imports_transformers():
    import subprocess
    code = ("import sys, ptmkit, ptmkit.cli, ptmkit.pretraining, ptmkit.finetuning.run, ptmkit.api, "
            "ptmkit.hf.importer; assert 'transformers' not in sys.modules, 'imported'")
    subprocess.run([sys.executable, "-c", code], check=True)


def _tag_file(path: Path) -> Path:
    path.write_text("".join(f"Fire\tB-EV\nin\tO\nSydney\tB-LOC\nnumber\tO\n{i}\tO\n\n" for i in range(20)))
    return path


def test_decoder_tagger_tokenizer_frames_as_fine_tuning_did(data, tmp_path, tiny, train):
    """A tagger fine-tuned on clm read `[CLS] pieces [SEP]`: its exported tokenizer frames the
    same way, so the exported GPT2ForTokenClassification used through it predicts as ptmkit does."""
    run = _pretrain(data, tmp_path / "run", "clm", tiny, train)
    conll = _tag_file(tmp_path / "train.conll")
    ptmkit.finetune(task="tag", init=run, out=tmp_path / "ft", train=conll, dev=conll, epochs=1,
                    batch_size=8, max_length=16, progress=False)
    assert export_run(tmp_path / "ft", tmp_path / "hf")["class"] == "GPT2ForTokenClassification"
    loaded = ptmkit.load_run(tmp_path / "ft")
    words = ["Fire", "in", "Sydney"]
    expected = loaded.task.encode_words([words], [[0, 0, 0]])[0]["input_ids"].tolist()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    batch = tok(words, is_split_into_words=True, return_tensors="pt")
    assert batch["input_ids"][0].tolist() == expected  # [CLS] ... [SEP], as fine-tuning framed it
    model = transformers.AutoModelForTokenClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = model(**batch).logits
    torch.testing.assert_close(loaded.logits(torch.tensor([expected])), theirs, atol=1e-4, rtol=0)


def test_classifier_fine_tuned_with_mean_pooling_is_refused_naming_the_option(data, tmp_path, tiny, train, capsys):
    """BertForSequenceClassification pools the first token: a run that pooled the mean is a one-line
    error naming task.pooling (not a logit-mismatch traceback), and nothing is written."""
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    ptmkit.finetune(task="classify", init=run, out=tmp_path / "ft", train=_classify_file(tmp_path / "t.tsv"),
                    text_fields="sentence", epochs=1, batch_size=8, max_length=16, progress=False, pooling="mean")
    line = _cli_error(["export", "--run", tmp_path / "ft", "--out", tmp_path / "hf"], capsys)
    assert "task.pooling" in line and "--pooling first" in line
    assert not (tmp_path / "hf").exists()


def test_classifier_on_a_bart_encoder_pooling_first_exports(data, tmp_path, tiny, train):
    """The task's pooling decides, not the backbone's default (mean for encoder-decoders)."""
    run = _pretrain(data, tmp_path / "run", "bart", tiny, train)
    ptmkit.finetune(task="classify", init=run, out=tmp_path / "ft", train=_classify_file(tmp_path / "t.tsv"),
                    text_fields="sentence", epochs=1, batch_size=8, max_length=16, progress=False, pooling="first")
    assert export_run(tmp_path / "ft", tmp_path / "hf")["class"] == "BertForSequenceClassification"
    model = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ids = _ids(600, 3, 12)
    with torch.no_grad():
        torch.testing.assert_close(ptmkit.load_run(tmp_path / "ft").logits(ids), model(input_ids=ids).logits,
                                   atol=1e-4, rtol=0)


def test_out_at_or_above_the_run_is_refused_and_the_run_kept(data, tmp_path, tiny, train, capsys, monkeypatch):
    run = _pretrain(data, tmp_path / "runs" / "mlm", "mlm", tiny, train)
    before = sorted(p.name for p in run.iterdir())
    for out in (run, tmp_path / "runs", run / ".." / "mlm"):
        line = _cli_error(["export", "--run", run, "--out", out, "--overwrite"], capsys)
        assert "would delete the run" in line
    assert sorted(p.name for p in run.iterdir()) == before and (run / "config.yaml").is_file()
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.chdir(empty)
    assert "current directory" in _cli_error(["export", "--run", run, "--out", "."], capsys)
    assert main(["export", "--run", str(run), "--out", "hf/mlm"]) == 0  # relative, below the cwd
    assert (empty / "hf" / "mlm" / "config.json").is_file()
    # inside the run: a new directory, or an earlier export, but never one of the run's own parts
    tokenizer_files = sorted(p.name for p in (run / "tokenizer").iterdir())
    capsys.readouterr()  # the export's progress bars above
    line = _cli_error(["export", "--run", run, "--out", run / "tokenizer", "--overwrite"], capsys)
    assert "--out is a part of the run" in line
    assert sorted(p.name for p in (run / "tokenizer").iterdir()) == tokenizer_files
    assert main(["export", "--run", str(run), "--out", str(run / "hf")]) == 0
    assert main(["export", "--run", str(run), "--out", str(run / "hf"), "--overwrite"]) == 0


def test_overwrite_keeps_the_old_export_when_the_new_one_cannot_be_put_in_place(data, tmp_path, tiny, train,
                                                                               monkeypatch):
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    out = tmp_path / "hf"
    export_run(run, out)
    old = {p.name: p.read_bytes() for p in out.iterdir()}
    rename = Path.rename

    def failing(self, target):
        if Path(target) == out and self.name.startswith(".hf.") and not self.name.endswith(".old"):
            raise OSError("disk full")
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", failing)
    with pytest.raises(OSError, match="disk full"):
        export_run(run, out, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == old
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hf", "run"]  # no staging left behind


def test_model_card_says_how_to_use_the_fill_mask_pipeline(data, tmp_path, tiny, train):
    """Literal "[MASK]" stays text for the exported tokenizer (as in ptmkit), so `fill-mask` finds no
    mask through it; the card gives the loading option that makes the pipeline work."""
    run = _pretrain(data, tmp_path / "run", "mlm", tiny, train)
    export_run(run, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "AutoTokenizer.from_pretrained(DIR, split_special_tokens=False)" in card and "`[MASK]`" in card
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf", split_special_tokens=False)
    fill = transformers.pipeline("fill-mask", model=str(tmp_path / "hf"), tokenizer=tok)
    assert len(fill("The fire [MASK] across the mountains.", top_k=3)) == 3
    # the mask takes the place of a whole " spread" piece, as in pre-training: no bare "Ġ" beside it
    # (a byte-level BPE puts a space before every text it reads, each side of the mask too)
    masked, after = tok.tokenize("The fire [MASK] across"), tok.tokenize("across")
    assert "Ġ" not in masked and masked[-len(after):] == after and after[0].startswith("Ġ")


# ---- t5 / mass exported and imported again --------------------------------------------------------

def _seq2seq_loss_and_outputs(backbone, records: list[dict]) -> tuple[float, list[str]]:
    """The seq2seq fine-tuning task's teacher-forced loss and greedy outputs on `records`."""
    from ptmkit.finetuning.seq2seq_task import Seq2Seq
    from ptmkit.finetuning.tasks import TaskSpec
    from ptmkit.model.generate import DecodeOptions
    task = Seq2Seq(TaskSpec(name="seq2seq", max_length=32, max_target_length=12), backbone.tokenizer,
                   backbone.pooling, token_types=False)
    task.bind(backbone)
    network = backbone.network.eval()
    batch = task.collate(task.encode(records, "pairs"))
    with torch.no_grad():
        loss = float(task.objective.loss(network, batch)[0])
    return loss, task.generate(network, task.prompts(batch), DecodeOptions(max_length=8))


@pytest.mark.parametrize("objective", ["t5", "mass"])
def test_exported_seq2seq_run_imports_with_its_own_decoder_start(objective, data, tmp_path, tiny, train):
    """`--init hf:EXPORT` reads the objective back from config.json's decoder_start_token_id (t5:
    pad, mass: <s>), not BART's </s>: the imported model frames text as the run did."""
    from ptmkit.hf.importer import finetune_objective, read_hf
    run = _pretrain(data, tmp_path / "run", objective, tiny, train)
    export_run(run, tmp_path / "hf")
    assert finetune_objective(read_hf(f"hf:{tmp_path / 'hf'}", weights=False)) == objective
    # pre-training on with the same objective: the logits and the decoder start are the run's
    again = tmp_path / "again"
    ptmkit.pretrain(objective=objective, data=data, init=f"hf:{tmp_path / 'hf'}", out=again,
                    **{**train, "steps": 1}, lr=1e-12)
    original, imported = ptmkit.load_run(run), ptmkit.load_run(again)
    assert imported.decoder_start_id == original.decoder_start_id
    ids = _ids(600)
    torch.testing.assert_close(imported.logits(ids), original.logits(ids), atol=1e-5, rtol=0)


@pytest.mark.parametrize("objective", ["t5", "mass"])
def test_fine_tuning_an_exported_seq2seq_run_frames_as_the_run(objective, data, tmp_path, tiny, train):
    """`finetune --init hf:EXPORT` (seq2seq) asks the model what `finetune --init RUN` asks it:
    same objective, frame, teacher-forced loss and greedy outputs."""
    from ptmkit.finetuning.model import load_backbone
    run = _pretrain(data, tmp_path / "run", objective, tiny, train)
    export_run(run, tmp_path / "hf")
    original, imported = load_backbone(str(run), max_length=32), load_backbone(f"hf:{tmp_path / 'hf'}", max_length=32)
    assert imported.objective_name == original.objective_name == objective
    assert imported.objective.text_frame() == original.objective.text_frame()
    records = [{"source": "the fire spread across the mountains", "target": "fire spreads"},
               {"source": "police said the man was arrested", "target": "man arrested"}]
    loss, outputs = _seq2seq_loss_and_outputs(imported, records)
    expected_loss, expected_outputs = _seq2seq_loss_and_outputs(original, records)
    assert loss == pytest.approx(expected_loss, abs=1e-5) and outputs == expected_outputs


# ---- fine-tuned seq2seq runs ----------------------------------------------------------------------

def _copy_task(path: Path) -> Path:
    """Copy three to five words: a task a tiny model learns in a few epochs, so that the outputs
    compared below vary by input and end with </s> before the length limit."""
    words = "river market school music garden winter bridge letter doctor window".split()
    rng = torch.Generator().manual_seed(0)
    rows = [" ".join(words[i] for i in torch.randint(0, 10, (3 + i % 3,), generator=rng).tolist()) for i in range(320)]
    path.write_text("".join(json.dumps({"source": row, "target": row}) + "\n" for row in rows))
    return path


def _seq2seq_run(data: Path, tmp_path: Path, objective: str, tiny: dict, train: dict, epochs: int = 10) -> Path:
    run = _pretrain(data, tmp_path / "run", objective, {**tiny, "dropout": 0.0, "attention_dropout": 0.0}, train)
    ptmkit.finetune(task="seq2seq", init=run, out=tmp_path / "ft", train=_copy_task(tmp_path / "copy.jsonl"),
                    epochs=epochs, lr=3e-3, batch_size=16, max_length=24, max_target_length=16, progress=False)
    return tmp_path / "ft"


@pytest.mark.parametrize(("objective", "hf_class"), [
    ("bart", "BartForConditionalGeneration"), ("t5", "BartForConditionalGeneration"),
    ("mlm", "EncoderDecoderModel")])
def test_finetuned_seq2seq_run_exports_and_generates_as_ptmkit(objective, hf_class, data, tmp_path, tiny, train,
                                                               hf_messages, problems):
    """A seq2seq run on an encoder-decoder loads as BartForConditionalGeneration, or, warm-started
    from an encoder (mlm), as a BERT2BERT EncoderDecoderModel, with ptmkit's logits; HF's
    `generate()` with the exported settings writes exactly what `ptmkit generate` writes (bart's
    framing forces <s> first, t5 forces nothing)."""
    from ptmkit.finetuning.seq2seq_task import load_generator
    from ptmkit.hf.export import TARGETS, hf_inputs
    from ptmkit.model.generate import DecodeOptions
    ft = _seq2seq_run(data, tmp_path, objective, tiny, train)
    result = export_run(ft, tmp_path / "hf")
    assert result["class"] == hf_class and result["max_logit_difference"] <= 1e-4
    model = _load("AutoModelForSeq2SeqLM", tmp_path / "hf", hf_messages, problems)
    assert type(model).__name__ == hf_class
    loaded = ptmkit.load_run(ft)
    assert model.generation_config.decoder_start_token_id == loaded.decoder_start_id
    banned = model.generation_config.suppress_tokens + [w[0] for w in model.generation_config.bad_words_ids or []]
    assert sorted(banned) == loaded.task.never_generated()
    ids = _ids(600)
    target = next(t for t in TARGETS.values() if t.hf_class == hf_class)
    with torch.no_grad():
        theirs = model(**hf_inputs(loaded, target, ids)).logits
    torch.testing.assert_close(loaded.logits(ids), theirs, atol=1e-4, rtol=0)
    sources = ["river market school", "winter bridge letter doctor window", "music garden music river",
               "the fire spread across the mountains"]  # the last is nothing like training
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    with torch.no_grad():
        generated = model.generate(**tok(sources, padding=True, return_tensors="pt"))
    hf_texts = [" ".join(t.split()) for t in tok.batch_decode(generated, skip_special_tokens=True)]
    options = DecodeOptions(max_length=loaded.task.max_new_tokens)  # as the dev set was decoded
    ours = [" ".join(t.split()) for t in load_generator(ft)(sources, options, batch_size=8)]
    assert hf_texts == ours
    card = (tmp_path / "hf" / "README.md").read_text()
    assert "| task | seq2seq |" in card and "generation_config.json" in card
    assert objective != "mlm" or ("| objective | mlm run warm-starting a decoder, framed as bart |" in card
                                  and "tags: [ptmkit, mlm, bert2bert]" in card)


@pytest.mark.parametrize(("objective", "reason", "fix"), [
    ("clm", "decoder-only", "fine-tune an encoder-decoder"),
    ("plm", r"model.norm='pre' \(layout prenorm\) has no exact BERT equivalent",
     "warm-start the seq2seq run from an encoder pre-trained with the bert layout")])
def test_seq2seq_runs_without_an_hf_equivalent_are_refused_naming_the_fix(objective, reason, fix, data, tmp_path,
                                                                            tiny, train):
    ft = _seq2seq_run(data, tmp_path, objective, tiny, train, epochs=1)
    with pytest.raises(UserError, match=reason) as err:
        export_run(ft, tmp_path / "hf")
    assert fix in str(err.value) and not (tmp_path / "hf").exists()


def test_tagger_on_a_prefix_lm_is_refused_naming_why(data, tmp_path, tiny, train, capsys):
    """A prefix LM's fine-tuned states read the whole input both ways: GPT2ForTokenClassification
    would read it causally and disagree, so the export is one line naming that, and writes nothing."""
    run = _pretrain(data, tmp_path / "run", "prefixlm", tiny, train)
    conll = _tag_file(tmp_path / "train.conll")
    ptmkit.finetune(task="tag", init=run, out=tmp_path / "ft", train=conll, dev=conll, epochs=1,
                    batch_size=8, max_length=16, progress=False)
    line = _cli_error(["export", "--run", tmp_path / "ft", "--out", tmp_path / "hf"], capsys)
    assert "bidirectionally" in line and "prefixlm" in line and "clm" in line.split(":")[-1]
    assert not (tmp_path / "hf").exists()
