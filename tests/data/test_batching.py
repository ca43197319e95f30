"""Batches: dynamic padding, bucketing, DDP shares, and permutations that never leak the gold order."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import data_module, synthetic_documents
from scipy.stats import kendalltau

from tuner.data.batching import DocumentBatchSampler, OrderingDataset, collate


def test_batches_pad_dynamically_to_the_longest_document(tmp_path: Path, tiny_bert: str) -> None:
    module = data_module(tmp_path, tiny_bert)
    dataset = module.datasets["train"]
    for batch_keys in list(DocumentBatchSampler(dataset.lengths, 4, shuffle=True, bucket=True, seed=0))[:10]:
        items = [dataset[k] for k in batch_keys]
        batch = collate(items, module.pad_id)
        assert batch["input_ids"].shape[1] == max(len(i["input_ids"]) for i in items)
        assert batch["attention_mask"].sum().item() == sum(len(i["input_ids"]) for i in items)
        assert batch["sentence_mask"].sum().item() == sum(len(i["markers"]) for i in items)
        assert batch["input_ids"].shape[1] < 96


def test_bucketing_cuts_padding(tmp_path: Path, tiny_bert: str) -> None:
    lengths = list(np.random.default_rng(0).integers(10, 200, size=400))

    def padded(bucket: bool) -> int:
        batches = DocumentBatchSampler(lengths, 8, shuffle=True, bucket=bucket, seed=0)
        return sum(len(b) * max(lengths[i] for i, _ in b) for b in batches)

    assert padded(True) < 0.7 * padded(False)
    sampler = DocumentBatchSampler(lengths, 8, shuffle=True, bucket=True, seed=0)
    seen = sorted(i for batch in sampler for i, _ in batch)
    assert seen == list(range(400)) and len(sampler) == 50


@pytest.mark.parametrize("documents", [40, 44])
def test_ddp_ranks_share_the_batches_in_equal_numbers(documents: int) -> None:
    lengths = list(np.random.default_rng(1).integers(10, 200, size=documents))
    whole = [tuple(b) for b in DocumentBatchSampler(lengths, 4, shuffle=True, bucket=True, seed=0)]
    ranks = [DocumentBatchSampler(lengths, 4, shuffle=True, bucket=True, seed=0, rank=r, replicas=3)
             for r in range(3)]
    shares = [[tuple(b) for b in rank] for rank in ranks]
    # 10 or 11 batches over 3 ranks: 4 each, the first ones repeated to fill the last round
    assert [len(s) for s in shares] == [len(r) for r in ranks] == [4, 4, 4]
    assert set().union(*shares) == set(whole)
    assert sorted(sum(shares, [])) == sorted(whole + whole[: 12 - len(whole)])


def _input_orders(dataset: OrderingDataset, epoch: int) -> list[list[int]]:
    return [dataset[(i, epoch)]["gold"] for i in range(len(dataset))]


def test_evaluation_permutations_are_fixed_and_training_ones_change_per_epoch(tmp_path: Path, tiny_bert: str) -> None:
    module = data_module(tmp_path, tiny_bert)
    val, train = module.datasets["validation"], module.datasets["train"]
    assert _input_orders(val, 0) == _input_orders(val, 5)
    again = data_module(tmp_path / "again", tiny_bert) if (tmp_path / "again").mkdir() is None else None
    assert again is not None and _input_orders(again.datasets["validation"], 0) == _input_orders(val, 0)
    assert _input_orders(train, 0) != _input_orders(train, 1)
    assert _input_orders(train, 1) == _input_orders(train, 1)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_input_order_does_not_leak_the_gold_order(tmp_path: Path, tiny_bert: str, split: str) -> None:
    """Fails if a split comes back unshuffled (or nearly so): the input order must carry no signal."""
    module = data_module(tmp_path, tiny_bert, docs=synthetic_documents(800, sizes=(4, 6)))
    dataset = module.datasets[split]
    orders = _input_orders(dataset, 1)
    taus = [kendalltau(o, sorted(o)).statistic for o in orders]
    assert abs(float(np.mean(taus))) < 0.1
    identity = sum(o == sorted(o) for o in orders) / len(orders)
    assert identity < 0.05  # 1/24 to 1/720 by chance for 4 to 6 sentences
    # and the text itself is shuffled: the first input sentence is the gold first one only by chance
    first_is_first = np.mean([dataset[(i, 1)]["gold"][0] == 0 for i in range(len(dataset))])
    assert first_is_first < 0.35
