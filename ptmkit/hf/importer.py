"""`--init hf:DIR`: a local Hugging Face BERT / RoBERTa / GPT-2 / BART directory as a ptmkit
backbone with identical logits, for continued pre-training or fine-tuning.

Read with the core dependencies only: config.json (json), the weights (`model.safetensors`,
sharded or not, through safetensors; or `pytorch_model.bin` through
`torch.load(weights_only=True)`, which unpickles tensors and nothing else) and the tokenizer
(`tokenizer.json` through `tokenizers`, see `Tokenizer.from_hf`). No hub download is attempted:
DIR must be a directory on disk.

Exactness: BERT's and RoBERTa's MLM heads, GPT-2's LM head and BART's tied head with
`final_logits_bias` map one-to-one onto the backbone (`ptmkit.hf.convert`). RoBERTa's positions
start at pad_id + 1 (ptmkit's `position_offset`); RoBERTa alone gives padding tokens the pad
position, so logits agree everywhere but at padding rows of padded inputs. A configuration
ptmkit cannot express (relative positions, scaled embeddings, per-layer attention scaling,
different encoder / decoder widths, ...) is refused, naming the config.json field.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ptmkit.data.tokenizer import Tokenizer
from ptmkit.errors import UserError
from ptmkit.hf import convert
from ptmkit.model.config import ModelConfig

PREFIX = "hf:"
FAMILIES = ("bert", "roberta", "gpt2", "bart")
BASE_PREFIX = {"bert": "bert.", "roberta": "roberta.", "gpt2": "transformer.", "bart": "model."}
BASE_TOP = {"bert": ("embeddings.", "encoder.", "pooler."), "roberta": ("embeddings.", "encoder.", "pooler."),
            "gpt2": ("wte.", "wpe.", "h.", "ln_f."), "bart": ("shared.", "encoder.", "decoder.")}
COMPATIBLE = {"bert": ("mlm", "wwm", "electra"), "roberta": ("mlm", "wwm", "electra"),
              "gpt2": ("clm", "prefixlm"), "bart": ("bart", "mass", "t5")}
"""Objectives that continue pre-training each family (same architecture and layout)."""
FINETUNE_OBJECTIVE = {"bert": "mlm", "roberta": "mlm", "gpt2": "clm", "bart": "bart"}
"""The objective a fine-tuning run built on an imported model records (features, pooling, a
seq2seq frame); a BART directory's decoder start token may pick mass or t5 (finetune_objective)."""
NEEDS_MASK = ("mlm", "wwm", "electra", "mass", "bart")
NEEDS_SENTINELS = ("t5",)
ACTIVATIONS = {"gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "relu": "relu"}
IGNORED = ("pooler.", "cls.seq_relationship.", "classifier.", "qa_outputs.", "score.",
           "position_ids", "token_type_ids", ".attn.bias", ".attn.masked_bias", "encoder.version",
           "decoder.version")
"""Weights an import leaves out: heads ptmkit does not keep, and buffers."""
_FIX = "point --init hf:DIR at a directory written by `save_pretrained` (no hub names: download first)"


@dataclass
class HFModel:
    """A local HF model directory read for ptmkit: its family, config and tokenizer, and (once
    `load_weights` ran) its weights under ptmkit's names."""

    directory: Path
    family: str
    config: dict[str, Any]
    model_cfg: ModelConfig
    tokenizer: Tokenizer
    state: dict[str, Tensor] = field(default_factory=dict)
    missing_head: bool = False

    @property
    def init(self) -> str:
        return f"{PREFIX}{self.directory}"


def is_hf(init: str | None) -> bool:
    return bool(init) and str(init).startswith(PREFIX)


def hf_directory(init: str) -> Path:
    """DIR of `hf:DIR`, checked to be a local model directory."""
    directory = Path(str(init)[len(PREFIX):]).expanduser()
    if not str(init)[len(PREFIX):]:
        raise UserError("--init hf: names no directory", str(init), "write --init hf:DIR")
    if not directory.is_dir():
        raise UserError("no such directory", str(init), _FIX)
    if not (directory / "config.json").is_file():
        raise UserError("no config.json in the Hugging Face directory", str(init), _FIX)
    return directory


def read_hf(init: str, *, weights: bool = True) -> HFModel:
    """Config, tokenizer and (with `weights`) the converted weights of `hf:DIR`."""
    directory = hf_directory(init)
    where = str(directory / "config.json")
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read config.json: {exc}", where, _FIX) from exc
    if not isinstance(config, dict):
        raise UserError("config.json is not a mapping", where, _FIX)
    family = config.get("model_type")
    if family not in FAMILIES:
        raise UserError(f"model_type {family!r} cannot be imported", f"{where}: model_type",
                        f"import a {', '.join(FAMILIES)} model")
    tokenizer = Tokenizer.from_hf(directory)
    model_cfg = model_config(family, config, tokenizer, where)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise UserError(f"the tokenizer has {tokenizer.vocab_size} ids but the model only "
                        f"{model_cfg.vocab_size} embeddings", f"{where}: vocab_size",
                        "save the tokenizer that belongs to this model")
    model = HFModel(directory, family, config, model_cfg, tokenizer)
    if weights:
        load_weights(model)
    return model


# ---- config.json -> ModelConfig -----------------------------------------------------------------

def _require(config: dict[str, Any], key: str, ok: bool, why: str, where: str) -> None:
    if not ok:
        raise UserError(f"{key}={config.get(key)!r}: {why}, which ptmkit's backbone cannot reproduce",
                        f"{where}: {key}", "import a model without it")


def _activation(config: dict[str, Any], key: str, default: str, where: str) -> str:
    name = config.get(key, default)
    _require(config, key, name in ACTIVATIONS, "an activation ptmkit lacks", where)
    return ACTIVATIONS[name]


NUMERIC = {
    "bert": ("vocab_size", "num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
             "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "hidden_dropout_prob",
             "attention_probs_dropout_prob", "pad_token_id"),
    "gpt2": ("vocab_size", "n_layer", "n_embd", "n_head", "n_inner", "n_positions", "layer_norm_epsilon",
             "resid_pdrop", "attn_pdrop", "pad_token_id"),
    "bart": ("vocab_size", "encoder_layers", "decoder_layers", "d_model", "encoder_attention_heads",
             "decoder_attention_heads", "encoder_ffn_dim", "decoder_ffn_dim", "max_position_embeddings",
             "dropout", "attention_dropout", "pad_token_id"),
}
NUMERIC["roberta"] = NUMERIC["bert"]


def model_config(family: str, c: dict[str, Any], tokenizer: Tokenizer, where: str) -> ModelConfig:
    """The backbone config of a config.json; a field that is not a number is a UserError naming it."""
    for key in NUMERIC[family]:
        value = c.get(key)
        if value is None and (key not in c or key in ("n_inner", "pad_token_id")):
            continue  # absent (a default, or a KeyError naming it), or null where null means "default"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key}={value!r} is not a number", f"{where}: {key}",
                            f"write {key} as a number in config.json (save_pretrained does)")
        if key not in _MAY_BE_ZERO and value < 1:  # a size or count: 0 heads divide by zero, -32 wide is no tensor
            raise UserError(f"{key}={value!r} is not a positive size", f"{where}: {key}",
                            "fix config.json (or save the model again with save_pretrained)")
    return _model_config(family, c, tokenizer, where)


_MAY_BE_ZERO = {"layer_norm_eps", "layer_norm_epsilon", "hidden_dropout_prob", "attention_probs_dropout_prob",
                "resid_pdrop", "attn_pdrop", "dropout", "attention_dropout", "pad_token_id", "type_vocab_size"}
"""NUMERIC's fields that are rates, ids or may be 0; the others are sizes and counts."""


def _model_config(family: str, c: dict[str, Any], tokenizer: Tokenizer, where: str) -> ModelConfig:
    pad = c.get("pad_token_id")
    pad = tokenizer.special.pad if pad is None else int(pad)
    try:
        if family in ("bert", "roberta"):
            _require(c, "position_embedding_type", c.get("position_embedding_type", "absolute") == "absolute",
                     "relative positions", where)
            _require(c, "is_decoder", not c.get("is_decoder"), "a causal BERT", where)
            _require(c, "add_cross_attention", not c.get("add_cross_attention"), "cross-attention", where)
            activation = _activation(c, "hidden_act", "gelu", where)
            if family == "roberta":  # RobertaLMHead applies exact GELU whatever hidden_act says
                _require(c, "hidden_act", c.get("hidden_act", "gelu") == "gelu", "an LM head with another activation", where)
            _require(c, "hidden_act", activation != "relu", "a relu LM-head transform", where)
            offset = pad + 1 if family == "roberta" else 0
            return ModelConfig(
                vocab_size=int(c["vocab_size"]), n_layers=int(c["num_hidden_layers"]),
                hidden=int(c["hidden_size"]), heads=int(c["num_attention_heads"]),
                ffn=int(c["intermediate_size"]), max_positions=int(c["max_position_embeddings"]) - offset,
                position_offset=offset, type_vocab_size=int(c.get("type_vocab_size", 2)), norm="post",
                layernorm_embedding=True, final_norm=False, lm_head_transform=True, lm_head_bias=True,
                tie_embeddings=bool(c.get("tie_word_embeddings", True)), activation=activation,
                norm_eps=float(c.get("layer_norm_eps", 1e-12)), dropout=float(c.get("hidden_dropout_prob", 0.1)),
                attention_dropout=float(c.get("attention_probs_dropout_prob", 0.1)), pad_id=pad, layout="bert")
        if family == "gpt2":
            _require(c, "scale_attn_weights", c.get("scale_attn_weights", True), "unscaled attention", where)
            _require(c, "scale_attn_by_inverse_layer_idx", not c.get("scale_attn_by_inverse_layer_idx"),
                     "per-layer attention scaling", where)
            _require(c, "add_cross_attention", not c.get("add_cross_attention"), "cross-attention", where)
            hidden = int(c["n_embd"])
            return ModelConfig(
                vocab_size=int(c["vocab_size"]), n_layers=int(c["n_layer"]), hidden=hidden,
                heads=int(c["n_head"]), ffn=int(c.get("n_inner") or 4 * hidden),
                max_positions=int(c["n_positions"]), position_offset=0, type_vocab_size=0, norm="pre",
                layernorm_embedding=False, final_norm=True, lm_head_transform=False, lm_head_bias=False,
                tie_embeddings=bool(c.get("tie_word_embeddings", True)),
                activation=_activation(c, "activation_function", "gelu_new", where),
                norm_eps=float(c.get("layer_norm_epsilon", 1e-5)), dropout=float(c.get("resid_pdrop", 0.1)),
                attention_dropout=float(c.get("attn_pdrop", 0.1)), pad_id=pad, layout="gpt2")
        # bart
        _require(c, "scale_embedding", not c.get("scale_embedding"), "scaled token embeddings", where)
        _require(c, "normalize_before", not c.get("normalize_before"), "pre-norm layers", where)
        _require(c, "add_final_layer_norm", not c.get("add_final_layer_norm"), "a final LayerNorm", where)
        _require(c, "decoder_attention_heads", c.get("decoder_attention_heads") == c.get("encoder_attention_heads"),
                 "other head counts than the encoder's", where)
        _require(c, "decoder_ffn_dim", c.get("decoder_ffn_dim") == c.get("encoder_ffn_dim"),
                 "another feed-forward width than the encoder's", where)
        _require(c, "decoder_layers", int(c.get("decoder_layers", 0)) > 0, "no decoder", where)
        return ModelConfig(
            vocab_size=int(c["vocab_size"]), n_layers=int(c["encoder_layers"]),
            n_decoder_layers=int(c["decoder_layers"]), hidden=int(c["d_model"]),
            heads=int(c["encoder_attention_heads"]), ffn=int(c["encoder_ffn_dim"]),
            max_positions=int(c["max_position_embeddings"]), position_offset=2, type_vocab_size=0,
            norm="post", layernorm_embedding=True, final_norm=False, lm_head_transform=False,
            lm_head_bias=True, tie_embeddings=bool(c.get("tie_word_embeddings", True)),
            activation=_activation(c, "activation_function", "gelu", where), norm_eps=1e-5,
            dropout=float(c.get("dropout", 0.1)), attention_dropout=float(c.get("attention_dropout", 0.0)),
            pad_id=pad, layout="bart")
    except KeyError as exc:
        raise UserError(f"config.json lacks {exc.args[0]}", f"{where}: {exc.args[0]}", _FIX) from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"config.json has an invalid value: {exc}", where, _FIX) from None


# ---- weights ------------------------------------------------------------------------------------

def _weight_files(directory: Path) -> list[Path]:
    """The directory's weights file(s): model.safetensors, pytorch_model.bin, or their shards."""
    for name, index in (("model.safetensors", "model.safetensors.index.json"),
                        ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (directory / name).is_file():
            return [directory / name]
        if (directory / index).is_file():
            try:
                weight_map = json.loads((directory / index).read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise UserError(f"cannot read {index}: {exc}", str(directory / index), _FIX) from exc
            files = [directory / shard for shard in dict.fromkeys(weight_map.values())]
            if files:
                return files
    raise UserError("no model.safetensors or pytorch_model.bin in the Hugging Face directory",
                    str(directory), _FIX)


def _header_tensors(path: Path) -> dict[str, Tensor]:
    """A safetensors file's tensors as empty `meta` tensors of their shapes: its header alone is
    read (names, shapes, dtypes), not the data."""
    from safetensors import safe_open
    out: dict[str, Tensor] = {}
    with safe_open(str(path), framework="pt") as f:
        for name in f.keys():
            tensor = f.get_slice(name)
            dtype = torch.float32 if tensor.get_dtype().startswith(("F", "BF")) else torch.int64
            out[name] = torch.empty(tensor.get_shape(), dtype=dtype, device="meta")
    return out


def read_state(directory: Path, *, shapes_only: bool = False) -> dict[str, Tensor]:
    """Every tensor of the directory's weights file(s), as float32 on the CPU; with
    `shapes_only`, safetensors files give `meta` tensors read from their headers (no data)."""
    from safetensors.torch import load_file
    state: dict[str, Tensor] = {}
    for path in _weight_files(directory):
        try:
            if path.suffix == ".safetensors":
                state.update(_header_tensors(path) if shapes_only else load_file(str(path)))
            else:
                state.update(torch.load(path, map_location="cpu", weights_only=True))
        except Exception as exc:  # a truncated file, a pickle holding more than tensors, ...
            raise UserError(f"cannot read the weights: {str(exc).splitlines()[0][:200]}", str(path), _FIX) from exc
    return {k: v.float() if v.is_floating_point() else v for k, v in state.items()}


def _legacy_names(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """TensorFlow-era LayerNorm names (`LayerNorm.gamma` / `.beta`, e.g. the original BERT
    checkpoints' pytorch_model.bin) as transformers renames them on loading: `.weight` / `.bias`."""
    renamed = {}
    for key, value in state.items():
        for old, new in (("LayerNorm.gamma", "LayerNorm.weight"), ("LayerNorm.beta", "LayerNorm.bias")):
            if key.endswith(old) and key[: -len(old)] + new not in state:
                key = key[: -len(old)] + new
        renamed[key] = value
    return renamed


def _with_prefix(family: str, state: dict[str, Tensor]) -> dict[str, Tensor]:
    """Names as the LM-head model has them (a bare base model's `embeddings.` -> `bert.embeddings.`)."""
    state = _legacy_names(state)
    base = BASE_PREFIX[family]
    if any(k.startswith(base) for k in state):
        return state
    return {(base + k if k.startswith(BASE_TOP[family]) else k): v for k, v in state.items()}


def load_weights(model: HFModel, *, shapes_only: bool = False) -> None:
    """Fill `model.state` with ptmkit names; refuse weights the backbone has no place for.
    `shapes_only`: safetensors weights as `meta` tensors from the file headers (see check_weights)."""
    family, cfg, where = model.family, model.model_cfg, str(model.directory)
    hf = _with_prefix(family, read_state(model.directory, shapes_only=shapes_only))
    base = BASE_PREFIX[family]
    used: set[str] = set()

    def take(name: str) -> Tensor:
        if name not in hf:
            raise UserError(f"weight {name} is missing", where, _FIX)
        used.add(name)
        return hf[name]

    if family in ("bert", "roberta"):
        head = family
        rules = convert.bert_rules(cfg, base, head)
        tokens = take(f"{base}embeddings.word_embeddings.weight")
        ours = {"embed.tokens.weight": tokens,
                "embed.positions.weight": take(f"{base}embeddings.position_embeddings.weight")}
        if cfg.type_vocab_size:
            ours["embed.types.weight"] = take(f"{base}embeddings.token_type_embeddings.weight")
        tied = convert.bert_tied(head)
    elif family == "gpt2":
        rules = convert.gpt2_rules(cfg)
        tokens = take("transformer.wte.weight")
        ours = {"embed.tokens.weight": tokens, "embed.positions.weight": take("transformer.wpe.weight")}
        tied = convert.GPT2_TIED
    else:
        rules = convert.bart_rules(cfg)
        names = ["model.shared.weight", *convert.BART_TIED]
        present = [n for n in names if n in hf]
        if not present:
            raise UserError("weight model.shared.weight is missing", where, _FIX)
        tokens = take(present[0])
        used.update(n for n in present if n != "lm_head.weight")
        ours = {"embed.tokens.weight": tokens, "decoder_embed.tokens.weight": tokens,
                "embed.positions.weight": take("model.encoder.embed_positions.weight"),
                "decoder_embed.positions.weight": take("model.decoder.embed_positions.weight")}
        tied = {"lm_head.weight": "embed.tokens.weight"}
        ours["lm_head.proj.bias"] = (take("final_logits_bias").reshape(-1) if "final_logits_bias" in hf
                                     else torch.zeros(cfg.vocab_size))
    head_rules = [r for r in rules if r.ours.startswith("lm_head.")]
    converted, missing = convert.rules_from_hf(rules, hf)
    head_names = {name for r in head_rules for name in r.hf}
    if any(name not in head_names for name in missing):
        first = next(name for name in missing if name not in head_names)
        raise UserError(f"weight {first} is missing", where, _FIX)
    used.update(name for r in rules for name in r.hf if name in hf)
    ours.update(converted)
    absent_head = [name for name in missing if name in head_names]
    if absent_head and len(set(absent_head)) < len(head_names):
        raise UserError(f"weight {absent_head[0]} of the LM head is missing", where, _FIX)
    model.missing_head = bool(absent_head)
    # the output projection: tied to the token embeddings, or its own matrix
    output = next((name for name, target in tied.items() if target == "embed.tokens.weight"), None)
    if cfg.tie_embeddings or output is None or output not in hf:
        ours["lm_head.proj.weight"] = tokens
        if output is not None:
            used.add(output)
    else:
        ours["lm_head.proj.weight"] = take(output)
    used.update(name for name in tied if name in hf)
    leftover = sorted(k for k in hf if k not in used and not any(p in k for p in IGNORED))
    if leftover:
        raise UserError(f"weight {leftover[0]} has no place in ptmkit's backbone"
                        + (f" (and {len(leftover) - 1} more)" if len(leftover) > 1 else ""), where,
                        f"import a plain {family} model")
    model.state = ours


def _check_fit(model: HFModel, expected: dict[str, Tensor]) -> None:
    """The imported weights have the backbone's shapes (a UserError) and names (a bug otherwise)."""
    wrong = [k for k, v in model.state.items() if k in expected and expected[k].shape != v.shape]
    if wrong:
        raise UserError(f"weight {wrong[0]} has shape {tuple(model.state[wrong[0]].shape)}, the backbone "
                        f"{tuple(expected[wrong[0]].shape)}", str(model.directory), _FIX)
    unexpected = [k for k in model.state if k not in expected]
    missing = [k for k in expected if k not in model.state and not (model.missing_head and k.startswith("lm_head."))]
    if unexpected or missing:  # a bug in the maps
        raise RuntimeError(f"import of {model.directory}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def check_weights(model: HFModel) -> None:
    """Refuse what `load_into` would refuse (a tensor missing, misshapen or without a place), before
    anything is written or deleted (`pretrain --overwrite`). safetensors weights are checked from
    their headers (names and shapes), without reading the data; a pytorch_model.bin has to be
    loaded, and its converted weights stay in `model.state` for `load_into` (read once)."""
    from ptmkit.model.backbone import Transformer
    header_only = all(path.suffix == ".safetensors" for path in _weight_files(model.directory))
    load_weights(model, shapes_only=header_only)
    try:
        with torch.device("meta"):
            expected = Transformer(model.model_cfg).state_dict()
        _check_fit(model, expected)
    finally:
        if header_only:
            model.state = {}  # meta tensors: load_into reads the data


def load_into(network: nn.Module, model: HFModel) -> None:
    """Copy the imported weights into a ptmkit `Transformer` (ELECTRA: its discriminator)."""
    target = getattr(network, "discriminator", network)
    if not model.state:
        load_weights(model)
    _check_fit(model, target.state_dict())
    target.load_state_dict(model.state, strict=False)  # names checked: only an absent LM head is left out
    if model.missing_head:
        warnings.warn(f"{model.directory} holds no LM head (a bare {model.family} model): ptmkit's "
                      "starts from random weights", stacklevel=2)


def check_objective(model: HFModel, objective: str) -> None:
    """`objective` can continue pre-training the imported family, or a UserError says which can."""
    if objective not in COMPATIBLE[model.family]:
        raise UserError(f"--init {model.init} holds a {model.family} model, which objective {objective} "
                        "cannot continue (another architecture or layout)", "--objective",
                        f"use one of: {', '.join(COMPATIBLE[model.family])}")
    if objective in NEEDS_MASK and "mask" in model.tokenizer.borrowed:
        raise UserError(f"objective {objective} needs a mask token, the {model.family} tokenizer has none",
                        "--objective", f"use one of: {', '.join(o for o in COMPATIBLE[model.family] if o not in NEEDS_MASK) or 'none'}")
    if objective in NEEDS_SENTINELS and not model.tokenizer.special.sentinels:
        others = [o for o in COMPATIBLE[model.family] if o not in NEEDS_SENTINELS
                  and not (o in NEEDS_MASK and "mask" in model.tokenizer.borrowed)]
        raise UserError(f"objective {objective} needs <extra_id_N> sentinel tokens, the {model.family} "
                        f"tokenizer of {model.directory / 'tokenizer.json'} has none", "--objective",
                        f"use one of: {', '.join(others) or 'none'} (or save the tokenizer with "
                        "<extra_id_0>, <extra_id_1>, ... as additional special tokens)")


def finetune_objective(model: HFModel) -> str:
    """The objective a fine-tuning run on the imported model records and frames its text as.

    A BART directory takes the one whose decoder starts from config.json's
    `decoder_start_token_id`, as ptmkit's export writes it (bart: </s>, t5: pad, mass: <s>): a t5
    or mass run exported and imported again fine-tunes, generates and scores exactly as the run
    itself would (`finetune --init RUN`), not from BART's </s>. t5 needs the tokenizer's
    sentinels; without them, or with another start token, it is bart (HF BART's own: </s>)."""
    name = FINETUNE_OBJECTIVE[model.family]
    start, special = model.config.get("decoder_start_token_id"), model.tokenizer.special
    if model.family != "bart" or isinstance(start, bool) or not isinstance(start, int) or start == special.eos:
        return name
    if start == special.pad and special.sentinels:
        return "t5"
    if start == special.bos:
        return "mass"
    return name


def load_hf_network(init: str, dropout: float | None = None) -> tuple[nn.Module, HFModel]:
    """A ptmkit `Transformer` holding `hf:DIR`'s weights (eval mode), and what was read;
    `dropout` replaces the model's own (see `ModelConfig.with_dropout`)."""
    from ptmkit.model.backbone import Transformer
    model = read_hf(init)
    model.model_cfg = model.model_cfg.with_dropout(dropout)
    network = Transformer(model.model_cfg)
    load_into(network, model)
    return network.eval(), model
