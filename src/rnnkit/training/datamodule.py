"""The Lightning data module that serves a task's Splits to the Trainer."""
from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader

from .data import EpochShuffle, ResumableLoader, Splits


class TaskData(L.LightningDataModule):
    def __init__(self, splits: Splits, batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.splits, self.batch_size, self.num_workers, self.seed = splits, batch_size, num_workers, seed

    def _loader(self, dataset, sampler=None, loader=DataLoader, **kwargs) -> DataLoader:
        # A loader of its own generator: making an iterator draws a seed from it, and drawing from torch's
        # global generator would shift the dropout masks of a run resumed mid-epoch.
        kwargs["generator"] = torch.Generator().manual_seed(self.seed)
        if self.splits.batched:
            world = self.trainer.world_size if self.trainer else 1
            if world > 1:  # each process reads its own streams, in order, so carried states stay valid
                dataset = dataset.shard(self.trainer.global_rank, world)
            return loader(dataset, batch_size=None, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0, **kwargs)
        return loader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                      collate_fn=self.splits.collate_fn, persistent_workers=self.num_workers > 0, **kwargs)

    def train_dataloader(self) -> DataLoader:
        sampler = None if self.splits.batched else EpochShuffle(self.splits.train, self.seed)
        return self._loader(self.splits.train, sampler, ResumableLoader, position=self._position)

    def _position(self) -> tuple[int, int]:
        """(epoch, training batches done in it), as Lightning counts them."""
        return self.trainer.current_epoch, self.trainer.fit_loop.epoch_loop.batch_progress.current.processed

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.splits.val)

    def test_dataloader(self) -> DataLoader:
        if self.splits.test is None:
            raise ValueError("this task has no test set")
        return self._loader(self.splits.test)
