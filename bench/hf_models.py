"""Hugging Face counterparts of ptmkit's pre-training setups, for `bench/throughput.py --against hf`.

Each builder returns `(model, batches)`: a transformers model of the same architecture as the
ptmkit model (sizes from the same resolved `ModelConfig`, dropout 0) and a few cached batches of
keyword arguments for `model(**batch)`, fed the way an HF user would feed that model:

* mlm  -> `BertForMaskedLM`, `DataCollatorForLanguageModeling(mlm_probability=0.15)` over
  `[CLS] random ids [SEP]` rows;
* clm  -> `GPT2LMHeadModel`, `DataCollatorForLanguageModeling(mlm=False)` (labels = input_ids,
  shifted inside the model);
* bart -> `BartForConditionalGeneration`, fed ptmkit's own noised batches (the bart objective's
  make_example/collate) plus padding attention masks;
* plm  -> `XLNetLMHeadModel` (`attn_type="bi"`, eager attention),
  `DataCollatorForPermutationLanguageModeling(plm_probability=1/6, max_span_length=5)`.

Only transformers/tokenizers are imported here, and only by the HF side's process.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import (BartConfig, BartForConditionalGeneration, BertConfig, BertForMaskedLM,
                          DataCollatorForLanguageModeling, DataCollatorForPermutationLanguageModeling,
                          GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, XLNetConfig,
                          XLNetLMHeadModel)

from ptmkit.data.tokenizer import ALL_SPECIAL_TOKENS
from ptmkit.model.config import ModelConfig

ACTIVATIONS = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu"}


def hf_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with ptmkit's special tokens at ids 0..106 and ordinary tokens
    `t107`.. up to `vocab_size`: all the collators need (pad/mask ids, special-token masks)."""
    vocab = {token: i for i, token in enumerate(ALL_SPECIAL_TOKENS)}
    vocab.update({f"t{i}": i for i in range(len(vocab), vocab_size)})
    core = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                   bos_token="<s>", eos_token="</s>",
                                   additional_special_tokens=list(ALL_SPECIAL_TOKENS[7:]))


def _rows(tokenizer: PreTrainedTokenizerFast, batch_size: int, seq_len: int, framed: bool,
          rng: np.random.Generator) -> list[dict[str, list[int]]]:
    first = len(ALL_SPECIAL_TOKENS)
    rows = []
    for _ in range(batch_size):
        if framed:  # [CLS] tokens [SEP], the frame ptmkit's mlm/plm examples have
            ids = [tokenizer.cls_token_id, *rng.integers(first, tokenizer.vocab_size, seq_len - 2).tolist(),
                   tokenizer.sep_token_id]
        else:
            ids = rng.integers(first, tokenizer.vocab_size, seq_len).tolist()
        rows.append({"input_ids": ids})
    return rows


def _drop_full_masks(batch: dict[str, Any]) -> dict[str, Any]:
    """An all-ones attention mask is no mask: ptmkit runs those batches without one too (and HF
    can then use its causal/no-mask SDPA path)."""
    return {k: v for k, v in batch.items()
            if not (k in ("attention_mask", "decoder_attention_mask") and bool(v.all()))}


def bert(cfg: ModelConfig, batch_size: int, seq_len: int, n_batches: int, seed: int = 0):
    tokenizer = hf_tokenizer(cfg.vocab_size)
    model = BertForMaskedLM(BertConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden, num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.heads, intermediate_size=cfg.ffn, hidden_act=ACTIVATIONS[cfg.activation],
        max_position_embeddings=512, type_vocab_size=2, layer_norm_eps=cfg.norm_eps,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id))
    # `seed=` refuses to run outside a DataLoader in a child process: seed the global RNG instead
    collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    batches = [_drop_full_masks(collator(_rows(tokenizer, batch_size, seq_len, True, rng)))
               for _ in range(n_batches)]
    return model, batches


def gpt2(cfg: ModelConfig, batch_size: int, seq_len: int, n_batches: int, seed: int = 0):
    tokenizer = hf_tokenizer(cfg.vocab_size)
    model = GPT2LMHeadModel(GPT2Config(
        vocab_size=cfg.vocab_size, n_positions=cfg.max_positions, n_embd=cfg.hidden, n_layer=cfg.n_layers,
        n_head=cfg.heads, n_inner=cfg.ffn, activation_function=ACTIVATIONS[cfg.activation],
        layer_norm_epsilon=cfg.norm_eps, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    collator = DataCollatorForLanguageModeling(tokenizer, mlm=False)
    rng = np.random.default_rng(seed)
    batches = [_drop_full_masks(collator(_rows(tokenizer, batch_size, seq_len, False, rng)))
               for _ in range(n_batches)]
    return model, batches


def bart(cfg: ModelConfig, ptmkit_batches: list[dict[str, torch.Tensor]], pad_id: int, bos_id: int,
         eos_id: int):
    """BART fed ptmkit's noised batches: encoder and decoder padding masks added, labels as is
    (ptmkit pads them with -100, HF's ignore index)."""
    model = BartForConditionalGeneration(BartConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.hidden, encoder_layers=cfg.n_layers,
        decoder_layers=cfg.n_decoder_layers, encoder_attention_heads=cfg.heads,
        decoder_attention_heads=cfg.heads, encoder_ffn_dim=cfg.ffn, decoder_ffn_dim=cfg.ffn,
        activation_function=ACTIVATIONS[cfg.activation], max_position_embeddings=cfg.max_positions,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, scale_embedding=False,
        pad_token_id=pad_id, bos_token_id=bos_id, eos_token_id=eos_id, decoder_start_token_id=eos_id,
        forced_eos_token_id=None))
    batches = [{"input_ids": b["input_ids"], "attention_mask": (b["input_ids"] != pad_id).long(),
                "decoder_input_ids": b["decoder_input_ids"],
                "decoder_attention_mask": (b["decoder_input_ids"] != pad_id).long(),
                "labels": b["labels"]} for b in ptmkit_batches]
    return model, [_drop_full_masks(b) for b in batches]


def xlnet(cfg: ModelConfig, batch_size: int, seq_len: int, n_batches: int, seed: int = 0):
    if seq_len % 2:
        raise SystemExit("--objective plm --against hf needs an even --seq-len "
                         "(DataCollatorForPermutationLanguageModeling requires it)")
    tokenizer = hf_tokenizer(cfg.vocab_size)
    model = XLNetLMHeadModel(XLNetConfig(
        vocab_size=cfg.vocab_size, d_model=cfg.hidden, n_layer=cfg.n_layers, n_head=cfg.heads,
        d_inner=cfg.ffn, ff_activation=ACTIVATIONS[cfg.activation], attn_type="bi", dropout=0.0,
        layer_norm_eps=cfg.norm_eps, pad_token_id=tokenizer.pad_token_id, mem_len=None,
        use_mems_train=False, attn_implementation="eager"))
    collator = DataCollatorForPermutationLanguageModeling(tokenizer, plm_probability=1 / 6, max_span_length=5)
    torch.manual_seed(seed)  # the collator draws from the global RNG
    rng = np.random.default_rng(seed)
    batches = [collator(_rows(tokenizer, batch_size, seq_len, True, rng)) for _ in range(n_batches)]
    return model, [_drop_full_masks(dict(b)) for b in batches]


def loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
    """The `LossFn` ptmkit's Trainer calls: HF's own loss from `model(**batch)`."""
    return model(**batch).loss, {}
