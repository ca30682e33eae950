"""Attention-family invariants of the shared backbone (dropout off, exact comparisons)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ptmkit.model import masks
from ptmkit.model.backbone import Transformer, key_padding_mask
from ptmkit.model.config import LAYOUTS, ModelConfig, resolve_model_config

V, L = 97, 12


def make(layout: str = "prenorm", **overrides) -> Transformer:
    torch.manual_seed(0)
    cfg = resolve_model_config("tiny", vocab_size=V, layout=layout, **overrides)
    return Transformer(cfg).eval()


def ids(seed: int = 0, batch: int = 2, length: int = L) -> torch.Tensor:
    return torch.randint(10, V, (batch, length), generator=torch.Generator().manual_seed(seed))


def changed_rows(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    """Sequence positions (dim 1) whose outputs differ in any batch row."""
    return torch.nonzero((a - b).abs().amax(dim=(0, 2)) > 1e-6).flatten().tolist()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_causal_output_ignores_the_future_encoder_does_not(layout: str) -> None:
    model, x = make(layout), ids()
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % V
    with torch.no_grad():
        causal = changed_rows(model.encode(x, is_causal=True), model.encode(y, is_causal=True))
        bidir = changed_rows(model.encode(x), model.encode(y))
    assert causal == list(range(7, L))
    assert bidir == list(range(L))


def test_explicit_causal_mask_equals_is_causal_flag() -> None:
    model, x = make(), ids()
    mask = torch.from_numpy(masks.causal(L)).expand(2, L, L)
    with torch.no_grad():
        torch.testing.assert_close(model.encode(x, attn_mask=mask), model.encode(x, is_causal=True))


@pytest.mark.parametrize("length", [L, 200])  # explicit CPU attention, and SDPA past 128 keys
def test_causal_with_a_padding_mask_still_hides_the_future(length: int) -> None:
    """`is_causal` beside a mask was dropped (SDPA takes one or the other): right-padded causal
    input read every later token."""
    model, x = make(max_positions=256), ids(length=length)
    valid = torch.ones(2, length, dtype=torch.bool)
    valid[1, length - 3:] = False
    y = x.clone()
    y[:, 7] = (y[:, 7] + 1) % V
    with torch.no_grad():
        a = model.encode(x, attn_mask=key_padding_mask(valid), is_causal=True)
        b = model.encode(y, attn_mask=key_padding_mask(valid), is_causal=True)
        plain = model.encode(x, is_causal=True)
    assert changed_rows(a, b) == list(range(7, length))
    torch.testing.assert_close(a[0], plain[0])  # the unpadded row: exactly the causal encoding
    torch.testing.assert_close(a[1, :length - 3], plain[1, :length - 3])  # padding only follows


def test_prefix_mask_prefix_is_bidirectional_and_blind_to_the_target() -> None:
    model, x, P = make(), ids(), 5
    mask = torch.from_numpy(masks.prefix(L, P)).expand(2, L, L)
    assert masks.prefix(L, 0).tolist() == masks.causal(L).tolist()
    assert masks.prefix(L, L).all()
    with torch.no_grad():
        base = model.encode(x, attn_mask=mask)
        in_target, in_prefix = x.clone(), x.clone()
        in_target[:, 8] = (in_target[:, 8] + 1) % V
        in_prefix[:, 1] = (in_prefix[:, 1] + 1) % V
        assert changed_rows(base, model.encode(in_target, attn_mask=mask)) == list(range(8, L))
        assert changed_rows(base, model.encode(in_prefix, attn_mask=mask)) == list(range(L))


def test_padding_keys_do_not_leak_into_real_positions() -> None:
    model, x = make(), ids()
    valid = torch.ones(2, L, dtype=torch.bool)
    valid[:, 9:] = False
    mask = key_padding_mask(valid)
    y = x.clone()
    y[:, 9:] = 3
    with torch.no_grad():
        assert changed_rows(model.encode(x, attn_mask=mask)[:, :9], model.encode(y, attn_mask=mask)[:, :9]) == []


def two_stream(model: Transformer, x: torch.Tensor, order: np.ndarray, mask_id: int = 4):
    content, query = masks.permutation(order)
    allow = torch.from_numpy(np.concatenate([content, query])).expand(x.shape[0], 2 * L, L)
    positions = torch.arange(L)
    return model.two_stream(x, positions, torch.full_like(x, mask_id), positions, allow)


def test_query_stream_never_sees_its_own_content() -> None:
    model, x = make(), ids()
    order = np.random.default_rng(0).permutation(L)
    with torch.no_grad():
        h, g = two_stream(model, x, order)
        for target in range(L):
            y = x.clone()
            y[:, target] = (y[:, target] + 1) % V
            h2, g2 = two_stream(model, y, order)
            later = {int(p) for p in order[np.flatnonzero(order == target)[0] + 1:]}
            # g at `target` is blind to its own token; every position later in the order sees it
            assert set(changed_rows(g, g2)) == later
            assert set(changed_rows(h, h2)) == later | {target}


def test_permuted_inputs_with_their_positions_give_permuted_outputs() -> None:
    model, x = make(), ids()
    perm = torch.from_numpy(np.random.default_rng(1).permutation(L))
    with torch.no_grad():
        base = model.encode(x)
        shuffled = model.encode(x[:, perm], position_ids=perm)
    torch.testing.assert_close(shuffled, base[:, perm], atol=1e-5, rtol=1e-5)


def test_decoder_is_causal_over_its_inputs_and_reads_the_encoder() -> None:
    model = make("bart", n_decoder_layers=1, n_layers=1)
    src, tgt = ids(0), ids(1)
    with torch.no_grad():
        memory = model.encode(src)
        base = model.decode(tgt, memory)
        tgt2 = tgt.clone()
        tgt2[:, 6] = (tgt2[:, 6] + 1) % V
        assert changed_rows(base, model.decode(tgt2, memory)) == list(range(6, L))
        src2 = src.clone()
        src2[:, 11] = (src2[:, 11] + 1) % V
        assert changed_rows(base, model.decode(tgt, model.encode(src2))) == list(range(L))


def test_encoder_decoder_split_and_tied_head() -> None:
    cfg = resolve_model_config("mini", vocab_size=V, layout="bart", encoder_decoder=True)
    assert (cfg.n_layers, cfg.n_decoder_layers) == (2, 2)
    model = Transformer(cfg)
    assert model.lm_head.proj.weight is model.embed.tokens.weight
    assert model.decoder_embed.tokens is model.embed.tokens


def test_uniform_init_loss_is_about_log_vocab() -> None:
    model, x = make("gpt2"), ids(batch=8)
    with torch.no_grad():
        logits = model.logits(model.encode(x, is_causal=True))
    # targets unrelated to the inputs: tied embeddings would favour the input token itself
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), ids(seed=9, batch=8).reshape(-1))
    assert abs(float(loss) - np.log(V)) < 0.1


def test_layouts_differ_where_hf_families_differ() -> None:
    bert, gpt2 = make("bert"), make("gpt2")
    assert bert.cfg.norm == "post" and bert.embed.norm is not None and bert.lm_head.transform is not None
    assert gpt2.cfg.norm == "pre" and gpt2.encoder.final_norm is not None and gpt2.lm_head.proj.bias is None
    assert bert.embed.types is not None and gpt2.embed.types is None
    assert make("bart").embed.offset == 2


def test_bad_model_config_is_a_user_error() -> None:
    from ptmkit.errors import UserError
    with pytest.raises(UserError, match="multiple of heads"):
        ModelConfig(hidden=100, heads=3)
    with pytest.raises(UserError, match="unknown model size"):
        resolve_model_config("huge", vocab_size=V, layout="bert")
    with pytest.raises(UserError, match="unknown model field"):
        resolve_model_config({"hidden": 64, "heads": 2, "n_layer": 3}, vocab_size=V, layout="bert")


def test_model_yaml_file(tmp_path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("size: mini\nhidden: 192\nheads: 3\nlayout: gpt2\n")
    cfg = resolve_model_config(str(path), vocab_size=V, layout="bert")
    assert (cfg.n_layers, cfg.hidden, cfg.heads, cfg.ffn, cfg.norm) == (4, 192, 3, 768, "pre")


def _select(batch: int = 3, length: int = L, seed: int = 1) -> torch.Tensor:
    select = torch.rand(batch, length, generator=torch.Generator().manual_seed(seed)) < 0.3
    select[0] = False  # a sequence with nothing selected
    select[1, 0] = select[1, -1] = True
    return select


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("form", ["none", "padding", "causal", "full-mask", "shared-2d", "per-head-4d"])
def test_selected_rows_equal_the_full_encoding(layout: str, form: str) -> None:
    model, x, select = make(layout), ids(batch=3), _select()
    kwargs: dict = {}
    if form == "padding":
        valid = torch.ones(3, L, dtype=torch.bool)
        valid[2, 9:] = False
        kwargs["attn_mask"] = key_padding_mask(valid)
    elif form == "causal":
        kwargs["is_causal"] = True
    elif form == "full-mask":
        kwargs["attn_mask"] = torch.from_numpy(np.stack([masks.prefix(L, p) for p in (3, 6, 9)]))
    elif form == "shared-2d":  # one (Lq, Lk) mask for every sequence
        kwargs["attn_mask"] = torch.from_numpy(masks.prefix(L, 5))
    elif form == "per-head-4d":  # (B, heads, Lq, Lk): each head its own triangle offset
        triangles = [torch.ones(L, L, dtype=torch.bool).tril(h) for h in range(model.cfg.heads)]
        kwargs["attn_mask"] = torch.stack(triangles)[None].expand(3, -1, -1, -1)
    with torch.no_grad():
        full = model.encode(x, **kwargs)[select]
        rows = model.encode(x, select=select, **kwargs)
    assert rows.shape == (int(select.sum()), model.cfg.hidden)
    torch.testing.assert_close(rows, full, atol=1e-5, rtol=1e-5)


def test_selected_rows_give_the_same_gradients() -> None:
    model, x, select = make("bert"), ids(batch=3), _select()  # eval(): no dropout
    weights = torch.randn(int(select.sum()), model.cfg.hidden, generator=torch.Generator().manual_seed(2))
    grads = []
    for rows in (model.encode(x)[select], model.encode(x, select=select)):
        model.zero_grad()
        (rows * weights).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("form", ["none", "causal", "mask", "mask-with-empty-row"])
def test_explicit_attention_equals_the_sdpa_kernel(form: str) -> None:
    from ptmkit.model.backbone import _explicit_attention
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 5, 5, generator=g) < 0.6 if form.startswith("mask") else None
    if mask is not None:
        mask[..., 0] = True
    if form == "mask-with-empty-row":
        mask[1, 0, 2] = False  # a query row that may see nothing: zeros, as from the flash kernel
    weights = torch.randn(2, 3, 5, 8, generator=g)
    results = []
    for attend in (_explicit_attention, None):
        out = (attend(q, k, v, mask, form == "causal", 0.0) if attend else
               torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=form == "causal"))
        results.append((out, *torch.autograd.grad((out * weights).sum(), (q, k, v))))
    for ours, ref in zip(*results):  # the output and the gradients of q, k and v
        torch.testing.assert_close(ours, ref)
    if form == "mask-with-empty-row":
        assert results[0][0][1, :, 2].abs().max() == 0


def test_fused_adamw_on_plain_parameters() -> None:
    from ptmkit.train.loop import TrainConfig, make_optimizer
    optimizer = make_optimizer(make(), TrainConfig())
    assert all(group["fused"] for group in optimizer.param_groups)
