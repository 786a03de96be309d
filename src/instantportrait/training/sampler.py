"""A resumable, rank-aware sampler: the data order is a function of (seed, epoch) only."""

from __future__ import annotations

from collections.abc import Iterator

import torch


class ResumableSampler(torch.utils.data.Sampler[int]):
    """Shuffled indices for one rank, starting at any position of any epoch.

    Each epoch is a permutation drawn from ``seed + epoch``; global batches of
    ``batch_size * world_size`` consecutive indices are split across ranks, so every rank
    sees a disjoint share and the whole order is the same on any number of restarts. The
    last incomplete global batch of an epoch is dropped.

    Args:
        length: number of examples.
        batch_size: per-rank micro-batch size.
        rank / world_size: this process and the number of processes.
        seed: the shuffle seed.
        shuffle: permute each epoch (default) or keep the stored order.
        start: (epoch, micro-batches already consumed in that epoch) to resume from.
    """

    def __init__(
        self,
        length: int,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        shuffle: bool = True,
        start: tuple[int, int] = (0, 0),
    ):
        self.length, self.batch_size = length, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.shuffle = seed, shuffle
        self.epoch, self.offset = start
        if self.batches_per_epoch < 1:
            raise ValueError(
                f"dataset of {length} examples is smaller than one global batch "
                f"({batch_size} x {world_size} processes)"
            )

    @property
    def batches_per_epoch(self) -> int:
        return self.length // (self.batch_size * self.world_size)

    def order(self, epoch: int) -> list[int]:
        if not self.shuffle:
            return list(range(self.length))
        g = torch.Generator().manual_seed(self.seed + epoch)
        return torch.randperm(self.length, generator=g).tolist()

    def batches(self) -> Iterator[tuple[int, int, list[int]]]:
        """Endless (epoch, batch position in the epoch, indices) from the start position."""
        epoch, offset = self.epoch, self.offset
        global_batch = self.batch_size * self.world_size
        while True:
            order = self.order(epoch)
            for b in range(offset, self.batches_per_epoch):
                chunk = order[b * global_batch : (b + 1) * global_batch]
                mine = chunk[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
                yield epoch, b, mine
            epoch, offset = epoch + 1, 0

    def __iter__(self) -> Iterator[int]:  # pragma: no cover - the loop uses batches()
        for _, _, idx in self.batches():
            yield from idx

    def __len__(self) -> int:
        return self.batches_per_epoch * self.batch_size
