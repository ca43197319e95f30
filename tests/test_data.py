from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from conftest import require_shared, synthetic_documents, write_lines
from scipy.stats import kendalltau

import tuner.data as data_module
from tuner.config import DataConfig
from tuner.data import (
    DocumentBatchSampler,
    SentenceOrderingData,
    carve_splits,
    collate,
    encode_cached,
    encode_documents,
    filter_documents,
    load_documents,
    python_docs_corpus,
    read_file,
    sentence_budget,
    split_sentences,
)
from tuner.errors import DataError

# ---------------------------------------------------------------------------------------------- readers


def test_lines_with_separator(tmp_path: Path) -> None:
    path = tmp_path / "d.lower"
    path.write_text("a b . <eos> c d . <eos> e .\n\nf . <eos> g .\n")
    docs = read_file(path, DataConfig(path=str(path), separator=" <eos> "))
    assert docs == [["a b .", "c d .", "e ."], ["f .", "g ."]]


def test_tsv_uses_tab_unless_a_separator_is_set(tmp_path: Path) -> None:
    path = tmp_path / "d.tsv"
    path.write_text("One.\tTwo. | Three.\nFour.\tFive.\n")
    assert read_file(path, DataConfig(path=str(path))) == [["One.", "Two. | Three."], ["Four.", "Five."]]
    for config in (DataConfig(path=str(path), separator=" | "), DataConfig(path=str(path), separator=" | ",
                                                                         format="lines")):
        assert read_file(path, config) == [["One.\tTwo.", "Three."], ["Four.\tFive."]]


def test_csv_list_column_and_text_column(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text('id,sentences\n1,"[""A b."", ""C d.""]"\n2,E f.|G h.\n')
    docs = read_file(path, DataConfig(path=str(path), separator="|"))
    assert docs == [["A b.", "C d."], ["E f.", "G h."]]
    text = tmp_path / "t.csv"
    text.write_text('text\n"First one. Second one! Third?"\n')
    assert read_file(text, DataConfig(path=str(text))) == [["First one.", "Second one!", "Third?"]]


def test_story_cloze_columns_pick_the_right_ending(tmp_path: Path) -> None:
    path = tmp_path / "cloze.csv"
    header = "InputStoryid,InputSentence1,InputSentence2,InputSentence3,InputSentence4," \
             "RandomFifthSentenceQuiz1,RandomFifthSentenceQuiz2,AnswerRightEnding\n"
    path.write_text(header + "x,S1.,S2.,S3.,S4.,Wrong.,Right.,2\ny,T1.,T2.,T3.,T4.,Good.,Bad.,1\n")
    config = DataConfig(
        path=str(path),
        sentence_columns=("InputSentence1", "InputSentence2", "InputSentence3", "InputSentence4"),
        ending_columns=("RandomFifthSentenceQuiz1", "RandomFifthSentenceQuiz2"),
        answer_column="AnswerRightEnding",
    )
    assert read_file(path, config) == [["S1.", "S2.", "S3.", "S4.", "Right."], ["T1.", "T2.", "T3.", "T4.", "Good."]]
    path.write_text(header + "x,S1.,S2.,S3.,S4.,Wrong.,Right.,3\n")
    with pytest.raises(DataError, match=r"cloze.csv:2: column 'AnswerRightEnding' holds '3'"):
        read_file(path, config)


def test_jsonl_sentence_lists(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"sentences": ["a.", "b.", "c."]}) + "\n\n" + json.dumps({"sentences": ["d.", "e."]}))
    assert read_file(path, DataConfig(path=str(path))) == [["a.", "b.", "c."], ["d.", "e."]]


def test_plain_text_paragraphs_become_documents(tmp_path: Path) -> None:
    path = tmp_path / "story.txt"
    path.write_text("It rained. We stayed in. Then the sun came out.\n\nA new day began. Birds sang.\n")
    assert read_file(path, DataConfig(path=str(path))) == [
        ["It rained.", "We stayed in.", "Then the sun came out."], ["A new day began.", "Birds sang."]]


def test_split_sentences_keeps_abbreviations_of_lowercase_words() -> None:
    assert split_sentences("See e.g. this one. And 2 more! Done?") == ["See e.g. this one.", "And 2 more!", "Done?"]


def test_python_docs_corpus_is_real_prose() -> None:
    docs = python_docs_corpus()
    assert len(docs) > 150
    assert all(len(d) >= 3 for d in docs)


# ---------------------------------------------------------------------------------------------- bad input


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=f"data file {tmp_path / 'nope.lower'} does not exist"):
        read_file(tmp_path / "nope.lower", DataConfig(path="x"))


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        read_file(tmp_path, DataConfig(path="x"))


def test_non_utf8_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "bad.lower"
    path.write_bytes(b"ok . <eos> fine .\nbad \xff byte . <eos> x .\n")
    with pytest.raises(DataError, match=r"bad.lower:2: not valid UTF-8 \(byte 0xff at column 5\)"):
        read_file(path, DataConfig(path=str(path), separator=" <eos> "))


def test_unknown_column_lists_the_columns(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"body": "x"}) + "\n")
    with pytest.raises(DataError, match=r"d.jsonl: unknown column.*'sentences'.*'text'.*columns are 'body'"):
        read_file(path, DataConfig(path=str(path)))
    with pytest.raises(DataError, match="unknown column 'S1'"):
        read_file(path, DataConfig(path=str(path), sentence_columns=("S1",)))


def test_bad_json_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"sentences": ["a.", "b."]}) + "\n{oops\n")
    with pytest.raises(DataError, match=r"d.jsonl:2: not valid JSON"):
        read_file(path, DataConfig(path=str(path)))


def test_empty_data_set_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "one.lower"
    path.write_text("only one sentence .\nanother lonely one .\n")
    config = DataConfig(train=str(path), validation=str(path), separator=" <eos> ")
    with pytest.raises(DataError, match=r"train split from .*one.lower is empty: 2 documents read, 2 had fewer"):
        load_documents(config)


# ---------------------------------------------------------------------------------------------- filtering, splits


def test_short_documents_skipped_and_long_ones_truncated_or_skipped(caplog: pytest.LogCaptureFixture) -> None:
    docs = [["a"], ["a", "b"], ["a", "b", "c", "d", "e"]]
    kept, stats = filter_documents(docs, DataConfig(path="x", max_sentences=3))
    assert kept == [["a", "b"], ["a", "b", "c"]]
    assert (stats.too_short, stats.truncated, stats.too_long) == (1, 1, 0)
    kept, stats = filter_documents(docs, DataConfig(path="x", max_sentences=3, overflow="skip"))
    assert kept == [["a", "b"]]
    assert stats.too_long == 1


def test_skip_counts_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_lines(tmp_path / "d.lower", synthetic_documents(40) + [["lonely ."]])
    with caplog.at_level(logging.INFO, logger="tuner.data"):
        load_documents(DataConfig(path=str(path), separator=" <eos> ", split=(0.2, 0.2)))
    assert "skipped 1 with fewer than 2 sentences" in caplog.text


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


# ---------------------------------------------------------------------------------------------- encoding


def _module(tmp_path: Path, backbone: str, docs: list[list[str]] | None = None, **options: object
            ) -> SentenceOrderingData:
    path = write_lines(tmp_path / "all.lower", docs or synthetic_documents(200))
    config = DataConfig(path=str(path), separator=" <eos> ", split=(0.25, 0.25), batch_size=4,
                        **options)  # type: ignore[arg-type]
    module = SentenceOrderingData(config, backbone)
    module.setup()
    return module


@pytest.mark.parametrize("which", ["tiny_bert", "tiny_roberta"])
def test_each_sentence_starts_with_the_tokenizers_own_marker(
    tmp_path: Path, which: str, request: pytest.FixtureRequest
) -> None:
    module = _module(tmp_path, request.getfixturevalue(which))
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
    module = _module(tmp_path, tiny_bert, docs=docs, max_length=48, max_sentences=3)
    for dataset in module.datasets.values():
        for index in range(len(dataset)):
            item = dataset[index]
            assert len(item["input_ids"]) <= 48
            assert len(item["markers"]) == 3
    encoded = module.datasets["train"].documents[0]
    # "short one ." is kept whole, the long ones capped: 3 + 20 + 20 <= 48 - 3 markers - 1 end token
    assert sorted(len(s) for s in encoded) == [3, 20, 20]


def test_tokenising_in_chunks_gives_the_ids_of_one_call(tiny_bert: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from tuner.backbone import load_tokenizer

    tokenizer = load_tokenizer(tiny_bert)
    docs = synthetic_documents(7, seed=5)
    whole = encode_documents(docs, tokenizer, 96)
    calls: list[int] = []

    def counting(texts: list[str], **options: object) -> object:
        calls.append(len(texts))
        return tokenizer(texts, **options)

    monkeypatch.setattr(data_module, "_ENCODE_CHUNK", 4)  # chunks cut across documents
    assert encode_documents(docs, counting, 96) == whole
    assert calls == [4] * (len(calls) - 1) + [sum(len(d) for d in docs) - 4 * (len(calls) - 1)]
    assert len(calls) > len(docs) // 2


def test_sentence_budget() -> None:
    assert sentence_budget([3, 3], 20) == 3
    assert sentence_budget([100, 2, 50], 40) == 17  # 17 + 2 + 17 = 36 = 40 - 3 markers - 1 end
    with pytest.raises(ValueError):
        sentence_budget([1] * 10, 20)


def test_max_length_too_small_for_max_sentences(tmp_path: Path, tiny_bert: str) -> None:
    with pytest.raises(DataError, match="cannot hold data.max_sentences 16"):
        SentenceOrderingData(DataConfig(path="x", max_length=20), tiny_bert)


def test_batches_pad_dynamically_to_the_longest_document(tmp_path: Path, tiny_bert: str) -> None:
    module = _module(tmp_path, tiny_bert)
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


def test_tokenised_data_is_cached(tmp_path: Path, tiny_bert: str, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _module(tmp_path, tiny_bert)
    docs = synthetic_documents(30, seed=5)
    first = encode_cached(docs, module.tokenizer, 64, tmp_path / "c")

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("tokenised again despite the cache")

    monkeypatch.setattr(data_module, "encode_documents", fail)
    assert encode_cached(docs, module.tokenizer, 64, tmp_path / "c") == first
    with pytest.raises(AssertionError, match="tokenised again"):
        encode_cached(docs, module.tokenizer, 48, tmp_path / "c")  # other settings: another key


# ---------------------------------------------------------------------------------------------- shuffling


def _input_orders(dataset: data_module.OrderingDataset, epoch: int) -> list[list[int]]:
    return [dataset[(i, epoch)]["gold"] for i in range(len(dataset))]


def test_evaluation_permutations_are_fixed_and_training_ones_change_per_epoch(tmp_path: Path, tiny_bert: str) -> None:
    module = _module(tmp_path, tiny_bert)
    val, train = module.datasets["validation"], module.datasets["train"]
    assert _input_orders(val, 0) == _input_orders(val, 5)
    again = _module(tmp_path / "again", tiny_bert) if (tmp_path / "again").mkdir() is None else None
    assert again is not None and _input_orders(again.datasets["validation"], 0) == _input_orders(val, 0)
    assert _input_orders(train, 0) != _input_orders(train, 1)
    assert _input_orders(train, 1) == _input_orders(train, 1)


@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_input_order_does_not_leak_the_gold_order(tmp_path: Path, tiny_bert: str, split: str) -> None:
    """Fails if a split comes back unshuffled (or nearly so): the input order must carry no signal."""
    module = _module(tmp_path, tiny_bert, docs=synthetic_documents(800, sizes=(4, 6)))
    dataset = module.datasets[split]
    orders = _input_orders(dataset, 1)
    taus = [kendalltau(o, sorted(o)).statistic for o in orders]
    assert abs(float(np.mean(taus))) < 0.1
    identity = sum(o == sorted(o) for o in orders) / len(orders)
    assert identity < 0.05  # 1/24 to 1/720 by chance for 4 to 6 sentences
    # and the text itself is shuffled: the first input sentence is the gold first one only by chance
    first_is_first = np.mean([dataset[(i, 1)]["gold"][0] == 0 for i in range(len(dataset))])
    assert first_is_first < 0.35


def test_training_loader_reshuffles_each_epoch_through_lightnings_hook(tmp_path: Path, tiny_bert: str) -> None:
    from lightning.fabric.utilities.data import _set_sampler_epoch

    module = _module(tmp_path, tiny_bert)
    loader = module.train_dataloader()
    _set_sampler_epoch(loader, 0)
    first = next(iter(loader))
    _set_sampler_epoch(loader, 1)
    second = next(iter(loader))
    assert not (first["index"].tolist() == second["index"].tolist() and first["gold"].equal(second["gold"]))
    val = module.val_dataloader()
    assert [b["gold"].tolist() for b in val] == [b["gold"].tolist() for b in module.val_dataloader()]


def test_reads_the_real_nips_files() -> None:
    folder = require_shared("nips_abstracts")
    config = DataConfig(train=str(folder / "train.lower"), validation=str(folder / "val.lower"),
                        test=str(folder / "test.lower"), separator=" <eos> ", max_sentences=100)
    docs = load_documents(config)
    assert [len(docs[s]) for s in ("train", "validation", "test")] == [2427, 408, 377]
    assert max(len(d) for d in docs["train"]) == 15
    assert sum(len(d) for d in docs["test"]) / 377 == pytest.approx(6.2, abs=0.3)


def test_reads_the_real_rocstories_tsv() -> None:
    docs = read_file(require_shared("rocstories", "test.tsv"), DataConfig(path="x"))
    assert len(docs) == 9816 and {len(d) for d in docs} == {5}


def test_hub_data_sets_load_through_datasets(tmp_path: Path) -> None:
    """The hub reader, on a local folder that ``datasets.load_dataset`` reads as it reads a hub repo."""
    folder = tmp_path / "repo"
    folder.mkdir()
    docs = synthetic_documents(120, seed=3)
    (folder / "train.jsonl").write_text("".join(json.dumps({"sentences": d}) + "\n" for d in docs))
    config = DataConfig(hub=str(folder), split=(0.2, 0.2))
    splits = load_documents(config)
    assert sum(len(s) for s in splits.values()) == 120  # no validation/test split: carved out of train
    assert all(splits[name] for name in ("train", "validation", "test"))
    texts = [json.dumps({"text": " ".join(s.capitalize() for s in d)}) + "\n" for d in docs]
    (folder / "validation.jsonl").write_text("".join(texts[:7]))
    (folder / "train.jsonl").write_text("".join(texts[7:]))
    splits = load_documents(config)
    assert len(splits["validation"]) == 7 and len(splits["train"]) + len(splits["test"]) == 113
    with pytest.raises(DataError, match="has no split 'training'"):
        load_documents(replace(config, hub_splits=("training", "validation", "test")))
