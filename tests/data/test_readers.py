"""Reading documents from lines, TSV, CSV, JSONL, text, the built-in corpus, the hub and the real data."""

from __future__ import annotations

import json
import logging
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import require_shared, synthetic_documents, write_lines

from tuner.config.schema import DataConfig
from tuner.data.readers import load_documents, python_docs_corpus, read_file, split_sentences
from tuner.errors import DataError


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


def test_skip_counts_are_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = write_lines(tmp_path / "d.lower", synthetic_documents(40) + [["lonely ."]])
    with caplog.at_level(logging.INFO, logger="tuner.data.readers"):
        load_documents(DataConfig(path=str(path), separator=" <eos> ", split=(0.2, 0.2)))
    assert "skipped 1 with fewer than 2 sentences" in caplog.text


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
