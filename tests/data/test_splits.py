"""Filtering short and long documents, and the seeded split that keeps duplicates together."""

from __future__ import annotations

import pytest
from conftest import synthetic_documents

from tuner.config.schema import DataConfig
from tuner.data.splits import carve_splits, filter_documents


def test_short_documents_skipped_and_long_ones_truncated_or_skipped(caplog: pytest.LogCaptureFixture) -> None:
    docs = [["a"], ["a", "b"], ["a", "b", "c", "d", "e"]]
    kept, stats = filter_documents(docs, DataConfig(path="x", max_sentences=3))
    assert kept == [["a", "b"], ["a", "b", "c"]]
    assert (stats.too_short, stats.truncated, stats.too_long) == (1, 1, 0)
    kept, stats = filter_documents(docs, DataConfig(path="x", max_sentences=3, overflow="skip"))
    assert kept == [["a", "b"]]
    assert stats.too_long == 1


def test_seeded_split_is_deterministic_disjoint_and_keeps_duplicates_together() -> None:
    docs = synthetic_documents(300)
    docs += docs[:20]  # duplicated documents
    first = carve_splits(docs, seed=3, fractions=(0.1, 0.1))
    again = carve_splits(list(reversed(docs)), seed=3, fractions=(0.1, 0.1))
    keys = {name: {"\n".join(d) for d in split} for name, split in first.items()}
    assert keys == {name: {"\n".join(d) for d in split} for name, split in again.items()}
    assert not keys["train"] & keys["validation"] and not keys["train"] & keys["test"]
    assert not keys["validation"] & keys["test"]
    assert 15 <= len(first["validation"]) <= 50 and 15 <= len(first["test"]) <= 50
    other = carve_splits(docs, seed=4, fractions=(0.1, 0.1))
    assert {"\n".join(d) for d in other["test"]} != keys["test"]
