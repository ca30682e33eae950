"""Weight-name maps between ptmkit's `Transformer` and the Hugging Face families (pure torch).

One table of rules per family serves both directions. A rule ties one ptmkit tensor to one or
more HF tensors: ``split`` rules cut a fused ptmkit matrix into HF's separate ones along the
output rows (self-attention ``qkv`` -> query | key | value, cross-attention ``kv`` -> k | v), and
``transpose`` rules swap the axes of GPT-2's ``Conv1D`` weights, which are stored (in, out).

Embeddings are handled apart from the rules, because export has to reshape them:

* ptmkit reads position ``p`` from row ``p + position_offset`` of its table; HF BERT / ELECTRA /
  GPT-2 read row ``p`` and BART row ``p + 2``, so export copies the rows that are ever used
  (RoBERTa-style offsets thus export to BERT exactly);
* without token types in the HF family (GPT-2, BART), ptmkit's type-0 embedding, which it adds to
  every token, is folded into the position rows; without token types in ptmkit, HF BERT gets a
  single all-zero type embedding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ptmkit.model.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    ours: str
    hf: tuple[str, ...]
    transpose: bool = False


def _linear(ours: str, hf: str, transpose: bool = False) -> list[Rule]:
    rules = [Rule(f"{ours}.weight", (f"{hf}.weight",), transpose)]
    return rules + [Rule(f"{ours}.bias", (f"{hf}.bias",))]


def _fused(ours: str, hf: list[str]) -> list[Rule]:
    return [Rule(f"{ours}.{p}", tuple(f"{h}.{p}" for h in hf)) for p in ("weight", "bias")]


# ---- per-family rules (embeddings and tied copies excluded) ------------------------------------

def bert_rules(cfg: ModelConfig, base: str, head: str | None, stack: str = "encoder",
               head_base: str = "") -> list[Rule]:
    """BERT-style encoders. `base`: "bert." / "roberta." / "electra."; `head`: "bert" (BERT's
    cls.predictions), "roberta" (lm_head.*), or None (no LM head).

    `stack="decoder"` maps ptmkit's decoder (`decoder_embed`, `decoder.layers`, with
    cross-attention) onto a `BertLMHeadModel` decoder of an `EncoderDecoderModel`, whose LM head
    lives under `head_base` ("decoder.")."""
    decoder = stack == "decoder"
    rules = _linear(f"{'decoder_embed' if decoder else 'embed'}.norm", f"{base}embeddings.LayerNorm")
    for i in range(cfg.n_decoder_layers if decoder else cfg.n_layers):
        ours, hf = f"{stack}.layers.{i}", f"{base}encoder.layer.{i}"
        rules += _fused(f"{ours}.attn.qkv", [f"{hf}.attention.self.{n}" for n in ("query", "key", "value")])
        rules += _linear(f"{ours}.attn.out", f"{hf}.attention.output.dense")
        rules += _linear(f"{ours}.attn_norm", f"{hf}.attention.output.LayerNorm")
        if decoder:
            rules += _linear(f"{ours}.cross.q", f"{hf}.crossattention.self.query")
            rules += _fused(f"{ours}.cross.kv", [f"{hf}.crossattention.self.{n}" for n in ("key", "value")])
            rules += _linear(f"{ours}.cross.out", f"{hf}.crossattention.output.dense")
            rules += _linear(f"{ours}.cross_norm", f"{hf}.crossattention.output.LayerNorm")
        rules += _linear(f"{ours}.fc_in", f"{hf}.intermediate.dense")
        rules += _linear(f"{ours}.fc_out", f"{hf}.output.dense")
        rules += _linear(f"{ours}.ffn_norm", f"{hf}.output.LayerNorm")
    if head == "bert":
        rules += _linear("lm_head.transform.0", f"{head_base}cls.predictions.transform.dense")
        rules += _linear("lm_head.transform.2", f"{head_base}cls.predictions.transform.LayerNorm")
        rules += [Rule("lm_head.proj.bias", (f"{head_base}cls.predictions.bias",))]
    elif head == "roberta":
        rules += _linear("lm_head.transform.0", "lm_head.dense")
        rules += _linear("lm_head.transform.2", "lm_head.layer_norm")
        rules += [Rule("lm_head.proj.bias", ("lm_head.bias",))]
    return rules


def bert_tied(head: str | None, head_base: str = "") -> dict[str, str]:
    """HF names that hold a copy of a ptmkit tensor (tied in both models): HF name -> ours."""
    if head == "bert":
        return {f"{head_base}cls.predictions.decoder.weight": "embed.tokens.weight",
                f"{head_base}cls.predictions.decoder.bias": "lm_head.proj.bias"}
    if head == "roberta":
        return {"lm_head.decoder.weight": "embed.tokens.weight", "lm_head.decoder.bias": "lm_head.proj.bias"}
    return {}


def gpt2_rules(cfg: ModelConfig) -> list[Rule]:
    rules: list[Rule] = []
    for i in range(cfg.n_layers):
        ours, hf = f"encoder.layers.{i}", f"transformer.h.{i}"
        rules += _linear(f"{ours}.attn_norm", f"{hf}.ln_1")
        rules += _linear(f"{ours}.attn.qkv", f"{hf}.attn.c_attn", transpose=True)
        rules += _linear(f"{ours}.attn.out", f"{hf}.attn.c_proj", transpose=True)
        rules += _linear(f"{ours}.ffn_norm", f"{hf}.ln_2")
        rules += _linear(f"{ours}.fc_in", f"{hf}.mlp.c_fc", transpose=True)
        rules += _linear(f"{ours}.fc_out", f"{hf}.mlp.c_proj", transpose=True)
    return rules + _linear("encoder.final_norm", "transformer.ln_f")


GPT2_TIED = {"lm_head.weight": "embed.tokens.weight"}


def bart_rules(cfg: ModelConfig) -> list[Rule]:
    rules = _linear("embed.norm", "model.encoder.layernorm_embedding")
    rules += _linear("decoder_embed.norm", "model.decoder.layernorm_embedding")
    for stack, n_layers in (("encoder", cfg.n_layers), ("decoder", cfg.n_decoder_layers)):
        for i in range(n_layers):
            ours, hf = f"{stack}.layers.{i}", f"model.{stack}.layers.{i}"
            rules += _fused(f"{ours}.attn.qkv", [f"{hf}.self_attn.{n}_proj" for n in "qkv"])
            rules += _linear(f"{ours}.attn.out", f"{hf}.self_attn.out_proj")
            rules += _linear(f"{ours}.attn_norm", f"{hf}.self_attn_layer_norm")
            if stack == "decoder":
                rules += _linear(f"{ours}.cross.q", f"{hf}.encoder_attn.q_proj")
                rules += _fused(f"{ours}.cross.kv", [f"{hf}.encoder_attn.{n}_proj" for n in "kv"])
                rules += _linear(f"{ours}.cross.out", f"{hf}.encoder_attn.out_proj")
                rules += _linear(f"{ours}.cross_norm", f"{hf}.encoder_attn_layer_norm")
            rules += _linear(f"{ours}.fc_in", f"{hf}.fc1")
            rules += _linear(f"{ours}.fc_out", f"{hf}.fc2")
            rules += _linear(f"{ours}.ffn_norm", f"{hf}.final_layer_norm")
    return rules


BART_TIED = {"model.encoder.embed_tokens.weight": "embed.tokens.weight",
             "model.decoder.embed_tokens.weight": "embed.tokens.weight",
             "lm_head.weight": "embed.tokens.weight"}


# ---- applying the rules ------------------------------------------------------------------------

def rules_to_hf(rules: list[Rule], state: dict[str, Tensor]) -> dict[str, Tensor]:
    out: dict[str, Tensor] = {}
    for rule in rules:
        value = state[rule.ours]
        if rule.transpose:
            value = value.t()
        parts = value.chunk(len(rule.hf), dim=0) if len(rule.hf) > 1 else (value,)
        for name, part in zip(rule.hf, parts):
            out[name] = part.contiguous().clone()
    return out


def rules_from_hf(rules: list[Rule], hf: dict[str, Tensor]) -> tuple[dict[str, Tensor], list[str]]:
    """ptmkit tensors from HF ones; also the HF names that were missing."""
    out: dict[str, Tensor] = {}
    missing: list[str] = []
    for rule in rules:
        absent = [name for name in rule.hf if name not in hf]
        if absent:
            missing += absent
            continue
        value = torch.cat([hf[name] for name in rule.hf], dim=0) if len(rule.hf) > 1 else hf[rule.hf[0]]
        out[rule.ours] = (value.t() if rule.transpose else value).contiguous().clone()
    return out, missing


def export_positions(cfg: ModelConfig, positions: Tensor, types: Tensor | None, rows: int,
                     hf_offset: int) -> Tensor:
    """An HF position table of `rows` rows that reads position p at row p + hf_offset, holding
    what ptmkit adds at position p (its row p + position_offset, plus its type-0 embedding when
    `types` is given: the fold for families without token types)."""
    table = torch.zeros(rows, positions.shape[1], dtype=positions.dtype)
    for j in range(rows):
        source = j - hf_offset + cfg.position_offset
        if 0 <= source < positions.shape[0]:
            table[j] = positions[source]
    if types is not None:
        table += types[0]
    return table
