"""Which documents a study uses, and in which split.

Documents with fewer than ``min_sentences`` sentences are dropped; those above ``max_sentences`` are
cut (``overflow = "truncate"`` keeps the first ``max_sentences``, a contiguous prefix, so its order
stays meaningful) or dropped (``"skip"``). Counts are logged. Where no validation or test file is
given, they are carved out by a hash of each document's text and the seed: a document's split depends
on its text alone, so even a duplicated document cannot land in two.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from tuner.config.schema import DataConfig

log = logging.getLogger(__name__)


SPLITS = ("train", "validation", "test")
Document = list[str]  # a document: its sentences in their true order
SPLIT_SALT = {"train": 0, "validation": 1, "test": 2, "predict": 3}


@dataclass
class FilterStats:
    read: int = 0
    too_short: int = 0
    truncated: int = 0
    too_long: int = 0

    @property
    def kept(self) -> int:
        return self.read - self.too_short - self.too_long


def filter_documents(documents: Sequence[Document], config: DataConfig) -> tuple[list[Document], FilterStats]:
    """Apply ``min_sentences``, ``max_sentences`` with the ``overflow`` rule, and ``max_documents``."""
    stats = FilterStats(read=len(documents))
    kept: list[Document] = []
    for document in documents:
        if len(document) < config.min_sentences:
            stats.too_short += 1
        elif len(document) > config.max_sentences:
            if config.overflow == "skip":
                stats.too_long += 1
            else:
                stats.truncated += 1
                kept.append(document[: config.max_sentences])
        else:
            kept.append(document)
    return kept, stats


def _split_of(document: Document, seed: int, fractions: tuple[float, float]) -> str:
    digest = hashlib.sha256(f"{seed}\x00{chr(0).join(document)}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2**64
    val, test = fractions
    return "validation" if u < val else "test" if u < val + test else "train"


def carve_splits(documents: Sequence[Document], seed: int, fractions: tuple[float, float]) -> dict[str, list[Document]]:
    """Seeded train/validation/test split by a hash of each document's text: no leakage by construction."""
    splits: dict[str, list[Document]] = {name: [] for name in SPLITS}
    for document in documents:
        splits[_split_of(document, seed, fractions)].append(document)
    return splits
