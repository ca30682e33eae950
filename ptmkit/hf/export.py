"""`ptmkit export --format hf`: a run as a `transformers` model directory with identical logits.

What maps where (the run's objective, or the fine-tuned task):

* encoders with an MLM head (mlm, wwm)  -> `BertForMaskedLM`
* electra (its discriminator)            -> `ElectraForPreTraining`
* decoder-only (clm, prefixlm)           -> `GPT2LMHeadModel` (causal; a prefix LM's prefix
  mask is per input and is not part of the exported model)
* encoder-decoder (bart, mass, t5)       -> `BartForConditionalGeneration`, with the objective's
  decoder start token (bart: </s>, t5: pad, mass: <s>) as `decoder_start_token_id`
* fine-tuned classify / regress runs on a first-token-pooled Transformer encoder
                                         -> `BertForSequenceClassification` (id2label)
* fine-tuned tag / keyphrase runs        -> `BertForTokenClassification` (id2label), or
  `GPT2ForTokenClassification` for clm backbones (a fine-tuned prefix LM reads its input both
  ways, which no GPT-2 class does, and is refused)
* fine-tuned seq2seq runs on a bart, mass or t5 run
                                         -> `BartForConditionalGeneration`, its generation_config
  decoding greedily as the fine-tuning scored its dev set (a decoder-only run is refused)
* fine-tuned seq2seq runs on an encoder (mlm, wwm, electra), which warm-started a decoder and
  kept the encoder's BERT layout
                                         -> `EncoderDecoderModel` of a `BertModel` and a
  `BertLMHeadModel` (BERT2BERT), generating as above

Every tensor has an exact counterpart; a layout detail HF cannot express is refused with a
UserError naming the option (norm placement, embedding LayerNorm, final norm, LM-head transform
or bias, untied embeddings, an activation the head would disagree on, BART's fixed LayerNorm
eps, relative-position objectives). After conversion the HF model is run on a probe input and
compared with `ptmkit.load_run(run).logits`; the directory is written only if they agree.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import Tensor

import ptmkit
from ptmkit.api import RunModel, load_run, shift_right
from ptmkit.errors import UserError
from ptmkit.fileio import share
from ptmkit.finetuning.run import kept_model
from ptmkit.hf import convert, require_transformers
from ptmkit.model.backbone import Transformer
from ptmkit.model.config import ModelConfig

FORMATS = ("hf",)
TOLERANCE = 1e-4
HF_ACTIVATION = {"gelu": "gelu", "gelu_tanh": "gelu_pytorch_tanh", "relu": "relu"}


@dataclass(frozen=True)
class Target:
    family: str
    """A key of TARGETS."""
    hf_class: str
    auto_class: str


TARGETS = {
    "bert_mlm": Target("bert_mlm", "BertForMaskedLM", "AutoModelForMaskedLM"),
    "electra": Target("electra", "ElectraForPreTraining", "AutoModelForPreTraining"),
    "gpt2": Target("gpt2", "GPT2LMHeadModel", "AutoModelForCausalLM"),
    "bart": Target("bart", "BartForConditionalGeneration", "AutoModelForSeq2SeqLM"),
    "bert2bert": Target("bert2bert", "EncoderDecoderModel", "AutoModelForSeq2SeqLM"),
    "bert_seqcls": Target("bert_seqcls", "BertForSequenceClassification", "AutoModelForSequenceClassification"),
    "bert_tokcls": Target("bert_tokcls", "BertForTokenClassification", "AutoModelForTokenClassification"),
    "gpt2_tokcls": Target("gpt2_tokcls", "GPT2ForTokenClassification", "AutoModelForTokenClassification"),
}
BERT_FAMILIES = ("bert_mlm", "electra", "bert_seqcls", "bert_tokcls")
GPT2_FAMILIES = ("gpt2", "gpt2_tokcls")
SEQ2SEQ_FAMILIES = ("bart", "bert2bert")
BERT_LM_HEADS = ("bert_mlm", "bert2bert")
"""Targets ending in BERT's LM head (`cls.predictions`: transform, tied decoder, bias)."""


# ---- what a run exports to, and why not ---------------------------------------------------------

def plan_export(run: RunModel) -> Target:
    """The HF class a loaded run maps onto exactly, or a UserError naming what prevents it."""
    where = str(run.run / "config.yaml")
    if run.kind == "finetune":
        target = _finetune_target(run, where)
    else:
        target = _pretrain_target(run, where)
    _check_layout(run.cfg, target, where)
    if run.tokenizer.vocab_size > run.cfg.vocab_size:
        raise UserError(f"the tokenizer has {run.tokenizer.vocab_size} ids but the model only "
                        f"{run.cfg.vocab_size} embeddings", f"{where}: model.vocab_size",
                        "export a run whose model.vocab_size covers its tokenizer")
    return TARGETS[target]


def _pretrain_target(run: RunModel, where: str) -> str:
    architecture = run.architecture
    if run.objective == "electra":
        return "electra"
    if architecture == "encoder" and not isinstance(run.network, Transformer):  # contrastive's pair encoder
        raise UserError(f"objective {run.objective} trains no language-model head, nothing to export as a "
                        "transformers masked LM", f"{where}: objective",
                        "fine-tune the run and export that (a BERT-layout classifier exports as "
                        "BertForSequenceClassification), or use it through ptmkit.load_run")
    if architecture == "encoder":
        return "bert_mlm"
    if architecture in ("decoder", "prefix"):
        return "gpt2"
    if architecture == "encoder_decoder":
        return "bart"
    if architecture == "two_stream":
        raise UserError(f"objective {run.objective} has no exact Hugging Face equivalent: its HF "
                        "counterparts (XLNet, MPNet) use relative positions, ptmkit's two-stream "
                        "backbone absolute ones", f"{where}: objective",
                        "fine-tune the run (a BERT-layout fine-tuned encoder exports as "
                        "BertForSequenceClassification) or use it through ptmkit.load_run")
    raise UserError(f"objective {run.objective} trains no Transformer ({architecture}), nothing "
                    "to export as a transformers model", f"{where}: objective",
                    "export mlm, wwm, electra, clm, prefixlm, bart, mass or t5 runs")


def _finetune_target(run: RunModel, where: str) -> str:
    from ptmkit.finetuning.seq2seq_task import Seq2Seq
    from ptmkit.finetuning.tasks import Classify, Regress
    from ptmkit.finetuning.tagging import Tag
    task = run.task.spec.name
    if isinstance(run.task, Seq2Seq):
        if run.architecture != "encoder_decoder":
            raise UserError(f"the seq2seq run on {run.objective} is decoder-only: GPT-2 has no "
                            "[SEP]-joined source-target framing to generate with", f"{where}: objective",
                            "fine-tune an encoder-decoder (bart, mass, t5, or an encoder run, which "
                            "warm-starts one) to export, or export the pre-training run")
        # an encoder run warm-started it and kept its layers' layout (BART's has no LM-head transform)
        return "bart" if run.cfg.layout == "bart" else "bert2bert"
    token_level = isinstance(run.task, Tag)
    if not (token_level or type(run.task) in (Classify, Regress)):
        raise UserError(f"fine-tuned task {task!r} has no exact Hugging Face class", f"{where}: task",
                        "export classify, regress, tag, keyphrase or seq2seq runs (or the pre-training run)")
    if not isinstance(run.backbone, Transformer):
        raise UserError(f"the {run.objective} backbone is not a Transformer (ELMo's biLM)",
                        f"{where}: objective", "export runs fine-tuned from a Transformer objective")
    if run.architecture == "prefix":  # fine-tuning read the input both ways, in GPT-2's layout
        raise UserError(f"the {task} run on {run.objective} reads its input bidirectionally (the whole "
                        "input is a prefix LM's prefix), which no GPT-2 class does", f"{where}: objective",
                        f"fine-tune an encoder (mlm, wwm, electra){' or clm' if token_level else ''} to "
                        "export, or use this one through ptmkit.load_run")
    causal = run.architecture == "decoder"
    if token_level:
        return "gpt2_tokcls" if causal else "bert_tokcls"
    if causal:  # BERT would read its features bidirectionally, GPT-2's classifier has no pooler
        raise UserError(f"the {task} run on {run.objective} is decoder-only: its features are causal, and "
                        "GPT2ForSequenceClassification reads the last token without ptmkit's pooler",
                        f"{where}: objective", "fine-tune an encoder (mlm, wwm, electra) with --pooling first "
                        "to export a classifier, or use this one through ptmkit.load_run")
    pooling = run.pooling  # what the fine-tuning pooled (--pooling, or the backbone's default)
    if pooling != "first":
        kind = "the last token" if pooling == "last" else "the mean of the tokens"
        raise UserError(f"the {task} run on {run.objective} pools {kind} (task.pooling={pooling!r}); "
                        "BertForSequenceClassification pools the first token through its pooler (and "
                        "GPT2ForSequenceClassification has no pooler)", f"{where}: task.pooling",
                        "fine-tune an encoder (mlm, wwm, electra) with --pooling first (its default) to export")
    return "bert_seqcls"


def _check_layout(cfg: ModelConfig, target: str, where: str) -> None:
    family, layout = ("GPT-2", "gpt2") if target in GPT2_FAMILIES else (
        ("BART", "bart") if target == "bart" else ("BERT", "bert"))
    fix = f"pre-train with the {layout} layout (a model file with `layout: {layout}`) to export"
    if target == "bert2bert":
        fix = ("warm-start the seq2seq run from an encoder pre-trained with the bert layout (the default "
               "of mlm, wwm and electra; a model file with `layout: bert` for others) to export")
    needs: dict[str, Any] = {
        "bert": {"norm": "post", "layernorm_embedding": True, "final_norm": False},
        "gpt2": {"norm": "pre", "layernorm_embedding": False, "final_norm": True},
        "bart": {"norm": "post", "layernorm_embedding": True, "final_norm": False,
                 "lm_head_transform": False, "tie_embeddings": True, "norm_eps": 1e-5},
    }[layout]
    if target in BERT_LM_HEADS:
        needs = {**needs, "lm_head_transform": True, "tie_embeddings": True}
    if target == "gpt2":
        needs = {**needs, "lm_head_transform": False, "lm_head_bias": False, "tie_embeddings": True}
    for field, expected in needs.items():
        value = getattr(cfg, field)
        if value != expected:
            raise UserError(f"model.{field}={value!r} (layout {cfg.layout}) has no exact {family} "
                            f"equivalent, which needs {field}={expected!r}", f"{where}: model.{field}", fix)
    if target in BERT_LM_HEADS and cfg.activation == "relu":
        raise UserError("model.activation='relu': BERT's LM-head transform would use relu too, "
                        "ptmkit's uses GELU", f"{where}: model.activation",
                        "pre-train with activation gelu or gelu_tanh to export")


# ---- configs and weights ----------------------------------------------------------------------

def hf_config(run: RunModel, target: Target, transformers: Any) -> Any:
    cfg, special = run.cfg, run.tokenizer.special
    # Every id is set explicitly, never left to a transformers default (GPT-2's 50256, BART's
    # 0/1/2, BERT's pad 0: outside the vocabulary or another token). A role an imported tokenizer
    # lacks (run.tokenizer.borrowed) gets the stand-in ptmkit used, e.g. [SEP] as BERT's eos, which
    # ends generation in ptmkit too; but a missing pad stays None in BERT and GPT-2 (GPT-2's own
    # convention; as padding_idx, BERT would freeze the stand-in's embedding row in HF training).
    # Encoder-decoders keep the stand-in: they build their decoder input with pad_token_id.
    unset = {"pad"} & set(run.tokenizer.borrowed) if target.family not in SEQ2SEQ_FAMILIES else set()
    common = {"vocab_size": cfg.vocab_size, "tie_word_embeddings": True,
              **{f"{role}_token_id": None if role in unset else getattr(special, _role(role, target))
                 for role in ("pad", "bos", "eos")}}
    if run.kind == "finetune" and target.family not in SEQ2SEQ_FAMILIES:
        labels = run.task.spec.labels if run.task.spec.name != "regress" else ["score"]
        common.update(num_labels=len(labels), id2label=dict(enumerate(labels)),
                      label2id={label: i for i, label in enumerate(labels)})
        if target.family == "bert_seqcls":
            common["problem_type"] = ("regression" if run.task.spec.name == "regress"
                                      else "single_label_classification")
    bert_like = {"hidden_size": cfg.hidden, "num_hidden_layers": cfg.n_layers,
                 "num_attention_heads": cfg.heads, "intermediate_size": cfg.ffn,
                 "hidden_act": HF_ACTIVATION[cfg.activation], "hidden_dropout_prob": cfg.dropout,
                 "attention_probs_dropout_prob": cfg.attention_dropout,
                 "max_position_embeddings": cfg.max_positions,
                 "type_vocab_size": max(1, cfg.type_vocab_size), "layer_norm_eps": cfg.norm_eps,
                 "position_embedding_type": "absolute"}
    if target.family == "electra":
        return transformers.ElectraConfig(**common, **bert_like, embedding_size=cfg.hidden)
    if target.family in BERT_FAMILIES:
        return transformers.BertConfig(**common, **bert_like)
    if target.family == "bert2bert":
        decoder = {**bert_like, "num_hidden_layers": cfg.n_decoder_layers}
        return transformers.EncoderDecoderConfig.from_encoder_decoder_configs(
            transformers.BertConfig(**common, **bert_like), transformers.BertConfig(**common, **decoder),
            **common, decoder_start_token_id=run.decoder_start_id)
    if target.family in GPT2_FAMILIES:
        return transformers.GPT2Config(
            **common, n_positions=cfg.max_positions, n_embd=cfg.hidden, n_layer=cfg.n_layers,
            n_head=cfg.heads, n_inner=cfg.ffn, activation_function=HF_ACTIVATION[cfg.activation],
            resid_pdrop=cfg.dropout, embd_pdrop=cfg.dropout, attn_pdrop=cfg.attention_dropout,
            layer_norm_epsilon=cfg.norm_eps, scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False)
    return transformers.BartConfig(
        **common, d_model=cfg.hidden, encoder_layers=cfg.n_layers, decoder_layers=cfg.n_decoder_layers,
        encoder_attention_heads=cfg.heads, decoder_attention_heads=cfg.heads,
        encoder_ffn_dim=cfg.ffn, decoder_ffn_dim=cfg.ffn, activation_function=HF_ACTIVATION[cfg.activation],
        dropout=cfg.dropout, attention_dropout=cfg.attention_dropout, activation_dropout=0.0,
        max_position_embeddings=cfg.max_positions, scale_embedding=False,
        decoder_start_token_id=run.decoder_start_id, forced_eos_token_id=None, forced_bos_token_id=None,
        is_encoder_decoder=True)


def hf_state(run: RunModel, target: Target) -> dict[str, Tensor]:
    """The HF state dict (tied copies included) of a run's weights."""
    cfg = run.cfg
    state = {k: v.detach().float() for k, v in run.backbone.state_dict().items()}
    head_state = ({k: v.detach().float() for k, v in run.network.head.state_dict().items()}
                  if run.kind == "finetune" else {})  # seq2seq: none, the tied LM head is the output
    if "lm_head.proj.bias" not in state and target.family in (*BERT_FAMILIES, *BERT_LM_HEADS):
        state["lm_head.proj.bias"] = torch.zeros(cfg.vocab_size)
    if target.family == "bert2bert":
        out = convert.rules_to_hf(convert.bert_rules(cfg, "encoder.", None), state)
        out.update(convert.rules_to_hf(convert.bert_rules(cfg, "decoder.bert.", "bert", "decoder", "decoder."), state))
        out.update(_bert_embeddings(cfg, state, "embed", "encoder."))
        out.update(_bert_embeddings(cfg, state, "decoder_embed", "decoder.bert."))
        out.update({name: state[ours].clone() for name, ours in convert.bert_tied("bert", "decoder.").items()})
        # the encoder is a BertModel with a pooler, which EncoderDecoderModel never reads: zeros
        # say so, where random weights would look trained
        out["encoder.pooler.dense.weight"] = torch.zeros(cfg.hidden, cfg.hidden)
        out["encoder.pooler.dense.bias"] = torch.zeros(cfg.hidden)
        return out
    if target.family in BERT_FAMILIES:
        base = "electra." if target.family == "electra" else "bert."
        head = "bert" if target.family == "bert_mlm" else None
        out = convert.rules_to_hf(convert.bert_rules(cfg, base, head), state)
        out.update(_bert_embeddings(cfg, state, "embed", base))
        for name, ours in convert.bert_tied(head).items():
            out[name] = state[ours].clone()
        if target.family == "electra":
            disc = run.network.discriminator_head.state_dict()
            out.update({"discriminator_predictions.dense.weight": disc["dense.weight"],
                        "discriminator_predictions.dense.bias": disc["dense.bias"],
                        "discriminator_predictions.dense_prediction.weight": disc["out.weight"],
                        "discriminator_predictions.dense_prediction.bias": disc["out.bias"]})
        elif target.family == "bert_seqcls":
            out.update({"bert.pooler.dense.weight": head_state["pooler.weight"],
                        "bert.pooler.dense.bias": head_state["pooler.bias"],
                        "classifier.weight": head_state["out.weight"], "classifier.bias": head_state["out.bias"]})
        elif target.family == "bert_tokcls":
            out.update({"classifier.weight": head_state["out.weight"], "classifier.bias": head_state["out.bias"]})
        return out
    if target.family in GPT2_FAMILIES:
        out = convert.rules_to_hf(convert.gpt2_rules(cfg), state)
        out["transformer.wte.weight"] = state["embed.tokens.weight"].clone()
        out["transformer.wpe.weight"] = convert.export_positions(
            cfg, state["embed.positions.weight"], state.get("embed.types.weight"), cfg.max_positions, 0)
        if target.family == "gpt2":
            out.update({name: state[ours].clone() for name, ours in convert.GPT2_TIED.items()})
        else:
            out.update({"classifier.weight": head_state["out.weight"], "classifier.bias": head_state["out.bias"]})
        return out
    out = convert.rules_to_hf(convert.bart_rules(cfg), state)
    out["model.shared.weight"] = state["embed.tokens.weight"].clone()
    for ours, hf in (("embed", "encoder"), ("decoder_embed", "decoder")):
        out[f"model.{hf}.embed_positions.weight"] = convert.export_positions(
            cfg, state[f"{ours}.positions.weight"], state.get(f"{ours}.types.weight"), cfg.max_positions + 2, 2)
    bias = state.get("lm_head.proj.bias", torch.zeros(cfg.vocab_size))
    out["final_logits_bias"] = bias[None].clone()
    out.update({name: state[ours].clone() for name, ours in convert.BART_TIED.items()})
    return out


def _bert_embeddings(cfg: ModelConfig, state: dict[str, Tensor], ours: str, base: str) -> dict[str, Tensor]:
    """BERT's word, position and token-type tables from ptmkit's `ours` embeddings ("embed",
    "decoder_embed"; their tokens are always the shared `embed.tokens`)."""
    types = state.get(f"{ours}.types.weight")
    return {f"{base}embeddings.word_embeddings.weight": state["embed.tokens.weight"].clone(),
            f"{base}embeddings.position_embeddings.weight": convert.export_positions(
                cfg, state[f"{ours}.positions.weight"], None, cfg.max_positions, 0),
            f"{base}embeddings.token_type_embeddings.weight": (
                types.clone() if types is not None else torch.zeros(1, cfg.hidden))}


_IGNORED_MISSING = ("position_ids", "token_type_ids", ".attn.bias", ".attn.masked_bias")


def build_hf_model(run: RunModel, target: Target, transformers: Any) -> Any:
    """The HF model holding the run's weights, in eval mode."""
    model = getattr(transformers, target.hf_class)(hf_config(run, target, transformers))
    state = hf_state(run, target)
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state and not k.endswith(_IGNORED_MISSING))
    unexpected = sorted(k for k in state if k not in expected)
    if missing or unexpected:  # a bug in the maps (or a transformers release that renamed things)
        raise RuntimeError(f"{target.hf_class}: weights missing {missing[:5]}, unexpected {unexpected[:5]}")
    for name, value in state.items():
        if expected[name].shape != value.shape:
            raise RuntimeError(f"{target.hf_class}.{name}: shape {tuple(value.shape)}, "
                               f"expected {tuple(expected[name].shape)}")
    model.load_state_dict(state, strict=False)
    if run.kind == "finetune" and target.family in SEQ2SEQ_FAMILIES:
        _generate_as_fine_tuning(run, model.generation_config)
    return model.eval()


def _generate_as_fine_tuning(run: RunModel, generation: Any) -> None:
    """`generate()` settings that decode as the seq2seq fine-tuning scored its dev set: the
    forced target prefix (BART's <s>), the special ids it never emits, its target length (the
    decoder start comes from the model config, as for pre-training runs)."""
    frame = run.objective_impl.text_frame()
    forced = frame.target_prefix[0] if frame.target_prefix else None
    never = run.task.never_generated()
    generation.forced_bos_token_id = forced
    # transformers refuses to save a forced token that is also suppressed; as a "bad word" it is
    # banned all the same once it has been forced
    generation.suppress_tokens = [i for i in never if i != forced]
    generation.bad_words_ids = [[forced]] if forced in never else None
    generation.max_new_tokens = run.task.spec.max_target_length  # the forced prefix and </s> included
    generation.num_beams, generation.do_sample = 1, False


def probe_ids(run: RunModel, batch: int = 2, length: int = 16) -> Tensor:
    """A fixed pseudo-random input of ordinary ids (specials framing it) for logit checks."""
    generator = torch.Generator().manual_seed(0)
    length = min(length, run.cfg.max_positions)
    ids = torch.randint(0, run.tokenizer.vocab_size, (batch, length), generator=generator)
    ids[:, 0], ids[:, -1] = run.tokenizer.special.cls, run.tokenizer.special.sep
    return ids


def hf_inputs(run: RunModel, target: Target, ids: Tensor) -> dict[str, Tensor]:
    """What the HF model takes to compute `run.logits(ids)`: BART shifts `ids` right into its
    decoder input by itself, EncoderDecoderModel has to be given that input."""
    if target.family != "bert2bert":
        return {"input_ids": ids}
    return {"input_ids": ids, "decoder_input_ids": shift_right(ids, run.decoder_start_id)}


@torch.no_grad()
def max_logit_difference(run: RunModel, target: Target, hf_model: Any, ids: Tensor) -> float:
    ours = run.logits(ids)
    theirs = hf_model(**hf_inputs(run, target, ids)).logits.float()
    if ours.shape != theirs.shape:
        raise RuntimeError(f"logits of shape {tuple(ours.shape)} in ptmkit, {tuple(theirs.shape)} in transformers")
    return float((ours - theirs).abs().max())


# ---- tokenizer and model card -----------------------------------------------------------------

def hf_tokenizer(run: RunModel, target: Target, transformers: Any) -> Any:
    """The run's tokenizer as a `PreTrainedTokenizerFast` with its special tokens named and a
    post-processor that frames text as the objective did ([CLS] a [SEP], <s> a </s>, a </s>), or
    for a fine-tuned run as its task did ([CLS] a [SEP], on a GPT-2 backbone too)."""
    import tokenizers
    from tokenizers import processors
    tok = run.tokenizer
    hf = tokenizers.Tokenizer.from_str(tok.hf.to_str())
    special = tok.special
    text = {role: hf.id_to_token(getattr(special, _role(role, target)))
            for role in ("pad", "unk", "cls", "sep", "mask", "bos", "eos") if role not in tok.borrowed}
    frame = _frame(run, target)
    if frame is not None:
        first, last = frame
        pieces = [(t, hf.token_to_id(t)) for t in dict.fromkeys(x for x in (first, last) if x)]
        single = " ".join(x for x in (first, "$A:0", last) if x)
        pair = " ".join(x for x in (first, "$A:0", last, "$B:0", last) if x)
        hf.post_processor = processors.TemplateProcessing(single=single, pair=pair, special_tokens=pieces)
    if tok.kind == "bpe" and "mask" in text and not tok.imported:
        # pre-training masked whole pieces, their leading space included: a written mask takes the
        # spaces beside it, or the text on each side would gain a bare space piece (RoBERTa's lstrip).
        # ptmkit's bpe gives every text after the mask its space back (its normalizer prepends one);
        # an imported tokenizer may not, so it keeps its own flags
        hf.add_special_tokens([tokenizers.AddedToken(text["mask"], special=True, lstrip=True, rstrip=True,
                                                     normalized=False)])
    sentinels = [hf.id_to_token(i) for i in special.sentinels]
    # what a fine-tuned run was trained and scored on; a pre-trained one takes any length it has positions for
    length = run.task.spec.max_length if run.kind == "finetune" else run.cfg.max_positions
    # split_special_tokens: "[MASK]" or "</s>" written in a text stays text, as in ptmkit; no
    # token_type_ids (transformers 4.x adds them by default: GPT-2 would add a type embedding to
    # every position, BART's forward refuses them), since ptmkit's networks take none
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=hf, model_max_length=min(length, run.cfg.max_positions), split_special_tokens=True,
        model_input_names=["input_ids", "attention_mask"], additional_special_tokens=sentinels,
        **{f"{role}_token": value for role, value in text.items()})


def _role(role: str, target: Target) -> str:
    """The ptmkit role whose token plays `role` in the exported model: a GPT-2 model starts from
    the end-of-text token, which clm and prefixlm put between documents (GPT-2's convention), so
    generation from nothing starts where training did."""
    return "eos" if role == "bos" and target.family in GPT2_FAMILIES else role


def _frame(run: RunModel, target: Target) -> tuple[str | None, str | None] | None:
    """(first, last) special tokens around a text, as the run's objective (or fine-tuned task)
    frames it; None: nothing (GPT-2)."""
    tok, special = run.tokenizer.hf, run.tokenizer.special
    if run.kind == "finetune" and target.family not in SEQ2SEQ_FAMILIES:  # `[CLS] text [SEP]`, decoders too
        return tok.id_to_token(special.cls), tok.id_to_token(special.sep)
    if target.family in GPT2_FAMILIES:
        return None  # GPT-2 adds nothing
    if target.family in SEQ2SEQ_FAMILIES:
        frame = run.objective_impl.text_frame()
        first = tok.id_to_token(frame.source_prefix[0]) if frame.source_prefix else None
        return first, tok.id_to_token(frame.eos)
    return tok.id_to_token(special.cls), tok.id_to_token(special.sep)


def model_card(run: RunModel, target: Target, difference: float) -> str:
    config = run.config
    summary = _json(run.run / ("eval.json" if run.kind == "finetune" else "summary.json"))
    # a warm-started seq2seq run records its framing (bart) as its objective; its weights are the init's
    warm_start = (_init_objective(run) or "encoder") if target.family == "bert2bert" else None
    tags = f"ptmkit, {warm_start}, bert2bert" if warm_start else f"ptmkit, {run.objective}"
    lines = ["---", "library_name: transformers", f"tags: [{tags}]", "---", "",
             f"# {run.run.name}", "",
             f"A `{target.hf_class}` exported by ptmkit {ptmkit.__version__} from the {run.kind} run "
             f"`{run.run}`. On a probe input its logits equal ptmkit's within {difference:.1e}.", "",
             "| | |", "|---|---|", f"| objective | {run.objective} |"]
    options = config.get("objective_options") or {}
    if warm_start:  # the framing's noise never ran
        lines[-1] = f"| objective | {warm_start} run warm-starting a decoder, framed as {run.objective} |"
        options = {}
    if options:
        lines.append(f"| objective options | `{json.dumps(options)}` |")
    if run.kind == "pretrain":
        train = config.get("train") or {}
        manifest = _json(Path(str(config.get("data", ""))) / "manifest.json") if config.get("data") else {}
        split = (manifest.get("splits") or {}).get("train") or {}
        data = f"`{config.get('data')}`" + (f" ({split['tokens']:,} training tokens)" if "tokens" in split else "")
        lines += [f"| data | {data} |", f"| init | {config.get('init') or 'random'} |",
                  f"| steps | {summary.get('steps', '?')} (batch {train.get('batch_size', '?')} x "
                  f"seq_len {train.get('seq_len', '?')}, {summary.get('tokens', 0):,} tokens) |"]
        if summary.get("final_val_loss") is not None:
            lines.append(f"| final validation loss | {summary['final_val_loss']:.4f} |")
    else:
        task = config.get("task") or {}
        settings = config.get("finetune") or {}
        labels = f" (labels: {', '.join(task['labels'])})" if task.get("labels") else ""
        lines += [f"| task | {task.get('name')}{labels} |",
                  f"| data | train `{settings.get('train')}`, dev `{settings.get('dev') or 'held out from train'}` |",
                  f"| init | `{config.get('init')}` |",
                  f"| epochs | {summary.get('epoch', '?')} of {settings.get('epochs', '?')}, scored: "
                  f"{kept_model(settings.get('keep_epoch', 'best'), settings.get('select_fraction'))} |"]
        for key, value in summary.items():
            if isinstance(value, float):
                lines.append(f"| dev {key} | {value:.4f} |")
    lines += ["", "## Model", "", "```yaml", yaml.safe_dump(config.get("model") or {}, sort_keys=False).strip(),
              "```", "", "## Use", "", "```python",
              f"from transformers import AutoTokenizer, {target.auto_class}",
              "tokenizer = AutoTokenizer.from_pretrained(DIR)",
              f"model = {target.auto_class}.from_pretrained(DIR)", "```", ""]
    notes = _notes(run, target)
    if notes:
        lines += ["## Notes", "", *[f"* {note}" for note in notes], ""]
    return "\n".join(lines)


def _notes(run: RunModel, target: Target) -> list[str]:
    notes = []
    if target.family == "electra":
        notes.append("The discriminator alone: ELECTRA's generator is not exported.")
    if run.objective == "prefixlm":
        notes.append("Pre-trained as a prefix LM; as GPT-2 it attends causally everywhere.")
    start = run.tokenizer.hf.id_to_token(run.decoder_start_id) if target.family in SEQ2SEQ_FAMILIES else None
    if target.family == "bart":
        notes.append(f"`decoder_start_token_id` is `{start}`, as in {run.objective} pre-training.")
    if target.family == "bert2bert":
        notes += [f"BERT2BERT (Rothe et al. 2020): warm-started from the encoder run `{run.config.get('init')}`, "
                  "each decoder layer from the encoder layer at its depth, cross-attention from random; "
                  f"`decoder_start_token_id` is `{start}`, the BART framing ptmkit fine-tunes seq2seq with.",
                  "In ptmkit the encoder and the decoder share one token embedding; here each holds an equal "
                  "copy, which training in transformers would let drift apart.",
                  "The encoder's pooler is all zeros: EncoderDecoderModel never reads it."]
    if target.family in SEQ2SEQ_FAMILIES and run.kind == "finetune":
        notes.append("`generate()` decodes greedily as the fine-tuning scored its dev set (forced first "
                     "token, suppressed special tokens and target length in generation_config.json).")
    if target.family in (*BERT_FAMILIES, *BERT_LM_HEADS):
        notes.append("ptmkit never uses token types: keep `token_type_ids` at 0 (the tokenizer does).")
    if target.family == "bert_mlm":
        mask = run.tokenizer.hf.id_to_token(run.tokenizer.special.mask)
        notes.append(f"As in ptmkit, special-token strings written in a text (`{mask}`) are text to the "
                     "tokenizer. For the `fill-mask` pipeline load it with "
                     "`AutoTokenizer.from_pretrained(DIR, split_special_tokens=False)`.")
    if run.tokenizer.borrowed:
        notes.append("The tokenizer has no " + ", ".join(sorted(run.tokenizer.borrowed)) + " token of its own.")
    return notes


def _init_objective(run: RunModel) -> str | None:
    """The objective of the run a fine-tuning started from, if its config is still there."""
    try:
        return yaml.safe_load((Path(str(run.config.get("init"))) / "config.yaml").read_text()).get("objective")
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        return None


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


# ---- the command ------------------------------------------------------------------------------

_RUN_FILES = ("ptmkit_tokenizer.json", "state.json", "summary.json", "eval.json", "metrics.jsonl", "config.yaml")


def _earlier_export(directory: Path) -> bool:
    """A transformers model directory (config.json) holding none of a run's own files."""
    return (directory / "config.json").is_file() and not any((directory / name).exists() for name in _RUN_FILES)


def export_run(run: str | Path, out: str | Path, *, format: str = "hf", overwrite: bool = False) -> dict[str, Any]:
    """Export a run directory; returns what was written (class, directory, logit difference)."""
    if format not in FORMATS:
        raise UserError(f"unknown export format {format!r}", "--format", f"use one of: {', '.join(FORMATS)}")
    out = Path(out)
    resolved, source = out.resolve(), Path(run).resolve()
    if resolved == source or resolved in source.parents:
        raise UserError("--out is the run directory or a directory above it: writing the export there "
                        "would delete the run", str(out), "choose an --out outside the run (e.g. RUN/hf or hf/NAME)")
    if resolved == Path.cwd().resolve() or resolved in Path.cwd().resolve().parents:
        raise UserError("--out is the current directory or a directory above it, which the export would "
                        "replace", str(out), "choose a directory to create, e.g. --out hf/NAME")
    if out.exists() and not out.is_dir():
        raise UserError("output path is a file", str(out), "choose a directory path for --out")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise UserError("output directory is not empty", str(out), "choose a new --out or pass --overwrite")
    if out.is_dir() and any(out.iterdir()) and source in resolved.parents and not _earlier_export(out):
        raise UserError("--out is a part of the run (its tokenizer, checkpoints, ...), which --overwrite would "
                        "replace", str(out), "choose a new --out, e.g. RUN/hf")
    loaded = load_run(run)
    target = plan_export(loaded)
    transformers = require_transformers("--format hf")
    model = build_hf_model(loaded, target, transformers)
    difference = max_logit_difference(loaded, target, model, probe_ids(loaded))
    if math.isnan(difference):  # a diverged run: NaN weights give NaN logits on both sides
        raise UserError("the run's logits are NaN on the probe", str(run), "export a run that trained without diverging")
    if difference > TOLERANCE:
        raise RuntimeError(f"exported {target.hf_class} differs from ptmkit by {difference:.2e} on the probe")
    tokenizer = hf_tokenizer(loaded, target, transformers)
    place = Path(os.path.abspath(out))  # `.` or `a/..` have no name to stage beside
    place.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{place.name}.", dir=place.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "README.md").write_text(model_card(loaded, target, difference))
        _replace(share(staging), place)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"class": target.hf_class, "out": str(out), "max_logit_difference": difference}


def _replace(staging: Path, out: Path) -> None:
    """Put the finished `staging` directory at `out`; a directory already there (--overwrite) is
    moved aside first and deleted only once the new one is in place, restored if that fails."""
    if not (out.exists() or out.is_symlink()):
        staging.rename(out)
        return
    aside = staging.with_name(f"{staging.name}.old")
    out.rename(aside)
    try:
        staging.rename(out)
    except BaseException:
        aside.rename(out)
        raise
    if aside.is_dir() and not aside.is_symlink():
        shutil.rmtree(aside, ignore_errors=True)
    else:
        aside.unlink()
