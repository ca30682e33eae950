"""Configuration of the one shared Transformer backbone: named sizes, layouts and YAML files.

A *size* fixes depth and width (Turc et al. 2019 naming); a *layout* fixes the details in which the
Hugging Face families differ (norm placement, embedding LayerNorm, LM-head transform, position
offset), so a trained model maps one-to-one onto BERT, GPT-2 or BART weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ptmkit.errors import UserError, check_values, is_number, is_whole

SIZES: dict[str, dict[str, int]] = {
    "tiny": {"n_layers": 2, "hidden": 128, "heads": 2},
    "mini": {"n_layers": 4, "hidden": 256, "heads": 4},
    "small": {"n_layers": 4, "hidden": 512, "heads": 8},
    "medium": {"n_layers": 8, "hidden": 512, "heads": 8},
    "base": {"n_layers": 12, "hidden": 768, "heads": 12},
}

LAYOUTS: dict[str, dict[str, Any]] = {
    # BERT: post-norm, LayerNorm on the embeddings, dense+GELU+LayerNorm before the tied decoder.
    "bert": {"norm": "post", "layernorm_embedding": True, "final_norm": False,
             "lm_head_transform": True, "lm_head_bias": True, "type_vocab_size": 2,
             "norm_eps": 1e-12, "activation": "gelu", "position_offset": 0},
    # GPT-2: pre-norm with a final LayerNorm, tanh-approximated GELU, no bias on the LM head.
    "gpt2": {"norm": "pre", "layernorm_embedding": False, "final_norm": True,
             "lm_head_transform": False, "lm_head_bias": False, "type_vocab_size": 0,
             "norm_eps": 1e-5, "activation": "gelu_tanh", "position_offset": 0},
    # BART: post-norm, LayerNorm on the embeddings, learned positions offset by 2, logits bias.
    "bart": {"norm": "post", "layernorm_embedding": True, "final_norm": False,
             "lm_head_transform": False, "lm_head_bias": True, "type_vocab_size": 0,
             "norm_eps": 1e-5, "activation": "gelu", "position_offset": 2},
    # Pre-norm everywhere: the most stable choice for short, high-learning-rate budgets.
    "prenorm": {"norm": "pre", "layernorm_embedding": True, "final_norm": True,
                "lm_head_transform": True, "lm_head_bias": True, "type_vocab_size": 0,
                "norm_eps": 1e-5, "activation": "gelu", "position_offset": 0},
}


@dataclass(kw_only=True)
class ModelConfig:
    """Every knob of the shared backbone. Saved verbatim in each run's config.yaml."""

    vocab_size: int = 8000
    n_layers: int = 2
    """Layers of the encoder, or of the decoder-only stack."""
    n_decoder_layers: int = 0
    """Decoder layers with cross-attention; > 0 makes an encoder-decoder."""
    hidden: int = 128
    heads: int = 2
    ffn: int = 0
    """Feed-forward width; 0 means 4 x hidden."""
    max_positions: int = 512
    position_offset: int = 0
    type_vocab_size: int = 0
    norm: str = "pre"
    """"pre" (GPT-2) or "post" (BERT, BART) LayerNorm placement."""
    layernorm_embedding: bool = False
    final_norm: bool = True
    lm_head_transform: bool = False
    lm_head_bias: bool = True
    tie_embeddings: bool = True
    activation: str = "gelu"
    norm_eps: float = 1e-5
    dropout: float = 0.1
    attention_dropout: float = 0.1
    pad_id: int = 0
    layout: str = "prenorm"

    def __post_init__(self) -> None:
        # a YAML model file reaches here unchecked: a wrong type or a 0 would otherwise surface
        # as a ZeroDivisionError or a negative-dimension error inside torch
        def whole(name: str, least: int) -> tuple[str, bool, str]:
            value = getattr(self, name)
            return name, is_whole(value) and value >= least, f"use a whole number >= {least}"

        def rate(name: str) -> tuple[str, bool, str]:
            value = getattr(self, name)
            return name, is_number(value) and 0 <= value < 1, "use a number in [0, 1)"

        flags = ("layernorm_embedding", "final_norm", "lm_head_transform", "lm_head_bias", "tie_embeddings")
        check_values(self, [
            *(whole(name, 1) for name in ("vocab_size", "n_layers", "hidden", "heads", "max_positions")),
            *(whole(name, 0) for name in ("n_decoder_layers", "ffn", "position_offset", "type_vocab_size", "pad_id")),
            *((name, isinstance(getattr(self, name), bool), "use true or false") for name in flags),
            rate("dropout"), rate("attention_dropout"),
            ("norm_eps", is_number(self.norm_eps) and self.norm_eps > 0, "use a small positive number, e.g. 1.0e-5"),
            ("pad_id", not isinstance(self.pad_id, int) or not isinstance(self.vocab_size, int)
             or self.pad_id < self.vocab_size, f"use an id below vocab_size={self.vocab_size}"),
        ], lambda name: f"model.{name}")
        if self.ffn == 0:
            self.ffn = 4 * self.hidden
        if self.hidden % self.heads:
            raise UserError(f"hidden={self.hidden} is not a multiple of heads={self.heads}",
                            "model", "choose heads that divide hidden")
        if self.norm not in ("pre", "post"):
            raise UserError(f"unknown norm placement {self.norm!r}", "model.norm", "use pre or post")
        if self.activation not in ("gelu", "gelu_tanh", "relu"):
            raise UserError(f"unknown activation {self.activation!r}", "model.activation",
                            "use gelu, gelu_tanh or relu")

    @property
    def is_encoder_decoder(self) -> bool:
        return self.n_decoder_layers > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def with_dropout(self, dropout: float | None) -> "ModelConfig":
        """This config with `dropout` as its hidden and attention dropout (None: unchanged); no
        weight depends on it, so a trained model loads into either."""
        return self if dropout is None else dataclasses.replace(self, dropout=dropout, attention_dropout=dropout)

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "model") -> "ModelConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"unknown model field(s) {', '.join(unknown)}", where,
                            f"use only: {', '.join(sorted(known))}")
        try:
            return cls(**values)
        except UserError as err:  # name the file the bad field came from
            raise UserError(err.what, err.where if where == "model" else f"{where}: {err.where.removeprefix('model.')}",
                            err.fix) from None


def resolve_model_config(spec: str | Path | dict[str, Any], *, vocab_size: int, layout: str,
                         encoder_decoder: bool = False, **overrides: Any) -> ModelConfig:
    """Turn a size name, a YAML file or a dict into a full ModelConfig.

    `layout` comes from the objective (BERT layout for MLM, GPT-2 for CLM, BART for seq2seq);
    values in a YAML file or `overrides` win over it. An encoder-decoder splits the named depth
    evenly between encoder and decoder.
    """
    if isinstance(spec, dict):
        values, where = dict(spec), "model"
        if "size" in values:
            values = {**SIZES[_check_size(values.pop("size"), where)], **values}
    elif str(spec) in SIZES:
        values, where = dict(SIZES[str(spec)]), "--model"
    elif str(spec).endswith((".yaml", ".yml")):
        path = Path(spec)
        if not path.is_file():
            raise UserError("model file not found", str(path), "give a size name "
                            f"({', '.join(SIZES)}) or an existing YAML file")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise UserError("model file must be a mapping of fields", str(path),
                            "write `hidden: 256` style lines")
        if "size" in values:
            values = {**SIZES[_check_size(values.pop("size"), str(path))], **values}
        where = str(path)
    else:
        raise UserError(f"unknown model size {spec!r}", "--model",
                        f"use one of {', '.join(SIZES)} or a YAML file")
    layout = values.pop("layout", layout)
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise UserError(f"unknown layout {layout!r}", where, f"use one of {', '.join(LAYOUTS)}")
    merged = {**LAYOUTS[layout], "layout": layout, "vocab_size": vocab_size, **values, **overrides}
    if encoder_decoder and not merged.get("n_decoder_layers"):
        depth = merged["n_layers"]
        merged["n_layers"], merged["n_decoder_layers"] = max(1, depth // 2), max(1, depth - depth // 2)
    return ModelConfig.from_dict(merged, where)


def _check_size(name: Any, where: str) -> str:
    if not isinstance(name, str) or name not in SIZES:
        raise UserError(f"unknown model size {name!r}", where, f"use one of {', '.join(SIZES)}")
    return name
