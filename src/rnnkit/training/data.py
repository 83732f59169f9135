"""Datasets shared by the tasks: in-memory tensors served a batch at a time (one index operation per
batch, not one per example), the fixed-seed validation split, and a loader that resumes mid-epoch.
Torch only: a task's model can be built without the training libraries (see datamodule.py)."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

VALIDATION_SEED = 0  # the validation split is the same for every --seed, so runs stay comparable


class TensorBatches(Dataset):
    """(inputs, targets) tensors with examples along dim 0; a DataLoader gets whole batches from
    `__getitems__` (the sampler's indices), so no per-example Python work or collation happens."""

    def __init__(self, inputs: Tensor, targets: Tensor):
        if len(inputs) != len(targets):
            raise ValueError(f"inputs and targets differ in length: {len(inputs)} vs {len(targets)}")
        self.inputs, self.targets = inputs, targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i):
        return self.inputs[i], self.targets[i]

    def __getitems__(self, indices: list[int]):
        index = torch.as_tensor(indices)
        return self.inputs[index], self.targets[index]

    def subset(self, index: Tensor) -> "TensorBatches":
        return TensorBatches(self.inputs[index], self.targets[index])

    def split(self, val_fraction: float) -> tuple["TensorBatches", "TensorBatches"]:
        """(train, val) by `validation_split`: the same split for every run."""
        train, val = validation_split(len(self), val_fraction)
        return self.subset(train), self.subset(val)


class EpochShuffle(RandomSampler):
    """A new order every epoch, drawn from (seed, epoch) alone, so a run resumed at an epoch boundary
    sees exactly the batches of an uninterrupted one. Lightning calls `set_epoch` (and, under DDP,
    swaps in a DistributedSampler, which shuffles by seed and epoch the same way)."""

    def __init__(self, data_source, seed: int):
        super().__init__(data_source)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(len(self.data_source), generator=generator).tolist()


class ResumableLoader(DataLoader):
    """A DataLoader that resumes mid-epoch. Lightning saves its `state_dict()` in checkpoints and hands it
    back to `load_state_dict()` on resume; the next pass, if it is the same epoch, skips the batches the
    interrupted run had trained on. `position()` gives (epoch, training batches done in it): the
    trainer's count, exact when a checkpoint is written (the loader's own count may run ahead of it)."""

    def __init__(self, *args, position=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.position = position
        self._resume_at = None  # (epoch, batches done) of the checkpoint this loader resumes from

    def state_dict(self) -> dict:
        epoch, batches = self.position() if self.position else (0, 0)
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state: dict) -> None:
        self._resume_at = (int(state["epoch"]), int(state["batches"]))

    def __iter__(self):
        resume_at, self._resume_at = self._resume_at, None
        iterator = super().__iter__()
        return iterator if resume_at is None else self._skipping(iterator, resume_at)

    def _skipping(self, iterator, resume_at):
        # Runs at the first fetch, after Lightning has set the epoch (a checkpoint written at the end of an
        # epoch resumes at the start of the next one: nothing to skip).
        epoch, batches = resume_at
        if self.position and self.position()[0] == epoch:
            for _ in range(batches):
                next(iterator, None)
        yield from iterator


def keep_batch(batch):
    """collate_fn for datasets whose `__getitems__` already returns a batch."""
    return batch


def validation_split(n: int, fraction: float) -> tuple[Tensor, Tensor]:
    """Indices (train, val) of a random split of n examples, the same for every run."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(VALIDATION_SEED))
    n_val = max(1, round(n * fraction))
    if n_val >= n:
        raise ValueError(f"a validation fraction of {fraction} leaves no training data out of {n} examples")
    return order[n_val:], order[:n_val]


@dataclass
class Splits:
    """What a task's data gives the trainer; `extra` (e.g. a vocabulary) is saved in checkpoints."""

    train: Dataset
    val: Dataset
    test: Dataset | None
    extra: dict = field(default_factory=dict)
    batched: bool = False  # items are whole batches in order (truncated-BPTT windows): no batching, no shuffle
    collate_fn: object = keep_batch
    unlabelled: list = field(default_factory=list)  # word-id sentences for a task's pretraining (not saved)
    init: dict = field(default_factory=dict)  # what a new model starts from, e.g. pretrained vectors (not saved)
