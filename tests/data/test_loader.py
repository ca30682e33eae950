"""The resumable sampler: deterministic, no overlap and no gap across ranks, exact skipping."""

from __future__ import annotations

import itertools

import numpy as np

from ptmkit.data.loader import ResumableBatchSampler


def take(sampler: ResumableBatchSampler, n: int) -> list[list[tuple[int, int]]]:
    return list(itertools.islice(iter(sampler), n))


def test_each_epoch_is_a_permutation_then_a_new_one() -> None:
    batches = take(ResumableBatchSampler(40, 8, seed=1), 10)
    epoch0 = [k for b in batches[:5] for k in b]
    epoch1 = [k for b in batches[5:] for k in b]
    assert sorted(i for _, i in epoch0) == list(range(40)) == sorted(i for _, i in epoch1)
    assert {e for e, _ in epoch0} == {0} and {e for e, _ in epoch1} == {1}
    assert [i for _, i in epoch0] != [i for _, i in epoch1]


def test_skipping_resumes_exactly() -> None:
    full = take(ResumableBatchSampler(43, 8, seed=3), 12)
    for skip in (0, 1, 4, 5, 7):
        assert take(ResumableBatchSampler(43, 8, seed=3, skip_batches=skip), 12 - skip) == full[skip:]


def test_ranks_partition_the_global_stream() -> None:
    """3 processes x batch 4 see, step by step, the batches of 1 process x batch 12, also across
    epoch boundaries that a per-process epoch of 64 // 4 = 16 batches would put mid-step."""
    single = take(ResumableBatchSampler(64, 12, seed=0), 12)  # 5 steps an epoch: 60 of 64 windows
    ranks = [take(ResumableBatchSampler(64, 4, seed=0, rank=r, world=3), 12) for r in range(3)]
    assert [ranks[0][s] + ranks[1][s] + ranks[2][s] for s in range(12)] == single
    resumed = take(ResumableBatchSampler(64, 4, seed=0, rank=1, world=3, skip_batches=5), 3)
    assert resumed == ranks[1][5:8]


def test_full_batches_only() -> None:
    batches = take(ResumableBatchSampler(10, 4, seed=0), 6)
    assert all(len(b) == 4 for b in batches)
    assert len({i for _, i in (k for b in batches[:2] for k in b)}) == 8
    assert np.all([e for b in batches[2:4] for e, _ in b] == np.array(1))
