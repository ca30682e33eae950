"""Boolean attention masks for the four families, as numpy arrays built in data workers.

Convention everywhere: ``allow[i, j] == True`` means query row i may attend to key j (the
`F.scaled_dot_product_attention` convention). XLNet's and MPNet's original code use the opposite
(1 = blocked); we convert once, here, and nowhere else.
"""

from __future__ import annotations

import numpy as np


def causal(length: int) -> np.ndarray:
    """(L, L): row i sees keys j <= i."""
    return np.tril(np.ones((length, length), dtype=bool))


def prefix(length: int, prefix_len: int) -> np.ndarray:
    """(L, L): the first `prefix_len` keys are visible to every row, the rest causally (UniLM, T5)."""
    allow = causal(length)
    allow[:, :prefix_len] = True
    return allow


def permutation(order: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-stream masks for a factorisation order (XLNet).

    `order[k]` is the position predicted k-th. The content stream at i sees every j not later
    than i in the order (itself included); the query stream at i sees only j strictly earlier,
    so it never sees its own content. Returns (content, query), each (L, L).
    """
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return from_ranks(rank)


def from_ranks(rank: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-stream masks for a factorisation order given as ranks, where ties are allowed.

    Content row i sees j iff rank[j] <= rank[i]; query row i sees j iff rank[j] < rank[i].
    Positions that share a rank therefore see one another in the content stream: XLNet's
    `_local_perm` (zihangdai/xlnet data_utils.py) gives every non-target token rank -1, so the
    context is bidirectional, visible to all, and blind to every target. With distinct ranks this
    is `permutation`. Returns (content, query), each (L, L).
    """
    content = rank[None, :] <= rank[:, None]
    query = rank[None, :] < rank[:, None]
    return content, query


def masked_permutation(n_tokens: int, n_predicted: int) -> tuple[np.ndarray, np.ndarray]:
    """MPNet's two-stream masks (`make_query_and_content_mask`, microsoft/MPNet
    pretraining/fairseq/models/masked_permutation_net.py), converted to True = may attend.

    Keys, in the physically permuted order: `p = n_tokens - n_predicted` non-predicted tokens,
    the b = `n_predicted` predicted tokens' content, then b [MASK] placeholders carrying the
    predicted positions. Non-predicted and placeholder rows see every non-predicted token and
    every placeholder; predicted slot k (content row and query row alike) sees the content of the
    predicted slots before it, its content row also its own, and the placeholders of slot k on
    (query) or after k (content). So every row sees all n_tokens positions exactly once ("position
    compensation") and no query sees its own content.
    Returns content (n + b, n + b) and query (b, n + b).
    """
    p, n, b = n_tokens - n_predicted, n_tokens, n_predicted
    through, before = permutation(np.arange(b))  # (b, b): slot j <= k, slot j < k
    content = np.ones((n + b, n + b), dtype=bool)
    content[:, p:n] = False
    content[p:n, p:n] = through
    content[p:n, n:] = ~through
    query = np.ones((b, n + b), dtype=bool)
    query[:, p:n] = before
    query[:, n:] = ~before
    return content, query


def with_padding(allow: np.ndarray, key_valid: np.ndarray) -> np.ndarray:
    """AND a (Lq, Lk) mask with a (Lk,) key-validity vector.

    Rows left with no visible key would give NaN after softmax; they are padding (or a query
    with nothing to see), whose outputs are ignored, so they are allowed their own column or
    the first key.
    """
    allow = allow & key_valid[None, :]
    empty = ~allow.any(axis=1)
    if empty.any():
        rows = np.flatnonzero(empty)
        allow[rows, np.minimum(rows, allow.shape[1] - 1)] = True
    return allow
