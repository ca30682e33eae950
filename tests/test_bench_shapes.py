"""bench/matmul_peak.py's model-shape limit times exactly the matmuls the MFU numerator counts."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from matmul_peak import step_matmuls  # noqa: E402

from ptmkit.model.backbone import Transformer  # noqa: E402
from ptmkit.model.config import resolve_model_config  # noqa: E402


@pytest.mark.parametrize("size,batch,seq_len", [("tiny", 4, 32), ("mini", 2, 64), ("small", 16, 128)])
def test_step_matmuls_add_up_to_the_model_flops(size: str, batch: int, seq_len: int) -> None:
    cfg = resolve_model_config(size, vocab_size=1000, layout="bert")
    shapes = step_matmuls(cfg.hidden, cfg.ffn, cfg.heads, cfg.n_layers, 1000, batch, seq_len)
    flops = sum(times * 2 * count * m * k * n for (count, m, k, n), times in shapes.items())
    expected = Transformer(cfg).flops_per_token(seq_len) * batch * seq_len
    assert flops == pytest.approx(expected, rel=1e-12)
