"""The DataModule: marker tokens, per-sentence truncation, and reshuffling at each epoch."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import data_module

from tuner.config.schema import DataConfig
from tuner.data.module import SentenceOrderingData
from tuner.errors import DataError


@pytest.mark.parametrize("which", ["tiny_bert", "tiny_roberta"])
def test_each_sentence_starts_with_the_tokenizers_own_marker(
    tmp_path: Path, which: str, request: pytest.FixtureRequest
) -> None:
    module = data_module(tmp_path, request.getfixturevalue(which))
    token = {"tiny_bert": "[CLS]", "tiny_roberta": "<s>"}[which]
    expected = module.tokenizer.convert_tokens_to_ids(token)
    assert module.marker_id == expected == module.tokenizer.cls_token_id
    assert (expected == 101) == (which == "tiny_bert")
    item = module.datasets["validation"][0]
    assert [item["input_ids"][m] for m in item["markers"]] == [expected] * len(item["markers"])
    assert item["input_ids"].count(expected) == len(item["markers"])
    assert item["input_ids"][-1] == module.tokenizer.sep_token_id


def test_truncation_is_per_sentence_and_keeps_every_marker(tmp_path: Path, tiny_bert: str) -> None:
    docs = [[" ".join(["word"] * 80) + f" {i} .", "short one .", " ".join(["more"] * 50) + " ."] for i in range(60)]
    module = data_module(tmp_path, tiny_bert, docs=docs, max_length=48, max_sentences=3)
    for dataset in module.datasets.values():
        for index in range(len(dataset)):
            item = dataset[index]
            assert len(item["input_ids"]) <= 48
            assert len(item["markers"]) == 3
    encoded = module.datasets["train"].documents[0]
    # "short one ." is kept whole, the long ones capped: 3 + 20 + 20 <= 48 - 3 markers - 1 end token
    assert sorted(len(s) for s in encoded) == [3, 20, 20]


def test_max_length_too_small_for_max_sentences(tmp_path: Path, tiny_bert: str) -> None:
    with pytest.raises(DataError, match="cannot hold data.max_sentences 16"):
        SentenceOrderingData(DataConfig(path="x", max_length=20), tiny_bert)


def test_training_loader_reshuffles_each_epoch_through_lightnings_hook(tmp_path: Path, tiny_bert: str) -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    module = data_module(tmp_path, tiny_bert)
    loader = module.train_dataloader()
    _set_sampler_epoch(loader, 0)
    first = next(iter(loader))
    _set_sampler_epoch(loader, 1)
    second = next(iter(loader))
    assert not (first["index"].tolist() == second["index"].tolist() and first["gold"].equal(second["gold"]))
    val = module.val_dataloader()
    assert [b["gold"].tolist() for b in val] == [b["gold"].tolist() for b in module.val_dataloader()]
