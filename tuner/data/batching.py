"""Encoded documents to batches: seeded shuffling, marker tokens, per-sentence truncation, dynamic padding.

At batch time each document's sentences are shuffled with a seeded generator (a fixed permutation per
document for validation and test, a fresh one per epoch for training), the tokenizer's marker token is
put before each sentence, and the batch is padded to its longest sequence. The model sees only the
shuffled input; the gold position of each input sentence is the target. The batch sampler groups
documents of similar length and splits the training set between DDP ranks.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from tuner.data.splits import SPLIT_SALT

log = logging.getLogger(__name__)


def permutation(seed: int, split: str, index: int, epoch: int, n: int) -> np.ndarray:
    """The input order of a document's sentences: ``perm[k]`` is the gold position of input slot k."""
    return np.random.default_rng([seed, SPLIT_SALT[split], epoch, index]).permutation(n)


@dataclass(eq=False, repr=False)  # compared and shown as one object: its documents may be many
class OrderingDataset(Dataset):
    """Shuffled documents: each item is the marker-joined input and each input sentence's gold position.

    Training (``fixed=False``) draws a fresh permutation per epoch; other splits use one fixed
    permutation per document, so every run is evaluated on the same inputs. Items are addressed by
    ``(index, epoch)`` pairs from :class:`DocumentBatchSampler` (or a plain index: epoch 0).
    """

    documents: Sequence[Sequence[Sequence[int]]]
    marker_id: int
    end_id: int | None
    split: str
    seed: int
    fixed: bool
    lengths: list[int] = field(init=False)  # each document's input length, in tokens

    def __post_init__(self) -> None:
        self.lengths = [sum(len(s) + 1 for s in d) + (self.end_id is not None) for d in self.documents]

    def __len__(self) -> int:
        return len(self.documents)

    def __getitem__(self, key: int | tuple[int, int]) -> dict[str, Any]:
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        sentences = self.documents[index]
        perm = permutation(self.seed, self.split, index, 0 if self.fixed else epoch, len(sentences))
        input_ids: list[int] = []
        markers: list[int] = []
        slots: list[int] = []
        for slot, gold in enumerate(perm):
            markers.append(len(input_ids))
            input_ids.append(self.marker_id)
            input_ids.extend(sentences[gold])
            slots.extend([slot] * (len(sentences[gold]) + 1))
        if self.end_id is not None:
            input_ids.append(self.end_id)
            slots.append(-1)
        return {"input_ids": input_ids, "markers": markers, "slots": slots, "gold": perm.tolist(), "index": index}


def collate(items: Sequence[Mapping[str, Any]], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad to the longest input and the most sentences in the batch."""
    batch, length = len(items), max(len(item["input_ids"]) for item in items)
    sentences = max(len(item["markers"]) for item in items)
    input_ids = torch.full((batch, length), pad_id, dtype=torch.long)
    attention = torch.zeros((batch, length), dtype=torch.long)
    markers = torch.zeros((batch, sentences), dtype=torch.long)
    # slot of the sentence each token belongs to (marker included); -1 for the end token and padding
    slots = torch.full((batch, length), -1, dtype=torch.long)
    gold = torch.zeros((batch, sentences), dtype=torch.long)
    mask = torch.zeros((batch, sentences), dtype=torch.bool)
    for row, item in enumerate(items):
        n, s = len(item["input_ids"]), len(item["markers"])
        input_ids[row, :n] = torch.tensor(item["input_ids"])
        attention[row, :n] = 1
        markers[row, :s] = torch.tensor(item["markers"])
        slots[row, :n] = torch.tensor(item["slots"])
        gold[row, :s] = torch.tensor(item["gold"])
        mask[row, :s] = True
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "markers": markers,
        "slots": slots,
        "gold": gold,
        "sentence_mask": mask,
        "index": torch.tensor([item["index"] for item in items]),
    }


class _Epoch:
    """What Lightning calls ``set_epoch`` on at the start of every training epoch."""

    def __init__(self) -> None:
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch


class DocumentBatchSampler:
    """Batches of ``(index, epoch)`` keys, optionally grouped by length to cut padding.

    With ``bucket``, documents are sorted by length within windows of 50 batches, and the batches are
    then shuffled, so batches hold similar lengths but the order of lengths stays random.

    Under DDP every rank builds the same batches and takes every ``replicas``-th one, starting at its
    ``rank``. Lightning cannot put its distributed sampler inside a batch sampler of its own kind, so the
    sharding is done here. Every rank must run the same number of steps, so when the batches do not
    divide evenly, the first ones are repeated to fill the last round (as ``DistributedSampler`` pads).
    """

    _WINDOW = 50

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool, bucket: bool, seed: int,
                 rank: int = 0, replicas: int = 1) -> None:
        if not 0 <= rank < replicas:
            raise ValueError(f"rank {rank} is not one of {replicas} replicas")
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.bucket = bucket
        self.seed = seed
        self.rank = rank
        self.replicas = replicas
        self.sampler = _Epoch()

    def __len__(self) -> int:
        return math.ceil(math.ceil(len(self.lengths) / self.batch_size) / self.replicas)

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.sampler.epoch
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.lengths)) if self.shuffle else np.arange(len(self.lengths))
        if self.bucket:
            window = self.batch_size * self._WINDOW
            chunks = [order[i : i + window] for i in range(0, len(order), window)]
            order = np.concatenate([c[np.argsort([self.lengths[i] for i in c], kind="stable")] for c in chunks])
        batches = [order[i : i + self.batch_size].tolist() for i in range(0, len(order), self.batch_size)]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if self.replicas > 1 and batches:
            padded = len(self) * self.replicas
            batches = (batches * self.replicas)[:padded][self.rank :: self.replicas]
        for batch in batches:
            yield [(index, epoch) for index in batch]


class Collate:
    """A picklable collate function (data loader workers need to pickle it)."""

    def __init__(self, pad_id: int) -> None:
        self.pad_id = pad_id

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        return collate(items, self.pad_id)
