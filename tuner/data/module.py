"""The LightningDataModule: a ``[data]`` section's documents, read, split and encoded once, as data loaders."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from torch.utils.data import DataLoader

from tuner import backbone
from tuner.config.loader import data_config
from tuner.config.schema import DataConfig
from tuner.data.batching import Collate, DocumentBatchSampler, OrderingDataset
from tuner.data.encoding import encode_cached, encode_documents, fingerprint
from tuner.data.readers import load_documents, read_file
from tuner.data.splits import filter_documents
from tuner.errors import DataError

log = logging.getLogger(__name__)


class SentenceOrderingData(pl.LightningDataModule):
    """Shuffled, tokenised, dynamically padded documents for one backbone's tokenizer.

    Args:
        data: the study's ``[data]`` settings (a :class:`DataConfig` or its dict).
        backbone_name: hub name or local path of the backbone, whose tokenizer encodes the text.
    """

    def __init__(self, data: DataConfig | Mapping[str, Any], backbone_name: str) -> None:
        super().__init__()
        self.config = data if isinstance(data, DataConfig) else data_config(data)
        self.save_hyperparameters({"data": asdict(self.config), "backbone_name": backbone_name})
        self.backbone_name = backbone_name
        self.tokenizer = backbone.load_tokenizer(backbone_name)
        self.marker_id = backbone.marker_id(self.tokenizer)
        self.end_id = backbone.end_id(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        self.max_length = self._max_length()
        self.datasets: dict[str, OrderingDataset] = {}
        self.fingerprint: str | None = None

    def _max_length(self) -> int:
        limit = self.config.max_length
        model_max = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and 0 < model_max < 100_000:
            limit = min(limit, model_max)
        if 2 * self.config.max_sentences + 1 > limit:
            raise DataError(
                f"data.max_length {limit} cannot hold data.max_sentences {self.config.max_sentences} "
                "sentences with a marker each; raise max_length or lower max_sentences"
            )
        return limit

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        documents = load_documents(self.config)
        self.fingerprint = fingerprint(documents)
        cache = Path(self.config.cache_dir) if self.config.cache_dir else None
        for name, docs in documents.items():
            encoded = encode_cached(docs, self.tokenizer, self.max_length, cache)
            self.datasets[name] = self.make_dataset(encoded, name)

    def make_dataset(self, encoded: Sequence[Sequence[Sequence[int]]], split: str) -> OrderingDataset:
        """A dataset over already encoded documents, shuffled as ``split`` is."""
        assert self.marker_id is not None
        return OrderingDataset(encoded, self.marker_id, self.end_id, split, self.config.seed, fixed=split != "train")

    def documents_from_file(self, path: str | Path, split: str = "predict") -> OrderingDataset:
        """A dataset over any file the readers understand, shuffled with the fixed permutation."""
        documents, stats = filter_documents(read_file(path, self.config), self.config)
        if not documents:
            raise DataError(f"{path}: no document with at least {self.config.min_sentences} sentences "
                            f"({stats.read} read, split at {self.config.separator!r}); check data.format and "
                            "data.separator (--set data.separator=...)")
        encoded = encode_documents(documents, self.tokenizer, self.max_length)
        return self.make_dataset(encoded, split)

    def loader(self, dataset: OrderingDataset, shuffle: bool = False) -> DataLoader:
        # attached to a DDP trainer, each rank loads its own share of the batches
        trainer = self.trainer
        rank, replicas = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        sampler = DocumentBatchSampler(
            dataset.lengths, self.config.batch_size, shuffle=shuffle, bucket=self.config.bucket, seed=self.config.seed,
            rank=rank, replicas=replicas,
        )
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=Collate(self.pad_id),
            num_workers=self.config.num_workers,
            persistent_workers=self.config.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["validation"])

    def test_dataloader(self) -> DataLoader:
        if not self.datasets.get("test"):
            raise DataError("this study's data has no test split (set data.test, or use data.path with data.split)")
        return self.loader(self.datasets["test"])
