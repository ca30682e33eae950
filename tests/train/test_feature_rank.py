"""The collapse check every pre-training run ends with: the effective rank of the features it
hands to fine-tuning against the same network at initialisation, in summary.json, and a warning
when it collapsed."""

from __future__ import annotations

import json
from pathlib import Path

import gensim
import pytest
import torch

import ptmkit
import ptmkit.pretraining
from ptmkit.data.corpus import read_texts
from ptmkit.data.shards import prepare
from ptmkit.data.tokenizer import train_tokenizer
from ptmkit.train.feature_rank import collapse_warning, effective_rank

LEE = Path(gensim.__file__).parent / "test" / "test_data" / "lee_background.cor"
TINY = {"n_layers": 2, "hidden": 32, "heads": 2, "max_positions": 64}
TRAIN = {"steps": 2, "batch_size": 4, "seq_len": 32, "workers": 0, "progress": False}


def test_k_orthogonal_directions_of_equal_energy_have_rank_k() -> None:
    k, width = 5, 24
    directions = torch.linalg.qr(torch.randn(width, k, generator=torch.Generator().manual_seed(0)))[0].T
    rows = torch.cat([directions, -directions, 3 * directions, -3 * directions])  # centred already
    assert effective_rank(rows) == pytest.approx(k, abs=1e-3)
    assert effective_rank(7.5 * rows + 2.0) == pytest.approx(k, abs=1e-3)  # scale and offset do not count


def test_unequal_energy_counts_fewer_directions_than_it_spans() -> None:
    rows = torch.cat([torch.diag(torch.tensor([10.0, 1.0, 1.0])), -torch.diag(torch.tensor([10.0, 1.0, 1.0]))])
    assert 1.0 < effective_rank(rows) < 2.0  # three directions, one of them carries 98% of the energy


def test_isotropic_noise_fills_the_width_and_identical_rows_have_rank_one() -> None:
    noise = torch.randn(4000, 16, generator=torch.Generator().manual_seed(0))
    assert 15.0 < effective_rank(noise) <= 16.0
    assert effective_rank(torch.ones(10, 16)) == 1.0 and effective_rank(torch.ones(1, 16)) == 1.0


def test_the_warning_compares_with_the_network_at_initialisation() -> None:
    collapsed = {"feature_rank": 3.4, "feature_rank_at_init": 163.0, "feature_width": 256}
    assert "about 3 directions where the network at initialisation spanned 163" in collapse_warning(collapsed)
    causal = {"feature_rank": 14.1, "feature_rank_at_init": 84.4, "feature_width": 256}  # E3b's clm: fine
    assert collapse_warning(causal) is None
    assert collapse_warning({"steps": 3}) is None  # word2vec's summary: no network features


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    if not LEE.is_file():
        pytest.skip(f"gensim's bundled corpus is missing: {LEE}")
    root = tmp_path_factory.mktemp("rank")
    tokenizer = train_tokenizer(read_texts([LEE]), kind="bpe", vocab_size=600, show_progress=False)
    prepare([LEE], tokenizer, root / "d", val_fraction=0.02, progress=False)
    return root / "d"


@pytest.mark.parametrize(("objective", "width"), [("mlm", 32), ("clm", 32), ("bart", 32), ("electra", 32),
                                                  ("plm", 32), ("elmo", None)])
def test_every_network_objective_records_its_feature_rank(objective, width, data, tmp_path) -> None:
    summary = ptmkit.pretrain(objective=objective, data=str(data), out=str(tmp_path / "run"), model=TINY, **TRAIN)
    written = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert written["feature_rank"] == summary["feature_rank"]
    assert 1.0 <= summary["feature_rank"] <= summary["feature_width"]
    assert 1.0 <= summary["feature_rank_at_init"] <= summary["feature_width"]
    if width is not None:  # ELMo's features are its LSTM states, of its own width
        assert summary["feature_width"] == width
    # two steps from random weights: about where they started
    assert summary["feature_rank"] == pytest.approx(summary["feature_rank_at_init"], rel=0.5)


def test_the_baseline_leaves_the_callers_random_state_alone(data, tmp_path) -> None:
    from ptmkit.api import load_run
    from ptmkit.data.shards import TokenShards
    from ptmkit.train.feature_rank import feature_rank
    ptmkit.pretrain(objective="mlm", data=str(data), out=str(tmp_path / "run"), model=TINY, **TRAIN)
    run = load_run(tmp_path / "run")
    torch.manual_seed(5)
    first = feature_rank(run.objective_impl, run.network, run.model_cfg, TokenShards(data, "val"), 32)
    after = torch.rand(3)
    torch.manual_seed(5)
    assert torch.equal(after, torch.rand(3))  # as if feature_rank had not run
    assert feature_rank(run.objective_impl, run.network, run.model_cfg, TokenShards(data, "val"), 32) == first


def test_a_collapsed_run_warns_and_still_finishes(data, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(ptmkit.pretraining, "feature_rank",
                        lambda *a, **k: {"feature_rank": 1.2, "feature_rank_at_init": 30.0, "feature_width": 32})
    with pytest.warns(UserWarning, match="about 1 directions where the network at initialisation spanned 30"):
        summary = ptmkit.pretrain(objective="mlm", data=str(data), out=str(tmp_path / "run"), model=TINY, **TRAIN)
    assert summary["feature_rank"] == 1.2 and (tmp_path / "run" / "model.safetensors").is_file()
