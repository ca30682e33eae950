"""The one shared Transformer: encoder, decoder, prefix, two-stream and encoder-decoder.

Every attention family is the same layer stack driven by an explicit boolean mask
(``True`` = query may attend to key, the `F.scaled_dot_product_attention` convention) and
explicit position ids, so permuted orders (XLNet, MPNet) and corrupted inputs reuse the layers.
Masks are built by objectives (see `ptmkit.model.masks`), never here.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ptmkit.model.config import ModelConfig
from ptmkit.model.vocab_loss import linear_cross_entropy

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def _heads(x: Tensor, n_heads: int) -> Tensor:
    b, length, width = x.shape
    return x.view(b, length, n_heads, width // n_heads).transpose(1, 2)  # (B, nh, L, hd)


def _merge(x: Tensor) -> Tensor:
    b, n_heads, length, head_dim = x.shape
    return x.transpose(1, 2).reshape(b, length, n_heads * head_dim)  # (B, L, H)


EXPLICIT_ATTENTION_MAX_KEYS = 128
"""On CPU, attention over at most this many keys runs as two matmuls and a softmax: PyTorch's
flash kernel for CPU is slower there (fwd + bwd at 16 x 8 heads x 128 x 64: 12.5 vs 10.9 ms in
fp32, 22.7 vs 8.2 ms in bf16), and much faster for longer rows (2-4x at 256 and beyond)."""


def _sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
          dropout: float) -> Tensor:
    if mask is not None and mask.dim() == 3:
        mask = mask.unsqueeze(1)  # (B, 1, Lq, Lk): the same mask for every head
    is_causal = is_causal and mask is None
    if q.device.type == "cpu" and k.shape[-2] <= EXPLICIT_ATTENTION_MAX_KEYS:
        return _explicit_attention(q, k, v, mask, is_causal, dropout)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=is_causal)


def _explicit_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                        dropout: float) -> Tensor:
    """`F.scaled_dot_product_attention` as matmuls; a query row that may see no key gets zeros,
    as from the flash kernel. The scores stay in the matmuls' dtype: CPU softmax kernels
    accumulate in fp32 whatever the input, and casting (B, heads, L, L) both ways costs more.
    The scale and the mask (as an additive bias) go into the scores' matmul itself (`baddbmm`),
    so neither costs a pass of its own, forward or backward."""
    b, heads, length, head_dim = q.shape
    keys = k.shape[-2]
    queries = q.reshape(b * heads, length, head_dim)
    keys_t = k.reshape(b * heads, keys, head_dim).transpose(1, 2)
    if is_causal:
        bias, beta = _causal_bias(length, keys, q.dtype, q.device), 1.0
    elif mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(~mask, torch.finfo(q.dtype).min)
        bias, beta = bias.expand(b, heads, length, keys).reshape(b * heads, length, keys), 1.0
    else:
        bias, beta = q.new_zeros(1, 1, 1), 0.0  # beta 0: ignored
    scores = torch.baddbmm(bias, queries, keys_t, beta=beta, alpha=head_dim ** -0.5)
    probs = torch.softmax(scores, dim=-1).view(b, heads, length, keys)
    if mask is not None and not is_causal:
        blind = ~mask.any(-1, keepdim=True)
        if blind.any():
            probs = probs.masked_fill(blind, 0.0)
    if dropout > 0:
        probs = F.dropout(probs, dropout)
    return probs @ v


@functools.lru_cache(maxsize=32)
def _causal_bias(length: int, keys: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """0 where query i may see key j (j <= i), the dtype's lowest value above."""
    return torch.full((length, keys), torch.finfo(dtype).min, dtype=dtype, device=device).triu_(1)


@dataclass
class LayerCache:
    """One layer's keys and values kept between decoding steps, as (B, L, H) before the head split.

    `keys`/`values` grow by the rows of every step (self-attention); `cross` holds the projected
    memory, computed at the first step and reused (cross-attention)."""

    keys: Tensor | None = None
    values: Tensor | None = None
    cross: tuple[Tensor, Tensor] | None = None

    def extend(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Append this step's keys/values; returns all of them, past rows first."""
        if self.keys is not None:
            k, v = torch.cat([self.keys, k], dim=1), torch.cat([self.values, v], dim=1)
        self.keys, self.values = k, v
        return k, v


class KVCache:
    """Keys and values of every layer of one stack, so that a decoding step computes only its
    new rows (the `past_key_values` of Hugging Face, fairseq's `incremental_state`).

    Pass one to `Transformer.decode` (or `encode`, for decoder-only models) on every step; rows
    given without `position_ids` continue at position `length`.
    """

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]

    @property
    def length(self) -> int:
        """Rows cached so far (0 before the first step)."""
        keys = self.layers[0].keys if self.layers else None
        return 0 if keys is None else keys.shape[1]

    def reorder(self, index: Tensor, cross: bool = True) -> None:
        """Keep batch rows `index` (beam search moves hypotheses between beam slots).
        `cross=False` leaves the projected memory alone: right when rows only move among copies
        of the same source, whose memory rows are equal."""
        for layer in self.layers:
            if layer.keys is not None:
                layer.keys, layer.values = layer.keys[index], layer.values[index]
            if cross and layer.cross is not None:
                layer.cross = (layer.cross[0][index], layer.cross[1][index])


def past_mask(attn_mask: Tensor | None, is_causal: bool, past: int, length: int,
              device: torch.device) -> tuple[Tensor | None, bool]:
    """(mask, is_causal) for `length` new rows after `past` cached ones.

    SDPA's `is_causal` aligns the triangle top-left, which is wrong once keys outnumber queries,
    so a causal step past the first becomes an explicit bottom-right triangle (no mask at all for
    a single row, which may see every key). A causal call with a mask of its own (padding) gets
    the triangle ANDed into it: SDPA ignores `is_causal` beside a mask, and the rows would have
    seen the future. An explicit mask is the caller's, full key width.
    """
    if not is_causal or (attn_mask is None and past == 0):
        return attn_mask, is_causal
    if attn_mask is None and length == 1:
        return None, False
    triangle = torch.ones(length, past + length, dtype=torch.bool, device=device).tril(diagonal=past)
    return (triangle if attn_mask is None else attn_mask & triangle), False


@dataclass
class Rows:
    """The rows of each sequence a last layer computes when only they feed the loss (MLM's
    masked positions): every row still serves as a key, but queries, the attention output and
    the feed-forward run on these rows alone, a quarter of a 4-layer encoder's work at 15%
    masking. `index` (B, M) lists each sequence's rows in order, padded by repeating rows that
    `valid` marks False."""

    index: Tensor
    valid: Tensor

    @classmethod
    def of(cls, select: Tensor) -> Rows:
        """From a (B, L) bool of the rows wanted."""
        counts = select.sum(1)
        order = torch.sort((~select).to(torch.uint8), dim=1, stable=True).indices  # wanted first, in order
        width = max(1, int(counts.max()))
        return cls(order[:, :width], torch.arange(width, device=select.device) < counts[:, None])

    def gather(self, x: Tensor) -> Tensor:
        """(B, L, H) -> (B, M, H)."""
        return x.gather(1, self.index[..., None].expand(-1, -1, x.shape[-1]))

    def query_mask(self, mask: Tensor | None, is_causal: bool, n_keys: int) -> Tensor | None:
        """The attention mask of these rows as queries (a causal triangle made explicit)."""
        if is_causal:
            return torch.arange(n_keys, device=self.index.device) <= self.index[..., None]
        if mask is None or mask.dim() < 2 or mask.shape[-2] == 1:
            return mask  # no mask, or one row of keys that every query shares
        # a row per query, (Lq, Lk), (B, Lq, Lk) or (B, heads, Lq, Lk): keep the rows of these queries
        batch = self.index.shape[0]
        mask = mask.expand(batch, *mask.shape[-3:]) if mask.dim() == 4 else mask.expand(batch, *mask.shape[-2:])
        index = self.index[..., None].expand(-1, -1, mask.shape[-1])
        if mask.dim() == 4:
            return mask.gather(2, index[:, None].expand(-1, mask.shape[1], -1, -1))
        return mask.gather(1, index)

    def flatten(self, x: Tensor) -> Tensor:
        """(B, M, H) -> (rows wanted, H), in the order of ``hidden[select]``."""
        return x[self.valid]


class SelfAttention(nn.Module):
    """Multi-head self-attention whose keys may be a prefix of the rows (two-stream attention)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.attention_dropout
        self.qkv = nn.Linear(cfg.hidden, 3 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: Tensor, mask: Tensor | None, is_causal: bool,
                n_keys: int | None = None, cache: LayerCache | None = None,
                rows: Rows | None = None) -> Tensor:
        # With n_keys, rows past n_keys are query-stream rows: they ask, but are never keys.
        # With rows, only those rows ask (the mask is theirs already).
        if rows is None:
            q, k, v = self.qkv(x).chunk(3, dim=-1)
        else:
            width = x.shape[-1]
            q = F.linear(rows.gather(x), self.qkv.weight[:width], self.qkv.bias[:width])
            k, v = F.linear(x, self.qkv.weight[width:], self.qkv.bias[width:]).chunk(2, dim=-1)
        if n_keys is not None:
            k, v = k[:, :n_keys], v[:, :n_keys]
        if cache is not None:
            k, v = cache.extend(k, v)
        dropout = self.dropout if self.training else 0.0
        y = _sdpa(_heads(q, self.heads), _heads(k, self.heads), _heads(v, self.heads),
                  mask, is_causal, dropout)
        return self.out(_merge(y))


class CrossAttention(nn.Module):
    """Decoder-to-encoder attention (MASS, BART, T5, seq2seq fine-tuning)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.heads, self.dropout = cfg.heads, cfg.attention_dropout
        self.q = nn.Linear(cfg.hidden, cfg.hidden)
        self.kv = nn.Linear(cfg.hidden, 2 * cfg.hidden)
        self.out = nn.Linear(cfg.hidden, cfg.hidden)

    def forward(self, x: Tensor, memory: Tensor, mask: Tensor | None,
                cache: LayerCache | None = None) -> Tensor:
        if cache is not None and cache.cross is not None:
            k, v = cache.cross  # the memory does not change between steps: project it once
        else:
            k, v = self.kv(memory).chunk(2, dim=-1)
            if cache is not None:
                cache.cross = (k, v)
        dropout = self.dropout if self.training else 0.0
        y = _sdpa(_heads(self.q(x), self.heads), _heads(k, self.heads), _heads(v, self.heads),
                  mask, False, dropout)
        return self.out(_merge(y))


class Block(nn.Module):
    """One Transformer layer; pre- or post-norm; optional cross-attention sub-layer."""

    def __init__(self, cfg: ModelConfig, cross: bool = False) -> None:
        super().__init__()
        self.pre_norm = cfg.norm == "pre"
        self.attn = SelfAttention(cfg)
        self.attn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.cross = CrossAttention(cfg) if cross else None
        self.cross_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps) if cross else None
        self.fc_in = nn.Linear(cfg.hidden, cfg.ffn)
        self.fc_out = nn.Linear(cfg.ffn, cfg.hidden)
        self.ffn_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps)
        self.act = _ACTIVATIONS[cfg.activation]
        self.drop = nn.Dropout(cfg.dropout)

    def _residual(self, x: Tensor, norm: nn.LayerNorm, sublayer, rows: Rows | None = None) -> Tensor:
        kept = x if rows is None else rows.gather(x)  # the sub-layer reads all of x, these go on
        if self.pre_norm:
            return kept + self.drop(sublayer(norm(x)))
        return norm(kept + self.drop(sublayer(x)))

    def forward(self, x: Tensor, mask: Tensor | None = None, is_causal: bool = False,
                n_keys: int | None = None, memory: Tensor | None = None,
                memory_mask: Tensor | None = None, cache: LayerCache | None = None,
                rows: Rows | None = None) -> Tensor:
        """(B, L, H) -> (B, L, H), or (B, M, H) for `rows` (see `Rows`)."""
        if rows is not None:
            mask, is_causal = rows.query_mask(mask, is_causal, x.shape[1]), False
        x = self._residual(x, self.attn_norm,
                           lambda y: self.attn(y, mask, is_causal, n_keys, cache, rows), rows)
        if self.cross is not None:
            x = self._residual(x, self.cross_norm,
                               lambda y: self.cross(y, memory, memory_mask, cache))
        return self._residual(x, self.ffn_norm, lambda y: self.fc_out(self.act(self.fc_in(y))))


class Embeddings(nn.Module):
    """Token + learned absolute position (+ token type) embeddings, optional LayerNorm."""

    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding) -> None:
        super().__init__()
        self.tokens = tokens
        self.offset = cfg.position_offset
        self.positions = nn.Embedding(cfg.max_positions + cfg.position_offset, cfg.hidden)
        self.types = nn.Embedding(cfg.type_vocab_size, cfg.hidden) if cfg.type_vocab_size else None
        self.norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps) if cfg.layernorm_embedding else None
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, ids: Tensor, position_ids: Tensor | None = None,
                token_type_ids: Tensor | None = None) -> Tensor:
        if position_ids is None:
            position_ids = torch.arange(ids.shape[-1], device=ids.device)
        x = self.tokens(ids) + self.positions(position_ids + self.offset)
        if self.types is not None:
            x = x + self.types(token_type_ids if token_type_ids is not None else torch.zeros_like(ids))
        if self.norm is not None:
            x = self.norm(x)
        return self.drop(x)


class LMHead(nn.Module):
    """Projection to the vocabulary; tied to the input embeddings unless configured otherwise."""

    def __init__(self, cfg: ModelConfig, tokens: nn.Embedding) -> None:
        super().__init__()
        self.transform = None
        if cfg.lm_head_transform:  # BERT's dense + GELU + LayerNorm before the decoder
            self.transform = nn.Sequential(nn.Linear(cfg.hidden, cfg.hidden),
                                           nn.GELU(approximate="tanh" if cfg.activation == "gelu_tanh" else "none"),
                                           nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps))
        self.proj = nn.Linear(cfg.hidden, cfg.vocab_size, bias=cfg.lm_head_bias)
        if cfg.tie_embeddings:
            self.proj.weight = tokens.weight

    def forward(self, h: Tensor) -> Tensor:
        return self.proj(self.transform(h) if self.transform is not None else h)

    def cross_entropy(self, h: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(mean cross-entropy, accuracy) of the logits of rows `h` against `targets`, without
        materialising the logits (`ptmkit.model.vocab_loss`)."""
        h = self.transform(h) if self.transform is not None else h
        return linear_cross_entropy(h, self.proj.weight, self.proj.bias, targets)


class Stack(nn.Module):
    """Layers + optional final norm (pre-norm models need one; post-norm ones do not)."""

    def __init__(self, cfg: ModelConfig, n_layers: int, cross: bool) -> None:
        super().__init__()
        self.layers = nn.ModuleList(Block(cfg, cross) for _ in range(n_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden, eps=cfg.norm_eps) if cfg.final_norm else None

    def forward(self, x: Tensor, cache: KVCache | None = None, rows: Rows | None = None,
                **kwargs) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x, cache=cache.layers[i] if cache is not None else None,
                      rows=rows if i == last else None, **kwargs)
        return self.final_norm(x) if self.final_norm is not None else x


class Transformer(nn.Module):
    """The shared backbone. Objectives pick the family through the arguments they pass."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        tokens = nn.Embedding(cfg.vocab_size, cfg.hidden)
        self.embed = Embeddings(cfg, tokens)
        self.encoder = Stack(cfg, cfg.n_layers, cross=False)
        self.decoder_embed = Embeddings(cfg, tokens) if cfg.is_encoder_decoder else None
        self.decoder = Stack(cfg, cfg.n_decoder_layers, cross=True) if cfg.is_encoder_decoder else None
        self.lm_head = LMHead(cfg, tokens)
        self.apply(self._init)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def encode(self, input_ids: Tensor, *, position_ids: Tensor | None = None,
               token_type_ids: Tensor | None = None, attn_mask: Tensor | None = None,
               is_causal: bool = False, cache: KVCache | None = None,
               select: Tensor | None = None) -> Tensor:
        """Bidirectional (no mask), causal (`is_causal`) or any masked family. Returns (B, L, H),
        or with `select` (B, L) bool only the selected rows, ``(n, H) == encode(...)[select]``,
        for which the last layer does only the selected rows' work (`Rows`).

        With `cache` (decoder-only generation) the rows continue the cached ones: an explicit
        `attn_mask` then spans the cached keys too, (B, L, past + L)."""
        if select is not None and cache is not None:
            raise ValueError("encode(): select and cache do not combine")
        past = cache.length if cache is not None else 0
        x = self.embed(input_ids, _positions(position_ids, past, input_ids), token_type_ids)
        attn_mask, is_causal = past_mask(attn_mask, is_causal, past, input_ids.shape[1], input_ids.device)
        if select is None:
            return self.encoder(x, mask=attn_mask, is_causal=is_causal, cache=cache)
        rows = Rows.of(select)
        return rows.flatten(self.encoder(x, mask=attn_mask, is_causal=is_causal, rows=rows))

    def two_stream(self, input_ids: Tensor, position_ids: Tensor, query_ids: Tensor,
                   query_position_ids: Tensor, attn_mask: Tensor) -> tuple[Tensor, Tensor]:
        """XLNet/MPNet two-stream attention with weights shared between the streams.

        Content rows h (B, Lh) and query rows g (B, Lg) run through the same layers as one
        sequence [h; g]; only h provides keys and values. `attn_mask` is (B, Lh + Lg, Lh):
        the content mask stacked on the query mask. Returns (h, g).
        """
        n_content = input_ids.shape[1]
        x = torch.cat([self.embed(input_ids, position_ids),
                       self.embed(query_ids, query_position_ids)], dim=1)
        x = self.encoder(x, mask=attn_mask, n_keys=n_content)
        return x[:, :n_content], x[:, n_content:]

    def decode(self, decoder_input_ids: Tensor, memory: Tensor, *,
               memory_mask: Tensor | None = None, position_ids: Tensor | None = None,
               attn_mask: Tensor | None = None, cache: KVCache | None = None) -> Tensor:
        """Causal decoder over its own inputs with cross-attention to `memory` (B, Ls, H).

        With `cache` only the new decoder rows are given; the memory is projected at the first
        step and reused."""
        if self.decoder is None:
            raise RuntimeError("decode() needs an encoder-decoder config (n_decoder_layers > 0)")
        past = cache.length if cache is not None else 0
        x = self.decoder_embed(decoder_input_ids, _positions(position_ids, past, decoder_input_ids))
        attn_mask, is_causal = past_mask(attn_mask, attn_mask is None, past,
                                         decoder_input_ids.shape[1], decoder_input_ids.device)
        return self.decoder(x, mask=attn_mask, is_causal=is_causal,
                            memory=memory, memory_mask=memory_mask, cache=cache)

    def logits(self, hidden: Tensor) -> Tensor:
        """Vocabulary logits for the given hidden states only (callers select rows first)."""
        return self.lm_head(hidden)

    def token_loss(self, hidden: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
        """(mean cross-entropy, accuracy) of the vocabulary prediction from rows `hidden`."""
        return self.lm_head.cross_entropy(hidden, targets)

    @property
    def output_size(self) -> int:
        """Width of the features downstream heads read."""
        return self.cfg.hidden

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.embed.tokens.weight.numel()
        return n

    def flops_per_token(self, seq_len: int, predicted_fraction: float = 1.0) -> float:
        """Training FLOPs per input token (forward + backward = 3x forward), PaLM-style count.

        Includes attention score FLOPs and the vocabulary projection for the predicted rows.
        """
        cfg = self.cfg
        layers = cfg.n_layers + cfg.n_decoder_layers
        dense = layers * (4 * cfg.hidden * cfg.hidden + 2 * cfg.hidden * cfg.ffn)
        dense += cfg.n_decoder_layers * 4 * cfg.hidden * cfg.hidden  # cross-attention projections
        head = predicted_fraction * cfg.vocab_size * cfg.hidden
        attention = layers * 2 * seq_len * cfg.hidden
        return 3 * 2 * (dense + head + attention)


def _positions(position_ids: Tensor | None, past: int, ids: Tensor) -> Tensor | None:
    """Explicit positions, or those after `past` cached rows (None = 0.., the embedding default)."""
    if position_ids is not None or past == 0:
        return position_ids
    return torch.arange(past, past + ids.shape[-1], device=ids.device)


def key_padding_mask(valid: Tensor) -> Tensor:
    """(B, L) bool of real tokens -> (B, 1, L) mask that every query row broadcasts over."""
    return valid[:, None, :]
