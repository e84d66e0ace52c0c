"""The data order of a run: a pure function of (seed, step), which is what makes ``--resume`` continue exactly
where a run stopped and N processes see disjoint slices of one global batch."""

from __future__ import annotations

import torch


class StepBatches(torch.utils.data.Sampler):
    """Yields, for each step from ``start``, this rank's ``(epoch, item)`` pairs. The dataset shuffles per epoch
    and draws the view counts per block of ``global_batch`` items, so a global batch is the consecutive items
    [k G, (k+1) G) of its epoch and rank r takes its slice of them."""

    def __init__(self, items_per_epoch: int, global_batch: int, rank: int, per_rank: int, start: int, stop: int):
        self.per_epoch = max(1, items_per_epoch // global_batch)
        self.g, self.rank, self.per_rank, self.start, self.stop = global_batch, rank, per_rank, start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def __iter__(self):
        for step in range(self.start, self.stop):
            epoch, k = divmod(step, self.per_epoch)
            first = k * self.g + self.rank * self.per_rank
            yield [(epoch, i) for i in range(first, first + self.per_rank)]


class EpochItems(torch.utils.data.Dataset):
    """``dataset[(epoch, i)]``: item i of that epoch (works inside DataLoader workers, which hold copies)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, i = key
        self.dataset.set_epoch(epoch)
        return self.dataset[i]
