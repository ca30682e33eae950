"""`--init hf:DIR`: local random BERT / RoBERTa / GPT-2 / BART directories become ptmkit
backbones with identical logits, continue pre-training and fine-tune; bad directories are refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

import ptmkit
from ptmkit.cli import main
from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import UserError
from ptmkit.hf.export import export_run
from ptmkit.hf.importer import load_hf_network
from ptmkit.objectives.base import Vocab

transformers = pytest.importorskip("transformers", reason="transformers is not installed (pip install ptmkit[hf])")
import tokenizers  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

VOCAB = 500
ROBERTA_SPECIALS = {"bos_token": "<s>", "pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>",
                    "mask_token": "<mask>", "cls_token": "<s>", "sep_token": "</s>"}
BERT_SPECIALS = {"pad_token": "[PAD]", "unk_token": "[UNK]", "cls_token": "[CLS]", "sep_token": "[SEP]",
                 "mask_token": "[MASK]"}
GPT2_SPECIALS = {"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
CONTINUE = {"bert": "mlm", "roberta": "wwm", "gpt2": "clm", "bart": "bart"}


def _texts(lee: Path) -> list[str]:
    return [line for line in lee.read_text(errors="replace").splitlines() if line.strip()]


def _byte_bpe(texts: list[str], specials: list[str]) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=VOCAB, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    return tok


def _wordpiece(texts: list[str]) -> tokenizers.Tokenizer:
    tok = tokenizers.Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(
        vocab_size=VOCAB, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"], show_progress=False))
    return tok


def _hf_model(family: str):
    layers = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    if family == "bert":
        return transformers.BertForMaskedLM(transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=80, **layers))
    if family == "roberta":
        return transformers.RobertaForMaskedLM(transformers.RobertaConfig(
            vocab_size=VOCAB, max_position_embeddings=82, type_vocab_size=1, pad_token_id=1, bos_token_id=0,
            eos_token_id=2, **layers))
    if family == "gpt2":
        return transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=2, n_positions=80, bos_token_id=0, eos_token_id=0))
    return transformers.BartForConditionalGeneration(transformers.BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=1, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=80))


@pytest.fixture(scope="module")
def hf_dirs(lee: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Random tiny HF models with their tokenizers, saved with `save_pretrained` (BERT's weights
    as a pytorch_model.bin state dict, the others as model.safetensors)."""
    texts = _texts(lee)
    root = tmp_path_factory.mktemp("hf-models")
    byte_bpe = _byte_bpe(texts, ["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    tokenizers_of = {"bert": (_wordpiece(texts), BERT_SPECIALS), "roberta": (byte_bpe, ROBERTA_SPECIALS),
                     "gpt2": (_byte_bpe(texts, ["<|endoftext|>"]), GPT2_SPECIALS), "bart": (byte_bpe, ROBERTA_SPECIALS)}
    torch.manual_seed(0)
    dirs = {}
    for family, (tok, specials) in tokenizers_of.items():
        model = _hf_model(family)
        with torch.no_grad():  # biases, LayerNorms and BART's logits bias away from their 0/1 init
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter) * 0.05)
            if family == "bart":
                model.final_logits_bias.normal_()
        directory = root / family
        model.save_pretrained(directory)
        if family == "bert":
            torch.save(model.state_dict(), directory / "pytorch_model.bin")
            (directory / "model.safetensors").unlink()
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(directory)
        dirs[family] = directory
    return dirs


def _ids() -> torch.Tensor:
    return torch.randint(5, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))


def _hf_logits(directory: Path, ids: torch.Tensor) -> torch.Tensor:
    architecture = json.loads((directory / "config.json").read_text())["architectures"][0]
    model = getattr(transformers, architecture).from_pretrained(directory).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "bart"])
def test_imported_network_has_identical_logits(family, hf_dirs):
    network, imported = load_hf_network(f"hf:{hf_dirs[family]}")
    ids = _ids()
    with torch.no_grad():
        if family == "bart":
            from ptmkit.api import shift_right
            ours = network.logits(network.decode(shift_right(ids, imported.tokenizer.special.eos), network.encode(ids)))
        else:
            ours = network.logits(network.encode(ids, is_causal=family == "gpt2"))
    torch.testing.assert_close(ours, _hf_logits(hf_dirs[family], ids), atol=1e-4, rtol=0)


def test_imported_special_tokens_keep_their_ids(hf_dirs):
    bert = Tokenizer.from_hf(hf_dirs["bert"])
    assert (bert.special.pad, bert.special.unk, bert.special.cls, bert.special.sep, bert.special.mask) == (0, 1, 2, 3, 4)
    assert (bert.special.bos, bert.special.eos) == (2, 3) and bert.borrowed == {"bos": "cls", "eos": "sep"}
    assert bert.kind == "wordpiece" and bert.lowercase and bert.special.sentinels == ()
    roberta = Tokenizer.from_hf(hf_dirs["roberta"])
    assert (roberta.special.bos, roberta.special.pad, roberta.special.eos, roberta.special.unk,
            roberta.special.mask, roberta.special.cls, roberta.special.sep) == (0, 1, 2, 3, 4, 0, 2)
    assert roberta.borrowed == {} and Vocab.of(roberta).ordinary_range == (5, VOCAB)
    gpt2 = Tokenizer.from_hf(hf_dirs["gpt2"])
    assert set(gpt2.special.all()) == {0} and gpt2.borrowed["pad"] == "eos"
    # encoding is unchanged and special strings in text stay text
    hf_tok = transformers.AutoTokenizer.from_pretrained(hf_dirs["roberta"])
    assert roberta.encode("The fire spread.") == hf_tok("The fire spread.", add_special_tokens=False)["input_ids"]
    assert roberta.special.mask not in roberta.encode("a <mask> here")


def test_imported_tokenizer_round_trips_through_save_and_load(hf_dirs, tmp_path):
    tok = Tokenizer.from_hf(hf_dirs["roberta"])
    tok.save(tmp_path / "tok")
    meta = json.loads((tmp_path / "tok" / "ptmkit_tokenizer.json").read_text())
    assert meta["version"] == 2 and meta["special"]["mask"] == 4
    again = Tokenizer.load(tmp_path / "tok")
    assert again.special == tok.special and again.sha256() == tok.sha256() and again.kind == "bpe"


def test_sentinels_are_taken_when_the_tokenizer_has_them(lee, tmp_path):
    sentinels = [f"<extra_id_{i}>" for i in range(3)]
    tok = _byte_bpe(_texts(lee)[:200], ["<pad>", "</s>", "<unk>", *sentinels])
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                         unk_token="<unk>", additional_special_tokens=sentinels).save_pretrained(tmp_path)
    special = Tokenizer.from_hf(tmp_path).special
    assert special.sentinels == (3, 4, 5) and special.eos == 1


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2", "bart"])
def test_continued_pretraining_starts_from_the_imported_logits(family, hf_dirs, lee, tmp_path):
    """One step at a vanishing learning rate: the run's weights are the HF model's."""
    init = f"hf:{hf_dirs[family]}"
    run = tmp_path / "run"
    summary = ptmkit.pretrain(objective=CONTINUE[family], corpus=[lee], init=init, out=run, steps=1, lr=1e-12,
                              batch_size=4, seq_len=32, workers=0, progress=False)
    assert summary["steps"] == 1
    loaded = ptmkit.load_run(run)
    assert loaded.config["init"] == init and loaded.model_cfg.layout == {"roberta": "bert"}.get(family, family)
    assert Tokenizer.load(run / "tokenizer").special == Tokenizer.from_hf(hf_dirs[family]).special
    ids = _ids()
    torch.testing.assert_close(loaded.logits(ids), _hf_logits(hf_dirs[family], ids), atol=1e-4, rtol=0)
    assert export_run(run, tmp_path / "hf")["max_logit_difference"] <= 1e-4


def test_continued_pretraining_trains(hf_dirs, lee, tmp_path):
    run = tmp_path / "run"
    ptmkit.pretrain(objective="mlm", corpus=[lee], init=f"hf:{hf_dirs['roberta']}", out=run, steps=3, lr=1e-3,
                    batch_size=4, seq_len=32, workers=0, progress=False)
    ids = _ids()
    assert (ptmkit.load_run(run).logits(ids) - _hf_logits(hf_dirs["roberta"], ids)).abs().max() > 1e-3
    # the run's data was prepared with the imported tokenizer, and can be reused
    again = tmp_path / "again"
    ptmkit.pretrain(objective="electra", data=run / "data", init=f"hf:{hf_dirs['roberta']}", out=again, steps=1,
                    batch_size=4, seq_len=32, workers=0, progress=False)
    assert export_run(again, tmp_path / "hf")["class"] == "ElectraForPreTraining"

    def mask_flags(directory: Path) -> tuple[bool, bool]:
        tokens = json.loads((directory / "tokenizer.json").read_text())["added_tokens"]
        (mask,) = [t for t in tokens if t["content"] == "<mask>"]
        return mask["lstrip"], mask["rstrip"]
    # its mask keeps the imported tokenizer's own flags: ptmkit's own bpe strips the space after a
    # mask because its normalizer gives the next text one back, which this tokenizer does not
    assert mask_flags(tmp_path / "hf") == mask_flags(hf_dirs["roberta"])


@pytest.mark.parametrize("family", ["bert", "gpt2", "bart"])
def test_fine_tuning_from_an_imported_model(family, hf_dirs, tmp_path):
    task = tmp_path / "task.tsv"
    task.write_text("sentence\tlabel\n" + "".join(f"the fire {'spread' if i % 2 else 'ended'} today\t{i % 2}\n"
                                                  for i in range(24)))
    out = tmp_path / "ft"
    result = ptmkit.finetune(task="classify", init=f"hf:{hf_dirs[family]}", out=out, train=task,
                             text_fields="sentence", epochs=1, batch_size=8, max_length=16, progress=False)
    assert result["init"] == f"hf:{hf_dirs[family]}" and 0 <= result["accuracy"] <= 1
    loaded = ptmkit.load_run(out)
    assert loaded.logits(_ids()).shape == (2, 2) and loaded.encode(["the fire"]).shape == (1, 32)
    if family == "bert":
        assert export_run(out, tmp_path / "hf")["class"] == "BertForSequenceClassification"


def test_fine_tuning_dropout_reaches_an_imported_model(hf_dirs):
    from ptmkit.finetuning.model import load_backbone
    backbone = load_backbone(f"hf:{hf_dirs['bert']}", max_length=16, dropout=0.3)
    assert backbone.model_cfg.dropout == backbone.model_cfg.attention_dropout == 0.3
    assert {m.p for m in backbone.network.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}


def test_cli_pretrain_with_hf_init(hf_dirs, lee, tmp_path):
    assert main(["pretrain", "--objective", "clm", "--init", f"hf:{hf_dirs['gpt2']}", "--corpus", str(lee),
                 "--steps", "1", "--batch-size", "4", "--seq-len", "32", "--workers", "0", "--no-progress",
                 "--out", str(tmp_path / "run")]) == 0
    assert main(["prepare", "--corpus", str(lee), "--tokenizer", f"hf:{hf_dirs['gpt2']}", "--out",
                 str(tmp_path / "data"), "--seq-len", "32"]) == 0
    assert Tokenizer.load(tmp_path / "data" / "tokenizer").special == Tokenizer.from_hf(hf_dirs["gpt2"]).special


# ---- refusals ---------------------------------------------------------------------------------

def _error(capsys, args: list) -> str:
    code = main([str(a) for a in args])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("ptmkit: error: "), err
    return err


def test_missing_or_invalid_directories_are_refused(hf_dirs, lee, tmp_path, capsys):
    pretrain = ["pretrain", "--objective", "mlm", "--corpus", lee, "--steps", "1", "--out", tmp_path / "run"]
    assert "no such directory" in _error(capsys, [*pretrain, "--init", f"hf:{tmp_path / 'nowhere'}"])
    assert "bert-base-uncased" in _error(capsys, [*pretrain, "--init", "hf:bert-base-uncased"])  # no hub lookup
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no config.json" in _error(capsys, [*pretrain, "--init", f"hf:{empty}"])
    assert not (tmp_path / "run").exists()

    broken = tmp_path / "broken"
    shutil.copytree(hf_dirs["bert"], broken)
    (broken / "pytorch_model.bin").unlink()
    err = _error(capsys, ["finetune", "--task", "classify", "--train", lee, "--init", f"hf:{broken}",
                          "--out", tmp_path / "ft"])
    assert "no model.safetensors or pytorch_model.bin" in err
    (broken / "pytorch_model.bin").write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="cannot read the weights"):
        load_hf_network(f"hf:{broken}")
    (broken / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="no tokenizer.json"):
        load_hf_network(f"hf:{broken}")


def test_configs_ptmkit_cannot_express_are_refused(hf_dirs, tmp_path):
    def variant(name: str, family: str, **changes) -> str:
        directory = tmp_path / name
        shutil.copytree(hf_dirs[family], directory)
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, **changes}))
        return f"hf:{directory}"

    with pytest.raises(UserError, match="model_type") as err:
        load_hf_network(variant("xlnet", "bert", model_type="xlnet"))
    assert "model_type" in err.value.where
    with pytest.raises(UserError, match="position_embedding_type"):
        load_hf_network(variant("relative", "bert", position_embedding_type="relative_key"))
    with pytest.raises(UserError, match="scale_embedding"):
        load_hf_network(variant("scaled", "bart", scale_embedding=True))
    with pytest.raises(UserError, match="scale_attn_by_inverse_layer_idx"):
        load_hf_network(variant("layer-scaled", "gpt2", scale_attn_by_inverse_layer_idx=True))


def test_incompatible_objective_tokenizer_and_data_are_refused(hf_dirs, lee, data, tmp_path, capsys):
    base = ["--corpus", lee, "--steps", "1", "--out", tmp_path / "run"]
    err = _error(capsys, ["pretrain", "--objective", "clm", "--init", f"hf:{hf_dirs['bert']}", *base])
    assert "--objective" in err and "mlm" in err
    err = _error(capsys, ["pretrain", "--objective", "mlm", "--init", f"hf:{hf_dirs['bert']}",
                          "--tokenizer", data / "tokenizer", *base])
    assert "--tokenizer" in err
    err = _error(capsys, ["pretrain", "--objective", "mlm", "--init", f"hf:{hf_dirs['bert']}", "--data", data,
                          "--steps", "1", "--out", tmp_path / "run"])
    assert "another tokenizer" in err and f"--tokenizer hf:{hf_dirs['bert']}" in err
    assert not (tmp_path / "run").exists()


def test_t5_without_sentinels_is_refused_naming_the_tokenizer(hf_dirs, lee, tmp_path, capsys):
    """A BART tokenizer without <extra_id_N> cannot run t5: said plainly (not "use a shorter
    --seq-len", which no length would fix), before anything is written."""
    err = _error(capsys, ["pretrain", "--objective", "t5", "--init", f"hf:{hf_dirs['bart']}", "--corpus", lee,
                          "--steps", "1", "--seq-len", "32", "--out", tmp_path / "run"])
    assert "sentinel" in err and "tokenizer.json" in err and "--objective" in err and "bart, mass" in err
    assert "--seq-len" not in err
    assert not (tmp_path / "run").exists()


def test_config_values_that_are_not_sizes_name_the_field(hf_dirs, tmp_path):
    for field, value in (("num_hidden_layers", "two"), ("hidden_size", None), ("intermediate_size", [64]),
                         ("num_attention_heads", 0), ("hidden_size", -32)):  # sizes: positive, not a crash
        directory = tmp_path / f"{field}-{value}"
        shutil.copytree(hf_dirs["bert"], directory)
        config = json.loads((directory / "config.json").read_text())
        (directory / "config.json").write_text(json.dumps({**config, field: value}))
        with pytest.raises(UserError, match=f"{field}=") as err:
            load_hf_network(f"hf:{directory}")
        assert err.value.where == f"{directory / 'config.json'}: {field}"
    del config["num_attention_heads"]
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UserError, match="lacks num_attention_heads") as err:
        load_hf_network(f"hf:{directory}")
    assert err.value.where.endswith("config.json: num_attention_heads")


def test_legacy_layernorm_names_are_read_as_transformers_reads_them(hf_dirs, tmp_path):
    """The original BERT checkpoints' pytorch_model.bin names LayerNorms `gamma` / `beta`."""
    directory = tmp_path / "legacy"
    shutil.copytree(hf_dirs["bert"], directory)
    state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    legacy = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in state.items()}
    assert sum(k.endswith("LayerNorm.gamma") for k in legacy) == 6  # embeddings, 2 x 2 layers, LM head
    torch.save(legacy, directory / "pytorch_model.bin")
    network, _ = load_hf_network(f"hf:{directory}")
    ids = _ids()
    with torch.no_grad():
        ours = network.logits(network.encode(ids))
    torch.testing.assert_close(ours, _hf_logits(hf_dirs["bert"], ids), atol=1e-4, rtol=0)


# ---- an imported tokenizer's missing roles, exported again ---------------------------------------

def test_export_of_an_imported_tokenizer_without_some_roles_sets_ptmkits_ids(lee, tmp_path):
    """A role the imported tokenizer lacks is never left to a transformers default (GPT-2's 50256
    outside a 500-id vocabulary, BART's bos 0 = <unk> here): each config id names the token ptmkit
    used for it (the stand-in), and a missing pad stays unset in GPT-2."""
    texts = _texts(lee)
    sentinels = [f"<extra_id_{i}>" for i in range(20)]
    cases = {  # name: (HF model, tokenizer, its named specials, objective, roles it lacks)
        "gpt2-wordpiece": (_hf_model("gpt2"), _wordpiece(texts), BERT_SPECIALS, "clm", {"bos", "eos"}),
        "gpt2": (_hf_model("gpt2"), _byte_bpe(texts, ["<|endoftext|>"]), GPT2_SPECIALS, "clm", {"pad"}),
        "bart-t5-tokenizer": (_hf_model("bart"), _byte_bpe(texts, ["<unk>", "</s>", "<pad>", *sentinels]),
                              {"unk_token": "<unk>", "eos_token": "</s>", "pad_token": "<pad>",
                               "additional_special_tokens": sentinels}, "t5", {"bos"}),
    }
    for name, (model, tok, specials, objective, lacking) in cases.items():
        source = tmp_path / name
        model.save_pretrained(source)
        transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **specials).save_pretrained(source)
        run = tmp_path / f"run-{name}"
        ptmkit.pretrain(objective=objective, corpus=[lee], init=f"hf:{source}", out=run, steps=1,
                        batch_size=4, seq_len=32, workers=0, progress=False)
        ours = Tokenizer.load(run / "tokenizer")
        assert lacking <= set(ours.borrowed), (name, ours.borrowed)
        export_run(run, tmp_path / f"hf-{name}")
        config = json.loads((tmp_path / f"hf-{name}" / "config.json").read_text())
        generation = json.loads((tmp_path / f"hf-{name}" / "generation_config.json").read_text())
        for role in ("pad", "bos", "eos"):
            # GPT-2 starts from its end-of-text token, which clm puts between documents
            played = "eos" if role == "bos" and name.startswith("gpt2") else role
            expected = None if role == "pad" and "pad" in ours.borrowed else getattr(ours.special, played)
            assert config[f"{role}_token_id"] == expected, (name, role, config)
            assert generation.get(f"{role}_token_id") == expected, (name, role, generation)
        ids = [v for k, v in config.items() if k.endswith("token_id") and v is not None]
        assert all(0 <= i < ours.vocab_size for i in ids), (name, config)
    # what ptmkit meant: BERT's [SEP] ends GPT-2's documents (and generation) as its eos
    config = json.loads((tmp_path / "hf-gpt2-wordpiece" / "config.json").read_text())
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf-gpt2-wordpiece")
    assert hf_tok.convert_ids_to_tokens(config["eos_token_id"]) == "[SEP]"


# ---- --overwrite with broken weights -------------------------------------------------------------

def _broken(hf_dirs, tmp_path: Path, family: str, how: str) -> Path:
    directory = tmp_path / f"{family}-{how}"
    shutil.copytree(hf_dirs[family], directory)
    if (directory / "model.safetensors").is_file():
        from safetensors.torch import load_file, save_file
        state = load_file(str(directory / "model.safetensors"))
    else:
        state = torch.load(directory / "pytorch_model.bin", weights_only=True)
    name = next(k for k in state if k.endswith(("layer.1.intermediate.dense.weight", "h.1.mlp.c_fc.weight")))
    if how == "shape":
        state[name] = torch.zeros(state[name].shape[0], state[name].shape[1] + 3)
    else:
        del state[name]
    if (directory / "model.safetensors").is_file():
        save_file(state, str(directory / "model.safetensors"))
    else:
        torch.save(state, directory / "pytorch_model.bin")
    return directory


@pytest.mark.parametrize("family, how", [("gpt2", "shape"), ("gpt2", "missing"), ("bert", "shape")])
def test_overwrite_with_broken_weights_keeps_the_old_run(family, how, hf_dirs, lee, tmp_path, capsys):
    """A wrong shape or a missing tensor is refused before --overwrite deletes the old run
    (gpt2: model.safetensors, checked from its header; bert: pytorch_model.bin)."""
    objective = CONTINUE[family]
    base = ["pretrain", "--objective", objective, "--corpus", lee, "--steps", "1", "--batch-size", "4",
            "--seq-len", "32", "--workers", "0", "--no-progress", "--out", tmp_path / "run"]
    assert main([str(a) for a in [*base, "--init", f"hf:{hf_dirs[family]}"]]) == 0
    capsys.readouterr()
    before = {p.relative_to(tmp_path / "run"): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    broken = _broken(hf_dirs, tmp_path, family, how)
    err = _error(capsys, [*base, "--init", f"hf:{broken}", "--overwrite"])
    assert ("has shape" if how == "shape" else "is missing") in err and str(broken) in err
    after = {p.relative_to(tmp_path / "run"): p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert after == before


def test_weights_are_checked_from_the_safetensors_header_and_read_once(hf_dirs, lee, tmp_path, monkeypatch):
    """The check before anything is written reads no tensor data of model.safetensors, and a
    pytorch_model.bin, which has to be loaded for it, is not loaded a second time."""
    import safetensors.torch
    reads: list[str] = []
    load_file, load = safetensors.torch.load_file, torch.load

    def counting_load_file(path, *args, **kwargs):
        reads.append(str(path))
        return load_file(path, *args, **kwargs)

    def counting_load(path, *args, **kwargs):
        reads.append(str(path))
        return load(path, *args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "load_file", counting_load_file)
    monkeypatch.setattr(torch, "load", counting_load)
    from ptmkit.hf.importer import check_weights, read_hf
    model = read_hf(f"hf:{hf_dirs['gpt2']}", weights=False)
    check_weights(model)
    assert reads == [] and model.state == {}
    for family in ("gpt2", "bert"):
        reads.clear()
        ptmkit.pretrain(objective=CONTINUE[family], corpus=[lee], init=f"hf:{hf_dirs[family]}",
                        out=tmp_path / family, steps=1, lr=1e-12, batch_size=4, seq_len=32, workers=0,
                        progress=False)
        weights = hf_dirs[family] / ("model.safetensors" if family == "gpt2" else "pytorch_model.bin")
        assert reads.count(str(weights)) == 1, reads
        ids = _ids()
        torch.testing.assert_close(ptmkit.load_run(tmp_path / family).logits(ids), _hf_logits(hf_dirs[family], ids),
                                   atol=1e-4, rtol=0)
