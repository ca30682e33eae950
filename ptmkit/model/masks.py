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
    content = rank[None, :] <= rank[:, None]
    query = rank[None, :] < rank[:, None]
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
