"""Deterministic, resumable batches of objective examples.

Window order is a permutation per epoch seeded by (seed, epoch), and each example's noise is
seeded by (seed, epoch, window), so a batch depends only on its position in the stream: not on
the number of workers, and not on whether the run was interrupted. Resuming is starting the
sampler at the number of batches already consumed.
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ptmkit.data.shards import TokenShards, Window

Example = dict[str, np.ndarray]
MakeExample = Callable[[Window, np.random.Generator], Example]


class WindowDataset(Dataset):
    """Item (epoch, window index) -> one example with its own seeded noise."""

    def __init__(self, shards: TokenShards, length: int, make_example: MakeExample, seed: int) -> None:
        self.shards, self.length, self.make_example, self.seed = shards, length, make_example, seed

    def __len__(self) -> int:
        return self.shards.n_windows(self.length)

    def __getitem__(self, key: tuple[int, int]) -> Example:
        epoch, index = key
        rng = np.random.default_rng([self.seed, epoch, index])
        return self.make_example(self.shards.window(index, self.length), rng)


class ResumableBatchSampler(Sampler):
    """Endless batches of (epoch, index) keys, starting after `skip_batches` batches.

    Each rank takes every `world`-th batch, so ranks never overlap and together cover all. An
    epoch is a whole number of global batches (`world` x `batch_size` examples), so `world`
    processes of batch B see exactly the steps of one process of batch `world` x B, epoch
    boundaries included.
    """

    def __init__(self, n_windows: int, batch_size: int, seed: int, skip_batches: int = 0,
                 rank: int = 0, world: int = 1) -> None:
        if n_windows < batch_size * world:
            raise ValueError(f"{n_windows} windows cannot fill a global batch of {batch_size} x {world} processes")
        self.n, self.batch_size, self.seed = n_windows, batch_size, seed
        self.skip, self.rank, self.world = skip_batches, rank, world

    def _order(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.n)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # drop the ragged tail: every global batch is full
        per_epoch = self.n // (self.batch_size * self.world) * self.world
        global_batch = self.skip * self.world + self.rank
        while True:
            epoch, b = divmod(global_batch, per_epoch)
            order = self._order(epoch)
            while b < per_epoch:
                if (epoch * per_epoch + b) % self.world == self.rank:
                    yield [(epoch, int(i)) for i in order[b * self.batch_size:(b + 1) * self.batch_size]]
                b += 1
            global_batch = (epoch + 1) * per_epoch

    def __len__(self) -> int:  # endless; DataLoader only needs a length for progress bars
        return 2**62


def _ignore_stop_signals(worker_id: int) -> None:
    """Workers leave SIGTERM/SIGINT to the main process, which saves a checkpoint and then shuts
    them down (torchrun and terminals signal the whole process group; a worker killed by it would
    crash the main process before it can save). A worker still exits when the main process dies."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(dataset: WindowDataset, collate: Callable, batch_size: int, seed: int,
                skip_batches: int = 0, workers: int = 1, rank: int = 0, world: int = 1) -> DataLoader:
    """A DataLoader whose noise runs in `workers` background processes."""
    sampler = ResumableBatchSampler(len(dataset), batch_size, seed, skip_batches, rank, world)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                      persistent_workers=workers > 0, prefetch_factor=4 if workers else None,
                      generator=torch.Generator().manual_seed(seed),
                      worker_init_fn=_ignore_stop_signals if workers else None)


def evaluation_batches(shards: TokenShards, length: int, make_example: MakeExample,
                       collate: Callable, batch_size: int, max_batches: int) -> list:
    """Fixed validation batches (same windows, same noise at every evaluation)."""
    dataset = WindowDataset(shards, length, make_example, seed=12345)
    n = min(len(dataset) // batch_size, max_batches)
    return [collate([dataset[(0, b * batch_size + i)] for i in range(batch_size)]) for b in range(n)]
